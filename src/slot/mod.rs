//! Slots: the configured A/B partitions, which one is booted, and the slot writer.
//!
//! The booted slot comes from `rota.slot=` (or RAUC's `rauc.slot=`) on the kernel
//! command line. [`SlotWriter`] is the only code that opens a slot for writing, and it
//! refuses the booted slot whatever the caller asks.

use crate::config::{Config, SlotConfig};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("cannot read kernel command line {path}: {source}")]
    Cmdline {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("slot {slot} ({device}): {message}")]
    Device {
        slot: String,
        device: PathBuf,
        message: String,
    },
    #[error("refusing to write slot {0}: it is the booted slot")]
    Booted(String),
}

/// The bootname (or slot name) on the kernel command line: `rota.slot=` wins over `rauc.slot=`.
pub fn booted_from_cmdline(cmdline: &str) -> Option<String> {
    let find = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    find("rota.slot=").or_else(|| find("rauc.slot="))
}

/// The booted slot per the configured kernel command line, if it names a configured slot.
pub fn booted_slot(config: &Config) -> Result<Option<SlotConfig>, SlotError> {
    let path = &config.system.kernel_cmdline;
    let text = std::fs::read_to_string(path).map_err(|source| SlotError::Cmdline {
        path: path.clone(),
        source,
    })?;
    Ok(booted_from_cmdline(&text).and_then(|id| find_slot(config, &id)))
}

/// A slot by bootname or by slot name.
pub fn find_slot(config: &Config, id: &str) -> Option<SlotConfig> {
    config
        .slots()
        .into_iter()
        .find(|s| s.bootname.as_deref() == Some(id) || s.name == id)
}

/// Whether two paths name the same device or file (symlinks such as
/// `/dev/disk/by-partlabel/...` resolved).
pub fn same_device(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Size in bytes of a slot device (regular file or block device).
pub fn device_size(slot: &SlotConfig) -> Result<u64, SlotError> {
    let mut f = File::open(&slot.device).map_err(|e| dev_err(slot, format!("cannot open: {e}")))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| dev_err(slot, format!("cannot determine size: {e}")))
}

fn dev_err(slot: &SlotConfig, message: String) -> SlotError {
    SlotError::Device {
        slot: slot.name.clone(),
        device: slot.device.clone(),
        message,
    }
}

/// Positional reads and writes into one target slot.
pub struct SlotWriter {
    slot: SlotConfig,
    file: File,
    size: u64,
}

impl SlotWriter {
    /// Opens `slot` for writing. `booted` is the running slot, which is never opened.
    pub fn open(slot: &SlotConfig, booted: Option<&SlotConfig>) -> Result<Self, SlotError> {
        if booted.is_some_and(|b| b.name == slot.name || same_device(&b.device, &slot.device)) {
            return Err(SlotError::Booted(slot.name.clone()));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slot.device)
            .map_err(|e| dev_err(slot, format!("cannot open for writing: {e}")))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| dev_err(slot, format!("cannot determine size: {e}")))?;
        Ok(Self {
            slot: slot.clone(),
            file,
            size,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn slot(&self) -> &SlotConfig {
        &self.slot
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), SlotError> {
        // Two writes, so the power-cut campaign can cut inside a chunk.
        let half = data.len() / 2;
        self.file
            .write_all_at(&data[..half], offset)
            .and_then(|_| {
                crate::failpoint::hit("copy.mid-chunk");
                self.file.write_all_at(&data[half..], offset + half as u64)
            })
            .map_err(|e| {
                dev_err(
                    &self.slot,
                    format!("write of {} bytes at {offset} failed: {e}", data.len()),
                )
            })?;
        crate::failpoint::hit("copy.after-write");
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SlotError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            dev_err(
                &self.slot,
                format!("read of {} bytes at {offset} failed: {e}", buf.len()),
            )
        })
    }

    /// Flushes everything written to stable storage, then drops it from the page cache so
    /// a following read-back comes from the device, not from memory.
    pub fn sync_and_drop_cache(&self) -> Result<(), SlotError> {
        self.file
            .sync_all()
            .map_err(|e| dev_err(&self.slot, format!("sync failed: {e}")))?;
        // Best effort: a device that ignores the hint still reads back correct data.
        let _ = nix::fcntl::posix_fadvise(
            &self.file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        Ok(())
    }
}

/// Read-only access to another slot (the booted one), for adaptive reuse.
pub struct SlotReader {
    file: File,
    size: u64,
}

impl SlotReader {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = File::open(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Self { file, size })
    }

    /// Reads `buf.len()` bytes at `offset`; false when the range is past the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        if offset + buf.len() as u64 > self.size {
            return Ok(false);
        }
        self.file.read_exact_at(buf, offset)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_prefers_rota_over_rauc() {
        assert_eq!(
            booted_from_cmdline("console=ttyS0 rauc.slot=B rota.slot=A\n").as_deref(),
            Some("A")
        );
        assert_eq!(
            booted_from_cmdline("root=/dev/mmcblk0p3 rauc.slot=B").as_deref(),
            Some("B")
        );
        assert_eq!(booted_from_cmdline("root=/dev/sda1 rota.slot="), None);
        assert_eq!(booted_from_cmdline(""), None);
    }

    #[test]
    fn writer_refuses_the_booted_slot() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("a.img");
        std::fs::write(&dev, vec![0u8; 4096]).unwrap();
        let a = SlotConfig {
            name: "rootfs.0".into(),
            class: "rootfs".into(),
            index: 0,
            device: dev,
            bootname: Some("A".into()),
        };
        let err = SlotWriter::open(&a, Some(&a)).err().unwrap();
        assert!(err.to_string().contains("booted slot"), "{err}");
        // The same device under another name (a symlink, like /dev/disk/by-partlabel).
        let link = dir.path().join("by-label-rootfs-a");
        std::os::unix::fs::symlink(&a.device, &link).unwrap();
        let alias = SlotConfig {
            name: "rootfs.1".into(),
            device: link,
            bootname: Some("B".into()),
            ..a.clone()
        };
        assert!(
            SlotWriter::open(&alias, Some(&a)).is_err(),
            "an alias of the booted slot is refused"
        );
        assert_eq!(SlotWriter::open(&a, None).unwrap().size(), 4096);
    }
}
