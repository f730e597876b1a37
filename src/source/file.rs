//! A bundle in a local file.
//!
//! Only regular files: anything else could block an install (and each resume of it) or never end.

use super::{ByteSource, SourceError};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct FileSource {
    file: File,
    path: PathBuf,
    len: u64,
    fetched: u64,
}

impl FileSource {
    /// Opens a bundle file. It must be a regular file: a FIFO, a terminal or a device
    /// would block the install (and every resume of it) or never end, so it is refused at
    /// once, without blocking on the open (see [`crate::fsutil::open_regular`]).
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let file = crate::fsutil::open_regular(path).map_err(|e| {
            SourceError::Fatal(format!("cannot open bundle {}: {e}", path.display()))
        })?;
        let meta = file.metadata().map_err(|e| {
            SourceError::Fatal(format!("cannot stat bundle {}: {e}", path.display()))
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            len: meta.len(),
            fetched: 0,
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), SourceError> {
        let end = offset.saturating_add(len);
        if end > self.len {
            return Err(SourceError::OutOfRange {
                offset,
                end,
                len: self.len,
            });
        }
        Ok(())
    }
}

impl ByteSource for FileSource {
    fn len(&mut self) -> Result<u64, SourceError> {
        Ok(self.len)
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.check_range(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            SourceError::Io(format!("{}: read at {offset}: {e}", self.path.display()))
        })?;
        self.fetched += buf.len() as u64;
        Ok(())
    }

    fn read_range(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        self.check_range(offset, len)?;
        let mut f = self
            .file
            .try_clone()
            .map_err(|e| SourceError::Io(format!("{}: {e}", self.path.display())))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| SourceError::Io(format!("{}: seek: {e}", self.path.display())))?;
        self.fetched += len;
        Ok(Box::new(f.take(len)))
    }

    fn bytes_fetched(&self) -> u64 {
        self.fetched
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO nobody writes to would block a plain open forever; a character device never
    /// ends. Both are refused at once, naming what they are.
    #[test]
    fn only_regular_files_are_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("b.rota");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = FileSource::open(&fifo).err().unwrap().to_string();
        assert!(
            e.contains("b.rota") && e.contains("not a regular file (it is a FIFO)"),
            "{e}"
        );
        let e = FileSource::open(Path::new("/dev/zero"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("character device"), "{e}");
        let ok = dir.path().join("ok.rota");
        std::fs::write(&ok, b"bundle").unwrap();
        assert_eq!(FileSource::open(&ok).unwrap().len().unwrap(), 6);
    }
}
