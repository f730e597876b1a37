//! `rota service` on a real private dbus-daemon, driven by the rota CLI, busctl and
//! Debian's rauc CLI.

mod support;
use support::gateway::{path_str, pattern, wait_for, Gateway};

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
    let out = gw.rota(&["install", "--json", path_str(&bundle)]);
    let stdout = out.success();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "started");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["bytes_total"] == 3 << 20),
        "{stdout}"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["result"].as_i64()),
        (Some("completed"), Some(0)),
        "{stdout}"
    );
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.read("a.img"), a_before);
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_ORDER"].as_str(), env["BOOT_B_LEFT"].as_str()),
        ("B A", "3")
    );
    assert_eq!(env["serial"], "GW-1");
    let st = gw.status_json();
    assert_eq!(st["primary"], "rootfs.1");
    assert_eq!(st["last_install"]["result"], "activated");
    assert_eq!(st["slots"][1]["version"], "1.1.0");
    assert_eq!(st["slots"][1]["sha256"].as_str().unwrap().len(), 64);
    // Log lines carry structured fields (journald fields when the journal is there).
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    let tr = st["last_install"]["transaction"].as_str().unwrap();
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
}

#[test]
fn cli_failures_exit_1_with_the_reason_and_2_without_service() {
    let mut gw = Gateway::new(false);
    let r = gw.rota(&["status"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("cannot reach the rota service"),
        "{}",
        r.stderr()
    );
    gw.start_service();
    let env_before = gw.read("uboot.env");
    let b_before = gw.read("b.img");
    let (wrong_key, _) = gw.bundle("wk", "acme-gateway", "1.1.0", pattern(1 << 20, 1), "other");
    let r = gw.rota(&["install", path_str(&wrong_key)]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("does not match any of the 1 key(s)"),
        "{}",
        r.stderr()
    );
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
    let r = gw.rota(&["mark", "good", "nonsense"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("no slot named \"nonsense\""),
        "{}",
        r.stderr()
    );
    let r = gw.rota(&["install", "/does/not/exist.rota"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("/does/not/exist.rota"),
        "{}",
        r.stderr()
    );
}

#[test]
fn busctl_introspects_installs_and_reads_progress() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let xml = gw
        .cmd(
            "busctl",
            &[
                "--system",
                "introspect",
                "--xml-interface",
                "io.rota",
                "/io/rota",
            ],
        )
        .success();
    for needle in [
        "io.rota.Agent1",
        "name=\"Install\"",
        "name=\"Progress\"",
        "name=\"Completed\"",
        "name=\"Mark\"",
        "name=\"GetStatus\"",
    ] {
        assert!(xml.contains(needle), "introspection lacks {needle}");
    }
    let (bundle, image) = gw.bundle("b", "acme-gateway", "2.0.0", pattern(2 << 20, 8), "release");
    let out = gw
        .cmd(
            "busctl",
            &[
                "--system",
                "call",
                "io.rota",
                "/io/rota",
                "io.rota.Agent1",
                "Install",
                "sa{sv}",
                path_str(&bundle),
                "0",
            ],
        )
        .success();
    assert!(out.starts_with("s \""), "{out}");
    wait_for("install to finish", 60, || {
        gw.cmd(
            "busctl",
            &[
                "--system",
                "get-property",
                "io.rota",
                "/io/rota",
                "io.rota.Agent1",
                "Operation",
            ],
        )
        .success()
        .contains("idle")
            && gw.status_json()["last_install"]["result"] == "activated"
    });
    let p = gw
        .cmd(
            "busctl",
            &[
                "--system",
                "get-property",
                "io.rota",
                "/io/rota",
                "io.rota.Agent1",
                "Progress",
            ],
        )
        .success();
    assert!(p.starts_with("(ustttttt) 100 \"Installing done.\""), "{p}");
    assert!(p.contains(&format!(" {} ", 2 << 20)), "bytes total in {p}");
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    // Unknown option: a clear InvalidArgument error.
    let r = gw.cmd(
        "busctl",
        &[
            "--system",
            "call",
            "io.rota",
            "/io/rota",
            "io.rota.Agent1",
            "Install",
            "sa{sv}",
            path_str(&bundle),
            "1",
            "bogus",
            "b",
            "true",
        ],
    );
    assert_ne!(r.code(), 0);
    assert!(
        r.stderr().contains("unknown install option \"bogus\""),
        "{}",
        r.stderr()
    );
}

#[test]
fn rauc_cli_drives_rota_through_the_compat_interface() {
    let mut gw = Gateway::new(true);
    gw.start_service();
    let st = gw
        .cmd("rauc", &["status", "--output-format=json"])
        .success();
    let v: serde_json::Value = serde_json::from_str(st.lines().last().unwrap()).unwrap();
    assert_eq!(v["compatible"], "acme-gateway");
    assert_eq!(v["booted"], "A");
    assert_eq!(v["boot_primary"], "rootfs.0");
    let (bundle, image) = gw.bundle("r", "acme-gateway", "1.2.0", pattern(1 << 20, 4), "release");
    let out = gw.cmd("rauc", &["install", path_str(&bundle)]);
    assert_eq!(out.code(), 0, "{}{}", out.stdout(), out.stderr());
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");
    let (bad, _) = gw.bundle("rb", "acme-gateway", "1.3.0", pattern(1 << 20, 4), "other");
    let out = gw.cmd("rauc", &["install", path_str(&bad)]);
    assert_ne!(
        out.code(),
        0,
        "rauc install of a wrongly signed bundle must fail"
    );
    let out = gw.cmd("rauc", &["status", "mark-good", "booted"]);
    assert_eq!(out.code(), 0, "{}{}", out.stdout(), out.stderr());
    assert!(out.stdout().contains("rootfs.0"), "{}", out.stdout());
    let out = gw.cmd("rauc", &["status", "mark-bad", "other"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_ORDER"].as_str(), env["BOOT_B_LEFT"].as_str()),
        ("A", "0")
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
        .cmd(
            "busctl",
            &[
                "--system",
                "call",
                "io.rota",
                "/io/rota",
                "io.rota.Agent1",
                "Install",
                "sa{sv}",
                path_str(&bundle),
                "0",
            ],
        )
        .success();
    let tr = tr
        .trim()
        .trim_start_matches("s ")
        .trim_matches('"')
        .to_owned();
    wait_for("bytes to land", 60, || {
        let p = progress(&gw);
        let done = p.done;
        done > (8 << 20)
    });
    gw.kill_service();
    let st: serde_json::Value = serde_json::from_slice(&gw.read("data/status.json")).unwrap();
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
    let reused = p.reused;
    assert!(
        reused >= 8 << 20,
        "at least the 8 MiB written before the kill were reused: {p}"
    );
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");
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
    std::thread::sleep(std::time::Duration::from_millis(300));
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

/// The Progress property, read with busctl: `(ustttttt)` percent, message, done, total,
/// downloaded, reused, rate, ETA — counted from the end, as the message has spaces.
struct BusProgress {
    text: String,
    done: u64,
    reused: u64,
}

impl std::fmt::Display for BusProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn progress(gw: &Gateway) -> BusProgress {
    let text = gw
        .cmd(
            "busctl",
            &[
                "--system",
                "get-property",
                "io.rota",
                "/io/rota",
                "io.rota.Agent1",
                "Progress",
            ],
        )
        .success();
    let field = |from_end: usize| {
        text.split_whitespace()
            .rev()
            .nth(from_end)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    BusProgress {
        done: field(5),
        reused: field(2),
        text: text.clone(),
    }
}
