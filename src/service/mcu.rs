//! Per-node D-Bus objects: `/io/rota/mcu/<name>` with interface `io.rota.Mcu1`.
//!
//! Properties: `Name`, `Transport`, `Version`, `State`, `Progress` (`(ustt)`: percent,
//! message, bytes done, bytes total) and `LastError`; methods `Relay(s path)` (starts a
//! relay of an image file and returns at once), `Cancel()` and `Refresh()` (asks the
//! node for its state); signal `Completed(s result, s message)` with result
//! `confirmed`, `already-running`, `reverted`, `failed` or `cancelled`.
//!
//! Decoupled from the agent: the service calls [`register`] with the `[mcu.*]`
//! sections and the data dir, and may relay through the returned [`McuBus`] so the
//! objects mirror relays the engine starts (e.g. staged images after "mark good").
//! `Relay` and `Cancel` take root or the configured group, checked by the service itself
//! as for the agent's methods (the bus policy says the same); `Relay` also refuses an
//! image file the caller could not read itself.
//! Node names map to path elements by escaping every byte outside `[A-Za-z0-9]` as
//! `_xx` (hex), so `radio-1` lives at `/io/rota/mcu/radio_2d1`.

use super::access;
use super::native::{RotaError, MAX_SOURCE_LEN};
use crate::config::{McuSection, McuTransportKind};
use crate::mcu::relay::{self, RelayOutcome, RelayProgress};
use crate::mcu::{record, staging, McuError};
use crate::model::McuState;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection};

/// D-Bus interface name of a node object.
pub const INTERFACE: &str = "io.rota.Mcu1";
/// Parent of every node object.
pub const PATH_PREFIX: &str = "/io/rota/mcu";
/// Shortest interval between Progress property changes during an upload (keeps the
/// bus quiet on fast links); phase changes are always sent.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Object path of a node.
pub fn object_path(node: &str) -> String {
    let mut p = String::from(PATH_PREFIX);
    p.push('/');
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

/// One node's object.
pub struct McuNode {
    name: String,
    cfg: McuSection,
    data_dir: PathBuf,
    version: String,
    state: McuState,
    progress: (u32, String, u64, u64),
    last_error: String,
    busy: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
    /// Besides root, members of this group may relay and cancel.
    group: String,
}

impl McuNode {
    fn new(name: &str, cfg: &McuSection, data_dir: &Path, group: &str) -> Self {
        let rec = record::load_or_default(data_dir, name);
        Self {
            name: name.to_owned(),
            cfg: cfg.clone(),
            data_dir: data_dir.to_owned(),
            version: rec.version,
            state: rec.state,
            progress: (0, String::new(), 0, 0),
            last_error: rec.last_error,
            busy: Arc::new(AtomicBool::new(false)),
            cancel: Arc::new(AtomicBool::new(false)),
            group: group.to_owned(),
        }
    }
}

#[interface(name = "io.rota.Mcu1")]
impl McuNode {
    /// The node's name, as in `[mcu.<name>]`.
    #[zbus(property)]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// `serial <device> @ <baud>` or `udp <address>`.
    #[zbus(property)]
    fn transport(&self) -> String {
        match self.cfg.transport {
            McuTransportKind::Serial => format!(
                "serial {} @ {}",
                self.cfg
                    .device
                    .as_deref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                self.cfg.baud
            ),
            McuTransportKind::Udp => format!("udp {}", self.cfg.address.as_deref().unwrap_or("")),
        }
    }

    /// Version of the image the node was last seen running.
    #[zbus(property)]
    fn version(&self) -> String {
        self.version.clone()
    }

    /// `unknown`, `confirmed`, `testing`, `pending`, `connecting`, `uploading`,
    /// `uploaded`, `rebooting`, `reverted`, `failed`, `unreachable`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.state.as_str().to_owned()
    }

    /// (percent, message, bytes done, bytes total) of the running or last relay.
    #[zbus(property)]
    fn progress(&self) -> (u32, String, u64, u64) {
        self.progress.clone()
    }

    /// Why the last relay or refresh failed; "" after a success.
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.last_error.clone()
    }

    /// Starts relaying the signed MCUboot image file at `path` (absolute, readable by the
    /// caller) to this node and returns at once; the result arrives as `Completed`. Root
    /// or the configured group only.
    async fn relay(
        &self,
        path: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), RotaError> {
        let caller = authorize(conn, &header, &self.group).await?;
        if path.is_empty() || path.len() > MAX_SOURCE_LEN {
            return Err(RotaError::InvalidArgument(format!(
                "the image path must be 1 to {MAX_SOURCE_LEN} bytes"
            )));
        }
        let image = PathBuf::from(&path);
        if !image.is_absolute() {
            return Err(RotaError::InvalidArgument(format!(
                "image path must be absolute, got {path:?}"
            )));
        }
        // The service reads the file as root: the caller must be able to read it too.
        let checked = image.clone();
        tokio::task::spawn_blocking(move || access::may_read(&caller, &checked))
            .await
            .map_err(|e| RotaError::Failed(format!("the access check failed: {e}")))?
            .map_err(|e| {
                RotaError::AccessDenied(format!("the caller cannot read the image: {e}"))
            })?;
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(RotaError::Busy(format!(
                "busy: a relay to MCU node {} is running",
                self.name
            )));
        }
        self.cancel.store(false, Ordering::SeqCst);
        let conn = conn.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let _ = drive(&conn, &name, Job::File(image)).await;
        });
        Ok(())
    }

    /// Cancels the running relay (it stops after the current request and resumes
    /// from the device's offset when started again). Root or the configured group only.
    async fn cancel(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), RotaError> {
        authorize(conn, &header, &self.group).await?;
        if !self.busy.load(Ordering::SeqCst) {
            return Err(RotaError::Failed(format!(
                "no relay to MCU node {} is running",
                self.name
            )));
        }
        self.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Asks the node for its state now and updates Version, State and LastError. It talks
    /// to the device, so root or the configured group only, and not during a relay.
    async fn refresh(
        &mut self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), RotaError> {
        authorize(conn, &header, &self.group).await?;
        if self.busy.load(Ordering::SeqCst) {
            return Err(RotaError::Busy(format!(
                "busy: a relay to MCU node {} is running; its end updates the properties",
                self.name
            )));
        }
        let (name, cfg, dir) = (self.name.clone(), self.cfg.clone(), self.data_dir.clone());
        let report =
            tokio::task::spawn_blocking(move || relay::node_report(&name, &cfg, &dir, true))
                .await
                .map_err(|e| RotaError::Failed(format!("refresh failed: {e}")))?;
        self.version = report.version;
        self.state = report.state;
        self.last_error = report.last_error;
        let _ = self.version_changed(&emitter).await;
        let _ = self.state_changed(&emitter).await;
        let _ = self.last_error_changed(&emitter).await;
        Ok(())
    }

    /// Sent when a relay ends: `result` is confirmed, already-running, reverted, failed or
    /// cancelled; `message` says more.
    #[zbus(signal)]
    async fn completed(
        emitter: &SignalEmitter<'_>,
        result: &str,
        message: &str,
    ) -> zbus::Result<()>;
}

/// What a relay sends.
enum Job {
    File(PathBuf),
    Staged,
}

/// Handle to the registered node objects.
#[derive(Clone)]
pub struct McuBus {
    conn: Connection,
    nodes: Vec<String>,
}

impl McuBus {
    /// Names of the registered nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Relays an image file to a node, mirrored on its object; fails with Busy if a
    /// relay to that node runs already.
    pub async fn relay(&self, node: &str, image: PathBuf) -> Result<RelayOutcome, McuError> {
        self.claim(node).await?;
        drive(&self.conn, node, Job::File(image)).await
    }

    /// Relays a node's staged image (see [`staging`]), mirrored on its object.
    pub async fn relay_staged(&self, node: &str) -> Result<RelayOutcome, McuError> {
        self.claim(node).await?;
        drive(&self.conn, node, Job::Staged).await
    }

    async fn claim(&self, node: &str) -> Result<(), McuError> {
        let iface = self
            .conn
            .object_server()
            .interface::<_, McuNode>(object_path(node).as_str())
            .await
            .map_err(|_| McuError::Config(format!("no MCU node named {node:?} is registered")))?;
        let n = iface.get().await;
        if n.busy.swap(true, Ordering::SeqCst) {
            return Err(McuError::Busy(format!(
                "a relay to MCU node {node} is running"
            )));
        }
        n.cancel.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// The caller of a method that changes something, if it is root or in `group`.
async fn authorize(
    conn: &Connection,
    header: &zbus::message::Header<'_>,
    group: &str,
) -> Result<access::Caller, RotaError> {
    let caller = access::caller(conn, header)
        .await
        .map_err(RotaError::AccessDenied)?;
    access::may_control(&caller, group).map_err(RotaError::AccessDenied)?;
    Ok(caller)
}

/// Serves one object per configured node. Initial property values come from the
/// nodes' records (no node is contacted). Relay and Cancel take root or `group`.
pub async fn register(
    conn: &Connection,
    nodes: &BTreeMap<String, McuSection>,
    data_dir: &Path,
    group: &str,
) -> zbus::Result<McuBus> {
    for (name, cfg) in nodes {
        conn.object_server()
            .at(
                object_path(name).as_str(),
                McuNode::new(name, cfg, data_dir, group),
            )
            .await?;
    }
    Ok(McuBus {
        conn: conn.clone(),
        nodes: nodes.keys().cloned().collect(),
    })
}

/// Runs one relay on a blocking thread and mirrors it on the node's object. The
/// node must already be marked busy; it is released at the end.
async fn drive(conn: &Connection, node: &str, job: Job) -> Result<RelayOutcome, McuError> {
    let path = object_path(node);
    let iface = conn
        .object_server()
        .interface::<_, McuNode>(path.as_str())
        .await
        .map_err(|_| McuError::Config(format!("no MCU node named {node:?} is registered")))?;
    let (name, cfg, data_dir, cancel, busy) = {
        let n = iface.get().await;
        (
            n.name.clone(),
            n.cfg.clone(),
            n.data_dir.clone(),
            n.cancel.clone(),
            n.busy.clone(),
        )
    };
    {
        let mut n = iface.get_mut().await;
        n.last_error.clear();
        n.state = McuState::Connecting;
        n.progress = (0, "starting".into(), 0, 0);
        let e = iface.signal_emitter();
        let _ = n.state_changed(e).await;
        let _ = n.last_error_changed(e).await;
        let _ = n.progress_changed(e).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RelayProgress>();
    let worker = tokio::task::spawn_blocking(move || {
        let mut send = |p: RelayProgress| {
            let _ = tx.send(p);
        };
        match job {
            Job::File(image) => {
                relay::relay_file(&name, &cfg, &image, &data_dir, &mut send, &cancel)
            }
            Job::Staged => staging::relay_staged(&name, &cfg, &data_dir, &mut send, &cancel),
        }
    });
    let mut last_emit: Option<(Instant, McuState, u8)> = None;
    while let Some(p) = rx.recv().await {
        let phase = McuState::from(p.phase);
        let pct = p.percent();
        let due = match &last_emit {
            None => true,
            Some((t, ph, pc)) => *ph != phase || (*pc != pct && t.elapsed() >= PROGRESS_INTERVAL),
        };
        if !due {
            continue;
        }
        let mut n = iface.get_mut().await;
        let state_changed = n.state != phase;
        n.state = phase;
        n.progress = (
            u32::from(pct),
            p.message.clone(),
            p.bytes_done,
            p.bytes_total,
        );
        let e = iface.signal_emitter();
        let _ = n.progress_changed(e).await;
        if state_changed {
            let _ = n.state_changed(e).await;
        }
        last_emit = Some((Instant::now(), phase, pct));
    }
    let result = worker
        .await
        .unwrap_or_else(|e| Err(McuError::Relay(format!("relay task failed: {e}"))));
    let rec = record::load_or_default(&iface.get().await.data_dir, node);
    let (code, ended, message) = match &result {
        Ok(RelayOutcome::AlreadyRunning { .. }) => (
            "already-running",
            McuState::Confirmed,
            result_message(&result),
        ),
        Ok(RelayOutcome::Confirmed { .. }) => {
            ("confirmed", McuState::Confirmed, result_message(&result))
        }
        Ok(RelayOutcome::Reverted { .. }) => {
            ("reverted", McuState::Reverted, result_message(&result))
        }
        Err(McuError::Cancelled) => ("cancelled", McuState::Cancelled, "cancelled".to_owned()),
        Err(e) => ("failed", McuState::Failed, e.to_string()),
    };
    {
        let mut n = iface.get_mut().await;
        n.version = rec.version.clone();
        n.state = if rec.state == McuState::Unknown {
            ended
        } else {
            rec.state
        };
        n.last_error = rec.last_error.clone();
        if let Ok(o) = &result {
            if o.is_success() {
                let total = n.progress.3;
                n.progress = (100, message.clone(), total, total);
            }
        }
        n.busy.store(false, Ordering::SeqCst);
        let e = iface.signal_emitter();
        let _ = n.version_changed(e).await;
        let _ = n.state_changed(e).await;
        let _ = n.last_error_changed(e).await;
        let _ = n.progress_changed(e).await;
        let _ = McuNode::completed(e, code, &message).await;
    }
    busy.store(false, Ordering::SeqCst);
    result
}

fn result_message(r: &Result<RelayOutcome, McuError>) -> String {
    match r {
        Ok(o) => o.describe(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escape_everything_but_alphanumerics() {
        assert_eq!(object_path("sensor"), "/io/rota/mcu/sensor");
        assert_eq!(object_path("radio-1"), "/io/rota/mcu/radio_2d1");
        assert_eq!(object_path("a_b"), "/io/rota/mcu/a_5fb");
    }
}
