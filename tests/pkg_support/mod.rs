//! Test support for the packaging tests: a file-backed gateway (slot files, a U-Boot env
//! made by the real `mkenvimage`, a kernel command line file, keys), a private
//! `dbus-daemon` started from a given bus configuration, the real `rota service` on it,
//! and `busctl` run as another user through `setpriv`.
//!
//! `ROTA_TEST_RUNNER` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`) prefixes every rota
//! binary started here, so the same tests run for ARM targets under qemu-user.
#![allow(dead_code)]

pub mod http;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Size of each slot file: enough for a small test image, cheap under qemu.
pub const SLOT_SIZE: usize = 1 << 20;

/// A `Command` for the rota binary built with the tests, behind `ROTA_TEST_RUNNER`.
pub fn rota_command() -> Command {
    let exe = env!("CARGO_BIN_EXE_rota");
    match std::env::var("ROTA_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().unwrap());
            cmd.args(parts).arg(exe);
            cmd
        }
        _ => Command::new(exe),
    }
}

/// Runs a tool that must be installed; a missing tool fails the test with its package name.
pub fn tool(program: &str, package: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(found, "{program} is missing: apt-get install {package}");
    Command::new(program)
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A gateway made of files in a world-readable temporary directory (so that an
/// unprivileged caller can reach the bus socket and bundles placed for it).
pub struct Gateway {
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Slot A booted with a pattern, slot B empty, env `BOOT_ORDER=A B`, keys `release`.
    /// `dbus_section` is appended as the `[dbus]` table.
    pub fn new(dbus_section: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(d.join("keys")).unwrap();
        std::fs::write(d.join("a.img"), pattern(SLOT_SIZE, 1)).unwrap();
        std::fs::write(d.join("b.img"), vec![0u8; SLOT_SIZE]).unwrap();
        std::fs::write(
            d.join("env.txt"),
            "bootcmd=run distro_bootcmd\nBOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
        )
        .unwrap();
        run_ok(
            tool("mkenvimage", "u-boot-tools")
                .args(["-s", "0x4000", "-o"])
                .arg(d.join("uboot.env"))
                .arg(d.join("env.txt")),
        );
        std::fs::write(
            d.join("fw_env.config"),
            format!("{} 0x0 0x4000\n", d.join("uboot.env").display()),
        )
        .unwrap();
        std::fs::write(d.join("cmdline"), "console=ttyS0 rota.slot=A\n").unwrap();
        rota::bundle::keys::write_keypair(&d.join("keys"), "release").unwrap();
        std::fs::write(
            d.join("system.toml"),
            format!(
                r#"[system]
compatible = "acme-gateway"
data-dir = "data"
kernel-cmdline = "cmdline"
boot-attempts = 3

[keyring]
paths = ["keys/release.pub.pem"]

[bootloader]
type = "uboot"
fw-env-config = "fw_env.config"

[slot.rootfs.0]
device = "a.img"
bootname = "A"

[slot.rootfs.1]
device = "b.img"
bootname = "B"

[dbus]
{dbus_section}
"#
            ),
        )
        .unwrap();
        Gateway { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Builds `name.rota` (one rootfs image of `image`) with the `rota` CLI; world-readable.
    pub fn bundle(&self, name: &str, version: &str, image: &[u8]) -> PathBuf {
        let src = self.path(&format!("src-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("rootfs.ext4"), image).unwrap();
        std::fs::write(
            src.join("manifest.toml"),
            format!("[update]\ncompatible = \"acme-gateway\"\nversion = \"{version}\"\n\n[[image]]\nslot-class = \"rootfs\"\nfile = \"rootfs.ext4\"\n"),
        )
        .unwrap();
        let out = self.path(&format!("{name}.rota"));
        run_ok(
            rota_command()
                .args(["bundle", "create"])
                .arg(&src)
                .arg(&out)
                .arg("--key")
                .arg(self.path("keys/release.key.pem"))
                .args(["--chunk-size", "65536"]),
        );
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
        out
    }
}

/// The default policy of Debian's system bus (`/usr/share/dbus-1/system.conf`): calls are
/// denied unless a service's policy file opens them; signals and replies pass.
pub const SYSTEM_BUS_DEFAULTS: &str = r#"
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
"#;

/// A private `dbus-daemon` of type system; killed on drop.
pub struct Bus {
    child: Child,
    pub address: String,
}

impl Bus {
    /// Starts a bus listening in `dir` whose config holds `policies` (XML elements such as
    /// `<policy>` or `<include>`).
    pub fn start(dir: &Path, policies: &str) -> Bus {
        let socket = dir.join("system_bus_socket");
        let conf = dir.join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
{policies}
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let mut child = tool("dbus-daemon", "dbus")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("dbus-daemon.log")).unwrap())
            .spawn()
            .expect("cannot start dbus-daemon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("unix:"),
            "dbus-daemon did not print its address (bad config {}?): {line:?}",
            conf.display()
        );
        Bus {
            child,
            address: line.trim().to_owned(),
        }
    }
}

impl Bus {
    /// The daemon's process (a test may stop it to play a bus that no longer answers).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long to wait for the service to take its name: qemu-user is slow to start it.
fn startup_budget() -> Duration {
    if std::env::var("ROTA_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(20)
    }
}

/// The real `rota service` on a bus; stopped with SIGTERM on drop. Its stderr goes to
/// `log`.
pub struct Service {
    child: Child,
    pub log: PathBuf,
}

impl Service {
    /// Starts the service with `ROTA_CONFIG` and the bus address; `env` adds or (value
    /// None) removes variables. Waits until it serves `/io/rota`.
    pub fn start(gw: &Gateway, bus: &Bus, env: &[(&str, Option<&str>)]) -> Service {
        let log = gw.path("service.log");
        let mut cmd = rota_command();
        cmd.arg("service")
            .env("ROTA_CONFIG", gw.path("system.toml"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd.spawn().expect("cannot start rota service");
        let mut svc = Service { child, log };
        let start = Instant::now();
        loop {
            // The name is taken before the objects are served: wait for an answer from
            // the object itself.
            let out = busctl(
                bus,
                None,
                &[
                    "get-property",
                    "io.rota",
                    "/io/rota",
                    "io.rota.Agent1",
                    "Operation",
                ],
            );
            if out.status.success() {
                return svc;
            }
            if let Ok(Some(status)) = svc.child.try_wait() {
                panic!(
                    "rota service exited ({status}) before taking io.rota:\n{}",
                    svc.log_text()
                );
            }
            assert!(
                start.elapsed() < startup_budget(),
                "rota service did not take io.rota in time:\n{}",
                svc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("rota service ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Who runs a `busctl` call: None is root (the test itself).
#[derive(Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Keep the user's supplementary groups (`--init-groups`) or drop them all.
    pub with_groups: bool,
}

/// `busctl --address=… ARGS` as `caller` (via `setpriv`), never interactive.
pub fn busctl(bus: &Bus, caller: Option<Caller>, args: &[&str]) -> Output {
    let mut cmd = match caller {
        None => tool("busctl", "systemd"),
        Some(c) => {
            let mut cmd = tool("setpriv", "util-linux");
            cmd.arg(format!("--reuid={}", c.uid))
                .arg(format!("--regid={}", c.gid))
                .arg(if c.with_groups {
                    "--init-groups"
                } else {
                    "--clear-groups"
                })
                .arg("busctl");
            cmd
        }
    };
    // At debug level busctl logs every message it gets, with the error's sender and name
    // (without it, it only prints "Access denied"): see `reply_error`.
    cmd.env("SYSTEMD_LOG_LEVEL", "debug")
        .arg(format!("--address={}", bus.address))
        .args(["--no-pager", "--no-legend", "--timeout=30"])
        .args(args)
        .output()
        .expect("cannot run busctl")
}

/// The error a `busctl` call got back: (sender, error name, message), from busctl's debug
/// log line `Got message type=error sender=… error-name=… error-message=…`.
pub fn reply_error(out: &Output) -> Option<(String, String, String)> {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("Got message type=error "))?;
    let field = |key: &str| {
        let start = line.find(key)? + key.len();
        let rest = &line[start..];
        Some(rest[..rest.find(' ').unwrap_or(rest.len())].to_owned())
    };
    let message = line
        .find("error-message=")
        .map(|i| line[i + "error-message=".len()..].to_owned())?;
    Some((field(" sender=")?, field(" error-name=")?, message))
}
