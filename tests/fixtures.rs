//! The fixtures themselves: `scripts/sim-gateway.sh` makes the same gateway as the Rust
//! fixture, and every fixture that starts processes (gateway with bus, service and a bus
//! monitor; nginx; the slow nginx; the hawkBit simulator; the packaging tests' bus and
//! service; the script's bus and service) leaves nothing running once stopped: no process
//! it started, nor any descendant of one (nginx's worker), nor any process whose command
//! line or working directory is in its temp dir.

// pkg_support builds on support's fixture and procs files: this test needs both modules.
#![allow(clippy::duplicate_mod)]

mod pkg_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::fixture::{Fixture, Run};
use support::gateway::Gateway;
use support::procs::{mentioning, tree, wait_gone, Proc};

fn script() -> Command {
    let mut c = Command::new("bash");
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/sim-gateway.sh"
    ))
    .env("ROTA", env!("CARGO_BIN_EXE_rota"));
    c
}

/// Every file below `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

fn text(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// What runs for a fixture now: every process in or naming `dir`, and the trees of
/// `pids` and of those.
fn running(dir: &Path, pids: &[u32]) -> Vec<Proc> {
    let mut all: Vec<Proc> = Vec::new();
    let roots = mentioning(dir).into_iter().map(|(p, _)| p);
    for root in roots.chain(pids.iter().map(|&p| p as i32)) {
        for p in tree(root) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
    }
    all
}

/// Asserts that none of `before` runs and nothing names `dir` (after a drop, which
/// waits: so no grace period here).
fn assert_nothing_left(what: &str, dir: &Path, before: &[Proc]) {
    let left: Vec<(i32, String)> = wait_gone(before, std::time::Duration::ZERO)
        .into_iter()
        .map(|p| (p.pid, p.cmdline()))
        .collect();
    assert!(left.is_empty(), "{what}: still running: {left:?}");
    let named = mentioning(dir);
    assert!(
        named.is_empty(),
        "{what}: still running in {dir:?}: {named:?}"
    );
}

#[test]
fn the_script_makes_the_gateway_the_tests_use() {
    let fx = Fixture::builder()
        .dbus("rauc-compat = true")
        .http("retries = 3")
        .build();
    let tmp = tempfile::tempdir().unwrap();
    let sim = tmp.path().join("gw");
    Run::of(script().args(["create", sim.to_str().unwrap()]).args([
        "--slot-size",
        &(8 << 20).to_string(),
        "--dbus",
        "rauc-compat = true",
        "--http",
        "retries = 3",
    ]))
    .success();
    assert_eq!(files(&sim), files(fx.dir.path()));
    for name in ["system.toml", "env.txt", "cmdline"] {
        assert_eq!(text(&sim, name), text(fx.dir.path(), name), "{name}");
    }
    assert_eq!(
        std::fs::read(sim.join("uboot.env")).unwrap(),
        fx.read("uboot.env"),
        "the same env image"
    );
    assert_eq!(
        text(&sim, "fw_env.config"),
        text(fx.dir.path(), "fw_env.config")
            .replace(fx.dir.path().to_str().unwrap(), sim.to_str().unwrap())
    );
    for slot in ["a.img", "b.img"] {
        assert_eq!(
            std::fs::metadata(sim.join(slot)).unwrap().len(),
            fx.read(slot).len() as u64,
            "{slot}"
        );
    }

    // Its bus and service answer, and are gone after `stop`.
    Run::of(script().args(["start", sim.to_str().unwrap()])).success();
    let env = Run::of(script().args(["env", sim.to_str().unwrap()])).success();
    let mut status = Command::new(env!("CARGO_BIN_EXE_rota"));
    status.args(["status", "--json"]);
    for kv in env.trim().trim_start_matches("export ").split(' ') {
        let (k, v) = kv.split_once('=').unwrap();
        status.env(k, v);
    }
    let st: serde_json::Value = serde_json::from_str(&Run::of(&mut status).success()).unwrap();
    assert_eq!(st["booted"], "A", "{st}");
    let pids: Vec<u32> = ["service.pid", "bus.pid"]
        .iter()
        .map(|f| text(&sim, f).trim().parse().unwrap())
        .collect();
    let before = running(&sim, &pids);
    assert!(before.len() >= 2, "bus and service run: {before:?}");
    Run::of(script().args(["stop", sim.to_str().unwrap()])).success();
    assert_nothing_left("sim-gateway.sh", &sim, &before);
}

#[test]
fn a_gateway_with_its_service_bus_monitor_and_slow_http_leaves_nothing_running() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let monitor = gw.monitor("type='signal'");
    let slow = gw.slow_http(&gw.path("www"), 1000);
    let dir = gw.dir.path().to_owned();
    let before = running(&dir, &[slow.pid()]);
    assert!(
        tree(slow.pid() as i32).len() >= 2,
        "nginx runs a master and a worker"
    );
    assert!(before.len() >= 5, "{before:?}");
    drop(monitor);
    drop(slow);
    drop(gw);
    assert_nothing_left("gateway", &dir, &before);
}

#[test]
fn nginx_stops_with_its_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    support::nginx::make_pki(&d.join("pki"));
    std::fs::create_dir_all(d.join("www")).unwrap();
    let ng = support::nginx::Nginx::start(&d.join("www"), &d.join("pki"), &d.join("nginx"));
    let before = running(d, &[ng.pid()]);
    assert!(tree(ng.pid() as i32).len() >= 2, "a master and a worker");
    drop(ng);
    assert_nothing_left("nginx", d, &before);
}

#[test]
fn the_hawkbit_simulator_stops() {
    let sim = support::hawkbit_sim::HawkbitSim::start();
    let before = tree(sim.pid() as i32);
    assert!(!before.is_empty());
    drop(sim);
    let left = wait_gone(&before, std::time::Duration::ZERO);
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn the_packaging_bus_and_service_stop() {
    let gw = pkg_support::Gateway::new("");
    let bus = pkg_support::Bus::start(gw.dir.path(), support::fixture::OPEN_POLICY);
    let svc = pkg_support::Service::start(&gw, &bus, &[]);
    let before = running(gw.dir.path(), &[bus.pid(), svc.pid()]);
    assert!(before.len() >= 2, "{before:?}");
    drop(svc);
    drop(bus);
    assert_nothing_left("pkg_support", gw.dir.path(), &before);
}
