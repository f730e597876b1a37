//! An Eclipse hawkBit DDI client (Direct Device Integration API, v1).
//!
//! `[update] poll` is the server's base URL; the controller resource is
//! `{poll}/{tenant}/controller/v1/{controller-id}` (tenant `DEFAULT` and the machine id
//! unless configured). Requests carry `Authorization: TargetToken …` or
//! `GatewayToken …` from the config, and the `[http]` TLS settings (a client
//! certificate works for servers behind an mTLS proxy).
//!
//! Each poll reads the controller resource and follows its links:
//! - `configData`: PUT the device attributes (compatible, running version, booted slot,
//!   rota version), mode `merge`.
//! - `cancelAction`: if the install of that action is running, it is cancelled and the
//!   cancel confirmed (`closed`/`success` on the cancel feedback, as hawkBit expects) once
//!   the agent reports it; an install that already finished cannot be undone and the cancel
//!   is `rejected`; an action never started is confirmed at once.
//! - `deploymentBase`: the action. Its one `.rota` artifact is installed by URL (the
//!   install streams it; the token is sent only to the hawkBit server itself, not to
//!   another host such as a CDN) when `update` is `attempt` or `forced` — rota has no
//!   user to ask, so `attempt` installs too. When `update` is `skip` (download-only, or
//!   outside the maintenance window) the bundle's manifest and signature are fetched and
//!   checked, and `downloaded` is reported; rota streams bundles and keeps no copy, so
//!   "downloaded" means "reachable, authentic and for this device". When the window opens
//!   (`update` no longer `skip`), the install starts. `download: skip` waits.
//!
//! Feedback (`deploymentBase/{id}/feedback`): `proceeding` when the install starts and when
//! it is activated; `closed`/`success` once the new slot booted and was marked good;
//! `closed`/`failure` with the reason when the install fails, is cancelled on the device,
//! or the bootloader rolls back. Feedback that cannot be delivered is kept (in order, in
//! `poller.json`) and sent at the next poll, so a result reached just before a reboot is
//! not lost. A feedback the server refuses with a 4xx (other than 408/409/429) is dropped,
//! not retried.

use super::net::{Api, NetError};
use super::store::{Phase, Tracked};
use super::{booted_version, verdict, Ctx, PollError, Verdict, ACTIVE_INTERVAL};
use crate::config::UpdateSection;
use crate::model::{AgentError, InstallRequest, InstallResult, Location};
use crate::source::redact;
use reqwest::Method;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Default tenant, as hawkBit names it.
pub const DEFAULT_TENANT: &str = "DEFAULT";
/// Where the default controller id comes from.
pub const MACHINE_ID: &str = "/etc/machine-id";
/// Delivery attempts of one feedback message before it is dropped.
pub const MAX_FEEDBACK_ATTEMPTS: u32 = 100;
/// Longest detail line sent to the server (hawkBit stores messages of limited length).
const MAX_DETAIL: usize = 512;

// ---- DDI resources (only what rota reads; unknown keys are ignored) -------------------

#[derive(Debug, Default, Deserialize)]
pub struct ControllerBase {
    #[serde(default)]
    pub config: Option<DdiConfig>,
    #[serde(default, rename = "_links")]
    pub links: BTreeMap<String, Link>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DdiConfig {
    #[serde(default)]
    pub polling: Option<Polling>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Polling {
    #[serde(default)]
    pub sleep: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub href: String,
}

#[derive(Debug, Deserialize)]
pub struct DeploymentBase {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub deployment: Deployment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    Skip,
    Attempt,
    Forced,
}

#[derive(Debug, Deserialize)]
pub struct Deployment {
    #[serde(default)]
    pub download: Option<Handling>,
    #[serde(default)]
    pub update: Option<Handling>,
    #[serde(default, rename = "maintenanceWindow")]
    pub maintenance_window: Option<String>,
    #[serde(default)]
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub part: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Deserialize)]
pub struct Artifact {
    pub filename: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "_links")]
    pub links: BTreeMap<String, Link>,
}

#[derive(Debug, Deserialize)]
pub struct CancelResource {
    #[serde(default, deserialize_with = "opt_id_string")]
    pub id: Option<String>,
    #[serde(rename = "cancelAction")]
    pub cancel_action: StopId,
}

#[derive(Debug, Deserialize)]
pub struct StopId {
    #[serde(rename = "stopId", deserialize_with = "id_string")]
    pub stop_id: String,
}

/// Ids are strings in DDI; older servers sent numbers. Accept both.
fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "an id must be a string or number, not {other}"
        ))),
    }
}

fn opt_id_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    id_string(d).map(Some)
}

/// `HH:MM:SS` (hawkBit's `config.polling.sleep`).
pub fn parse_sleep(s: &str) -> Option<Duration> {
    let mut parts = s.trim().split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let n = |x: &str| x.parse::<u64>().ok();
    let (h, m, sec) = (n(h)?, n(m)?, n(sec)?);
    if m >= 60 || sec >= 60 {
        return None;
    }
    Some(Duration::from_secs(h * 3600 + m * 60 + sec))
}

/// The one `.rota` artifact of a deployment and its chunk.
pub fn pick_artifact(d: &Deployment) -> Result<(&Chunk, &Artifact), String> {
    let all: Vec<(&Chunk, &Artifact)> = d
        .chunks
        .iter()
        .flat_map(|c| c.artifacts.iter().map(move |a| (c, a)))
        .collect();
    let rota: Vec<_> = all
        .iter()
        .filter(|(_, a)| a.filename.ends_with(".rota"))
        .collect();
    match rota.as_slice() {
        [one] => Ok(**one),
        [] => Err(format!(
            "the deployment has no .rota artifact (it has: {})",
            if all.is_empty() {
                "nothing".to_owned()
            } else {
                all.iter()
                    .map(|(_, a)| a.filename.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        many => Err(format!(
            "the deployment has {} .rota artifacts ({}); rota installs one bundle per action",
            many.len(),
            many.iter()
                .map(|(_, a)| a.filename.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// One feedback body.
pub fn feedback_body(
    action: &str,
    execution: &str,
    finished: &str,
    details: &[String],
) -> serde_json::Value {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let details: Vec<String> = details
        .iter()
        .map(|d| {
            if d.len() > MAX_DETAIL {
                format!("{}…", &d[..d.floor_char_boundary_compat(MAX_DETAIL)])
            } else {
                d.clone()
            }
        })
        .collect();
    json!({
        // Servers before 0.3 require the action id in the body; newer ones ignore it.
        "id": action,
        "timestamp": ms,
        "status": {
            "execution": execution,
            "result": { "finished": finished },
            "details": details,
        }
    })
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

pub struct HawkbitPoller {
    /// The controller resource.
    base: reqwest::Url,
    api: Api,
    /// `Authorization: …` for the server, when a token is configured.
    auth: Option<String>,
}

fn machine_id() -> Result<String, String> {
    let id = std::fs::read_to_string(MACHINE_ID)
        .map_err(|e| format!("no [update] controller-id and {MACHINE_ID} is unreadable: {e}"))?;
    let id = id.trim().to_owned();
    if id.is_empty() {
        return Err(format!(
            "no [update] controller-id and {MACHINE_ID} is empty"
        ));
    }
    Ok(id)
}

impl HawkbitPoller {
    pub fn new(up: &UpdateSection, ctx: &Ctx) -> Result<HawkbitPoller, String> {
        let mut base = reqwest::Url::parse(up.poll.trim()).map_err(|e| {
            format!(
                "[update] poll {:?} is not a URL: {e}",
                redact::url(&up.poll)
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!(
                "[update] poll {:?} must be an http(s) URL",
                redact::url(&up.poll)
            ));
        }
        let controller = match up.controller_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => machine_id()?,
        };
        let tenant = up
            .tenant
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_TENANT);
        base.path_segments_mut()
            .map_err(|_| {
                format!(
                    "[update] poll {:?} cannot be a base URL",
                    redact::url(&up.poll)
                )
            })?
            .pop_if_empty()
            .extend([tenant, "controller", "v1", controller.as_str()]);
        let auth = match (&up.target_token, &up.gateway_token) {
            (Some(t), Some(_)) => {
                log::warn!(
                    "poller: both target-token and gateway-token are set; using the target token"
                );
                Some(format!("Authorization: TargetToken {}", t.trim()))
            }
            (Some(t), None) => Some(format!("Authorization: TargetToken {}", t.trim())),
            (None, Some(g)) => Some(format!("Authorization: GatewayToken {}", g.trim())),
            (None, None) => None,
        };
        let mut opts = ctx.http.clone();
        opts.headers.extend(auth.iter().cloned());
        let api = Api::new(&opts, base.scheme() == "https")?;
        ctx.publish(|s| {
            s.kind = "hawkbit".into();
            s.server = redact::url(base.as_str());
        });
        Ok(HawkbitPoller { base, api, auth })
    }

    fn url(&self, tail: &[&str]) -> String {
        let mut u = self.base.clone();
        if let Ok(mut seg) = u.path_segments_mut() {
            seg.extend(tail);
        }
        u.to_string()
    }

    fn explain(&self, e: NetError) -> PollError {
        match e.status() {
            Some(401) | Some(403) => PollError(format!(
                "{e} — the server refused this controller's credentials (check [update] target-token / gateway-token, or the client certificate)"
            )),
            Some(404) => PollError(format!("{e} — unknown tenant or controller id")),
            _ => PollError(e.to_string()),
        }
    }

    /// Queues a deployment feedback and tries to deliver everything queued.
    async fn feedback(
        &self,
        ctx: &mut Ctx,
        action: &str,
        execution: &str,
        finished: &str,
        detail: String,
    ) {
        log::info!("poller: action {action}: {execution}/{finished}: {detail}");
        let url = self.url(&["deploymentBase", action, "feedback"]);
        ctx.state
            .queue(url, feedback_body(action, execution, finished, &[detail]));
        ctx.save();
        self.flush(ctx).await;
    }

    /// Queues a cancel feedback and delivers.
    async fn cancel_feedback(
        &self,
        ctx: &mut Ctx,
        cancel_id: &str,
        execution: &str,
        finished: &str,
        detail: String,
    ) {
        log::info!("poller: cancel {cancel_id}: {execution}/{finished}: {detail}");
        let url = self.url(&["cancelAction", cancel_id, "feedback"]);
        ctx.state.queue(
            url,
            feedback_body(cancel_id, execution, finished, &[detail]),
        );
        ctx.save();
        self.flush(ctx).await;
    }

    /// Sends queued feedback in order; stops at the first one the network refuses.
    async fn flush(&self, ctx: &mut Ctx) {
        while let Some(f) = ctx.state.pending.first().cloned() {
            match self.api.send_json(Method::POST, &f.url, &f.body).await {
                Ok(()) => {
                    ctx.state.pending.remove(0);
                }
                Err(NetError::Refused { message, .. }) => {
                    log::error!("poller: feedback dropped, the server refused it: {message}");
                    ctx.state.pending.remove(0);
                }
                Err(e) => {
                    let attempts = f.attempts + 1;
                    if attempts >= MAX_FEEDBACK_ATTEMPTS {
                        log::error!("poller: feedback dropped after {attempts} attempts: {e}");
                        ctx.state.pending.remove(0);
                    } else {
                        log::warn!(
                            "poller: feedback not delivered yet ({e}); kept for the next poll"
                        );
                        ctx.state.pending[0].attempts = attempts;
                        break;
                    }
                }
            }
        }
        ctx.save();
    }

    pub async fn poll(&mut self, ctx: &mut Ctx) -> Result<Duration, PollError> {
        let base: ControllerBase = self
            .api
            .get_json(self.base.as_str())
            .await
            .map_err(|e| self.explain(e))?;
        let sleep = base
            .config
            .as_ref()
            .and_then(|c| c.polling.as_ref())
            .and_then(|p| p.sleep.as_deref())
            .and_then(|s| {
                let d = parse_sleep(s);
                if d.is_none() {
                    log::warn!("poller: ignoring polling sleep {s:?} (not HH:MM:SS)");
                }
                d
            })
            .unwrap_or(ctx.interval);
        self.flush(ctx).await;
        self.reconcile(ctx).await;
        if let Some(l) = base.links.get("configData") {
            if let Err(e) = self.put_config(ctx, &l.href).await {
                log::warn!("poller: cannot send the device attributes: {e}");
            }
        }
        if let Some(l) = base.links.get("cancelAction") {
            self.cancel(ctx, &l.href).await?;
        } else if let Some(l) = base.links.get("deploymentBase") {
            self.deployment(ctx, &l.href).await?;
        } else {
            match ctx.state.tracked.as_ref() {
                Some(t) if matches!(t.phase, Phase::Installing | Phase::Activated) => {}
                _ => {
                    ctx.state.tracked = None;
                    ctx.publish(|s| s.available.clear());
                    ctx.result("no action for this device");
                }
            }
        }
        let installing = ctx
            .state
            .tracked
            .as_ref()
            .is_some_and(|t| t.phase == Phase::Installing);
        Ok(if installing {
            sleep.min(ACTIVE_INTERVAL)
        } else {
            sleep
        })
    }

    async fn put_config(&self, ctx: &mut Ctx, href: &str) -> Result<(), String> {
        let status = ctx
            .agent
            .status()
            .await
            .map_err(|e| format!("agent: {e}"))?;
        let body = json!({
            "mode": "merge",
            "data": {
                "compatible": ctx.compatible,
                "version": booted_version(&status).unwrap_or_default(),
                "booted_slot": status.booted,
                "rota": env!("CARGO_PKG_VERSION"),
            }
        });
        self.api
            .send_json(Method::PUT, href, &body)
            .await
            .map_err(|e| e.to_string())?;
        log::info!("poller: sent the device attributes");
        Ok(())
    }

    async fn deployment(&mut self, ctx: &mut Ctx, href: &str) -> Result<(), PollError> {
        let d: DeploymentBase = self.api.get_json(href).await.map_err(|e| self.explain(e))?;
        let action = d.id.clone();
        if ctx.state.is_done(&action) {
            ctx.result(format!(
                "action {action} is finished; waiting for the server to close it"
            ));
            return Ok(());
        }
        let tracked = ctx.state.tracked.clone().filter(|t| t.action == action);
        match tracked.as_ref().map(|t| t.phase) {
            Some(Phase::Installing) => {
                ctx.result(format!("action {action}: installing"));
                return Ok(());
            }
            Some(Phase::Activated) => {
                ctx.result(format!("action {action}: installed; waiting for the reboot and the new slot to be marked good"));
                return Ok(());
            }
            Some(Phase::Done) => return Ok(()),
            Some(Phase::Downloaded) | None => {}
        }
        let (chunk, artifact) = match pick_artifact(&d.deployment) {
            Ok(x) => x,
            Err(why) => {
                self.fail(ctx, &action, why).await;
                return Ok(());
            }
        };
        let url = self.artifact_url(artifact).map_err(PollError);
        let url = match url {
            Ok(u) => u,
            Err(PollError(why)) => {
                self.fail(ctx, &action, why).await;
                return Ok(());
            }
        };
        let headers: Vec<String> = self
            .auth
            .iter()
            .filter(|_| self.same_server(&url))
            .cloned()
            .collect();
        let version = chunk.version.clone();
        ctx.publish(|s| s.available = version.clone());
        let download = d.deployment.download.unwrap_or(Handling::Forced);
        let update = d.deployment.update.unwrap_or(Handling::Forced);
        let window_closed = d.deployment.maintenance_window.as_deref() == Some("unavailable");
        if download == Handling::Skip {
            ctx.result(format!(
                "action {action}: the server says not to download yet"
            ));
            return Ok(());
        }
        if update == Handling::Skip || window_closed {
            if tracked
                .as_ref()
                .is_some_and(|t| t.phase == Phase::Downloaded)
            {
                ctx.result(format!(
                    "action {action}: {} {version} checked; {}",
                    chunk.name,
                    if window_closed {
                        "waiting for the maintenance window"
                    } else {
                        "download only, not installed"
                    }
                ));
                return Ok(());
            }
            let detail = self.check_bundle(ctx, url.as_str(), &headers).await;
            match detail {
                Ok(detail) => {
                    let detail = if window_closed {
                        format!("{detail}; the install waits for the maintenance window")
                    } else {
                        format!("{detail}; download only: not installed")
                    };
                    ctx.state.tracked = Some(Tracked {
                        transaction: String::new(),
                        version: version.clone(),
                        source: url.to_string(),
                        phase: Phase::Downloaded,
                        action: action.clone(),
                        cancel: None,
                    });
                    self.feedback(ctx, &action, "downloaded", "none", detail.clone())
                        .await;
                    ctx.result(format!("action {action}: {detail}"));
                }
                Err(why) => self.fail(ctx, &action, why).await,
            }
            return Ok(());
        }
        self.install(
            ctx,
            &action,
            &version,
            url.as_str(),
            headers,
            &artifact.filename,
        )
        .await;
        Ok(())
    }

    /// Whether `url` points at the hawkBit server itself (same scheme, host and port).
    fn same_server(&self, url: &reqwest::Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    fn artifact_url(&self, a: &Artifact) -> Result<reqwest::Url, String> {
        let https = self.base.scheme() == "https";
        let order: &[&str] = if https {
            &["download", "download-http"]
        } else {
            &["download-http", "download"]
        };
        let href = order
            .iter()
            .find_map(|k| a.links.get(*k))
            .map(|l| l.href.clone())
            .ok_or_else(|| format!("artifact {} has no download link", a.filename))?;
        reqwest::Url::parse(&href).map_err(|e| {
            format!(
                "artifact {}: bad download link {:?}: {e}",
                a.filename,
                redact::url(&href)
            )
        })
    }

    /// Fetches and checks the bundle's manifest and signature (no payload).
    async fn check_bundle(
        &self,
        ctx: &Ctx,
        url: &str,
        headers: &[String],
    ) -> Result<String, String> {
        let mut opts = ctx.http.clone();
        opts.headers.extend(headers.iter().cloned());
        let keyring = ctx.keyring.clone();
        let compatible = ctx.compatible.clone();
        let url = url.to_owned();
        let shown = redact::url(&url);
        tokio::task::spawn_blocking(move || -> Result<String, String> {
            let keyring = crate::bundle::Keyring::load(&keyring).map_err(|e| e.to_string())?;
            let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut src = crate::source::http::HttpSource::new(&url, &opts, cancel).map_err(|e| e.to_string())?;
            let b = crate::bundle::reader::open(&mut src, &keyring).map_err(|e| format!("bundle {shown}: {e}"))?;
            if b.manifest.update.compatible != compatible {
                return Err(format!(
                    "bundle {shown} is for {:?}, this device is {compatible:?}",
                    b.manifest.update.compatible
                ));
            }
            use crate::source::ByteSource;
            Ok(format!(
                "bundle {} ({} bytes) is reachable and signed by a trusted key ({}); checked with {} bytes fetched",
                b.manifest.update.version,
                b.size,
                b.signer,
                src.bytes_fetched()
            ))
        })
        .await
        .map_err(|e| format!("bundle check: {e}"))?
    }

    async fn install(
        &mut self,
        ctx: &mut Ctx,
        action: &str,
        version: &str,
        url: &str,
        headers: Vec<String>,
        file: &str,
    ) {
        let source = match Location::parse(url) {
            Ok(l) => l,
            Err(e) => {
                let why = format!("the server offered a bundle rota cannot fetch: {e}");
                return self.fail(ctx, action, why).await;
            }
        };
        let transaction = uuid::Uuid::new_v4().to_string();
        ctx.state.tracked = Some(Tracked {
            transaction: transaction.clone(),
            version: version.to_owned(),
            source: url.to_owned(),
            phase: Phase::Installing,
            action: action.to_owned(),
            cancel: None,
        });
        ctx.save();
        let req = InstallRequest {
            source,
            transaction_id: Some(transaction.clone()),
            http_headers: headers,
            ..Default::default()
        };
        match ctx.agent.install(req).await {
            Ok(_) => {
                ctx.result(format!(
                    "action {action}: installing {version} ({file}), transaction {transaction}"
                ));
                self.feedback(
                    ctx,
                    action,
                    "proceeding",
                    "none",
                    format!("installing {file} (version {version})"),
                )
                .await;
            }
            Err(AgentError::Busy(why)) => {
                ctx.state.tracked = None;
                ctx.result(format!(
                    "action {action}: the device is busy ({why}); trying at the next poll"
                ));
            }
            Err(e) => {
                ctx.state.tracked = None;
                self.fail(ctx, action, format!("cannot start the install: {e}"))
                    .await;
            }
        }
    }

    /// Closes an action with a failure.
    async fn fail(&self, ctx: &mut Ctx, action: &str, why: String) {
        ctx.state.action_done(action);
        if ctx
            .state
            .tracked
            .as_ref()
            .is_some_and(|t| t.action == action)
        {
            ctx.state.tracked = None;
        }
        ctx.result(format!("action {action} failed: {why}"));
        self.feedback(ctx, action, "closed", "failure", why).await;
    }

    async fn succeed(&self, ctx: &mut Ctx, action: &str, msg: String) {
        ctx.state.action_done(action);
        ctx.state.tracked = None;
        ctx.result(format!("action {action}: {msg}"));
        self.feedback(ctx, action, "closed", "success", msg).await;
    }

    async fn cancel(&mut self, ctx: &mut Ctx, href: &str) -> Result<(), PollError> {
        let c: CancelResource = self.api.get_json(href).await.map_err(|e| self.explain(e))?;
        let stop = c.cancel_action.stop_id.clone();
        let cancel_id = c.id.clone().unwrap_or_else(|| stop.clone());
        let key = format!("cancel:{cancel_id}");
        if ctx.state.is_done(&key) {
            return Ok(());
        }
        let tracked = ctx.state.tracked.clone().filter(|t| t.action == stop);
        match tracked.as_ref().map(|t| t.phase) {
            Some(Phase::Installing) => {
                if tracked.as_ref().is_some_and(|t| t.cancel.is_some()) {
                    ctx.result(format!("action {stop}: cancelling"));
                    return Ok(());
                }
                if let Some(t) = ctx.state.tracked.as_mut() {
                    t.cancel = Some(cancel_id.clone());
                }
                ctx.save();
                match ctx.agent.cancel().await {
                    Ok(()) => ctx.result(format!(
                        "action {stop}: the server cancelled it; cancelling the install"
                    )),
                    // It ended meanwhile: its Completed (or the next reconcile) settles it.
                    Err(e) => log::info!("poller: cancel of action {stop}: {e}"),
                }
            }
            Some(Phase::Activated) => {
                ctx.state.action_done(&key);
                if let Some(t) = ctx.state.tracked.as_mut() {
                    t.cancel = None;
                }
                self.cancel_feedback(
                    ctx,
                    &cancel_id,
                    "rejected",
                    "none",
                    "the update is already installed and activated; it cannot be cancelled".into(),
                )
                .await;
                ctx.result(format!(
                    "action {stop}: cancel rejected, the update is already installed"
                ));
            }
            _ => {
                ctx.state.action_done(&key);
                ctx.state.action_done(&stop);
                if tracked.is_some() {
                    ctx.state.tracked = None;
                }
                self.cancel_feedback(
                    ctx,
                    &cancel_id,
                    "closed",
                    "success",
                    "cancelled; nothing was being installed".into(),
                )
                .await;
                ctx.result(format!("action {stop}: cancelled (nothing was running)"));
            }
        }
        Ok(())
    }

    pub async fn completed(
        &mut self,
        ctx: &mut Ctx,
        transaction: &str,
        result: InstallResult,
        message: &str,
    ) {
        let Some(t) = ctx
            .state
            .tracked
            .clone()
            .filter(|t| t.transaction == transaction)
        else {
            return;
        };
        if t.phase != Phase::Installing {
            return;
        }
        match result {
            InstallResult::Success => {
                self.activated(ctx, &t, message).await;
                // Settle at once if the boot already decided (e.g. after a restart).
                self.reconcile(ctx).await;
            }
            InstallResult::Failed => self.fail(ctx, &t.action, message.to_owned()).await,
            InstallResult::Cancelled => self.cancelled(ctx, &t).await,
        }
    }

    async fn activated(&mut self, ctx: &mut Ctx, t: &Tracked, message: &str) {
        if let Some(x) = ctx.state.tracked.as_mut() {
            x.phase = Phase::Activated;
        }
        ctx.result(format!(
            "action {}: installed; waiting for the reboot",
            t.action
        ));
        self.feedback(
            ctx,
            &t.action,
            "proceeding",
            "none",
            format!("{message}; activated, waiting for the reboot"),
        )
        .await;
        if let Some(cid) = &t.cancel {
            ctx.state.action_done(&format!("cancel:{cid}"));
            self.cancel_feedback(
                ctx,
                cid,
                "rejected",
                "none",
                "the install finished before the cancel reached it".into(),
            )
            .await;
        }
    }

    async fn cancelled(&mut self, ctx: &mut Ctx, t: &Tracked) {
        match &t.cancel {
            Some(cid) => {
                ctx.state.action_done(&format!("cancel:{cid}"));
                ctx.state.action_done(&t.action);
                ctx.state.tracked = None;
                ctx.result(format!(
                    "action {}: cancelled as the server asked",
                    t.action
                ));
                self.cancel_feedback(
                    ctx,
                    cid,
                    "closed",
                    "success",
                    "install cancelled; the target slot stays out of the boot selection".into(),
                )
                .await;
            }
            None => {
                self.fail(
                    ctx,
                    &t.action,
                    "the install was cancelled on the device".into(),
                )
                .await
            }
        }
    }

    /// Settles the tracked install from the agent's status (missed events, reboots).
    pub async fn reconcile(&mut self, ctx: &mut Ctx) {
        let Some(t) = ctx.state.tracked.clone() else {
            return;
        };
        if !matches!(t.phase, Phase::Installing | Phase::Activated) {
            return;
        }
        let status = match ctx.agent.status().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("poller: cannot read the agent's status: {e}");
                return;
            }
        };
        let running = ctx.agent.snapshot().transaction == t.transaction
            && ctx.agent.snapshot().operation == crate::model::Operation::Installing;
        let v = verdict(&status, &t.transaction);
        if v == Verdict::Running || running {
            return;
        }
        let installed = matches!(
            v,
            Verdict::Activated | Verdict::Booted | Verdict::Good | Verdict::RolledBack(_)
        );
        if t.phase == Phase::Installing && installed {
            // Completed was missed (a restart, a lagging event stream).
            self.activated(ctx, &t, &format!("installed {}", t.version))
                .await;
        }
        match v {
            Verdict::Running | Verdict::Activated | Verdict::Booted => {}
            Verdict::Good => {
                self.succeed(
                    ctx,
                    &t.action,
                    format!("{} booted and was marked good", t.version),
                )
                .await
            }
            Verdict::RolledBack(why) => {
                self.fail(ctx, &t.action, format!("rolled back: {why}"))
                    .await
            }
            Verdict::Failed(why) => self.fail(ctx, &t.action, why).await,
            Verdict::Cancelled => self.cancelled(ctx, &t).await,
            Verdict::Superseded => {
                self.fail(
                    ctx,
                    &t.action,
                    "another install replaced this one before it was confirmed".into(),
                )
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_is_hh_mm_ss() {
        assert_eq!(parse_sleep("12:00:00"), Some(Duration::from_secs(43200)));
        assert_eq!(parse_sleep("00:00:01"), Some(Duration::from_secs(1)));
        assert_eq!(parse_sleep("00:05:30"), Some(Duration::from_secs(330)));
        for bad in ["", "5", "00:60:00", "1:2", "a:b:c", "00:00:00:00"] {
            assert_eq!(parse_sleep(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_the_published_deployment_example_and_picks_the_bundle() {
        let d: DeploymentBase = serde_json::from_value(json!({
            "id": "8",
            "deployment": {
                "download": "forced", "update": "attempt", "maintenanceWindow": "available",
                "chunks": [
                    {"part": "os", "version": "1.0.79", "name": "one Firmware", "artifacts": [
                        {"filename": "gw-1.0.79.rota", "hashes": {"sha1": "57", "md5": "a0", "sha256": "49"}, "size": 13,
                         "_links": {"download": {"href": "https://cdn/a"}, "download-http": {"href": "http://cdn/a"}}},
                        {"filename": "file.signature", "size": 13, "_links": {}}
                    ], "metadata": [{"key": "k", "value": "v"}]}
                ]
            },
            "actionHistory": {"status": "RUNNING", "messages": ["x"]}
        }))
        .unwrap();
        assert_eq!(d.id, "8");
        assert_eq!(d.deployment.update, Some(Handling::Attempt));
        let (c, a) = pick_artifact(&d.deployment).unwrap();
        assert_eq!(
            (c.version.as_str(), a.filename.as_str()),
            ("1.0.79", "gw-1.0.79.rota")
        );
        let none = Deployment {
            download: None,
            update: None,
            maintenance_window: None,
            chunks: vec![],
        };
        assert!(pick_artifact(&none)
            .unwrap_err()
            .contains("no .rota artifact"));
        let numeric: CancelResource =
            serde_json::from_value(json!({"id": 11, "cancelAction": {"stopId": 11}})).unwrap();
        assert_eq!(
            (
                numeric.id.as_deref(),
                numeric.cancel_action.stop_id.as_str()
            ),
            (Some("11"), "11")
        );
    }

    #[test]
    fn feedback_has_the_ddi_shape() {
        let long = "é".repeat(600);
        let b = feedback_body("7", "closed", "failure", &[long]);
        assert_eq!(b["id"], "7");
        assert_eq!(b["status"]["execution"], "closed");
        assert_eq!(b["status"]["result"]["finished"], "failure");
        assert!(b["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(b["status"]["details"][0].as_str().unwrap().len() <= MAX_DETAIL + 3);
    }
}
