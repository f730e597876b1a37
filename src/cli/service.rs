//! `rota service`: load the config, start the agent and the D-Bus service, then run the
//! main loop until SIGTERM/SIGINT.
//!
//! The main loop tells systemd READY=1 once the interfaces are served, updates STATUS= as
//! installs progress, and pings the watchdog (WATCHDOG_USEC) only after the agent, a
//! blocking thread and the service's own D-Bus interface answered in time — a hung agent
//! or a starved service stops the pings and systemd restarts it.
//! SIGTERM/SIGINT exit 0 without cancelling a running install: its journal resumes it at
//! the next start (a reboot mid-update must not lose the update). Losing the bus (or a
//! bus name) exits 1 so systemd restarts the service.

use super::{CliResult, Failure};
use crate::agent::Operation;
use crate::config::Config;
use futures_util::StreamExt;
use sd_notify::NotifyState;
use std::path::Path;
use std::time::Duration;

/// A stderr logger for when the journal is not there (tests, containers, a terminal).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            // Structured fields (TRANSACTION=…, SLOT=…) follow the message, as journald keeps them.
            let mut fields = KvText(String::new());
            let _ = r.key_values().visit(&mut fields);
            eprintln!(
                "{} rota[{}] {}: {}{}",
                crate::state::now_rfc3339(),
                std::process::id(),
                r.level(),
                r.args(),
                fields.0
            );
        }
    }
    fn flush(&self) {}
}

static STDERR_LOG: StderrLog = StderrLog;

struct KvText(String);

impl<'kvs> log::kv::VisitSource<'kvs> for KvText {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

/// journald when connected to it (structured, with the syslog identifier), else stderr.
/// `ROTA_LOG` sets the level (error, warn, info, debug, trace).
pub fn init_logging() {
    let level = std::env::var("ROTA_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    let journal = systemd_journal_logger::connected_to_journal()
        && systemd_journal_logger::JournalLog::new()
            .map(|j| j.with_syslog_identifier("rota".into()).install().is_ok())
            .unwrap_or(false);
    if !journal {
        let _ = log::set_logger(&STDERR_LOG);
    }
    log::set_max_level(level);
}

fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(false, states);
}

/// The watchdog ping interval: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) reads
/// it (ignored when `WATCHDOG_PID` names another process, or when it is 0 or garbage).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    let half = Duration::from_micros(usec / 2);
    (!half.is_zero()).then_some(half)
}

pub fn run(config_path: &Path) -> CliResult {
    init_logging();
    let config = Config::load(config_path).map_err(|e| Failure::Failed(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the runtime: {e}")))?;
    let outcome = rt.block_on(serve(config));
    // Blocking reads still running (an inspection of a slow server, an install thread)
    // must not hold the process after SIGTERM: dropping the runtime would wait for them.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    outcome
}

/// How long a stop waits for blocking work before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Whether the service still does its job, for the watchdog: the agent answers, a
/// blocking thread can still be had (inspections and access checks need one), and a call
/// through the bus daemon to our own object server is answered (`Operation`). Each within
/// `budget` in all.
async fn responsive(
    agent: &crate::agent::AgentHandle,
    conn: &zbus::Connection,
    budget: Duration,
) -> Result<(), String> {
    let check = async {
        agent
            .status()
            .await
            .map_err(|e| format!("the agent answered with an error: {e}"))?;
        tokio::task::spawn_blocking(|| ())
            .await
            .map_err(|e| format!("no blocking thread: {e}"))?;
        let me = conn
            .unique_name()
            .ok_or("the bus connection has no name")?
            .to_owned();
        let props = zbus::fdo::PropertiesProxy::builder(conn)
            .destination(me)
            .and_then(|b| b.path(crate::service::OBJECT_PATH))
            .map_err(|e| e.to_string())?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let iface = zbus::names::InterfaceName::from_static_str_unchecked("io.rota.Agent1");
        props
            .get(iface, "Operation")
            .await
            .map_err(|e| format!("our own D-Bus interface did not answer: {e}"))?;
        Ok::<(), String>(())
    };
    tokio::time::timeout(budget, check).await.map_err(|_| {
        format!("the agent, a blocking thread or the bus did not answer within {budget:?}")
    })?
}

async fn serve(config: Config) -> CliResult {
    use tokio::signal::unix::{signal, SignalKind};
    let signal_failed = |e: std::io::Error| Failure::Failed(format!("cannot watch signals: {e}"));
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_failed)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_failed)?;
    // The names first: a second `rota service` stops here, before it starts an agent
    // that would resume the journal next to the running one.
    let claimed = crate::service::claim(&config)
        .await
        .map_err(Failure::Failed)?;
    let agent = crate::agent::start(config.clone())
        .await
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let served = crate::service::serve(claimed, &config, agent.clone())
        .await
        .map_err(Failure::Failed)?;
    // Ends when the bus connection breaks; yields when a name is taken from us.
    let dbus = zbus::fdo::DBusProxy::new(&served.conn)
        .await
        .map_err(|e| Failure::Failed(format!("cannot talk to the bus daemon: {e}")))?;
    let mut name_lost = dbus
        .receive_name_lost()
        .await
        .map_err(|e| Failure::Failed(format!("cannot watch the bus names: {e}")))?;
    // Staged MCU images go out once their update is good.
    let _relayer = crate::service::relayer::spawn(
        agent.clone(),
        served.mcu.clone(),
        config.system.data_dir.clone(),
    );
    // The [update] poller, if configured (a no-op task otherwise).
    let _poller = crate::update::spawn(&config, agent.clone());
    log::info!(
        "rota {} serving io.rota{} for {:?}",
        env!("CARGO_PKG_VERSION"),
        if config.dbus.rauc_compat {
            " and de.pengutronix.rauc"
        } else {
            ""
        },
        config.system.compatible
    );
    notify(&[NotifyState::Ready, NotifyState::Status("idle")]);

    let watchdog = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    if let Some(w) = watchdog {
        log::info!("pinging the systemd watchdog every {w:?}");
    }
    let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snap = agent.watch();
    let mut last_status = String::new();
    let outcome = loop {
        tokio::select! {
            _ = sigterm.recv() => break Ok("SIGTERM"),
            _ = sigint.recv() => break Ok("SIGINT"),
            lost = name_lost.next() => break match lost {
                Some(l) => Err(Failure::Failed(format!(
                    "lost the bus name {}", l.args().map(|a| a.name.to_string()).unwrap_or_default()
                ))),
                None => Err(Failure::Failed("the system bus connection closed".into())),
            },
            // The ping comes from this loop, and only after the agent answered: a hung loop
            // or a hung agent stops the pings and systemd restarts the service.
            _ = tick.tick(), if watchdog.is_some() => {
                let budget = watchdog.unwrap_or_default() / 2;
                match responsive(&agent, &served.conn, budget).await {
                    Ok(()) => notify(&[NotifyState::Watchdog]),
                    Err(e) => log::error!("watchdog: {e}; not pinging"),
                }
            }
            changed = snap.changed() => {
                if changed.is_err() {
                    break Err(Failure::Failed("the agent stopped".into()));
                }
                let s = snap.borrow_and_update().clone();
                let text = status_text(&s);
                if text != last_status {
                    notify(&[NotifyState::Status(&text)]);
                    last_status = text;
                }
            }
        }
    };
    match &outcome {
        Ok(sig) => {
            log::info!("{sig} received");
            log::info!("stopping");
        }
        Err(e) => log::error!("stopping: {e}"),
    }
    notify(&[NotifyState::Stopping]);
    leave_running_install(&agent);
    drop(served);
    outcome.map(|_| ())
}

/// STATUS= text: "idle", or "Installing 42%: Writing rootfs.1".
fn status_text(s: &crate::agent::Snapshot) -> String {
    match s.operation {
        Operation::Idle if s.last_error.is_empty() => "idle".to_owned(),
        Operation::Idle => format!("idle; last error: {}", s.last_error),
        Operation::Installing => {
            format!("Installing {}%: {}", s.progress.percent, s.progress.message)
        }
    }
}

/// A stop does not cancel a running install: a shutdown or `systemctl restart` in the
/// middle of an update must not lose it. The target slot is already out of the boot
/// selection and the journal names the transaction, so the next start re-checks what
/// landed chunk by chunk and carries on, exactly as after a crash or a power cut.
fn leave_running_install(agent: &crate::agent::AgentHandle) {
    let snap = agent.snapshot();
    if snap.operation == Operation::Installing {
        log::info!(
            "install {} is left to resume at the next start ({}%)",
            snap.transaction,
            snap.progress.percent
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_this_process() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("2000000"), Some(&me)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("1"), None), None);
        assert_eq!(watchdog_interval(Some("soon"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }
}
