//! Slots: the configured A/B partitions, which one is booted, and the slot writer.
//!
//! The booted slot comes from `rota.slot=` (or RAUC's `rauc.slot=`) on the kernel
//! command line. [`SlotWriter`] is the only code that opens a slot for writing, and it
//! refuses the booted slot, the slots whose parent is booted, anything that is the same
//! storage as one of them, and mounted block devices, whatever the caller asks. Devices
//! are compared by identity ([`identity`]), never by path.

/// Device identity lives in the bottom layer (the config checks it too).
pub use crate::device as identity;

use crate::config::{Config, SlotConfig};
use identity::Identity;
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
    #[error("refusing to write slot {slot}: {reason}")]
    InUse { slot: String, reason: String },
}

/// Where the slot checks look: sysfs (block device extents) and the mount table. Tests
/// substitute fakes; [`Host::default`] is the running system's.
#[derive(Debug, Clone)]
pub struct Host {
    pub sysfs: PathBuf,
    pub mountinfo: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from(identity::SYSFS),
            mountinfo: PathBuf::from(identity::MOUNTINFO),
        }
    }
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

pub use crate::config::check_aliases;

/// Refuses a data directory that lives on a slot: rota's state (versions, the install
/// journal, hawkBit progress) must survive booting the other slot, so it belongs on
/// storage both slots share. `data_dir` (or, before it exists, its nearest existing
/// parent) is on a slot when its filesystem's device is a slot's block device or overlaps
/// it, or is a loop device backed by a slot's image file. Filesystems without a block
/// device (major 0: tmpfs, overlayfs, network filesystems) cannot be traced and pass.
pub fn check_data_dir(data_dir: &Path, slots: &[SlotConfig], host: &Host) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Some(meta) = data_dir.ancestors().find_map(|p| std::fs::metadata(p).ok()) else {
        return Ok(());
    };
    data_dir_on_slot(data_dir, meta.dev(), slots, host)
}

/// [`check_data_dir`] for a data directory whose filesystem is on device `dev`.
fn data_dir_on_slot(
    data_dir: &Path,
    dev: u64,
    slots: &[SlotConfig],
    host: &Host,
) -> Result<(), String> {
    if nix::sys::stat::major(dev) == 0 {
        return Ok(());
    }
    let sysfs = &host.sysfs;
    let name = identity::block_name(sysfs, dev)
        .map(|n| format!("/dev/{n} ({})", identity::dev_name(dev)))
        .unwrap_or_else(|| format!("device {}", identity::dev_name(dev)));
    for s in slots {
        let Ok(id) = Identity::of_path(&s.device) else {
            continue;
        };
        let what = match id {
            Identity::Block { rdev } if rdev == dev => Some(format!(
                "the device of slot {} ({})",
                s.name,
                s.device.display()
            )),
            Identity::Block { rdev } => identity::block_overlap(sysfs, dev, rdev).map(|why| {
                format!(
                    "which overlaps slot {}'s device {} ({why})",
                    s.name,
                    s.device.display()
                )
            }),
            Identity::File { .. } => identity::loop_backing_file(sysfs, dev)
                .filter(|f| Identity::of_path(f).ok() == Some(id))
                .map(|f| {
                    format!(
                        "a loop device backed by {}, the image of slot {}",
                        f.display(),
                        s.name
                    )
                }),
        };
        if let Some(what) = what {
            return Err(format!(
                "[system] data-dir {} is on {name}, {what}: rota's state there (installed versions, the install journal, hawkBit progress) would be lost when the other slot boots, and the same update installed again. Put data-dir on storage both slots share: a data partition, e.g. mounted at /data with data-dir = \"/data/rota\" (the default)",
                data_dir.display()
            ));
        }
    }
    Ok(())
}

/// The slots the running system uses: the booted slot and every slot whose parent it is
/// (RAUC's booted slot group). Empty when the booted slot is unknown.
pub fn booted_group(config: &Config, booted: Option<&SlotConfig>) -> Vec<SlotConfig> {
    let Some(b) = booted else {
        return Vec::new();
    };
    let mut group = vec![b.clone()];
    group.extend(
        config
            .slots()
            .into_iter()
            .filter(|s| s.parent.as_deref() == Some(b.name.as_str())),
    );
    group
}

/// Why `slot`, whose device has identity `id`, must not be written while the slots
/// `in_use` run: it is one of them or the same storage as one, or its block device (or
/// one overlapping it) is mounted.
fn in_use_reason(
    slot: &SlotConfig,
    id: Identity,
    in_use: &[SlotConfig],
    host: &Host,
) -> Option<String> {
    for u in in_use {
        let what = match &u.parent {
            Some(p) => format!("slot {} (in use: its parent {p} is booted)", u.name),
            None => format!("the booted slot {}", u.name),
        };
        if u.name == slot.name {
            return Some(format!("it is {what}"));
        }
        if let Ok(iu) = Identity::of_path(&u.device) {
            if let Some(why) = identity::alias(&host.sysfs, (&slot.device, id), (&u.device, iu)) {
                return Some(format!("it and {what} are {why}"));
            }
        }
    }
    if let Identity::Block { rdev } = id {
        let table = match std::fs::read_to_string(&host.mountinfo) {
            Ok(t) => t,
            Err(e) => {
                return Some(format!(
                    "cannot read the mount table {} to check it is not mounted: {e}",
                    host.mountinfo.display()
                ))
            }
        };
        if let Some((at, dev)) = identity::mounted(&host.sysfs, &table, rdev) {
            return Some(if dev == rdev {
                format!("its device {} is mounted at {at}", identity::dev_name(rdev))
            } else {
                format!(
                    "its device {} overlaps {} mounted at {at}",
                    identity::dev_name(rdev),
                    identity::dev_name(dev)
                )
            });
        }
    }
    None
}

/// Checks by path, before anything is written, that `slot` may be written while the slots
/// `in_use` run (see [`SlotWriter::open_guarded`], which checks the opened device again).
/// A device that cannot be stat'ed passes here; opening it will fail.
pub fn check_writable(
    slot: &SlotConfig,
    in_use: &[SlotConfig],
    host: &Host,
) -> Result<(), SlotError> {
    if in_use
        .iter()
        .any(|u| u.name == slot.name && u.parent.is_none())
    {
        return Err(SlotError::Booted(slot.name.clone()));
    }
    match Identity::of_path(&slot.device) {
        Ok(id) => match in_use_reason(slot, id, in_use, host) {
            Some(reason) => Err(SlotError::InUse {
                slot: slot.name.clone(),
                reason,
            }),
            None => Ok(()),
        },
        Err(_) => Ok(()),
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
    /// Opens `slot` for writing. `booted` is the running slot, which is never written,
    /// nor anything that is the same storage, nor a mounted block device.
    pub fn open(slot: &SlotConfig, booted: Option<&SlotConfig>) -> Result<Self, SlotError> {
        Self::open_guarded(
            slot,
            booted.map(std::slice::from_ref).unwrap_or(&[]),
            &Host::default(),
        )
    }

    /// Opens `slot` for writing unless it is one of the slots `in_use` (the booted slot
    /// group), the same storage as one of them, or a mounted block device (or overlaps
    /// one). The check is made on the opened descriptor (fstat), so a path swapped
    /// between a check and the open cannot slip through.
    pub fn open_guarded(
        slot: &SlotConfig,
        in_use: &[SlotConfig],
        host: &Host,
    ) -> Result<Self, SlotError> {
        if in_use
            .iter()
            .any(|u| u.name == slot.name && u.parent.is_none())
        {
            return Err(SlotError::Booted(slot.name.clone()));
        }
        // No O_CREAT, no O_TRUNC: opening changes nothing, and the descriptor is dropped
        // unused if the checks below refuse it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slot.device)
            .map_err(|e| dev_err(slot, format!("cannot open for writing: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| dev_err(slot, format!("cannot stat the opened device: {e}")))?;
        if let Some(reason) = in_use_reason(slot, Identity::of(&meta), in_use, host) {
            return Err(SlotError::InUse {
                slot: slot.name.clone(),
                reason,
            });
        }
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

    /// Writes `bufs` back to back at `offset` with as few system calls as the kernel
    /// allows (`pwritev`): a batch of chunks goes to the page cache without being copied
    /// into one buffer first.
    pub fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<(), SlotError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let err = |e: std::io::Error| {
            dev_err(
                &self.slot,
                format!("write of {total} bytes at {offset} failed: {e}"),
            )
        };
        // Two parts, so the power-cut campaign can cut inside a batch.
        let half = bufs.len() / 2;
        let mut at = offset;
        for (part, bufs) in [&bufs[..half], &bufs[half..]].into_iter().enumerate() {
            if part == 1 {
                crate::failpoint::hit("copy.mid-chunk");
            }
            let want: usize = bufs.iter().map(|b| b.len()).sum();
            self.write_part_at(at, bufs).map_err(err)?;
            at += want as u64;
        }
        crate::failpoint::hit("copy.after-write");
        Ok(())
    }

    /// `bufs` back to back at `offset`: `pwritev` calls where the offset fits the
    /// platform's `off_t` (always on 64-bit; below 2 GiB on 32-bit ARM), one positional
    /// write per buffer otherwise.
    fn write_part_at(&self, offset: u64, bufs: &[&[u8]]) -> std::io::Result<()> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let mut skip = 0usize;
        while skip < want {
            let at = offset + skip as u64;
            let Some(off) = at
                .checked_add((want - skip) as u64)
                .and_then(|end| nix::libc::off_t::try_from(end).ok())
                .and_then(|_| nix::libc::off_t::try_from(at).ok())
            else {
                break;
            };
            // The slices from `skip` on (the first one cut short).
            let mut rest = Vec::with_capacity(bufs.len());
            let mut left = skip;
            for b in bufs {
                if left >= b.len() {
                    left -= b.len();
                } else {
                    rest.push(std::io::IoSlice::new(&b[left..]));
                    left = 0;
                }
            }
            let n = nix::sys::uio::pwritev(&self.file, &rest, off)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            skip += n;
        }
        // What is left (an offset past what off_t holds): buffer by buffer.
        let mut at = offset;
        let mut left = skip;
        for b in bufs {
            if left >= b.len() {
                left -= b.len();
                at += b.len() as u64;
                continue;
            }
            self.file.write_all_at(&b[left..], at + left as u64)?;
            at += b.len() as u64;
            left = 0;
        }
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

    /// Flushes everything written to stable storage (data, not metadata: a slot's size
    /// never changes).
    pub fn sync(&self) -> Result<(), SlotError> {
        self.file
            .sync_data()
            .map_err(|e| dev_err(&self.slot, format!("sync failed: {e}")))
    }

    /// Drops the slot's pages from the page cache, so a following read comes from the
    /// device. Best effort: a device that ignores the hint still reads back correct data.
    pub fn drop_cache(&self) {
        let _ = nix::fcntl::posix_fadvise(
            &self.file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }

    /// Starts writing `offset..offset + len` to the device without waiting for it, and
    /// lets the page cache forget what is already on the device (`POSIX_FADV_DONTNEED`
    /// does both): a read-back of the range a moment later then finds it written, and an
    /// install does not fill the page cache of a small device. Best effort.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        let (Ok(offset), Ok(len)) = (
            nix::libc::off_t::try_from(offset),
            nix::libc::off_t::try_from(len),
        ) else {
            return; // past what a 32-bit off_t holds: the final sync writes it
        };
        let _ = nix::fcntl::posix_fadvise(
            &self.file,
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }

    /// [`Self::sync`], then [`Self::drop_cache`].
    pub fn sync_and_drop_cache(&self) -> Result<(), SlotError> {
        self.sync()?;
        self.drop_cache();
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
    fn vectored_writes_land_back_to_back_also_past_4_gib() {
        // Past 4 GiB a 32-bit off_t cannot hold the offset: armv7 takes the per-buffer
        // path there (CI runs this under qemu-arm), 64-bit targets pwritev.
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("b.img");
        let far = 5u64 << 30;
        let f = std::fs::File::create(&dev).unwrap();
        f.set_len(far + (1 << 20)).unwrap();
        drop(f);
        let w = SlotWriter::open(&slot("rootfs.1", &dev, Some("B"), None), None).unwrap();
        let parts: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i + 1; 4096 + usize::from(i)])
            .collect();
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let joined = parts.concat();
        for at in [0u64, (2u64 << 30) - 4096, far] {
            w.write_vectored_at(at, &slices).unwrap();
            let mut back = vec![0u8; joined.len()];
            w.read_at(at, &mut back).unwrap();
            assert_eq!(back, joined, "at {at}");
        }
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
            parent: None,
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

    fn slot(name: &str, device: &Path, bootname: Option<&str>, parent: Option<&str>) -> SlotConfig {
        let (class, index) = name.split_once('.').unwrap();
        SlotConfig {
            name: name.into(),
            class: class.into(),
            index: index.parse().unwrap(),
            device: device.to_owned(),
            bootname: bootname.map(Into::into),
            parent: parent.map(Into::into),
        }
    }

    fn blockdev(path: &Path, maj: u64, min: u64) {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(maj, min),
        )
        .expect("mknod (the tests run as root)");
    }

    #[test]
    fn writer_refuses_hard_links_and_dotdot_paths_to_the_booted_slot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("a.img"), vec![7u8; 4096]).unwrap();
        std::fs::hard_link(d.join("a.img"), d.join("hard.img")).unwrap();
        let a = slot("rootfs.0", &d.join("a.img"), Some("A"), None);
        for alias in ["hard.img", "sub/../a.img"] {
            let b = slot("rootfs.1", &d.join(alias), Some("B"), None);
            let err = SlotWriter::open(&b, Some(&a))
                .err()
                .expect(alias)
                .to_string();
            assert!(
                err.contains("refusing to write slot rootfs.1: it and the booted slot rootfs.0 are the same file"),
                "{alias}: {err}"
            );
        }
        assert_eq!(std::fs::read(d.join("a.img")).unwrap(), vec![7u8; 4096]);
    }

    #[test]
    fn writer_refuses_the_children_of_the_booted_slot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["a", "b", "app-a", "app-b", "app-link"] {
            std::fs::write(d.join(f), vec![0u8; 4096]).unwrap();
        }
        std::fs::remove_file(d.join("app-link")).unwrap();
        std::os::unix::fs::symlink(d.join("app-a"), d.join("app-link")).unwrap();
        let a = slot("rootfs.0", &d.join("a"), Some("A"), None);
        let app0 = slot("appfs.0", &d.join("app-a"), None, Some("rootfs.0"));
        let in_use = [a.clone(), app0.clone()];
        let host = Host::default();
        let err = SlotWriter::open_guarded(&app0, &in_use, &host)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("it is slot appfs.0 (in use: its parent rootfs.0 is booted)"),
            "{err}"
        );
        let sneaky = slot("appfs.1", &d.join("app-link"), None, Some("rootfs.1"));
        let err = SlotWriter::open_guarded(&sneaky, &in_use, &host)
            .err()
            .unwrap();
        assert!(err.to_string().contains("are the same file"), "{err}");
        let app1 = slot("appfs.1", &d.join("app-b"), None, Some("rootfs.1"));
        assert!(SlotWriter::open_guarded(&app1, &in_use, &host).is_ok());
        assert!(check_writable(&app0, &in_use, &host).is_err());
        assert!(check_writable(&app1, &in_use, &host).is_ok());
    }

    #[test]
    fn a_second_node_of_the_booted_device_or_a_mounted_one_is_not_writable() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        blockdev(&d.join("booted"), 250, 3);
        blockdev(&d.join("alias"), 250, 3);
        blockdev(&d.join("other"), 250, 4);
        blockdev(&d.join("disk"), 250, 0);
        // A fake sysfs: 250:0 is a disk holding partitions 250:3 and 250:4.
        let disk = d.join("sys/devices/virtual/block/fake");
        std::fs::create_dir_all(d.join("sys/dev/block")).unwrap();
        for (name, dev, start) in [
            ("", "250:0", None),
            ("fake3", "250:3", Some(0)),
            ("fake4", "250:4", Some(100)),
        ] {
            let dir = disk.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(start) = start {
                std::fs::write(dir.join("partition"), "1").unwrap();
                std::fs::write(dir.join("start"), format!("{start}")).unwrap();
                std::fs::write(dir.join("size"), "100").unwrap();
            }
            std::os::unix::fs::symlink(&dir, d.join("sys/dev/block").join(dev)).unwrap();
        }
        std::fs::write(
            d.join("mountinfo"),
            "1 0 0:20 / / rw - overlay overlay rw\n",
        )
        .unwrap();
        let host = Host {
            sysfs: d.join("sys"),
            mountinfo: d.join("mountinfo"),
        };
        let a = slot("rootfs.0", &d.join("booted"), Some("A"), None);
        let in_use = [a];
        let err = check_writable(
            &slot("rootfs.1", &d.join("alias"), Some("B"), None),
            &in_use,
            &host,
        )
        .err()
        .unwrap()
        .to_string();
        let want = format!(
            "refusing to write slot rootfs.1: it and the booted slot rootfs.0 are the same device ({} and {} are both 250:3)",
            d.join("alias").display(),
            d.join("booted").display()
        );
        assert_eq!(err, want);
        let err = check_writable(
            &slot("rootfs.1", &d.join("disk"), Some("B"), None),
            &in_use,
            &host,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("are overlapping devices"), "{err}");
        let other = slot("rootfs.1", &d.join("other"), Some("B"), None);
        assert!(check_writable(&other, &in_use, &host).is_ok());
        // Mounted: the partition itself, or (for the other partition) nothing of it.
        std::fs::write(
            d.join("mountinfo"),
            "1 0 250:4 / /mnt/b rw - ext4 /dev/fake4 rw\n",
        )
        .unwrap();
        let err = check_writable(&other, &[], &host)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("its device 250:4 is mounted at /mnt/b"),
            "{err}"
        );
        let disk = slot("data.0", &d.join("disk"), None, None);
        let err = check_writable(&disk, &[], &host).err().unwrap().to_string();
        assert!(
            err.contains("its device 250:0 overlaps 250:4 mounted at /mnt/b"),
            "{err}"
        );
        assert!(check_writable(
            &slot("rootfs.0", &d.join("booted"), Some("A"), None),
            &[],
            &host
        )
        .is_ok());
    }

    #[test]
    fn a_data_dir_on_a_slot_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        blockdev(&d.join("a"), 250, 3);
        blockdev(&d.join("disk"), 250, 0);
        std::fs::write(d.join("b.img"), [0u8; 512]).unwrap();
        std::fs::write(d.join("other.img"), [0u8; 512]).unwrap();
        // Fake sysfs: disk "fake" (250:0) with partitions fake3 (250:3) and fake5 (250:5,
        // apart from fake3); loop7 (7:7) backed by b.img, its partition loop7p1 (259:1);
        // loop8 (7:8) backed by other.img.
        let sys = d.join("sys");
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        let add = |rel: &str, dev: &str, start: Option<u64>, backing: Option<&Path>| {
            let dir = sys.join("devices/virtual/block").join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(start) = start {
                std::fs::write(dir.join("partition"), "1").unwrap();
                std::fs::write(dir.join("start"), format!("{start}")).unwrap();
                std::fs::write(dir.join("size"), "100").unwrap();
            }
            if let Some(b) = backing {
                std::fs::create_dir_all(dir.join("loop")).unwrap();
                std::fs::write(dir.join("loop/backing_file"), format!("{}\n", b.display()))
                    .unwrap();
            }
            std::os::unix::fs::symlink(&dir, sys.join("dev/block").join(dev)).unwrap();
        };
        add("fake", "250:0", None, None);
        add("fake/fake3", "250:3", Some(0), None);
        add("fake/fake5", "250:5", Some(500), None);
        add("loop7", "7:7", None, Some(&d.join("b.img")));
        add("loop7/loop7p1", "259:1", Some(0), None);
        add("loop8", "7:8", None, Some(&d.join("other.img")));
        let host = Host {
            sysfs: sys,
            mountinfo: d.join("mountinfo"),
        };
        let slots = [
            slot("rootfs.0", &d.join("a"), Some("A"), None),
            slot("rootfs.1", &d.join("b.img"), Some("B"), None),
        ];
        let data = Path::new("/data/rota");
        let check =
            |maj, min| data_dir_on_slot(data, nix::sys::stat::makedev(maj, min), &slots, &host);
        let err = check(250, 3).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "[system] data-dir /data/rota is on /dev/fake3 (250:3), the device of slot rootfs.0 ({})",
                d.join("a").display()
            )),
            "{err}"
        );
        assert!(err.contains("lost when the other slot boots"), "{err}");
        let err = check(250, 0).unwrap_err();
        assert!(
            err.contains("/dev/fake (250:0), which overlaps slot rootfs.0's device"),
            "{err}"
        );
        for (maj, min) in [(7, 7), (259, 1)] {
            let err = check(maj, min).unwrap_err();
            assert!(
                err.contains(&format!(
                    "a loop device backed by {}, the image of slot rootfs.1",
                    d.join("b.img").display()
                )),
                "{maj}:{min}: {err}"
            );
        }
        // Elsewhere: another partition of the disk, a loop device of another file, a
        // device sysfs does not know, a filesystem without a device.
        for (maj, min) in [(250, 5), (7, 8), (8, 1), (0, 42)] {
            assert_eq!(check(maj, min), Ok(()), "{maj}:{min}");
        }
        // The real thing for a directory that does not exist yet: its parent decides.
        assert_eq!(
            check_data_dir(&d.join("not/yet/there"), &slots, &Host::default()),
            Ok(())
        );
    }

    #[test]
    fn config_aliases_are_found_by_identity() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.img"), [1u8; 512]).unwrap();
        std::fs::write(d.join("b.img"), [1u8; 512]).unwrap();
        std::fs::hard_link(d.join("a.img"), d.join("hard.img")).unwrap();
        std::os::unix::fs::symlink("a.img", d.join("sym.img")).unwrap();
        blockdev(&d.join("blk"), 250, 7);
        blockdev(&d.join("blk-alias"), 250, 7);
        let a = slot("rootfs.0", &d.join("a.img"), Some("A"), None);
        let pair = |dev: &str| [a.clone(), slot("rootfs.1", &d.join(dev), Some("B"), None)];
        assert!(check_aliases(&pair("b.img"), d).is_ok());
        assert!(
            check_aliases(&pair("missing.img"), d).is_ok(),
            "not there yet"
        );
        for dev in ["hard.img", "sym.img", "a.img"] {
            let err = check_aliases(&pair(dev), d).unwrap_err();
            assert!(
                err.starts_with("slots rootfs.0 and rootfs.1 are the same file ("),
                "{dev}: {err}"
            );
        }
        let b = [
            slot("rootfs.0", &d.join("blk"), Some("A"), None),
            slot("rootfs.1", &d.join("blk-alias"), Some("B"), None),
        ];
        let err = check_aliases(&b, d).unwrap_err();
        assert!(
            err.contains("are the same device (") && err.contains("are both 250:7)"),
            "{err}"
        );
    }
}
