//! A simulated gateway in a temp dir: two slot files (A booted, B inactive), a U-Boot
//! env made by the real `mkenvimage`, a kernel command line file, keys made by
//! `rota keygen`, a private `dbus-daemon` as the system bus, and `rota service` on it.
//! Everything is killed on drop. `ROTA_TEST_RUNNER` (e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu")
//! prefixes every spawned rota binary, for ARM test runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SLOT_SIZE: usize = 8 << 20;

static MONITORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

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

    /// Turns the env into a redundant one: two copies of 0x4000 in `uboot.env` (made by
    /// `mkenvimage -r`), the first current — what the docs ask for on real boards.
    pub fn use_redundant_env(&self) {
        let st = Command::new("mkenvimage")
            .args(["-r", "-s", "0x4000", "-o"])
            .arg(self.path("copy.env"))
            .arg(self.path("env.txt"))
            .status()
            .expect("mkenvimage (u-boot-tools) must be installed");
        assert!(st.success());
        let copy = self.read("copy.env");
        let mut both = copy.clone();
        both.extend_from_slice(&copy);
        // The second copy's flag is older, so the first one is current.
        both[0x4000 + 4] = 0;
        std::fs::write(self.path("uboot.env"), both).unwrap();
        std::fs::write(
            self.path("fw_env.config"),
            format!(
                "{env} 0x0 0x4000\n{env} 0x4000 0x4000\n",
                env = self.path("uboot.env").display()
            ),
        )
        .unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// A private dbus-daemon as the system bus (tools-here.md §1); its address comes from
    /// `--print-address=1`, which it prints once it listens.
    fn start_bus(&mut self) {
        let sock = self.path("bus.sock");
        std::fs::write(
            self.path("bus.conf"),
            format!(
                "<busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/><allow send_destination=\"*\"/>\
                 <allow receive_sender=\"*\"/><allow eavesdrop=\"true\"/></policy></busconfig>",
                sock.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", self.path("bus.conf").display()))
            .args([
                "--nofork",
                "--nopidfile",
                "--print-address=1",
                "--print-pid=1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut address = String::new();
        std::io::BufRead::read_line(&mut out, &mut address).unwrap();
        self.dbus = Some(child);
        assert!(
            address.starts_with("unix:path="),
            "dbus-daemon printed no address: {address:?}"
        );
        self.bus = address.trim().to_owned();
        // Keep the pipe open (and drained) so the daemon never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    }

    /// Kills the bus daemon (the service loses its connection).
    pub fn kill_bus(&mut self) {
        if let Some(mut d) = self.dbus.take() {
            let _ = d.kill();
            let _ = d.wait();
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

    /// Spawns `rota service` and waits until it answers on the bus.
    pub fn start_service(&mut self) {
        self.spawn_service();
        self.wait_for_service();
    }

    /// Spawns `rota service` (stderr appended to service.log) without waiting for it.
    pub fn spawn_service(&mut self) {
        self.spawn_service_with(|_| {});
    }

    /// [`Gateway::spawn_service`] with extra settings (environment) on the command.
    pub fn spawn_service_with(&mut self, f: impl FnOnce(&mut Command)) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("service.log"))
            .unwrap();
        let mut c = rota_cmd();
        c.arg("service").stdout(Stdio::null()).stderr(log);
        self.env_vars(&mut c);
        f(&mut c);
        self.service = Some(c.spawn().expect("rota service starts"));
    }

    /// Waits until the service owns io.rota and serves its object (a property answers).
    pub fn wait_for_service(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.busctl(&[
                "get-property",
                "io.rota",
                "/io/rota",
                "io.rota.Agent1",
                "Operation",
            ]);
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
                "rota service did not serve /io/rota: {}",
                String::from_utf8_lossy(&self.read("service.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process id of the running service.
    pub fn service_pid(&self) -> i32 {
        self.service.as_ref().expect("service running").id() as i32
    }

    /// Waits up to `secs` for the service to exit; returns its exit code.
    pub fn wait_service_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let s = self.service.as_mut().expect("service running");
        loop {
            if let Some(st) = s.try_wait().unwrap() {
                self.service = None;
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "rota service did not exit within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `busctl --system ARGS` on the gateway's bus.
    pub fn busctl(&self, args: &[&str]) -> Run {
        let mut all = vec!["--system", "--timeout=20"];
        all.extend_from_slice(args);
        self.cmd("busctl", &all)
    }

    /// `busctl call io.rota /io/rota io.rota.Agent1 METHOD SIG ARGS...`.
    pub fn call(&self, method: &str, args: &[&str]) -> Run {
        let mut all = vec!["call", "io.rota", "/io/rota", "io.rota.Agent1", method];
        all.extend_from_slice(args);
        self.busctl(&all)
    }

    /// A property of io.rota.Agent1 as busctl prints it (`s "idle"`).
    pub fn property(&self, name: &str) -> String {
        self.busctl(&[
            "get-property",
            "io.rota",
            "/io/rota",
            "io.rota.Agent1",
            name,
        ])
        .success()
        .trim()
        .to_owned()
    }

    /// Starts `busctl monitor --match=RULE` (e.g. `type='signal',sender='io.rota'`);
    /// stop it with [`Monitor::stop`].
    pub fn monitor(&self, rule: &str) -> Monitor {
        let n = MONITORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.path(&format!("monitor-{n}.json"));
        let mut c = Command::new("busctl");
        c.args(["--system", "monitor", "--json=short"])
            .arg(format!("--match={rule}"))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null());
        self.env_vars(&mut c);
        let child = c.spawn().expect("busctl must be installed");
        // busctl needs a moment to become a monitor; a message before that would be lost.
        std::thread::sleep(Duration::from_millis(300));
        Monitor { child, out }
    }

    /// Spawns the rota CLI in the background with stdout and stderr piped.
    pub fn spawn_rota(&self, args: &[&str]) -> Child {
        let mut c = rota_cmd();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.env_vars(&mut c);
        c.spawn().expect("rota runs")
    }

    /// Serves `dir` over HTTP at `rate` bytes per second (nginx `limit_rate`), so an
    /// install lasts long enough to be cancelled, interrupted or raced.
    pub fn slow_http(&self, dir: &Path, rate: u32) -> SlowHttp {
        SlowHttp::start(dir, &self.path("slow-nginx"), rate)
    }

    /// Publishes a bundle on a [`SlowHttp`] server; returns (URL, image).
    pub fn slow_bundle(
        &self,
        http: &SlowHttp,
        name: &str,
        version: &str,
        size: usize,
    ) -> (String, Vec<u8>) {
        let (path, image) = self.bundle(
            name,
            "acme-gateway",
            version,
            pattern(size, size as u64 ^ 77),
            "release",
        );
        std::fs::copy(&path, http.root.join(format!("{name}.rota"))).unwrap();
        (http.url(&format!("{name}.rota")), image)
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

/// A running `busctl monitor`.
pub struct Monitor {
    child: Child,
    out: PathBuf,
}

impl Monitor {
    /// Stops the monitor and returns the messages it saw, as busctl's JSON objects
    /// (`interface`, `member`, `error_name`, `payload.data`...).
    pub fn stop(mut self) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx on 127.0.0.1 serving a directory over plain HTTP at a limited rate.
pub struct SlowHttp {
    child: Child,
    pub root: PathBuf,
    pub port: u16,
}

impl SlowHttp {
    fn start(root: &Path, work: &Path, rate: u32) -> SlowHttp {
        std::fs::create_dir_all(root).unwrap();
        std::fs::create_dir_all(work.join("logs")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "user root; worker_processes 1; daemon off; pid {w}/nginx.pid; error_log {w}/logs/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log {w}/logs/access.log; client_body_temp_path {w}/body; proxy_temp_path {w}/proxy;\n\
               fastcgi_temp_path {w}/fcgi; uwsgi_temp_path {w}/uwsgi; scgi_temp_path {w}/scgi;\n\
               default_type application/octet-stream;\n\
               server {{ listen 127.0.0.1:{port}; root {r}; limit_rate {rate}; }}\n\
             }}\n",
            w = work.display(),
            r = root.display(),
        );
        std::fs::write(work.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(work.join("nginx.conf"))
            .arg("-p")
            .arg(work)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(work.join("logs/error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        SlowHttp {
            child,
            root: root.to_owned(),
            port,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for SlowHttp {
    /// SIGTERM (nginx's fast shutdown stops the workers too), SIGKILL if it lingers.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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
