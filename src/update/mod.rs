//! Update discovery: the `[update]` poller.
//!
//! One tokio task asks a server whether there is something to install — a static JSON
//! feed ([`feed`]) or an Eclipse hawkBit DDI server ([`hawkbit`]) — every `interval` (or
//! as the server says), and at once when someone asks (`rota poll`, D-Bus `Poll`). It
//! installs through the agent like any other front end, follows the install through
//! `Completed`, the reboot and the boot's verdict (`last_install.result` becoming `good`
//! or `rolled-back`), and reports that to the server. What it must not forget — the install
//! it started, feedback not yet delivered, versions not to try again — is kept in
//! `<data-dir>/poller.json` ([`store`]).
//!
//! Failures back off: after `n` failed polls in a row the next one waits
//! `interval · 2ⁿ` (with jitter), at most [`MAX_ERROR_BACKOFF`] or four intervals, so a
//! fleet facing a broken server does not hammer it.
//!
//! The state a front end can show is [`PollStatus`], published on a watch channel by
//! [`spawn_with_status`].

pub mod feed;
pub mod hawkbit;
pub mod net;
pub mod store;

use crate::agent::{AgentEvent, AgentHandle};
use crate::config::{Config, PollKind};
use crate::model::{InstallResult, SlotRole, StatusReport, UpdateResult};
use crate::source::http::HttpOptions;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use store::{PollerState, Store};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Shortest time between two polls, whatever the config or the server says.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time between two polls, whatever the server says (hawkBit `sleep`).
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest wait after failed polls (unless four intervals are longer).
pub const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(3600);
/// Poll at least this often while an install the server may cancel is running.
pub const ACTIVE_INTERVAL: Duration = Duration::from_secs(5);

/// What the poller is doing, for `rota status` and D-Bus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PollStatus {
    /// `feed` or `hawkbit`; empty when no `[update]` is configured.
    pub kind: String,
    /// The feed URL or the hawkBit controller resource.
    pub server: String,
    /// When the last poll started (RFC 3339), "" before the first.
    pub last_poll: String,
    /// When a poll last succeeded.
    pub last_success: String,
    /// When the next poll is due (RFC 3339), unless one is requested sooner.
    pub next_poll: String,
    /// What the last poll found or did, in one line.
    pub last_result: String,
    /// Why the last poll failed; "" after a good one.
    pub last_error: String,
    /// Failed polls in a row.
    pub errors_in_a_row: u32,
    /// A version the server offers that is newer than the running one, "" when none.
    pub available: String,
    /// The install the poller started and follows, "" when none.
    pub transaction: String,
    /// hawkBit action being worked on, "" when none.
    pub action: String,
}

/// How an install the poller started stands, read from the agent's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still running (or interrupted and resuming).
    Running,
    Failed(String),
    Cancelled,
    /// Installed and activated; the reboot has not happened yet.
    Activated,
    /// Running the new slot, not yet marked good.
    Booted,
    Good,
    RolledBack(String),
    /// The last install is another one: this one's end is unknown.
    Superseded,
}

/// The verdict on `transaction` from a status report.
pub fn verdict(status: &StatusReport, transaction: &str) -> Verdict {
    let Some(li) = status
        .last_install
        .as_ref()
        .filter(|l| l.transaction == transaction)
    else {
        return Verdict::Superseded;
    };
    match li.result {
        UpdateResult::Installing => Verdict::Running,
        UpdateResult::Cancelled => Verdict::Cancelled,
        UpdateResult::Activated => Verdict::Activated,
        UpdateResult::Booted => Verdict::Booted,
        UpdateResult::Good => Verdict::Good,
        UpdateResult::RolledBack => Verdict::RolledBack(if li.error.is_empty() {
            format!("the bootloader fell back from slot {}", li.slot)
        } else {
            li.error.clone()
        }),
        UpdateResult::Failed => Verdict::Failed(if li.error.is_empty() {
            "the install failed".to_owned()
        } else {
            li.error.clone()
        }),
    }
}

/// The version recorded for the booted slot, if rota wrote it.
pub fn booted_version(status: &StatusReport) -> Option<String> {
    status
        .slots
        .iter()
        .find(|s| s.state == SlotRole::Booted && s.parent.is_none())
        .and_then(|s| s.version.clone())
        .filter(|v| !v.is_empty())
}

/// What every poller shares: the agent, the persistent state and the published status.
pub struct Ctx {
    pub agent: AgentHandle,
    pub store: Store,
    pub state: PollerState,
    /// What is on disk, to skip writes that would change only the poll times.
    saved: PollerState,
    status: watch::Sender<PollStatus>,
    pub compatible: String,
    /// `[system] version-scheme`: how the feed's version is read and ordered.
    pub version_scheme: crate::version::VersionScheme,
    pub interval: Duration,
    /// `[http]` settings for the server and the bundles it names.
    pub http: HttpOptions,
    pub keyring: Vec<PathBuf>,
}

impl Ctx {
    /// Persists the state; a failure is logged (the poller keeps working from memory).
    pub fn save(&mut self) {
        match self.store.save(&self.state) {
            Ok(()) => self.saved = self.state.clone(),
            Err(e) => log::error!("poller: {e}"),
        }
    }

    /// [`save`](Self::save) unless only the poll times changed: a poll that finds nothing
    /// new does not write to flash.
    pub fn save_if_changed(&mut self) {
        let mut a = self.state.clone();
        let b = &self.saved;
        a.last_poll.clone_from(&b.last_poll);
        a.last_success.clone_from(&b.last_success);
        if a != *b {
            self.save();
        }
    }

    /// Records what happened and logs it.
    pub fn result(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        log::info!("poller: {msg}");
        self.state.last_result = msg;
        self.publish(|_| {});
    }

    pub fn publish(&self, f: impl FnOnce(&mut PollStatus)) {
        let st = &self.state;
        self.status.send_modify(|s| {
            s.last_poll = st.last_poll.clone();
            s.last_success = st.last_success.clone();
            s.last_result = st.last_result.clone();
            s.last_error = st.last_error.clone();
            s.transaction = st
                .tracked
                .as_ref()
                .map(|t| t.transaction.clone())
                .unwrap_or_default();
            s.action = st
                .tracked
                .as_ref()
                .map(|t| t.action.clone())
                .unwrap_or_default();
            f(s);
        });
    }
}

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollError(pub String);

impl From<net::NetError> for PollError {
    fn from(e: net::NetError) -> Self {
        PollError(e.to_string())
    }
}

enum Poller {
    Feed(feed::FeedPoller),
    Hawkbit(hawkbit::HawkbitPoller),
}

impl Poller {
    /// Checks the server; returns how long to wait before the next poll.
    async fn poll(&mut self, ctx: &mut Ctx) -> Result<Duration, PollError> {
        match self {
            Poller::Feed(p) => p.poll(ctx).await,
            Poller::Hawkbit(p) => p.poll(ctx).await,
        }
    }

    async fn completed(
        &mut self,
        ctx: &mut Ctx,
        transaction: &str,
        result: InstallResult,
        message: &str,
    ) {
        match self {
            Poller::Feed(p) => p.completed(ctx, transaction, result, message).await,
            Poller::Hawkbit(p) => p.completed(ctx, transaction, result, message).await,
        }
    }

    /// After events may have been missed: compares the tracked install with the agent.
    async fn reconcile(&mut self, ctx: &mut Ctx) {
        match self {
            Poller::Feed(p) => p.reconcile(ctx).await,
            Poller::Hawkbit(p) => p.reconcile(ctx).await,
        }
    }
}

/// The wait after `errors` failed polls in a row.
pub fn error_backoff(interval: Duration, errors: u32) -> Duration {
    let cap = MAX_ERROR_BACKOFF.max(interval.saturating_mul(4));
    let d = interval.saturating_mul(1 << errors.min(16)).min(cap);
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    // 80..100 %: spread a fleet's retries.
    d.mul_f64(0.8 + f64::from(b[0]) / 1275.0).max(MIN_INTERVAL)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Starts the configured poller on the current tokio runtime (a task that ends at once
/// when `[update]` is not configured).
pub fn spawn(cfg: &Config, agent: AgentHandle) -> JoinHandle<()> {
    spawn_with_status(cfg, agent).0
}

/// [`spawn`], plus a receiver of the poller's [`PollStatus`].
pub fn spawn_with_status(
    cfg: &Config,
    agent: AgentHandle,
) -> (JoinHandle<()>, watch::Receiver<PollStatus>) {
    let (tx, rx) = watch::channel(PollStatus::default());
    let Some(up) = cfg.update.clone() else {
        return (tokio::spawn(async {}), rx);
    };
    let store = Store::new(&cfg.system.data_dir);
    let state = store.load();
    let mut ctx = Ctx {
        agent: agent.clone(),
        store,
        saved: state.clone(),
        state,
        status: tx,
        compatible: cfg.system.compatible.clone(),
        version_scheme: cfg.system.version_scheme,
        interval: up.interval.clamp(MIN_INTERVAL, MAX_INTERVAL),
        http: HttpOptions::from_config(&cfg.http),
        keyring: cfg.keyring.paths.clone(),
    };
    // Subscribe before anything can happen, so no Completed is missed.
    let events = agent.subscribe();
    let poller = match up.kind {
        PollKind::Feed => feed::FeedPoller::new(&up.poll, &ctx).map(Poller::Feed),
        PollKind::Hawkbit => hawkbit::HawkbitPoller::new(&up, &ctx).map(Poller::Hawkbit),
    };
    let kind = match up.kind {
        PollKind::Feed => "feed",
        PollKind::Hawkbit => "hawkbit",
    };
    let handle = tokio::spawn(async move {
        match poller {
            Ok(p) => run(p, ctx, events).await,
            Err(e) => {
                log::error!("poller: {e}; not polling");
                ctx.state.last_error = e;
                ctx.publish(|s| s.kind = kind.into());
            }
        }
    });
    (handle, rx)
}

async fn run(mut p: Poller, mut ctx: Ctx, mut events: broadcast::Receiver<AgentEvent>) {
    log::info!("poller: started");
    p.reconcile(&mut ctx).await;
    let mut errors = 0u32;
    let mut previous: Option<tokio::time::Instant> = None;
    loop {
        // However often a poll is requested, polls start at most once per MIN_INTERVAL.
        if let Some(p) = previous {
            tokio::time::sleep_until(p + MIN_INTERVAL).await;
        }
        previous = Some(tokio::time::Instant::now());
        ctx.state.last_poll = rfc3339(SystemTime::now());
        let delay = match p.poll(&mut ctx).await {
            Ok(next) => {
                errors = 0;
                ctx.state.last_success = ctx.state.last_poll.clone();
                ctx.state.last_error.clear();
                next.clamp(MIN_INTERVAL, MAX_INTERVAL)
            }
            Err(PollError(e)) => {
                errors += 1;
                log::warn!("poller: {e}");
                ctx.state.last_error = e;
                error_backoff(ctx.interval, errors)
            }
        };
        ctx.save_if_changed();
        let next = SystemTime::now() + delay;
        ctx.publish(|s| {
            s.next_poll = rfc3339(next);
            s.errors_in_a_row = errors;
        });
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                ev = events.recv() => match ev {
                    Ok(AgentEvent::PollRequested) => break,
                    Ok(AgentEvent::Completed { transaction, result, message }) => {
                        p.completed(&mut ctx, &transaction, result, &message).await;
                        ctx.save();
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        p.reconcile(&mut ctx).await;
                        ctx.save();
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        log::info!("poller: the agent stopped");
                        return;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LastInstall, SlotReport};

    #[test]
    fn backoff_grows_and_is_capped() {
        let i = Duration::from_secs(10);
        let b1 = error_backoff(i, 1);
        assert!(
            b1 >= Duration::from_secs(16) && b1 <= Duration::from_secs(20),
            "{b1:?}"
        );
        let b5 = error_backoff(i, 5);
        assert!(
            b5 >= Duration::from_secs(256) && b5 <= Duration::from_secs(320),
            "{b5:?}"
        );
        assert!(error_backoff(i, 30) <= MAX_ERROR_BACKOFF);
        let day = Duration::from_secs(86400);
        assert!(error_backoff(day, 30) <= day * 4);
    }

    #[test]
    fn verdicts_follow_the_last_install() {
        let mut st = StatusReport {
            slots: vec![SlotReport {
                state: SlotRole::Booted,
                version: Some("1.2.0".into()),
                ..Default::default()
            }],
            last_install: Some(LastInstall {
                version: "1.3.0".into(),
                slot: "rootfs.1".into(),
                transaction: "t1".into(),
                result: UpdateResult::Activated,
                error: String::new(),
            }),
            ..Default::default()
        };
        assert_eq!(booted_version(&st).as_deref(), Some("1.2.0"));
        assert_eq!(verdict(&st, "t1"), Verdict::Activated);
        assert_eq!(verdict(&st, "t0"), Verdict::Superseded);
        for (r, v) in [
            (UpdateResult::Installing, Verdict::Running),
            (UpdateResult::Booted, Verdict::Booted),
            (UpdateResult::Good, Verdict::Good),
            (UpdateResult::Cancelled, Verdict::Cancelled),
        ] {
            st.last_install.as_mut().unwrap().result = r;
            assert_eq!(verdict(&st, "t1"), v);
        }
        let li = st.last_install.as_mut().unwrap();
        li.result = UpdateResult::RolledBack;
        li.error = "fell back to A".into();
        assert_eq!(
            verdict(&st, "t1"),
            Verdict::RolledBack("fell back to A".into())
        );
        st.last_install.as_mut().unwrap().result = UpdateResult::Failed;
        assert_eq!(verdict(&st, "t1"), Verdict::Failed("fell back to A".into()));
    }
}
