//! `rota service`: load the config, start the agent and the D-Bus service, then run the
//! main loop until SIGTERM/SIGINT.
//!
//! The main loop tells systemd READY=1 once the bus names are taken, updates STATUS= as
//! installs progress, and pings the watchdog (WATCHDOG_USEC) only after the agent answered
//! a request in time — a hung agent stops the pings and systemd restarts the service.

use super::{CliResult, Failure};
use crate::agent::Operation;
use crate::config::Config;
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

pub fn run(config_path: &Path) -> CliResult {
    init_logging();
    let config = Config::load(config_path).map_err(|e| Failure::Failed(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(serve(config))
}

async fn serve(config: Config) -> CliResult {
    let agent = crate::agent::start(config.clone())
        .await
        .map_err(|e| Failure::Failed(e.to_string()))?;
    let _conn = crate::service::serve(&config, agent.clone())
        .await
        .map_err(|e| Failure::Failed(format!("cannot serve on the system bus: {e}")))?;
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

    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|us| Duration::from_micros(us / 2));
    let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut snap = agent.watch();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::Failed(format!("cannot watch SIGTERM: {e}")))?;
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick(), if watchdog.is_some() => {
                let budget = watchdog.unwrap_or_default() / 2;
                match tokio::time::timeout(budget, agent.status()).await {
                    Ok(Ok(_)) => notify(&[NotifyState::Watchdog]),
                    Ok(Err(e)) => log::error!("watchdog: agent answered with an error: {e}"),
                    Err(_) => log::error!("watchdog: agent did not answer within {budget:?}; not pinging"),
                }
            }
            changed = snap.changed() => {
                if changed.is_err() { break; }
                let s = snap.borrow_and_update().clone();
                let text = match s.operation {
                    Operation::Idle if s.last_error.is_empty() => "idle".to_owned(),
                    Operation::Idle => format!("idle; last error: {}", s.last_error),
                    Operation::Installing => format!("Installing {}%: {}", s.progress.percent, s.progress.message),
                };
                if text != last_status {
                    notify(&[NotifyState::Status(&text)]);
                    last_status = text;
                }
            }
        }
    }
    log::info!("stopping");
    notify(&[NotifyState::Stopping]);
    let snap = agent.snapshot();
    if snap.operation == Operation::Installing {
        // Not cancelled: the journal makes the next start resume it where it stopped.
        log::info!(
            "install {} is interrupted; it resumes when the service starts again",
            snap.transaction
        );
    }
    Ok(())
}
