//! Test helpers around the real tools (imgtool, the smpclient Python) and node configs.
//! A missing tool makes the test fail with instructions, never pass silently.

use rota::config::{McuSection, McuTransportKind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Finds a tool of the Python venv: `$ROTA_VENV/bin`, `<repo>/.venv/bin`,
/// `/work/venv/bin`, then `PATH`.
pub fn venv_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("ROTA_VENV") {
        dirs.push(PathBuf::from(v).join("bin"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin"));
    dirs.push(PathBuf::from("/work/venv/bin"));
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    for d in dirs {
        let c = d.join(name);
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "{name} not found (looked in $ROTA_VENV/bin, .venv/bin, /work/venv/bin, PATH): \
         run scripts/setup-deps.sh or `python3 -m venv .venv && .venv/bin/pip install imgtool 'smpclient[serial]'`"
    );
}

/// The venv's python (with smpclient), checked to import it.
pub fn python_with_smpclient() -> PathBuf {
    let py = venv_bin("python3");
    let ok = Command::new(&py)
        .args(["-c", "import smpclient, serial"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} cannot import smpclient and pyserial: pip install 'smpclient[serial]'",
        py.display()
    );
    py
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `imgtool keygen -t ed25519`; returns (private key, public key PEM).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    run(Command::new(venv_bin("imgtool"))
        .arg("keygen")
        .arg("-k")
        .arg(&key)
        .args(["-t", "ed25519"]));
    run(Command::new(venv_bin("imgtool"))
        .arg("getpub")
        .arg("-k")
        .arg(&key)
        .args(["-e", "pem", "-o"])
        .arg(&public));
    (key, public)
}

/// `imgtool sign` of `payload` as in the reference (header 0x200, align 4).
pub fn sign(dir: &Path, key: &Path, payload: &[u8], version: &str, extra: &[&str]) -> PathBuf {
    let input = dir.join(format!("in-{version}-{}.bin", payload.len()));
    std::fs::write(&input, payload).unwrap();
    let out = dir.join(format!(
        "app-{version}-{}{}.signed.bin",
        payload.len(),
        extra.join("").replace('-', "")
    ));
    run(Command::new(venv_bin("imgtool"))
        .arg("sign")
        .arg("--key")
        .arg(key)
        .args([
            "--header-size",
            "0x200",
            "--align",
            "4",
            "--version",
            version,
            "--slot-size",
            "0x100000",
            "--pad-header",
        ])
        .args(extra)
        .arg(&input)
        .arg(&out));
    out
}

/// `imgtool verify -k KEY FILE` succeeds?
pub fn imgtool_verify(key: &Path, file: &Path) -> bool {
    Command::new(venv_bin("imgtool"))
        .arg("verify")
        .arg("-k")
        .arg(key)
        .arg(file)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Deterministic pseudo-random payload.
pub fn payload(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub fn serial_node(dev: &Path, timeout: Duration) -> McuSection {
    McuSection {
        transport: McuTransportKind::Serial,
        device: Some(dev.to_owned()),
        baud: 115_200,
        address: None,
        key: None,
        image: 0,
        timeout,
    }
}

pub fn udp_node(addr: &str, timeout: Duration) -> McuSection {
    McuSection {
        transport: McuTransportKind::Udp,
        device: None,
        baud: 115_200,
        address: Some(addr.to_owned()),
        key: None,
        image: 0,
        timeout,
    }
}
