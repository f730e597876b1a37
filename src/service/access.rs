//! Caller checks: the service runs as root, so before it opens a local bundle on behalf
//! of a caller it checks that the caller could have read that file itself.
//!
//! The caller's uid comes from the bus (`GetConnectionUnixUser`); the check walks the
//! path like the kernel would: search permission on every directory, read permission on
//! the file, using owner, group (the user's supplementary groups included) and other bits.

use nix::unistd::{Gid, Group, Uid, User};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The caller's uid, or None when the bus does not say.
pub async fn caller_uid(
    conn: &zbus::Connection,
    header: &zbus::message::Header<'_>,
) -> Option<u32> {
    let sender = header.sender()?.to_owned();
    let dbus = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    dbus.get_connection_unix_user(zbus::names::BusName::Unique(sender))
        .await
        .ok()
}

fn groups_of(uid: u32) -> Vec<u32> {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let name = std::ffi::CString::new(user.name.clone()).unwrap_or_default();
    let mut gids: Vec<u32> = nix::unistd::getgrouplist(&name, user.gid)
        .unwrap_or_default()
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    gids.push(user.gid.as_raw());
    gids
}

/// Whether `uid` may read `path`; the error says which component stops it.
pub fn may_read(uid: u32, path: &Path) -> Result<(), String> {
    if uid == 0 {
        return Ok(());
    }
    let groups = groups_of(uid);
    let allowed = |meta: &std::fs::Metadata, bit: u32| {
        let mode = meta.mode();
        if meta.uid() == uid {
            mode & (bit << 6) != 0
        } else if groups.contains(&meta.gid()) {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    };
    let mut dir = std::path::PathBuf::new();
    for comp in path.parent().into_iter().flat_map(Path::components) {
        dir.push(comp);
        let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !allowed(&meta, 0o1) {
            return Err(format!("uid {uid} may not enter {}", dir.display()));
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !allowed(&meta, 0o4) {
        return Err(format!("uid {uid} may not read {}", path.display()));
    }
    Ok(())
}

/// Whether `uid` is root or a member of `group`.
pub fn is_privileged(uid: u32, group: Option<&str>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(name) = group else { return false };
    match Group::from_name(name) {
        Ok(Some(g)) => groups_of(uid).contains(&g.gid.as_raw()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn unprivileged_user_cannot_read_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.rota");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(may_read(0, &f).is_ok());
        let owner = std::fs::metadata(&f).unwrap().uid();
        let other = if owner == 65534 { 65533 } else { 65534 };
        let e = may_read(other, &f).unwrap_err();
        assert!(e.contains("may not read"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(may_read(other, &f).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(may_read(other, &f).unwrap_err().contains("may not enter"));
    }
}
