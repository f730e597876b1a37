//! `io.rota.Agent1` at `/io/rota`: rota's own D-Bus interface.
//!
//! Methods: `Install(s source, a{sv} options) → s transaction` (returns at once),
//! `Cancel()`, `Mark(s state, s slot) → (s slot, s message)`, `GetSlotStatus() →
//! a(sa{sv})`, `GetStatus() → s` (the JSON of `rota status --json`), `Poll()`.
//! Properties: `Operation s`, `Progress (ustttttt)` (percent, message, bytes done, bytes
//! total, downloaded, reused, bytes/s, ETA seconds), `LastError s`, `Compatible s`,
//! `BootSlot s`, `Primary s`, `Transaction s`. Signal: `Completed(s transaction,
//! i result, s message)`, always sent when an install ends (0 success, 1 failed,
//! 2 cancelled). Errors: `io.rota.Error.Busy`, `.InvalidArgument`, `.Failed` carrying the
//! agent's message.

use super::access;
use crate::agent::AgentHandle;
use crate::model::{AgentError, InstallRequest, InstallResult, Location, MarkState, SlotContent};
use std::collections::HashMap;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;
use zbus::{interface, Connection};

/// Errors as D-Bus error names `io.rota.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.rota.Error")]
pub enum RotaError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Another install is running.
    Busy(String),
    InvalidArgument(String),
    /// The caller may not do this.
    AccessDenied(String),
    Failed(String),
}

impl From<AgentError> for RotaError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Busy(m) => RotaError::Busy(m),
            AgentError::InvalidArgument(m) => RotaError::InvalidArgument(m),
            AgentError::Failed(m) => RotaError::Failed(m),
            AgentError::Stopped => RotaError::Failed("the agent has stopped".into()),
        }
    }
}

/// `Completed`'s result on the native interface: 0 success, 1 failed, 2 cancelled
/// (RAUC's `Completed` has only 0 and 1).
pub fn result_code(r: InstallResult) -> i32 {
    match r {
        InstallResult::Success => 0,
        InstallResult::Failed => 1,
        InstallResult::Cancelled => 2,
    }
}

/// Longest source string accepted (a path or URL); also the limit for every string
/// option and every `http-headers` entry. Checked before the value is copied or used.
pub const MAX_SOURCE_LEN: usize = 4096;
/// Most options in one `a{sv}`, and most entries in `http-headers`.
pub const MAX_OPTIONS: usize = 32;
/// Longest slot identifier `Mark` accepts (a slot name, bootname, `booted` or `other`).
pub const MAX_SLOT_ID_LEN: usize = 256;

/// Refuses an absurd `Mark` slot identifier before it is looked up or echoed back.
pub(crate) fn check_slot_id(slot: &str) -> Result<(), RotaError> {
    if slot.len() > MAX_SLOT_ID_LEN {
        return Err(RotaError::InvalidArgument(format!(
            "the slot name must be at most {MAX_SLOT_ID_LEN} bytes, not {}",
            slot.len()
        )));
    }
    Ok(())
}

pub(crate) fn opt_bool(k: &str, v: &OwnedValue) -> Result<bool, String> {
    v.downcast_ref::<bool>()
        .map_err(|_| format!("option {k} must be a boolean (b)"))
}

pub(crate) fn opt_str(k: &str, v: &OwnedValue) -> Result<String, String> {
    let s: &str = v
        .downcast_ref()
        .map_err(|_| format!("option {k} must be a string (s)"))?;
    if s.len() > MAX_SOURCE_LEN {
        return Err(format!("option {k} is longer than {MAX_SOURCE_LEN} bytes"));
    }
    Ok(s.to_owned())
}

pub(crate) fn opt_strs(k: &str, v: &OwnedValue) -> Result<Vec<String>, String> {
    let arr: zbus::zvariant::Array = v
        .downcast_ref()
        .map_err(|_| format!("option {k} must be a string array (as)"))?;
    if arr.len() > MAX_OPTIONS {
        return Err(format!("option {k} has more than {MAX_OPTIONS} entries"));
    }
    arr.iter()
        .map(|x| {
            let s = x
                .downcast_ref::<&str>()
                .map_err(|_| format!("option {k} must be a string array (as)"))?;
            if s.len() > MAX_SOURCE_LEN {
                return Err(format!(
                    "option {k} has an entry longer than {MAX_SOURCE_LEN} bytes"
                ));
            }
            Ok(s.to_owned())
        })
        .collect()
}

/// Fills `req` from an `a{sv}`; `rauc` selects RAUC's key names and error wording.
pub(crate) fn apply_options(
    req: &mut InstallRequest,
    options: &HashMap<String, OwnedValue>,
    rauc: bool,
) -> Result<(), String> {
    if options.len() > MAX_OPTIONS {
        return Err(format!("more than {MAX_OPTIONS} options"));
    }
    for (k, v) in options {
        match k.as_str() {
            "ignore-compatible" => req.ignore_compatible = opt_bool(k, v)?,
            "force-version" if !rauc => req.force_version = opt_bool(k, v)?,
            "ignore-version-limit" if rauc => req.force_version = opt_bool(k, v)?,
            "reboot" if !rauc => req.reboot = Some(opt_bool(k, v)?),
            "transaction-id" => req.transaction_id = Some(opt_str(k, v)?).filter(|s| !s.is_empty()),
            "require-manifest-hash" => req.require_manifest_hash = Some(opt_str(k, v)?),
            "tls-ca" => req.tls_ca = Some(opt_str(k, v)?),
            "tls-cert" => req.tls_cert = Some(opt_str(k, v)?),
            "tls-key" => req.tls_key = Some(opt_str(k, v)?),
            "tls-no-verify" => req.tls_no_verify = opt_bool(k, v)?,
            "http-headers" => req.http_headers = opt_strs(k, v)?,
            _ if rauc => return Err(format!("Unsupported key: {k}")),
            _ => return Err(format!("unknown install option {k:?}")),
        }
    }
    Ok(())
}

/// Checks a source for a caller: it is parsed once here (a path, `file://`, `http://` or
/// `https://`; any other scheme is refused by name); URLs pass; a local path must be
/// absolute, a regular file, and readable by the caller itself (see [`access`]).
pub(crate) async fn check_source(
    caller: &access::Caller,
    source: &str,
) -> Result<Location, String> {
    if source.is_empty() || source.len() > MAX_SOURCE_LEN {
        return Err(format!("the source must be 1 to {MAX_SOURCE_LEN} bytes"));
    }
    let location = Location::parse(source)?;
    let path = match &location {
        Location::Http(_) => return Ok(location),
        Location::File(p) => p.clone(),
    };
    if !path.is_absolute() {
        return Err(format!(
            "{:?} is not an absolute path (the service cannot know the caller's directory)",
            path.display().to_string()
        ));
    }
    let caller = caller.clone();
    tokio::task::spawn_blocking(move || {
        let path = path.as_path();
        access::may_read(&caller, path)
            .map_err(|e| format!("the caller cannot read the bundle: {e}"))?;
        // Checked here too, so the caller hears it at once: a FIFO or a device as a
        // bundle would block or never end (the install refuses it again on the opened file).
        // (A missing file is left to the install, which names it.)
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(());
        };
        if !meta.is_file() {
            return Err(format!(
                "{} is not a regular file (it is {}); a bundle must be a regular file or an http(s) URL",
                path.display(),
                crate::fsutil::file_kind(&meta)
            ));
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("the access check failed: {e}"))??;
    Ok(location)
}

/// The other files an install or inspection request names (`tls-ca`, `tls-cert`,
/// `tls-key`) are read by root as well: a caller other than root must be able to read each
/// of them itself, or it could make the service present the device's own client key.
pub(crate) async fn check_request_files(
    caller: &access::Caller,
    req: &InstallRequest,
) -> Result<(), String> {
    let files: Vec<String> = [&req.tls_ca, &req.tls_cert, &req.tls_key]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    let caller = caller.clone();
    tokio::task::spawn_blocking(move || {
        files.iter().try_for_each(|f| {
            access::may_read(&caller, std::path::Path::new(f))
                .map_err(|e| format!("the caller cannot read {f}: {e}"))
        })
    })
    .await
    .map_err(|e| format!("the access check failed: {e}"))?
}

/// Slot status as `a(sa{sv})`, RAUC's key names.
pub(crate) async fn slot_status(
    agent: &AgentHandle,
) -> Result<Vec<(String, HashMap<String, OwnedValue>)>, RotaError> {
    let st = agent.status().await?;
    Ok(st
        .slots
        .into_iter()
        .map(|s| {
            let mut d = HashMap::new();
            d.insert("class".to_owned(), super::ov(s.class));
            d.insert("device".to_owned(), super::ov(s.device));
            d.insert("type".to_owned(), super::ov("raw"));
            d.insert("state".to_owned(), super::ov(s.state.as_str()));
            if let Some(p) = s.parent {
                d.insert("parent".to_owned(), super::ov(p));
            }
            if let Some(b) = s.bootname {
                d.insert("bootname".to_owned(), super::ov(b));
                d.insert("boot-status".to_owned(), super::ov(s.boot_status.as_str()));
            }
            if let Some(n) = s.boot_attempts_left {
                d.insert("boot-attempts-left".to_owned(), super::ov(n));
            }
            if let Some(v) = s.version {
                d.insert("bundle.version".to_owned(), super::ov(v));
                d.insert(
                    "bundle.compatible".to_owned(),
                    super::ov(st.compatible.clone()),
                );
            }
            if let Some(v) = s.bundle_hash {
                d.insert("bundle.hash".to_owned(), super::ov(v));
            }
            if let Some(v) = s.sha256 {
                d.insert("sha256".to_owned(), super::ov(v));
            }
            if let Some(v) = s.size {
                d.insert("size".to_owned(), super::ov(v));
            }
            if let Some(v) = s.installed_at {
                d.insert("installed.timestamp".to_owned(), super::ov(v));
            }
            if let Some(v) = s.transaction {
                d.insert("installed.transaction".to_owned(), super::ov(v));
            }
            if let Some(v) = s.status {
                // RAUC's word for a slot being written.
                let v = match v {
                    SlotContent::Installing => "pending",
                    other => other.as_str(),
                };
                d.insert("status".to_owned(), super::ov(v));
            }
            (s.name, d)
        })
        .collect())
}

pub struct Agent1 {
    agent: AgentHandle,
    /// Besides root, members of this group may change things.
    group: String,
    /// The Progress last signalled (what the getter answers).
    published: super::SharedPublished,
}

impl Agent1 {
    pub(crate) fn new(
        agent: AgentHandle,
        group: String,
        published: super::SharedPublished,
    ) -> Self {
        Self {
            agent,
            group,
            published,
        }
    }
}

/// Who sent the message, as the bus daemon knows it. Fails closed: a caller the bus
/// cannot name may neither change things nor make root open files.
pub(crate) async fn caller(
    conn: &Connection,
    header: &zbus::message::Header<'_>,
) -> Result<access::Caller, RotaError> {
    access::caller(conn, header)
        .await
        .map_err(RotaError::AccessDenied)
}

/// The install request a caller asks for: the source checked for them, the options
/// applied (`rauc` selects RAUC's key names), and the files the options name checked
/// for them too. Install and EstimateDownload, on both interfaces, start here.
pub(crate) async fn caller_request(
    caller: &access::Caller,
    source: &str,
    options: &HashMap<String, OwnedValue>,
    rauc: bool,
) -> Result<InstallRequest, RotaError> {
    let source = check_source(caller, source)
        .await
        .map_err(RotaError::InvalidArgument)?;
    let mut req = InstallRequest {
        source,
        ..Default::default()
    };
    apply_options(&mut req, options, rauc).map_err(RotaError::InvalidArgument)?;
    check_request_files(caller, &req)
        .await
        .map_err(RotaError::InvalidArgument)?;
    Ok(req)
}

/// Refuses a caller who is neither root nor in `group` (see [`access::may_control`]);
/// returns who it is, for the checks that follow.
pub(crate) async fn authorize(
    conn: &Connection,
    header: &zbus::message::Header<'_>,
    group: &str,
) -> Result<access::Caller, RotaError> {
    let caller = caller(conn, header).await?;
    access::may_control(&caller, group).map_err(RotaError::AccessDenied)?;
    Ok(caller)
}

#[interface(name = "io.rota.Agent1")]
impl Agent1 {
    /// Starts an install of a local path or http(s) URL and returns its transaction id at
    /// once; the result arrives as Completed. Options: force-version b, ignore-compatible b,
    /// reboot b, transaction-id s, require-manifest-hash s, http-headers as, tls-ca s,
    /// tls-cert s, tls-key s, tls-no-verify b. A local file must be readable by the caller.
    #[zbus(out_args("transaction"))]
    async fn install(
        &self,
        source: String,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, RotaError> {
        let caller = authorize(conn, &header, &self.group).await?;
        let req = caller_request(&caller, &source, &options, false).await?;
        Ok(self.agent.install(req).await?)
    }

    /// What installing `source` would download, before anything is written: the same
    /// checks as Install (signature, compatible, version), then the bundle's block maps
    /// planned against the running slot. Options as Install's.
    #[zbus(out_args("download", "reuse", "zero", "total"))]
    async fn estimate_download(
        &self,
        source: String,
        options: HashMap<String, OwnedValue>,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(u64, u64, u64, u64), RotaError> {
        let caller = authorize(conn, &header, &self.group).await?;
        let req = caller_request(&caller, &source, &options, false).await?;
        let e = self.agent.estimate(req).await?;
        Ok((e.download, e.reuse, e.zero, e.total))
    }

    /// Cancels the running install; its Completed reports result 2 (cancelled).
    async fn cancel(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), RotaError> {
        authorize(conn, &header, &self.group).await?;
        Ok(self.agent.cancel().await?)
    }

    /// `state` is good, bad or active; `slot` is booted, other, a slot name or a bootname.
    #[zbus(out_args("slot_name", "message"))]
    async fn mark(
        &self,
        state: String,
        slot: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(String, String), RotaError> {
        authorize(conn, &header, &self.group).await?;
        check_slot_id(&slot)?;
        let how: MarkState = state.parse()?;
        Ok(self.agent.mark(how, &slot).await?)
    }

    /// Per slot: (name, {class, device, type, bootname, parent, state, boot-status,
    /// boot-attempts-left, bundle.version, bundle.hash, sha256, size, installed.timestamp,
    /// installed.transaction, status}), RAUC's key names.
    #[zbus(out_args("slot_status_array"))]
    async fn get_slot_status(
        &self,
    ) -> Result<Vec<(String, HashMap<String, OwnedValue>)>, RotaError> {
        slot_status(&self.agent).await
    }

    /// The JSON document `rota status --json` prints.
    #[zbus(out_args("status_json"))]
    async fn get_status(&self) -> Result<String, RotaError> {
        let st = self.agent.status().await?;
        serde_json::to_string(&st).map_err(|e| RotaError::Failed(e.to_string()))
    }

    /// Asks the configured update poller ([update] poll) to check now.
    async fn poll(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), RotaError> {
        authorize(conn, &header, &self.group).await?;
        Ok(self.agent.poll_now().await?)
    }

    /// "idle" or "installing".
    #[zbus(property)]
    async fn operation(&self) -> String {
        self.agent.snapshot().operation.as_str().to_owned()
    }

    /// (percent 0-100, message, bytes placed in the target slot, bytes total, bytes
    /// downloaded from the source, bytes reused from the device, bytes/s, ETA seconds).
    #[zbus(property)]
    #[allow(clippy::type_complexity)]
    async fn progress(&self) -> (u32, String, u64, u64, u64, u64, u64, u64) {
        let p = super::published(&self.published).native_progress;
        (
            u32::from(p.percent),
            p.message,
            p.bytes_done,
            p.bytes_total,
            p.bytes_downloaded,
            p.bytes_reused,
            p.rate,
            p.eta_secs,
        )
    }

    /// Image bytes of zero runs written so far by the running or last install (format-2
    /// bundles store them as nothing): with Progress's downloaded and reused bytes, where
    /// every byte in the slot came from. Changes just before Progress.
    #[zbus(property)]
    async fn progress_zero(&self) -> u64 {
        super::published(&self.published).native_progress.bytes_zero
    }

    /// Why the last operation failed; "" after success and when an install starts.
    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.agent.snapshot().last_error
    }

    /// The device's compatible string ([system] compatible).
    #[zbus(property)]
    async fn compatible(&self) -> String {
        self.agent.snapshot().compatible
    }

    /// Bootname of the booted slot ("" when unknown).
    #[zbus(property)]
    async fn boot_slot(&self) -> String {
        self.agent.snapshot().boot_slot
    }

    /// The slot the bootloader boots next ("" when none has attempts left).
    #[zbus(property)]
    async fn primary(&self) -> String {
        self.agent.snapshot().primary
    }

    /// Transaction id of the running or last install.
    #[zbus(property)]
    async fn transaction(&self) -> String {
        self.agent.snapshot().transaction
    }

    /// Sent whenever an install ends: result 0 success, 1 failed, 2 cancelled.
    #[zbus(signal)]
    pub async fn completed(
        emitter: &SignalEmitter<'_>,
        transaction: &str,
        result: i32,
        message: &str,
    ) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ov;

    fn opts(pairs: Vec<(&str, OwnedValue)>) -> HashMap<String, OwnedValue> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn native_options_fill_the_request() {
        let mut req = InstallRequest::default();
        let o = opts(vec![
            ("force-version", ov(true)),
            ("ignore-compatible", ov(true)),
            ("reboot", ov(false)),
            ("transaction-id", ov("t-1")),
            ("require-manifest-hash", ov("abc")),
            ("http-headers", ov(vec!["Authorization: Bearer x"])),
            ("tls-ca", ov("/ca.pem")),
            ("tls-no-verify", ov(true)),
        ]);
        apply_options(&mut req, &o, false).unwrap();
        assert!(req.force_version && req.ignore_compatible && req.tls_no_verify);
        assert_eq!(req.reboot, Some(false));
        assert_eq!(req.transaction_id.as_deref(), Some("t-1"));
        assert_eq!(req.require_manifest_hash.as_deref(), Some("abc"));
        assert_eq!(req.http_headers, vec!["Authorization: Bearer x".to_owned()]);
        assert_eq!(req.tls_ca.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let mut req = InstallRequest::default();
        let e = apply_options(&mut req, &opts(vec![("bogus", ov(true))]), false).unwrap_err();
        assert_eq!(e, "unknown install option \"bogus\"");
        // RAUC's wording, and RAUC's key set: force-version is rota's name.
        let e =
            apply_options(&mut req, &opts(vec![("force-version", ov(true))]), true).unwrap_err();
        assert_eq!(e, "Unsupported key: force-version");
        apply_options(
            &mut req,
            &opts(vec![("ignore-version-limit", ov(true))]),
            true,
        )
        .unwrap();
        assert!(req.force_version);
        let e = apply_options(&mut req, &opts(vec![("reboot", ov("yes"))]), false).unwrap_err();
        assert_eq!(e, "option reboot must be a boolean (b)");
        let e = apply_options(&mut req, &opts(vec![("tls-ca", ov(7u32))]), false).unwrap_err();
        assert_eq!(e, "option tls-ca must be a string (s)");
        let e =
            apply_options(&mut req, &opts(vec![("http-headers", ov("x: y"))]), false).unwrap_err();
        assert_eq!(e, "option http-headers must be a string array (as)");
        let many: Vec<&str> = vec!["a: b"; MAX_OPTIONS + 1];
        let e =
            apply_options(&mut req, &opts(vec![("http-headers", ov(many))]), false).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let long = "x".repeat(MAX_SOURCE_LEN + 1);
        let e = apply_options(
            &mut req,
            &opts(vec![("http-headers", ov(vec![long.as_str()]))]),
            false,
        )
        .unwrap_err();
        assert_eq!(e, "option http-headers has an entry longer than 4096 bytes");
        let e = apply_options(&mut req, &opts(vec![("tls-key", ov(long.as_str()))]), false)
            .unwrap_err();
        assert_eq!(e, "option tls-key is longer than 4096 bytes");
        assert!(check_slot_id(&"s".repeat(MAX_SLOT_ID_LEN)).is_ok());
        assert!(check_slot_id(&"s".repeat(MAX_SLOT_ID_LEN + 1)).is_err());
    }

    #[test]
    fn completed_codes_tell_cancel_from_failure() {
        assert_eq!(result_code(InstallResult::Success), 0);
        assert_eq!(result_code(InstallResult::Failed), 1);
        assert_eq!(result_code(InstallResult::Cancelled), 2);
        // RAUC's signal knows only success and failure.
        assert_eq!(InstallResult::Cancelled.code(), 1);
    }
}
