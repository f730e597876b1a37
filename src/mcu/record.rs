//! What rota remembers about each MCU node across restarts, in
//! `<data-dir>/mcu/<name>.json` (written atomically), and the per-node lock file that
//! keeps two relays (service and CLI, or two threads) off the same node.
//!
//! The device is the truth for upload progress (it reports the offset it expects);
//! the record adds what the device cannot say: which image rota was relaying and how
//! far the flow got — above all whether the test reset was already sent, which is
//! what tells "MCUboot reverted the new image" apart from "not tried yet".

use super::McuError;
use crate::fsutil::write_atomic;
use crate::model::McuState;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest record file we read (a record is a few hundred bytes).
const MAX_RECORD_SIZE: u64 = 64 * 1024;

/// How far a relay got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayPhase {
    /// Opening the transport, reading the node's state.
    Connecting,
    Uploading,
    /// The whole image is in the node's secondary slot.
    Uploaded,
    /// The image is marked for a test boot.
    Testing,
    /// The reset was (about to be) sent; the node should come back on the new image.
    Rebooting,
    Confirmed,
    /// The node came back on its previous image.
    Reverted,
    Failed,
}

impl From<RelayPhase> for McuState {
    fn from(p: RelayPhase) -> McuState {
        match p {
            RelayPhase::Connecting => McuState::Connecting,
            RelayPhase::Uploading => McuState::Uploading,
            RelayPhase::Uploaded => McuState::Uploaded,
            RelayPhase::Testing => McuState::Testing,
            RelayPhase::Rebooting => McuState::Rebooting,
            RelayPhase::Confirmed => McuState::Confirmed,
            RelayPhase::Reverted => McuState::Reverted,
            RelayPhase::Failed => McuState::Failed,
        }
    }
}

impl RelayPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayPhase::Connecting => "connecting",
            RelayPhase::Uploading => "uploading",
            RelayPhase::Uploaded => "uploaded",
            RelayPhase::Testing => "testing",
            RelayPhase::Rebooting => "rebooting",
            RelayPhase::Confirmed => "confirmed",
            RelayPhase::Reverted => "reverted",
            RelayPhase::Failed => "failed",
        }
    }
}

/// The relay in progress or last run for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// Hex of the hash the node reports for the image (MCUboot hash TLV).
    pub image_hash: String,
    /// Hex SHA-256 of the whole file (the upload session id).
    pub file_sha256: String,
    pub version: String,
    pub size: u64,
    pub phase: RelayPhase,
    /// Last upload offset the device acknowledged.
    pub offset: u64,
    pub started_at: u64,
}

/// Per-node record. `state` is what `rota status` shows: `unknown` (never reached),
/// `confirmed`, `testing` (running an unconfirmed image), `pending` (an image waits
/// for the next reset), `uploading`, `rebooting`, `reverted`, `failed`, `unreachable`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(default)]
    pub version: String,
    /// Hex hash of the image the node was last seen running.
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub state: McuState,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub updated_at: u64,
    #[serde(default)]
    pub relay: Option<RelayRecord>,
}

/// `<data-dir>/mcu`
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mcu")
}

pub fn path(data_dir: &Path, node: &str) -> PathBuf {
    dir(data_dir).join(format!("{node}.json"))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads a node's record; `Ok(None)` when there is none. A record that cannot be
/// parsed is reported as an error naming the file.
pub fn load(data_dir: &Path, node: &str) -> Result<Option<NodeRecord>, McuError> {
    let p = path(data_dir, node);
    let err = |message: String| McuError::State {
        path: p.clone(),
        message,
    };
    let meta = match std::fs::metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    if meta.len() > MAX_RECORD_SIZE {
        return Err(err(format!(
            "{} bytes is larger than any record rota writes",
            meta.len()
        )));
    }
    let text = crate::fsutil::read_regular(&p, MAX_RECORD_SIZE).map_err(|e| err(e.to_string()))?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| err(format!("not a valid record: {e}")))
}

/// Reads a record, treating an unreadable one as absent (logged): the device state is
/// the truth, so a damaged record must not block updates.
pub fn load_or_default(data_dir: &Path, node: &str) -> NodeRecord {
    match load(data_dir, node) {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            log::warn!("{e}; starting from an empty record");
            NodeRecord::default()
        }
    }
}

/// Writes a node's record atomically.
pub fn save(data_dir: &Path, node: &str, rec: &NodeRecord) -> Result<(), McuError> {
    let p = path(data_dir, node);
    let err = |message: String| McuError::State {
        path: p.clone(),
        message,
    };
    crate::fsutil::create_private_dir(&dir(data_dir))
        .map_err(|e| err(format!("cannot create directory: {e}")))?;
    let mut rec = rec.clone();
    rec.updated_at = now();
    let json = serde_json::to_vec_pretty(&rec).map_err(|e| err(e.to_string()))?;
    write_atomic(&p, &json).map_err(|e| err(e.to_string()))
}

/// An exclusive, non-blocking lock on one node (released on drop).
pub struct NodeLock {
    _lock: Flock<File>,
}

impl NodeLock {
    pub fn acquire(data_dir: &Path, node: &str) -> Result<NodeLock, McuError> {
        let d = dir(data_dir);
        let p = d.join(format!("{node}.lock"));
        crate::fsutil::create_private_dir(&d).map_err(|e| McuError::State {
            path: d.clone(),
            message: format!("cannot create directory: {e}"),
        })?;
        // Root's file in root's directory, whatever the umask; never through a link.
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&p)
            .map_err(|e| McuError::State {
                path: p.clone(),
                message: e.to_string(),
            })?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(NodeLock { _lock: l }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(McuError::Busy(format!(
                "another relay or query is using MCU node {node}"
            ))),
            Err((_, e)) => Err(McuError::State {
                path: p,
                message: format!("cannot lock: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_missing_and_corrupt() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path(), "n").unwrap(), None);
        let rec = NodeRecord {
            version: "1.0.0".into(),
            state: McuState::Confirmed,
            ..Default::default()
        };
        save(d.path(), "n", &rec).unwrap();
        let back = load(d.path(), "n").unwrap().unwrap();
        assert_eq!(back.version, "1.0.0");
        std::fs::write(path(d.path(), "n"), b"{not json").unwrap();
        let e = load(d.path(), "n").unwrap_err().to_string();
        assert!(
            e.contains("n.json") && e.contains("not a valid record"),
            "{e}"
        );
        assert_eq!(load_or_default(d.path(), "n"), NodeRecord::default());
    }

    #[test]
    fn records_and_locks_are_root_s_alone_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let lock = NodeLock::acquire(d.path(), "n").unwrap();
        assert_eq!(mode(&dir(d.path())), 0o700, "mcu/ is private");
        assert_eq!(mode(&dir(d.path()).join("n.lock")), 0o600);
        drop(lock);
        save(d.path(), "m", &NodeRecord::default()).unwrap();
        assert_eq!(mode(&path(d.path(), "m")), 0o600);
        // A lock file replaced by a link to somewhere else is not followed.
        let elsewhere = d.path().join("elsewhere");
        std::fs::write(&elsewhere, b"keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir(d.path()).join("x.lock")).unwrap();
        assert!(NodeLock::acquire(d.path(), "x").is_err());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let a = NodeLock::acquire(d.path(), "n").unwrap();
        assert!(matches!(
            NodeLock::acquire(d.path(), "n"),
            Err(McuError::Busy(_))
        ));
        assert!(NodeLock::acquire(d.path(), "other").is_ok());
        drop(a);
        assert!(NodeLock::acquire(d.path(), "n").is_ok());
    }
}
