//! The agent: the single owner of rota's mutable state.
//!
//! One task owns the configuration, the persistent state and the running install.
//! Front ends (D-Bus interfaces, pollers, the MCU relay) hold an [`AgentHandle`] and
//! talk to it by message; they observe progress through [`AgentEvent`]s and the latest
//! [`Snapshot`]. No lock is held across an await.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the handle, the messages, start-up and the message loop (install, cancel, worker results) |
//! | [`recovery`] | after a restart: settle an interrupted install's journal, follow the last install through reboot |
//! | `marks.rs` | `mark good/bad/active`, checked against what rota recorded |
//! | `status.rs` | `rota status` / `GetStatus`, assembled from state, env and config (reads only) |

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
    Estimate(
        InstallRequest,
        oneshot::Sender<Result<crate::model::DownloadEstimate, AgentError>>,
    ),
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

    /// What installing `req` would download, checked as an install checks it; nothing
    /// is written.
    pub async fn estimate(
        &self,
        req: InstallRequest,
    ) -> Result<crate::model::DownloadEstimate, AgentError> {
        self.ask(|tx| Request::Estimate(req, tx)).await
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

use crate::boot::Bootloader;
use crate::bundle::Keyring;
use crate::config::{Config, SlotConfig};
use crate::install::{self, InstallError};
use crate::state::{InstallRecord, Journal, StateStore};
use recovery::{follow_up, settle_journal};
use status::primary_slot_name;

mod marks;
pub mod recovery;
mod status;

pub use recovery::MAX_RESUMES;
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
    /// The source retries a transfer, for this reason.
    Retrying(String),
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
    // Checked at config load too, but a device may have appeared (or been linked) since.
    crate::slot::check_aliases(
        &config.slots(),
        std::path::Path::new(crate::slot::identity::SYSFS),
    )
    .map_err(|m| AgentError::Failed(format!("invalid config {}: {m}", config.path.display())))?;
    // Before the data directory is created: never make it on a slot.
    crate::slot::check_data_dir(
        &config.system.data_dir,
        &config.slots(),
        &crate::slot::Host::default(),
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
    let bootloader = crate::boot::open(&config).map_err(|e| failed(&e))?;
    let device = Arc::new(Device {
        config,
        keyring,
        bootloader,
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
            Request::Estimate(req, reply) => {
                // Reads only: it runs beside an install, on its own thread.
                let device = self.device.clone();
                std::thread::spawn(move || {
                    let ctx = install::Context {
                        config: &device.config,
                        keyring: &device.keyring,
                        bootloader: device.bootloader.as_ref(),
                        store: &device.store,
                        booted: device.booted.clone(),
                    };
                    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let r = install::estimate(&ctx, &req, cancel)
                        .map_err(|e| AgentError::Failed(e.to_string()));
                    let _ = reply.send(r);
                });
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
        // Checked at start; a mount since then (e.g. a slot over the data directory's
        // parent) must not make the journal of this install vanish with the slot.
        let config = &self.device.config;
        crate::slot::check_data_dir(
            &config.system.data_dir,
            &config.slots(),
            &crate::slot::Host::default(),
        )
        .map_err(AgentError::Failed)?;
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
            let retry_tx = worker_tx.clone();
            let on_retry = crate::source::http::RetryNotice::new(move |why| {
                let _ = retry_tx.send(WorkerMsg::Retrying(why.to_owned()));
            });
            // A panic here aborts the service (crate::panics): the journal resumes the
            // install when systemd brings it back, and gives up after repeated deaths.
            let result = install::run(&ctx, &tr, &req, resuming, cancel, &mut emit, Some(on_retry));
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
            // The numbers stay; the message says why nothing moves until the next
            // progress event from the install replaces it.
            WorkerMsg::Retrying(why) => {
                let mut p = self.snapshot.borrow().progress.clone();
                p.message = format!("retrying: {why}");
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
                .filter(|l| l.install.transaction == transaction)
                .unwrap_or(InstallRecord {
                    install: LastInstall {
                        transaction: transaction.to_owned(),
                        ..Default::default()
                    },
                    ..Default::default()
                });
            li.install.result = UpdateResult::after(outcome);
            li.install.error = message.to_owned();
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
}
