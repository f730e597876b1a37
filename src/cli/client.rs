//! `rota install|cancel|status|mark|poll`: clients of the running service on the system
//! bus (`DBUS_SYSTEM_BUS_ADDRESS` is honoured).
//!
//! `install` subscribes to progress and `Completed` before it calls `Install`, so no event
//! is missed; on a terminal it draws a progress bar, otherwise it prints one line per
//! step, and with `--json` one JSON object per event.

use super::{CliResult, Failure};
use crate::service::proxy::Agent1Proxy;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::IsTerminal;
use zbus::zvariant::Value;

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the runtime: {e}")))
}

/// The system bus and a proxy of the native interface; exit 2 when the bus or the
/// service is not there.
async fn connect() -> Result<(zbus::Connection, Agent1Proxy<'static>), Failure> {
    let unreachable = |e: zbus::Error| {
        Failure::Usage(format!(
            "cannot reach the rota service on the system bus: {e}"
        ))
    };
    let conn = zbus::Connection::system().await.map_err(unreachable)?;
    let proxy = Agent1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(unreachable)?;
    // Fail early, with exit code 2, when nobody owns the name.
    let dbus = zbus::fdo::DBusProxy::new(&conn)
        .await
        .map_err(unreachable)?;
    let owned = dbus
        .name_has_owner(
            zbus::names::BusName::try_from(crate::service::BUS_NAME)
                .map_err(|e| unreachable(e.into()))?,
        )
        .await
        .map_err(|e| unreachable(e.into()))?;
    if !owned {
        return Err(Failure::Usage(format!(
            "cannot reach the rota service on the system bus: nobody owns {} (is rota.service running?)",
            crate::service::BUS_NAME
        )));
    }
    Ok((conn, proxy))
}

/// A D-Bus method error: the service's own message, without the error name.
fn call_failed(e: zbus::Error) -> Failure {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) if name.starts_with("io.rota.Error.") => {
            Failure::Failed(msg)
        }
        zbus::Error::MethodError(name, msg, _)
            if name.as_str() == "org.freedesktop.DBus.Error.AccessDenied" =>
        {
            Failure::Failed(format!(
                "access denied by the bus policy: {}",
                msg.unwrap_or_default()
            ))
        }
        // The service left the bus between the check and the call.
        zbus::Error::MethodError(name, msg, _)
            if matches!(
                name.as_str(),
                "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner"
            ) =>
        {
            Failure::Usage(format!(
                "cannot reach the rota service on the system bus: {}",
                msg.unwrap_or_default()
            ))
        }
        other => Failure::Failed(other.to_string()),
    }
}

/// The source as the service needs it: an unknown scheme refused by name, a relative
/// path made absolute (the service cannot know this shell's directory).
fn absolute_source(source: &str) -> Result<String, Failure> {
    Ok(
        match crate::model::Location::parse(source).map_err(Failure::Usage)? {
            crate::model::Location::File(p) => std::path::absolute(&p)
                .map_err(|e| Failure::Usage(format!("{}: {e}", p.display())))?
                .display()
                .to_string(),
            url @ crate::model::Location::Http(_) => url.to_string(),
        },
    )
}

/// `rota install --dry-run`: what the install would download, nothing written.
pub fn estimate(
    source: &str,
    json: bool,
    force_version: bool,
    ignore_compatible: bool,
) -> CliResult {
    let source = absolute_source(source)?;
    let (download, reuse, zero, total) = runtime()?.block_on(async move {
        let (_conn, proxy) = connect().await?;
        let mut opts: HashMap<&str, Value> = HashMap::new();
        if force_version {
            opts.insert("force-version", Value::from(true));
        }
        if ignore_compatible {
            opts.insert("ignore-compatible", Value::from(true));
        }
        proxy
            .estimate_download(&source, opts)
            .await
            .map_err(call_failed)
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({"download": download, "reuse": reuse, "zero": zero, "total": total})
        );
    } else {
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "would download {download} bytes ({:.2} MiB) for {:.1} MiB of images: {:.1} MiB already on the device, {:.1} MiB zero",
            mib(download),
            mib(total),
            mib(reuse),
            mib(zero)
        );
    }
    Ok(())
}

pub fn install(
    source: &str,
    json: bool,
    force_version: bool,
    ignore_compatible: bool,
    reboot: bool,
) -> CliResult {
    let source = absolute_source(source)?;
    runtime()?.block_on(async move {
        let (conn, proxy) = connect().await?;
        // Subscribe before calling Install, so no event is missed: one ordered stream of
        // the service's signals (PropertiesChanged and Completed), and the name's owner.
        // Signals count only from the connection that owns the service name: anyone on
        // the bus may send a `Completed` (even straight to us), and a match on the
        // well-known name is not checked on our side. The owner is fixed now; if it
        // changes, the service stopped (handled below).
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.map_err(call_failed)?;
        let mut owner = dbus
            .receive_name_owner_changed_with_args(&[(0, crate::service::BUS_NAME)])
            .await
            .map_err(call_failed)?;
        let service: zbus::names::OwnedUniqueName = dbus
            .get_name_owner(zbus::names::BusName::WellKnown(
                zbus::names::WellKnownName::from_static_str_unchecked(crate::service::BUS_NAME),
            ))
            .await
            .map_err(|e| call_failed(e.into()))?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(service.as_str())
            .and_then(|b| b.path(crate::service::OBJECT_PATH))
            .map_err(call_failed)?
            .build();
        let mut signals = zbus::MessageStream::for_match_rule(rule, &conn, Some(MAX_QUEUED_SIGNALS))
            .await
            .map_err(call_failed)?;
        let from_service = |m: &zbus::Message| {
            m.header().sender().is_some_and(|s| s.as_str() == service.as_str())
        };
        let mut opts: HashMap<&str, Value> = HashMap::new();
        if force_version {
            opts.insert("force-version", Value::from(true));
        }
        if ignore_compatible {
            opts.insert("ignore-compatible", Value::from(true));
        }
        if reboot {
            opts.insert("reboot", Value::from(true));
        }
        let transaction = proxy.install(&source, opts).await.map_err(call_failed)?;
        let mut view = View::new(json, &transaction);
        // Progress counts once the service says this transaction is the current one.
        let mut ours = false;
        loop {
            tokio::select! {
                biased;
                msg = signals.next() => match msg {
                    Some(Ok(m)) if !from_service(&m) => {
                        log::debug!("ignored a signal from {:?}, not the service", m.header().sender());
                    }
                    Some(Ok(m)) => match decode_signal(&m) {
                        Some(Signal::Transaction(t)) => ours = t == transaction,
                        Some(Signal::Progress(p)) if ours => view.progress(&p),
                        Some(Signal::Zero(z)) if ours => view.zero = z,
                        Some(Signal::Completed(t, result, message)) if t == transaction => {
                            confirm(&proxy, &transaction, result).await?;
                            view.done(result, &message);
                            return match result {
                                0 => Ok(()),
                                _ => Err(Failure::Failed(message)),
                            };
                        }
                        _ => {}
                    },
                    Some(Err(e)) => log::debug!("unreadable signal: {e}"),
                    None => return Err(Failure::Failed("lost the connection to the system bus".into())),
                },
                change = owner.next() => {
                    let gone = match &change {
                        Some(c) => c.args().map(|a| a.new_owner.is_none()).unwrap_or(false),
                        None => true,
                    };
                    if gone {
                        view.abandon();
                        return Err(Failure::Failed(format!(
                            "the rota service stopped during install {transaction}; \
                             it resumes when the service starts again (see `rota status`)"
                        )));
                    }
                }
            }
        }
    })
}

/// Asks the service how the install really ended before the command reports success:
/// the recorded last install must be this transaction, finished, and not failed. (A
/// failure is reported as it comes: it claims nothing that could be wrongly believed.)
async fn confirm(proxy: &Agent1Proxy<'_>, transaction: &str, result: i32) -> Result<(), Failure> {
    if result != 0 {
        return Ok(());
    }
    let text = proxy.get_status().await.map_err(call_failed)?;
    #[derive(serde::Deserialize)]
    struct Status {
        last_install: Option<crate::model::LastInstall>,
    }
    let status: Status = serde_json::from_str(&text)
        .map_err(|e| Failure::Failed(format!("the service's status is not readable: {e}")))?;
    let confirmed = status.last_install.as_ref().is_some_and(|li| {
        li.transaction == transaction
            && li.result != crate::model::UpdateResult::Installing
            && !li.result.is_failure()
    });
    if !confirmed {
        let seen = status
            .last_install
            .map(|li| format!("{} {}", li.transaction, li.result))
            .unwrap_or_else(|| "none".into());
        return Err(Failure::Failed(format!(
            "install {transaction}: the completion signal (result {result}) does not match the service's record of the last install ({seen}); see `rota status`"
        )));
    }
    Ok(())
}

/// Signals queued while the client is busy (progress comes a few times per second).
const MAX_QUEUED_SIGNALS: usize = 4096;

/// What `install` listens for.
enum Signal {
    Transaction(String),
    Progress(Prog),
    /// Bytes of zero runs written so far (`ProgressZero`).
    Zero(u64),
    Completed(String, i32, String),
}

/// Decodes a signal of `io.rota.Agent1`; anything else, or anything malformed, is None.
fn decode_signal(m: &zbus::Message) -> Option<Signal> {
    use zbus::zvariant::OwnedValue;
    let h = m.header();
    match (h.interface()?.as_str(), h.member()?.as_str()) {
        ("io.rota.Agent1", "Completed") => {
            let (t, r, msg): (String, i32, String) = m.body().deserialize().ok()?;
            Some(Signal::Completed(t, r, msg))
        }
        ("org.freedesktop.DBus.Properties", "PropertiesChanged") => {
            let (iface, mut changed, _): (String, HashMap<String, OwnedValue>, Vec<String>) =
                m.body().deserialize().ok()?;
            if iface != "io.rota.Agent1" {
                return None;
            }
            if let Some(t) = changed.remove("Transaction") {
                return String::try_from(t).ok().map(Signal::Transaction);
            }
            if let Some(z) = changed.remove("ProgressZero") {
                return u64::try_from(z).ok().map(Signal::Zero);
            }
            let p = changed.remove("Progress")?;
            // Check the shape first: a structure of another length is not ours to unpack.
            if p.value_signature().to_string() != "(ustttttt)" {
                return None;
            }
            Prog::try_from(p).ok().map(Signal::Progress)
        }
        _ => None,
    }
}

type Prog = (u32, String, u64, u64, u64, u64, u64, u64);

/// How install progress is shown.
struct View {
    json: bool,
    /// Zero-run bytes written so far, from `ProgressZero`.
    zero: u64,
    bar: Option<super::bar::Bar>,
    last_message: String,
    transaction: String,
}

impl View {
    fn new(json: bool, transaction: &str) -> View {
        let bar = (!json && std::io::stdout().is_terminal()).then(super::bar::Bar::default);
        if json {
            println!(
                "{}",
                serde_json::json!({"event": "started", "transaction": transaction})
            );
        } else if bar.is_none() {
            println!("install {transaction} started");
        }
        View {
            json,
            zero: 0,
            bar,
            last_message: String::new(),
            transaction: transaction.to_owned(),
        }
    }

    fn progress(&mut self, p: &Prog) {
        let (percent, message, done, total, downloaded, reused, rate, eta) = p;
        if self.json {
            println!(
                "{}",
                serde_json::json!({"event": "progress", "percent": percent, "message": message, "bytes_done": done,
                    "bytes_total": total, "bytes_downloaded": downloaded, "bytes_reused": reused, "bytes_zero": self.zero,
                    "rate": rate, "eta_secs": eta})
            );
            return;
        }
        let detail = if *total > 0 {
            format!(
                "{message} — {} / {} MiB, {:.1} MiB/s, ETA {eta}s",
                done >> 20,
                total >> 20,
                *rate as f64 / 1048576.0
            )
        } else {
            message.clone()
        };
        match &mut self.bar {
            Some(b) => b.set(*percent, detail),
            None if *message != self.last_message => println!("{percent:>3}% {message}"),
            None => {}
        }
        self.last_message = message.clone();
    }

    /// `result`: 0 success, 1 failed, 2 cancelled (the native `Completed` codes).
    fn done(&mut self, result: i32, message: &str) {
        if let Some(b) = &mut self.bar {
            b.clear();
        }
        let outcome = match result {
            0 => "success",
            2 => "cancelled",
            _ => "failed",
        };
        if self.json {
            println!(
                "{}",
                serde_json::json!({"event": "completed", "transaction": self.transaction,
                    "result": result, "outcome": outcome, "message": message})
            );
        } else if result == 0 {
            println!("{message}");
        }
    }

    /// The service went away before `Completed`.
    fn abandon(&mut self) {
        if let Some(b) = &mut self.bar {
            b.abandon();
        }
        if self.json {
            println!(
                "{}",
                serde_json::json!({"event": "service-stopped", "transaction": self.transaction})
            );
        }
    }
}

pub fn cancel() -> CliResult {
    runtime()?.block_on(async {
        connect().await?.1.cancel().await.map_err(call_failed)?;
        println!("cancel requested");
        Ok(())
    })
}

pub fn status(json: bool) -> CliResult {
    runtime()?.block_on(async move {
        let text = connect().await?.1.get_status().await.map_err(call_failed)?;
        if json {
            println!("{text}");
            return Ok(());
        }
        let st: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Failure::Failed(e.to_string()))?;
        print_status(&st);
        Ok(())
    })
}

fn print_status(st: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    println!("compatible: {}", s(&st["compatible"]));
    println!("booted:     {}", s(&st["booted"]));
    println!("primary:    {}", s(&st["primary"]));
    println!("operation:  {}", s(&st["operation"]));
    if !s(&st["last_error"]).is_empty() {
        println!("last error: {}", s(&st["last_error"]));
    }
    println!("slots:");
    for slot in st["slots"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {:<3} {:<9} boot {:<5} (attempts {}) version {:<10} {}",
            s(&slot["name"]),
            s(&slot["bootname"]),
            s(&slot["state"]),
            s(&slot["boot_status"]),
            slot["boot_attempts_left"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            slot["version"].as_str().unwrap_or("-"),
            s(&slot["device"])
        );
        if let Some(p) = slot["parent"].as_str() {
            println!("             parent {p}");
        }
    }
    if let Some(li) = st["last_install"].as_object() {
        let field = |k: &str| li.get(k).and_then(|v| v.as_str()).unwrap_or("");
        // An install that failed early has no version or slot yet: say how far it got
        // rather than print blanks.
        let what = match (field("version"), field("slot")) {
            ("", _) => "failed before the bundle was read".to_owned(),
            (v, "") => format!("{v}, before a slot was written"),
            (v, slot) => format!("{v} → {slot}"),
        };
        println!(
            "last install: {what} ({}), transaction {}",
            field("result"),
            field("transaction")
        );
        if !field("error").is_empty() && field("error") != s(&st["last_error"]) {
            println!("              {}", field("error"));
        }
    }
    for m in st["mcu"].as_array().into_iter().flatten() {
        println!(
            "mcu {}: version {} ({})",
            s(&m["name"]),
            s(&m["version"]),
            s(&m["state"])
        );
    }
}

pub fn mark(state: &str, slot: &str) -> CliResult {
    runtime()?.block_on(async {
        let (_, message) = connect()
            .await?
            .1
            .mark(state, slot)
            .await
            .map_err(call_failed)?;
        println!("{message}");
        Ok(())
    })
}

pub fn poll() -> CliResult {
    runtime()?.block_on(async {
        connect().await?.1.poll().await.map_err(call_failed)?;
        println!("poll requested");
        Ok(())
    })
}
