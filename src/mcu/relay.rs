//! The per-node relay flow, the way MCUboot devices are meant to be updated:
//!
//! 1. read the node's image state; stop if it already runs the image (confirming it
//!    if it runs it unconfirmed);
//! 2. upload into the secondary slot, resumable: the first request names the upload
//!    by the file's SHA-256, so a device that still holds a broken session answers
//!    with the offset it has; a device that lost it (reset) answers 0 and the upload
//!    starts over; a chunk lost on the way is answered with the offset the device
//!    expects. Progress is kept in the node's record (atomically) as well;
//! 3. mark the image for a test boot, record "rebooting", reset the node;
//! 4. wait until the node answers again and no longer shows the image as pending;
//! 5. the new image is active → confirm it; the old one is active → MCUboot reverted
//!    the test boot: reported as [`RelayOutcome::Reverted`].
//!
//! A relay can be cancelled between requests and resumed later, also by another
//! process after a crash: the record says which image was on the way and whether the
//! test reset was already sent, the device says how many bytes it has.
//! Everything is blocking; callers run relays on worker threads ([`relay_many`]).

use super::client::SmpClient;
use super::image::{self, McuImage};
use super::record::{self, NodeLock, NodeRecord, RelayRecord};
use super::smp::{self, SlotState, UploadRequest};
use super::transport;
use super::McuError;
use crate::config::McuSection;
use crate::model::{McuReport, McuState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use super::record::RelayPhase;

/// The first upload chunk may make the device erase its whole secondary slot before
/// it answers: its timeout is this many times the node's `timeout`.
const FIRST_CHUNK_TIMEOUT_FACTOR: u32 = 6;
/// How long a node may take to come back after the test reset, in units of the
/// node's `timeout` (60 s with the default 5 s).
const REBOOT_WAIT_FACTOR: u32 = 12;
/// Pause between "are you back?" probes while a node reboots.
const REBOOT_POLL: Duration = Duration::from_millis(100);
/// Longest single probe while a node reboots.
const REBOOT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The node answers but still shows the image pending this long after the reset
/// request: the request was lost, send it again. Zephyr resets 250 ms after its
/// answer; a reset is only re-sent while the test image is provably not booted, so
/// it can never cut a test boot short (which would make MCUboot revert).
const RESET_RETRY_AFTER: Duration = Duration::from_millis(1500);
/// Reset requests per test boot, first included.
const MAX_RESET_SENDS: u32 = 3;
/// Consecutive answers without progress before an upload is given up.
const MAX_STALLS: u32 = 8;
/// Times the device may restart an upload from 0 (it reset) before we give up.
const MAX_RESTARTS: u32 = 5;
/// The upload offset is written to the record at most this often (bytes); the device's
/// own offset is what resume relies on, so this only bounds flash wear.
const PERSIST_EVERY: u64 = 64 * 1024;

/// A progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayProgress {
    pub node: String,
    pub phase: RelayPhase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub message: String,
}

impl RelayProgress {
    /// 0..=100 over the whole flow (upload is 5..=90).
    pub fn percent(&self) -> u8 {
        match self.phase {
            RelayPhase::Connecting => 0,
            RelayPhase::Uploading if self.bytes_total > 0 => {
                (5 + self.bytes_done * 85 / self.bytes_total) as u8
            }
            RelayPhase::Uploading => 5,
            RelayPhase::Uploaded => 90,
            RelayPhase::Testing => 92,
            RelayPhase::Rebooting => 95,
            RelayPhase::Confirmed | RelayPhase::Reverted | RelayPhase::Failed => 100,
        }
    }
}

/// How a relay ended (errors aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutcome {
    /// The node already ran this image, confirmed; nothing was sent.
    AlreadyRunning { version: String },
    /// Uploaded (or found uploaded), test-booted and confirmed.
    Confirmed {
        version: String,
        /// Image bytes sent in this call.
        bytes_sent: u64,
        /// Offset the device resumed from (0 for a fresh upload).
        resumed_from: u64,
        /// Upload time in this call.
        upload_time: Duration,
    },
    /// The node came back on its previous image: MCUboot reverted the test boot.
    Reverted {
        running_version: String,
        running_hash: String,
        wanted_version: String,
        wanted_hash: String,
    },
}

impl RelayOutcome {
    pub fn is_success(&self) -> bool {
        !matches!(self, RelayOutcome::Reverted { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            RelayOutcome::AlreadyRunning { version } => format!("already running {}", ver(version)),
            RelayOutcome::Confirmed {
                version,
                bytes_sent,
                resumed_from,
                ..
            } if *resumed_from > 0 => {
                format!(
                    "confirmed {} ({bytes_sent} bytes sent, resumed at {resumed_from})",
                    ver(version)
                )
            }
            RelayOutcome::Confirmed {
                version,
                bytes_sent,
                ..
            } => {
                format!("confirmed {} ({bytes_sent} bytes sent)", ver(version))
            }
            RelayOutcome::Reverted {
                running_version,
                wanted_version,
                ..
            } => format!(
                "reverted: the node rejected {} and runs {} again",
                ver(wanted_version),
                ver(running_version)
            ),
        }
    }
}

fn ver(v: &str) -> String {
    if v.is_empty() {
        "the raw image".into()
    } else {
        format!("version {v}")
    }
}

/// Opens an SMP client to a node.
pub fn connect(node: &str, cfg: &McuSection) -> Result<SmpClient, McuError> {
    Ok(SmpClient::new(transport::open(node, cfg)?, cfg.timeout))
}

/// Checks `image` against the node's key and relays it. The entry point for the
/// engine, the CLI and D-Bus.
pub fn relay_file(
    node: &str,
    cfg: &McuSection,
    image: &Path,
    data_dir: &Path,
    progress: &mut dyn FnMut(RelayProgress),
    cancel: &AtomicBool,
) -> Result<RelayOutcome, McuError> {
    let img = match load_for(cfg, image) {
        Ok(i) => i,
        Err(e) => {
            record_refusal(node, data_dir, &e);
            return Err(e);
        }
    };
    relay_image(node, cfg, &img, data_dir, progress, cancel)
}

/// Notes an image refused before any contact in the node's record (unless a relay to
/// the node is running: its record is not ours to touch).
fn record_refusal(node: &str, data_dir: &Path, e: &McuError) {
    let Ok(_lock) = NodeLock::acquire(data_dir, node) else {
        return;
    };
    let mut rec = record::load_or_default(data_dir, node);
    rec.state = McuState::Failed;
    rec.last_error = e.to_string();
    if let Err(e) = record::save(data_dir, node, &rec) {
        log::warn!("mcu {node}: {e}");
    }
}

/// Loads and checks an image with the node's configured key (if any).
pub fn load_for(cfg: &McuSection, image: &Path) -> Result<McuImage, McuError> {
    let key = cfg.key.as_deref().map(image::load_key).transpose()?;
    image::load(image, key.as_ref())
}

/// Relays an already checked image.
pub fn relay_image(
    node: &str,
    cfg: &McuSection,
    img: &McuImage,
    data_dir: &Path,
    progress: &mut dyn FnMut(RelayProgress),
    cancel: &AtomicBool,
) -> Result<RelayOutcome, McuError> {
    let _lock = NodeLock::acquire(data_dir, node)?;
    let mut rec = record::load_or_default(data_dir, node);
    let mut flow = Flow {
        node,
        cfg,
        img,
        data_dir,
        progress,
        cancel,
        rec: &mut rec,
    };
    let result = flow.run();
    match &result {
        Ok(RelayOutcome::Reverted {
            running_version,
            wanted_version,
            ..
        }) => {
            rec.state = McuState::Reverted;
            rec.last_error = format!(
                "MCUboot reverted {}: the node runs {} again",
                ver(wanted_version),
                ver(running_version)
            );
        }
        Ok(_) => rec.last_error.clear(),
        Err(McuError::Cancelled) => {
            rec.last_error = "relay cancelled; it resumes when started again".into()
        }
        Err(e) => {
            rec.state = McuState::Failed;
            rec.last_error = e.to_string();
        }
    }
    let saved = record::save(data_dir, node, &rec);
    match (result, saved) {
        (Ok(o), Err(e)) => {
            log::warn!("mcu {node}: relay done ({}) but {e}", o.describe());
            Ok(o)
        }
        (r, Err(e)) => {
            log::warn!("mcu {node}: {e}");
            r
        }
        (r, Ok(())) => r,
    }
}

struct Flow<'a> {
    node: &'a str,
    cfg: &'a McuSection,
    img: &'a McuImage,
    data_dir: &'a Path,
    progress: &'a mut dyn FnMut(RelayProgress),
    cancel: &'a AtomicBool,
    rec: &'a mut NodeRecord,
}

impl Flow<'_> {
    fn report(&mut self, phase: RelayPhase, done: u64, message: String) {
        log::debug!("mcu {}: {}: {message}", self.node, phase.as_str());
        (self.progress)(RelayProgress {
            node: self.node.to_owned(),
            phase,
            bytes_done: done,
            bytes_total: self.img.data.len() as u64,
            message,
        });
    }

    fn check_cancel(&self) -> Result<(), McuError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(McuError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn save(&mut self) -> Result<(), McuError> {
        record::save(self.data_dir, self.node, self.rec)
    }

    fn set_phase(&mut self, phase: RelayPhase) -> Result<(), McuError> {
        if let Some(r) = self.rec.relay.as_mut() {
            r.phase = phase;
        }
        self.rec.state = phase.into();
        self.save()
    }

    /// Slots of the configured image number.
    fn mine(&self, states: Vec<SlotState>) -> Vec<SlotState> {
        states
            .into_iter()
            .filter(|s| s.image == self.cfg.image)
            .collect()
    }

    fn seen_running(&mut self, states: &[SlotState]) {
        if let Some(a) = active(states) {
            self.rec.version = a.version.clone();
            self.rec.hash = hex::encode(&a.hash);
        }
    }

    fn run(&mut self) -> Result<RelayOutcome, McuError> {
        let want = self.img.hash.clone();
        let want_hex = hex::encode(&want);
        self.report(
            RelayPhase::Connecting,
            0,
            format!("connecting ({})", self.img.describe()),
        );
        let mut client = connect(self.node, self.cfg)?;
        client.params()?;
        let states = self.mine(client.image_state()?);
        self.seen_running(&states);
        let same_relay = self
            .rec
            .relay
            .as_ref()
            .filter(|r| r.image_hash == want_hex)
            .cloned();

        // 1. Already running?
        if let Some(a) = active(&states).filter(|a| a.hash == want) {
            let was_ours = same_relay.as_ref().is_some_and(|r| {
                matches!(
                    r.phase,
                    RelayPhase::Rebooting | RelayPhase::Testing | RelayPhase::Confirmed
                )
            });
            if a.confirmed {
                self.rec.state = McuState::Confirmed;
                if was_ours
                    && same_relay
                        .as_ref()
                        .is_some_and(|r| r.phase != RelayPhase::Confirmed)
                {
                    self.set_phase(RelayPhase::Confirmed)?;
                    return Ok(self.confirmed(0, 0, Duration::ZERO));
                }
                self.report(
                    RelayPhase::Confirmed,
                    0,
                    format!("already running {}", ver(&a.version)),
                );
                return Ok(RelayOutcome::AlreadyRunning {
                    version: a.version.clone(),
                });
            }
            // Running it on test: a relay (ours or someone's) got this far; finish it.
            if same_relay.is_none() {
                self.start_record();
            }
            return self.confirm(&mut client, 0, 0, Duration::ZERO);
        }

        // 2. Reset already sent for this image and the node is back on the old one?
        if let Some(r) = same_relay
            .as_ref()
            .filter(|r| r.phase == RelayPhase::Rebooting)
        {
            let still_pending = states.iter().any(|s| s.hash == want && s.pending);
            if !still_pending {
                return Ok(self.reverted(&states, r.version.clone()));
            }
            // The reset never went out (crash between record and reset): send it now.
            return self.reboot_and_check(&mut client, 0, 0, Duration::ZERO);
        }
        if same_relay.is_none()
            || same_relay
                .as_ref()
                .is_some_and(|r| r.phase == RelayPhase::Reverted)
        {
            self.start_record();
            self.save()?;
        }

        // 3. Upload unless the secondary slot already holds the image.
        let (mut sent, mut resumed_from, mut took) = (0, 0, Duration::ZERO);
        let staged = states.iter().find(|s| !s.active && s.hash == want).cloned();
        match &staged {
            Some(_) => self.report(
                RelayPhase::Uploaded,
                self.img.data.len() as u64,
                "the image is already in the secondary slot".into(),
            ),
            None => (sent, resumed_from, took) = self.upload(&mut client)?,
        }
        self.set_phase(RelayPhase::Uploaded)?;

        // 4. Mark for test (unless it already is).
        self.check_cancel()?;
        if !staged.as_ref().is_some_and(|s| s.pending) {
            self.report(
                RelayPhase::Testing,
                self.img.data.len() as u64,
                "marking the image for a test boot".into(),
            );
            let after = self.mine(client.image_test(&want)?);
            if !after.iter().any(|s| s.hash == want && s.pending) {
                return Err(McuError::Relay(format!(
                    "the node accepted the test request but does not show image {} as pending",
                    image::short_hex(&want)
                )));
            }
        }
        self.set_phase(RelayPhase::Testing)?;
        self.reboot_and_check(&mut client, sent, resumed_from, took)
    }

    fn start_record(&mut self) {
        self.rec.relay = Some(RelayRecord {
            image_hash: hex::encode(&self.img.hash),
            file_sha256: hex::encode(self.img.file_sha256),
            version: self.img.version.clone(),
            size: self.img.data.len() as u64,
            phase: RelayPhase::Uploading,
            offset: 0,
            started_at: record::now(),
        });
    }

    fn reboot_and_check(
        &mut self,
        client: &mut SmpClient,
        sent: u64,
        resumed_from: u64,
        took: Duration,
    ) -> Result<RelayOutcome, McuError> {
        self.check_cancel()?;
        // Recorded before the reset: after a crash from here on, the record tells
        // that a test boot may have happened.
        self.set_phase(RelayPhase::Rebooting)?;
        self.report(
            RelayPhase::Rebooting,
            self.img.data.len() as u64,
            "resetting the node into the test image".into(),
        );
        let acked = client.reset()?;
        if !acked {
            log::info!(
                "mcu {}: no answer to reset; assuming the node is already rebooting",
                self.node
            );
        }
        let states = self.wait_back(client)?;
        if active(&states).is_some_and(|a| a.hash == self.img.hash) {
            return self.confirm(client, sent, resumed_from, took);
        }
        Ok(self.reverted(&states, self.img.version.clone()))
    }

    /// Waits until the node answers and has left the pending state (it really
    /// rebooted: MCUboot clears "pending" when it swaps), then returns its state.
    fn wait_back(&mut self, client: &mut SmpClient) -> Result<Vec<SlotState>, McuError> {
        let wait = self.cfg.timeout * REBOOT_WAIT_FACTOR;
        let mut deadline = Instant::now() + wait;
        let probe = self.cfg.timeout.min(REBOOT_PROBE_TIMEOUT);
        let mut last = String::from("no answer");
        let (mut reset_at, mut sends) = (Instant::now(), 1u32);
        loop {
            self.check_cancel()?;
            if Instant::now() >= deadline {
                return Err(McuError::Relay(format!(
                    "the node did not come back from its test reset within {wait:?} ({last})"
                )));
            }
            std::thread::sleep(REBOOT_POLL);
            client.transport().discard_input();
            if let Err(e) = client.ping(probe) {
                last = e.to_string();
                continue;
            }
            let states = match client.image_state() {
                Ok(s) => self.mine(s),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            if states
                .iter()
                .any(|s| s.hash == self.img.hash && s.pending && !s.active)
            {
                last = "the node answers but still shows the image as pending: it has not reset"
                    .into();
                if reset_at.elapsed() >= RESET_RETRY_AFTER && sends < MAX_RESET_SENDS {
                    log::info!(
                        "mcu {}: the node has not reset; sending the reset again",
                        self.node
                    );
                    client.reset()?;
                    sends += 1;
                    reset_at = Instant::now();
                    deadline = reset_at + wait;
                }
                continue;
            }
            self.seen_running(&states);
            return Ok(states);
        }
    }

    fn confirm(
        &mut self,
        client: &mut SmpClient,
        sent: u64,
        resumed_from: u64,
        took: Duration,
    ) -> Result<RelayOutcome, McuError> {
        self.report(
            RelayPhase::Rebooting,
            self.img.data.len() as u64,
            "confirming the new image".into(),
        );
        let after = self.mine(client.image_confirm(Some(&self.img.hash))?);
        let ok = active(&after).is_some_and(|a| a.hash == self.img.hash && a.confirmed);
        if !ok {
            return Err(McuError::Relay(format!(
                "the node runs image {} but does not show it confirmed after the confirm request",
                image::short_hex(&self.img.hash)
            )));
        }
        self.seen_running(&after);
        self.set_phase(RelayPhase::Confirmed)?;
        Ok(self.confirmed(sent, resumed_from, took))
    }

    fn confirmed(&mut self, sent: u64, resumed_from: u64, took: Duration) -> RelayOutcome {
        self.rec.state = McuState::Confirmed;
        self.report(
            RelayPhase::Confirmed,
            self.img.data.len() as u64,
            format!("{} confirmed", ver(&self.img.version)),
        );
        RelayOutcome::Confirmed {
            version: self.img.version.clone(),
            bytes_sent: sent,
            resumed_from,
            upload_time: took,
        }
    }

    fn reverted(&mut self, states: &[SlotState], wanted_version: String) -> RelayOutcome {
        if let Some(r) = self.rec.relay.as_mut() {
            r.phase = RelayPhase::Reverted;
        }
        let (running_version, running_hash) = active(states)
            .map(|a| (a.version.clone(), hex::encode(&a.hash)))
            .unwrap_or_default();
        let out = RelayOutcome::Reverted {
            running_version,
            running_hash,
            wanted_version,
            wanted_hash: hex::encode(&self.img.hash),
        };
        self.report(
            RelayPhase::Reverted,
            self.img.data.len() as u64,
            out.describe(),
        );
        out
    }

    /// Uploads the image; returns (bytes sent, offset resumed from, time taken).
    fn upload(&mut self, client: &mut SmpClient) -> Result<(u64, u64, Duration), McuError> {
        let data = &self.img.data;
        let total = data.len() as u64;
        let started = Instant::now();
        self.set_phase(RelayPhase::Uploading)?;
        let (mut off, mut sent, mut resumed_from) = (0u64, 0u64, 0u64);
        let (mut stalls, mut restarts, mut erased) = (0u32, 0u32, false);
        let mut persisted = 0u64;
        let timeout = self.cfg.timeout;
        self.report(RelayPhase::Uploading, 0, format!("uploading {total} bytes"));
        loop {
            self.check_cancel()?;
            let first = off == 0;
            let mut req = UploadRequest {
                image: first.then_some(self.cfg.image),
                len: first.then_some(total),
                off,
                sha: first.then(|| self.img.file_sha256.to_vec()),
                data: Vec::new(),
                upgrade: None,
            };
            let room = client.max_chunk(&req)?;
            let left = (total - off) as usize;
            let n = if room >= left { left } else { room & !3 };
            req.data = data[off as usize..off as usize + n].to_vec();
            let t = if first {
                timeout * FIRST_CHUNK_TIMEOUT_FACTOR
            } else {
                timeout
            };
            let rsp = match client.upload(&req, t) {
                Ok(r) => r,
                Err(McuError::Device { err, .. })
                    if first
                        && !erased
                        && err.group == Some(smp::GROUP_IMAGE)
                        && err.rc == smp::IMG_ERR_NO_FREE_SLOT =>
                {
                    // The secondary slot holds something the device will not overwrite.
                    self.report(
                        RelayPhase::Uploading,
                        0,
                        "secondary slot busy; erasing it".into(),
                    );
                    client.image_erase(None)?;
                    erased = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            sent += n as u64;
            if rsp.off > total {
                return Err(McuError::Protocol {
                    what: format!("image upload at offset {off}"),
                    message: format!(
                        "the device reports offset {} beyond the image size {total}",
                        rsp.off
                    ),
                });
            }
            if first && rsp.off > n as u64 {
                resumed_from = rsp.off;
                self.report(
                    RelayPhase::Uploading,
                    rsp.off,
                    format!("the device resumes the upload at {}", rsp.off),
                );
            } else if rsp.off < off {
                restarts += 1;
                if restarts > MAX_RESTARTS {
                    return Err(McuError::Relay(format!(
                        "the device restarted the upload {restarts} times (last at offset {off})"
                    )));
                }
                self.report(
                    RelayPhase::Uploading,
                    rsp.off,
                    format!(
                        "the device lost the upload at {off}; continuing at {}",
                        rsp.off
                    ),
                );
            }
            if rsp.off == total {
                if rsp.matched == Some(false) {
                    return Err(McuError::Relay(
                        "the device received the whole image but reports that its SHA-256 does not match".into(),
                    ));
                }
                if let Some(r) = self.rec.relay.as_mut() {
                    r.offset = total;
                }
                self.report(RelayPhase::Uploading, total, "upload complete".into());
                return Ok((sent, resumed_from, started.elapsed()));
            }
            if rsp.off == off {
                stalls += 1;
                if stalls > MAX_STALLS {
                    return Err(McuError::Relay(format!(
                        "the device does not accept data at offset {off} ({stalls} answers without progress)"
                    )));
                }
            } else {
                stalls = 0;
            }
            off = rsp.off;
            if let Some(r) = self.rec.relay.as_mut() {
                r.offset = off;
            }
            if off.abs_diff(persisted) >= PERSIST_EVERY {
                persisted = off;
                self.save()?;
            }
            self.report(
                RelayPhase::Uploading,
                off,
                format!("{off} of {total} bytes"),
            );
        }
    }
}

/// The active slot of a state list (the running image).
pub fn active(states: &[SlotState]) -> Option<&SlotState> {
    states
        .iter()
        .find(|s| s.active)
        .or_else(|| states.iter().find(|s| s.slot == 0))
}

/// One node of [`relay_many`].
#[derive(Debug, Clone)]
pub struct RelayJob {
    pub node: String,
    pub cfg: McuSection,
    pub image: PathBuf,
}

/// Relays several nodes in parallel, one thread each; returns every node's result
/// in job order. `progress` is called from the worker threads.
pub fn relay_many(
    jobs: &[RelayJob],
    data_dir: &Path,
    progress: &(dyn Fn(&RelayProgress) + Sync),
    cancel: &AtomicBool,
) -> Vec<(String, Result<RelayOutcome, McuError>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|j| {
                s.spawn(move || {
                    let mut p = |e: RelayProgress| progress(&e);
                    relay_file(&j.node, &j.cfg, &j.image, data_dir, &mut p, cancel)
                })
            })
            .collect();
        jobs.iter()
            .zip(handles)
            .map(|(j, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(McuError::Relay(format!(
                        "relay thread for {} panicked",
                        j.node
                    )))
                });
                (j.node.clone(), r)
            })
            .collect()
    })
}

/// What a node reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeState {
    pub slots: Vec<SlotState>,
    /// `buf_size` the node reported, if any.
    pub buf_size: Option<u32>,
}

impl NodeState {
    pub fn running(&self) -> Option<&SlotState> {
        active(&self.slots)
    }
}

/// Asks a node for its image state (takes the node lock: not during a relay).
/// The node's record is refreshed with what it reports.
pub fn node_state(node: &str, cfg: &McuSection, data_dir: &Path) -> Result<NodeState, McuError> {
    let _lock = NodeLock::acquire(data_dir, node)?;
    let mut client = connect(node, cfg)?;
    let params = client.params()?;
    let slots = client.image_state()?;
    let state = NodeState {
        slots,
        buf_size: params.map(|p| p.buf_size),
    };
    let mut rec = record::load_or_default(data_dir, node);
    let mine: Vec<SlotState> = state
        .slots
        .iter()
        .filter(|s| s.image == cfg.image)
        .cloned()
        .collect();
    if let Some(a) = active(&mine) {
        rec.version = a.version.clone();
        rec.hash = hex::encode(&a.hash);
        let reverted_still = rec.state == McuState::Reverted
            && rec.relay.as_ref().is_some_and(|r| r.image_hash != rec.hash);
        if !reverted_still {
            rec.state = live_state(&mine);
        }
    }
    if let Err(e) = record::save(data_dir, node, &rec) {
        log::warn!("mcu {node}: {e}");
    }
    Ok(state)
}

/// `confirmed`, `testing` (running unconfirmed) or `pending` (an image waits for reset).
fn live_state(slots: &[SlotState]) -> McuState {
    if slots.iter().any(|s| s.pending) {
        McuState::Pending
    } else if active(slots).is_some_and(|a| !a.confirmed) {
        McuState::Testing
    } else {
        McuState::Confirmed
    }
}

/// The node's line in `rota status`. With `live`, the node is asked (falling back to
/// the record, state `unreachable` or the relay's phase, when it cannot be); without,
/// the record alone answers.
pub fn node_report(node: &str, cfg: &McuSection, data_dir: &Path, live: bool) -> McuReport {
    let mut live_err = None;
    if live {
        if let Err(e) = node_state(node, cfg, data_dir) {
            live_err = Some(e);
        }
    }
    let rec = record::load_or_default(data_dir, node);
    let mut report = McuReport {
        name: node.to_owned(),
        version: rec.version.clone(),
        state: rec.state,
        last_error: rec.last_error.clone(),
    };
    match live_err {
        Some(McuError::Busy(_)) => {} // a relay is running: its record is current
        Some(e) => {
            report.state = McuState::Unreachable;
            report.last_error = e.to_string();
        }
        None => {}
    }
    report
}
