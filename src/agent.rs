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
    /// Someone asked for an update check now (`rota poll`, D-Bus `Poll`); pollers listen for it.
    PollRequested,
    /// The last install is now good (marked good after its reboot, or it had no slot
    /// to boot): MCU images it staged may be relayed.
    McuRelayDue,
    /// An install ended: always sent, failure and cancel included.
    Completed {
        transaction: String,
        result: InstallResult,
        message: String,
    },
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
    /// The slot this one boots with (`parent = "rootfs.0"`), if any.
    pub parent: Option<String>,
    pub device: String,
    /// `booted`, `active` (the bootloader's first choice, not booted) or `inactive`; a
    /// slot with a parent has its parent's state.
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
    Mark(
        MarkState,
        String,
        oneshot::Sender<Result<(String, String), AgentError>>,
    ),
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
        Self {
            requests,
            events,
            snapshot,
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, AgentError>>) -> Request,
    ) -> Result<T, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| AgentError::Stopped)?;
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

// ---------------------------------------------------------------------------------
// The agent task.

use crate::boot::{BootState, Bootloader, UbootBackend};
use crate::bundle::Keyring;
use crate::config::{Config, SlotConfig};
use crate::install::{self, InstallError, SourceOpener};
use crate::state::{InstallRecord, Journal, State, StateStore};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the agent owns and the install worker borrows.
struct Device {
    config: Config,
    keyring: Keyring,
    bootloader: Box<dyn Bootloader>,
    store: StateStore,
    booted: Option<SlotConfig>,
    open_source: Box<SourceOpener>,
}

enum WorkerMsg {
    Progress(Progress),
    Done {
        transaction: String,
        reboot: bool,
        result: Result<install::Summary, InstallError>,
    },
}

struct Running {
    transaction: String,
    cancel: Arc<AtomicBool>,
}

struct Agent {
    device: Arc<Device>,
    events: broadcast::Sender<AgentEvent>,
    snapshot: watch::Sender<Snapshot>,
    worker_tx: mpsc::UnboundedSender<WorkerMsg>,
    running: Option<Running>,
}

/// Opens bundles from local paths and http(s) URLs (with `[http]` and the request's
/// TLS and header overrides).
pub fn default_source_opener(http: crate::config::HttpSection) -> Box<SourceOpener> {
    Box::new(move |req: &InstallRequest, cancel: Arc<AtomicBool>| {
        let src = req.source.as_str();
        if src.starts_with("http://") || src.starts_with("https://") {
            let opts = crate::source::http::HttpOptions::from_config(&http).with_request(req);
            return Ok(
                Box::new(crate::source::http::HttpSource::new(src, &opts, cancel)?)
                    as Box<dyn crate::source::ByteSource>,
            );
        }
        let path = src.strip_prefix("file://").unwrap_or(src);
        Ok(Box::new(crate::source::file::FileSource::open(
            std::path::Path::new(path),
        )?) as Box<dyn crate::source::ByteSource>)
    })
}

/// Loads keys, state and the bootloader backend, follows up the last install, resumes an
/// interrupted one, and starts the agent task on the current tokio runtime.
pub async fn start(config: Config) -> Result<AgentHandle, AgentError> {
    let opener = default_source_opener(config.http.clone());
    start_with(config, opener).await
}

/// [`start`] with a chosen way of opening bundle sources.
pub async fn start_with(
    config: Config,
    open_source: Box<SourceOpener>,
) -> Result<AgentHandle, AgentError> {
    let failed = |e: &dyn std::fmt::Display| AgentError::Failed(e.to_string());
    // Checked at config load too, but a device may have appeared (or been linked) since.
    crate::slot::check_aliases(
        &config.slots(),
        std::path::Path::new(crate::slot::identity::SYSFS),
    )
    .map_err(|m| AgentError::Failed(format!("invalid config {}: {m}", config.path.display())))?;
    let keyring = Keyring::load(&config.keyring.paths).map_err(|e| failed(&e))?;
    let store = StateStore::open(&config.system.data_dir).map_err(|e| failed(&e))?;
    let booted = match crate::slot::booted_slot(&config) {
        Ok(b) => b,
        Err(e) => {
            log::warn!("{e}; the booted slot is unknown");
            None
        }
    };
    let bootnames = config
        .slots()
        .into_iter()
        .filter_map(|s| s.bootname)
        .collect();
    let bootloader = UbootBackend::open(
        &config.bootloader.fw_env_config,
        bootnames,
        config.system.boot_attempts,
    )
    .map_err(|e| failed(&e))?;
    let device = Arc::new(Device {
        config,
        keyring,
        bootloader: Box::new(bootloader),
        store,
        booted,
        open_source,
    });

    let mut state = device.store.load_or_recover().map_err(|e| failed(&e))?;
    let before = state.clone();
    let boot = device.bootloader.read();
    if let Err(e) = &boot {
        log::error!("cannot read the boot selection: {e}");
    }
    let mut last_error =
        settle_journal(&device, &mut state, boot.as_ref().ok()).unwrap_or_default();
    if let Ok(boot) = &boot {
        if let Some(msg) = follow_up(&device, &mut state, boot) {
            last_error = msg;
        }
    }
    if state != before {
        device.store.save(&state).map_err(|e| failed(&e))?;
    }
    let snapshot = Snapshot {
        compatible: device.config.system.compatible.clone(),
        boot_slot: device
            .booted
            .as_ref()
            .and_then(|b| b.bootname.clone())
            .unwrap_or_default(),
        primary: boot
            .as_ref()
            .ok()
            .map(|b| primary_slot_name(&device, b))
            .unwrap_or_default(),
        last_error,
        ..Default::default()
    };
    let (req_tx, req_rx) = mpsc::channel(32);
    let (events, _) = broadcast::channel(256);
    let (snap_tx, snap_rx) = watch::channel(snapshot);
    let (worker_tx, worker_rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        device,
        events: events.clone(),
        snapshot: snap_tx,
        worker_tx,
        running: None,
    };
    if let Some(journal) = state.journal.clone() {
        log::info!(
            "resuming interrupted install {} of {}",
            journal.transaction,
            journal.source
        );
        agent.begin_install(journal.to_request(), true);
    }
    tokio::spawn(agent.run(req_rx, worker_rx));
    Ok(AgentHandle::new(req_tx, events, snap_rx))
}

fn primary_slot_name(device: &Device, boot: &BootState) -> String {
    boot.primary()
        .and_then(|b| crate::slot::find_slot(&device.config, b))
        .map(|s| s.name)
        .unwrap_or_default()
}

/// How many times in a row an interrupted install is resumed before it is given up.
pub const MAX_RESUMES: u32 = 10;

/// Decides at start whether the journal of an interrupted install is resumed. It is not
/// (and is closed) when
/// - the device now runs another slot than the install started on: a power cut after
///   activation rebooted it into the new slot, whose content was verified before it was
///   activated — the update is then `activated` (and [`follow_up`] sees it booted);
///   anything else is reported failed. Resuming would write the *other* slot — the old,
///   known-good fallback — and activate it;
/// - its target was verified and activated, and the bootloader has since spent its
///   attempts and fallen back: the update is `activated` and [`follow_up`] reports the
///   rollback — resuming would activate it again and undo the bootloader's decision;
/// - it was already resumed [`MAX_RESUMES`] times and died every time: the service would
///   otherwise crash at every start and the journal would block every other install.
///
/// Returns the failure message, if the install is reported failed.
fn settle_journal(device: &Device, state: &mut State, boot: Option<&BootState>) -> Option<String> {
    let j = state.journal.clone()?;
    let booted = device
        .booted
        .as_ref()
        .map(|b| b.name.as_str())
        .unwrap_or("");
    // The target holds this install's verified image (recorded before activation).
    let verified = !j.target.is_empty()
        && state
            .slots
            .get(&j.target)
            .is_some_and(|s| s.status == "ok" && s.transaction == j.transaction);
    // Activated (back in BOOT_ORDER: disabling takes a slot out) and then spent by the
    // bootloader: it fell back from the new slot.
    let target_boot = crate::slot::find_slot(&device.config, &j.target).and_then(|s| s.bootname);
    let spent = verified
        && target_boot.as_deref().is_some_and(|b| {
            boot.is_some_and(|st| st.order.iter().any(|o| o == b) && st.attempts_left(b) == 0)
        });
    let (result, msg) = if !j.booted.is_empty() && j.booted != booted {
        if verified && j.target == booted {
            log::info!(
                "install {} was interrupted after activating slot {booted}, which is now running; not resuming it",
                j.transaction
            );
            ("activated", None)
        } else {
            (
                "failed",
                Some(format!(
                    "install {} was interrupted: it started on slot {} and the device now runs {}",
                    j.transaction,
                    j.booted,
                    if booted.is_empty() {
                        "an unknown slot"
                    } else {
                        booted
                    }
                )),
            )
        }
    } else if spent {
        // Resuming would activate it again with full attempts: the bootloader's fallback
        // would be undone and the device would spend them all over again.
        log::warn!(
            "install {} was interrupted after activating slot {}, which the bootloader has since given up on; not resuming it",
            j.transaction,
            j.target
        );
        ("activated", None)
    } else if j.resumed >= MAX_RESUMES {
        (
            "failed",
            Some(format!(
                "install {} was interrupted {} times in a row and is given up; its target slot stays out of the boot selection",
                j.transaction,
                j.resumed + 1
            )),
        )
    } else {
        return None;
    };
    state.journal = None;
    match state
        .last_install
        .as_mut()
        .filter(|l| l.transaction == j.transaction)
    {
        Some(li) => {
            li.result = result.into();
            if let Some(m) = &msg {
                li.error = m.clone();
            }
        }
        None => {
            if let Some(m) = &msg {
                state.last_install = Some(InstallRecord {
                    transaction: j.transaction.clone(),
                    result: result.into(),
                    error: m.clone(),
                    ..Default::default()
                });
            }
        }
    }
    for s in state.slots.values_mut() {
        if s.transaction == j.transaction && s.status == "installing" {
            s.status = "failed".into();
        }
    }
    if let Some(m) = &msg {
        log::error!("{m}");
    }
    msg
}

/// Follows the last install through reboot: returns a message when the bootloader fell back.
fn follow_up(device: &Device, state: &mut State, boot: &BootState) -> Option<String> {
    let booted = device.booted.as_ref()?;
    let li = state.last_install.as_mut()?;
    if li.result == "rolled-back" && booted.name == li.slot {
        // The bootloader fell back, then tried the new slot again (its counters all ran
        // out and were reset, or someone made it first again) and now it runs.
        log::info!(
            "running the new slot {} ({}) with version {} after an earlier rollback; not yet marked good",
            li.slot,
            li.bootname,
            li.version
        );
        li.result = "booted".into();
        li.error.clear();
        return None;
    }
    if li.result != "activated" && li.result != "booted" {
        return None;
    }
    if booted.name == li.slot {
        if li.result == "activated" {
            log::info!(
                "running the new slot {} ({}) with version {}; not yet marked good",
                li.slot,
                li.bootname,
                li.version
            );
            li.result = "booted".into();
        }
        return None;
    }
    // Booted the other slot. Still waiting for the reboot if the new slot is untouched:
    // first in the order with a full counter.
    let untouched = boot.primary() == Some(li.bootname.as_str())
        && boot.attempts_left(&li.bootname) >= device.config.system.boot_attempts;
    if li.result == "activated" && untouched {
        return None;
    }
    li.result = "rolled-back".into();
    let msg = format!(
        "update to {} in slot {} was rolled back: the bootloader booted {} ({} attempts left on {})",
        li.version,
        li.slot,
        booted.name,
        boot.attempts_left(&li.bootname),
        li.bootname
    );
    li.error = msg.clone();
    log::warn!("{msg}");
    Some(msg)
}

impl Agent {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut worker: mpsc::UnboundedReceiver<WorkerMsg>,
    ) {
        loop {
            tokio::select! {
                req = requests.recv() => match req {
                    Some(r) => self.handle(r),
                    None => break,
                },
                Some(msg) = worker.recv() => self.on_worker(msg),
            }
        }
        if let Some(r) = &self.running {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }

    fn update_snapshot(&self, f: impl FnOnce(&mut Snapshot)) {
        self.snapshot.send_modify(f);
        let _ = self
            .events
            .send(AgentEvent::Changed(self.snapshot.borrow().clone()));
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Install(r, reply) => {
                let _ = reply.send(self.install(r));
            }
            Request::Cancel(reply) => {
                let res = match &self.running {
                    Some(r) => {
                        log::info!("cancelling install {}", r.transaction);
                        r.cancel.store(true, Ordering::Relaxed);
                        Ok(())
                    }
                    None => Err(AgentError::Failed("no install is running".into())),
                };
                let _ = reply.send(res);
            }
            Request::Mark(state, slot, reply) => {
                let _ = reply.send(self.mark(state, &slot));
            }
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Poll(reply) => {
                let res = if self.device.config.update.is_some() {
                    let _ = self.events.send(AgentEvent::PollRequested);
                    Ok(())
                } else {
                    Err(AgentError::Failed("no [update] poll is configured".into()))
                };
                let _ = reply.send(res);
            }
        }
    }

    fn busy(&self) -> Result<(), AgentError> {
        match &self.running {
            Some(r) => Err(AgentError::Busy(format!(
                "an install is already running (transaction {})",
                r.transaction
            ))),
            None => Ok(()),
        }
    }

    fn install(&mut self, req: InstallRequest) -> Result<String, AgentError> {
        self.busy()?;
        if req.source.trim().is_empty() {
            return Err(AgentError::InvalidArgument(
                "the install source is empty".into(),
            ));
        }
        Ok(self.begin_install(req, false))
    }

    fn begin_install(&mut self, mut req: InstallRequest, resuming: bool) -> String {
        let transaction = req
            .transaction_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        req.transaction_id = Some(transaction.clone());
        let device = self.device.clone();
        // Journal first: a crash from here on resumes this install at the next start.
        match device.store.load() {
            Ok(mut state) => {
                let mut journal = Journal::from_request(&transaction, &req);
                journal.booted = device
                    .booted
                    .as_ref()
                    .map(|b| b.name.clone())
                    .unwrap_or_default();
                if let Some(old) = state
                    .journal
                    .take()
                    .filter(|j| j.transaction == transaction)
                {
                    journal.manifest_hash = old.manifest_hash;
                    journal.resumed = old.resumed + u32::from(resuming);
                    journal.target = old.target;
                }
                state.journal = Some(journal);
                if let Err(e) = device.store.save(&state) {
                    log::error!("cannot journal install {transaction}: {e}");
                }
            }
            Err(e) => log::error!("cannot journal install {transaction}: {e}"),
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.running = Some(Running {
            transaction: transaction.clone(),
            cancel: cancel.clone(),
        });
        let tx = transaction.clone();
        self.update_snapshot(|s| {
            s.operation = Operation::Installing;
            s.last_error.clear();
            s.transaction = tx;
            s.progress = Progress {
                message: "Installing".into(),
                depth: 1,
                ..Default::default()
            };
        });
        log::info!(
            TRANSACTION = transaction.as_str(), SOURCE = req.source.as_str();
            "install {transaction} of {} started{}",
            req.source,
            if resuming { " (resumed)" } else { "" }
        );
        let worker_tx = self.worker_tx.clone();
        let reboot = req
            .reboot
            .unwrap_or(device.config.system.reboot_after_install);
        let tr = transaction.clone();
        std::thread::spawn(move || {
            let ctx = install::Context {
                config: &device.config,
                keyring: &device.keyring,
                bootloader: device.bootloader.as_ref(),
                store: &device.store,
                booted: device.booted.clone(),
                open_source: device.open_source.as_ref(),
            };
            let progress_tx = worker_tx.clone();
            let mut emit = |p: Progress| {
                let _ = progress_tx.send(WorkerMsg::Progress(p));
            };
            // A bug must not leave the agent "installing" forever: a panic becomes a failed
            // install, reported like any other (the target slot stays out of the boot selection).
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                install::run(&ctx, &tr, &req, resuming, cancel, &mut emit)
            }))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(InstallError::Failed(format!(
                    "internal error during install: {what}"
                )))
            });
            let _ = worker_tx.send(WorkerMsg::Done {
                transaction: tr,
                reboot,
                result,
            });
        });
        transaction
    }

    fn on_worker(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Progress(p) => {
                self.snapshot.send_modify(|s| s.progress = p.clone());
                let _ = self.events.send(AgentEvent::Progress(p));
            }
            WorkerMsg::Done {
                transaction,
                reboot,
                result,
            } => {
                self.running = None;
                let (outcome, message) = match &result {
                    Ok(s) => (
                        InstallResult::Success,
                        format!(
                            "installed {} into {}: {} bytes written, {} downloaded, {} reused{}",
                            s.version,
                            if s.slots.is_empty() {
                                "no slot".to_owned()
                            } else {
                                s.slots.join(", ")
                            },
                            s.bytes_written,
                            s.bytes_downloaded,
                            s.bytes_reused,
                            if s.mcu.is_empty() {
                                String::new()
                            } else {
                                format!("; staged for MCU nodes {}", s.mcu.join(", "))
                            }
                        ),
                    ),
                    Err(InstallError::Cancelled) => {
                        (InstallResult::Cancelled, "install cancelled".to_owned())
                    }
                    Err(e) => (InstallResult::Failed, e.to_string()),
                };
                if outcome != InstallResult::Success {
                    self.record_failure(&transaction, outcome, &message);
                    log::error!(
                        TRANSACTION = transaction.as_str();
                        "install {transaction} {}: {message}",
                        if outcome == InstallResult::Cancelled {
                            "cancelled"
                        } else {
                            "failed"
                        }
                    );
                } else if let Ok(s) = &result {
                    log::info!(
                        TRANSACTION = transaction.as_str(), VERSION = s.version.as_str(),
                        SLOT = s.slots.join(",").as_str(), BYTES = s.bytes_written,
                        BYTES_DOWNLOADED = s.bytes_downloaded, BYTES_REUSED = s.bytes_reused;
                        "install {transaction} done: {message}"
                    );
                }
                let primary = self
                    .device
                    .bootloader
                    .read()
                    .ok()
                    .map(|b| primary_slot_name(&self.device, &b));
                let err = if outcome == InstallResult::Success {
                    String::new()
                } else {
                    message.clone()
                };
                self.update_snapshot(|s| {
                    s.operation = Operation::Idle;
                    s.last_error = err;
                    if let Some(p) = primary {
                        s.primary = p;
                    }
                });
                let _ = self.events.send(AgentEvent::Completed {
                    transaction,
                    result: outcome,
                    message,
                });
                // Nothing to reboot into: staged MCU images may go now.
                if let Ok(s) = &result {
                    if s.activated.is_none() && !s.mcu.is_empty() {
                        let _ = self.events.send(AgentEvent::McuRelayDue);
                    }
                }
                if outcome == InstallResult::Success && reboot {
                    self.reboot();
                }
            }
        }
    }

    fn record_failure(&self, transaction: &str, outcome: InstallResult, message: &str) {
        let store = &self.device.store;
        let mut state = match store.load() {
            Ok(s) => s,
            Err(e) => return log::error!("cannot record install result: {e}"),
        };
        let result = if outcome == InstallResult::Cancelled {
            "cancelled"
        } else {
            "failed"
        };
        let mut li = state
            .last_install
            .clone()
            .filter(|l| l.transaction == transaction)
            .unwrap_or(InstallRecord {
                transaction: transaction.to_owned(),
                ..Default::default()
            });
        li.result = result.into();
        li.error = message.to_owned();
        for s in state.slots.values_mut() {
            if s.transaction == transaction && s.status == "installing" {
                s.status = result.into();
            }
        }
        state.last_install = Some(li);
        state.journal = None;
        if let Err(e) = store.save(&state) {
            log::error!("cannot record install result: {e}");
        }
    }

    fn reboot(&self) {
        let cmd = &self.device.config.system.reboot_command;
        log::info!("rebooting into the new slot: {}", cmd.join(" "));
        if let Some((prog, args)) = cmd.split_first() {
            if let Err(e) = std::process::Command::new(prog).args(args).spawn() {
                log::error!("reboot command {prog} failed to start: {e}");
                self.update_snapshot(|s| {
                    s.last_error = format!("reboot command {prog} failed to start: {e}")
                });
            }
        }
    }

    fn resolve(&self, id: &str) -> Result<Vec<SlotConfig>, AgentError> {
        let cfg = &self.device.config;
        let booted = self.device.booted.as_ref();
        let none_booted = || {
            AgentError::Failed(
                "the booted slot is unknown (no rota.slot= on the kernel command line)".into(),
            )
        };
        match id {
            "booted" => Ok(vec![booted.cloned().ok_or_else(none_booted)?]),
            "other" => {
                let b = booted.ok_or_else(none_booted)?;
                let others: Vec<_> = cfg
                    .slots()
                    .into_iter()
                    .filter(|s| s.class == b.class && s.name != b.name && s.bootname.is_some())
                    .collect();
                if others.is_empty() {
                    return Err(AgentError::Failed(format!(
                        "slot class {} has no other bootable slot",
                        b.class
                    )));
                }
                Ok(others)
            }
            _ => crate::slot::find_slot(cfg, id)
                .map(|s| vec![s])
                .ok_or_else(|| {
                    AgentError::InvalidArgument(format!(
                        "no slot named {id:?} (use booted, other, a slot name or a bootname)"
                    ))
                }),
        }
    }

    fn mark(&mut self, how: MarkState, id: &str) -> Result<(String, String), AgentError> {
        self.busy()?;
        let slots = self.resolve(id)?;
        if slots.len() > 1 && how != MarkState::Bad {
            return Err(AgentError::InvalidArgument(format!(
                "{id:?} names {} slots; mark {} takes one",
                slots.len(),
                serde_json::to_string(&how).unwrap_or_default()
            )));
        }
        let attempts = self.device.config.system.boot_attempts;
        let mut names = Vec::new();
        for slot in &slots {
            let b = slot.bootname.clone().ok_or_else(|| {
                AgentError::InvalidArgument(format!(
                    "slot {} is not bootable (no bootname)",
                    slot.name
                ))
            })?;
            self.device
                .bootloader
                .update(&mut |s| match how {
                    MarkState::Good => s.mark_good(&b, attempts),
                    MarkState::Bad => s.disable(&b),
                    MarkState::Active => s.activate(&b, attempts, None),
                })
                .map_err(|e| AgentError::Failed(e.to_string()))?;
            names.push(slot.name.clone());
        }
        let word = match how {
            MarkState::Good => "good",
            MarkState::Bad => "bad",
            MarkState::Active => "active",
        };
        if how == MarkState::Good {
            if let (Ok(mut state), Some(booted)) =
                (self.device.store.load(), self.device.booted.as_ref())
            {
                if let Some(li) = state.last_install.as_mut().filter(|l| {
                    l.slot == booted.name && slots[0].name == booted.name && l.result == "booted"
                }) {
                    li.result = "good".into();
                    log::info!("update to {} in slot {} marked good", li.version, li.slot);
                    if let Err(e) = self.device.store.save(&state) {
                        log::error!("cannot record mark good: {e}");
                    }
                    let _ = self.events.send(AgentEvent::McuRelayDue);
                }
            }
        }
        let primary = self
            .device
            .bootloader
            .read()
            .ok()
            .map(|b| primary_slot_name(&self.device, &b))
            .unwrap_or_default();
        self.update_snapshot(|s| s.primary = primary);
        let message = format!("marked slot {} as {word}", names.join(", "));
        log::info!("{message}");
        Ok((names.join(","), message))
    }

    fn status(&self) -> Result<StatusReport, AgentError> {
        let device = &self.device;
        let mut state = device
            .store
            .load()
            .map_err(|e| AgentError::Failed(e.to_string()))?;
        let boot = device.bootloader.read();
        let mut last_error = self.snapshot.borrow().last_error.clone();
        if let Ok(b) = &boot {
            let before = state.last_install.clone();
            if self.running.is_none() {
                follow_up(device, &mut state, b);
            }
            if state.last_install != before {
                let _ = device.store.save(&state);
            }
        }
        if let Err(e) = &boot {
            if last_error.is_empty() {
                last_error = e.to_string();
            }
        }
        let booted = device.booted.as_ref();
        let primary_boot = boot
            .as_ref()
            .ok()
            .and_then(|b| b.primary().map(str::to_owned));
        let slots = device
            .config
            .slots()
            .into_iter()
            .map(|s| {
                let st = state.slots.get(&s.name);
                // A slot with a parent is booted or active with it (RAUC's slot groups).
                let leader = s.parent.as_ref().map_or(s.name.as_str(), String::as_str);
                let leader_bootname =
                    crate::slot::find_slot(&device.config, leader).and_then(|l| l.bootname);
                let is_booted = booted.is_some_and(|b| b.name == leader);
                let (boot_status, left) = match (&s.bootname, &boot) {
                    (Some(b), Ok(bs)) => (
                        (if bs.is_good(b) { "good" } else { "bad" }).to_owned(),
                        Some(bs.attempts_left(b)),
                    ),
                    _ => ("unknown".to_owned(), None),
                };
                let state_word = if is_booted {
                    "booted"
                } else if leader_bootname.is_some() && leader_bootname == primary_boot {
                    "active"
                } else {
                    "inactive"
                };
                SlotReport {
                    name: s.name.clone(),
                    class: s.class.clone(),
                    bootname: s.bootname.clone(),
                    parent: s.parent.clone(),
                    device: s.device.display().to_string(),
                    state: state_word.into(),
                    boot_status,
                    boot_attempts_left: left,
                    version: st.map(|x| x.version.clone()).filter(|v| !v.is_empty()),
                    sha256: st.map(|x| x.sha256.clone()).filter(|v| !v.is_empty()),
                    size: st.map(|x| x.size).filter(|n| *n > 0),
                    installed_at: st.map(|x| x.installed_at.clone()).filter(|v| !v.is_empty()),
                    transaction: st.map(|x| x.transaction.clone()).filter(|v| !v.is_empty()),
                    bundle_hash: st.map(|x| x.bundle_hash.clone()).filter(|v| !v.is_empty()),
                    status: st.map(|x| x.status.clone()),
                }
            })
            .collect();
        let snap = self.snapshot.borrow();
        Ok(StatusReport {
            compatible: device.config.system.compatible.clone(),
            booted: booted.and_then(|b| b.bootname.clone()).unwrap_or_default(),
            primary: boot
                .as_ref()
                .ok()
                .map(|b| primary_slot_name(device, b))
                .unwrap_or_default(),
            operation: snap.operation.as_str().into(),
            last_error,
            slots,
            last_install: state.last_install.map(|l| LastInstall {
                version: l.version,
                slot: l.slot,
                transaction: l.transaction,
                result: l.result,
                error: l.error,
            }),
            mcu: device
                .config
                .mcu
                .iter()
                .map(|(name, cfg)| {
                    let mut r = crate::mcu::relay::node_report(
                        name,
                        cfg,
                        &device.config.system.data_dir,
                        false,
                    );
                    let staged = crate::mcu::staging::path(&device.config.system.data_dir, name);
                    // An image waits in the data dir for the update to be marked good
                    // (or for a relay that failed to be retried).
                    let settled = matches!(
                        r.state.as_str(),
                        "unknown" | "confirmed" | "reverted" | "failed" | "unreachable"
                    );
                    if settled && staged.exists() {
                        r.state = "staged".into();
                    }
                    r
                })
                .collect(),
        })
    }
}
