//! RAUC's `de.pengutronix.rauc.Installer` at `/`, exactly as RAUC defines it, so the
//! `rauc` CLI, rauc-hawkbit-updater and existing UIs drive rota unchanged.
//!
//! Same names, signatures, argument names, `InstallBundle` keys (`ignore-compatible`,
//! `ignore-version-limit`, `transaction-id`, `require-manifest-hash`, `tls-*`,
//! `http-headers`; anything else is "Unsupported key: <k>") and `GetSlotStatus` keys.
//! Cancelled installs report `Completed(1)`, as RAUC knows only success and failure.
//!
//! Differences from RAUC, all in the user's favour: status calls keep answering while an
//! install runs; `Completed` is sent for every install, including ones that fail early;
//! a local bundle is opened only if the calling user could read it (RAUC opens anything
//! as root); `InspectBundle` also reads a bundle by http(s) URL (manifest and tar headers
//! only, with Range requests). `Variant` is empty (rota has no variants) and
//! `GetArtifactStatus` is always empty (no artifact repositories).

use super::native::{
    authorize, caller, caller_request, check_slot_id, check_source, slot_status, RotaError,
};
use crate::agent::AgentHandle;
use crate::config::Config;
use crate::model::{InstallRequest, MarkState, SlotRole};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;
use zbus::{interface, Connection};

pub struct Installer {
    agent: AgentHandle,
    config: Config,
    /// Progress and Operation as last signalled (what the getters answer).
    published: super::SharedPublished,
    /// Inspections running now; each holds one blocking thread (see [`MAX_INSPECTIONS`]).
    inspections: Arc<Semaphore>,
}

/// Most bundle inspections at once. They are open to every user on the bus and each
/// holds a thread while it reads: more are refused at once ("try again"), so no caller
/// can starve the service of threads.
pub const MAX_INSPECTIONS: usize = 4;

/// Longest an inspection may take, whatever the server or file does; then it is
/// cancelled and its thread freed.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The keys RAUC's `InspectBundle` accepts: how to reach the bundle, nothing else.
const INSPECT_KEYS: [&str; 5] = [
    "tls-cert",
    "tls-key",
    "tls-ca",
    "tls-no-verify",
    "http-headers",
];

impl Installer {
    pub(crate) fn new(
        agent: AgentHandle,
        config: Config,
        published: super::SharedPublished,
    ) -> Self {
        Self {
            agent,
            config,
            published,
            inspections: Arc::new(Semaphore::new(MAX_INSPECTIONS)),
        }
    }

    fn group(&self) -> String {
        self.config
            .dbus
            .group
            .clone()
            .unwrap_or_else(|| super::access::DEFAULT_GROUP.to_owned())
    }

    /// Reads and verifies a bundle's manifest for a caller. These methods are open to
    /// every user on the bus, so: a local path is opened only if the caller could read it
    /// itself and only if it is a regular file; a URL is read with HTTP Range requests
    /// (manifest and tar headers only) and, unless the caller may control the service,
    /// **without the device's credentials** (`[http] headers`, client certificate and
    /// key), so a fleet token never reaches a server the caller chose; every file named in
    /// the request must be readable by the caller; at most [`MAX_INSPECTIONS`] run at once
    /// and each ends within [`INSPECT_TIMEOUT`].
    async fn inspect(
        &self,
        source: &str,
        args: &HashMap<String, OwnedValue>,
        conn: &Connection,
        header: &zbus::message::Header<'_>,
    ) -> Result<crate::bundle::Bundle, RotaError> {
        if let Some(k) = args.keys().find(|k| !INSPECT_KEYS.contains(&k.as_str())) {
            return Err(RotaError::InvalidArgument(format!("Unsupported key: {k}")));
        }
        let permit = self.inspections.clone().try_acquire_owned().map_err(|_| {
            RotaError::Busy(format!(
                "{MAX_INSPECTIONS} bundle inspections are running already; try again later"
            ))
        })?;
        let caller = caller(conn, header).await?;
        let req = caller_request(&caller, source, args, true).await?;
        let privileged = super::access::may_control(&caller, &self.group()).is_ok();
        let mut http = self.config.http.clone();
        if !privileged {
            // The device's identity is for the device's servers, not the caller's.
            http.headers.clear();
            http.cert = None;
            http.key = None;
        }
        let keys = self.config.keyring.paths.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let ring = crate::bundle::Keyring::load(&keys)
                .map_err(|e| RotaError::Failed(e.to_string()))?;
            let opts = crate::source::http::HttpOptions::from_config(&http).with_request(&req);
            let mut src = crate::source::open(&req.source, &opts, flag)
                .map_err(|e| RotaError::Failed(e.to_string()))?;
            crate::bundle::reader::open(src.as_mut(), &ring).map_err(|e| {
                let at = crate::source::redact::url(&req.source.as_string());
                RotaError::Failed(format!("{at}: {e}"))
            })
        });
        match tokio::time::timeout(INSPECT_TIMEOUT, work).await {
            Ok(done) => done.map_err(|e| RotaError::Failed(e.to_string()))?,
            Err(_) => {
                // The reader sees the flag at its next wait or read and frees the thread
                // (and the permit with it).
                cancel.store(true, Ordering::Relaxed);
                Err(RotaError::Failed(format!(
                    "inspecting the bundle took longer than {INSPECT_TIMEOUT:?}; gave up"
                )))
            }
        }
    }
}

/// RAUC's `InspectBundle` dictionary: `manifest-hash`, `update`, `bundle`, `images`.
fn inspect_info(b: &crate::bundle::Bundle) -> HashMap<String, OwnedValue> {
    let u = &b.manifest.update;
    let mut update: HashMap<String, OwnedValue> = HashMap::new();
    update.insert("compatible".into(), super::ov(u.compatible.clone()));
    update.insert("version".into(), super::ov(u.version.clone()));
    if let Some(d) = &u.description {
        update.insert("description".into(), super::ov(d.clone()));
    }
    if let Some(d) = &u.build {
        update.insert("build".into(), super::ov(d.clone()));
    }
    let mut bundle: HashMap<String, OwnedValue> = HashMap::new();
    bundle.insert("format".into(), super::ov("rota"));
    bundle.insert("size".into(), super::ov(b.size));
    let images: Vec<HashMap<String, OwnedValue>> = b
        .manifest
        .images
        .iter()
        .map(|i| {
            let mut d = HashMap::new();
            if let Some(c) = &i.slot_class {
                d.insert("slot-class".into(), super::ov(c.clone()));
            }
            if let Some(m) = &i.mcu {
                d.insert("mcu".into(), super::ov(m.clone()));
            }
            d.insert("filename".into(), super::ov(i.file.clone()));
            d.insert("type".into(), super::ov("raw"));
            d.insert("checksum".into(), super::ov(i.sha256.clone()));
            d.insert("size".into(), super::ov(i.size));
            d
        })
        .collect();
    let mut info = HashMap::new();
    info.insert("manifest-hash".into(), super::ov(b.manifest_hash.clone()));
    info.insert("update".into(), super::ov(update));
    info.insert("bundle".into(), super::ov(bundle));
    info.insert("images".into(), super::ov(images));
    info
}

#[interface(name = "de.pengutronix.rauc.Installer")]
impl Installer {
    /// Starts installing the bundle at `source` (an absolute path the caller can read, or
    /// an http(s) URL) and returns at once; the end is signalled by `Completed`. `args`:
    /// ignore-compatible b, ignore-version-limit b, transaction-id s,
    /// require-manifest-hash s, tls-cert s, tls-key s, tls-ca s, tls-no-verify b,
    /// http-headers as; any other key is "Unsupported key: <k>". Root or the configured
    /// group only.
    async fn install_bundle(
        &self,
        source: String,
        args: HashMap<String, OwnedValue>,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), RotaError> {
        let caller = authorize(conn, &header, &self.group()).await?;
        let req = caller_request(&caller, &source, &args, true).await?;
        self.agent.install(req).await?;
        Ok(())
    }

    /// Deprecated in RAUC (use InstallBundle): installs `source` without options. Root or
    /// the configured group only.
    async fn install(
        &self,
        source: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), RotaError> {
        let caller = authorize(conn, &header, &self.group()).await?;
        log::info!("D-Bus: Install() is deprecated, use InstallBundle()");
        let source = check_source(&caller, &source)
            .await
            .map_err(RotaError::InvalidArgument)?;
        self.agent
            .install(InstallRequest {
                source,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Deprecated in RAUC (use InspectBundle): the bundle's compatible and version, after
    /// its signature was checked.
    #[zbus(out_args("compatible", "version"))]
    async fn info(
        &self,
        bundle: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(String, String), RotaError> {
        let b = self
            .inspect(&bundle, &HashMap::new(), conn, &header)
            .await?;
        Ok((b.manifest.update.compatible, b.manifest.update.version))
    }

    /// The bundle's manifest, signature checked, as RAUC's nested dictionary
    /// (manifest-hash, update, bundle, images); `args` takes only the access keys
    /// (tls-cert, tls-key, tls-ca, tls-no-verify, http-headers). Open to every user; a
    /// caller outside the group gets no device credentials sent to the server.
    #[zbus(out_args("info"))]
    async fn inspect_bundle(
        &self,
        source: String,
        args: HashMap<String, OwnedValue>,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<HashMap<String, OwnedValue>, RotaError> {
        let b = self.inspect(&source, &args, conn, &header).await?;
        Ok(inspect_info(&b))
    }

    /// Marks a slot: `state` is good, bad or active; `slot_identifier` is booted, other,
    /// a slot name (rootfs.1) or a bootname. Returns the slot's name and what was done.
    /// Root or the configured group only.
    #[zbus(out_args("slot_name", "message"))]
    async fn mark(
        &self,
        state: String,
        slot_identifier: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(String, String), RotaError> {
        authorize(conn, &header, &self.group()).await?;
        check_slot_id(&slot_identifier)?;
        let how: MarkState = state.parse()?;
        Ok(self.agent.mark(how, &slot_identifier).await?)
    }

    /// Every slot's status as (name, dictionary) with RAUC's keys: class, device, type,
    /// bootname, parent, state, boot-status, boot-attempts-left, bundle.version,
    /// bundle.compatible, bundle.hash, sha256, size, installed.timestamp,
    /// installed.transaction, status.
    #[zbus(out_args("slot_status_array"))]
    async fn get_slot_status(
        &self,
    ) -> Result<Vec<(String, HashMap<String, OwnedValue>)>, RotaError> {
        slot_status(&self.agent).await
    }

    /// The slot the bootloader tries first (its name, e.g. rootfs.1); an error when no
    /// slot has boot attempts left.
    #[zbus(out_args("primary"))]
    async fn get_primary(&self) -> Result<String, RotaError> {
        let p = self.agent.snapshot().primary;
        if p.is_empty() {
            return Err(RotaError::Failed(
                "no slot is primary: the boot selection has no slot with attempts left".into(),
            ));
        }
        Ok(p)
    }

    /// Artifact repositories and their artifacts: rota has none, so always empty.
    #[zbus(out_args("artifacts"))]
    async fn get_artifact_status(&self) -> Vec<HashMap<String, OwnedValue>> {
        Vec::new()
    }

    /// "idle" or "installing"; turns idle only after Completed was sent.
    #[zbus(property)]
    async fn operation(&self) -> String {
        super::published(&self.published)
            .rauc_operation
            .as_str()
            .to_owned()
    }

    /// Why the last install failed; "" after a success.
    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.agent.snapshot().last_error
    }

    /// (percent 0-100, message, nesting depth) of the running or last install; changes
    /// are signalled only when one of the three changes.
    #[zbus(property)]
    async fn progress(&self) -> (i32, String, i32) {
        super::published(&self.published).rauc_progress
    }

    /// The device's compatible string ([system] compatible).
    #[zbus(property)]
    async fn compatible(&self) -> String {
        self.config.system.compatible.clone()
    }

    /// Always "": rota has no variants.
    #[zbus(property)]
    async fn variant(&self) -> String {
        String::new()
    }

    /// The version of the booted slot: what rota installed there, else the system's own
    /// ([system] version-file); "" when unknown.
    #[zbus(property)]
    async fn system_version(&self) -> String {
        match self.agent.status().await {
            Ok(st) => st
                .slots
                .into_iter()
                .find(|s| s.state == SlotRole::Booted && s.parent.is_none())
                .and_then(|s| s.version)
                .unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Bootname of the booted slot ("" when unknown).
    #[zbus(property)]
    async fn boot_slot(&self) -> String {
        self.agent.snapshot().boot_slot
    }

    /// Sent when an install ends: 0 success, 1 failure (a cancelled install is a failure
    /// here), after LastError and before Operation turns idle.
    #[zbus(signal)]
    pub async fn completed(emitter: &SignalEmitter<'_>, result: i32) -> zbus::Result<()>;
}
