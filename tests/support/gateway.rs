//! A simulated gateway in a temp dir: two slot files (A booted, B inactive), a U-Boot
//! env made by the real `mkenvimage`, a kernel command line file, keys made by
//! `rota keygen`, a private `dbus-daemon` as the system bus, and `rota service` on it.
//! Everything is killed on drop. `ROTA_TEST_RUNNER` (e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu")
//! prefixes every spawned rota binary, for ARM test runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SLOT_SIZE: usize = 8 << 20;

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

/// The rota binary, wrapped in the test runner when cross-testing.
pub fn rota_cmd() -> Command {
    let bin = env!("CARGO_BIN_EXE_rota");
    match std::env::var("ROTA_TEST_RUNNER")
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        Some(r) => {
            let mut parts = r.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or("env"));
            c.args(parts).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

pub struct Gateway {
    pub dir: tempfile::TempDir,
    dbus: Option<Child>,
    pub service: Option<Child>,
    pub bus: String,
}

impl Gateway {
    /// A gateway with its bus up but the service not started.
    pub fn new(rauc_compat: bool) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.img"), pattern(SLOT_SIZE, 1)).unwrap();
        std::fs::write(d.join("b.img"), vec![0u8; SLOT_SIZE]).unwrap();
        std::fs::write(d.join("env.txt"), "bootcmd=run distro_bootcmd\nBOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nserial=GW-1\n").unwrap();
        let st = Command::new("mkenvimage")
            .args(["-s", "0x4000", "-o"])
            .arg(d.join("uboot.env"))
            .arg(d.join("env.txt"))
            .status()
            .expect("mkenvimage (u-boot-tools) must be installed");
        assert!(st.success());
        std::fs::write(
            d.join("fw_env.config"),
            format!("{} 0x0 0x4000\n", d.join("uboot.env").display()),
        )
        .unwrap();
        std::fs::write(d.join("cmdline"), "console=ttyAMA0 rota.slot=A\n").unwrap();
        let mut gw = Gateway {
            dir,
            dbus: None,
            service: None,
            bus: String::new(),
        };
        gw.rota(&["keygen", "--out-dir", "keys", "--name", "release"])
            .success();
        gw.rota(&["keygen", "--out-dir", "keys", "--name", "other"])
            .success();
        std::fs::write(
            gw.path("system.toml"),
            format!(
                "[system]\ncompatible = \"acme-gateway\"\ndata-dir = \"data\"\nkernel-cmdline = \"cmdline\"\n\
                 [keyring]\npaths = [\"keys/release.pub.pem\"]\n[bootloader]\nfw-env-config = \"fw_env.config\"\n\
                 [slot.rootfs.0]\ndevice = \"a.img\"\nbootname = \"A\"\n[slot.rootfs.1]\ndevice = \"b.img\"\nbootname = \"B\"\n\
                 [dbus]\nrauc-compat = {rauc_compat}\n"
            ),
        )
        .unwrap();
        gw.start_bus();
        gw
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn start_bus(&mut self) {
        let sock = self.path("bus.sock");
        std::fs::write(
            self.path("bus.conf"),
            format!(
                "<busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/><allow send_destination=\"*\"/>\
                 <allow receive_sender=\"*\"/></policy></busconfig>",
                sock.display()
            ),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", self.path("bus.conf").display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed");
        self.dbus = Some(child);
        self.bus = format!("unix:path={}", sock.display());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn env_vars(&self, c: &mut Command) {
        c.current_dir(self.dir.path())
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .env("ROTA_CONFIG", self.path("system.toml"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
    }

    /// Runs the rota CLI to completion (killed after 300 s, so a hang fails the test).
    pub fn rota(&self, args: &[&str]) -> Run {
        let mut c = Command::new("timeout");
        let inner = rota_cmd();
        c.args(["--kill-after=5", "300"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .args(args);
        self.env_vars(&mut c);
        Run(c.output().expect("rota runs"))
    }

    /// Any command with the gateway's bus.
    pub fn cmd(&self, prog: &str, args: &[&str]) -> Run {
        let mut c = Command::new(prog);
        c.args(args);
        self.env_vars(&mut c);
        Run(c
            .output()
            .unwrap_or_else(|e| panic!("{prog} must be installed: {e}")))
    }

    pub fn start_service(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("service.log"))
            .unwrap();
        let mut c = rota_cmd();
        c.arg("service").stdout(Stdio::null()).stderr(log);
        self.env_vars(&mut c);
        self.service = Some(c.spawn().expect("rota service starts"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cmd("busctl", &["--system", "--timeout=2", "status", "io.rota"]);
            if out.0.status.success() {
                break;
            }
            if let Some(Ok(Some(st))) = self.service.as_mut().map(|s| s.try_wait()) {
                panic!(
                    "rota service exited with {st}: {}",
                    String::from_utf8_lossy(&self.read("service.log"))
                );
            }
            assert!(
                Instant::now() < deadline,
                "rota service did not take io.rota"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a power cut would stop it.
    pub fn kill_service(&mut self) {
        if let Some(mut s) = self.service.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    pub fn stop_service(&mut self) {
        if let Some(mut s) = self.service.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = s.wait();
        }
    }

    /// A bundle with one rootfs image; returns (path, image).
    pub fn bundle(
        &self,
        name: &str,
        compatible: &str,
        version: &str,
        image: Vec<u8>,
        key: &str,
    ) -> (PathBuf, Vec<u8>) {
        let src = self.path(&format!("src-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("rootfs.ext4"), &image).unwrap();
        std::fs::write(
            src.join("manifest.toml"),
            format!("[update]\ncompatible = \"{compatible}\"\nversion = \"{version}\"\n\n[[image]]\nslot-class = \"rootfs\"\nfile = \"rootfs.ext4\"\n"),
        )
        .unwrap();
        let out = self.path(&format!("{name}.rota"));
        let keyfile = format!("keys/{key}.key.pem");
        self.rota(&[
            "bundle",
            "create",
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "--key",
            &keyfile,
        ])
        .success();
        (out, image)
    }

    pub fn fw_printenv(&self) -> std::collections::BTreeMap<String, String> {
        let out = self
            .cmd(
                "fw_printenv",
                &["-c", self.path("fw_env.config").to_str().unwrap()],
            )
            .success();
        out.lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.rota(&["status", "--json"]).success()).unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill_service();
        if let Some(mut d) = self.dbus.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// A finished command.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts exit 0 and returns stdout.
    pub fn success(&self) -> String {
        assert!(
            self.0.status.success(),
            "command failed ({}): {}\n{}",
            self.0.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
