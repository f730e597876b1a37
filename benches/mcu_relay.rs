//! Relay throughput (a benchmark, not a test): rota's full relay flow against the MCU
//! simulator
//! - over a pty paced at 115200 baud 8N1 (11520 bytes/s each way), compared with the
//!   line's payload rate after framing: 11520 B/s × image bytes / framed bytes the
//!   upload put on the line (base64, line markers, newlines, length, CRC, SMP header
//!   and CBOR keys all count as framing);
//! - over UDP loopback, where no line rate bounds the transfer: MB/s, round trips, and
//!   the payload share of the datagram bytes (IPv4 + UDP headers included).
//!
//! `cargo bench --bench mcu_relay` (MCU_BENCH_SERIAL_KIB / MCU_BENCH_UDP_KIB resize the images).

#[path = "../tests/mcu_sim/mod.rs"]
mod mcu_sim;

use mcu_sim::{tools, Sim, SimConfig};
use rota::config::McuSection;
use rota::mcu::relay::{self, RelayOutcome, RelayPhase, RelayProgress};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

struct Run {
    bytes: u64,
    secs: f64,
    wire_rx: u64,
    requests: u64,
}

fn run(sim: &Sim, cfg: &McuSection, image: &std::path::Path, data: &std::path::Path) -> Run {
    let bytes = std::fs::metadata(image).unwrap().len();
    let mut start: Option<(Instant, u64, u64)> = None;
    let mut end: Option<(Instant, u64, u64)> = None;
    let snap = |sim: &Sim| {
        let d = sim.dev();
        (Instant::now(), d.stats.wire_rx, d.stats.requests)
    };
    let out = relay::relay_file(
        "bench",
        cfg,
        image,
        data,
        &mut |p: RelayProgress| {
            if p.phase == RelayPhase::Uploading && start.is_none() {
                start = Some(snap(sim));
            }
            if p.phase == RelayPhase::Uploading && p.bytes_done == p.bytes_total && end.is_none() {
                end = Some(snap(sim));
            }
        },
        &AtomicBool::new(false),
    )
    .expect("relay failed");
    assert!(matches!(out, RelayOutcome::Confirmed { .. }), "{out:?}");
    assert_eq!(sim.dev().primary.data, std::fs::read(image).unwrap());
    let (s, e) = (start.unwrap(), end.unwrap());
    Run {
        bytes,
        secs: (e.0 - s.0).as_secs_f64(),
        wire_rx: e.1 - s.1,
        requests: e.2 - s.2,
    }
}

fn kib(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        * 1024
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without
    // it, and a 30-second benchmark has no place in the test suite.
    if !std::env::args().any(|a| a == "--bench") {
        println!("mcu_relay benchmark: run it with `cargo bench --bench mcu_relay`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    println!("MCU relay throughput (rota relay flow against the simulator)");

    let baud = 115_200u32;
    let line = f64::from(baud) / 10.0;
    let serial_size = kib("MCU_BENCH_SERIAL_KIB", 48);
    let img = dir.path().join("serial.bin");
    std::fs::write(
        &img,
        rota::mcu::image::build_unsigned(&tools::payload(serial_size, 1), (1, 1, 0, 0)),
    )
    .unwrap();
    for buf in [384u32, 1024, 2048] {
        let mut sim = Sim::new(SimConfig {
            baud: Some(baud),
            buf_size: buf,
            ..Default::default()
        });
        let pty = sim.serve_pty().unwrap();
        let cfg = tools::serial_node(&pty, Duration::from_secs(2));
        let r = run(&sim, &cfg, &img, &dir.path().join(format!("d-s{buf}")));
        let achieved = r.bytes as f64 / r.secs;
        let limit = line * r.bytes as f64 / r.wire_rx as f64;
        println!(
            "serial pty @{baud} 8N1, buf_size {buf:>4}: {} B in {:.2} s = {:.0} B/s; framing leaves {:.1}% of {:.0} B/s = {:.0} B/s; achieved {:.1}% of that ({} requests)",
            r.bytes,
            r.secs,
            achieved,
            100.0 * r.bytes as f64 / r.wire_rx as f64,
            line,
            limit,
            100.0 * achieved / limit,
            r.requests
        );
    }

    let udp_size = kib("MCU_BENCH_UDP_KIB", 4096);
    let img = dir.path().join("udp.bin");
    std::fs::write(
        &img,
        rota::mcu::image::build_unsigned(&tools::payload(udp_size, 2), (1, 2, 0, 0)),
    )
    .unwrap();
    for buf in [1024u32, 1472] {
        let mut sim = Sim::new(SimConfig {
            buf_size: buf,
            slot_size: 64 << 20,
            ..Default::default()
        });
        let addr = sim.serve_udp("127.0.0.1:0").unwrap();
        let cfg = tools::udp_node(&addr.to_string(), Duration::from_secs(2));
        let r = run(&sim, &cfg, &img, &dir.path().join(format!("d-u{buf}")));
        println!(
            "udp loopback, buf_size {buf:>4}: {} B in {:.3} s = {:.2} MiB/s; payload is {:.1}% of datagram bytes; {} round trips, {:.0} us each",
            r.bytes,
            r.secs,
            r.bytes as f64 / r.secs / (1024.0 * 1024.0),
            100.0 * r.bytes as f64 / r.wire_rx as f64,
            r.requests,
            r.secs * 1e6 / r.requests as f64
        );
    }
}
