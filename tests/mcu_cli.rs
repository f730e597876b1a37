//! `rota mcu list|state|relay` against simulated nodes on a pty and on UDP, with a real
//! system.toml and imgtool-signed images; exit codes per SPEC §5.

mod mcu_sim;

use mcu_sim::{tools, Sim, SimConfig};
use std::path::Path;
use std::process::{Command, Output};

fn rota(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rota"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn list_state_relay_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = tools::keygen(dir.path(), "release");
    let mut serial = Sim::new(SimConfig::default());
    let pty = serial.serve_pty().unwrap();
    let mut udp = Sim::new(SimConfig::default());
    let addr = udp.serve_udp("127.0.0.1:0").unwrap();
    let config = dir.path().join("system.toml");
    std::fs::write(
        &config,
        format!(
            r#"[system]
compatible = "test-gateway"
data-dir = "data"

[mcu.sensor]
transport = "serial"
device = "{}"
baud = 115200
key = "release.pub.pem"
timeout = "300ms"

[mcu.radio]
transport = "udp"
address = "{addr}"
key = "{}"
timeout = "300ms"
"#,
            pty.display(),
            public.display()
        ),
    )
    .unwrap();

    let o = rota(&config, &["mcu", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    for n in arr {
        assert_eq!(n["version"], "1.0.0", "{v}");
        assert_eq!(n["state"], "confirmed", "{v}");
    }
    assert!(arr
        .iter()
        .any(|n| n["name"] == "sensor"
            && n["transport"].as_str().unwrap().starts_with("serial /dev/")));

    let o = rota(&config, &["mcu", "state", "sensor"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("slot 0: version 1.0.0") && out.contains("active confirmed"),
        "{out}"
    );
    assert!(out.contains("buffer 1024 bytes"), "{out}");

    let image = tools::sign(dir.path(), &key, &tools::payload(30_000, 11), "1.4.0", &[]);
    let o = rota(
        &config,
        &["mcu", "relay", "sensor", image.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("sensor: confirmed version 1.4.0"),
        "{}",
        text(&o)
    );
    assert_eq!(serial.dev().primary.data, std::fs::read(&image).unwrap());

    // Tampered: refused, exit 1, nothing sent.
    let mut b = std::fs::read(&image).unwrap();
    b[0x400] ^= 4;
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, b).unwrap();
    let before = udp.dev().stats.requests;
    let o = rota(&config, &["mcu", "relay", "radio", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("SHA256 TLV does not match"),
        "{}",
        text(&o)
    );
    assert_eq!(udp.dev().stats.requests, before);

    // Reverted by the node: exit 1, and `list` shows it.
    udp.dev().faults.boot_fail = true;
    let o = rota(&config, &["mcu", "relay", "radio", image.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("reverted"), "{}", text(&o));
    let o = rota(&config, &["mcu", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let radio = out.lines().find(|l| l.starts_with("radio")).unwrap();
    assert!(
        radio.contains("1.0.0") && radio.contains("reverted"),
        "{out}"
    );
    let sensor = out.lines().find(|l| l.starts_with("sensor")).unwrap();
    assert!(
        sensor.contains("1.4.0") && sensor.contains("confirmed"),
        "{out}"
    );

    // Unknown node: usage error.
    let o = rota(
        &config,
        &["mcu", "relay", "nosuch", image.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no MCU node named \"nosuch\"") && text(&o).contains("radio, sensor"),
        "{}",
        text(&o)
    );

    // A node that does not answer: list reports it unreachable, state fails with exit 1.
    udp.dev().faults.silent = true;
    let o = rota(&config, &["mcu", "state", "radio"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no answer"), "{}", text(&o));
    let o = rota(&config, &["mcu", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let radio = v
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "radio")
        .unwrap()
        .clone();
    assert_eq!(radio["state"], "unreachable", "{v}");
    drop(serial);
}

#[test]
fn relay_killed_mid_upload_resumes_in_a_new_process() {
    // SIGKILL of the relaying process (no cleanup at all), then a new process: it
    // continues from the node's offset, by the upload session's SHA-256.
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = tools::keygen(dir.path(), "release");
    let mut sim = Sim::new(SimConfig {
        baud: Some(115_200),
        ..Default::default()
    });
    let pty = sim.serve_pty().unwrap();
    let config = dir.path().join("system.toml");
    std::fs::write(
        &config,
        format!(
            "[system]\ncompatible = \"t\"\ndata-dir = \"data\"\n\n[mcu.sensor]\ntransport = \"serial\"\ndevice = \"{}\"\nkey = \"{}\"\ntimeout = \"2s\"\n",
            pty.display(),
            public.display()
        ),
    )
    .unwrap();
    let image = tools::sign(dir.path(), &key, &tools::payload(24_000, 12), "3.3.0", &[]);
    let size = std::fs::metadata(&image).unwrap().len();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rota"))
        .arg("--config")
        .arg(&config)
        .args(["mcu", "relay", "sensor"])
        .arg(&image)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while sim.dev().stats.bytes_written < size / 3 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "upload did not progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let written = sim.dev().stats.bytes_written;
    assert!(written < size, "the upload finished before the kill");
    let rec = rota::mcu::record::load(&dir.path().join("data"), "sensor")
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.relay.as_ref().unwrap().phase,
        rota::mcu::record::RelayPhase::Uploading
    );

    let o = rota(
        &config,
        &["mcu", "relay", "sensor", image.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resumed at"), "{}", text(&o));
    let d = sim.dev();
    assert_eq!(d.stats.resumed_sessions, 1);
    assert!(
        d.stats.bytes_written < size + 2048,
        "resent {} of {size} bytes",
        d.stats.bytes_written
    );
    assert_eq!(d.primary.data, std::fs::read(&image).unwrap());
    assert!(d.primary_confirmed);
}
