//! Protocol fidelity: the PyPI `smpclient` (a real MCUmgr client) drives the MCU
//! simulator over a pty (serial console framing) and over UDP: echo, MCUmgr params,
//! image state, upload, test, reset, confirm. The simulator must end up with exactly
//! the uploaded bytes, running and confirmed.

mod mcu_sim;

use mcu_sim::{tools, Sim, SimConfig};
use std::process::Command;

fn drive(kind: &str, address: &str, image: &std::path::Path) -> serde_json::Value {
    let py = tools::python_with_smpclient();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcu_smpclient.py");
    let out = Command::new(py)
        .arg(script)
        .args([kind, address])
        .arg(image)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smpclient over {kind} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn check(kind: &str, sim: &Sim, address: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = tools::keygen(dir.path(), "k");
    let image = tools::sign(dir.path(), &key, &tools::payload(50_000, 3), "2.1.0", &[]);
    let bytes = std::fs::read(&image).unwrap();
    let old_hash = hex::encode(&sim.dev().primary.hash);

    let r = drive(kind, address, &image);
    assert_eq!(r["echo"], "hello from smpclient");
    assert_eq!(r["buf_size"], 1024);
    assert_eq!(r["before"][0]["hash"], old_hash.as_str());
    assert_eq!(r["before"][0]["active"], true);
    assert_eq!(r["upload_last_offset"], bytes.len());
    assert!(r["upload_offsets"].as_u64().unwrap() > 10, "{r}");
    assert_eq!(r["pending_after_test"], true);
    let new_hash = hex::encode(&sim.dev().primary.hash);
    assert_eq!(r["after_reset"][0]["hash"], new_hash.as_str(), "{r}");
    assert_eq!(r["after_reset"][0]["version"], "2.1.0");
    assert_eq!(r["after_reset"][0]["confirmed"], false);
    assert_eq!(r["after_confirm"][0]["confirmed"], true);
    assert_eq!(r["bad_hash_is_error"], true);

    let d = sim.dev();
    assert_eq!(
        d.stats.last_upload.as_deref(),
        Some(bytes.as_slice()),
        "received bytes differ from the image"
    );
    assert_eq!(d.primary.data, bytes);
    assert!(d.primary_confirmed);
    assert_eq!(d.stats.bad_frames_in, 0);
}

#[test]
fn smpclient_over_pty_echo_state_upload_test_confirm() {
    let mut sim = Sim::new(SimConfig::default());
    let pty = sim.serve_pty().unwrap();
    check("serial", &sim, pty.to_str().unwrap());
}

#[test]
fn smpclient_over_udp_echo_state_upload_test_confirm() {
    let mut sim = Sim::new(SimConfig::default());
    let addr = sim.serve_udp("127.0.0.1:0").unwrap();
    check("udp", &sim, &addr.to_string());
}
