//! The one simulated gateway of the tests, benches and demo, as files in a temp dir:
//! two slot files (`a.img` booted, holding a pattern; `b.img` empty), a U-Boot env made
//! by the real `mkenvimage` (single, or redundant as the docs ask for on real boards), its
//! `fw_env.config`, a kernel command line file, keys made by `rota keygen`, and
//! `system.toml` naming them (relative paths, resolved against its directory). The
//! [`Builder`] has knobs for the slot size, env variables, the `[dbus]` and `[http]`
//! sections and extra tables. `scripts/sim-gateway.sh create` writes the same layout
//! (tests/fixtures.rs checks that they agree).
//!
//! Also here, used with it: [`pattern`], the bundle builder ([`Fixture::bundle`]), a
//! private `dbus-daemon` as the system bus ([`Bus`]), and [`rota_cmd`].
//!
//! `ROTA_TEST_RUNNER` (e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu") prefixes every
//! spawned rota binary, for ARM test runs.

use super::procs;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Default size of each slot file.
pub const SLOT_SIZE: usize = 8 << 20;
/// The `compatible` of the simulated gateway.
pub const COMPATIBLE: &str = "acme-gateway";
/// Size of one copy of the U-Boot env.
pub const ENV_SIZE: usize = 0x4000;
/// The env before any install (`mkenvimage` input, `env.txt`).
pub const ENV: &str =
    "bootcmd=run distro_bootcmd\nBOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nserial=GW-1\n";
/// The bus policy of a test bus: everyone may own, call, receive and eavesdrop.
pub const OPEN_POLICY: &str = "<policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
    <allow send_destination=\"*\"/><allow receive_sender=\"*\"/><allow eavesdrop=\"true\"/></policy>";

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

/// The rota binary, wrapped in `ROTA_TEST_RUNNER` when cross-testing.
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

/// `system.toml` of the simulated gateway, with `tail` (more tables) at its end.
pub fn system_toml(tail: &str) -> String {
    format!(
        r#"[system]
compatible = "{COMPATIBLE}"
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
{tail}"#
    )
}

/// The kernel command line of a boot of slot `bootname`.
pub fn cmdline(bootname: &str) -> String {
    format!("console=ttyAMA0 rota.slot={bootname}\n")
}

/// How a [`Fixture`] is made; [`Fixture::builder`].
pub struct Builder {
    slot_size: usize,
    env: String,
    redundant_env: bool,
    keys: Vec<String>,
    tables: String,
    world_readable: bool,
}

impl Builder {
    /// Size of each slot file (default [`SLOT_SIZE`]).
    pub fn slot_size(mut self, bytes: usize) -> Builder {
        self.slot_size = bytes;
        self
    }

    /// One more variable in the env.
    pub fn env_var(mut self, name: &str, value: &str) -> Builder {
        self.env.push_str(&format!("{name}={value}\n"));
        self
    }

    /// A redundant env: two copies of [`ENV_SIZE`] in `uboot.env`.
    pub fn redundant_env(mut self) -> Builder {
        self.redundant_env = true;
        self
    }

    /// A key pair `keys/NAME.{key,pub}.pem` besides "release" (trusted) and "other" (not).
    pub fn key(mut self, name: &str) -> Builder {
        self.keys.push(name.to_owned());
        self
    }

    /// A `[name]` table with `body` (lines of `key = value`).
    pub fn table(mut self, name: &str, body: &str) -> Builder {
        self.tables
            .push_str(&format!("\n[{name}]\n{}\n", body.trim_end()));
        self
    }

    /// The `[dbus]` table.
    pub fn dbus(self, body: &str) -> Builder {
        self.table("dbus", body)
    }

    /// The `[http]` table.
    pub fn http(self, body: &str) -> Builder {
        self.table("http", body)
    }

    /// The directory and bundles readable by anyone (for callers that are not root).
    pub fn world_readable(mut self) -> Builder {
        self.world_readable = true;
        self
    }

    pub fn build(self) -> Fixture {
        let fx = Fixture {
            dir: tempfile::tempdir().unwrap(),
            world_readable: self.world_readable,
        };
        if self.world_readable {
            std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        std::fs::create_dir_all(fx.path("keys")).unwrap();
        std::fs::write(fx.path("a.img"), pattern(self.slot_size, 1)).unwrap();
        std::fs::write(fx.path("b.img"), vec![0u8; self.slot_size]).unwrap();
        std::fs::write(fx.path("env.txt"), &self.env).unwrap();
        if self.redundant_env {
            fx.use_redundant_env();
        } else {
            fx.mkenvimage(&["-s", "0x4000"], "uboot.env");
            std::fs::write(
                fx.path("fw_env.config"),
                format!("{} 0x0 0x4000\n", fx.path("uboot.env").display()),
            )
            .unwrap();
        }
        fx.boot_into("A");
        for key in &self.keys {
            fx.rota(&["keygen", "--out-dir", "keys", "--name", key])
                .success();
        }
        std::fs::write(fx.path("system.toml"), system_toml(&self.tables)).unwrap();
        fx
    }
}

/// A simulated gateway's files; removed on drop.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    world_readable: bool,
}

impl Fixture {
    pub fn builder() -> Builder {
        Builder {
            slot_size: SLOT_SIZE,
            env: ENV.to_owned(),
            redundant_env: false,
            keys: vec!["release".into(), "other".into()],
            tables: String::new(),
            world_readable: false,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// Appends `toml` (whole tables) to `system.toml`.
    pub fn append_config(&self, toml: &str) {
        let cfg = std::fs::read_to_string(self.path("system.toml")).unwrap();
        std::fs::write(self.path("system.toml"), format!("{cfg}{toml}")).unwrap();
    }

    fn mkenvimage(&self, args: &[&str], out: &str) {
        let st = Command::new("mkenvimage")
            .args(args)
            .arg("-o")
            .arg(self.path(out))
            .arg(self.path("env.txt"))
            .status()
            .expect("mkenvimage (u-boot-tools) must be installed");
        assert!(st.success(), "mkenvimage {args:?} failed");
    }

    /// Turns the env into a redundant one: two copies of 0x4000 in `uboot.env` (made by
    /// `mkenvimage -r`), the first current — what the docs ask for on real boards.
    pub fn use_redundant_env(&self) {
        self.mkenvimage(&["-r", "-s", "0x4000"], "copy.env");
        let copy = self.read("copy.env");
        let mut both = copy.clone();
        both.extend_from_slice(&copy);
        // The second copy's flag is older, so the first one is current.
        both[ENV_SIZE + 4] = 0;
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

    /// The kernel command line of a boot of `bootname` (what a reboot into it leaves).
    pub fn boot_into(&self, bootname: &str) {
        std::fs::write(self.path("cmdline"), cmdline(bootname)).unwrap();
    }

    /// A command run in the gateway's directory with its config (`ROTA_CONFIG`) and no
    /// systemd notification variables.
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(prog);
        self.setup(&mut c);
        c
    }

    /// What [`Fixture::command`] sets, on any command.
    pub fn setup(&self, c: &mut Command) {
        c.current_dir(self.dir.path())
            .env("ROTA_CONFIG", self.path("system.toml"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
    }

    /// Runs the rota CLI to completion (killed after 300 s, so a hang fails the test).
    pub fn rota(&self, args: &[&str]) -> Run {
        let mut c = self.command("timeout");
        let inner = rota_cmd();
        c.args(["--kill-after=5", "300"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .args(args);
        Run::of(&mut c)
    }

    /// Writes `src-NAME/` (a manifest with one rootfs image) for a bundle.
    pub fn bundle_src(&self, name: &str, compatible: &str, version: &str, image: &[u8]) -> PathBuf {
        let src = self.path(&format!("src-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("rootfs.ext4"), image).unwrap();
        std::fs::write(
            src.join("manifest.toml"),
            format!("[update]\ncompatible = \"{compatible}\"\nversion = \"{version}\"\n\n[[image]]\nslot-class = \"rootfs\"\nfile = \"rootfs.ext4\"\n"),
        )
        .unwrap();
        src
    }

    /// `NAME.rota`, one rootfs image signed with `keys/KEY.key.pem` by `rota bundle create`
    /// (64 KiB chunks); returns (path, image).
    pub fn bundle(
        &self,
        name: &str,
        compatible: &str,
        version: &str,
        image: Vec<u8>,
        key: &str,
    ) -> (PathBuf, Vec<u8>) {
        self.bundle_with(name, compatible, version, image, key, &[])
    }

    /// [`Gateway::bundle`] with more `rota bundle create` arguments.
    pub fn bundle_with(
        &self,
        name: &str,
        compatible: &str,
        version: &str,
        image: Vec<u8>,
        key: &str,
        extra: &[&str],
    ) -> (PathBuf, Vec<u8>) {
        let src = self.bundle_src(name, compatible, version, &image);
        let out = self.path(&format!("{name}.rota"));
        let keyfile = format!("keys/{key}.key.pem");
        self.rota(
            &[
                "bundle",
                "create",
                path_str(&src),
                path_str(&out),
                "--key",
                &keyfile,
                "--chunk-size",
                "65536",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )
        .success();
        if self.world_readable {
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        (out, image)
    }

    /// The env as the real `fw_printenv` reads it.
    pub fn fw_printenv(&self) -> BTreeMap<String, String> {
        let cfg = self.path("fw_env.config");
        let out = Run::of(Command::new("fw_printenv").arg("-c").arg(cfg)).success();
        out.lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }

    /// The real `fw_setenv NAME VALUE`.
    pub fn fw_setenv(&self, name: &str, value: &str) {
        let cfg = self.path("fw_env.config");
        Run::of(
            Command::new("fw_setenv")
                .arg("-c")
                .arg(cfg)
                .args([name, value]),
        )
        .success();
    }
}

/// A private `dbus-daemon` of type system listening on `DIR/system_bus_socket`; its
/// stderr goes to `DIR/dbus-daemon.log`. Stopped with SIGTERM on drop.
pub struct Bus {
    child: Child,
    pub address: String,
}

impl Bus {
    /// Starts a bus whose config holds `policies` (XML elements such as `<policy>` or
    /// `<include>`). Its address comes from `--print-address=1`, printed once it listens.
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
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("dbus-daemon.log")).unwrap())
            .spawn()
            .expect("dbus-daemon (dbus) must be installed");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if !line.starts_with("unix:") {
            procs::kill_now(&mut child);
            panic!(
                "dbus-daemon did not print its address (bad config {}?): {line:?}",
                conf.display()
            );
        }
        // Keep the pipe open (and drained) so the daemon never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Bus {
            child,
            address: line.trim().to_owned(),
        }
    }

    /// The daemon's process (a test may stop it to play a bus that no longer answers).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the bus is gone at once, its clients lose their connection.
    pub fn kill(&mut self) {
        procs::kill_now(&mut self.child);
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        procs::terminate(&mut self.child);
    }
}

/// A finished command.
pub struct Run(pub Output);

impl Run {
    /// Runs `cmd` to completion.
    pub fn of(cmd: &mut Command) -> Run {
        Run(cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}")))
    }
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

/// Waits until `f` holds, up to `secs` (a generous bound: the condition is the event).
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The time from the first to the `n`-th event counted by `count` after `since` (e.g.
/// polls in a server's log), as observed (to within 50 ms); waits up to `secs` for them.
/// A lower bound on it shows a back-off without timing the machine's speed.
pub fn event_span(since: u64, n: u64, secs: u64, mut count: impl FnMut() -> u64) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut first = None;
    loop {
        let c = count();
        if c > since && first.is_none() {
            first = Some(Instant::now());
        }
        if c >= since + n {
            return first.map(|f| f.elapsed()).unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} events within {secs} s",
            c.saturating_sub(since)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
