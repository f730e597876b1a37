//! `rota mcu list|state|relay`: MCU nodes from the config.
//!
//! These commands talk to the nodes directly over their configured transport (not
//! through the service), and remember what they saw in the data dir like the service
//! does. A per-node lock keeps them off a node the service is relaying to: they
//! answer "busy" then.

use super::{CliResult, Failure, McuCommand};
use crate::config::{Config, McuSection, McuTransportKind};
use crate::mcu::relay::{self, RelayOutcome, RelayPhase, RelayProgress};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::AtomicBool;

pub fn run(config: &Path, cmd: McuCommand) -> CliResult {
    let cfg = Config::load(config).map_err(|e| Failure::Failed(e.to_string()))?;
    match cmd {
        McuCommand::List { json } => list(&cfg, json),
        McuCommand::State { name } => state(&cfg, &name),
        McuCommand::Relay { name, image } => relay(&cfg, &name, &image),
    }
}

fn node<'a>(cfg: &'a Config, name: &str) -> Result<&'a McuSection, Failure> {
    cfg.mcu.get(name).ok_or_else(|| {
        let known: Vec<&str> = cfg.mcu.keys().map(String::as_str).collect();
        Failure::Usage(format!(
            "no MCU node named {name:?} in {} (configured: {})",
            cfg.path.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
    })
}

fn transport_text(m: &McuSection) -> String {
    match m.transport {
        McuTransportKind::Serial => {
            format!(
                "serial {} @ {}",
                m.device
                    .as_deref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                m.baud
            )
        }
        McuTransportKind::Udp => format!("udp {}", m.address.as_deref().unwrap_or("")),
    }
}

fn list(cfg: &Config, json: bool) -> CliResult {
    let data_dir = &cfg.system.data_dir;
    // Every node at once: an unreachable node costs its timeout, not everyone's.
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cfg
            .mcu
            .iter()
            .map(|(name, m)| s.spawn(move || relay::node_report(name, m, data_dir, true)))
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut rows = Vec::new();
    for ((name, m), r) in cfg.mcu.iter().zip(reports) {
        let r = r.map_err(|_| Failure::Failed(format!("querying MCU node {name} failed")))?;
        rows.push((transport_text(m), r));
    }
    if json {
        let arr: Vec<serde_json::Value> = rows
            .iter()
            .map(|(t, r)| {
                serde_json::json!({
                    "name": r.name, "transport": t, "version": r.version,
                    "state": r.state, "last_error": r.last_error,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(arr));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no MCU nodes configured");
        return Ok(());
    }
    println!(
        "{:<12} {:<32} {:<12} {:<12} LAST ERROR",
        "NAME", "TRANSPORT", "VERSION", "STATE"
    );
    for (t, r) in rows {
        println!(
            "{:<12} {:<32} {:<12} {:<12} {}",
            r.name,
            t,
            or_dash(&r.version),
            r.state,
            r.last_error
        );
    }
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn state(cfg: &Config, name: &str) -> CliResult {
    let m = node(cfg, name)?;
    let st = relay::node_state(name, m, &cfg.system.data_dir)
        .map_err(|e| Failure::Failed(format!("MCU node {name}: {e}")))?;
    let buf = st
        .buf_size
        .map(|b| format!(", buffer {b} bytes"))
        .unwrap_or_default();
    println!("node {name} ({}){buf}", transport_text(m));
    for s in &st.slots {
        println!(
            "  image {} slot {}: version {:<10} {:<40} hash {}",
            s.image,
            s.slot,
            or_dash(&s.version),
            s.flags(),
            hex::encode(&s.hash)
        );
    }
    Ok(())
}

fn relay(cfg: &Config, name: &str, image: &Path) -> CliResult {
    let m = node(cfg, name)?;
    let tty = std::io::stderr().is_terminal();
    let mut last: Option<(RelayPhase, u8)> = None;
    let mut show = |p: RelayProgress| {
        let pct = p.percent();
        let step = if tty { 1 } else { 10 };
        let show = match last {
            None => true,
            Some((ph, pc)) => ph != p.phase || pct / step != pc / step,
        };
        if show {
            if tty {
                eprint!(
                    "\r\x1b[K{name}: {:>3}% {}: {}",
                    pct,
                    p.phase.as_str(),
                    p.message
                );
                if p.phase != RelayPhase::Uploading {
                    eprintln!();
                }
            } else {
                eprintln!("{name}: {pct:>3}% {}: {}", p.phase.as_str(), p.message);
            }
            last = Some((p.phase, pct));
        }
    };
    let cancel = AtomicBool::new(false);
    let outcome = relay::relay_file(name, m, image, &cfg.system.data_dir, &mut show, &cancel);
    if tty {
        eprintln!();
    }
    match outcome {
        Ok(o @ RelayOutcome::Reverted { .. }) => Err(Failure::Failed(format!(
            "MCU node {name}: {}",
            o.describe()
        ))),
        Ok(o) => {
            println!("{name}: {}", o.describe());
            Ok(())
        }
        Err(e) => Err(Failure::Failed(format!("MCU node {name}: {e}"))),
    }
}
