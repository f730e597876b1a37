//! What a poller remembers across restarts and reboots, in `<data-dir>/poller.json`,
//! written atomically after every change: the install it started and how far its report
//! to the server got, versions it must not try again, feedback not yet delivered, and
//! when it last polled.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name inside the data directory.
pub const FILE_NAME: &str = "poller.json";
/// Feedback messages kept while the server is unreachable; older ones are dropped first
/// (the final result is always the newest, so it survives).
pub const MAX_PENDING_FEEDBACK: usize = 32;
/// Finished hawkBit actions remembered, so a late repeat from the server is not redone.
pub const MAX_DONE_ACTIONS: usize = 32;
/// Versions remembered as rolled back or given up on.
pub const MAX_REJECTED_VERSIONS: usize = 32;
/// Largest state file read; anything bigger is not ours.
const MAX_FILE: u64 = 1 << 20;

/// How far an install the poller started has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Asked the agent; waiting for `Completed`.
    Installing,
    /// Installed and activated; waiting for the reboot and the boot's verdict.
    Activated,
    /// hawkBit download-only (or maintenance window closed): bundle checked, not installed.
    Downloaded,
    /// The result went to the server (or, for a feed, was recorded).
    Done,
}

/// The install the poller started (at most one at a time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    pub transaction: String,
    pub version: String,
    pub source: String,
    pub phase: Phase,
    /// hawkBit action id ("" for a feed).
    #[serde(default)]
    pub action: String,
    /// hawkBit asked to cancel it (the cancelAction id).
    #[serde(default)]
    pub cancel: Option<String>,
}

/// A feedback message not yet accepted by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFeedback {
    /// Full URL to POST to.
    pub url: String,
    pub body: serde_json::Value,
    #[serde(default)]
    pub attempts: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollerState {
    #[serde(default)]
    pub last_poll: String,
    #[serde(default)]
    pub last_success: String,
    #[serde(default)]
    pub last_result: String,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub tracked: Option<Tracked>,
    /// Install attempts per version (feed): a failing version is tried a bounded number of times.
    #[serde(default)]
    pub attempts: BTreeMap<String, u32>,
    /// Versions not to install again (rolled back, or out of attempts), newest last.
    #[serde(default)]
    pub rejected: Vec<String>,
    /// hawkBit actions finished and reported, newest last.
    #[serde(default)]
    pub done_actions: Vec<String>,
    #[serde(default)]
    pub pending: Vec<PendingFeedback>,
}

impl PollerState {
    pub fn reject(&mut self, version: &str) {
        if !self.rejected.iter().any(|v| v == version) {
            self.rejected.push(version.to_owned());
        }
        let extra = self.rejected.len().saturating_sub(MAX_REJECTED_VERSIONS);
        self.rejected.drain(..extra);
    }

    pub fn is_rejected(&self, version: &str) -> bool {
        self.rejected.iter().any(|v| v == version)
    }

    pub fn action_done(&mut self, action: &str) {
        if !self.done_actions.iter().any(|a| a == action) {
            self.done_actions.push(action.to_owned());
        }
        let extra = self.done_actions.len().saturating_sub(MAX_DONE_ACTIONS);
        self.done_actions.drain(..extra);
    }

    pub fn is_done(&self, action: &str) -> bool {
        self.done_actions.iter().any(|a| a == action)
    }

    pub fn queue(&mut self, url: String, body: serde_json::Value) {
        self.pending.push(PendingFeedback {
            url,
            body,
            attempts: 0,
        });
        let extra = self.pending.len().saturating_sub(MAX_PENDING_FEEDBACK);
        self.pending.drain(..extra);
    }
}

/// The state file.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(data_dir: &Path) -> Store {
        Store {
            path: data_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; a missing file is a fresh start. A damaged file is logged and
    /// replaced by a fresh state: losing the poller's memory must not stop updates.
    pub fn load(&self) -> PollerState {
        let read = || -> Result<Option<PollerState>, String> {
            let meta = match std::fs::metadata(&self.path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            if meta.len() > MAX_FILE {
                return Err(format!(
                    "{} bytes is larger than the {MAX_FILE} allowed",
                    meta.len()
                ));
            }
            let bytes =
                crate::fsutil::read_regular(&self.path, MAX_FILE).map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        match read() {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                log::error!(
                    "poller state {} is unreadable ({e}); starting afresh",
                    self.path.display()
                );
                PollerState::default()
            }
        }
    }

    pub fn save(&self, state: &PollerState) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        crate::fsutil::write_atomic(&self.path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds_its_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.load(), PollerState::default());
        let mut s = PollerState::default();
        for i in 0..100 {
            s.reject(&format!("1.0.{i}"));
            s.action_done(&i.to_string());
            s.queue(format!("http://x/{i}"), serde_json::json!({ "n": i }));
        }
        assert_eq!(s.rejected.len(), MAX_REJECTED_VERSIONS);
        assert!(s.is_rejected("1.0.99") && !s.is_rejected("1.0.0"));
        assert_eq!(s.done_actions.len(), MAX_DONE_ACTIONS);
        assert_eq!(s.pending.len(), MAX_PENDING_FEEDBACK);
        assert_eq!(s.pending.last().unwrap().body["n"], 99);
        s.tracked = Some(Tracked {
            transaction: "t".into(),
            version: "1.2.0".into(),
            source: "http://x/b.rota".into(),
            phase: Phase::Activated,
            action: "7".into(),
            cancel: None,
        });
        store.save(&s).unwrap();
        assert_eq!(store.load(), s);
        std::fs::write(store.path(), b"{ not json").unwrap();
        assert_eq!(
            store.load(),
            PollerState::default(),
            "a damaged file starts afresh"
        );
    }
}
