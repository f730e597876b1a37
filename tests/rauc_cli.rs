//! Debian's `rauc` 1.8 CLI and busctl against rota's RAUC-compatible interface
//! (`de.pengutronix.rauc.Installer` at `/`, `[dbus] rauc-compat = true`) on a private bus.

mod support;
use serde_json::Value;
use support::gateway::{path_str, pattern, wait_for, Gateway};

const RAUC: [&str; 3] = ["de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer"];

/// `busctl call de.pengutronix.rauc / de.pengutronix.rauc.Installer METHOD ARGS...`.
fn call(gw: &Gateway, method: &str, args: &[&str]) -> support::gateway::Run {
    let mut all = vec!["call", RAUC[0], RAUC[1], RAUC[2], method];
    all.extend_from_slice(args);
    gw.busctl(&all)
}

/// The same with `--json=short`, parsed.
fn call_json(gw: &Gateway, method: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json=short", "call", RAUC[0], RAUC[1], RAUC[2], method];
    all.extend_from_slice(args);
    serde_json::from_str(&gw.busctl(&all).success()).unwrap()
}

fn property(gw: &Gateway, name: &str) -> String {
    gw.busctl(&["get-property", RAUC[0], RAUC[1], RAUC[2], name])
        .success()
        .trim()
        .to_owned()
}

/// `rauc status --output-format=json`, slots keyed by name.
fn rauc_status(gw: &Gateway, detailed: bool) -> Value {
    let mut args = vec!["status", "--output-format=json"];
    if detailed {
        args.push("--detailed");
    }
    let out = gw.cmd("rauc", &args).success();
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn slot<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s.get(name))
        .unwrap_or_else(|| panic!("no slot {name} in {status}"))
}

#[test]
fn rauc_status_install_and_mark_work_against_rota() {
    let mut gw = Gateway::new(true);
    gw.start_service();
    let st = rauc_status(&gw, false);
    assert_eq!(st["compatible"], "acme-gateway");
    assert_eq!(st["variant"], "");
    assert_eq!(st["booted"], "A");
    assert_eq!(st["boot_primary"], "rootfs.0");
    let a = slot(&st, "rootfs.0");
    assert_eq!(
        (
            a["class"].as_str(),
            a["type"].as_str(),
            a["bootname"].as_str()
        ),
        (Some("rootfs"), Some("raw"), Some("A"))
    );
    assert_eq!(
        (a["state"].as_str(), a["boot_status"].as_str()),
        (Some("booted"), Some("good"))
    );
    assert_eq!(slot(&st, "rootfs.1")["state"], "inactive");

    let (bundle, image) = gw.bundle("r", "acme-gateway", "1.2.0", pattern(1 << 20, 4), "release");
    let out = gw.cmd("rauc", &["install", path_str(&bundle)]);
    assert_eq!(out.code(), 0, "{}{}", out.stdout(), out.stderr());
    // rauc prints Operation and every Progress change, then the result. (Not "idle": as
    // with RAUC itself, Completed comes before Operation goes idle, and the client may
    // exit on Completed first.)
    let text = format!("{}{}", out.stdout(), out.stderr());
    for line in [
        "installing",
        "Writing rootfs.ext4 to rootfs.1",
        "100% Installing done.",
    ] {
        assert!(
            text.contains(line),
            "rauc install printed no {line:?}: {text}"
        );
    }
    assert!(text.contains("succeeded"), "{text}");
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");

    let st = rauc_status(&gw, true);
    assert_eq!(st["boot_primary"], "rootfs.1");
    let b = slot(&st, "rootfs.1");
    assert_eq!(b["state"], "active");
    let ss = &b["slot_status"];
    assert_eq!(ss["bundle"]["compatible"], "acme-gateway");
    assert_eq!(ss["bundle"]["version"], "1.2.0");
    assert_eq!(ss["checksum"]["size"], 1 << 20);
    assert_eq!(ss["checksum"]["sha256"].as_str().unwrap().len(), 64);
    assert!(ss["installed"]["timestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(ss["status"], "ok");

    // A wrongly signed bundle: rauc reports LastError and exits 1; nothing changes.
    let env_before = gw.read("uboot.env");
    let (bad, _) = gw.bundle("rb", "acme-gateway", "1.3.0", pattern(1 << 20, 5), "other");
    let out = gw.cmd("rauc", &["install", path_str(&bad)]);
    assert_eq!(out.code(), 1, "{}{}", out.stdout(), out.stderr());
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        text.contains("LastError: signature check failed") && text.contains("failed"),
        "{text}"
    );
    assert_eq!(gw.read("uboot.env"), env_before);
    assert!(property(&gw, "LastError").contains("signature check failed"));

    // rauc status mark-*: as RAUC's words go.
    let out = gw.cmd("rauc", &["status", "mark-good", "booted"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(
        out.stdout().contains("marked slot rootfs.0 as good"),
        "{}",
        out.stdout()
    );
    let out = gw.cmd("rauc", &["status", "mark-bad", "other"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_ORDER"].as_str(), env["BOOT_B_LEFT"].as_str()),
        ("A", "0")
    );
    assert_eq!(
        slot(&rauc_status(&gw, false), "rootfs.1")["boot_status"],
        "bad"
    );
    let out = gw.cmd("rauc", &["status", "mark-active", "other"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_ORDER"].as_str(), env["BOOT_B_LEFT"].as_str()),
        ("B A", "3")
    );
    let out = gw.cmd("rauc", &["status", "mark-good", "rootfs.7"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr().contains("rootfs.7"), "{}", out.stderr());
}

/// Methods, properties and signal over busctl, with RAUC's names, types and errors.
#[test]
fn installer_interface_answers_as_rauc_does() {
    let mut gw = Gateway::new(true);
    gw.start_service();
    let (bundle, image) = gw.bundle(
        "i",
        "acme-gateway",
        "1.4.0",
        pattern(1 << 20, 14),
        "release",
    );

    // Introspection: exactly RAUC's members and signatures.
    let xml = gw
        .busctl(&["introspect", "--xml-interface", RAUC[0], RAUC[1]])
        .success();
    let members = members_of(&xml, RAUC[2]);
    let expected = [
        "method GetArtifactStatus out:aa{sv}:artifacts",
        "method GetPrimary out:s:primary",
        "method GetSlotStatus out:a(sa{sv}):slot_status_array",
        "method Info in:s:bundle out:s:compatible out:s:version",
        "method InspectBundle in:s:source in:a{sv}:args out:a{sv}:info",
        "method Install in:s:source",
        "method InstallBundle in:s:source in:a{sv}:args",
        "method Mark in:s:state in:s:slot_identifier out:s:slot_name out:s:message",
        "property BootSlot s read",
        "property Compatible s read",
        "property LastError s read",
        "property Operation s read",
        "property Progress (isi) read",
        "property SystemVersion s read",
        "property Variant s read",
        "signal Completed i:result",
    ];
    assert_eq!(members, expected);

    for (name, want) in [
        ("Operation", "s \"idle\""),
        ("Compatible", "s \"acme-gateway\""),
        ("Variant", "s \"\""),
        ("BootSlot", "s \"A\""),
        ("SystemVersion", "s \"\""),
        ("LastError", "s \"\""),
    ] {
        assert_eq!(property(&gw, name), want, "{name}");
    }
    assert_eq!(
        call(&gw, "GetPrimary", &[]).success().trim(),
        "s \"rootfs.0\""
    );
    assert_eq!(
        call(&gw, "GetArtifactStatus", &[]).success().trim(),
        "aa{sv} 0"
    );

    // Info (deprecated) and InspectBundle read the bundle locally and verify it.
    assert_eq!(
        call(&gw, "Info", &["s", path_str(&bundle)])
            .success()
            .trim(),
        "ss \"acme-gateway\" \"1.4.0\""
    );
    let info = call_json(&gw, "InspectBundle", &["sa{sv}", path_str(&bundle), "0"]);
    let info = &info["data"][0];
    assert_eq!(info["update"]["data"]["version"]["data"], "1.4.0");
    assert_eq!(info["update"]["data"]["compatible"]["data"], "acme-gateway");
    assert_eq!(info["manifest-hash"]["data"].as_str().unwrap().len(), 64);
    let img = &info["images"]["data"][0];
    assert_eq!(img["slot-class"]["data"], "rootfs");
    assert_eq!(img["filename"]["data"], "rootfs.ext4");
    assert_eq!(img["size"]["data"], 1 << 20);
    let manifest_hash = info["manifest-hash"]["data"].as_str().unwrap().to_owned();
    let r = call(
        &gw,
        "InspectBundle",
        &[
            "sa{sv}",
            path_str(&bundle),
            "1",
            "ignore-compatible",
            "b",
            "true",
        ],
    );
    assert!(
        r.stderr().contains("Unsupported key: ignore-compatible"),
        "{}",
        r.stderr()
    );
    let (bad, _) = gw.bundle(
        "bad",
        "acme-gateway",
        "1.4.0",
        pattern(1 << 20, 15),
        "other",
    );
    let r = call(&gw, "Info", &["s", path_str(&bad)]);
    assert!(r.stderr().contains("signature"), "{}", r.stderr());

    // InstallBundle: strict keys, then an install confirmed by manifest hash.
    let r = call(
        &gw,
        "InstallBundle",
        &[
            "sa{sv}",
            path_str(&bundle),
            "1",
            "force-version",
            "b",
            "true",
        ],
    );
    assert!(
        r.stderr().contains("Unsupported key: force-version"),
        "{}",
        r.stderr()
    );
    let r = call(
        &gw,
        "InstallBundle",
        &[
            "sa{sv}",
            path_str(&bundle),
            "1",
            "require-manifest-hash",
            "s",
            &"0".repeat(64),
        ],
    );
    assert_eq!(
        r.code(),
        0,
        "the check happens in the install: {}",
        r.stderr()
    );
    wait_for("the refused install to end", 30, || {
        property(&gw, "Operation") == "s \"idle\""
    });
    assert!(
        property(&gw, "LastError").contains("manifest"),
        "{}",
        property(&gw, "LastError")
    );
    let monitor = gw.monitor("type='signal',sender='de.pengutronix.rauc'");
    call(
        &gw,
        "InstallBundle",
        &[
            "sa{sv}",
            path_str(&bundle),
            "2",
            "require-manifest-hash",
            "s",
            &manifest_hash,
            "transaction-id",
            "s",
            "rauc-tr-1",
        ],
    )
    .success();
    wait_for("the install to end", 60, || {
        property(&gw, "Operation") == "s \"idle\"" && property(&gw, "LastError") == "s \"\""
    });
    let msgs = monitor.stop();
    let completed: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["interface"] == RAUC[2] && m["member"] == "Completed")
        .collect();
    assert_eq!(completed.len(), 1, "{msgs:?}");
    assert_eq!(completed[0]["payload"]["type"], "i");
    assert_eq!(completed[0]["payload"]["data"][0], 0);
    let progress: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["member"] == "PropertiesChanged" && m["payload"]["data"][0] == RAUC[2])
        .filter_map(|m| m["payload"]["data"][1].get("Progress"))
        .collect();
    assert!(progress.len() >= 3, "{msgs:?}");
    assert!(
        progress.iter().all(|p| p["type"] == "(isi)"),
        "{progress:?}"
    );
    assert_eq!(progress.last().unwrap()["data"][0], 100);
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    let slots = call_json(&gw, "GetSlotStatus", &[]);
    let b = slots["data"][0]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == "rootfs.1")
        .unwrap();
    let d = &b[1];
    for (k, want) in [
        ("class", "rootfs"),
        ("device", path_str(&gw.path("b.img"))),
        ("type", "raw"),
        ("bootname", "B"),
        ("state", "active"),
        ("boot-status", "good"),
        ("bundle.version", "1.4.0"),
        ("bundle.compatible", "acme-gateway"),
        ("bundle.hash", &manifest_hash),
        ("installed.transaction", "rauc-tr-1"),
        ("status", "ok"),
    ] {
        assert_eq!(d[k]["data"], want, "{k} in {d}");
    }
    assert_eq!(d["size"]["type"], "t");
    assert_eq!(d["sha256"]["data"].as_str().unwrap().len(), 64);
    assert!(d["installed.timestamp"]["data"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(
        call(&gw, "GetPrimary", &[]).success().trim(),
        "s \"rootfs.1\""
    );
    // Mark returns (slot_name, message).
    assert_eq!(
        call(&gw, "Mark", &["ss", "good", "other"]).success().trim(),
        "ss \"rootfs.1\" \"marked slot rootfs.1 as good\""
    );
    let r = call(&gw, "Mark", &["ss", "fine", "booted"]);
    assert!(
        r.stderr().contains("unknown mark state \"fine\""),
        "{}",
        r.stderr()
    );

    // A failed install sends Completed(1).
    let monitor = gw.monitor("type='signal',sender='de.pengutronix.rauc',member='Completed'");
    call(&gw, "InstallBundle", &["sa{sv}", path_str(&bad), "0"]).success();
    wait_for("the failure", 30, || {
        property(&gw, "LastError").contains("signature")
    });
    // One connection serves both interfaces: keep RAUC's.
    let msgs: Vec<Value> = monitor
        .stop()
        .into_iter()
        .filter(|m| m["interface"] == RAUC[2])
        .collect();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["payload"]["data"][0], 1);
}

/// After "rebooting" into the slot rota wrote, SystemVersion is its version.
#[test]
fn system_version_is_the_booted_slots_version() {
    let mut gw = Gateway::new(true);
    gw.start_service();
    let (bundle, _) = gw.bundle(
        "v",
        "acme-gateway",
        "3.1.0",
        pattern(1 << 20, 16),
        "release",
    );
    gw.cmd("rauc", &["install", path_str(&bundle)]).success();
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "rota.slot=B\n").unwrap();
    gw.start_service();
    assert_eq!(property(&gw, "SystemVersion"), "s \"3.1.0\"");
    assert_eq!(property(&gw, "BootSlot"), "s \"B\"");
    assert_eq!(rauc_status(&gw, false)["booted"], "B");
}

/// Without `rauc-compat`, the RAUC name is not on the bus and `rauc` says so.
#[test]
fn without_rauc_compat_the_rauc_name_is_absent() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let r = gw.busctl(&["status", "de.pengutronix.rauc"]);
    assert_ne!(r.code(), 0);
    let r = gw.cmd("rauc", &["status"]);
    assert_ne!(r.code(), 0, "{}", r.stdout());
}

/// `(kind name signature...)` lines for an interface in introspection XML, sorted.
fn members_of(xml: &str, iface: &str) -> Vec<String> {
    let start = xml
        .find(&format!("<interface name=\"{iface}\">"))
        .unwrap_or_else(|| panic!("no {iface} in {xml}"));
    let body = &xml[start..start + xml[start..].find("</interface>").unwrap()];
    let attr = |tag: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        tag.find(&key)
            .map(|i| {
                let rest = &tag[i + key.len()..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .unwrap_or_default()
    };
    let mut out: Vec<String> = Vec::new();
    for line in body.lines().map(str::trim) {
        if line.starts_with("<method ") || line.starts_with("<signal ") {
            let kind = if line.starts_with("<method") {
                "method"
            } else {
                "signal"
            };
            out.push(format!("{kind} {}", attr(line, "name")));
        } else if line.starts_with("<arg ") {
            let cur = out.last_mut().unwrap();
            let dir = attr(line, "direction");
            if dir.is_empty() {
                cur.push_str(&format!(" {}:{}", attr(line, "type"), attr(line, "name")));
            } else {
                cur.push_str(&format!(
                    " {dir}:{}:{}",
                    attr(line, "type"),
                    attr(line, "name")
                ));
            }
        } else if line.starts_with("<property ") {
            out.push(format!(
                "property {} {} {}",
                attr(line, "name"),
                attr(line, "type"),
                attr(line, "access")
            ));
        }
    }
    out.sort();
    out
}

/// Streaming, as rauc-hawkbit-updater does it: InspectBundle and `rauc install` with an
/// http URL (rota reads the manifest and headers, then the chunks, with Range requests).
#[test]
fn bundles_by_url_inspect_and_install() {
    let mut gw = Gateway::new(true);
    gw.start_service();
    let http = gw.slow_http(&gw.path("www"), 64 << 20);
    let (url, image) = gw.slow_bundle(&http, "net", "1.5.0", 2 << 20);
    let info = call_json(&gw, "InspectBundle", &["sa{sv}", &url, "0"]);
    assert_eq!(
        info["data"][0]["update"]["data"]["version"]["data"],
        "1.5.0"
    );
    assert_eq!(info["data"][0]["bundle"]["data"]["format"]["data"], "rota");
    let r = call(
        &gw,
        "InspectBundle",
        &["sa{sv}", &http.url("missing.rota"), "0"],
    );
    assert_ne!(r.code(), 0);
    assert!(r.stderr().contains("missing.rota"), "{}", r.stderr());
    let out = gw.cmd("rauc", &["install", &url]);
    assert_eq!(out.code(), 0, "{}{}", out.stdout(), out.stderr());
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");
}

/// The RAUC interface's signals, in order, as (what, value): "Progress", "Operation",
/// "LastError" (PropertiesChanged) and "Completed".
fn rauc_signals(msgs: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for m in msgs {
        if m["member"] == "Completed" && m["interface"] == RAUC[2] {
            out.push(("Completed".to_owned(), m["payload"]["data"][0].clone()));
        }
        if m["member"] == "PropertiesChanged" && m["payload"]["data"][0] == RAUC[2] {
            if let Some(props) = m["payload"]["data"][1].as_object() {
                for (k, v) in props {
                    out.push((k.clone(), v["data"].clone()));
                }
            }
        }
    }
    out
}

/// RAUC signals a property only when its value changes, and a client (rauc-hawkbit-updater)
/// posts each Progress as feedback: every step once, none lost — the same steps the native
/// interface reports. At the end RAUC's order: LastError, Completed, then Operation idle.
#[test]
fn rauc_signals_each_progress_step_once_and_completed_before_idle() {
    let mut gw = Gateway::new(true);
    gw.start_service();
    let (bundle, _) = gw.bundle(
        "s",
        "acme-gateway",
        "1.4.0",
        pattern(3 << 20, 21),
        "release",
    );
    let (bad, _) = gw.bundle(
        "bad",
        "other-device",
        "1.5.0",
        pattern(70_000, 22),
        "release",
    );
    for (path, result) in [(&bundle, 0), (&bad, 1)] {
        let monitor = gw.monitor("type='signal',sender='de.pengutronix.rauc'");
        call(&gw, "InstallBundle", &["sa{sv}", path_str(path), "0"]).success();
        wait_for("the install to end", 60, || {
            property(&gw, "Operation") == "s \"idle\""
        });
        let msgs = monitor.stop();
        let sigs = rauc_signals(&msgs);
        let shown = || {
            sigs.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        // Progress: never the same value twice in a row.
        let progress: Vec<&Value> = sigs
            .iter()
            .filter(|(k, _)| k == "Progress")
            .map(|(_, v)| v)
            .collect();
        assert!(!progress.is_empty(), "{}", shown());
        for w in progress.windows(2) {
            assert_ne!(w[0], w[1], "a Progress value signalled twice:\n{}", shown());
        }
        // Every step the native interface reported (percent, message) appears, in order.
        let mut native: Vec<(Value, Value)> = Vec::new();
        for m in &msgs {
            if m["member"] == "PropertiesChanged" && m["payload"]["data"][0] == "io.rota.Agent1" {
                if let Some(p) = m["payload"]["data"][1].get("Progress") {
                    let step = (p["data"][0].clone(), p["data"][1].clone());
                    if native.last() != Some(&step) {
                        native.push(step);
                    }
                }
            }
        }
        let rauc: Vec<(Value, Value)> = progress
            .iter()
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        assert_eq!(
            rauc,
            native,
            "RAUC steps differ from the native ones:\n{}",
            shown()
        );
        // Operation installing comes before the first Progress.
        let pos = |what: &str, pred: &dyn Fn(&Value) -> bool| {
            sigs.iter()
                .rposition(|(k, v)| k == what && pred(v))
                .unwrap_or_else(|| panic!("no {what}:\n{}", shown()))
        };
        let installing = sigs
            .iter()
            .position(|(k, v)| k == "Operation" && v == "installing")
            .unwrap_or_else(|| panic!("no Operation installing:\n{}", shown()));
        let first_progress = sigs.iter().position(|(k, _)| k == "Progress").unwrap();
        assert!(installing < first_progress, "{}", shown());
        // The end: LastError, Completed, then Operation idle, and nothing after it.
        let last_error = pos("LastError", &|_| true);
        let completed = pos("Completed", &|v| v == result);
        let idle = pos("Operation", &|v| v == "idle");
        assert!(
            last_error < completed && completed < idle && idle == sigs.len() - 1,
            "order at the end:\n{}",
            shown()
        );
        if result == 1 {
            assert!(
                sigs[last_error]
                    .1
                    .as_str()
                    .unwrap()
                    .contains("other-device"),
                "{}",
                shown()
            );
        }
        // The getters answer with what was signalled.
        assert_eq!(
            property(&gw, "Progress"),
            format!(
                "(isi) {} {} {}",
                progress.last().unwrap()[0],
                progress.last().unwrap()[1],
                progress.last().unwrap()[2]
            )
        );
    }
}
