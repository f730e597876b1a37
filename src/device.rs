//! Device identity (bottom layer: the config and the slot writer use it): whether two slot devices are the same storage whatever their
//! paths say, and whether a block device is mounted.
//!
//! Regular files compare by (st_dev, st_ino), which sees through hard links, symlinks and
//! `..` components. Block devices compare by st_rdev (major:minor), so a second device
//! node or a `/dev/disk/by-*` link is caught, and by extent through sysfs: a whole disk
//! overlaps each of its partitions, and two partitions of one disk overlap when their
//! sector ranges do. The sysfs root and the mount table are parameters, so tests can
//! build a fake sysfs tree in a temporary directory.

use nix::sys::stat::{major, minor};
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the kernel's sysfs is mounted.
pub const SYSFS: &str = "/sys";
/// The mount table of this process's mount namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// What a slot device is, independent of the path used to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A regular file (or anything that is not a block device): its filesystem and inode.
    File { dev: u64, ino: u64 },
    /// A block device node: the device it stands for.
    Block { rdev: u64 },
}

impl Identity {
    /// The identity of an opened or stat'ed file.
    pub fn of(meta: &Metadata) -> Identity {
        if meta.file_type().is_block_device() {
            Identity::Block { rdev: meta.rdev() }
        } else {
            Identity::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    /// The identity of what `path` names, symlinks followed.
    pub fn of_path(path: &Path) -> std::io::Result<Identity> {
        std::fs::metadata(path).map(|m| Identity::of(&m))
    }
}

/// `major:minor` of a device number.
pub fn dev_name(dev: u64) -> String {
    format!("{}:{}", major(dev), minor(dev))
}

/// Why the devices at `a` and `b` (with identities `ia`, `ib`) are the same storage or
/// overlap, as the end of a sentence ("the same device (... are both 179:2)"); `None`
/// when they are separate.
pub fn alias(sysfs: &Path, a: (&Path, Identity), b: (&Path, Identity)) -> Option<String> {
    let (pa, pb) = (a.0.display(), b.0.display());
    match (a.1, b.1) {
        (Identity::File { dev, ino }, Identity::File { dev: d2, ino: i2 })
            if dev == d2 && ino == i2 =>
        {
            Some(format!(
                "the same file ({pa} and {pb} are both inode {ino} on device {})",
                dev_name(dev)
            ))
        }
        (Identity::Block { rdev: ra }, Identity::Block { rdev: rb }) => {
            if ra == rb {
                return Some(format!(
                    "the same device ({pa} and {pb} are both {})",
                    dev_name(ra)
                ));
            }
            block_overlap(sysfs, ra, rb).map(|why| {
                format!(
                    "overlapping devices ({pa} is {}, {pb} is {}: {why})",
                    dev_name(ra),
                    dev_name(rb)
                )
            })
        }
        _ => None,
    }
}

/// Where a block device lies on its disk, per sysfs.
#[derive(Debug)]
struct Extent {
    /// The disk's sysfs directory (the device's own for a whole disk).
    disk: PathBuf,
    /// `Some((start, size))` in 512-byte sectors for a partition; `None` for a whole disk.
    range: Option<(Option<u64>, Option<u64>)>,
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The extent of device `rdev`: `/sys/dev/block/MAJ:MIN` links to its sysfs directory; a
/// partition has a `partition` file there and lives in its disk's directory.
fn extent(sysfs: &Path, rdev: u64) -> Option<Extent> {
    let link = sysfs.join("dev/block").join(dev_name(rdev));
    let dir = std::fs::canonicalize(link).ok()?;
    if dir.join("partition").exists() {
        let disk = dir.parent()?.to_owned();
        let start = read_number(&dir.join("start"));
        let size = read_number(&dir.join("size"));
        Some(Extent {
            disk,
            range: Some((start, size)),
        })
    } else {
        Some(Extent {
            disk: dir,
            range: None,
        })
    }
}

/// Why two distinct block devices overlap on one disk, if they do. Devices sysfs does not
/// know are taken as separate (only equal numbers alias then); partitions of one disk
/// whose ranges sysfs does not give are taken as overlapping.
pub fn block_overlap(sysfs: &Path, a: u64, b: u64) -> Option<String> {
    let (ea, eb) = (extent(sysfs, a)?, extent(sysfs, b)?);
    if ea.disk != eb.disk {
        return None;
    }
    let disk = ea
        .disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match (ea.range, eb.range) {
        (None, None) => Some(format!("both are disk {disk}")),
        (None, Some(_)) => Some(format!("the first is disk {disk}, which holds the second")),
        (Some(_), None) => Some(format!("the second is disk {disk}, which holds the first")),
        (Some((Some(sa), Some(na))), Some((Some(sb), Some(nb)))) => {
            let (ea_end, eb_end) = (sa.saturating_add(na), sb.saturating_add(nb));
            (sa < eb_end && sb < ea_end).then(|| {
                format!(
                    "partitions of disk {disk} whose sectors {sa}..{ea_end} and {sb}..{eb_end} overlap"
                )
            })
        }
        _ => Some(format!(
            "partitions of disk {disk} whose sector ranges sysfs does not give"
        )),
    }
}

/// The kernel's name of block device `dev` (`mmcblk0p2`, `loop3`), per sysfs.
pub fn block_name(sysfs: &Path, dev: u64) -> Option<String> {
    let dir = std::fs::canonicalize(sysfs.join("dev/block").join(dev_name(dev))).ok()?;
    Some(dir.file_name()?.to_string_lossy().into_owned())
}

/// The file behind loop device `dev` (or behind the loop device holding partition `dev`),
/// per sysfs `loop/backing_file`; `None` for any other device.
pub fn loop_backing_file(sysfs: &Path, dev: u64) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(sysfs.join("dev/block").join(dev_name(dev))).ok()?;
    let disk = if dir.join("partition").exists() {
        dir.parent()?.to_owned()
    } else {
        dir
    };
    let text = std::fs::read_to_string(disk.join("loop/backing_file")).ok()?;
    let path = text.trim_end_matches('\n');
    // The kernel appends " (deleted)" once the file is unlinked.
    Some(PathBuf::from(
        path.strip_suffix(" (deleted)").unwrap_or(path),
    ))
}

/// A mounted filesystem whose device is `rdev` or overlaps it, per `mountinfo` (the text
/// of `/proc/self/mountinfo`): returns its mount point and device.
pub fn mounted(sysfs: &Path, mountinfo: &str, rdev: u64) -> Option<(String, u64)> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let numbers = fields.nth(2)?;
        let mount_point = fields.nth(1)?;
        let (maj, min) = numbers.split_once(':')?;
        let dev = nix::sys::stat::makedev(maj.parse().ok()?, min.parse().ok()?);
        // Major 0 is for filesystems without a device (tmpfs, overlay, proc...).
        if major(dev) == 0 {
            return None;
        }
        (dev == rdev || block_overlap(sysfs, dev, rdev).is_some())
            .then(|| (unescape_octal(mount_point), dev))
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::makedev;

    /// A fake sysfs: disk `mmcblk0` (179:0) with partitions p1 (179:1, sectors
    /// 2048..10240), p2 (179:2, 10240..20480) and p3 (179:3, 20000..30000, overlapping
    /// p2), and disk `sda` (8:0) with partition sda1 (8:1).
    fn fake_sysfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let mmc = root.join("devices/platform/mmc/block/mmcblk0");
        let sda = root.join("devices/pci0/ata1/block/sda");
        std::fs::create_dir_all(root.join("dev/block")).unwrap();
        let add = |dir: &Path, dev: &str, part: Option<(u64, u64)>| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
            if let Some((start, size)) = part {
                std::fs::write(dir.join("partition"), "1\n").unwrap();
                std::fs::write(dir.join("start"), format!("{start}\n")).unwrap();
                std::fs::write(dir.join("size"), format!("{size}\n")).unwrap();
            }
            // Relative, as the kernel makes them: ../../devices/...
            let rel = Path::new("../..").join(dir.strip_prefix(root).unwrap());
            std::os::unix::fs::symlink(rel, root.join("dev/block").join(dev)).unwrap();
        };
        add(&mmc, "179:0", None);
        add(&mmc.join("mmcblk0p1"), "179:1", Some((2048, 8192)));
        add(&mmc.join("mmcblk0p2"), "179:2", Some((10240, 10240)));
        add(&mmc.join("mmcblk0p3"), "179:3", Some((20000, 10000)));
        add(&sda, "8:0", None);
        add(&sda.join("sda1"), "8:1", Some((2048, 4096)));
        t
    }

    fn blk(maj: u64, min: u64) -> Identity {
        Identity::Block {
            rdev: makedev(maj, min),
        }
    }

    fn alias_of(sysfs: &Path, a: Identity, b: Identity) -> Option<String> {
        alias(sysfs, (Path::new("/dev/x"), a), (Path::new("/dev/y"), b))
    }

    #[test]
    fn whole_disk_overlaps_its_partitions_only() {
        let s = fake_sysfs();
        let s = s.path();
        let why = alias_of(s, blk(179, 0), blk(179, 2)).unwrap();
        assert!(
            why.contains("disk mmcblk0, which holds the second"),
            "{why}"
        );
        assert!(why.contains("/dev/x is 179:0"), "{why}");
        let why = alias_of(s, blk(179, 1), blk(179, 0)).unwrap();
        assert!(why.contains("which holds the first"), "{why}");
        assert_eq!(alias_of(s, blk(179, 0), blk(8, 1)), None, "other disk");
        assert_eq!(alias_of(s, blk(8, 0), blk(179, 2)), None, "other disk");
        assert!(alias_of(s, blk(8, 0), blk(8, 1)).is_some());
    }

    #[test]
    fn partitions_overlap_by_sector_range() {
        let s = fake_sysfs();
        let s = s.path();
        assert_eq!(alias_of(s, blk(179, 1), blk(179, 2)), None, "adjacent");
        let why = alias_of(s, blk(179, 2), blk(179, 3)).unwrap();
        assert!(
            why.contains("sectors 10240..20480 and 20000..30000 overlap"),
            "{why}"
        );
        // A partition whose range is unknown is taken as overlapping its siblings.
        let p = s.join("devices/platform/mmc/block/mmcblk0/mmcblk0p1/start");
        std::fs::remove_file(p).unwrap();
        let why = alias_of(s, blk(179, 1), blk(179, 2)).unwrap();
        assert!(why.contains("does not give"), "{why}");
    }

    #[test]
    fn equal_numbers_alias_even_without_sysfs() {
        let empty = tempfile::tempdir().unwrap();
        let why = alias_of(empty.path(), blk(250, 3), blk(250, 3)).unwrap();
        assert_eq!(why, "the same device (/dev/x and /dev/y are both 250:3)");
        assert_eq!(alias_of(empty.path(), blk(250, 3), blk(250, 4)), None);
    }

    #[test]
    fn files_alias_through_hard_links_symlinks_and_dotdot() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        let a = d.join("a.img");
        std::fs::write(&a, [1u8; 512]).unwrap();
        std::fs::write(d.join("b.img"), [1u8; 512]).unwrap();
        std::fs::hard_link(&a, d.join("hard.img")).unwrap();
        std::os::unix::fs::symlink(&a, d.join("sym.img")).unwrap();
        let id = |p: &Path| Identity::of_path(p).unwrap();
        let ia = id(&a);
        for other in ["hard.img", "sym.img", "sub/../a.img", "a.img"] {
            let p = d.join(other);
            let why =
                alias(d, (&a, ia), (&p, id(&p))).unwrap_or_else(|| panic!("{other} is a.img"));
            assert!(why.starts_with("the same file ("), "{why}");
            assert!(why.contains("inode"), "{why}");
        }
        let b = d.join("b.img");
        assert_eq!(
            alias(d, (&a, ia), (&b, id(&b))),
            None,
            "a copy is not an alias"
        );
    }

    #[test]
    fn a_second_device_node_aliases_by_major_minor() {
        let t = tempfile::tempdir().unwrap();
        let mk = |name: &str, maj: u64, min: u64| {
            let p = t.path().join(name);
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                makedev(maj, min),
            )
            .expect("mknod (the tests run as root)");
            p
        };
        let (a, b, c) = (mk("a", 250, 3), mk("alias", 250, 3), mk("c", 250, 4));
        let (ia, ib, ic) = (
            Identity::of_path(&a).unwrap(),
            Identity::of_path(&b).unwrap(),
            Identity::of_path(&c).unwrap(),
        );
        assert_eq!(ia, blk(250, 3));
        assert_ne!(
            std::fs::metadata(&a).unwrap().ino(),
            std::fs::metadata(&b).unwrap().ino()
        );
        let why = alias(t.path(), (&a, ia), (&b, ib)).unwrap();
        assert!(why.contains("are both 250:3"), "{why}");
        assert_eq!(alias(t.path(), (&a, ia), (&c, ic)), None);
        // A real device under a second name, when the machine has one.
        if let Ok(loop0) = Identity::of_path(Path::new("/dev/loop0")) {
            let Identity::Block { rdev } = loop0 else {
                panic!("/dev/loop0 is not a block device")
            };
            let l = mk("loop-alias", major(rdev), minor(rdev));
            let il = Identity::of_path(&l).unwrap();
            assert!(alias(Path::new(SYSFS), (Path::new("/dev/loop0"), loop0), (&l, il)).is_some());
        }
    }

    #[test]
    fn mounted_devices_and_their_disks_are_found() {
        let s = fake_sysfs();
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    30 1 179:2 / / rw,relatime - ext4 /dev/mmcblk0p2 rw\n\
                    31 30 8:1 / /mnt/my\\040data rw - vfat /dev/sda1 rw\n";
        let m = |maj, min| mounted(s.path(), info, makedev(maj, min));
        assert_eq!(m(179, 2), Some(("/".into(), makedev(179, 2))));
        assert_eq!(m(179, 0), Some(("/".into(), makedev(179, 2))), "its disk");
        assert_eq!(m(179, 3), Some(("/".into(), makedev(179, 2))), "overlaps");
        assert_eq!(m(179, 1), None);
        assert_eq!(m(8, 0), Some(("/mnt/my data".into(), makedev(8, 1))));
        assert_eq!(
            m(0, 21),
            None,
            "device-less filesystems are not block devices"
        );
    }
}
