//! The agent: the single owner of rota's mutable state.
//!
//! One task owns the configuration, the persistent state and the running install.
//! Front ends (D-Bus interfaces, pollers, the MCU relay) hold an [`AgentHandle`] and
//! talk to it by message; they observe progress through [`AgentEvent`]s and the latest
//! [`Snapshot`]. No lock is held across an await.

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

// The request and report vocabulary lives in the bottom layer; re-exported here so a
// front end finds it next to the handle it uses.
pub use crate::model::{
    AgentError, BootHealth, InstallRequest, InstallResult, LastInstall, Location, MarkState,
    McuReport, McuState, Operation, Progress, SlotContent, SlotReport, SlotRole, StatusReport,
    UpdateResult,
};

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
use crate::install::{self, InstallError};
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

/// Loads keys, state and the bootloader backend, follows up the last install, resumes an
/// interrupted one, and starts the agent task on the current tokio runtime.
pub async fn start(config: Config) -> Result<AgentHandle, AgentError> {
    let failed = |e: &dyn std::fmt::Display| AgentError::Failed(e.to_string());
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
    });

    // A state file that cannot be used is replaced here, so every later transaction
    // finds a good one.
    device.store.load_or_recover().map_err(|e| failed(&e))?;
    let boot = device.bootloader.read();
    if let Err(e) = &boot {
        log::error!("cannot read the boot selection: {e}");
    }
    let (last_error, journal) = device
        .store
        .update(|state| {
            let mut last_error =
                settle_journal(&device, state, boot.as_ref().ok()).unwrap_or_default();
            if let Ok(boot) = &boot {
                if let Some(msg) = follow_up(&device, state, boot) {
                    last_error = msg;
                }
            }
            (last_error, state.journal.clone())
        })
        .map_err(|e| failed(&e))?;
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
    if let Some(journal) = journal {
        log::info!(
            "resuming interrupted install {} of {}",
            journal.transaction,
            crate::source::redact::url(&journal.request.source.as_string())
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
            .is_some_and(|s| s.status == SlotContent::Ok && s.transaction == j.transaction);
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
            (UpdateResult::Activated, None)
        } else {
            (
                UpdateResult::Failed,
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
        (UpdateResult::Activated, None)
    } else if j.resumed >= MAX_RESUMES {
        (
            UpdateResult::Failed,
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
            li.result = result;
            if let Some(m) = &msg {
                li.error = m.clone();
            }
        }
        None => {
            if let Some(m) = &msg {
                state.last_install = Some(InstallRecord {
                    transaction: j.transaction.clone(),
                    result,
                    error: m.clone(),
                    ..Default::default()
                });
            }
        }
    }
    for s in state.slots.values_mut() {
        if s.transaction == j.transaction && s.status == SlotContent::Installing {
            s.status = SlotContent::Failed;
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
    if li.result == UpdateResult::RolledBack && booted.name == li.slot {
        // The bootloader fell back, then tried the new slot again (its counters all ran
        // out and were reset, or someone made it first again) and now it runs.
        log::info!(
            "running the new slot {} ({}) with version {} after an earlier rollback; not yet marked good",
            li.slot,
            li.bootname,
            li.version
        );
        li.result = UpdateResult::Booted;
        li.error.clear();
        return None;
    }
    if li.result != UpdateResult::Activated && li.result != UpdateResult::Booted {
        return None;
    }
    if booted.name == li.slot {
        if li.result == UpdateResult::Activated {
            log::info!(
                "running the new slot {} ({}) with version {}; not yet marked good",
                li.slot,
                li.bootname,
                li.version
            );
            li.result = UpdateResult::Booted;
        }
        return None;
    }
    // Booted the other slot. Still waiting for the reboot if the new slot is untouched:
    // first in the order with a full counter.
    let untouched = boot.primary() == Some(li.bootname.as_str())
        && boot.attempts_left(&li.bootname) >= device.config.system.boot_attempts;
    if li.result == UpdateResult::Activated && untouched {
        return None;
    }
    li.result = UpdateResult::RolledBack;
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
        let journaled = device.store.update(|state| {
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
        });
        if let Err(e) = journaled {
            log::error!("cannot journal install {transaction}: {e}");
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
        let shown = crate::source::redact::url(&req.source.as_string());
        log::info!(
            TRANSACTION = transaction.as_str(), SOURCE = shown.as_str();
            "install {transaction} of {shown} started{}",
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
                    // Messages name the source; no secret in a URL may reach LastError,
                    // status.json or the log.
                    Err(e) => (
                        InstallResult::Failed,
                        crate::source::redact::text(&e.to_string()),
                    ),
                };
                if outcome != InstallResult::Success {
                    self.record_failure(&transaction, outcome, &message);
                    log::error!(
                        TRANSACTION = transaction.as_str();
                        "install {transaction} {}: {message}",
                        UpdateResult::after(outcome)
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
        let recorded = self.device.store.update(|state| {
            let mut li = state
                .last_install
                .clone()
                .filter(|l| l.transaction == transaction)
                .unwrap_or(InstallRecord {
                    transaction: transaction.to_owned(),
                    ..Default::default()
                });
            li.result = UpdateResult::after(outcome);
            li.error = message.to_owned();
            for s in state.slots.values_mut() {
                if s.transaction == transaction && s.status == SlotContent::Installing {
                    s.status = SlotContent::after(outcome);
                }
            }
            state.last_install = Some(li);
            state.journal = None;
        });
        if let Err(e) = recorded {
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

    /// What rota knows refuses two marks: a slot made active must not hold an install that
    /// did not finish (it must be the running slot, a slot rota installed and verified, or
    /// the factory image), and marking bad must leave a slot to boot.
    fn check_mark(&self, how: MarkState, slots: &[SlotConfig]) -> Result<(), AgentError> {
        let invalid = |m: String| Err(AgentError::InvalidArgument(m));
        match how {
            MarkState::Good => Ok(()),
            MarkState::Active => {
                let state = self
                    .device
                    .store
                    .load()
                    .map_err(|e| AgentError::Failed(e.to_string()))?;
                for slot in slots {
                    let booted = self
                        .device
                        .booted
                        .as_ref()
                        .is_some_and(|b| b.name == slot.name);
                    let status = state.slots.get(&slot.name).map(|s| s.status.as_str());
                    // No record is the factory image — unless the records were lost, when
                    // a half-written slot would look the same.
                    let known_good = match status {
                        Some(s) => s == "ok",
                        None => state.lost.is_none(),
                    };
                    if !booted && !known_good {
                        let what = match status {
                            Some(s) => format!("its last install is {s}"),
                            None => "rota's records were lost, so it cannot tell".to_owned(),
                        };
                        return invalid(format!(
                            "slot {} holds no complete, verified image ({what}); refusing to make it active",
                            slot.name
                        ));
                    }
                }
                Ok(())
            }
            MarkState::Bad => {
                let mut boot = self
                    .device
                    .bootloader
                    .read()
                    .map_err(|e| AgentError::Failed(e.to_string()))?;
                for b in slots.iter().filter_map(|s| s.bootname.as_deref()) {
                    boot.disable(b);
                }
                if boot.order.is_empty() {
                    let names: Vec<&str> = slots.iter().map(|s| s.name.as_str()).collect();
                    return invalid(format!(
                        "marking {} bad would leave no slot to boot (BOOT_ORDER would be empty); refused",
                        names.join(", ")
                    ));
                }
                Ok(())
            }
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
        self.check_mark(how, &slots)?;
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
        if let (MarkState::Good, Some(booted)) = (how, self.device.booted.as_ref()) {
            let marked = self.device.store.update(|state| {
                let li = state.last_install.as_mut().filter(|l| {
                    l.slot == booted.name
                        && slots[0].name == booted.name
                        && l.result == UpdateResult::Booted
                })?;
                li.result = UpdateResult::Good;
                Some(format!(
                    "update to {} in slot {} marked good",
                    li.version, li.slot
                ))
            });
            match marked {
                Ok(Some(m)) => {
                    log::info!("{m}");
                    let _ = self.events.send(AgentEvent::McuRelayDue);
                }
                Ok(None) => {}
                Err(e) => log::error!("cannot record mark good: {e}"),
            }
        }
        let boot = self.device.bootloader.read().ok();
        // A mark can decide the last install (marking the new slot bad is a rollback):
        // recorded now, so status queries only read.
        if let Some(b) = &boot {
            let device = &self.device;
            if let Err(e) = device.store.update(|state| follow_up(device, state, b)) {
                log::error!("cannot record the follow-up of the mark: {e}");
            }
        }
        let primary = boot
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
            // A view only: what the follow-up would record, without writing it (the
            // start-up and the marks record it).
            if self.running.is_none() {
                follow_up(device, &mut state, b);
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
                let is_booted = booted.is_some_and(|b| b.name == s.name);
                let (boot_status, left) = match (&s.bootname, &boot) {
                    (Some(b), Ok(bs)) => (
                        if bs.is_good(b) {
                            BootHealth::Good
                        } else {
                            BootHealth::Bad
                        },
                        Some(bs.attempts_left(b)),
                    ),
                    _ => (BootHealth::Unknown, None),
                };
                let role = if is_booted {
                    SlotRole::Booted
                } else if s.bootname.is_some() && s.bootname == primary_boot {
                    SlotRole::Active
                } else {
                    SlotRole::Inactive
                };
                SlotReport {
                    name: s.name.clone(),
                    class: s.class.clone(),
                    bootname: s.bootname.clone(),
                    device: s.device.display().to_string(),
                    state: role,
                    boot_status,
                    boot_attempts_left: left,
                    version: st.map(|x| x.version.clone()).filter(|v| !v.is_empty()),
                    sha256: st.map(|x| x.sha256.clone()).filter(|v| !v.is_empty()),
                    size: st.map(|x| x.size).filter(|n| *n > 0),
                    installed_at: st.map(|x| x.installed_at.clone()).filter(|v| !v.is_empty()),
                    transaction: st.map(|x| x.transaction.clone()).filter(|v| !v.is_empty()),
                    bundle_hash: st.map(|x| x.bundle_hash.clone()).filter(|v| !v.is_empty()),
                    status: st.map(|x| x.status),
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
            operation: snap.operation,
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
                    if r.state.is_settled() && staged.exists() {
                        r.state = McuState::Staged;
                    }
                    r
                })
                .collect(),
        })
    }
}
