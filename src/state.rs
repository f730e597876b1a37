//! What rota remembers across restarts and reboots, in `<data-dir>/status.json`:
//! per-slot install status, the last install's result as it follows the update through
//! reboot, and the journal of an install in progress (so a killed service resumes it).
//! Written only through [`crate::fsutil::write_atomic`].

use crate::model::{InstallRequest, LastInstall, SlotContent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "status.json";

/// Largest state file read: a state file holds a few slots and one journal (a few KiB);
/// anything near this is not one rota wrote.
pub const MAX_STATE_FILE: u64 = 4 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub slots: BTreeMap<String, SlotStatus>,
    #[serde(default)]
    pub last_install: Option<InstallRecord>,
    /// Present while an install runs; a service that finds it at start resumes.
    #[serde(default)]
    pub journal: Option<Journal>,
    /// Set when an earlier state file could not be read and was replaced by an empty one:
    /// what the slots held is then unknown, so the downgrade check fails closed until an
    /// install records a version again. RFC 3339 time and what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

/// What is in a slot, as far as rota wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub status: SlotContent,
    pub version: String,
    pub compatible: String,
    pub sha256: String,
    pub size: u64,
    pub bundle_hash: String,
    pub transaction: String,
    /// RFC 3339, UTC.
    pub installed_at: String,
}

/// The last install, followed through reboot: what `rota status` shows as `last_install`
/// (its fields sit at the top level of the JSON object, as earlier releases wrote them),
/// and the bootname rota needs to follow it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    #[serde(flatten)]
    pub install: LastInstall,
    #[serde(default)]
    pub bootname: String,
}

/// A running install, enough to start it again after a crash: the request itself (its
/// fields sit at the top level of the JSON object, as earlier releases wrote them) and
/// how far the install got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub transaction: String,
    #[serde(flatten)]
    pub request: InstallRequest,
    /// Manifest hash of the bundle being installed; empty until it is known.
    #[serde(default)]
    pub manifest_hash: String,
    /// How many times this install was resumed after a restart.
    #[serde(default)]
    pub resumed: u32,
    /// Slot name that was booted when the install began ("" when unknown). A start on
    /// another slot means the device rebooted mid-install: the journal is not resumed.
    #[serde(default)]
    pub booted: String,
    /// Slot name of the (first) target slot, once the install has planned it.
    #[serde(default)]
    pub target: String,
}

impl Journal {
    pub fn from_request(transaction: &str, req: &InstallRequest) -> Self {
        Journal {
            transaction: transaction.to_owned(),
            request: req.clone(),
            ..Default::default()
        }
    }

    /// The request to run again on resume, under the same transaction id.
    pub fn to_request(&self) -> InstallRequest {
        InstallRequest {
            transaction_id: Some(self.transaction.clone()),
            ..self.request.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({message}); move it away to start fresh")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The state file in the data directory, and its one way in: [`StateStore::update`], a
/// transaction (one lock, one load, one atomic write if anything changed) — the same
/// shape as the bootloader's env update. Clones share the lock.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
    lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl StateStore {
    /// Creates the data directory if needed, private to root (0700) whatever the umask.
    pub fn open(data_dir: &Path) -> Result<Self, StateError> {
        crate::fsutil::create_private_dir(data_dir).map_err(|source| StateError::Write {
            path: data_dir.to_owned(),
            source,
        })?;
        Ok(Self {
            path: data_dir.join(STATE_FILE),
            lock: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored state; a missing file is an empty state (a factory device). The file is
    /// read with a size limit and must be a regular file (see [`crate::fsutil::read_regular`]).
    pub fn load(&self) -> Result<State, StateError> {
        match crate::fsutil::read_regular(&self.path, MAX_STATE_FILE) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(StateError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// [`load`](Self::load), but a state file that cannot be used — a torn write on a
    /// filesystem that lost it, a bit flip, an I/O error on worn flash, a directory or a
    /// device in its place — is moved aside to `status.json.corrupt` and replaced at once by
    /// an empty state marked [`State::lost`], so the device keeps serving (status, mark
    /// good, the next install). What is lost is history and an interrupted install's
    /// journal: its target slot is already out of the boot selection, and the next install
    /// writes it again from scratch. The versions are lost too, so the downgrade check
    /// fails closed until a version is known again.
    pub fn load_or_recover(&self) -> Result<State, StateError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let why = match self.load() {
            Err(StateError::Corrupt { message, .. }) => format!("corrupt ({message})"),
            Err(StateError::Read { source, .. }) => format!("unreadable ({source})"),
            other => return other,
        };
        let aside = self.path.with_extension("json.corrupt");
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let moved = crate::fsutil::remove_stale(&aside)
            .and_then(|_| std::fs::rename(&self.path, &aside))
            .and_then(|_| crate::fsutil::sync_dir(dir));
        match &moved {
            Ok(()) => log::error!(
                "state file {} is {why}; moved to {} and starting with an empty state",
                self.path.display(),
                aside.display()
            ),
            Err(e) => log::error!(
                "state file {} is {why} and cannot be moved aside ({e}); replacing it with an empty state",
                self.path.display()
            ),
        }
        let state = State {
            lost: Some(format!(
                "{}: {} was {why}; slot versions are unknown",
                now_rfc3339(),
                self.path.display()
            )),
            ..State::default()
        };
        // Written now, so every later load finds a good file (a directory that could not
        // be moved aside is removed by the atomic write's rename failing loudly here).
        if moved.is_err() {
            crate::fsutil::remove_stale(&self.path).map_err(|source| StateError::Write {
                path: self.path.clone(),
                source,
            })?;
        }
        self.save(&state)?;
        Ok(state)
    }

    /// Runs `f` on the stored state and writes the result back atomically if it changed;
    /// returns what `f` returns. Transactions never interleave.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, StateError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.load()?;
        let before = state.clone();
        let out = f(&mut state);
        if state != before {
            self.save(&state)?;
        }
        Ok(out)
    }

    fn save(&self, state: &State) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::fsutil::write_atomic(&self.path, &bytes).map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Now, as RFC 3339 UTC with seconds (`2026-11-25T10:00:00Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("data")).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        let mut s = State::default();
        s.slots.insert(
            "rootfs.1".into(),
            SlotStatus {
                version: "1.2.0".into(),
                ..Default::default()
            },
        );
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
    }

    #[test]
    fn corrupt_file_is_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        std::fs::write(store.path(), b"{\"slots\": ").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    /// A state file as the release before the model layer wrote it (strings for states,
    /// the journal's request fields flat, `last_install` with its bootname) still loads,
    /// and writes back with the same words.
    #[test]
    fn files_of_the_earlier_release_load() {
        let old = r#"{
  "slots": {
    "rootfs.1": {
      "status": "installing", "version": "1.1.0", "compatible": "acme-gateway",
      "sha256": "", "size": 0, "bundle_hash": "ab", "transaction": "t1", "installed_at": ""
    }
  },
  "last_install": {
    "version": "1.1.0", "slot": "rootfs.1", "bootname": "B", "transaction": "t1",
    "result": "rolled-back", "error": ""
  },
  "journal": {
    "transaction": "t1", "source": "https://h/b.rota", "force_version": false,
    "ignore_compatible": false, "reboot": null, "http_headers": ["X-A: 1"],
    "tls_ca": null, "tls_cert": null, "tls_key": null, "tls_no_verify": false,
    "manifest_hash": "ab", "resumed": 2, "booted": "rootfs.0", "target": "rootfs.1"
  }
}"#;
        let st: State = serde_json::from_str(old).unwrap();
        assert_eq!(st.slots["rootfs.1"].status, SlotContent::Installing);
        let li = st.last_install.as_ref().unwrap();
        assert_eq!(li.install.result, crate::model::UpdateResult::RolledBack);
        assert_eq!(li.bootname, "B");
        let j = st.journal.as_ref().unwrap();
        assert_eq!(
            j.request.source,
            crate::model::Location::Http("https://h/b.rota".into())
        );
        assert_eq!(j.request.http_headers, ["X-A: 1"]);
        assert_eq!(j.resumed, 2);
        let req = j.to_request();
        assert_eq!(req.transaction_id.as_deref(), Some("t1"));
        let back = serde_json::to_value(&st).unwrap();
        assert_eq!(back["last_install"]["result"], "rolled-back");
        assert_eq!(back["journal"]["source"], "https://h/b.rota");
        assert_eq!(back["slots"]["rootfs.1"]["status"], "installing");
        let again: State = serde_json::from_value(back).unwrap();
        assert_eq!(again, st);
    }
}
