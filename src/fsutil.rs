//! Careful file helpers. Every file rota must find intact after a power cut is written
//! through [`write_atomic`] (temp file, write, fsync, rename, fsync directory), private to
//! root (0600) whatever the umask. Every file rota reads by a path that someone else may
//! have put there (state files, PEM files, images named by a D-Bus caller) is read through
//! [`read_regular`]: it never blocks on a FIFO or a terminal, refuses devices, sockets and
//! directories, and stops at a size limit instead of reading `/dev/zero` until memory runs
//! out.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file written through [`write_atomic`]: state, journal, records and keys
/// may carry tokens or say what the device runs, so only root reads them.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Mode of rota's data directory.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Opens `path` for reading without ever blocking: `O_NONBLOCK` so a FIFO with no writer
/// or a tty does not hang the open, `O_NOCTTY` so a terminal never becomes ours. The
/// opened file must be a regular file (checked on the descriptor, so a swap of the path
/// after the check does not count); it is then switched back to blocking reads.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file (it is {})", file_kind(&meta)),
        ));
    }
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(file)
}

/// Reads a whole regular file of at most `max` bytes (see [`open_regular`]). The limit is
/// enforced on the bytes read, not only on the size `stat` reports.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(too_large(len, max));
    }
    let mut data = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(too_large(data.len() as u64, max));
    }
    Ok(data)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn too_large(len: u64, max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{len} bytes or more, larger than the {max} bytes allowed"),
    )
}

/// What a non-regular file is, for messages.
pub fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

/// Creates `dir` (and its parents) if needed and makes it private to its owner (0700),
/// whatever the umask and whatever mode an earlier release or tool gave it.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let meta = fs::metadata(dir)?;
    if meta.permissions().mode() & 0o7777 != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// Replaces `path` with `data` so that after a crash at any instant the file holds
/// either the old or the new content, never a mix. The file is created 0600 whatever the
/// umask. A stale temp entry left by a crash — even a directory or a symlink someone put
/// there — is removed first, and the temp file is created fresh (`O_EXCL`, no symlink
/// followed).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, PRIVATE_FILE_MODE)
}

/// [`write_atomic`] with another mode (a public key is meant to be copied around).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    remove_stale(&tmp)?;
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        // The umask may have taken bits away from `mode`; fchmod sets it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    crate::failpoint::hit("state.before-rename");
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Removes whatever is at `path` (file, symlink, FIFO or a whole directory tree).
pub fn remove_stale(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            log::warn!(
                "removing the directory {} that is in the way",
                path.display()
            );
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsyncs a directory so a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }
    #[test]
    fn files_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.json");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let written = write_atomic(&p, b"{}");
        nix::sys::stat::umask(old);
        written.unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&data).unwrap();
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o7777,
            0o700
        );
    }

    #[test]
    fn a_stale_temp_directory_or_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.json");
        let tmp = dir.path().join(".status.json.tmp");
        fs::create_dir_all(tmp.join("inner")).unwrap();
        write_atomic(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn reads_refuse_fifos_devices_directories_and_oversize_files_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No writer: a plain open would block forever.
        let e = read_regular(&fifo, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("character device"), "{e}");
        let e = read_regular(dir.path(), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let big = dir.path().join("big");
        fs::write(&big, vec![7u8; 4097]).unwrap();
        let e = read_regular(&big, 4096).unwrap_err().to_string();
        assert!(e.contains("larger than the 4096 bytes"), "{e}");
        assert_eq!(read_regular(&big, 4097).unwrap().len(), 4097);
        // A symlink to a regular file is read; to a device it is refused.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_regular(&link, 1 << 20).is_err());
    }
}
