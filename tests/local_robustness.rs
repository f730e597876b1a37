//! Hostile or broken local files through the real service on a simulated gateway: a FIFO
//! or a device given as a bundle, a state file that cannot be read (a directory, a link to
//! a device, a stale temp directory), anti-rollback after the state was lost, private file
//! modes whatever the umask, and marks that contradict what rota recorded.

mod support;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};
use support::gateway::{path_str, pattern, Gateway};

fn started() -> Gateway {
    let mut gw = Gateway::new(false);
    gw.start_service();
    gw
}

/// Runs the CLI and fails the test if it has not ended within `secs` (a hang is the bug).
fn rota_within(gw: &Gateway, secs: u64, args: &[&str]) -> (i32, String) {
    let mut child = gw.spawn_rota(args);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (st.code().unwrap_or(-1), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rota {args:?} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Flips the last byte of a bundle: the last chunk of the image no longer matches the
/// signed index, so the install fails midway with the target slot half written.
fn tamper_tail(path: &std::path::Path) {
    let mut b = std::fs::read(path).unwrap();
    // The tar ends with two zero blocks (and padding); the image's last byte is before them.
    let end = b.len() - 1024;
    let last = b[..end].iter().rposition(|&x| x != 0).unwrap();
    b[last] ^= 0xff;
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_fifo_or_a_device_as_bundle_is_refused_at_once_and_the_service_stays_usable() {
    let gw = started();
    let fifo = gw.path("update.rota");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let b_before = gw.read("b.img");

    let (code, out) = rota_within(&gw, 60, &["install", path_str(&fifo)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not a regular file (it is a FIFO)"), "{out}");
    let (code, out) = rota_within(&gw, 60, &["install", "/dev/zero"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("character device"), "{out}");

    assert_eq!(gw.read("b.img"), b_before, "nothing was written");
    let st = gw.status_json();
    assert_eq!(st["operation"], "idle", "{st:#}");
    assert!(st["journal"].is_null(), "no install to resume: {st:#}");
    // A real bundle still installs.
    let (good, image) = gw.bundle(
        "good",
        "acme-gateway",
        "1.1.0",
        pattern(300_000, 5),
        "release",
    );
    gw.rota(&["install", path_str(&good)]).success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
}

#[test]
fn a_lost_state_file_does_not_open_the_door_to_a_downgrade() {
    let mut gw = started();
    let (new, _) = gw.bundle(
        "new",
        "acme-gateway",
        "1.2.0",
        pattern(200_000, 7),
        "release",
    );
    let (old, _) = gw.bundle(
        "old",
        "acme-gateway",
        "1.0.0",
        pattern(200_000, 8),
        "release",
    );
    gw.rota(&["install", path_str(&new)]).success();
    // Reboot into B: 1.2.0 runs now.
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "console=ttyAMA0 rota.slot=B\n").unwrap();
    gw.start_service();
    let r = gw.rota(&["install", path_str(&old)]);
    assert!(
        r.stderr().contains("lower than the booted slot's 1.2.0"),
        "{}",
        r.stderr()
    );

    // Flash wears: the state file is torn. It is moved aside, but what ran is not forgotten.
    gw.stop_service();
    std::fs::write(gw.path("data/status.json"), b"{\"slots\": {\"rootf").unwrap();
    gw.start_service();
    assert!(gw.path("data/status.json.corrupt").exists());
    let a_before = gw.read("a.img");
    let r = gw.rota(&["install", path_str(&old)]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("the running version is unknown")
            && r.stderr().contains("--force-version"),
        "{}",
        r.stderr()
    );
    assert_eq!(gw.read("a.img"), a_before, "the other slot was not touched");

    // With the running system's own release file the check is made again.
    gw.stop_service();
    std::fs::write(
        gw.path("os-release"),
        "NAME=\"Acme\"\nVERSION_ID=\"1.2.0\"\n",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    let cfg = cfg.replace("[system]\n", "[system]\nversion-file = \"os-release\"\n");
    std::fs::write(gw.path("system.toml"), cfg).unwrap();
    std::fs::write(gw.path("data/status.json"), b"\xff\xfe").unwrap();
    gw.start_service();
    let r = gw.rota(&["install", path_str(&old)]);
    assert!(
        r.stderr().contains("lower than the booted slot's 1.2.0"),
        "{}",
        r.stderr()
    );
    assert_eq!(gw.read("a.img"), a_before);
    // A newer one, or a forced downgrade, is fine.
    gw.rota(&["install", "--force-version", path_str(&old)])
        .success();
}

#[test]
fn state_that_cannot_be_read_is_rebuilt_and_the_service_keeps_serving() {
    let mut gw = Gateway::new(false);
    std::fs::create_dir_all(gw.path("data/status.json/inner")).unwrap();
    gw.start_service();
    let st = gw.status_json();
    assert_eq!(st["booted"], "A", "{st:#}");
    assert!(
        gw.path("data/status.json.corrupt/inner").is_dir(),
        "moved aside"
    );
    let (b1, image) = gw.bundle(
        "b1",
        "acme-gateway",
        "1.1.0",
        pattern(150_000, 9),
        "release",
    );
    gw.rota(&["install", "--force-version", path_str(&b1)])
        .success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    gw.rota(&["mark", "good"]).success();

    // A link to a device that never ends: refused without reading it, and replaced.
    gw.stop_service();
    std::fs::remove_file(gw.path("data/status.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", gw.path("data/status.json")).unwrap();
    gw.start_service();
    gw.status_json();
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    assert!(
        log.contains("not a regular file (it is a character device)"),
        "{log}"
    );
    assert!(gw
        .path("data/status.json")
        .symlink_metadata()
        .unwrap()
        .is_file());

    // A stale temp directory left in the way of the atomic write.
    std::fs::create_dir_all(gw.path("data/.status.json.tmp/x")).unwrap();
    gw.rota(&["install", "--force-version", path_str(&b1)])
        .success();
    assert!(!gw.path("data/.status.json.tmp").exists());
}

#[test]
fn data_dir_and_state_are_private_whatever_the_umask() {
    let mut gw = Gateway::new(false);
    gw.spawn_service_with(|c| {
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            c.pre_exec(|| {
                nix::sys::stat::umask(nix::sys::stat::Mode::empty());
                Ok(())
            });
        }
    });
    gw.wait_for_service();
    let (b1, _) = gw.bundle(
        "b1",
        "acme-gateway",
        "1.1.0",
        pattern(100_000, 4),
        "release",
    );
    gw.rota(&["install", path_str(&b1)]).success();
    let mode = |p: &str| std::fs::metadata(gw.path(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("data"), 0o700);
    assert_eq!(mode("data/status.json"), 0o600);
}

#[test]
fn marks_that_contradict_the_records_are_refused() {
    let gw = started();
    let (bad, _) = gw.bundle(
        "torn",
        "acme-gateway",
        "1.1.0",
        pattern(500_000, 3),
        "release",
    );
    tamper_tail(&bad);
    let r = gw.rota(&["install", path_str(&bad)]);
    assert_eq!(
        r.code(),
        1,
        "the tampered chunk fails the install: {}",
        r.stderr()
    );
    let env = gw.fw_printenv();
    assert_eq!(
        env["BOOT_ORDER"], "A",
        "B left the selection before it was written"
    );

    // B holds a half-written image: it may not be made active.
    let r = gw.rota(&["mark", "active", "other"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("holds no complete, verified image"),
        "{}",
        r.stderr()
    );
    // A is the only slot left: marking it bad would empty BOOT_ORDER, which the boot
    // script reads as unset ("A B") and so would boot the torn slot.
    let r = gw.rota(&["mark", "bad", "booted"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("would leave no slot to boot"),
        "{}",
        r.stderr()
    );
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_ORDER"].as_str(), env["BOOT_A_LEFT"].as_str()),
        ("A", "3")
    );

    // With the records lost, the env still tells: B is out of the boot selection.
    let mut gw = gw;
    gw.stop_service();
    std::fs::write(gw.path("data/status.json"), b"{\"slo").unwrap();
    gw.start_service();
    let r = gw.rota(&["mark", "active", "other"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.stderr().contains("records were lost"), "{}", r.stderr());

    // Once a complete image is in B, both marks work.
    let (good, _) = gw.bundle(
        "good",
        "acme-gateway",
        "1.1.0",
        pattern(500_000, 3),
        "release",
    );
    gw.rota(&["install", "--force-version", path_str(&good)])
        .success();
    gw.rota(&["mark", "active", "booted"]).success();
    gw.rota(&["mark", "active", "other"]).success();
    gw.rota(&["mark", "bad", "booted"]).success();
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B");
}

/// A location is parsed once, where it enters: an unknown scheme is refused by name, not
/// taken for a file called `ftp:/…` in the current directory.
#[test]
fn an_unknown_scheme_is_refused_by_name() {
    let gw = started();
    let r = gw.rota(&["install", "ftp://host/x.rota"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("unsupported URL scheme \"ftp\""),
        "{}",
        r.stderr()
    );
    // Through D-Bus as well.
    let r = gw.call("Install", &["sa{sv}", "ftp://host/x.rota", "0"]);
    assert!(
        r.stderr().contains("unsupported URL scheme \"ftp\""),
        "{}",
        r.stderr()
    );
    assert!(gw.status_json()["last_install"].is_null());
}
