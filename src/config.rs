//! `system.toml` → typed configuration.
//!
//! Parsing is strict: an unknown key is an error that names the key and its line
//! (serde's `deny_unknown_fields` plus the TOML parser's spans), and cross-field rules
//! (unique bootnames, at least two slots per bootable class, slot parents, no two slots
//! on the same storage, a transport's required keys) are checked once here so the rest
//! of rota can trust the values.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default location of the system configuration.
pub const DEFAULT_PATH: &str = "/etc/rota/system.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub system: SystemSection,
    #[serde(default)]
    pub keyring: KeyringSection,
    #[serde(default)]
    pub bootloader: BootloaderSection,
    /// `[slot.<class>.<index>]`
    #[serde(default)]
    pub slot: BTreeMap<String, BTreeMap<String, SlotSection>>,
    /// `[mcu.<name>]`
    #[serde(default)]
    pub mcu: BTreeMap<String, McuSection>,
    #[serde(default)]
    pub dbus: DbusSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub install: InstallSection,
    #[serde(default)]
    pub hooks: HooksSection,
    pub update: Option<UpdateSection>,
    /// Where the file was read from (set by [`Config::load`]); relative paths resolve against its directory.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SystemSection {
    pub compatible: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_cmdline")]
    pub kernel_cmdline: PathBuf,
    #[serde(default = "default_boot_attempts")]
    pub boot_attempts: u32,
    #[serde(default)]
    pub reboot_after_install: bool,
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
    /// The running system's own version, for when rota has no record of the booted slot
    /// (the factory image, or a state file that was lost): an os-release file
    /// (`VERSION_ID=`) or a file holding just the version.
    #[serde(default)]
    pub version_file: Option<PathBuf>,
    /// How versions are checked and ordered: `semver` (default) or `debian`.
    #[serde(default)]
    pub version_scheme: crate::version::VersionScheme,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringSection {
    #[serde(default)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BootloaderSection {
    #[serde(rename = "type", default = "default_bootloader")]
    pub kind: BootloaderKind,
    #[serde(default = "default_fw_env_config")]
    pub fw_env_config: PathBuf,
}

impl Default for BootloaderSection {
    fn default() -> Self {
        Self {
            kind: default_bootloader(),
            fw_env_config: default_fw_env_config(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootloaderKind {
    Uboot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SlotSection {
    pub device: PathBuf,
    pub bootname: Option<String>,
    /// RAUC's `parent = "<class>.<index>"`: this slot belongs to that bootable slot's
    /// group (in use while it is booted, installed when it is the target).
    pub parent: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct McuSection {
    pub transport: McuTransportKind,
    /// serial: the tty device
    pub device: Option<PathBuf>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// udp: `host:port`
    pub address: Option<String>,
    /// ed25519 public key (PEM) that the node's MCUboot images must be signed with.
    pub key: Option<PathBuf>,
    /// MCUboot image number on the node (multi-image devices).
    #[serde(default)]
    pub image: u32,
    /// How long to wait for a request's answer.
    #[serde(default = "default_mcu_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum McuTransportKind {
    Serial,
    Udp,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DbusSection {
    #[serde(default)]
    pub rauc_compat: bool,
    /// Members of this group may install, cancel and mark (besides root).
    pub group: Option<String>,
}

/// HTTP(S) client settings shared by bundle downloads and pollers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpSection {
    /// PEM bundle of trusted CAs; replaces the built-in web roots (pinning).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    pub key: Option<PathBuf>,
    /// Extra headers sent with every request, `"Name: value"`.
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// A transfer that receives no byte for this long is dropped and retried.
    #[serde(default = "default_stall_timeout", with = "humantime_serde_compat")]
    pub stall_timeout: Duration,
    /// Consecutive failed attempts of one range before the install fails.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// What a redirect to another origin (scheme, host or port) gets: the request without
    /// the extra headers and tokens, or an error.
    #[serde(default)]
    pub cross_origin_redirects: CrossOriginRedirects,
}

/// `[http] cross-origin-redirects`: how a redirect to another origin is handled.
/// Same-origin redirects always keep the headers; https → http is always refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrossOriginRedirects {
    /// Follow it, without `[http] headers`, install `http-headers` or the hawkBit token.
    #[default]
    StripHeaders,
    /// Do not follow it: the request fails.
    Refuse,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            ca: None,
            cert: None,
            key: None,
            headers: Vec::new(),
            connect_timeout: default_connect_timeout(),
            stall_timeout: default_stall_timeout(),
            retries: default_retries(),
            cross_origin_redirects: CrossOriginRedirects::default(),
        }
    }
}

/// `[install]`: how an install checks its own work.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InstallSection {
    #[serde(default)]
    pub read_back: ReadBack,
}

/// What is read back from the slot after it was written, and compared with the signed
/// manifest. Every chunk was already checked against its signed SHA-256 before it was
/// written; the read-back checks the storage: that the device returns what was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadBack {
    /// Read every byte back from the device (around the page cache) and compare the
    /// image's CRC32: catches writes lost or misplaced by the device, driver or a failing
    /// flash, at hardware-CRC speed. Not a defence against a deliberate attacker — the
    /// bytes were authenticated on their way in.
    #[default]
    Crc,
    /// As `crc`, and the image's SHA-256 too: one more cryptographic pass over the image.
    Sha256,
    /// No read-back: trust the device's write path (fastest; a silently failing flash
    /// chip is then found only at boot).
    Off,
}

/// `[hooks]`: the integrator's programs, run at fixed points of every install (see
/// `install::hooks`). They come from this root-owned file only, never from a bundle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HooksSection {
    /// Runs after the signature, compatible and version checks, before any slot is
    /// touched; a non-zero exit refuses the install.
    pub pre_install: Option<PathBuf>,
    /// Runs after every image is written and read back, before the activation; a
    /// non-zero exit fails the install and the new slot is never activated.
    pub post_install: Option<PathBuf>,
    /// Runs once per written slot, after its read-back and before `post-install`.
    pub slot_post_install: Option<PathBuf>,
    /// Slot classes whose file system is mounted read-write for `slot-post-install`
    /// (`RAUC_SLOT_MOUNT_POINT`); slots of other classes get the hook unmounted.
    #[serde(default)]
    pub mount_classes: Vec<String>,
    /// Where those file systems are mounted: `<mount-prefix>/<slot name>`.
    #[serde(default = "default_mount_prefix")]
    pub mount_prefix: PathBuf,
    /// A hook still running after this long is killed and fails the install.
    #[serde(default = "default_hook_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl Default for HooksSection {
    fn default() -> Self {
        Self {
            pre_install: None,
            post_install: None,
            slot_post_install: None,
            mount_classes: Vec::new(),
            mount_prefix: default_mount_prefix(),
            timeout: default_hook_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpdateSection {
    /// A JSON feed URL, or a hawkBit DDI base URL when `kind = "hawkbit"`.
    pub poll: String,
    #[serde(default = "default_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(default)]
    pub kind: PollKind,
    /// hawkBit: controller id (default: the machine id).
    pub controller_id: Option<String>,
    /// hawkBit: tenant (default `DEFAULT`).
    pub tenant: Option<String>,
    /// hawkBit: target security token.
    pub target_token: Option<String>,
    /// hawkBit: gateway security token.
    pub gateway_token: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollKind {
    #[default]
    Feed,
    Hawkbit,
}

/// One configured slot, flattened from `[slot.<class>.<index>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    /// `<class>.<index>`, e.g. `rootfs.1` (RAUC's naming).
    pub name: String,
    pub class: String,
    pub index: u32,
    pub device: PathBuf,
    pub bootname: Option<String>,
    /// The slot name (`rootfs.0`) of the bootable slot whose group this slot belongs to.
    pub parent: Option<String>,
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` is used for messages and to resolve relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        cfg.path = path.to_owned();
        cfg.resolve_relative_paths();
        cfg.check()?;
        Ok(cfg)
    }

    /// The config file named by `--config`, `ROTA_CONFIG`, or the default path.
    pub fn default_path() -> PathBuf {
        std::env::var_os("ROTA_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    fn resolve_relative_paths(&mut self) {
        let base = self.path.parent().map(Path::to_owned).unwrap_or_default();
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.system.data_dir);
        fix(&mut self.system.kernel_cmdline);
        fix(&mut self.bootloader.fw_env_config);
        self.keyring.paths.iter_mut().for_each(fix);
        for class in self.slot.values_mut() {
            for s in class.values_mut() {
                fix(&mut s.device);
            }
        }
        for m in self.mcu.values_mut() {
            if let Some(k) = m.key.as_mut() {
                fix(k);
            }
        }
        for p in [&mut self.http.ca, &mut self.http.cert, &mut self.http.key]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        let h = &mut self.hooks;
        for p in [
            &mut h.pre_install,
            &mut h.post_install,
            &mut h.slot_post_install,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        fix(&mut h.mount_prefix);
    }

    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.system.compatible.trim().is_empty() {
            return Err(self.invalid("[system] compatible must not be empty"));
        }
        // Counters are stored in hex (RAUC, U-Boot's setexpr), but the boot script's
        // `test ${BOOT_x_LEFT} -gt 0` reads them as decimal: "a" (10) counts as 0 there.
        // Single digits are the same in both.
        if !(1..=9).contains(&self.system.boot_attempts) {
            return Err(self.invalid(
                "[system] boot-attempts must be between 1 and 9 (the boot script's `test -gt` reads the hex counters as decimal numbers)",
            ));
        }
        if self.system.reboot_command.is_empty() {
            return Err(self.invalid("[system] reboot-command must name a program"));
        }
        let mut bootnames = BTreeSet::new();
        for (class, slots) in &self.slot {
            if class.contains('.') || class.is_empty() {
                return Err(self.invalid(format!(
                    "slot class {class:?} must be a non-empty name without '.'"
                )));
            }
            for (idx, s) in slots {
                if idx.parse::<u32>().is_err() {
                    return Err(
                        self.invalid(format!("[slot.{class}.{idx}]: the index must be a number"))
                    );
                }
                if s.bootname.is_some() && s.parent.is_some() {
                    return Err(self.invalid(format!(
                        "[slot.{class}.{idx}] has both bootname and parent; a slot with a parent boots with it and has no bootname"
                    )));
                }
                if let Some(b) = &s.bootname {
                    let ok =
                        !b.is_empty() && b.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !ok {
                        return Err(self.invalid(format!(
                            "[slot.{class}.{idx}] bootname {b:?} must be letters, digits or '_' (it becomes BOOT_{b}_LEFT)"
                        )));
                    }
                    if !bootnames.insert(b.clone()) {
                        return Err(self.invalid(format!("bootname {b:?} is used by two slots")));
                    }
                }
            }
            let bootable = slots.values().filter(|s| s.bootname.is_some()).count();
            if bootable == 1 {
                return Err(self.invalid(format!(
                    "slot class {class:?} has one bootable slot; A/B needs at least two"
                )));
            }
        }
        self.check_parents()?;
        // Devices that exist now must not alias each other (the service checks again
        // when it starts, and the slot writer before every write).
        check_aliases(&self.slots(), Path::new(crate::device::SYSFS))
            .map_err(|m| self.invalid(m))?;
        for (name, m) in &self.mcu {
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(self.invalid(format!(
                    "[mcu.{name}]: the name must be letters, digits, '-' or '_'"
                )));
            }
            match m.transport {
                McuTransportKind::Serial if m.device.is_none() => {
                    return Err(
                        self.invalid(format!("[mcu.{name}] transport = \"serial\" needs device"))
                    )
                }
                McuTransportKind::Udp if m.address.is_none() => {
                    return Err(
                        self.invalid(format!("[mcu.{name}] transport = \"udp\" needs address"))
                    )
                }
                _ => {}
            }
        }
        self.check_hooks()?;
        for h in &self.http.headers {
            if !h.contains(':') {
                // The text is not quoted: a header missing its colon may be a bare secret.
                return Err(self.invalid(format!(
                    "[http] headers: an entry ({} bytes) is not \"Name: value\"",
                    h.len()
                )));
            }
        }
        Ok(())
    }

    /// `[hooks]`: a hook path names a file (its owner and mode are checked when it runs);
    /// `mount-classes` needs `slot-post-install` and names configured classes.
    fn check_hooks(&self) -> Result<(), ConfigError> {
        let h = &self.hooks;
        for (key, p) in [
            ("pre-install", &h.pre_install),
            ("post-install", &h.post_install),
            ("slot-post-install", &h.slot_post_install),
        ] {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(self.invalid(format!("[hooks] {key} must name a program")));
            }
        }
        if h.timeout.is_zero() {
            return Err(self.invalid("[hooks] timeout must be longer than 0s"));
        }
        if !h.mount_classes.is_empty() && h.slot_post_install.is_none() {
            return Err(self.invalid(
                "[hooks] mount-classes is set but slot-post-install is not: nothing would use the mounts",
            ));
        }
        for c in &h.mount_classes {
            if !self.slot.contains_key(c) {
                return Err(self.invalid(format!(
                    "[hooks] mount-classes names {c:?}, which is no configured slot class"
                )));
            }
        }
        Ok(())
    }

    /// `parent = "<class>.<index>"`: names an existing slot of another class that has a
    /// bootname (and so no parent itself: no chains); a slot has a bootname or a parent,
    /// not both; one slot of a class per parent.
    fn check_parents(&self) -> Result<(), ConfigError> {
        let slots = self.slots();
        let mut children = BTreeSet::new();
        for s in &slots {
            let Some(p) = &s.parent else { continue };
            let at = format!("[slot.{}]", s.name);
            let Some(ps) = slots.iter().find(|x| &x.name == p) else {
                return Err(self.invalid(format!(
                    "{at} parent = {p:?} names no configured slot (write it as <class>.<index>, e.g. \"rootfs.0\")"
                )));
            };
            if ps.class == s.class {
                return Err(self.invalid(format!(
                    "{at} parent = {p:?} is of the same class; a parent is a slot of another (bootable) class"
                )));
            }
            if ps.parent.is_some() {
                return Err(self.invalid(format!(
                    "{at} parent = {p:?} has a parent itself; chains of parents are not supported"
                )));
            }
            if ps.bootname.is_none() {
                return Err(self.invalid(format!(
                    "{at} parent = {p:?} has no bootname; a parent must be a bootable slot"
                )));
            }
            if !children.insert((s.class.clone(), p.clone())) {
                return Err(self.invalid(format!(
                    "two slots of class {:?} have parent {p:?}; each parent has at most one child per class",
                    s.class
                )));
            }
        }
        Ok(())
    }

    /// All slots, ordered by class then index.
    pub fn slots(&self) -> Vec<SlotConfig> {
        let mut out = Vec::new();
        for (class, slots) in &self.slot {
            let mut v: Vec<SlotConfig> = slots
                .iter()
                .map(|(idx, s)| SlotConfig {
                    name: format!("{class}.{idx}"),
                    class: class.clone(),
                    index: idx.parse().unwrap_or(u32::MAX),
                    device: s.device.clone(),
                    bootname: s.bootname.clone(),
                    parent: s.parent.clone(),
                })
                .collect();
            v.sort_by_key(|s| s.index);
            out.extend(v);
        }
        out
    }
}

/// Refuses slots that are the same storage: the same file (hard link, symlink, another
/// path), the same block device (another node with its major:minor), or overlapping block
/// devices (a disk and its partition, partitions sharing sectors). A device that does not
/// exist (yet) cannot alias anything and is skipped; the slot writer checks again.
pub fn check_aliases(slots: &[SlotConfig], sysfs: &Path) -> Result<(), String> {
    let ids: Vec<(&SlotConfig, crate::device::Identity)> = slots
        .iter()
        .filter_map(|s| {
            crate::device::Identity::of_path(&s.device)
                .ok()
                .map(|i| (s, i))
        })
        .collect();
    for (i, (a, ia)) in ids.iter().enumerate() {
        for (b, ib) in &ids[i + 1..] {
            if let Some(why) = crate::device::alias(sysfs, (&a.device, *ia), (&b.device, *ib)) {
                return Err(format!("slots {} and {} are {why}", a.name, b.name));
            }
        }
    }
    Ok(())
}

/// On the data partition both slots share (RAUC and Mender integrations mount it at
/// `/data` too); the service refuses a data-dir on a slot device.
fn default_data_dir() -> PathBuf {
    PathBuf::from("/data/rota")
}
fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}
fn default_boot_attempts() -> u32 {
    3
}
fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}
fn default_bootloader() -> BootloaderKind {
    BootloaderKind::Uboot
}
fn default_fw_env_config() -> PathBuf {
    PathBuf::from("/etc/fw_env.config")
}
fn default_baud() -> u32 {
    115_200
}
fn default_mcu_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retries() -> u32 {
    8
}
fn default_mount_prefix() -> PathBuf {
    PathBuf::from("/run/rota/mnt")
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_interval() -> Duration {
    Duration::from_secs(3600)
}

/// Durations are written as humans do: `"1h"`, `"30s"`, `"1h 30m"`.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[system]
compatible = "acme-gateway"
data-dir = "data"
boot-attempts = 3

[keyring]
paths = ["keys/release.pub.pem"]

[bootloader]
type = "uboot"
fw-env-config = "fw_env.config"

[slot.rootfs.0]
device = "slots/a.img"
bootname = "A"

[slot.rootfs.1]
device = "slots/b.img"
bootname = "B"

[mcu.sensor]
transport = "udp"
address = "127.0.0.1:1337"

[dbus]
rauc-compat = true

[update]
poll = "http://127.0.0.1/feed.json"
interval = "1h"
"#;

    #[test]
    fn parses_the_spec_example_and_resolves_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/rota/system.toml")).unwrap();
        assert_eq!(c.system.compatible, "acme-gateway");
        assert_eq!(c.system.data_dir, PathBuf::from("/etc/rota/data"));
        assert_eq!(
            c.bootloader.fw_env_config,
            PathBuf::from("/etc/rota/fw_env.config")
        );
        let slots = c.slots();
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[1].name, "rootfs.1");
        assert_eq!(slots[1].bootname.as_deref(), Some("B"));
        assert_eq!(c.update.unwrap().interval, Duration::from_secs(3600));
    }

    #[test]
    fn read_back_defaults_to_crc_and_takes_the_three_modes_only() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.install.read_back, ReadBack::Crc);
        for (word, mode) in [
            ("crc", ReadBack::Crc),
            ("sha256", ReadBack::Sha256),
            ("off", ReadBack::Off),
        ] {
            let text = format!("{GOOD}\n[install]\nread-back = \"{word}\"\n");
            let c = Config::parse(&text, Path::new("x.toml")).unwrap();
            assert_eq!(c.install.read_back, mode);
        }
        let text = format!("{GOOD}\n[install]\nread-back = \"md5\"\n");
        let err = Config::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("md5") && err.contains("crc"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("boot-attempts = 3", "boot-attempts = 3\nboot-atempts = 4");
        let err = Config::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("boot-atempts"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn boot_attempts_stay_one_digit() {
        for (n, ok) in [(0, false), (1, true), (9, true), (10, false), (255, false)] {
            let text = GOOD.replace("boot-attempts = 3", &format!("boot-attempts = {n}"));
            let r = Config::parse(&text, Path::new("x.toml"));
            assert_eq!(r.is_ok(), ok, "boot-attempts = {n}: {r:?}");
        }
    }

    #[test]
    fn duplicate_bootname_is_rejected() {
        let text = GOOD.replace("bootname = \"B\"", "bootname = \"A\"");
        let err = Config::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootname \"A\" is used by two slots"), "{err}");
    }

    #[test]
    fn udp_mcu_without_address_is_rejected() {
        let text = GOOD.replace("address = \"127.0.0.1:1337\"", "");
        let err = Config::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs address"), "{err}");
    }

    #[test]
    fn http_redirect_policy_and_headers() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(
            c.http.cross_origin_redirects,
            CrossOriginRedirects::StripHeaders
        );
        let text = format!("{GOOD}\n[http]\ncross-origin-redirects = \"refuse\"\n");
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(c.http.cross_origin_redirects, CrossOriginRedirects::Refuse);
        let text = format!("{GOOD}\n[http]\ncross-origin-redirects = \"follow\"\n");
        assert!(Config::parse(&text, Path::new("x.toml")).is_err());
        // A header missing its colon may be a bare token: not quoted in the error.
        let text = format!("{GOOD}\n[http]\nheaders = [\"Bearer SECRET123\"]\n");
        let err = Config::parse(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not \"Name: value\""), "{err}");
        assert!(!err.contains("SECRET123"), "{err}");
    }

    #[test]
    fn hooks_are_optional_parsed_and_checked() {
        let c = Config::parse(GOOD, Path::new("/etc/rota/system.toml")).unwrap();
        assert_eq!(c.hooks.pre_install, None);
        assert_eq!(c.hooks.timeout, Duration::from_secs(60));
        assert_eq!(c.hooks.mount_prefix, PathBuf::from("/run/rota/mnt"));
        let text = format!(
            "{GOOD}\n[hooks]\npre-install = \"/usr/lib/rota/check-hw\"\npost-install = \"hooks/post\"\nslot-post-install = \"/usr/lib/rota/fixup\"\nmount-classes = [\"rootfs\"]\nmount-prefix = \"mnt\"\ntimeout = \"1m 30s\"\n"
        );
        let c = Config::parse(&text, Path::new("/etc/rota/system.toml")).unwrap();
        let h = &c.hooks;
        assert_eq!(h.pre_install, Some(PathBuf::from("/usr/lib/rota/check-hw")));
        assert_eq!(h.post_install, Some(PathBuf::from("/etc/rota/hooks/post")));
        assert_eq!(
            h.slot_post_install,
            Some(PathBuf::from("/usr/lib/rota/fixup"))
        );
        assert_eq!(h.mount_classes, vec!["rootfs".to_owned()]);
        assert_eq!(h.mount_prefix, PathBuf::from("/etc/rota/mnt"));
        assert_eq!(h.timeout, Duration::from_secs(90));
        for (body, want) in [
            ("pre-instal = \"/x\"", "unknown field `pre-instal`"),
            ("timeout = \"soon\"", "\"soon\""),
            ("timeout = \"0s\"", "[hooks] timeout must be longer than 0s"),
            (
                "pre-install = \"\"",
                "[hooks] pre-install must name a program",
            ),
            (
                "mount-classes = [\"rootfs\"]",
                "[hooks] mount-classes is set but slot-post-install is not",
            ),
            (
                "slot-post-install = \"/x\"\nmount-classes = [\"appfs\"]",
                "[hooks] mount-classes names \"appfs\", which is no configured slot class",
            ),
        ] {
            let text = format!("{GOOD}\n[hooks]\n{body}\n");
            let err = Config::parse(&text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}\nshould contain {want}");
        }
    }

    const APPFS: &str = "\n[slot.appfs.0]\ndevice = \"slots/app-a.img\"\nparent = \"rootfs.0\"\n\n[slot.appfs.1]\ndevice = \"slots/app-b.img\"\nparent = \"rootfs.1\"\n";

    #[test]
    fn parents_are_parsed() {
        let text = format!("{GOOD}{APPFS}");
        let c = Config::parse(&text, Path::new("/etc/rota/system.toml")).unwrap();
        let slots = c.slots();
        let app1 = slots.iter().find(|s| s.name == "appfs.1").unwrap();
        assert_eq!(app1.parent.as_deref(), Some("rootfs.1"));
        assert_eq!(app1.bootname, None);
        assert_eq!(
            slots.iter().find(|s| s.name == "rootfs.1").unwrap().parent,
            None
        );
    }

    #[test]
    fn bad_parents_are_rejected() {
        let cases = [
            (
                APPFS.replace("parent = \"rootfs.0\"", "parent = \"rootfs.0\"\nbootname = \"X\""),
                "[slot.appfs.0] has both bootname and parent",
            ),
            (
                APPFS.replace("rootfs.1", "rootfs.7"),
                "[slot.appfs.1] parent = \"rootfs.7\" names no configured slot",
            ),
            (
                APPFS.replace("rootfs.1", "B"),
                "[slot.appfs.1] parent = \"B\" names no configured slot",
            ),
            (
                APPFS.replace("parent = \"rootfs.1\"", "parent = \"appfs.0\""),
                "[slot.appfs.1] parent = \"appfs.0\" is of the same class",
            ),
            (
                format!("{APPFS}\n[slot.data.0]\ndevice = \"d\"\nparent = \"appfs.0\"\n"),
                "[slot.data.0] parent = \"appfs.0\" has a parent itself; chains of parents are not supported",
            ),
            (
                format!("{APPFS}\n[slot.boot.0]\ndevice = \"e\"\n[slot.data.0]\ndevice = \"d\"\nparent = \"boot.0\"\n"),
                "[slot.data.0] parent = \"boot.0\" has no bootname",
            ),
            (
                APPFS.replace("rootfs.1", "rootfs.0"),
                "two slots of class \"appfs\" have parent \"rootfs.0\"",
            ),
        ];
        for (extra, want) in cases {
            let err = Config::parse(&format!("{GOOD}{extra}"), Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}\nshould contain {want}");
        }
    }

    #[test]
    fn slots_on_the_same_storage_are_rejected_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("slots")).unwrap();
        std::fs::write(d.join("slots/a.img"), [0u8; 512]).unwrap();
        std::fs::hard_link(d.join("slots/a.img"), d.join("slots/b.img")).unwrap();
        let err = Config::parse(GOOD, &d.join("system.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("slots rootfs.0 and rootfs.1 are the same file ("),
            "{err}"
        );
        // The same path twice, spelled differently.
        std::fs::remove_file(d.join("slots/b.img")).unwrap();
        let text = GOOD.replace("slots/b.img", "slots/../slots/a.img");
        let err = Config::parse(&text, &d.join("system.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("slots rootfs.0 and rootfs.1 are the same file"),
            "{err}"
        );
        // A device that does not exist yet aliases nothing.
        assert!(Config::parse(GOOD, &d.join("system.toml")).is_ok());
    }
}
