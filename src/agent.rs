//! The agent: the single owner of rota's mutable state.
//!
//! One task owns the configuration, the persistent state and the running install.
//! Front ends (D-Bus interfaces, pollers, the MCU relay) hold an [`AgentHandle`] and
//! talk to it by message; they observe progress through [`AgentEvent`]s and the latest
//! [`Snapshot`]. No lock is held across an await.

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// What an install call asks for (the union of rota's and RAUC's install options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallRequest {
    /// Local path or http(s) URL.
    pub source: String,
    pub force_version: bool,
    pub ignore_compatible: bool,
    /// `Some(true)` reboots after activation, `None` follows `[system] reboot-after-install`.
    pub reboot: Option<bool>,
    /// Caller-chosen transaction id (RAUC `transaction-id`); a UUID is made otherwise.
    pub transaction_id: Option<String>,
    /// Abort unless the bundle's manifest hash is this (RAUC `require-manifest-hash`).
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
    /// Current fetch rate in bytes per second.
    pub rate: u64,
    /// Estimated seconds left, 0 when unknown.
    pub eta_secs: u64,
}

/// The state every front end can read at any time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub operation: Operation,
    pub progress: Progress,
    /// Empty until an operation fails; cleared when an install starts.
    pub last_error: String,
    /// Transaction id of the running or last install.
    pub transaction: String,
    pub compatible: String,
    /// Bootname of the booted slot ("" when unknown).
    pub boot_slot: String,
    /// Name of the slot the bootloader will boot next ("" when none).
    pub primary: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Progress(Progress),
    /// Any snapshot field changed (operation, last error, primary...).
    Changed(Snapshot),
    /// An install ended: always sent, failure and cancel included.
    Completed { transaction: String, result: InstallResult, message: String },
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
    pub operation: String,
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
    pub device: String,
    /// `booted`, `active` (the bootloader's first choice, not booted) or `inactive`.
    pub state: String,
    /// `good` (in BOOT_ORDER with attempts left), `bad`, or `unknown` (not bootable).
    pub boot_status: String,
    /// Attempts left in the bootloader, when bootable.
    pub boot_attempts_left: Option<u32>,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub installed_at: Option<String>,
    pub transaction: Option<String>,
    pub bundle_hash: Option<String>,
    /// Install status of the slot content: `ok`, `failed`, `installing`.
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LastInstall {
    pub version: String,
    pub slot: String,
    pub transaction: String,
    /// installing | failed | cancelled | activated | booted | good | rolled-back
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct McuReport {
    pub name: String,
    pub version: String,
    pub state: String,
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

/// Messages to the agent task.
#[derive(Debug)]
pub enum Request {
    Install(InstallRequest, oneshot::Sender<Result<String, AgentError>>),
    Cancel(oneshot::Sender<Result<(), AgentError>>),
    Mark(MarkState, String, oneshot::Sender<Result<(String, String), AgentError>>),
    Status(oneshot::Sender<Result<StatusReport, AgentError>>),
    Poll(oneshot::Sender<Result<(), AgentError>>),
}

/// A cheap, cloneable way to talk to the agent.
#[derive(Clone)]
pub struct AgentHandle {
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<AgentEvent>,
    snapshot: watch::Receiver<Snapshot>,
}

impl AgentHandle {
    /// Wires a handle to an agent task's channels.
    pub fn new(
        requests: mpsc::Sender<Request>,
        events: broadcast::Sender<AgentEvent>,
        snapshot: watch::Receiver<Snapshot>,
    ) -> Self {
        Self { requests, events, snapshot }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, AgentError>>) -> Request) -> Result<T, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).await.map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)?
    }

    /// Starts an install; returns its transaction id at once. The result arrives as
    /// [`AgentEvent::Completed`].
    pub async fn install(&self, req: InstallRequest) -> Result<String, AgentError> {
        self.ask(|tx| Request::Install(req, tx)).await
    }

    /// Cancels the running install (the target slot stays out of the boot selection).
    pub async fn cancel(&self) -> Result<(), AgentError> {
        self.ask(Request::Cancel).await
    }

    /// RAUC's Mark: `slot` is `booted`, `other` or a slot name. Returns (slot name, message).
    pub async fn mark(&self, state: MarkState, slot: &str) -> Result<(String, String), AgentError> {
        let slot = slot.to_owned();
        self.ask(|tx| Request::Mark(state, slot, tx)).await
    }

    pub async fn status(&self) -> Result<StatusReport, AgentError> {
        self.ask(Request::Status).await
    }

    /// Asks the configured poller to check for an update now.
    pub async fn poll_now(&self) -> Result<(), AgentError> {
        self.ask(Request::Poll).await
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every snapshot change.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }
}
