//! `rota service` on a real private dbus-daemon, driven by the rota CLI and busctl:
//! installs, progress, Completed, busy, cancel, failures, caller checks, status shape,
//! sd_notify/watchdog, signals and bus loss. (The RAUC-compatible interface is in
//! `rauc_cli.rs`; the shipped introspection XML is checked against the service in
//! `docs.rs`.)

mod support;
use serde_json::Value;
use sha2::Digest;
use std::process::Child;
use std::time::{Duration, Instant};
use support::gateway::{path_str, pattern, wait_for, Gateway, Run};

/// (interface, member, payload data) of each message a monitor saw.
fn signals(msgs: Vec<Value>) -> Vec<(String, String, Value)> {
    msgs.into_iter()
        .map(|v| {
            (
                v["interface"].as_str().unwrap_or("").to_owned(),
                v["member"].as_str().unwrap_or("").to_owned(),
                v["payload"]["data"].clone(),
            )
        })
        .collect()
}

/// JSON lines of `rota install --json`.
fn events(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// `busctl --system call io.rota /io/rota io.rota.Agent1 ARGS` as nobody (uid and gid
/// 65534, no supplementary groups), switched with setpriv.
fn agent_call_as_nobody(gw: &Gateway, args: &[&str]) -> Run {
    let mut all = vec![
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "busctl",
        "--system",
        "call",
        "io.rota",
        "/io/rota",
        "io.rota.Agent1",
    ];
    all.extend_from_slice(args);
    gw.cmd("setpriv", &all)
}

/// Waits for a background CLI (killed after `secs`, which fails the test).
fn finish(mut child: Child, secs: u64) -> Run {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "rota did not finish within {secs} s: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run(child.wait_with_output().unwrap())
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// The Progress property, read with busctl: `(ustttttt)` percent, message, done, total,
/// downloaded, reused, rate, ETA — counted from the end, as the message has spaces.
struct BusProgress {
    text: String,
    done: u64,
    total: u64,
    reused: u64,
}

impl std::fmt::Display for BusProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn progress(gw: &Gateway) -> BusProgress {
    let text = gw.property("Progress");
    assert!(text.starts_with("(ustttttt) "), "{text}");
    let field = |from_end: usize| {
        text.split_whitespace()
            .rev()
            .nth(from_end)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    BusProgress {
        done: field(5),
        total: field(4),
        reused: field(2),
        text: text.clone(),
    }
}

/// Waits until the running install has written some bytes but is far from done.
fn wait_mid_write(gw: &Gateway) {
    wait_for("the install to start writing", 60, || {
        let p = progress(gw);
        p.done > 0 && p.done < p.total
    });
}

fn env_boot_selection(gw: &Gateway) -> (String, String) {
    let env = gw.fw_printenv();
    (env["BOOT_ORDER"].clone(), env["BOOT_B_LEFT"].clone())
}

/// B is out of the boot selection: not in BOOT_ORDER, or no attempts left.
fn assert_b_not_bootable(gw: &Gateway) {
    let (order, left) = env_boot_selection(gw);
    assert!(
        !order.split_whitespace().any(|b| b == "B") || left == "0",
        "B must not be bootable: BOOT_ORDER={order:?} BOOT_B_LEFT={left:?}"
    );
}

#[test]
fn cli_install_streams_json_events_and_activates_slot_b() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let (bundle, image) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(3 << 20, 5),
        "release",
    );
    let a_before = gw.read("a.img");
    let stdout = gw.rota(&["install", "--json", path_str(&bundle)]).success();
    let ev = events(&stdout);
    assert_eq!(ev[0]["event"], "started", "{stdout}");
    let tr = ev[0]["transaction"].as_str().unwrap().to_owned();
    let progress: Vec<&Value> = ev.iter().filter(|e| e["event"] == "progress").collect();
    assert!(
        progress.iter().any(|e| e["bytes_total"] == 3 << 20),
        "{stdout}"
    );
    for e in &progress {
        for key in [
            "percent",
            "bytes_done",
            "bytes_total",
            "bytes_downloaded",
            "bytes_reused",
        ] {
            assert!(e[key].is_u64(), "{key} in {e}");
        }
        assert!(e["message"].is_string(), "{e}");
    }
    let percents: Vec<u64> = progress
        .iter()
        .map(|e| e["percent"].as_u64().unwrap())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {percents:?}"
    );
    assert_eq!(percents.last(), Some(&100), "{stdout}");
    let last = ev.last().unwrap();
    assert_eq!(last["event"], "completed", "{stdout}");
    assert_eq!(last["result"], 0);
    assert_eq!(last["outcome"], "success");
    assert_eq!(last["transaction"], tr.as_str());
    assert!(
        last["message"].as_str().unwrap().contains("1.1.0"),
        "{last}"
    );
    assert_eq!(
        ev.iter().filter(|e| e["event"] == "completed").count(),
        1,
        "{stdout}"
    );
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.read("a.img"), a_before, "the booted slot is untouched");
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_ORDER"].as_str(), env["BOOT_B_LEFT"].as_str()),
        ("B A", "3")
    );
    assert_eq!(env["serial"], "GW-1", "other variables survive");
    let st = gw.status_json();
    assert_eq!(st["primary"], "rootfs.1");
    assert_eq!(st["last_install"]["result"], "activated");
    assert_eq!(st["last_install"]["transaction"], tr.as_str());
    assert_eq!(st["slots"][1]["version"], "1.1.0");
    // Log lines carry structured fields (journald fields when the journal is there).
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    assert!(
        log.contains(&format!(
            "TRANSACTION={tr} VERSION=1.1.0 SLOT=rootfs.1 BYTES={}",
            3 << 20
        )),
        "{log}"
    );
    // Human output: the status table names both slots.
    let human = gw.rota(&["status"]).success();
    assert!(
        human.contains("rootfs.1") && human.contains("activated"),
        "{human}"
    );
    // Without --json and without a terminal: plain lines, the result last.
    let (bundle, _) = gw.bundle(
        "v12",
        "acme-gateway",
        "1.2.0",
        pattern(1 << 20, 6),
        "release",
    );
    let plain = gw.rota(&["install", path_str(&bundle)]).success();
    assert!(plain.starts_with("install "), "{plain}");
    assert!(plain.contains("100% "), "{plain}");
    assert!(
        plain.trim_end().ends_with("0 reused") && plain.contains("installed 1.2.0 into rootfs.1"),
        "{plain}"
    );
}

/// A relative path is made absolute by the CLI (the service cannot know the caller's
/// directory, and says so when asked directly).
#[test]
fn relative_paths_are_resolved_by_the_cli_and_refused_on_the_bus() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let (_, image) = gw.bundle(
        "rel",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 9),
        "release",
    );
    // The CLI runs in the gateway directory.
    gw.rota(&["install", "rel.rota"]).success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    let r = gw.call("Install", &["sa{sv}", "rel.rota", "0"]);
    assert_ne!(r.code(), 0);
    assert!(
        r.stderr().contains("\"rel.rota\" is not an absolute path"),
        "{}",
        r.stderr()
    );
}

#[test]
fn cli_failures_exit_1_with_the_reason_and_2_without_service() {
    let mut gw = Gateway::new(false);
    for args in [
        &["status"][..],
        &["install", "/x.rota"],
        &["cancel"],
        &["mark", "good"],
    ] {
        let r = gw.rota(args);
        assert_eq!(r.code(), 2, "{args:?}: {}", r.stderr());
        assert!(
            r.stderr()
                .contains("cannot reach the rota service on the system bus"),
            "{}",
            r.stderr()
        );
    }
    gw.start_service();
    let env_before = gw.read("uboot.env");
    let b_before = gw.read("b.img");
    // Signed with a key the device does not trust.
    let (wrong_key, _) = gw.bundle("wk", "acme-gateway", "1.1.0", pattern(1 << 20, 1), "other");
    let r = gw.rota(&["install", path_str(&wrong_key)]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("does not match any of the 1 key(s)"),
        "{}",
        r.stderr()
    );
    // A manifest changed after signing.
    let (good, _) = gw.bundle(
        "tm",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 2),
        "release",
    );
    let mut bytes = std::fs::read(&good).unwrap();
    let at = bytes
        .windows(5)
        .position(|w| w == b"1.1.0")
        .expect("version in the manifest");
    bytes[at + 4] = b'9';
    let tampered = gw.path("tampered.rota");
    std::fs::write(&tampered, bytes).unwrap();
    let r = gw.rota(&["install", "--json", path_str(&tampered)]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("signature"), "{}", r.stderr());
    let last = events(&r.stdout()).pop().unwrap();
    assert_eq!(
        (last["result"].as_i64(), last["outcome"].as_str()),
        (Some(1), Some("failed"))
    );
    // Built for another board.
    let (wrong_compat, _) = gw.bundle("wc", "other-board", "1.1.0", pattern(1 << 20, 1), "release");
    let r = gw.rota(&["install", path_str(&wrong_compat)]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("bundle is for \"other-board\""),
        "{}",
        r.stderr()
    );
    assert_eq!(
        gw.read("uboot.env"),
        env_before,
        "env untouched by refused bundles"
    );
    assert_eq!(gw.read("b.img"), b_before);
    let st = gw.status_json();
    assert!(st["last_error"].as_str().unwrap().contains("other-board"));
    assert!(gw.property("LastError").contains("other-board"));
    let r = gw.rota(&["mark", "good", "nonsense"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("no slot named \"nonsense\""),
        "{}",
        r.stderr()
    );
    let r = gw.rota(&["mark", "great"]);
    assert_eq!(r.code(), 2, "a usage error: {}", r.stderr());
    let r = gw.rota(&["install", "/does/not/exist.rota"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("/does/not/exist.rota"),
        "{}",
        r.stderr()
    );
    let r = gw.rota(&["cancel"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("no install is running"),
        "{}",
        r.stderr()
    );
    let r = gw.rota(&["poll"]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("no [update] poll"), "{}", r.stderr());
}

/// The running version is what rota recorded for the booted slot: after "rebooting" into
/// the slot it installed, an older bundle is refused unless forced.
#[test]
fn downgrade_is_refused_unless_forced() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let (v2, _) = gw.bundle(
        "v2",
        "acme-gateway",
        "2.0.0",
        pattern(1 << 20, 12),
        "release",
    );
    gw.rota(&["install", path_str(&v2)]).success();
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "console=ttyAMA0 rota.slot=B\n").unwrap();
    gw.start_service();
    let st = gw.status_json();
    assert_eq!(st["booted"], "B");
    assert_eq!(st["last_install"]["result"], "booted");
    let a_before = gw.read("a.img");
    let (v1, image) = gw.bundle(
        "v1",
        "acme-gateway",
        "1.0.0",
        pattern(1 << 20, 13),
        "release",
    );
    let r = gw.rota(&["install", path_str(&v1)]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains("bundle version 1.0.0 is lower than the booted slot's 2.0.0"),
        "{}",
        r.stderr()
    );
    assert_eq!(gw.read("a.img"), a_before, "nothing written when refused");
    gw.rota(&["install", "--force-version", path_str(&v1)])
        .success();
    assert_eq!(&gw.read("a.img")[..image.len()], &image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "A B");
}

#[test]
fn busctl_introspects_installs_and_sees_progress_and_completed() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let xml = gw
        .busctl(&["introspect", "--xml-interface", "io.rota", "/io/rota"])
        .success();
    for needle in [
        "io.rota.Agent1",
        "name=\"Install\"",
        "name=\"Progress\" type=\"(ustttttt)\"",
        "name=\"Completed\"",
        "name=\"Mark\"",
        "name=\"GetStatus\"",
    ] {
        assert!(xml.contains(needle), "introspection lacks {needle}");
    }
    assert_eq!(gw.property("Operation"), "s \"idle\"");
    assert_eq!(gw.property("Compatible"), "s \"acme-gateway\"");
    assert_eq!(gw.property("BootSlot"), "s \"A\"");
    assert_eq!(gw.property("Primary"), "s \"rootfs.0\"");
    let (bundle, image) = gw.bundle("b", "acme-gateway", "2.0.0", pattern(2 << 20, 8), "release");
    let monitor = gw.monitor("type='signal',sender='io.rota'");
    let out = gw
        .call(
            "Install",
            &[
                "sa{sv}",
                path_str(&bundle),
                "1",
                "transaction-id",
                "s",
                "tr-42",
            ],
        )
        .success();
    assert_eq!(out.trim(), "s \"tr-42\"");
    wait_for("install to finish", 60, || {
        gw.property("Operation").contains("idle")
            && gw.status_json()["last_install"]["result"] == "activated"
    });
    let p = progress(&gw);
    assert!(
        p.text.starts_with("(ustttttt) 100 \"Installing done.\""),
        "{p}"
    );
    assert_eq!((p.done, p.total), (2 << 20, 2 << 20), "{p}");
    assert_eq!(gw.property("Transaction"), "s \"tr-42\"");
    assert_eq!(gw.property("Primary"), "s \"rootfs.1\"");
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    let signals = signals(monitor.stop());
    let completed: Vec<&Value> = signals
        .iter()
        .filter(|(i, m, _)| i == "io.rota.Agent1" && m == "Completed")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(completed.len(), 1, "{signals:?}");
    assert_eq!(completed[0][0], "tr-42");
    assert_eq!(completed[0][1], 0);
    let changed: Vec<&Value> = signals
        .iter()
        .filter(|(_, m, d)| m == "PropertiesChanged" && d[0] == "io.rota.Agent1")
        .map(|(_, _, d)| d)
        .collect();
    let saw = |prop: &str| changed.iter().any(|d| d[1].get(prop).is_some());
    for prop in ["Operation", "Progress", "Transaction", "Primary"] {
        assert!(saw(prop), "no PropertiesChanged for {prop}: {changed:?}");
    }
    let percents: Vec<u64> = changed
        .iter()
        .filter_map(|d| d[1]["Progress"]["data"][0].as_u64())
        .collect();
    assert!(percents.len() >= 3, "{percents:?}");
    // The Completed signal comes after the last progress.
    let last_completed = signals
        .iter()
        .rposition(|(_, m, _)| m == "Completed")
        .unwrap();
    let last_progress = signals
        .iter()
        .rposition(|(_, m, d)| m == "PropertiesChanged" && d[1].get("Progress").is_some())
        .unwrap();
    assert!(last_progress < last_completed);

    // GetSlotStatus in RAUC's key names, GetStatus as the CLI prints it.
    let slots = gw
        .busctl(&[
            "--json=short",
            "call",
            "io.rota",
            "/io/rota",
            "io.rota.Agent1",
            "GetSlotStatus",
        ])
        .success();
    let slots: Value = serde_json::from_str(&slots).unwrap();
    let b = &slots["data"][0][1];
    assert_eq!(slots["data"][0][1][0], "rootfs.1");
    assert_eq!(b[1]["bundle.version"]["data"], "2.0.0");
    assert_eq!(b[1]["sha256"]["data"], sha256_hex(&image).as_str());
    assert_eq!(b[1]["installed.transaction"]["data"], "tr-42");
    assert_eq!(b[1]["bootname"]["data"], "B");
    let status = gw
        .busctl(&[
            "--json=short",
            "call",
            "io.rota",
            "/io/rota",
            "io.rota.Agent1",
            "GetStatus",
        ])
        .success();
    let status: Value = serde_json::from_str(&status).unwrap();
    let doc: Value = serde_json::from_str(status["data"][0].as_str().unwrap()).unwrap();
    assert_eq!(doc, gw.status_json());

    // Unknown option, wrong type: InvalidArgument naming the key.
    let r = gw.call(
        "Install",
        &["sa{sv}", path_str(&bundle), "1", "bogus", "b", "true"],
    );
    assert_ne!(r.code(), 0);
    assert!(
        r.stderr().contains("unknown install option \"bogus\""),
        "{}",
        r.stderr()
    );
    let r = gw.call(
        "Install",
        &[
            "sa{sv}",
            path_str(&bundle),
            "1",
            "force-version",
            "s",
            "yes",
        ],
    );
    assert!(
        r.stderr()
            .contains("option force-version must be a boolean"),
        "{}",
        r.stderr()
    );
    // The error names on the bus.
    let r = gw.busctl(&[
        "--json=short",
        "call",
        "io.rota",
        "/io/rota",
        "io.rota.Agent1",
        "Mark",
        "ss",
        "great",
        "booted",
    ]);
    assert!(
        r.stderr().contains("unknown mark state \"great\""),
        "{}",
        r.stderr()
    );
    let mark = gw.call("Mark", &["ss", "good", "booted"]).success();
    assert_eq!(
        mark.trim(),
        "ss \"rootfs.0\" \"marked slot rootfs.0 as good\""
    );
}

/// One install at a time: a second one, on the bus or through the CLI, gets Busy with
/// the running transaction; the running one is not disturbed.
#[test]
fn a_second_install_while_one_runs_is_busy() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let http = gw.slow_http(&gw.path("www"), 1 << 20);
    let (url, image) = gw.slow_bundle(&http, "slow", "1.1.0", 6 << 20);
    let (other, _) = gw.bundle(
        "fast",
        "acme-gateway",
        "1.2.0",
        pattern(1 << 20, 3),
        "release",
    );
    let first = gw.spawn_rota(&["install", "--json", &url]);
    wait_mid_write(&gw);
    let tr = gw.property("Transaction");
    let r = gw.call("Install", &["sa{sv}", path_str(&other), "0"]);
    assert_ne!(r.code(), 0);
    assert!(
        r.stderr().contains("an install is already running"),
        "{}",
        r.stderr()
    );
    // The error's name on the bus, as a monitor sees the reply.
    let errors = gw.monitor("type='error',sender='io.rota'");
    let r = gw.call("Install", &["sa{sv}", path_str(&other), "0"]);
    assert_ne!(r.code(), 0);
    let names: Vec<Value> = errors
        .stop()
        .iter()
        .map(|e| e["error_name"].clone())
        .collect();
    assert_eq!(names, ["io.rota.Error.Busy"]);
    let r = gw.rota(&["install", path_str(&other)]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains("an install is already running (transaction"),
        "{}",
        r.stderr()
    );
    assert_eq!(
        gw.property("Transaction"),
        tr,
        "the running install is still the one"
    );
    let out = finish(first, 120);
    assert_eq!(out.code(), 0, "{}{}", out.stdout(), out.stderr());
    assert_eq!(events(&out.stdout()).last().unwrap()["result"], 0);
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
}

/// Cancel mid-write: Completed says cancelled, status says cancelled, and slot B is
/// out of the boot selection.
#[test]
fn cancel_mid_write_reports_cancelled_and_keeps_b_unbootable() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let http = gw.slow_http(&gw.path("www"), 1 << 20);
    let (url, _) = gw.slow_bundle(&http, "slow", "1.1.0", 6 << 20);
    let monitor = gw.monitor("type='signal',sender='io.rota'");
    let cli = gw.spawn_rota(&["install", "--json", &url]);
    wait_mid_write(&gw);
    assert_b_not_bootable(&gw);
    assert_eq!(gw.property("Operation"), "s \"installing\"");
    let out = gw.rota(&["cancel"]).success();
    assert!(out.contains("cancel requested"), "{out}");
    let r = finish(cli, 30);
    assert_eq!(r.code(), 1, "{}{}", r.stdout(), r.stderr());
    let last = events(&r.stdout()).pop().unwrap();
    assert_eq!(last["event"], "completed");
    assert_eq!(last["result"], 2);
    assert_eq!(last["outcome"], "cancelled");
    assert!(r.stderr().contains("install cancelled"), "{}", r.stderr());
    let signals = signals(monitor.stop());
    let completed: Vec<&Value> = signals
        .iter()
        .filter(|(_, m, _)| m == "Completed")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(completed.len(), 1, "{signals:?}");
    assert_eq!(completed[0][1], 2);
    assert_eq!(completed[0][2], "install cancelled");
    let st = gw.status_json();
    assert_eq!(st["operation"], "idle");
    assert_eq!(st["last_install"]["result"], "cancelled");
    assert_eq!(st["last_error"], "install cancelled");
    assert_eq!(st["primary"], "rootfs.0");
    assert_ne!(st["slots"][1]["status"], "ok");
    assert_eq!(
        gw.fw_printenv()["BOOT_ORDER"].split_whitespace().next(),
        Some("A")
    );
    assert_b_not_bootable(&gw);
    // The service is free again.
    let (bundle, image) = gw.bundle(
        "after",
        "acme-gateway",
        "1.2.0",
        pattern(1 << 20, 4),
        "release",
    );
    gw.rota(&["install", path_str(&bundle)]).success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
}

/// SIGTERM during an install (a shutdown, `systemctl restart`): the service exits 0 at
/// once, the CLI is told the service stopped, the target stays unbootable, and the next
/// start resumes the same transaction to the end.
#[test]
fn sigterm_leaves_the_running_install_to_resume_at_next_start() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let http = gw.slow_http(&gw.path("www"), 1 << 20);
    let (url, image) = gw.slow_bundle(&http, "slow", "1.1.0", 6 << 20);
    let cli = gw.spawn_rota(&["install", "--json", &url]);
    wait_mid_write(&gw);
    let tr = gw.status_json()["last_install"]["transaction"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.service_pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(gw.wait_service_exit(30), Some(0));
    let r = finish(cli, 30);
    assert_eq!(r.code(), 1);
    assert_eq!(
        events(&r.stdout()).pop().unwrap()["event"],
        "service-stopped",
        "{}",
        r.stdout()
    );
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("left to resume at the next start"), "{log}");
    assert_b_not_bootable(&gw);
    let st: Value = serde_json::from_slice(&gw.read("data/status.json")).unwrap();
    assert!(
        st["journal"]["transaction"].is_string(),
        "journal kept: {st}"
    );
    gw.start_service();
    wait_for("resumed install to finish", 120, || {
        gw.status_json()["last_install"]["result"] == "activated"
    });
    if !tr.is_empty() {
        assert_eq!(gw.status_json()["last_install"]["transaction"], tr.as_str());
    }
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");
    // SIGINT stops an idle service cleanly too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.service_pid()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(gw.wait_service_exit(30), Some(0));
}

/// The CLI does not wait forever for a service that died: it says so and exits 1.
#[test]
fn cli_install_notices_when_the_service_dies() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let http = gw.slow_http(&gw.path("www"), 1 << 20);
    let (url, _) = gw.slow_bundle(&http, "slow", "1.1.0", 6 << 20);
    let cli = gw.spawn_rota(&["install", "--json", &url]);
    wait_mid_write(&gw);
    gw.kill_service();
    let r = finish(cli, 20);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains("the rota service stopped during install"),
        "{}",
        r.stderr()
    );
    assert_eq!(
        events(&r.stdout()).pop().unwrap()["event"],
        "service-stopped"
    );
}

/// kill -9 of the service mid-write: the next start resumes the same transaction and
/// reuses what had already landed.
#[test]
fn killed_service_resumes_the_install_on_restart() {
    let mut gw = Gateway::new(false);
    let size = 64 << 20;
    std::fs::write(gw.path("b.img"), vec![0u8; size]).unwrap();
    let (bundle, image) = gw.bundle("big", "acme-gateway", "1.1.0", pattern(size, 21), "release");
    gw.start_service();
    let tr = gw
        .call("Install", &["sa{sv}", path_str(&bundle), "0"])
        .success();
    let tr = tr
        .trim()
        .trim_start_matches("s ")
        .trim_matches('"')
        .to_owned();
    wait_for("bytes to land", 60, || progress(&gw).done > (8 << 20));
    gw.kill_service();
    let st: Value = serde_json::from_slice(&gw.read("data/status.json")).unwrap();
    assert_eq!(
        st["journal"]["transaction"],
        tr.as_str(),
        "journal survives the kill"
    );
    assert_eq!(
        gw.fw_printenv()["BOOT_B_LEFT"],
        "0",
        "target stays out of the selection while incomplete"
    );
    gw.start_service();
    wait_for("resumed install to finish", 120, || {
        gw.status_json()["last_install"]["result"] == "activated"
    });
    let st = gw.status_json();
    assert_eq!(st["last_install"]["transaction"], tr.as_str());
    let p = progress(&gw);
    assert!(
        p.reused >= 8 << 20,
        "at least the 8 MiB written before the kill were reused: {p}"
    );
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");
}

/// `rota status --json` has the shape SPEC §5 fixes, before and after an install.
#[test]
fn status_json_has_the_spec_shape() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let st = gw.status_json();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    for k in [
        "compatible",
        "booted",
        "primary",
        "operation",
        "last_error",
        "slots",
        "last_install",
        "mcu",
    ] {
        assert!(st.get(k).is_some(), "status lacks {k}: {st}");
    }
    assert_eq!(st["compatible"], "acme-gateway");
    assert_eq!(st["booted"], "A");
    assert_eq!(st["primary"], "rootfs.0");
    assert_eq!(st["operation"], "idle");
    assert_eq!(st["last_error"], "");
    assert!(st["last_install"].is_null(), "{st}");
    assert_eq!(st["mcu"], serde_json::json!([]));
    let slots = st["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    for (slot, (name, bootname, state)) in slots
        .iter()
        .zip([("rootfs.0", "A", "booted"), ("rootfs.1", "B", "inactive")])
    {
        for k in [
            "name",
            "class",
            "bootname",
            "device",
            "state",
            "boot_status",
            "version",
            "sha256",
            "installed_at",
        ] {
            assert!(slot.get(k).is_some(), "slot lacks {k}: {slot}");
        }
        assert_eq!(slot["name"], name);
        assert_eq!(slot["class"], "rootfs");
        assert_eq!(slot["bootname"], bootname);
        assert_eq!(slot["state"], state, "{slot}");
        assert_eq!(slot["boot_status"], "good");
        assert!(slot["device"].as_str().unwrap().ends_with(".img"));
        assert!(slot["version"].is_null(), "factory image: unknown version");
    }
    let (bundle, image) = gw.bundle(
        "v",
        "acme-gateway",
        "1.3.0",
        pattern(1 << 20, 17),
        "release",
    );
    gw.rota(&["install", path_str(&bundle)]).success();
    let st = gw.status_json();
    assert_eq!(st["primary"], "rootfs.1");
    let b = &st["slots"][1];
    assert_eq!(b["state"], "active", "{b}");
    assert_eq!(b["version"], "1.3.0");
    assert_eq!(b["sha256"], sha256_hex(&image).as_str());
    let at = b["installed_at"].as_str().unwrap();
    assert!(
        at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {at}"
    );
    let li = &st["last_install"];
    assert_eq!(
        keys(li)
            .into_iter()
            .filter(|k| k != "error")
            .collect::<Vec<_>>(),
        ["result", "slot", "transaction", "version"]
    );
    assert_eq!(li["version"], "1.3.0");
    assert_eq!(li["slot"], "rootfs.1");
    assert_eq!(li["result"], "activated");
    assert_eq!(li["transaction"].as_str().unwrap().len(), 36, "a UUID");
    // Mark through the CLI, as RAUC's words go.
    let out = gw.rota(&["mark", "bad", "other"]).success();
    assert!(out.contains("marked slot rootfs.1 as bad"), "{out}");
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_ORDER"].as_str(), env["BOOT_B_LEFT"].as_str()),
        ("A", "0")
    );
    assert_eq!(gw.status_json()["slots"][1]["boot_status"], "bad");
    gw.rota(&["mark", "active", "rootfs.1"]).success();
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");
    let out = gw.rota(&["mark", "good"]).success();
    assert!(out.contains("rootfs.0"), "booted is the default: {out}");
}

/// The service opens a local bundle for a caller only if the caller could open it.
#[test]
fn a_caller_cannot_install_a_file_it_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches users with setpriv and must run as root"
    );
    let mut gw = Gateway::new(false);
    std::fs::set_permissions(gw.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // nobody (gid nogroup) may install: only the read check stands in its way here.
    let mut config = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    config.push_str("group = \"nogroup\"\n");
    std::fs::write(gw.path("system.toml"), config).unwrap();
    gw.start_service();
    let (bundle, image) = gw.bundle(
        "priv",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 19),
        "release",
    );
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o600)).unwrap();
    let nobody = |prog: &str, args: &[&str]| {
        let mut all = vec!["--reuid=65534", "--regid=65534", "--clear-groups", prog];
        all.extend_from_slice(args);
        gw.cmd("setpriv", &all)
    };
    let b_before = gw.read("b.img");
    let r = agent_call_as_nobody(&gw, &["Install", "sa{sv}", path_str(&bundle), "0"]);
    assert_ne!(r.code(), 0);
    assert!(
        r.stderr()
            .contains("the caller cannot read the bundle: uid 65534 may not read")
            && r.stderr().contains("Permission denied"),
        "{}",
        r.stderr()
    );
    // The rota CLI as that user (through the test runner when cross-testing).
    let rota = support::gateway::rota_cmd();
    let mut cli: Vec<String> = std::iter::once(rota.get_program())
        .chain(rota.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    cli.extend(["install".to_owned(), path_str(&bundle).to_owned()]);
    let cli: Vec<&str> = cli.iter().map(String::as_str).collect();
    let r = nobody(cli[0], &cli[1..]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.stderr().contains("may not read"), "{}", r.stderr());
    // A symlink the caller may read, to a file it may not: still refused.
    let link = gw.path("link.rota");
    std::os::unix::fs::symlink(&bundle, &link).unwrap();
    let r = nobody(
        "busctl",
        &[
            "--system",
            "call",
            "io.rota",
            "/io/rota",
            "io.rota.Agent1",
            "Install",
            "sa{sv}",
            path_str(&link),
            "0",
        ],
    );
    assert!(r.stderr().contains("may not read"), "{}", r.stderr());
    assert_eq!(gw.read("b.img"), b_before, "nothing installed");
    assert_eq!(gw.status_json()["last_install"], Value::Null);
    // Root may; and once the file is readable, so may the caller.
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = agent_call_as_nobody(&gw, &["Install", "sa{sv}", path_str(&bundle), "0"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    wait_for("install to finish", 60, || {
        gw.status_json()["last_install"]["result"] == "activated"
    });
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
}

/// The bus here lets everyone call everything (as a missing or loosened policy file
/// would); the service still refuses changes from a caller that is neither root nor in
/// `[dbus] group`, and still answers its reads.
#[test]
fn service_refuses_changes_from_callers_outside_the_group() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let (bundle, _) = gw.bundle(
        "g",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 23),
        "release",
    );
    std::fs::set_permissions(
        gw.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let env_before = gw.read("uboot.env");
    let nobody = |args: &[&str]| agent_call_as_nobody(&gw, args);
    for call in [
        vec!["Install", "sa{sv}", path_str(&bundle), "0"],
        vec!["Cancel"],
        vec!["Mark", "ss", "good", "booted"],
        vec!["Poll"],
    ] {
        let r = nobody(&call);
        assert_ne!(r.code(), 0, "{call:?} was allowed");
        assert!(
            r.stderr().contains("uid 65534 may only read") && r.stderr().contains("group \"rota\""),
            "{call:?}: {}",
            r.stderr()
        );
    }
    let r = nobody(&["GetStatus"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.stdout().contains("acme-gateway"), "{}", r.stdout());
    assert_eq!(gw.read("uboot.env"), env_before);
    assert_eq!(gw.status_json()["last_install"], Value::Null);
}

/// READY=1, STATUS= with install progress, WATCHDOG=1 at half of WATCHDOG_USEC, and
/// STOPPING=1, on a real notify socket.
#[test]
fn sd_notify_ready_status_and_watchdog_pings() {
    let mut gw = Gateway::new(false);
    let sock_path = gw.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    // Drain the socket all the time, as systemd does: a full queue would block the sender.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let mut got: Vec<String> = Vec::new();
    let wait_for_message = |got: &mut Vec<String>, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what:?} within 60 s: {got:?}"));
            got.push(m.clone());
            if m.contains(what) {
                return Instant::now();
            }
        }
    };
    // 1 s: generous for emulated (qemu-user) runs, where the agent answers slowly.
    gw.spawn_service_with(|c| {
        c.env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000");
    });
    wait_for_message(&mut got, "READY=1");
    assert!(got.last().unwrap().contains("STATUS=idle"), "{got:?}");
    // Watchdog pings every 500 ms.
    let first = wait_for_message(&mut got, "WATCHDOG=1");
    let mut pings = 0;
    while wait_for_message(&mut got, "WATCHDOG=1") - first < Duration::from_millis(2600) {
        pings += 1;
    }
    assert!(
        // At most one per half interval; at least a few, even on a loaded machine.
        (2..=7).contains(&pings),
        "{pings} pings in 2.6 s: {got:?}\n{}",
        String::from_utf8_lossy(&gw.read("service.log"))
    );
    gw.wait_for_service();
    // Slowly served, so the install lasts a few seconds of STATUS= updates.
    let http = gw.slow_http(&gw.path("www"), 1 << 20);
    let (url, _) = gw.slow_bundle(&http, "n", "1.1.0", 2 << 20);
    gw.rota(&["install", &url]).success();
    // STATUS= follows the agent's latest state (a watch): the last percentages may be
    // folded into the final "idle" on a busy machine.
    wait_for_message(&mut got, "STATUS=idle");
    let during = got.len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.service_pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for_message(&mut got, "STOPPING=1");
    assert_eq!(gw.wait_service_exit(30), Some(0));
    let statuses: Vec<&String> = got[..during]
        .iter()
        .filter(|t| t.starts_with("STATUS=Installing "))
        .collect();
    assert!(
        statuses.len() >= 4
            && statuses.iter().any(|t| t.starts_with("STATUS=Installing ")
                && t.contains("%: Writing rootfs.ext4 to rootfs.1")),
        "{got:?}"
    );
    let pings_during = got[..during]
        .iter()
        .filter(|t| t.contains("WATCHDOG=1"))
        .count();
    assert!(
        pings_during >= 10,
        "pings continue during the install: {got:?}"
    );
}

/// A watchdog meant for another process (WATCHDOG_PID) is not pinged.
#[test]
fn watchdog_for_another_pid_is_ignored() {
    let mut gw = Gateway::new(false);
    let sock_path = gw.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    gw.spawn_service_with(|c| {
        c.env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "200000")
            .env("WATCHDOG_PID", "1");
    });
    gw.wait_for_service();
    let mut buf = [0u8; 4096];
    let mut texts = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        texts.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(texts.iter().any(|t| t.contains("READY=1")), "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains("WATCHDOG=1")), "{texts:?}");
}

/// Losing the bus is fatal (exit 1, so systemd restarts the service); a second service
/// cannot take the name, and does not start an agent next to the first.
#[test]
fn bus_loss_and_a_second_service() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let r = gw.rota(&["service"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains("the bus name io.rota is taken: another rota service"),
        "{}",
        r.stderr()
    );
    assert_eq!(
        gw.property("Operation"),
        "s \"idle\"",
        "the first still serves"
    );
    gw.kill_bus();
    assert_eq!(gw.wait_service_exit(20), Some(1));
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    assert!(log.contains("the system bus connection closed"), "{log}");
}

#[test]
fn reboot_after_activation_runs_the_reboot_command() {
    let mut gw = Gateway::new(false);
    let marker = gw.path("rebooted");
    let cfg = std::fs::read_to_string(gw.path("system.toml"))
        .unwrap()
        .replace(
            "kernel-cmdline = \"cmdline\"\n",
            &format!(
                "kernel-cmdline = \"cmdline\"\nreboot-command = [\"touch\", \"{}\"]\n",
                marker.display()
            ),
        );
    std::fs::write(gw.path("system.toml"), cfg).unwrap();
    gw.start_service();
    let (bundle, _) = gw.bundle("v", "acme-gateway", "1.1.0", pattern(1 << 20, 6), "release");
    gw.rota(&["install", path_str(&bundle)]).success();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "no reboot unless asked");
    let (bundle, _) = gw.bundle("w", "acme-gateway", "1.2.0", pattern(1 << 20, 7), "release");
    gw.rota(&["install", "--reboot", path_str(&bundle)])
        .success();
    wait_for("the reboot command", 10, || marker.exists());
}

#[test]
fn service_refuses_to_start_on_a_bad_config() {
    let gw = Gateway::new(false);
    let cfg = std::fs::read_to_string(gw.path("system.toml"))
        .unwrap()
        .replace("[bootloader]\n", "[bootloader]\nfw-env-cfg = \"x\"\n");
    std::fs::write(gw.path("system.toml"), cfg).unwrap();
    let r = gw.rota(&["service"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("fw-env-cfg") && r.stderr().contains("line"),
        "{}",
        r.stderr()
    );
}

/// Each `[mcu.<name>]` has its object under /io/rota/mcu on the service's connection.
#[test]
fn mcu_nodes_are_served_next_to_the_agent() {
    let mut gw = Gateway::new(false);
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    std::fs::write(
        gw.path("system.toml"),
        format!(
            "{cfg}[mcu.sensor]\ntransport = \"udp\"\naddress = \"127.0.0.1:9\"\n\
             [mcu.radio-1]\ntransport = \"serial\"\ndevice = \"/dev/null\"\n"
        ),
    )
    .unwrap();
    gw.start_service();
    let tree = gw.busctl(&["tree", "--list", "io.rota"]).success();
    for path in ["/io/rota", "/io/rota/mcu/sensor", "/io/rota/mcu/radio_2d1"] {
        assert!(tree.lines().any(|l| l.trim() == path), "{path} in {tree}");
    }
    let name = gw
        .busctl(&[
            "get-property",
            "io.rota",
            "/io/rota/mcu/sensor",
            "io.rota.Mcu1",
            "Name",
        ])
        .success();
    assert_eq!(name.trim(), "s \"sensor\"");
}

/// On a terminal (a pty made by `script`), `rota install` draws a live progress bar.
#[test]
fn install_draws_a_progress_bar_on_a_terminal() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let http = gw.slow_http(&gw.path("www"), 2 << 20);
    let (url, image) = gw.slow_bundle(&http, "tty", "1.1.0", 3 << 20);
    let rota = support::gateway::rota_cmd();
    let mut line: Vec<String> = std::iter::once(rota.get_program())
        .chain(rota.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    line.extend(["install".to_owned(), url]);
    let r = gw.cmd("script", &["-qec", &line.join(" "), "/dev/null"]);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}{}", r.stderr());
    // Redrawn in place (carriage returns / cursor movement), with a filled bar.
    assert!(out.contains('\r') || out.contains("\x1b["), "{out:?}");
    assert!(out.contains("[====="), "{out:?}");
    assert!(out.contains("Writing rootfs.ext4 to rootfs.1"), "{out:?}");
    assert!(out.contains("installed 1.1.0 into rootfs.1"), "{out:?}");
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
}

/// The watchdog ping needs the agent to answer: when the agent hangs (here: its U-Boot
/// env turns into a FIFO nobody writes, so reading it blocks), the pings stop while the
/// process lives on, and systemd would restart it.
#[test]
fn a_hung_agent_stops_the_watchdog_pings() {
    let mut gw = Gateway::new(false);
    let sock_path = gw.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if tx.send((Instant::now(), text)).is_err() {
                break;
            }
        }
    });
    gw.spawn_service_with(|c| {
        c.env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000");
    });
    let next = |what: &str| loop {
        let (at, m) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {what}"));
        if m.contains(what) {
            return at;
        }
    };
    next("READY=1");
    next("WATCHDOG=1");
    next("WATCHDOG=1");
    std::fs::remove_file(gw.path("uboot.env")).unwrap();
    nix::unistd::mkfifo(
        &gw.path("uboot.env"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // A check already under way may still ping, within its budget (a quarter of 1 s).
    let hung = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    let late: Vec<String> = rx
        .try_iter()
        .filter(|(at, m)| m.contains("WATCHDOG=1") && *at > hung + Duration::from_millis(600))
        .map(|(_, m)| m)
        .collect();
    assert!(late.is_empty(), "pings after the agent hung: {late:?}");
    assert!(
        gw.service.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the process is still there"
    );
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    assert!(log.contains("did not answer within"), "{log}");
}

/// Context switches of every thread of `pid` (voluntary + involuntary): a thread that
/// wakes up adds at least one.
fn context_switches(pid: i32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// An idle service (no watchdog, no poller) does not wake up at all: no timers, no
/// busy threads. Measured from /proc over a few seconds.
#[test]
fn idle_service_does_not_wake_up() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    // Let start-up work (journal check, bus names, first status) settle.
    let _ = gw.status_json();
    std::thread::sleep(Duration::from_millis(500));
    let pid = gw.service_pid();
    let before = context_switches(pid);
    std::thread::sleep(Duration::from_secs(3));
    let after = context_switches(pid);
    assert!(
        after - before <= 2,
        "the idle service woke up {} times in 3 s",
        after - before
    );
}

/// Install arguments beyond the limits are refused by the service with a message naming
/// the limit, on both interfaces.
#[test]
fn dbus_install_arguments_beyond_the_limits_are_refused() {
    let mut gw = Gateway::new(true);
    gw.start_service();
    let b_before = gw.read("b.img");
    let long = format!("/{}", "a".repeat(rota::service::native::MAX_SOURCE_LEN));
    let call = |iface: &str, method: &str, args: &[&str]| {
        let (dest, path) = if iface == "io.rota.Agent1" {
            ("io.rota", "/io/rota")
        } else {
            ("de.pengutronix.rauc", "/")
        };
        let mut all = vec!["call", dest, path, iface, method];
        all.extend_from_slice(args);
        gw.busctl(&all)
    };
    let refused = |r: support::gateway::Run, want: &str| {
        assert_ne!(r.code(), 0, "{}", r.stdout());
        assert!(
            r.stderr().contains(want),
            "expected {want:?}: {}",
            r.stderr()
        );
    };
    refused(
        call("io.rota.Agent1", "Install", &["sa{sv}", &long, "0"]),
        "the source must be 1 to 4096 bytes",
    );
    refused(
        call("io.rota.Agent1", "Install", &["sa{sv}", "", "0"]),
        "the source must be 1 to 4096 bytes",
    );
    refused(
        call(
            "de.pengutronix.rauc.Installer",
            "InstallBundle",
            &["sa{sv}", &long, "0"],
        ),
        "the source must be 1 to 4096 bytes",
    );
    refused(
        call("de.pengutronix.rauc.Installer", "Install", &["s", &long]),
        "the source must be 1 to 4096 bytes",
    );
    refused(
        call(
            "de.pengutronix.rauc.Installer",
            "InspectBundle",
            &["sa{sv}", &long, "0"],
        ),
        "the source must be 1 to 4096 bytes",
    );
    // 33 options.
    let keys: Vec<String> = (0..=rota::service::native::MAX_OPTIONS)
        .map(|i| format!("k{i}"))
        .collect();
    let count = keys.len().to_string();
    let mut args: Vec<&str> = vec!["sa{sv}", "/x.rota", &count];
    for k in &keys {
        args.extend([k.as_str(), "b", "true"]);
    }
    refused(
        call("io.rota.Agent1", "Install", &args),
        "more than 32 options",
    );
    refused(
        call("de.pengutronix.rauc.Installer", "InstallBundle", &args),
        "more than 32 options",
    );
    // One string option over the limit, and an over-long header in http-headers.
    let big = "x".repeat(rota::service::native::MAX_SOURCE_LEN + 1);
    refused(
        call(
            "io.rota.Agent1",
            "Install",
            &[
                "sa{sv}",
                "https://u/x.rota",
                "1",
                "transaction-id",
                "s",
                &big,
            ],
        ),
        "option transaction-id is longer than 4096 bytes",
    );
    let header = format!("X-Long: {big}");
    refused(
        call(
            "io.rota.Agent1",
            "Install",
            &[
                "sa{sv}",
                "https://u/x.rota",
                "1",
                "http-headers",
                "as",
                "1",
                &header,
            ],
        ),
        "option http-headers has an entry longer than 4096 bytes",
    );
    // Mark with an absurd slot name.
    let name = "s".repeat(rota::service::native::MAX_SLOT_ID_LEN + 1);
    refused(
        call("io.rota.Agent1", "Mark", &["ss", "good", &name]),
        "the slot name must be at most 256 bytes",
    );
    refused(
        call(
            "de.pengutronix.rauc.Installer",
            "Mark",
            &["ss", "good", &name],
        ),
        "the slot name must be at most 256 bytes",
    );
    // Nothing happened, and the service still serves.
    assert_eq!(gw.read("b.img"), b_before);
    assert_eq!(gw.property("Operation"), "s \"idle\"");
    assert_eq!(gw.property("LastError"), "s \"\"");
}

/// Four clients hammering GetStatus and the Progress property during an install neither
/// break it nor stall it: it ends bit-exact; the time it took is printed next to a quiet
/// install of the same size.
#[test]
fn status_readers_hammering_the_bus_do_not_break_an_install() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let size = 6 << 20;
    let (quiet, _) = gw.bundle(
        "quiet",
        "acme-gateway",
        "1.1.0",
        pattern(size, 61),
        "release",
    );
    let t0 = Instant::now();
    gw.rota(&["install", path_str(&quiet)]).success();
    let quiet_time = t0.elapsed();
    let (busy, image) = gw.bundle(
        "busy",
        "acme-gateway",
        "1.2.0",
        pattern(size, 62),
        "release",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bus = gw.bus.clone();
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (stop, calls, bus) = (stop.clone(), calls.clone(), bus.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let args: &[&str] = if i % 2 == 0 {
                        &["call", "io.rota", "/io/rota", "io.rota.Agent1", "GetStatus"]
                    } else {
                        &[
                            "get-property",
                            "io.rota",
                            "/io/rota",
                            "io.rota.Agent1",
                            "Progress",
                        ]
                    };
                    let ok = std::process::Command::new("busctl")
                        .arg(format!("--address={bus}"))
                        .args(args)
                        .output()
                        .map(|o| o.status.success())
                        .unwrap_or(false);
                    assert!(ok, "a status read failed during the install");
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    gw.rota(&["install", path_str(&busy)]).success();
    let busy_time = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader thread");
    }
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    let n = calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n >= 8, "the readers made only {n} calls");
    eprintln!(
        "install of {} MiB: {quiet_time:?} quiet, {busy_time:?} with {n} status reads beside it ({:.2}x)",
        size >> 20,
        busy_time.as_secs_f64() / quiet_time.as_secs_f64()
    );
}
