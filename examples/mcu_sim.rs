//! A simulated MCUboot/Zephyr microcontroller speaking MCUmgr SMP on a pty and/or UDP,
//! for the simulated gateway and for trying `rota mcu` by hand:
//!
//! ```text
//! cargo run --example mcu_sim -- --pty --udp 127.0.0.1:1337
//! pty /dev/pts/3
//! udp 127.0.0.1:1337
//! ```
//! Point a `[mcu.NAME]` section at the printed pty (`transport = "serial"`) or address
//! (`transport = "udp"`). It runs until killed; with `--status` it prints the slots
//! whenever they change.

#[path = "../tests/mcu_sim/mod.rs"]
mod mcu_sim;

use clap::Parser;
use mcu_sim::{Faults, Sim, SimConfig};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Simulated MCUboot/Zephyr node speaking MCUmgr SMP")]
struct Args {
    /// Serve on a new pty (its path is printed)
    #[arg(long)]
    pty: bool,
    /// Serve on UDP at this address (port 0 picks one)
    #[arg(long, value_name = "ADDR")]
    udp: Option<String>,
    /// Pace the pty at this baud rate (8N1)
    #[arg(long)]
    baud: Option<u32>,
    /// Reassembly buffer the node reports (MCUmgr params buf_size)
    #[arg(long, default_value_t = 1024)]
    buf_size: u32,
    /// Accept raw images (no MCUboot header), identified by their SHA-256
    #[arg(long)]
    raw: bool,
    /// Factory image in the primary slot (default: a built-in 1.0.0)
    #[arg(long, value_name = "FILE")]
    initial: Option<PathBuf>,
    /// Reboot time in milliseconds
    #[arg(long, default_value_t = 100)]
    reboot_ms: u64,
    /// Only speak SMP v1
    #[arg(long)]
    v1_only: bool,
    /// Test images crash before confirming (MCUboot reverts them)
    #[arg(long)]
    boot_fail: bool,
    /// Test images confirm themselves when they boot
    #[arg(long)]
    self_confirm: bool,
    /// Ignore every Nth request
    #[arg(long, default_value_t = 0)]
    drop_every: u32,
    /// Corrupt every Nth answer
    #[arg(long, default_value_t = 0)]
    corrupt_every: u32,
    /// Print the slots whenever they change
    #[arg(long)]
    status: bool,
}

fn main() {
    let a = Args::parse();
    if !a.pty && a.udp.is_none() {
        eprintln!("mcu_sim: give --pty and/or --udp ADDR");
        std::process::exit(2);
    }
    let mut cfg = SimConfig {
        buf_size: a.buf_size,
        accept_raw: a.raw,
        reboot_time: Duration::from_millis(a.reboot_ms),
        v1_only: a.v1_only,
        baud: a.baud,
        ..Default::default()
    };
    if let Some(p) = &a.initial {
        cfg.initial = std::fs::read(p).unwrap_or_else(|e| {
            eprintln!("mcu_sim: cannot read {}: {e}", p.display());
            std::process::exit(1)
        });
    }
    let mut sim = Sim::new(cfg);
    sim.set_faults(Faults {
        boot_fail: a.boot_fail,
        self_confirm: a.self_confirm,
        drop_every: a.drop_every,
        corrupt_every: a.corrupt_every,
        ..Default::default()
    });
    let mut out = std::io::stdout();
    if a.pty {
        let p = sim.serve_pty().unwrap_or_else(|e| {
            eprintln!("mcu_sim: cannot open a pty: {e}");
            std::process::exit(1)
        });
        let _ = writeln!(out, "pty {}", p.display());
    }
    if let Some(addr) = &a.udp {
        let local = sim.serve_udp(addr).unwrap_or_else(|e| {
            eprintln!("mcu_sim: cannot bind UDP {addr}: {e}");
            std::process::exit(1)
        });
        let _ = writeln!(out, "udp {local}");
    }
    let _ = out.flush();
    let mut last = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if !a.status {
            continue;
        }
        let now: String = sim
            .dev()
            .states()
            .iter()
            .map(|s| {
                format!(
                    "slot {} {} [{}] {}",
                    s.slot,
                    s.version,
                    s.flags(),
                    hex::encode(&s.hash[..s.hash.len().min(8)])
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if now != last {
            let _ = writeln!(out, "state {now}");
            let _ = out.flush();
            last = now;
        }
    }
}
