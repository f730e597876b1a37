//! The vocabulary every layer shares: what an install asks for, where its bundle is,
//! how far it got, what the status reports say, and the lifecycle states of slots,
//! updates and microcontroller nodes — as types and enums, not strings.
//!
//! This module is the bottom layer: it imports nothing from rota. The JSON names are
//! the ones rota has always written (`status.json`, `rota status --json`), so files and
//! scripts from earlier releases keep working.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a bundle is: parsed once where a request enters (CLI, D-Bus, poller, journal),
/// so every later layer matches on a type instead of looking at string prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Location {
    /// An absolute or relative path (a `file://` URL is stored as its path).
    File(PathBuf),
    /// An `http://` or `https://` URL, kept as given.
    Http(String),
}

impl Default for Location {
    fn default() -> Self {
        Location::File(PathBuf::new())
    }
}

impl Location {
    /// Parses a path or URL. `http://`, `https://` and `file://` are the schemes rota
    /// reads; anything else that looks like a URL (`ftp://…`) is refused by name rather
    /// than taken for a file called `ftp:/…`.
    pub fn parse(s: &str) -> Result<Location, String> {
        let scheme = s.split_once("://").map(|(sc, _)| sc).filter(|sc| {
            !sc.is_empty()
                && sc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        match scheme.map(str::to_ascii_lowercase).as_deref() {
            Some("http") | Some("https") => Ok(Location::Http(s.to_owned())),
            Some("file") => {
                let rest = &s["file://".len()..];
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(
                        "a file URL must name an absolute path on this machine (file:///path)"
                            .into(),
                    );
                }
                Ok(Location::File(PathBuf::from(path)))
            }
            Some(other) => {
                let shown: String = other.chars().take(32).collect();
                Err(format!(
                    "unsupported URL scheme {shown:?}; use a path, file://, http:// or https://"
                ))
            }
            None if s.is_empty() => Err("the bundle location is empty".into()),
            None => Ok(Location::File(PathBuf::from(s))),
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Http(_))
    }

    /// The local path, for a file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Location::File(p) => Some(p),
            Location::Http(_) => None,
        }
    }

    /// The location as the user wrote it (a path, or the URL).
    pub fn as_string(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Http(u) => u.clone(),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

impl TryFrom<String> for Location {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Location::parse(&s)
    }
}

impl From<Location> for String {
    fn from(l: Location) -> String {
        l.as_string()
    }
}

/// What a slot holds, as far as rota wrote it (`status.json` `slots.<name>.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotContent {
    /// Written, read back and verified.
    Ok,
    /// An install is writing it, or died doing so: not to be trusted.
    #[default]
    Installing,
    Failed,
    Cancelled,
}

impl SlotContent {
    /// After an install ended this way.
    pub fn after(result: InstallResult) -> SlotContent {
        match result {
            InstallResult::Success => SlotContent::Ok,
            InstallResult::Failed => SlotContent::Failed,
            InstallResult::Cancelled => SlotContent::Cancelled,
        }
    }
}

/// The last install, followed through reboot (SPEC §5 `last_install.result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateResult {
    #[default]
    Installing,
    Failed,
    Cancelled,
    /// Written and first in the boot order; the reboot into it is next.
    Activated,
    /// Running from the new slot, not yet marked good.
    Booted,
    Good,
    /// The bootloader fell back to the old slot.
    RolledBack,
}

impl UpdateResult {
    /// After an install ended this way (a success is `activated` until the reboot).
    pub fn after(result: InstallResult) -> UpdateResult {
        match result {
            InstallResult::Success => UpdateResult::Activated,
            InstallResult::Failed => UpdateResult::Failed,
            InstallResult::Cancelled => UpdateResult::Cancelled,
        }
    }

    /// The install did not leave a new system (failed or cancelled).
    pub fn is_failure(self) -> bool {
        matches!(self, UpdateResult::Failed | UpdateResult::Cancelled)
    }
}

/// A slot's place in the boot selection as `rota status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotRole {
    Booted,
    /// The bootloader's first choice, not booted.
    Active,
    #[default]
    Inactive,
}

/// Whether the bootloader would still try a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootHealth {
    /// In `BOOT_ORDER` with attempts left.
    Good,
    Bad,
    /// Not bootable (no bootname).
    #[default]
    Unknown,
}

/// A microcontroller node as rota last saw it (`<data-dir>/mcu/<node>.json` `state`,
/// `rota status` `mcu[].state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum McuState {
    /// Nothing known yet (a record written before the first contact).
    #[default]
    #[serde(rename = "unknown", alias = "")]
    Unknown,
    Connecting,
    Uploading,
    /// The whole image is in the node's secondary slot.
    Uploaded,
    /// Marked for a test boot, or running an image not yet confirmed.
    Testing,
    /// An image waits on the node for its next reset.
    Pending,
    /// The reset was sent; the node should come back on the new image.
    Rebooting,
    Confirmed,
    /// The node came back on its previous image.
    Reverted,
    Failed,
    /// A relay was cancelled before the node had a record.
    Cancelled,
    Unreachable,
    /// An image waits in the data dir for the update to be marked good.
    Staged,
}

impl McuState {
    /// No relay is under way: what the node runs is settled.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            McuState::Unknown
                | McuState::Confirmed
                | McuState::Reverted
                | McuState::Failed
                | McuState::Unreachable
        )
    }
}

/// The word each lifecycle state is written as (JSON, D-Bus, logs): the same as its serde
/// name, which `the_words_are_the_json_names` checks.
macro_rules! words {
    ($($ty:ident { $($variant:ident => $word:literal),+ $(,)? })+) => {$(
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }

            /// Every state, for tests and documentation.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

words! {
    SlotContent {
        Ok => "ok",
        Installing => "installing",
        Failed => "failed",
        Cancelled => "cancelled",
    }
    UpdateResult {
        Installing => "installing",
        Failed => "failed",
        Cancelled => "cancelled",
        Activated => "activated",
        Booted => "booted",
        Good => "good",
        RolledBack => "rolled-back",
    }
    SlotRole {
        Booted => "booted",
        Active => "active",
        Inactive => "inactive",
    }
    BootHealth {
        Good => "good",
        Bad => "bad",
        Unknown => "unknown",
    }
    McuState {
        Unknown => "unknown",
        Connecting => "connecting",
        Uploading => "uploading",
        Uploaded => "uploaded",
        Testing => "testing",
        Pending => "pending",
        Rebooting => "rebooting",
        Confirmed => "confirmed",
        Reverted => "reverted",
        Failed => "failed",
        Cancelled => "cancelled",
        Unreachable => "unreachable",
        Staged => "staged",
    }
}

/// What an install call asks for (the union of rota's and RAUC's install options). The
/// resume journal stores it as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstallRequest {
    /// Where the bundle is: a local file or an http(s) URL.
    pub source: Location,
    pub force_version: bool,
    pub ignore_compatible: bool,
    /// `Some(true)` reboots after activation, `None` follows `[system] reboot-after-install`.
    pub reboot: Option<bool>,
    /// Caller-chosen transaction id (RAUC `transaction-id`); a UUID is made otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// Abort unless the bundle's manifest hash is this (RAUC `require-manifest-hash`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_manifest_hash: Option<String>,
    /// Extra HTTP headers, `"Name: value"` (RAUC `http-headers`).
    pub http_headers: Vec<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_no_verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkState {
    Good,
    Bad,
    Active,
}

impl std::str::FromStr for MarkState {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, AgentError> {
        match s {
            "good" => Ok(MarkState::Good),
            "bad" => Ok(MarkState::Bad),
            "active" => Ok(MarkState::Active),
            // Not echoed back when absurdly long (it comes from any caller on the bus).
            other if other.len() > 32 => Err(AgentError::InvalidArgument(format!(
                "unknown mark state ({} bytes): use good, bad or active",
                other.len()
            ))),
            other => Err(AgentError::InvalidArgument(format!(
                "unknown mark state {other:?}: use good, bad or active"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    #[default]
    Idle,
    Installing,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Idle => "idle",
            Operation::Installing => "installing",
        }
    }
}

/// Progress of the running install.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// 0..=100
    pub percent: u8,
    /// What is happening, in English ("Writing rootfs.1", "Verifying signature").
    pub message: String,
    /// Nesting depth as RAUC reports it (1 = whole install, 2 = a step).
    pub depth: i32,
    /// Image bytes placed in the target slot so far (downloaded or reused).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes fetched from the bundle source (network traffic for URLs).
    pub bytes_downloaded: u64,
    /// Bytes taken from what the device already had (adaptive update, resume).
    pub bytes_reused: u64,
    /// Bytes of zero runs written without fetching anything (format 2 bundles).
    pub bytes_zero: u64,
    /// Current fetch rate in bytes per second.
    pub rate: u64,
    /// Estimated seconds left, 0 when unknown.
    pub eta_secs: u64,
}

/// What an install would move, worked out before it starts (`rota install --dry-run`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DownloadEstimate {
    /// Bytes the install would download: bundle metadata, frames, patches (chunked
    /// images: their whole size).
    pub download: u64,
    /// Image bytes the device already has (running slot).
    pub reuse: u64,
    /// Image bytes that are zero runs, written without a download.
    pub zero: u64,
    /// Image bytes in all.
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallResult {
    Success,
    Failed,
    Cancelled,
}

impl InstallResult {
    /// RAUC's `Completed` code: 0 success, 1 failure.
    pub fn code(self) -> i32 {
        match self {
            InstallResult::Success => 0,
            InstallResult::Failed | InstallResult::Cancelled => 1,
        }
    }
}

/// `rota status --json` (SPEC §5), also behind `GetStatus` on D-Bus.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatusReport {
    pub compatible: String,
    pub booted: String,
    pub primary: String,
    pub operation: Operation,
    pub last_error: String,
    pub slots: Vec<SlotReport>,
    pub last_install: Option<LastInstall>,
    pub mcu: Vec<McuReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SlotReport {
    pub name: String,
    pub class: String,
    pub bootname: Option<String>,
    /// The slot this one boots with (`parent = "rootfs.0"`), if any.
    pub parent: Option<String>,
    pub device: String,
    /// A slot with a parent has its parent's role.
    pub state: SlotRole,
    pub boot_status: BootHealth,
    /// Attempts left in the bootloader, when bootable.
    pub boot_attempts_left: Option<u32>,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub installed_at: Option<String>,
    pub transaction: Option<String>,
    pub bundle_hash: Option<String>,
    /// What rota wrote into the slot, when it wrote anything.
    pub status: Option<SlotContent>,
}

/// The last install as `rota status` reports it (SPEC §5 `last_install`); the state file
/// keeps the same fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastInstall {
    pub version: String,
    pub slot: String,
    pub transaction: String,
    pub result: UpdateResult,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct McuReport {
    pub name: String,
    pub version: String,
    pub state: McuState,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Another operation is running (one install at a time).
    #[error("busy: {0}")]
    Busy(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Failed(String),
    #[error("the agent has stopped")]
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn the_words_are_the_json_names() {
        for v in SlotContent::ALL {
            assert_eq!(json(v), v.as_str());
        }
        for v in UpdateResult::ALL {
            assert_eq!(json(v), v.as_str());
        }
        for v in SlotRole::ALL {
            assert_eq!(json(v), v.as_str());
        }
        for v in BootHealth::ALL {
            assert_eq!(json(v), v.as_str());
        }
        for v in McuState::ALL {
            assert_eq!(json(v), v.as_str());
        }
    }

    #[test]
    fn earlier_files_load() {
        // A record written before the states were enums: "" meant not yet known.
        let s: McuState = serde_json::from_str("\"\"").unwrap();
        assert_eq!(s, McuState::Unknown);
        let r: UpdateResult = serde_json::from_str("\"rolled-back\"").unwrap();
        assert_eq!(r, UpdateResult::RolledBack);
    }

    #[test]
    fn locations_are_parsed_once_with_clear_refusals() {
        assert_eq!(
            Location::parse("https://h/b.rota").unwrap(),
            Location::Http("https://h/b.rota".into())
        );
        assert_eq!(
            Location::parse("file:///data/b.rota").unwrap(),
            Location::File("/data/b.rota".into())
        );
        assert_eq!(
            Location::parse("b.rota").unwrap(),
            Location::File("b.rota".into())
        );
        let e = Location::parse("ftp://host/x.rota").unwrap_err();
        assert!(e.contains("unsupported URL scheme \"ftp\""), "{e}");
        assert!(Location::parse("").is_err());
        // Round trip through the journal's JSON.
        let l = Location::parse("http://h:8080/x.rota?t=1").unwrap();
        let back: Location = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }
}
