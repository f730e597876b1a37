//! What the packaging relies on, checked on every target (also under qemu-user for
//! aarch64 and armv7, see `scripts/ci-arm.sh`):
//! - `rota service` logs to stderr when no journal is there;
//! - `systemd/rota-health-check` (run by rota-mark-good.service) gates `mark good`;
//! - offsets past 4 GiB (U-Boot env at raw eMMC offsets, slot devices, bundle files)
//!   work on 32-bit targets, and the env's on-disk bytes (little-endian CRC) are
//!   exactly what U-Boot's `mkenvimage` writes.

#[path = "support/bitbake.rs"]
mod bitbake;
mod pkg_support;

use bitbake::LAYER;
use pkg_support::{pattern, run_ok, tool, Bus, Gateway, Service};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- journald fallback

/// Where systemd-journal-logger sends records.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A bus that lets everyone do everything: this test is about logging, not policy.
const OPEN_POLICY: &str = r#"<policy context="default"><allow user="*"/><allow own="*"/>
  <allow send_destination="*"/><allow receive_sender="*"/></policy>"#;

/// Lines `<RFC 3339 time> rota[<pid>] <LEVEL>: <message>` the service wrote to stderr.
fn stderr_records(log: &str, pid: u32) -> Vec<(String, String)> {
    let tag = format!(" rota[{pid}] ");
    log.lines()
        .filter_map(|l| {
            let (time, rest) = l.split_once(&tag)?;
            assert!(
                time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
                "timestamp {time:?} in {l:?} is not RFC 3339 UTC"
            );
            let (level, msg) = rest.split_once(": ")?;
            Some((level.to_owned(), msg.to_owned()))
        })
        .collect()
}

fn assert_logs_on_stderr(journal_stream: Option<String>, case: &str) {
    let gw = Gateway::new("");
    let bus = Bus::start(gw.dir.path(), OPEN_POLICY);
    let env: Vec<(&str, Option<&str>)> = match &journal_stream {
        Some(v) => vec![("JOURNAL_STREAM", Some(v.as_str())), ("ROTA_LOG", None)],
        None => vec![("ROTA_LOG", None)],
    };
    let mut svc = Service::start(&gw, &bus, &env);
    let pid = svc.pid();
    let serving = |log: &str| {
        stderr_records(log, pid).iter().any(|(lvl, m)| {
            lvl == "INFO" && m.starts_with("rota ") && m.contains("serving io.rota")
        })
    };
    // The start-up record comes right after the bus name is taken, and the SIGTERM
    // handler right after that: give both time (qemu-user is slow) before stopping.
    let start = Instant::now();
    while !serving(&svc.log_text()) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let status = svc.stop();
    let log = svc.log_text();
    assert!(status.success(), "{case}: service exit {status}:\n{log}");
    assert!(
        serving(&log),
        "{case}: the start-up record is not on stderr:\n{log}"
    );
    assert!(
        stderr_records(&log, pid)
            .iter()
            .any(|(lvl, m)| lvl == "INFO" && m == "stopping"),
        "{case}: the stop record is not on stderr:\n{log}"
    );
}

#[test]
fn service_logs_to_stderr_without_a_journal() {
    assert_logs_on_stderr(None, "JOURNAL_STREAM unset");
    // Inherited from a parent whose stderr was the journal, but ours is not.
    assert_logs_on_stderr(Some("8:1".into()), "JOURNAL_STREAM of another stream");
}

#[test]
fn service_logs_to_stderr_when_the_journal_socket_is_missing() {
    // JOURNAL_STREAM names our very stderr (as systemd would set it), but journald's
    // socket does not exist: records sent there would be lost, so stderr must be used.
    if Path::new(JOURNAL_SOCKET).exists() {
        panic!("{JOURNAL_SOCKET} exists on this machine: this test needs a host without journald");
    }
    // The service's stderr is the log file Service::start opens in the gateway dir
    // (truncating keeps its inode), so its device:inode is known before the start.
    let gw = Gateway::new("");
    let log = gw.path("service.log");
    std::fs::write(&log, b"").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let bus = Bus::start(gw.dir.path(), OPEN_POLICY);
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut svc = Service::start(&gw, &bus, &[("JOURNAL_STREAM", Some(&stream))]);
    assert_eq!(std::fs::metadata(&log).unwrap().ino(), meta.ino());
    let pid = svc.pid();
    // The record follows the bus name by a moment (longer under qemu-user): wait for it.
    let serving = |text: &str| {
        stderr_records(text, pid)
            .iter()
            .any(|(_, m)| m.contains("serving io.rota"))
    };
    let start = Instant::now();
    while !serving(&svc.log_text()) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    svc.stop();
    let text = svc.log_text();
    assert!(
        serving(&text),
        "with JOURNAL_STREAM={stream} and no {JOURNAL_SOCKET}, records must go to stderr:\n{text}"
    );
}

// ---------------------------------------------------------------- health check

/// The health-check script with a stand-in `systemctl` (no systemd runs here): unit
/// states are files `<dir>/units/<unit>` holding what `systemctl is-active` prints.
struct Health {
    dir: tempfile::TempDir,
}

impl Health {
    fn new() -> Health {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("units")).unwrap();
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            "#!/bin/sh\n# is-active UNIT: print the state from the file, exit 0 only if active\n\
             [ \"$1\" = is-active ] || exit 2\n\
             s=$(cat \"$(dirname \"$0\")/units/$2\" 2>/dev/null || echo inactive)\n\
             echo \"$s\"; [ \"$s\" = active ]\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        Health { dir }
    }

    fn set(&self, unit: &str, state: &str) {
        std::fs::write(self.dir.path().join("units").join(unit), state).unwrap();
    }

    fn run(&self, vars: &[(&str, &str)]) -> (Output, Duration) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/rota-health-check");
        let mut cmd = tool("sh", "dash");
        cmd.arg(script)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("ROTA_SYSTEMCTL", self.dir.path().join("systemctl"))
            .current_dir(self.dir.path());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let start = Instant::now();
        let out = cmd.output().unwrap();
        (out, start.elapsed())
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn health_check_passes_when_nothing_is_configured() {
    let h = Health::new();
    let (out, _) = h.run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The shipped defaults file configures no check either, and sh can read it.
    let defaults = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/rota-mark-good.default"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". {defaults} && export ROTA_HEALTH_UNITS ROTA_HEALTH_COMMAND ROTA_HEALTH_TIMEOUT ROTA_HEALTH_INTERVAL && sh {}/systemd/rota-health-check",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env("ROTA_SYSTEMCTL", h.dir.path().join("systemctl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "defaults: {}", stderr(&out));
}

#[test]
fn health_check_waits_for_units_and_fails_on_a_failed_one() {
    let h = Health::new();
    h.set("app.service", "active");
    h.set("net.target", "activating");
    let units = ("ROTA_HEALTH_UNITS", "app.service net.target");
    let fast = [
        units,
        ("ROTA_HEALTH_TIMEOUT", "30"),
        ("ROTA_HEALTH_INTERVAL", "1"),
    ];
    // net.target comes up after ~1.5 s: the check waits for it.
    let dir = h.dir.path().to_owned();
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::write(dir.join("units/net.target"), "active").unwrap();
    });
    let (out, took) = h.run(&fast);
    later.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        took >= Duration::from_millis(1400),
        "returned before net.target was up"
    );

    // A failed unit fails the check at once, naming it.
    h.set("net.target", "failed");
    let (out, took) = h.run(&fast);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("net.target has failed"),
        "{}",
        stderr(&out)
    );
    assert!(
        took < Duration::from_secs(5),
        "a failed unit must not wait for the timeout"
    );

    // A unit that never becomes active fails at the timeout.
    h.set("net.target", "inactive");
    let (out, took) = h.run(&[
        units,
        ("ROTA_HEALTH_TIMEOUT", "2"),
        ("ROTA_HEALTH_INTERVAL", "1"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("net.target is 'inactive', not active, after 2s"),
        "{}",
        stderr(&out)
    );
    // `date +%s` has whole seconds: the deadline is 1 to 2 s away.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[test]
fn health_check_retries_the_command_until_it_succeeds_or_times_out() {
    let h = Health::new();
    // Succeeds on the third run.
    let cmd = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; [ $n -ge 3 ]";
    let (out, _) = h.run(&[
        ("ROTA_HEALTH_COMMAND", cmd),
        ("ROTA_HEALTH_TIMEOUT", "30"),
        ("ROTA_HEALTH_INTERVAL", "1"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(h.dir.path().join("count"))
            .unwrap()
            .trim(),
        "3"
    );

    let (out, _) = h.run(&[
        ("ROTA_HEALTH_COMMAND", "exit 7"),
        ("ROTA_HEALTH_TIMEOUT", "1"),
        ("ROTA_HEALTH_INTERVAL", "1"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("command failed (exit 7)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn health_check_rejects_bad_settings() {
    let h = Health::new();
    for (k, v) in [
        ("ROTA_HEALTH_TIMEOUT", "5m"),
        ("ROTA_HEALTH_INTERVAL", "0"),
        ("ROTA_HEALTH_INTERVAL", "-1"),
    ] {
        let (out, _) = h.run(&[(k, v)]);
        assert_eq!(out.status.code(), Some(1), "{k}={v}");
        assert!(
            stderr(&out).contains(k) && stderr(&out).contains(&format!("'{v}'")),
            "{k}={v}: {}",
            stderr(&out)
        );
    }
}

// ---------------------------------------------------------------- 32-bit offsets

/// 4 GiB: the first offset a 32-bit `usize`/`off_t` cannot hold.
const FOUR_GIB: u64 = 1 << 32;
/// Size of the sparse files below (no blocks are allocated beyond what is written).
const SPARSE_SIZE: u64 = 5 << 30;

fn sparse_file(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(SPARSE_SIZE)
        .unwrap();
}

fn fw_env_config(dir: &Path, lines: &[(&Path, u64)]) -> PathBuf {
    let text: String = lines
        .iter()
        .map(|(dev, off)| format!("{} {off:#x} 0x4000\n", dev.display()))
        .collect();
    let path = dir.join("fw_env.config");
    std::fs::write(&path, text).unwrap();
    path
}

fn fw_printenv(config: &Path, name: &str) -> String {
    let out = run_ok(
        tool("fw_printenv", "libubootenv-tool")
            .arg("-c")
            .arg(config)
            .args(["-n", name]),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn redundant_env_past_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An eMMC-sized sparse "disk" with a redundant env at 4 GiB + 256 KiB and + 272 KiB.
    let disk = d.join("emmc.img");
    sparse_file(&disk);
    let (off1, off2) = (FOUR_GIB + 0x40000, FOUR_GIB + 0x44000);
    std::fs::write(
        d.join("env.txt"),
        "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
    )
    .unwrap();
    run_ok(
        tool("mkenvimage", "u-boot-tools")
            .args(["-r", "-s", "0x4000", "-o"])
            .arg(d.join("env.bin"))
            .arg(d.join("env.txt")),
    );
    let image = std::fs::read(d.join("env.bin")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&image, off1).unwrap();
    f.write_all_at(&image, off2).unwrap();
    drop(f);
    let config = fw_env_config(d, &[(&disk, off1), (&disk, off2)]);

    let env = rota::boot::uboot_env::UbootEnv::open(&config).unwrap();
    assert!(env.config().is_redundant());
    assert_eq!(env.config().copies[0].offset, off1);
    assert_eq!(env.read().unwrap()["BOOT_ORDER"], "A B");
    env.update(|v| {
        v.insert("BOOT_ORDER".into(), "B A".into());
        Ok(())
    })
    .unwrap();
    // libubootenv (64-bit offsets on the host) reads what rota wrote, and vice versa.
    assert_eq!(fw_printenv(&config, "BOOT_ORDER"), "B A");
    run_ok(
        tool("fw_setenv", "libubootenv-tool")
            .arg("-c")
            .arg(&config)
            .args(["BOOT_B_LEFT", "1"]),
    );
    assert_eq!(env.read().unwrap()["BOOT_B_LEFT"], "1");
    // Nothing landed at the offsets a 32-bit truncation would hit.
    let f = std::fs::File::open(&disk).unwrap();
    let mut low = vec![0u8; 0x8000];
    f.read_exact_at(&mut low, 0x40000).unwrap();
    assert!(low.iter().all(|&b| b == 0), "bytes written below 4 GiB");
    assert!(
        f.metadata().unwrap().blocks() * 512 < 1 << 20,
        "the sparse disk grew"
    );
}

#[test]
fn slot_and_bundle_offsets_past_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("slot-b.img");
    sparse_file(&dev);
    let slot = rota::config::SlotConfig {
        name: "rootfs.1".into(),
        class: "rootfs".into(),
        index: 1,
        device: dev.clone(),
        bootname: Some("B".into()),
        parent: None,
    };
    assert_eq!(rota::slot::device_size(&slot).unwrap(), SPARSE_SIZE);
    let w = rota::slot::SlotWriter::open(&slot, None).unwrap();
    assert_eq!(w.size(), SPARSE_SIZE);
    let data = pattern(64 * 1024, 9);
    let at = FOUR_GIB + 4096 * 3;
    w.write_at(at, &data).unwrap();
    w.sync_and_drop_cache().unwrap();
    let mut back = vec![0u8; data.len()];
    w.read_at(at, &mut back).unwrap();
    assert_eq!(back, data);
    // The last chunk of the slot.
    let tail = SPARSE_SIZE - 4096;
    w.write_at(tail, &data[..4096]).unwrap();
    let mut t = vec![0u8; 4096];
    w.read_at(tail, &mut t).unwrap();
    assert_eq!(t, data[..4096]);
    let mut low = vec![0u8; data.len()];
    w.read_at(4096 * 3, &mut low).unwrap();
    assert!(low.iter().all(|&b| b == 0), "bytes written below 4 GiB");
    drop(w);

    use rota::source::ByteSource;
    let mut src = rota::source::file::FileSource::open(&dev).unwrap();
    assert_eq!(src.len().unwrap(), SPARSE_SIZE);
    let mut buf = vec![0u8; data.len()];
    src.read_exact_at(at, &mut buf).unwrap();
    assert_eq!(buf, data);
    let mut r = src.read_range(at, 1000).unwrap();
    let mut first = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut first).unwrap();
    assert_eq!(first, data[..1000]);
    drop(r);
    let err = src
        .read_exact_at(SPARSE_SIZE - 10, &mut [0u8; 20])
        .unwrap_err();
    assert!(
        matches!(err, rota::source::SourceError::OutOfRange { offset, .. } if offset == SPARSE_SIZE - 10),
        "{err:?}"
    );
}

#[test]
fn env_bytes_equal_mkenvimage_output() {
    // CRC32 little-endian, then `name=value\0` sorted, `\0`, 0xFF padding: byte for byte
    // what mkenvimage makes from the same (sorted) variables, on every target.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("before.txt"), "BOOT_ORDER=A B\nBOOT_A_LEFT=3\n").unwrap();
    std::fs::write(
        d.join("after.txt"),
        "BOOT_A_LEFT=3\nBOOT_B_LEFT=2\nBOOT_ORDER=B A\nserial=GW-\u{e9}1\n",
    )
    .unwrap();
    for name in ["before", "after"] {
        run_ok(
            tool("mkenvimage", "u-boot-tools")
                .args(["-s", "0x4000", "-o"])
                .arg(d.join(format!("{name}.env")))
                .arg(d.join(format!("{name}.txt"))),
        );
    }
    let config = fw_env_config(d, &[(&d.join("before.env"), 0)]);
    let env = rota::boot::uboot_env::UbootEnv::open(&config).unwrap();
    env.update(|v| {
        v.insert("BOOT_B_LEFT".into(), "2".into());
        v.insert("BOOT_ORDER".into(), "B A".into());
        v.insert("serial".into(), "GW-\u{e9}1".into());
        Ok(())
    })
    .unwrap();
    let ours = std::fs::read(d.join("before.env")).unwrap();
    let theirs = std::fs::read(d.join("after.env")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    assert!(ours == theirs, "rota's env differs from mkenvimage's");
    let crc = u32::from_le_bytes(ours[..4].try_into().unwrap());
    assert_eq!(crc, crc32fast::hash(&ours[4..]));
}

// ---------------------------------------------------------------- Yocto layer

/// The `-e 's#@NAME@#${VAR}#'` substitutions of the rota-conf recipe's do_install.
fn recipe_substitutions() -> Vec<(String, String)> {
    let recipe =
        std::fs::read_to_string(format!("{LAYER}/recipes-core/rota/rota-conf_0.1.0.bb")).unwrap();
    recipe
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("-e 's#@")? + "-e 's#@".len()..];
            let (name, rest) = rest.split_once("@#")?;
            let value = rest.split('#').next()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

#[test]
fn yocto_system_toml_template_renders_a_valid_config() {
    let template =
        std::fs::read_to_string(format!("{LAYER}/recipes-core/rota/files/system.toml")).unwrap();
    let subs = recipe_substitutions();
    assert!(subs.len() >= 6, "found only {subs:?} in the recipe");
    // Every placeholder is filled by the recipe (KEYRING by its own sed), and back.
    let mut placeholders: Vec<&str> = template.split('@').skip(1).step_by(2).collect();
    placeholders.sort();
    placeholders.dedup();
    for p in &placeholders {
        assert!(
            *p == "KEYRING" || subs.iter().any(|(n, _)| n == p),
            "@{p}@ in system.toml is never substituted by the recipe"
        );
    }
    for (n, _) in &subs {
        assert!(
            placeholders.contains(&n.as_str()),
            "the recipe substitutes @{n}@, which the template lacks"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    rota::bundle::keys::write_keypair(d, "release").unwrap();
    rota::bundle::keys::write_keypair(d, "next").unwrap();
    for rauc_compat in ["false", "true"] {
        let values = |name: &str| -> String {
            match name {
                "COMPATIBLE" => "raspberrypi4-64".into(),
                "SLOT_A_DEVICE" => "/dev/mmcblk0p2".into(),
                "SLOT_B_DEVICE" => "/dev/mmcblk0p3".into(),
                "BOOT_ATTEMPTS" => "3".into(),
                "RAUC_COMPAT" => rauc_compat.into(),
                "DBUS_GROUP" => "rota".into(),
                "DATA_DIR" => "/data/rota".into(),
                "SYSCONFDIR" => "/etc".into(),
                "VERSION_SCHEME" => "debian".into(),
                // What the recipe's loop builds from ROTA_KEYRING_PEMS (two keys).
                "KEYRING" => format!(
                    "\"{}\", \"{}\"",
                    d.join("release.pub.pem").display(),
                    d.join("next.pub.pem").display()
                ),
                other => panic!("no test value for @{other}@"),
            }
        };
        let mut text = template.clone();
        for p in &placeholders {
            text = text.replace(&format!("@{p}@"), &values(p));
        }
        assert!(!text.contains('@'), "unfilled placeholder:\n{text}");
        let path = d.join("system.toml");
        std::fs::write(&path, &text).unwrap();
        let config = rota::config::Config::load(&path)
            .unwrap_or_else(|e| panic!("the rendered system.toml does not load: {e}\n{text}"));
        assert_eq!(config.system.compatible, "raspberrypi4-64");
        assert_eq!(config.system.data_dir, Path::new("/data/rota"));
        assert_eq!(
            config.system.version_scheme,
            rota::version::VersionScheme::Debian
        );
        assert_eq!(config.dbus.rauc_compat, rauc_compat == "true");
        assert_eq!(config.dbus.group.as_deref(), Some("rota"));
        assert_eq!(config.keyring.paths.len(), 2);
        assert_eq!(config.slots().len(), 2);
    }
}

fn run_image_cmd(vars: &[(&str, String)], bin: &Path) -> Output {
    bitbake::run_shell(
        "classes/rota-bundle.bbclass",
        "IMAGE_CMD:rota () {",
        vars,
        bin,
    )
}

#[test]
fn boot_script_recipe_prepends_board_defaults_and_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    let hook = "load ${devtype} ${devnum}:${rota_part} ${kernel_addr_r} ${rota_kernel}; booti ${kernel_addr_r} - ${fdt_addr}";
    let vars = |boot: &str| -> Vec<(&'static str, String)> {
        vec![
            ("MACHINE", "raspberrypi4-64".into()),
            ("ROTA_UBOOT_PART_A", "2".into()),
            ("ROTA_UBOOT_PART_B", "3".into()),
            ("ROTA_UBOOT_KERNEL", "boot/Image".into()),
            ("ROTA_UBOOT_BOOT", boot.into()),
            ("S", env!("CARGO_MANIFEST_DIR").into()),
            ("B", b.display().to_string()),
            ("UBOOT_ARCH", "arm64".into()),
        ]
    };
    let recipe = "recipes-bsp/u-boot/rota-boot-script_0.1.0.bb";
    tool("mkimage", "u-boot-tools");
    let out = bitbake::run_shell(
        recipe,
        "do_compile() {",
        &vars(hook),
        Path::new("/nonexistent"),
    );
    assert!(out.status.success(), "do_compile: {}", stderr(&out));
    let cmd = std::fs::read_to_string(b.join("boot.cmd")).unwrap();
    let upstream = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bootloader-env/boot.cmd"
    ))
    .unwrap();
    let prologue = cmd
        .strip_suffix(upstream.as_str())
        .expect("boot.cmd follows the prologue unchanged");
    assert_eq!(
        prologue.lines().skip(1).collect::<Vec<_>>(),
        [
            r#"if test -z "${rota_part_A}"; then setenv rota_part_A 2; fi"#,
            r#"if test -z "${rota_part_B}"; then setenv rota_part_B 3; fi"#,
            r#"if test -z "${rota_kernel}"; then setenv rota_kernel boot/Image; fi"#,
            &format!(r#"if test -z "${{rota_boot}}"; then setenv rota_boot '{hook}'; fi"#),
        ]
    );
    // A legacy U-Boot script image (magic 0x27051956) holding the script.
    let scr = std::fs::read(b.join("boot.scr")).unwrap();
    assert_eq!(&scr[..4], &[0x27, 0x05, 0x19, 0x56]);
    assert!(scr
        .windows(upstream.len().min(200))
        .any(|w| w == &upstream.as_bytes()[..upstream.len().min(200)]));

    // No hook configured: no rota_boot line.
    let out = bitbake::run_shell(
        recipe,
        "do_compile() {",
        &vars(""),
        Path::new("/nonexistent"),
    );
    assert!(out.status.success(), "do_compile: {}", stderr(&out));
    let cmd = std::fs::read_to_string(b.join("boot.cmd")).unwrap();
    assert!(!cmd.contains("setenv rota_boot"), "{cmd}");
}

/// The BSP bbappends install bootloader-env's fw_env.config files, as copies (a layer
/// must not reach outside itself): they must not drift apart.
#[test]
fn the_bsp_bbappends_ship_the_fw_env_configs_of_bootloader_env() {
    for (bsp, ours) in [("raspberrypi", "rpi"), ("freescale-layer", "imx")] {
        let copy =
            format!("{LAYER}/dynamic-layers/{bsp}/recipes-bsp/u-boot/files/fw_env.config.rota");
        let orig =
            concat!(env!("CARGO_MANIFEST_DIR"), "/bootloader-env/fw_env.config.").to_owned() + ours;
        assert_eq!(
            std::fs::read_to_string(&copy).unwrap(),
            std::fs::read_to_string(&orig).unwrap(),
            "{copy} differs from {orig}"
        );
        let cfg = rota::boot::uboot_env::FwEnvConfig::load(Path::new(&copy)).unwrap();
        assert!(
            cfg.is_redundant(),
            "{copy}: the board examples use a redundant env"
        );
    }
}

#[test]
fn rota_bundle_class_builds_a_verifiable_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["bin", "work", "imgdeploy", "deploy"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    // `rota` as the class calls it (rota-native in the sysroot's PATH).
    let mut wrapper = String::from("#!/bin/sh\nexec ");
    if let Ok(r) = std::env::var("ROTA_TEST_RUNNER") {
        if !r.trim().is_empty() {
            wrapper.push_str(&r);
            wrapper.push(' ');
        }
    }
    wrapper.push_str(concat!(env!("CARGO_BIN_EXE_rota"), " \"$@\"\n"));
    std::fs::write(d.join("bin/rota"), wrapper).unwrap();
    std::fs::set_permissions(d.join("bin/rota"), std::fs::Permissions::from_mode(0o755)).unwrap();
    rota::bundle::keys::write_keypair(d, "release").unwrap();
    let rootfs = pattern(3 << 20, 5);
    let name = "core-image-minimal-raspberrypi4-64-20261125";
    std::fs::write(d.join(format!("imgdeploy/{name}.rootfs.ext4")), &rootfs).unwrap();
    std::fs::write(d.join("deploy/appfs.img"), pattern(200_000, 6)).unwrap();

    let vars = |key: String, extra: &str| -> Vec<(&'static str, String)> {
        vec![
            ("ROTA_SIGNING_KEY", key),
            ("WORKDIR", d.join("work").display().to_string()),
            ("IMGDEPLOYDIR", d.join("imgdeploy").display().to_string()),
            ("DEPLOY_DIR_IMAGE", d.join("deploy").display().to_string()),
            ("IMAGE_NAME", name.to_owned()),
            ("IMAGE_NAME_SUFFIX", ".rootfs".to_owned()),
            ("ROTA_COMPATIBLE", "raspberrypi4-64".to_owned()),
            ("ROTA_BUNDLE_VERSION", "1.4.0".to_owned()),
            ("ROTA_VERSION_SCHEME", "semver".to_owned()),
            ("ROTA_BUNDLE_DESCRIPTION", "July release".to_owned()),
            ("ROTA_BUNDLE_SLOT_CLASS", "rootfs".to_owned()),
            ("ROTA_BUNDLE_CHUNK_SIZE", "65536".to_owned()),
            ("ROTA_BUNDLE_FORMAT", "2".to_owned()),
            ("ROTA_BUNDLE_DELTA_FROM", String::new()),
            ("SOURCE_DATE_EPOCH", "1700000000".to_owned()),
            ("ROTA_BUNDLE_EXTRA_IMAGES", extra.to_owned()),
        ]
    };
    let key = d.join("release.key.pem").display().to_string();
    let out = run_image_cmd(
        &vars(key.clone(), "slot-class:appfs:appfs.img"),
        &d.join("bin"),
    );
    assert!(
        out.status.success(),
        "IMAGE_CMD:rota failed: {}",
        stderr(&out)
    );
    let bundle = d.join(format!("imgdeploy/{name}.rootfs.rota"));
    assert!(
        !d.join("work/rota-bundle").exists(),
        "the work directory is left behind"
    );

    run_ok(
        pkg_support::rota_command()
            .args(["bundle", "verify"])
            .arg(&bundle)
            .arg("--keyring")
            .arg(d.join("release.pub.pem")),
    );
    let info = run_ok(
        pkg_support::rota_command()
            .args(["bundle", "info", "--json"])
            .arg(&bundle)
            .arg("--keyring")
            .arg(d.join("release.pub.pem")),
    );
    let info = String::from_utf8_lossy(&info.stdout);
    for needle in [
        "raspberrypi4-64",
        "1.4.0",
        "July release",
        "rootfs",
        "appfs",
    ] {
        assert!(
            info.contains(needle),
            "bundle info lacks {needle:?}: {info}"
        );
    }
    // Reproducible: SOURCE_DATE_EPOCH is the build time and every member's mtime, and
    // a second build is byte-identical.
    assert!(
        info.contains("\"build\":\"2023-11-14T22:13:20Z\""),
        "{info}"
    );
    let verbose = run_ok(tool("tar", "tar").args(["tv", "--utc", "-f"]).arg(&bundle));
    let verbose = String::from_utf8_lossy(&verbose.stdout);
    assert!(
        verbose.lines().all(|l| l.contains("2023-11-14 22:13")),
        "{verbose}"
    );
    let first = std::fs::read(&bundle).unwrap();
    std::fs::remove_file(&bundle).unwrap();
    let out = run_image_cmd(
        &vars(key.clone(), "slot-class:appfs:appfs.img"),
        &d.join("bin"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&bundle).unwrap() == first,
        "two builds with the same SOURCE_DATE_EPOCH differ"
    );
    // The image in the bundle is the image file, byte for byte.
    let list = run_ok(tool("tar", "tar").arg("tf").arg(&bundle));
    let members = String::from_utf8_lossy(&list.stdout);
    assert!(
        members.starts_with("manifest.toml\nmanifest.toml.sig\n"),
        "{members}"
    );

    // Failures name what is wrong.
    let out = run_image_cmd(&vars(String::new(), ""), &d.join("bin"));
    assert!(
        !out.status.success() && stderr(&out).contains("ROTA_SIGNING_KEY"),
        "{}",
        stderr(&out)
    );
    let out = run_image_cmd(&vars(key.clone(), "kernel:x:appfs.img"), &d.join("bin"));
    assert!(
        !out.status.success() && stderr(&out).contains("must start with slot-class: or mcu:"),
        "{}",
        stderr(&out)
    );
    let out = run_image_cmd(
        &vars(key, "")
            .into_iter()
            .map(|(k, v)| {
                if k == "ROTA_BUNDLE_VERSION" {
                    (k, "5.0+snapshot".into())
                } else {
                    (k, v)
                }
            })
            .collect::<Vec<_>>(),
        &d.join("bin"),
    );
    assert!(
        !out.status.success(),
        "a non-semver version must fail the image"
    );
    assert!(stderr(&out).contains("5.0+snapshot"), "{}", stderr(&out));
    // The same DISTRO_VERSION-style version with ROTA_VERSION_SCHEME = "debian" is a bundle.
    let out = run_image_cmd(
        &vars(d.join("release.key.pem").display().to_string(), "")
            .into_iter()
            .map(|(k, v)| match k {
                "ROTA_BUNDLE_VERSION" => (k, "5.0+snapshot".into()),
                "ROTA_VERSION_SCHEME" => (k, "debian".into()),
                _ => (k, v),
            })
            .collect::<Vec<_>>(),
        &d.join("bin"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

// ---------------------------------------------------------------- rota.service sandbox

/// `Key=value` lines of a unit file (all values of repeated keys, comments skipped).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[test]
fn rota_service_sandbox_lets_rota_write_what_it_writes() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/rota.service"))
            .unwrap();
    assert_eq!(unit_values(&unit, "ProtectSystem"), ["strict"]);
    // Writable: the StateDirectory (/var/lib/<name>) and ReadWritePaths ("-" = optional).
    let mut writable: Vec<PathBuf> = unit_values(&unit, "ReadWritePaths")
        .iter()
        .map(|p| PathBuf::from(p.trim_start_matches('-')))
        .collect();
    for s in unit_values(&unit, "StateDirectory") {
        writable.push(Path::new("/var/lib").join(s));
    }
    let is_writable = |p: &Path| {
        // /var/lock is a symlink to /run/lock on Debian and Yocto (ProtectSystem works
        // on the resolved path).
        let p = match p.strip_prefix("/var/lock") {
            Ok(rest) => Path::new("/run/lock").join(rest),
            Err(_) => p.to_owned(),
        };
        writable.iter().any(|w| p.starts_with(w))
    };
    let config = r#"
[system]
compatible = "x"
[keyring]
paths = ["/etc/rota/keys/release.pub.pem"]
[bootloader]
type = "uboot"
[slot.rootfs.0]
device = "/dev/mmcblk0p2"
bootname = "A"
[slot.rootfs.1]
device = "/dev/mmcblk0p3"
bootname = "B"
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("system.toml"), config).unwrap();
    let config = rota::config::Config::load(&dir.path().join("system.toml")).unwrap();
    assert!(
        is_writable(&config.system.data_dir),
        "default data-dir {} is read-only under rota.service",
        config.system.data_dir.display()
    );
    // ... on the shared data partition: the unit waits for its mount, tmpfiles makes it.
    assert_eq!(config.system.data_dir, Path::new("/data/rota"));
    assert!(
        unit_values(&unit, "RequiresMountsFor")
            .iter()
            .any(|m| config.system.data_dir.starts_with(m)),
        "rota.service does not wait for the mount of the data-dir"
    );
    let tmpfiles = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/rota.tmpfiles"
    ))
    .unwrap();
    assert!(
        tmpfiles.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 5 && f[..5] == ["d", "/data/rota", "0700", "root", "root"]
        }),
        "rota.tmpfiles does not create the data-dir 0700: {tmpfiles}"
    );
    let lock = Path::new(rota::boot::uboot_env::LOCK_FILE);
    assert!(
        is_writable(lock.parent().unwrap()),
        "the env lock {} is read-only under rota.service",
        lock.display()
    );
    // Every env location of the shipped fw_env.config examples: a file in a writable
    // path, or a block device the device policy lets through (DeviceAllow=block-NAME).
    let allowed: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("DeviceAllow="))
        .filter_map(|v| v.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert_eq!(unit_values(&unit, "DevicePolicy"), ["closed"]);
    let env_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/bootloader-env");
    let mut checked = 0;
    for entry in std::fs::read_dir(env_dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("fw_env.config")
        {
            continue;
        }
        let cfg = rota::boot::uboot_env::FwEnvConfig::load(&path).unwrap();
        for copy in &cfg.copies {
            let dev = &copy.device;
            let ok = if let Ok(name) = dev.strip_prefix("/dev") {
                let name = name.to_string_lossy();
                allowed.iter().any(|a| {
                    a.strip_prefix("block-")
                        .is_some_and(|major| name.starts_with(major))
                })
            } else {
                is_writable(dev)
            };
            assert!(
                ok,
                "{}: rota.service cannot write {}",
                path.display(),
                dev.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected the rpi and imx examples, checked {checked}"
    );
    // Slots on SD/eMMC (the recipe's defaults) pass the device policy.
    assert!(allowed.iter().any(|a| a == "block-mmcblk"));
}
