//! The U-Boot environment, read and written natively with libubootenv's semantics.
//!
//! `fw_env.config` names one copy (single env) or two (redundant env), each a device or
//! file, an offset and a size. A single copy is `CRC32 (LE) | data`; a redundant copy is
//! `CRC32 | flag | data`, the CRC covering the data only. The data is `name=value\0…\0`,
//! sorted, padded with 0xFF to the copy size — byte for byte what `fw_setenv` writes.
//!
//! Reading picks the copy with a valid CRC, the newer flag winning when both are valid
//! (a counter: 0 is newer than 255). Writing takes the whole env, applies the change and
//! writes it to the *other* copy with flag + 1, so a power cut at any instant leaves one
//! valid copy; the active copy is never touched. rota never invents an env: with no valid
//! copy it refuses to write, because U-Boot would otherwise drop its built-in defaults.
//!
//! An env in an eMMC boot partition (`/dev/mmcblkXbootY`, as on i.MX boards) is
//! write-protected by the kernel while `/sys/block/mmcblkXbootY/force_ro` is 1: like
//! libubootenv, rota writes 0 there just before it writes the copy and 1 again right
//! after (also when the write failed), and leaves an attribute that was 0 alone.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub type EnvVars = BTreeMap<String, String>;

/// The lock libubootenv's fw_printenv/fw_setenv take, so rota and they never interleave.
pub const LOCK_FILE: &str = "/var/lock/fw_printenv.lock";
/// Largest env copy accepted (U-Boot envs are 8 KiB to 256 KiB).
pub const MAX_ENV_SIZE: u64 = 1 << 20;
/// Smallest sensible env copy: CRC, flag and a terminator.
const MIN_ENV_SIZE: u64 = 16;
/// Longest fw_env.config accepted.
const MAX_CONFIG_SIZE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{path}:{line}: {message}")]
    Config {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Io(String),
    #[error("no valid U-Boot environment: {0}")]
    NoValidCopy(String),
    #[error("{0}")]
    Invalid(String),
}

/// One copy of the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLocation {
    pub device: PathBuf,
    pub offset: u64,
    pub size: u64,
    pub sector_size: Option<u64>,
    pub sectors: Option<u64>,
}

/// The parsed `fw_env.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    pub copies: Vec<EnvLocation>,
}

/// Sizes (env size, sector size, sector count) are hex with or without `0x`, as
/// libubootenv reads them: `4000` is 0x4000.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16).ok()
}

/// Offsets are decimal, or hex with `0x`.
fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl FwEnvConfig {
    /// Parses `fw_env.config` text; relative device paths resolve against `origin`'s directory.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, EnvError> {
        let base = origin.parent().map(Path::to_owned).unwrap_or_default();
        let err = |line: usize, message: String| EnvError::Config {
            path: origin.to_owned(),
            line,
            message,
        };
        let mut copies = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 3 || f.len() > 5 {
                return Err(err(
                    n,
                    format!(
                        "expected `device offset size [sector-size [sectors]]`, found {} fields",
                        f.len()
                    ),
                ));
            }
            let num = |idx: usize, what: &str| {
                parse_num(f[idx]).ok_or_else(|| {
                    err(
                        n,
                        format!("{what} {:?} is not a number (decimal or 0x hex)", f[idx]),
                    )
                })
            };
            let hex = |idx: usize, what: &str| {
                parse_hex(f[idx])
                    .ok_or_else(|| err(n, format!("{what} {:?} is not a hex number", f[idx])))
            };
            let offset = num(1, "offset")?;
            let size = hex(2, "size")?;
            if !(MIN_ENV_SIZE..=MAX_ENV_SIZE).contains(&size) {
                return Err(err(
                    n,
                    format!("env size {size} is outside {MIN_ENV_SIZE}..={MAX_ENV_SIZE}"),
                ));
            }
            if offset.checked_add(size).is_none() {
                return Err(err(n, "offset + size overflows".into()));
            }
            let sector_size = if f.len() > 3 {
                Some(hex(3, "sector size")?)
            } else {
                None
            };
            let sectors = if f.len() > 4 {
                Some(hex(4, "sector count")?)
            } else {
                None
            };
            let dev = PathBuf::from(f[0]);
            let device = if dev.is_relative() {
                base.join(dev)
            } else {
                dev
            };
            copies.push(EnvLocation {
                device,
                offset,
                size,
                sector_size,
                sectors,
            });
        }
        match copies.len() {
            0 => Err(err(0, "no environment location configured".into())),
            1 => Ok(Self { copies }),
            2 => {
                if copies[0].size != copies[1].size {
                    return Err(err(
                        0,
                        format!(
                            "the two copies differ in size ({} and {})",
                            copies[0].size, copies[1].size
                        ),
                    ));
                }
                let (a, b) = (&copies[0], &copies[1]);
                if a.device == b.device
                    && a.offset < b.offset + b.size
                    && b.offset < a.offset + a.size
                {
                    return Err(err(0, "the two copies overlap".into()));
                }
                Ok(Self { copies })
            }
            k => Err(err(
                0,
                format!("{k} locations configured; one (single) or two (redundant) are allowed"),
            )),
        }
    }

    pub fn load(path: &Path) -> Result<Self, EnvError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| EnvError::Io(format!("{}: {e}", path.display())))?;
        if meta.len() > MAX_CONFIG_SIZE {
            return Err(EnvError::Io(format!(
                "{}: {} bytes is too large for fw_env.config",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| EnvError::Io(format!("{}: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    pub fn is_redundant(&self) -> bool {
        self.copies.len() == 2
    }
}

/// A copy as read from storage.
#[derive(Debug)]
struct Copy {
    flag: u8,
    vars: Option<EnvVars>,
    problem: String,
}

/// `a` is newer than `b` in counter mode (wraps: 0 is newer than 255).
fn newer(a: u8, b: u8) -> bool {
    match (a, b) {
        (0, 255) => true,
        (255, 0) => false,
        _ => a > b,
    }
}

/// Splits `name=value\0...\0\0` into variables.
pub fn decode(data: &[u8]) -> EnvVars {
    let mut vars = EnvVars::new();
    for entry in data.split(|b| *b == 0) {
        if entry.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(entry);
        if let Some((k, v)) = text.split_once('=') {
            vars.insert(k.to_owned(), v.to_owned());
        }
    }
    vars
}

/// Serializes variables into a data area of exactly `len` bytes (sorted, 0xFF padding).
pub fn encode(vars: &EnvVars, len: usize) -> Result<Vec<u8>, EnvError> {
    let mut data = Vec::with_capacity(len);
    for (k, v) in vars {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(EnvError::Invalid(format!(
                "variable {k:?} cannot be stored (empty name, '=' in the name, or NUL)"
            )));
        }
        data.extend_from_slice(k.as_bytes());
        data.push(b'=');
        data.extend_from_slice(v.as_bytes());
        data.push(0);
    }
    data.push(0);
    if data.len() > len {
        return Err(EnvError::Invalid(format!(
            "the environment needs {} bytes but the env area holds {len}",
            data.len()
        )));
    }
    data.resize(len, 0xFF);
    Ok(data)
}

/// An eMMC boot partition unlocked for writing (`force_ro` set to 0); locked again
/// (`force_ro` back to 1) when dropped.
#[derive(Debug)]
pub struct Unlocked {
    attribute: PathBuf,
}

impl Unlocked {
    /// Unlocks `device` if it is an eMMC boot partition locked read-only: its name (symlinks
    /// resolved, so `/dev/disk/by-path/...` works too) has a `block/<name>/force_ro`
    /// attribute under `sysfs` that reads 1. `None` for any other device, or one already
    /// writable.
    pub fn unlock(sysfs: &Path, device: &Path) -> Result<Option<Unlocked>, EnvError> {
        let real = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_owned());
        let Some(name) = real.file_name() else {
            return Ok(None);
        };
        let attribute = sysfs.join("block").join(name).join("force_ro");
        let Ok(value) = std::fs::read_to_string(&attribute) else {
            return Ok(None);
        };
        if value.trim() == "0" {
            return Ok(None);
        }
        std::fs::write(&attribute, "0").map_err(|e| {
            EnvError::Io(format!(
                "{} is read-only (an eMMC boot partition) and writing 0 to {} failed: {e}",
                device.display(),
                attribute.display()
            ))
        })?;
        Ok(Some(Unlocked { attribute }))
    }
}

impl Drop for Unlocked {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.attribute, "1") {
            log::warn!(
                "cannot lock the eMMC boot partition again ({} = 1): {e}",
                self.attribute.display()
            );
        }
    }
}

/// The U-Boot environment described by a `fw_env.config`.
pub struct UbootEnv {
    config: FwEnvConfig,
    lock_path: PathBuf,
    sysfs: PathBuf,
}

impl UbootEnv {
    pub fn new(config: FwEnvConfig) -> Self {
        Self {
            config,
            lock_path: PathBuf::from(LOCK_FILE),
            sysfs: PathBuf::from(crate::device::SYSFS),
        }
    }

    /// The same env with sysfs (where `force_ro` of eMMC boot partitions is) at `sysfs`:
    /// tests stand in a directory.
    pub fn with_sysfs(mut self, sysfs: &Path) -> Self {
        self.sysfs = sysfs.to_owned();
        self
    }

    pub fn open(fw_env_config: &Path) -> Result<Self, EnvError> {
        Ok(Self::new(FwEnvConfig::load(fw_env_config)?))
    }

    pub fn config(&self) -> &FwEnvConfig {
        &self.config
    }

    fn header_len(&self) -> u64 {
        if self.config.is_redundant() {
            5
        } else {
            4
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, EnvError> {
        if let Some(dir) = self.lock_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(|e| EnvError::Io(format!("lock {}: {e}", self.lock_path.display())))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| EnvError::Io(format!("lock {}: {e}", self.lock_path.display())))
    }

    fn read_copy(&self, loc: &EnvLocation) -> Result<Copy, EnvError> {
        let f = match File::open(&loc.device) {
            Ok(f) => f,
            // U-Boot makes a redundant env in files (uboot.env, uboot-redund.env on a FAT
            // boot partition) one saveenv at a time: the second file may not exist yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.config.is_redundant() => {
                return Ok(Copy {
                    flag: 0,
                    vars: None,
                    problem: format!("{}: {e}", loc.device.display()),
                })
            }
            Err(e) => return Err(EnvError::Io(format!("{}: {e}", loc.device.display()))),
        };
        let mut buf = vec![0u8; loc.size as usize];
        if let Err(e) = f.read_exact_at(&mut buf, loc.offset) {
            return Ok(Copy {
                flag: 0,
                vars: None,
                problem: format!(
                    "{} at {:#x}: cannot read {} bytes ({e})",
                    loc.device.display(),
                    loc.offset,
                    loc.size
                ),
            });
        }
        let h = self.header_len() as usize;
        let stored = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flag = if h == 5 { buf[4] } else { 0 };
        let computed = crc32fast::hash(&buf[h..]);
        if stored != computed {
            return Ok(Copy {
                flag,
                vars: None,
                problem: format!(
                    "{} at {:#x}: CRC32 is {computed:08x}, stored {stored:08x}",
                    loc.device.display(),
                    loc.offset
                ),
            });
        }
        Ok(Copy {
            flag,
            vars: Some(decode(&buf[h..])),
            problem: String::new(),
        })
    }

    /// Reads every copy; returns the index of the active one (if any) and the copies.
    fn read_all(&self) -> Result<(Option<usize>, Vec<Copy>), EnvError> {
        let copies = self
            .config
            .copies
            .iter()
            .map(|l| self.read_copy(l))
            .collect::<Result<Vec<_>, _>>()?;
        let active = match (copies.first(), copies.get(1)) {
            (Some(a), None) => a.vars.as_ref().map(|_| 0),
            (Some(a), Some(b)) => match (a.vars.is_some(), b.vars.is_some()) {
                (true, true) => Some(if newer(b.flag, a.flag) { 1 } else { 0 }),
                (true, false) => Some(0),
                (false, true) => Some(1),
                (false, false) => None,
            },
            _ => None,
        };
        Ok((active, copies))
    }

    fn no_valid(copies: &[Copy]) -> EnvError {
        EnvError::NoValidCopy(
            copies
                .iter()
                .map(|c| c.problem.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// The variables of the valid (newest) copy.
    pub fn read(&self) -> Result<EnvVars, EnvError> {
        let _lock = self.lock()?;
        let (active, mut copies) = self.read_all()?;
        match active {
            Some(i) => Ok(copies.swap_remove(i).vars.unwrap_or_default()),
            None => Err(Self::no_valid(&copies)),
        }
    }

    /// Applies `f` to the current variables and stores the result in one write (see the
    /// module doc); returns the variables written.
    pub fn update<F: FnOnce(&mut EnvVars) -> Result<(), EnvError>>(
        &self,
        f: F,
    ) -> Result<EnvVars, EnvError> {
        let _lock = self.lock()?;
        let (active, copies) = self.read_all()?;
        let Some(active) = active else {
            return Err(Self::no_valid(&copies));
        };
        let mut vars = copies[active].vars.clone().unwrap_or_default();
        f(&mut vars)?;
        let (target, flag) = if self.config.is_redundant() {
            (1 - active, copies[active].flag.wrapping_add(1))
        } else {
            (0, 0)
        };
        let loc = &self.config.copies[target];
        let h = self.header_len() as usize;
        let data = encode(&vars, loc.size as usize - h)?;
        let mut image = Vec::with_capacity(loc.size as usize);
        image.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        if h == 5 {
            image.push(flag);
        }
        image.extend_from_slice(&data);
        // Locked again when this goes out of scope: after the sync, or on any error.
        let _unlocked = Unlocked::unlock(&self.sysfs, &loc.device)?;
        // The other copy of a redundant env in files may not exist yet (see read_copy):
        // create it when the valid copy is a regular file, never in place of a device.
        let create = self.config.is_redundant()
            && std::fs::metadata(&self.config.copies[active].device).is_ok_and(|m| m.is_file())
            && std::fs::symlink_metadata(&loc.device).is_err();
        let file = OpenOptions::new()
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o644)
            .open(&loc.device)
            .map_err(|e| EnvError::Io(format!("{}: {e}", loc.device.display())))?;
        // Two writes, so the power-cut campaign can cut between them (a torn copy).
        let half = image.len() / 2;
        file.write_all_at(&image[..half], loc.offset)
            .and_then(|_| {
                crate::failpoint::hit("env.mid-write");
                file.write_all_at(&image[half..], loc.offset + half as u64)
            })
            .and_then(|_| file.sync_all())
            .and_then(|_| match loc.device.parent().filter(|_| create) {
                Some(dir) => crate::fsutil::sync_dir(dir),
                None => Ok(()),
            })
            .map_err(|e| {
                EnvError::Io(format!(
                    "{} at {:#x}: write failed: {e}",
                    loc.device.display(),
                    loc.offset
                ))
            })?;
        crate::failpoint::hit("env.after-write");
        Ok(vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the real `fw_printenv -c CFG NAME` (libubootenv-tool) prints, trimmed.
    fn fw_printenv(cfg: &std::path::Path, name: &str) -> String {
        let out = std::process::Command::new("fw_printenv")
            .arg("-c")
            .arg(cfg)
            .arg(name)
            .output()
            .expect("fw_printenv (libubootenv-tool)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn config_parses_single_redundant_and_rejects_garbage() {
        let p = Path::new("/etc/fw_env.config");
        let c = FwEnvConfig::parse(
            "# comment\n/dev/mmcblk0 0x400000 0x4000\n/dev/mmcblk0 0x404000 0x4000 0x200 # tail\n",
            p,
        )
        .unwrap();
        assert!(c.is_redundant());
        assert_eq!(c.copies[1].offset, 0x404000);
        assert_eq!(c.copies[1].sector_size, Some(0x200));
        // Sizes are hex even without 0x, as libubootenv reads them; offsets may be decimal.
        let c = FwEnvConfig::parse("uboot.env 1024 4000\n", p).unwrap();
        assert_eq!(c.copies[0].device, PathBuf::from("/etc/uboot.env"));
        assert_eq!((c.copies[0].offset, c.copies[0].size), (1024, 0x4000));
        let e = FwEnvConfig::parse("\n/dev/x 0x0 zz\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("\"zz\""), "{e}");
        let e = FwEnvConfig::parse("/dev/x 0 0x4000\n/dev/x 0x2000 0x4000\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlap"), "{e}");
        assert!(FwEnvConfig::parse("", p).is_err());
    }

    /// An i.MX-style env: a redundant pair in an eMMC boot partition. The partition is a
    /// file named like the kernel's device (`mmcblk2boot0`), and a directory stands in
    /// for sysfs with its `block/mmcblk2boot0/force_ro`.
    fn boot_partition_env(force_ro: &str) -> (tempfile::TempDir, UbootEnv, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("mmcblk2boot0");
        let mut vars = EnvVars::new();
        vars.insert("BOOT_ORDER".into(), "A B".into());
        let data = encode(&vars, 0x2000 - 5).unwrap();
        let mut image = vec![0u8; 0x8000];
        image[0x1000..0x1004].copy_from_slice(&crc32fast::hash(&data).to_le_bytes());
        image[0x1004] = 1;
        image[0x1005..0x3000].copy_from_slice(&data);
        std::fs::write(&dev, image).unwrap();
        let attr = t.path().join("sys/block/mmcblk2boot0/force_ro");
        std::fs::create_dir_all(attr.parent().unwrap()).unwrap();
        std::fs::write(&attr, force_ro).unwrap();
        let text = format!("{d} 0x1000 0x2000\n{d} 0x5000 0x2000\n", d = dev.display());
        let config = FwEnvConfig::parse(&text, Path::new("/etc/fw_env.config")).unwrap();
        let env = UbootEnv::new(config).with_sysfs(&t.path().join("sys"));
        (t, env, attr)
    }

    #[test]
    fn an_emmc_boot_partition_is_unlocked_for_the_write_and_locked_again() {
        let (t, env, attr) = boot_partition_env("1\n");
        // The guard alone: 0 while held, 1 once dropped.
        let g = Unlocked::unlock(&t.path().join("sys"), &t.path().join("mmcblk2boot0"))
            .unwrap()
            .expect("force_ro was 1");
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "0");
        drop(g);
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "1");
        // An update: written (the real fw_printenv reads it), locked again.
        env.update(|v| {
            v.insert("BOOT_ORDER".into(), "B A".into());
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "1");
        assert_eq!(env.read().unwrap()["BOOT_ORDER"], "B A");
        let cfg = t.path().join("fw_env.config");
        let dev = t.path().join("mmcblk2boot0");
        std::fs::write(
            &cfg,
            format!("{d} 0x1000 0x2000\n{d} 0x5000 0x2000\n", d = dev.display()),
        )
        .unwrap();
        assert_eq!(fw_printenv(&cfg, "BOOT_ORDER"), "BOOT_ORDER=B A");
        // A partition someone left writable stays writable.
        std::fs::write(&attr, "0\n").unwrap();
        env.update(|v| {
            v.insert("x".into(), "1".into());
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "0\n");
    }

    #[test]
    fn a_failed_write_locks_again_and_a_lock_that_cannot_be_lifted_writes_nothing() {
        // The write fails after the unlock (an immutable file: even root cannot open it
        // for writing): force_ro is 1 again, the error names the device.
        let (t, env, attr) = boot_partition_env("1\n");
        let dev = t.path().join("mmcblk2boot0");
        let before = std::fs::read(&dev).unwrap();
        let chattr = |flag: &str| {
            let st = std::process::Command::new("chattr")
                .arg(flag)
                .arg(&dev)
                .status()
                .expect("chattr (e2fsprogs)");
            assert!(st.success(), "chattr {flag} (the temp dir must be on ext4)");
        };
        chattr("+i");
        let err = env.update(|_| Ok(()));
        chattr("-i");
        let err = err.unwrap_err().to_string();
        assert!(err.contains(&dev.display().to_string()), "{err}");
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "1");
        assert_eq!(std::fs::read(&dev).unwrap(), before);
        // force_ro cannot be written (root cannot write /proc/version): refused, the env
        // untouched.
        std::fs::remove_file(&attr).unwrap();
        std::os::unix::fs::symlink("/proc/version", &attr).unwrap();
        let err = env
            .update(|v| {
                v.insert("BOOT_ORDER".into(), "B A".into());
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is read-only (an eMMC boot partition) and writing 0 to")
                && err.contains("force_ro failed"),
            "{err}"
        );
        assert_eq!(std::fs::read(&dev).unwrap(), before, "nothing written");
    }

    /// Raspberry Pi: a redundant env in two files on the FAT boot partition, of which
    /// U-Boot has written only the first so far.
    #[test]
    fn the_second_file_of_a_redundant_env_is_made_by_the_first_write() {
        let t = tempfile::tempdir().unwrap();
        let (first, second) = (
            t.path().join("uboot.env"),
            t.path().join("uboot-redund.env"),
        );
        let mut vars = EnvVars::new();
        vars.insert("BOOT_ORDER".into(), "A B".into());
        let data = encode(&vars, 0x4000 - 5).unwrap();
        let mut image = crc32fast::hash(&data).to_le_bytes().to_vec();
        image.push(1);
        image.extend_from_slice(&data);
        std::fs::write(&first, &image).unwrap();
        let text = format!(
            "{} 0x0 0x4000\n{} 0x0 0x4000\n",
            first.display(),
            second.display()
        );
        let cfg_path = t.path().join("fw_env.config");
        std::fs::write(&cfg_path, &text).unwrap();
        let env = UbootEnv::new(FwEnvConfig::parse(&text, &cfg_path).unwrap());
        assert_eq!(env.read().unwrap()["BOOT_ORDER"], "A B");
        env.update(|v| {
            v.insert("BOOT_ORDER".into(), "B A".into());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            std::fs::read(&first).unwrap(),
            image,
            "the valid copy untouched"
        );
        assert_eq!(std::fs::metadata(&second).unwrap().len(), 0x4000);
        assert_eq!(fw_printenv(&cfg_path, "BOOT_ORDER"), "BOOT_ORDER=B A");
        // The next write goes to the first file again.
        env.update(|v| {
            v.insert("BOOT_ORDER".into(), "A B".into());
            Ok(())
        })
        .unwrap();
        assert_ne!(std::fs::read(&first).unwrap(), image);
        assert_eq!(env.read().unwrap()["BOOT_ORDER"], "A B");
        // A single env whose file is missing is an error, not an empty env.
        let single = format!("{} 0x0 0x4000\n", t.path().join("missing.env").display());
        let env = UbootEnv::new(FwEnvConfig::parse(&single, &cfg_path).unwrap());
        assert!(env.read().unwrap_err().to_string().contains("missing.env"));
    }

    #[test]
    fn flag_counter_wraps() {
        assert!(newer(2, 1));
        assert!(newer(0, 255));
        assert!(!newer(255, 0));
        assert!(!newer(7, 7));
    }

    #[test]
    fn encode_is_sorted_terminated_padded_and_bounded() {
        let vars: EnvVars = [
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into();
        let d = encode(&vars, 16).unwrap();
        assert_eq!(&d[..9], b"a=1\0b=2\0\0");
        assert!(d[9..].iter().all(|b| *b == 0xFF));
        assert_eq!(decode(&d), vars);
        assert!(encode(&vars, 8)
            .unwrap_err()
            .to_string()
            .contains("needs 9 bytes"));
        let bad: EnvVars = [("a=b".to_string(), "1".to_string())].into();
        assert!(encode(&bad, 64).is_err());
    }
}
