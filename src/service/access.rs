//! Caller checks: the service runs as root, so before it opens a local bundle on behalf
//! of a D-Bus caller it checks that the caller could have opened that file itself.
//!
//! **Who the caller is** comes from the bus daemon, not from the message:
//! `org.freedesktop.DBus.GetConnectionCredentials` gives the sender's uid and, with
//! dbus-daemon ≥ 1.10, its primary and supplementary gids as the kernel reported them
//! when it connected (`SO_PEERCRED`/`SO_PEERGROUPS`). Without `UnixGroupIDs` the groups
//! come from the user database (`getgrouplist`).
//!
//! **How readability is checked**: when the service is root, the kernel decides. A forked
//! child takes on the caller's groups, gid and uid (`setgroups`, `setgid`, `setuid`) and
//! opens the path read-only, then exits with the `errno`; so symlinks, ACLs, mount
//! options and LSMs count exactly as they would for the caller. The child calls only
//! async-signal-safe functions (everything it needs is prepared before the fork). When
//! the service is not root it cannot switch users; it then walks the canonical path
//! checking the owner/group/other mode bits (search on every directory, read on the file).
//!
//! Limit: the file is opened again later by the install; a caller who swaps the path in
//! between (time of check to time of use) can make the service read a file the caller
//! could not. The bundle still has to carry a valid signature to be installed.

use nix::unistd::{Gid, Uid, User};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Most supplementary groups taken over from the bus or the user database (Linux's
/// NGROUPS_MAX is 65536; real users have a handful).
pub const MAX_GROUPS: usize = 1024;

/// Exit code of the check child when it could not become the caller.
const SWITCH_FAILED: i32 = 255;

/// The uid and groups of a D-Bus caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Primary gid (from the user database, else the first of `groups`, else 65534).
    pub gid: u32,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
}

impl Caller {
    /// A caller known only by uid: primary group and supplementary groups from the user
    /// database.
    pub fn from_uid(uid: u32) -> Caller {
        Caller::with_groups(uid, None)
    }

    fn with_groups(uid: u32, bus_groups: Option<Vec<u32>>) -> Caller {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let mut groups = match bus_groups {
            Some(g) => g,
            None => user.as_ref().map(groups_of).unwrap_or_default(),
        };
        groups.truncate(MAX_GROUPS);
        let gid = user
            .as_ref()
            .map(|u| u.gid.as_raw())
            .or_else(|| groups.first().copied())
            .unwrap_or(65534);
        if !groups.contains(&gid) {
            groups.push(gid);
        }
        Caller { uid, gid, groups }
    }
}

/// Who sent `header`'s message, as the bus daemon knows it.
pub async fn caller(
    conn: &zbus::Connection,
    header: &zbus::message::Header<'_>,
) -> Result<Caller, String> {
    let sender = header
        .sender()
        .ok_or("the message has no sender; cannot tell who the caller is")?
        .to_owned();
    let dbus = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| format!("cannot ask the bus who the caller is: {e}"))?;
    let creds = dbus
        .get_connection_credentials(zbus::names::BusName::Unique(sender.clone()))
        .await
        .map_err(|e| format!("cannot ask the bus who {sender} is: {e}"))?;
    let uid = creds
        .unix_user_id()
        .ok_or_else(|| format!("the bus does not know the uid of {sender}"))?;
    Ok(Caller::with_groups(uid, creds.unix_group_ids().cloned()))
}

fn groups_of(user: &User) -> Vec<u32> {
    let Ok(name) = CString::new(user.name.clone()) else {
        return vec![user.gid.as_raw()];
    };
    let mut gids: Vec<u32> = nix::unistd::getgrouplist(&name, user.gid)
        .unwrap_or_default()
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    if !gids.contains(&user.gid.as_raw()) {
        gids.push(user.gid.as_raw());
    }
    gids
}

/// The group whose members may install, cancel, mark and poll besides root, when
/// `[dbus] group` is not set: the group the shipped bus policy names.
pub const DEFAULT_GROUP: &str = "rota";

/// Whether `caller` may change things (install, cancel, mark, poll): root, or a member
/// of `group`. The bus policy enforces the same rule; this second check holds when the
/// policy file is missing or was loosened by mistake.
pub fn may_control(caller: &Caller, group: &str) -> Result<(), String> {
    if caller.uid == 0 {
        return Ok(());
    }
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    match gid {
        Some(g) if caller.groups.contains(&g) => Ok(()),
        Some(_) => Err(format!(
            "uid {} may only read: installing, cancelling and marking take root or group {group:?}",
            caller.uid
        )),
        None => Err(format!(
            "uid {} may only read: installing, cancelling and marking take root (group {group:?} does not exist here)",
            caller.uid
        )),
    }
}

/// Whether `caller` may open `path` for reading; the error says why not.
pub fn may_read(caller: &Caller, path: &Path) -> Result<(), String> {
    if caller.uid == 0 {
        return Ok(());
    }
    if nix::unistd::geteuid().is_root() {
        kernel_check(caller, path)
    } else {
        mode_bits_check(caller, path)
    }
}

/// Lets the kernel decide: a child process becomes the caller and opens the file.
fn kernel_check(caller: &Caller, path: &Path) -> Result<(), String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: the path contains a NUL byte", path.display()))?;
    let groups: Vec<Gid> = caller.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let (uid, gid) = (Uid::from_raw(caller.uid), Gid::from_raw(caller.gid));
    // SAFETY: the child only makes async-signal-safe system calls on data prepared above
    // (setgroups, setgid, setuid, open, _exit) and never returns into Rust code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = if nix::unistd::setgroups(&groups).is_err()
                || nix::unistd::setgid(gid).is_err()
                || nix::unistd::setuid(uid).is_err()
            {
                SWITCH_FAILED
            } else {
                // O_NONBLOCK: a FIFO must not block the check; O_NOCTTY: a tty must not
                // become the child's controlling terminal.
                let flags = nix::libc::O_RDONLY | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY;
                // SAFETY: a NUL-terminated path prepared before the fork.
                let fd = unsafe { nix::libc::open(cpath.as_ptr(), flags) };
                if fd >= 0 {
                    0
                } else {
                    nix::errno::Errno::last_raw().clamp(1, SWITCH_FAILED - 1)
                }
            };
            // SAFETY: ends the child without running any Rust or libc exit handlers.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, SWITCH_FAILED)) => {
                    return Err(format!(
                        "cannot check access as uid {}: switching to that user failed",
                        caller.uid
                    ))
                }
                Ok(WaitStatus::Exited(_, errno)) => {
                    return Err(format!(
                        "uid {} may not read {}: {}",
                        caller.uid,
                        path.display(),
                        std::io::Error::from_raw_os_error(errno)
                    ))
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Err(format!("the access check was killed by {sig}"))
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("the access check failed: {e}")),
            }
        },
        Err(e) => Err(format!("cannot start the access check: {e}")),
    }
}

/// Owner/group/other mode bits along the canonical path (for a service that is not root).
fn mode_bits_check(caller: &Caller, path: &Path) -> Result<(), String> {
    let allowed = |meta: &std::fs::Metadata, bit: u32| {
        let mode = meta.mode();
        if meta.uid() == caller.uid {
            mode & (bit << 6) != 0
        } else if caller.groups.contains(&meta.gid()) {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    };
    let walk = |p: &Path| -> Result<(), String> {
        let mut dir = PathBuf::new();
        for comp in p.parent().into_iter().flat_map(Path::components) {
            dir.push(comp);
            let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if !allowed(&meta, 0o1) {
                return Err(format!(
                    "uid {} may not enter {}",
                    caller.uid,
                    dir.display()
                ));
            }
        }
        Ok(())
    };
    // The path as given (directories a symlink sits in) and the canonical path (where
    // the file really is) must both be passable.
    walk(path)?;
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    walk(&real)?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", path.display()))?;
    if !allowed(&meta, 0o4) {
        return Err(format!(
            "uid {} may not read {}",
            caller.uid,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn nobody() -> Caller {
        Caller {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.rota");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, f)
    }

    type Check = fn(&Caller, &Path) -> Result<(), String>;

    /// The mode-bit walk always; the kernel check when the test runs as root.
    fn checks() -> Vec<Check> {
        let mut v: Vec<Check> = vec![mode_bits_check];
        if nix::unistd::geteuid().is_root() {
            v.push(kernel_check);
        }
        v
    }

    /// Both methods agree on owner/other bits and directory search permission.
    #[test]
    fn a_private_file_or_directory_stops_other_users() {
        let (dir, f) = setup();
        assert!(may_read(&Caller::from_uid(0), &f).is_ok());
        for check in checks() {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = check(&nobody(), &f).unwrap_err();
            assert!(e.contains("may not read"), "{e}");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            check(&nobody(), &f).unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            let e = check(&nobody(), &f).unwrap_err();
            assert!(e.contains("may not"), "{e}");
        }
    }

    /// A readable symlink in an open directory pointing into a closed one is refused.
    #[test]
    fn a_symlink_does_not_open_a_closed_directory() {
        let (dir, _) = setup();
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        let secret = closed.join("secret.rota");
        std::fs::write(&secret, b"x").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = dir.path().join("link.rota");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        for check in checks() {
            let e = check(&nobody(), &link).unwrap_err();
            assert!(e.contains("may not"), "{e}");
        }
    }

    #[test]
    fn group_membership_counts() {
        let (_dir, f) = setup();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let owner_gid = std::fs::metadata(&f).unwrap().gid();
        let member = Caller {
            uid: 65534,
            gid: 65534,
            groups: vec![65534, owner_gid],
        };
        for check in checks() {
            check(&member, &f).unwrap();
            assert!(check(&nobody(), &f).is_err());
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let (dir, _) = setup();
        let f = dir.path().join("nope.rota");
        for check in checks() {
            let e = check(&nobody(), &f).unwrap_err();
            assert!(e.contains("nope.rota"), "{e}");
        }
    }
}
