//! A simulated gateway ([`Fixture`]: slot files, U-Boot env, command line, keys,
//! `system.toml`) with a private `dbus-daemon` as the system bus and `rota service` on
//! it, driven by the rota CLI and busctl. Everything it started is stopped and waited for
//! on drop (the service killed, as a power cut would).

#[allow(unused_imports)]
pub use super::fixture::{path_str, pattern, rota_cmd, wait_for, Run, SLOT_SIZE};
use super::fixture::{Builder, Bus, Fixture, OPEN_POLICY};
use super::procs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

static MONITORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A [`Fixture`] with its bus, and maybe `rota service` on it.
pub struct Gateway {
    fx: Fixture,
    dbus: Option<Bus>,
    pub service: Option<Child>,
    pub bus: String,
}

impl std::ops::Deref for Gateway {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

impl Gateway {
    /// A gateway with its bus up but the service not started.
    pub fn new(rauc_compat: bool) -> Gateway {
        Gateway::with(Fixture::builder().dbus(&format!("rauc-compat = {rauc_compat}")))
    }

    /// A gateway made by `builder`, with its bus up but the service not started.
    pub fn with(builder: Builder) -> Gateway {
        let fx = builder.build();
        let bus = Bus::start(fx.dir.path(), OPEN_POLICY);
        Gateway {
            bus: bus.address.clone(),
            fx,
            dbus: Some(bus),
            service: None,
        }
    }

    /// Kills the bus daemon (the service loses its connection).
    pub fn kill_bus(&mut self) {
        if let Some(mut d) = self.dbus.take() {
            d.kill();
        }
    }

    fn env_vars(&self, c: &mut Command) {
        self.fx.setup(c);
        c.env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus);
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
        Run::of(&mut c)
    }

    /// Any command with the gateway's bus.
    pub fn cmd(&self, prog: &str, args: &[&str]) -> Run {
        let mut c = Command::new(prog);
        c.args(args);
        self.env_vars(&mut c);
        Run::of(&mut c)
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
        let deadline = Instant::now() + Duration::from_secs(120);
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

    /// A reboot into `bootname`: the service stopped, the kernel command line of that
    /// boot, the service started again.
    pub fn reboot_into(&mut self, bootname: &str) {
        self.stop_service();
        self.boot_into(bootname);
        self.start_service();
    }

    /// SIGKILL, as a power cut would stop it.
    pub fn kill_service(&mut self) {
        if let Some(mut s) = self.service.take() {
            procs::kill_now(&mut s);
        }
    }

    /// SIGTERM, and waits for the service (and anything it started) to exit.
    pub fn stop_service(&mut self) {
        if let Some(mut s) = self.service.take() {
            procs::stop(
                &mut s,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(120),
            );
        }
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
        procs::terminate(&mut self.child);
        let text = std::fs::read_to_string(&self.out).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        procs::terminate(&mut self.child);
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
        let port = super::nginx::free_port();
        let child = super::nginx::launch(
            work,
            &format!(
                "server {{ listen 127.0.0.1:{port}; root {}; limit_rate {rate}; }}",
                root.display()
            ),
            &[port],
        );
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

impl SlowHttp {
    /// The nginx master's process id (its workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SlowHttp {
    /// SIGTERM (nginx's fast shutdown): waits for the master and its workers to exit.
    fn drop(&mut self) {
        procs::terminate(&mut self.child);
    }
}

impl Drop for Gateway {
    /// The service is killed (as a power cut would stop it), the bus stopped; both are
    /// waited for.
    fn drop(&mut self) {
        self.kill_service();
        self.dbus.take();
    }
}
