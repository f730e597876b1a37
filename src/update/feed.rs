//! The JSON feed poller: a static file any web server or CDN can host.
//!
//! The feed is one JSON object:
//!
//! ```json
//! {
//!   "version": "1.5.0",
//!   "url": "acme-gateway-1.5.0.rota",
//!   "size": 268443648,
//!   "compatible": "acme-gateway",
//!   "description": "July release"
//! }
//! ```
//!
//! | key | | meaning |
//! |---|---|---|
//! | `version` | required | the bundle's version, in the `[system] version-scheme` |
//! | `url` | required | the bundle: absolute `http(s)://…`, or relative to the feed's own URL |
//! | `size` | optional | bundle size in bytes; checked against the server before installing, so a feed updated before its bundle finished uploading is not acted on |
//! | `compatible` | optional | if present, must equal `[system] compatible`, else the feed is ignored with an error |
//! | `description` | optional | free text, shown in the poll status |
//!
//! Other keys are ignored, so feeds can carry more for other tools. The feed may be at
//! most [`super::net::MAX_JSON`] bytes.
//!
//! The poller installs the feed's version when it is newer (in the configured version scheme) than the booted
//! slot's, or when the booted version is unknown (a factory image) and that version was
//! not installed already. A version that was rolled back is not tried again; a version
//! whose install failed is tried [`MAX_ATTEMPTS`] times in all. The bundle's signature,
//! compatible and version are checked by the install itself, like any install.

use super::{booted_version, verdict, Ctx, PollError, Verdict};
use crate::config::UpdateSection;
use crate::model::{AgentError, InstallRequest, InstallResult, Location, UpdateResult};
use crate::source::redact;
use crate::version::{Version, VersionScheme};
use serde::Deserialize;
use std::cmp::Ordering;
use std::time::Duration;

/// Installs of one version that may fail before the poller stops trying it.
pub const MAX_ATTEMPTS: u32 = 3;

/// The feed document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Feed {
    pub version: String,
    pub url: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub compatible: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// What to do about a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Install,
    /// Nothing to do; why.
    Nothing(String),
    /// The feed cannot be acted on; why (an error in the poll status).
    Refuse(String),
}

/// Checks the feed and resolves its bundle URL against `feed_url`.
pub fn check(
    feed: &Feed,
    feed_url: &reqwest::Url,
    scheme: VersionScheme,
) -> Result<(Version, reqwest::Url), String> {
    let shown = redact::url(feed_url.as_str());
    let version = scheme
        .parse(&feed.version)
        .map_err(|e| format!("feed {shown}: {e}"))?;
    if feed.url.trim().is_empty() {
        return Err(format!("feed {shown}: \"url\" is empty"));
    }
    let url = feed_url
        .join(feed.url.trim())
        .map_err(|e| format!("feed {shown}: url {:?}: {e}", redact::url(feed.url.trim())))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "feed {shown}: bundle url {} is not http(s)",
            redact::url(url.as_str())
        ));
    }
    Ok((version, url))
}

/// Whether to install `version`, given the device and what the poller remembers.
pub fn decide(
    feed: &Feed,
    version: &Version,
    compatible: &str,
    status: &crate::model::StatusReport,
    state: &super::store::PollerState,
) -> Decision {
    if let Some(c) = feed.compatible.as_deref() {
        if c != compatible {
            return Decision::Refuse(format!(
                "the feed is for {c:?}, this device is {compatible:?}; not installing {version}"
            ));
        }
    }
    let v = version.to_string();
    if state.is_rejected(&v) {
        return Decision::Nothing(format!(
            "{v} was rolled back or failed {MAX_ATTEMPTS} times before; not trying it again"
        ));
    }
    let booted = booted_version(status);
    if let Some(b) = booted.as_deref() {
        match version.scheme().parse(b) {
            Ok(b) if version.compare(&b) != Some(Ordering::Greater) => {
                return Decision::Nothing(format!("up to date: running {b}, the feed offers {v}"))
            }
            Ok(_) => {}
            Err(e) => log::warn!("poller: the booted slot's version: {e}; comparing by name"),
        }
    }
    if let Some(li) = status.last_install.as_ref().filter(|l| l.version == v) {
        match li.result {
            UpdateResult::Installing => {
                return Decision::Nothing(format!("{v} is being installed"))
            }
            UpdateResult::Activated => {
                return Decision::Nothing(format!("{v} is installed and waits for a reboot"))
            }
            UpdateResult::Booted => {
                return Decision::Nothing(format!("{v} is running and waits to be marked good"))
            }
            UpdateResult::Good if booted.is_none() || booted.as_deref() == Some(v.as_str()) => {
                return Decision::Nothing(format!("{v} is installed"))
            }
            _ => {}
        }
    }
    Decision::Install
}

pub struct FeedPoller {
    url: reqwest::Url,
    api: super::net::Api,
}

impl FeedPoller {
    pub fn new(poll: &str, ctx: &Ctx) -> Result<FeedPoller, String> {
        let url = reqwest::Url::parse(poll.trim())
            .map_err(|e| format!("[update] poll {:?} is not a URL: {e}", redact::url(poll)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "[update] poll {:?} must be an http(s) URL",
                redact::url(poll)
            ));
        }
        let api = super::net::Api::new(&ctx.http, url.scheme() == "https")?;
        ctx.publish(|s| {
            s.kind = "feed".into();
            s.server = redact::url(url.as_str());
        });
        Ok(FeedPoller { url, api })
    }

    /// A `[update]` section for tests and tools.
    pub fn section(url: &str, interval: Duration) -> UpdateSection {
        UpdateSection {
            poll: url.into(),
            interval,
            kind: crate::config::PollKind::Feed,
            controller_id: None,
            tenant: None,
            target_token: None,
            gateway_token: None,
        }
    }

    pub async fn poll(&mut self, ctx: &mut Ctx) -> Result<Duration, PollError> {
        let feed: Feed = self.api.get_json(self.url.as_str()).await?;
        let (version, bundle) = check(&feed, &self.url, ctx.version_scheme).map_err(PollError)?;
        let status = ctx
            .agent
            .status()
            .await
            .map_err(|e| PollError(format!("agent: {e}")))?;
        self.follow(ctx, &status);
        if let Some(t) = ctx
            .state
            .tracked
            .as_ref()
            .filter(|t| t.phase == super::store::Phase::Installing)
        {
            let msg = format!("installing {} (transaction {})", t.version, t.transaction);
            ctx.result(msg);
            return Ok(ctx.interval);
        }
        let newer = match booted_version(&status).and_then(|b| version.scheme().parse(&b).ok()) {
            Some(b) => version.compare(&b) == Some(Ordering::Greater),
            None => true,
        };
        ctx.publish(|s| {
            s.available = if newer {
                version.to_string()
            } else {
                String::new()
            }
        });
        match decide(&feed, &version, &ctx.compatible, &status, &ctx.state) {
            Decision::Nothing(why) => {
                ctx.result(why);
                Ok(ctx.interval)
            }
            Decision::Refuse(why) => Err(PollError(why)),
            Decision::Install => {
                if let Some(want) = feed.size {
                    let have = self
                        .api
                        .size_of(bundle.as_str(), Default::default())
                        .await?;
                    if have != want {
                        return Err(PollError(format!(
                            "the feed says {} has {want} bytes, the server has {have}: not installing {version} until they agree",
                            redact::url(bundle.as_str())
                        )));
                    }
                }
                self.install(ctx, &version.to_string(), bundle.as_str())
                    .await?;
                Ok(ctx.interval)
            }
        }
    }

    async fn install(&mut self, ctx: &mut Ctx, version: &str, url: &str) -> Result<(), PollError> {
        let transaction = uuid::Uuid::new_v4().to_string();
        let req = InstallRequest {
            source: Location::parse(url).map_err(|e| {
                PollError(format!(
                    "the server offered a bundle rota cannot fetch: {e}"
                ))
            })?,
            transaction_id: Some(transaction.clone()),
            ..Default::default()
        };
        // Remember before asking, so a crash between the two cannot lose track.
        *ctx.state.attempts.entry(version.to_owned()).or_default() += 1;
        ctx.state.tracked = Some(super::store::Tracked {
            transaction: transaction.clone(),
            version: version.to_owned(),
            source: url.to_owned(),
            phase: super::store::Phase::Installing,
            action: String::new(),
            cancel: None,
        });
        ctx.save();
        match ctx.agent.install(req).await {
            Ok(_) => {
                ctx.result(format!(
                    "installing {version} from {} (transaction {transaction})",
                    redact::url(url)
                ));
                Ok(())
            }
            Err(e) => {
                ctx.state.tracked = None;
                if let Some(n) = ctx.state.attempts.get_mut(version) {
                    *n = n.saturating_sub(1);
                }
                match e {
                    AgentError::Busy(why) => {
                        ctx.result(format!("{version} is available; the device is busy ({why}); trying at the next poll"));
                        Ok(())
                    }
                    other => Err(PollError(format!(
                        "cannot start the install of {version}: {other}"
                    ))),
                }
            }
        }
    }

    /// Updates the tracked install from the agent's status.
    fn follow(&mut self, ctx: &mut Ctx, status: &crate::model::StatusReport) {
        let Some(t) = ctx.state.tracked.clone() else {
            return;
        };
        if t.phase == super::store::Phase::Done {
            return;
        }
        let v = verdict(status, &t.transaction);
        let attempts = ctx.state.attempts.get(&t.version).copied().unwrap_or(0);
        let finish = |ctx: &mut Ctx, msg: String| {
            ctx.state.tracked = None;
            ctx.result(msg);
        };
        match v {
            Verdict::Running => {}
            Verdict::Activated | Verdict::Booted => {
                if let Some(t) = ctx.state.tracked.as_mut() {
                    t.phase = super::store::Phase::Activated;
                }
            }
            Verdict::Good => {
                ctx.state.attempts.remove(&t.version);
                finish(
                    ctx,
                    format!("{} installed, booted and marked good", t.version),
                );
            }
            Verdict::RolledBack(why) => {
                ctx.state.reject(&t.version);
                finish(
                    ctx,
                    format!(
                        "{} was rolled back ({why}); it will not be tried again",
                        t.version
                    ),
                );
            }
            Verdict::Failed(why) => {
                if attempts >= MAX_ATTEMPTS {
                    ctx.state.reject(&t.version);
                }
                finish(
                    ctx,
                    format!(
                        "the install of {} failed (attempt {attempts} of {MAX_ATTEMPTS}): {why}",
                        t.version
                    ),
                );
            }
            Verdict::Cancelled => {
                finish(ctx, format!("the install of {} was cancelled", t.version))
            }
            Verdict::Superseded => finish(
                ctx,
                format!(
                    "the install of {} was replaced by another install",
                    t.version
                ),
            ),
        }
    }

    pub async fn completed(
        &mut self,
        ctx: &mut Ctx,
        transaction: &str,
        _result: InstallResult,
        _message: &str,
    ) {
        if ctx
            .state
            .tracked
            .as_ref()
            .is_some_and(|t| t.transaction == transaction)
        {
            self.reconcile(ctx).await;
        }
    }

    pub async fn reconcile(&mut self, ctx: &mut Ctx) {
        if ctx.state.tracked.is_none() {
            return;
        }
        match ctx.agent.status().await {
            Ok(status) => self.follow(ctx, &status),
            Err(e) => log::warn!("poller: cannot read the agent's status: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LastInstall, SlotReport, SlotRole, StatusReport, UpdateResult};
    use crate::update::store::PollerState;

    fn feed(v: &str) -> Feed {
        Feed {
            version: v.into(),
            url: "b.rota".into(),
            size: None,
            compatible: None,
            description: None,
        }
    }

    fn status(booted: Option<&str>, last: Option<(&str, UpdateResult)>) -> StatusReport {
        StatusReport {
            slots: vec![SlotReport {
                state: SlotRole::Booted,
                version: booted.map(Into::into),
                ..Default::default()
            }],
            last_install: last.map(|(v, r)| LastInstall {
                version: v.into(),
                result: r,
                transaction: "t".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn urls_resolve_against_the_feed() {
        let base = reqwest::Url::parse("https://cdn.example.com/acme/stable.json").unwrap();
        let (v, u) = check(&feed("1.5.0"), &base, VersionScheme::Semver).unwrap();
        assert_eq!(v.to_string(), "1.5.0");
        assert_eq!(u.as_str(), "https://cdn.example.com/acme/b.rota");
        let abs = Feed {
            url: "http://other.example.com/x.rota".into(),
            ..feed("1.5.0")
        };
        assert_eq!(
            check(&abs, &base, VersionScheme::Semver)
                .unwrap()
                .1
                .as_str(),
            "http://other.example.com/x.rota"
        );
        let up = Feed {
            url: "../v/x.rota".into(),
            ..feed("1.5.0")
        };
        assert_eq!(
            check(&up, &base, VersionScheme::Semver).unwrap().1.as_str(),
            "https://cdn.example.com/v/x.rota"
        );
        assert!(check(&feed("1.5"), &base, VersionScheme::Semver)
            .unwrap_err()
            .contains("not semver"));
        // With the Debian scheme, board versions are read and ordered.
        let (v, _) = check(&feed("2024.10"), &base, VersionScheme::Debian).unwrap();
        assert_eq!(v.to_string(), "2024.10");
        let ftp = Feed {
            url: "ftp://x/y.rota".into(),
            ..feed("1.5.0")
        };
        assert!(check(&ftp, &base, VersionScheme::Semver)
            .unwrap_err()
            .contains("not http(s)"));
        let empty = Feed {
            url: " ".into(),
            ..feed("1.5.0")
        };
        assert!(check(&empty, &base, VersionScheme::Semver)
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn parses_the_documented_schema_and_ignores_extra_keys() {
        let f: Feed = serde_json::from_str(
            r#"{"version":"1.5.0","url":"x.rota","size":123,"compatible":"acme","description":"d","channel":"stable"}"#,
        )
        .unwrap();
        assert_eq!(f.size, Some(123));
        assert_eq!(f.compatible.as_deref(), Some("acme"));
        assert!(serde_json::from_str::<Feed>(r#"{"url":"x.rota"}"#).is_err());
    }

    #[test]
    fn decides_by_semver_history_and_compatible() {
        let s = PollerState::default();
        let v = |x: &str| VersionScheme::Semver.parse(x).unwrap();
        let d =
            |f: &Feed, st: &StatusReport, s: &PollerState| decide(f, &v(&f.version), "acme", st, s);
        assert_eq!(
            d(&feed("1.5.0"), &status(Some("1.4.0"), None), &s),
            Decision::Install
        );
        assert!(matches!(
            d(&feed("1.4.0"), &status(Some("1.4.0"), None), &s),
            Decision::Nothing(_)
        ));
        assert!(matches!(
            d(&feed("1.3.9"), &status(Some("1.4.0"), None), &s),
            Decision::Nothing(_)
        ));
        // A factory image (unknown version) takes any version once.
        assert_eq!(
            d(&feed("1.0.0"), &status(None, None), &s),
            Decision::Install
        );
        assert!(matches!(
            d(
                &feed("1.0.0"),
                &status(None, Some(("1.0.0", UpdateResult::Activated))),
                &s
            ),
            Decision::Nothing(_)
        ));
        assert!(matches!(
            d(
                &feed("1.5.0"),
                &status(Some("1.4.0"), Some(("1.5.0", UpdateResult::Booted))),
                &s
            ),
            Decision::Nothing(_)
        ));
        // A failed install is tried again; a rolled-back version is not.
        assert_eq!(
            d(
                &feed("1.5.0"),
                &status(Some("1.4.0"), Some(("1.5.0", UpdateResult::Failed))),
                &s
            ),
            Decision::Install
        );
        let mut rejected = PollerState::default();
        rejected.reject("1.5.0");
        assert!(matches!(
            d(&feed("1.5.0"), &status(Some("1.4.0"), None), &rejected),
            Decision::Nothing(_)
        ));
        assert_eq!(
            d(&feed("1.5.1"), &status(Some("1.4.0"), None), &rejected),
            Decision::Install
        );
        let other = Feed {
            compatible: Some("other".into()),
            ..feed("1.5.0")
        };
        match d(&other, &status(Some("1.4.0"), None), &s) {
            Decision::Refuse(why) => assert!(
                why.contains("\"other\"") && why.contains("\"acme\""),
                "{why}"
            ),
            d => panic!("{d:?}"),
        }
    }
}
