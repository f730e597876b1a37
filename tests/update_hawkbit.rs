//! The hawkBit DDI client in the real `rota service`, against a DDI simulator written
//! from the published API (tests/support/hawkbit_sim.py): a full deployment confirmed
//! only after the reboot and `mark good`, a rollback reported as failure, an install
//! failure, a cancel from the server mid-download, a download-only assignment, a
//! maintenance window, feedback kept through a server outage, and a refused token that
//! backs off instead of hammering the server.

mod support;
use serde_json::json;
use std::time::Duration;
use support::fixture::{event_span, Fixture};
use support::gateway::{pattern, wait_for, Gateway};
use support::hawkbit_sim::{has_feedback, HawkbitSim, TOKEN};

fn gateway(sim: &HawkbitSim, token: &str) -> Gateway {
    let gw = Gateway::with(
        Fixture::builder()
            .dbus("rauc-compat = false")
            .http("retries = 3\nstall-timeout = \"5s\""),
    );
    gw.append_config(&sim.config(token));
    gw
}

/// Waits for `n` more polls (requests for the controller's base resource).
fn wait_polls(sim: &HawkbitSim, n: u64) {
    sim.wait_count("base", sim.count("base"), n, 120);
}

fn poller_state(gw: &Gateway) -> serde_json::Value {
    std::fs::read(gw.path("data/poller.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(json!({}))
}

#[test]
fn a_deployment_is_installed_and_confirmed_after_the_reboot() {
    let sim = HawkbitSim::start();
    let mut gw = gateway(&sim, TOKEN);
    let (bundle, image) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(2 << 20, 51),
        "release",
    );
    let id = sim.deploy(&bundle, "1.1.0", "forced", "forced", None);
    gw.start_service();

    let a = sim.wait_action(&id, 60, "installed and activated", |a| {
        has_feedback(
            &a["feedback"],
            "proceeding",
            "none",
            "waiting for the reboot",
        )
    });
    assert!(
        has_feedback(
            &a["feedback"],
            "proceeding",
            "none",
            "installing v11.rota (version 1.1.0)"
        ),
        "{a:#}"
    );
    assert_eq!(
        (a["active"].as_bool(), a["status"].as_str()),
        (Some(true), Some("running")),
        "not closed before the reboot"
    );
    assert_eq!(
        &gw.read("b.img")[..image.len()],
        &image[..],
        "slot B holds the image"
    );
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");
    let st = sim.state();
    let data = &st["config_data"][0]["data"];
    assert_eq!(data["compatible"], "acme-gateway", "{st:#}");
    assert_eq!(data["booted_slot"], "A");
    assert!(
        sim.count("artifact") >= 2,
        "the bundle was streamed from the server with the token"
    );
    assert_eq!(st["counts"]["unauthorized"].as_u64().unwrap_or(0), 0);

    // Reboot into B: running, but not yet marked good, so not yet a success.
    gw.reboot_into("B");
    wait_polls(&sim, 3);
    let a = sim.action(&id);
    assert_eq!(a["active"], true, "waits for mark good: {a:#}");
    gw.rota(&["mark", "good", "booted"]).success();
    let a = sim.wait_action(&id, 30, "closed with success", |a| {
        a["status"] == "finished"
    });
    assert!(
        has_feedback(
            &a["feedback"],
            "closed",
            "success",
            "1.1.0 booted and was marked good"
        ),
        "{a:#}"
    );
    let ps = poller_state(&gw);
    assert!(ps["tracked"].is_null(), "{ps:#}");
    assert!(ps["done_actions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == id.as_str()));
    // Quiet afterwards: the action is not installed again.
    let installs = sim.count("artifact");
    wait_polls(&sim, 3);
    assert_eq!(sim.count("artifact"), installs);
    assert_eq!(gw.status_json()["last_install"]["result"], "good");
}

#[test]
fn a_rollback_after_the_reboot_is_reported_as_failure() {
    let sim = HawkbitSim::start();
    let mut gw = gateway(&sim, TOKEN);
    let (bundle, _) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 52),
        "release",
    );
    let id = sim.deploy(&bundle, "1.1.0", "forced", "forced", None);
    gw.start_service();
    sim.wait_action(&id, 60, "activated", |a| {
        has_feedback(
            &a["feedback"],
            "proceeding",
            "none",
            "waiting for the reboot",
        )
    });
    // U-Boot tried B until its attempts ran out and fell back to A.
    gw.stop_service();
    let cfg = gw.path("fw_env.config");
    gw.cmd(
        "fw_setenv",
        &["-c", cfg.to_str().unwrap(), "BOOT_B_LEFT", "0"],
    )
    .success();
    gw.start_service();
    let a = sim.wait_action(&id, 30, "closed with failure", |a| a["status"] == "error");
    assert!(
        has_feedback(&a["feedback"], "closed", "failure", "rolled back"),
        "{a:#}"
    );
    assert_eq!(gw.status_json()["last_install"]["result"], "rolled-back");
}

#[test]
fn an_install_failure_is_reported_with_its_reason() {
    let sim = HawkbitSim::start();
    let mut gw = gateway(&sim, TOKEN);
    // Signed with a key the device does not trust.
    let (bundle, _) = gw.bundle(
        "bad",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 53),
        "other",
    );
    let id = sim.deploy(&bundle, "1.1.0", "forced", "attempt", None);
    let env_before = gw.fw_printenv();
    gw.start_service();
    let a = sim.wait_action(&id, 60, "closed with failure", |a| a["status"] == "error");
    let detail = a["feedback"].as_array().unwrap().last().unwrap()["details"][0]
        .as_str()
        .unwrap()
        .to_owned();
    println!("failure detail: {detail}");
    assert!(
        detail.contains("signature") || detail.contains("key"),
        "{detail}"
    );
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], env_before["BOOT_ORDER"]);
    // The failed action is not retried.
    let n = sim.count("artifact");
    wait_polls(&sim, 3);
    assert_eq!(sim.count("artifact"), n);

    // A deployment without a .rota artifact fails at once, naming what it had.
    let txt = gw.path("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    let id2 = sim.deploy(&txt, "1.2.0", "forced", "forced", None);
    let a = sim.wait_action(&id2, 30, "closed with failure", |a| a["status"] == "error");
    assert!(
        has_feedback(
            &a["feedback"],
            "closed",
            "failure",
            "no .rota artifact (it has: notes.txt)"
        ),
        "{a:#}"
    );
}

#[test]
fn a_cancel_from_the_server_stops_the_install() {
    let sim = HawkbitSim::start();
    // 300 KiB/s: the 3 MiB image takes ~10 s to stream.
    sim.configure(json!({"throttle": 300 * 1024}));
    let mut gw = gateway(&sim, TOKEN);
    let (bundle, _) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(3 << 20, 54),
        "release",
    );
    let id = sim.deploy(&bundle, "1.1.0", "forced", "forced", None);
    gw.start_service();
    sim.wait_action(&id, 30, "installing", |a| {
        has_feedback(&a["feedback"], "proceeding", "none", "installing")
    });
    // The download is under way.
    wait_for("artifact bytes", 60, || sim.artifact_bytes() > 0);
    sim.cancel(&id);
    let a = sim.wait_action(&id, 60, "cancel confirmed", |a| a["status"] == "canceled");
    // Stopped mid-download: the simulator had not sent the whole bundle yet.
    let (sent, size) = (
        sim.artifact_bytes(),
        std::fs::metadata(&bundle).unwrap().len(),
    );
    println!("cancel confirmed after {sent} of {size} bytes");
    assert!(sent < size, "{sent} of {size} bytes sent");
    assert!(
        has_feedback(
            &a["cancel_feedback"],
            "closed",
            "success",
            "install cancelled"
        ),
        "{a:#}"
    );
    assert_eq!(
        a["cancel_warnings"], 0,
        "confirmed with closed, as hawkBit expects"
    );
    let st = gw.status_json();
    assert_eq!(st["last_install"]["result"], "cancelled", "{st:#}");
    let env = gw.fw_printenv();
    assert!(
        env["BOOT_ORDER"].starts_with('A') && env["BOOT_B_LEFT"] == "0",
        "B stays out of the boot selection: {env:?}"
    );

    // A cancel for an action that never started is confirmed at once.
    let id2 = sim.deploy(&bundle, "1.1.0", "skip", "skip", None);
    sim.cancel(&id2);
    let a = sim.wait_action(&id2, 30, "cancel confirmed", |a| a["status"] == "canceled");
    assert!(
        has_feedback(
            &a["cancel_feedback"],
            "closed",
            "success",
            "nothing was being installed"
        ),
        "{a:#}"
    );
}

#[test]
fn download_only_and_maintenance_window() {
    let sim = HawkbitSim::start();
    let mut gw = gateway(&sim, TOKEN);
    let (bundle, image) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(4 << 20, 55),
        "release",
    );
    let b_before = gw.read("b.img");
    // Download only: hawkBit sends download=forced, update=skip.
    let id = sim.deploy(&bundle, "1.1.0", "forced", "skip", None);
    gw.start_service();
    let a = sim.wait_action(&id, 30, "downloaded", |a| a["status"] == "downloaded");
    assert!(
        has_feedback(
            &a["feedback"],
            "downloaded",
            "none",
            "signed by a trusted key"
        ),
        "{a:#}"
    );
    assert!(
        has_feedback(
            &a["feedback"],
            "downloaded",
            "none",
            "download only: not installed"
        ),
        "{a:#}"
    );
    assert_eq!(
        a["active"], false,
        "hawkBit closes a download-only action on downloaded"
    );
    assert_eq!(gw.read("b.img"), b_before, "nothing was written");
    assert!(gw.status_json()["last_install"].is_null());

    // A maintenance window that is closed: checked and reported, installed once it opens.
    let id = sim.deploy(&bundle, "1.1.0", "forced", "forced", Some("unavailable"));
    let a = sim.wait_action(&id, 30, "downloaded", |a| a["status"] == "downloaded");
    assert!(
        has_feedback(
            &a["feedback"],
            "downloaded",
            "none",
            "waits for the maintenance window"
        ),
        "{a:#}"
    );
    wait_polls(&sim, 3);
    assert_eq!(
        gw.read("b.img"),
        b_before,
        "not installed outside the window"
    );
    sim.change(&id, json!({"window": "available"}));
    sim.wait_action(&id, 60, "installed", |a| {
        has_feedback(
            &a["feedback"],
            "proceeding",
            "none",
            "waiting for the reboot",
        )
    });
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
}

#[test]
fn feedback_survives_a_server_outage() {
    let sim = HawkbitSim::start();
    let mut gw = gateway(&sim, TOKEN);
    let (bundle, _) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 56),
        "release",
    );
    // The server refuses the first feedback messages with 503.
    sim.configure(json!({"fail_feedback": 3}));
    let id = sim.deploy(&bundle, "1.1.0", "forced", "forced", None);
    gw.start_service();
    let a = sim.wait_action(&id, 60, "activated", |a| {
        has_feedback(
            &a["feedback"],
            "proceeding",
            "none",
            "waiting for the reboot",
        )
    });
    // Both messages arrived, in order, despite the failures.
    let f = a["feedback"].as_array().unwrap();
    let first = f
        .iter()
        .position(|x| x["details"][0].as_str().unwrap().contains("installing"))
        .unwrap();
    let second = f
        .iter()
        .position(|x| {
            x["details"][0]
                .as_str()
                .unwrap()
                .contains("waiting for the reboot")
        })
        .unwrap();
    assert!(first < second, "{a:#}");
    assert!(sim.count("deploymentBaseFeedback") >= f.len() as u64 + 3);
    // A result queued while the service is down is sent after the restart.
    sim.configure(json!({"fail_feedback": 1000}));
    gw.reboot_into("B");
    let refused = sim.count("deploymentBaseFeedback");
    gw.rota(&["mark", "good", "booted"]).success();
    // The result was sent, and refused.
    sim.wait_count("deploymentBaseFeedback", refused, 1, 120);
    let ps = poller_state(&gw);
    assert!(
        !ps["pending"].as_array().unwrap().is_empty(),
        "the result waits in poller.json: {ps:#}"
    );
    gw.stop_service();
    sim.configure(json!({"fail_feedback": 0}));
    gw.start_service();
    let a = sim.wait_action(&id, 30, "closed with success", |a| {
        a["status"] == "finished"
    });
    assert!(
        has_feedback(&a["feedback"], "closed", "success", "marked good"),
        "{a:#}"
    );
}

#[test]
fn a_refused_token_backs_off_and_says_why() {
    let sim = HawkbitSim::start();
    let mut gw = gateway(&sim, "wrong-token");
    gw.start_service();
    // interval 1 s, then backoff 2, 4, 8 s... (each 80-100 %): from the first refused
    // poll to the fourth at least 1.6 + 3.2 + 6.4 s pass, where polls every interval
    // would take 3 s. (A busy machine only makes it longer.)
    let span = event_span(0, 4, 120, || sim.count("unauthorized"));
    println!("4 polls with a refused token over {span:?}");
    assert!(span >= Duration::from_secs(9), "{span:?}");
    let fourth = std::time::Instant::now();
    let polls = sim.count("unauthorized");
    let ps = poller_state(&gw);
    let err = ps["last_error"].as_str().unwrap();
    assert!(err.contains("401") && err.contains("target-token"), "{err}");
    // `rota poll` still asks at once.
    gw.rota(&["poll"]).success();
    wait_for("a requested poll", 60, || sim.count("unauthorized") > polls);
    // The back-off would bring the fifth poll no sooner than 12.8 s after the fourth.
    assert!(
        fourth.elapsed() < Duration::from_secs(11),
        "the poll came only after {:?}: not at once",
        fourth.elapsed()
    );
}

/// The simulator keeps the feedback's time as the client sent it: `time`
/// ("YYYYMMDDTHHMMSS", rauc-hawkbit-updater) or `timestamp` (ms, rota).
#[test]
fn the_simulator_records_the_feedback_time_as_sent() {
    let sim = HawkbitSim::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.rota");
    std::fs::write(&file, pattern(4096, 1)).unwrap();
    let id = sim.deploy(&file, "1.1.0", "forced", "forced", None);
    let status = |execution: &str, detail: &str| json!({"execution": execution, "result": {"finished": "none"}, "details": [detail]});
    assert_eq!(
        sim.client_feedback(
            &id,
            json!({"id": id, "time": "20240101T120000", "status": status("proceeding", "10% Installing")})
        ),
        200
    );
    assert_eq!(
        sim.client_feedback(
            &id,
            json!({"timestamp": 1_700_000_000_000u64, "status": status("proceeding", "20% Copying")})
        ),
        200
    );
    let fb = sim.action(&id)["feedback"].clone();
    assert_eq!(fb[0]["time"], "20240101T120000", "{fb:#}");
    assert!(fb[0].get("timestamp").is_none(), "{fb:#}");
    assert_eq!(fb[1]["timestamp"], 1_700_000_000_000u64, "{fb:#}");
    assert!(fb[1].get("time").is_none(), "{fb:#}");
}
