//! Where rota keeps its state: on storage both slots share, never on a slot.
//!
//! - A data-dir on a slot is refused, with the device named, when the service starts
//!   (nothing is created there) and when an install is asked for: the slot is a real
//!   loop device holding ext4, mounted, as a file-backed slot and as a block-device slot.
//! - Booting the other slot keeps the state. The service runs in its own mount namespace
//!   laid out like a board: `/var/lib` belongs to the booted slot's root file system (a
//!   directory per slot, bound over `/var/lib`), `/data` is the shared data partition (one
//!   directory bound over `/data`), and system.toml does not set data-dir, so the default
//!   applies. With the old default (`/var/lib/rota`) this test sees what the integration
//!   issue reports: after the switch rota has forgotten the install and the feed installs
//!   the same version again.

mod support;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::gateway::{path_str, pattern, wait_for, Gateway};
use support::nginx::{make_pki, Nginx};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A file attached to a loop device; detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        Loop(run(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mounted file system; unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(dev: &str, at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount").arg(dev).arg(at));
        Mount(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn set_config(gw: &Gateway, from: &str, to: &str) {
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    assert!(cfg.contains(from), "{from:?} in {cfg}");
    std::fs::write(gw.path("system.toml"), cfg.replacen(from, to, 1)).unwrap();
}

/// Starts the service and expects it to refuse to run; returns what it logged.
fn refused_start(gw: &mut Gateway) -> String {
    let _ = std::fs::remove_file(gw.path("service.log"));
    gw.spawn_service();
    let code = gw.wait_service_exit(60);
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    assert_ne!(code, Some(0), "the service ran: {log}");
    log
}

#[test]
fn a_data_dir_on_a_slot_is_refused_at_start_and_at_install() {
    let mut gw = Gateway::new(false);
    // Slot A (the booted one) holds a file system, mounted as the running root would be.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(gw.path("a.img")));
    let lo = Loop::attach(&gw.path("a.img"));
    let root_a = gw.path("root-a");
    let mount = Mount::new(&lo.0, &root_a);
    let dev = std::fs::canonicalize(&lo.0).unwrap();
    let dev_name = dev.file_name().unwrap().to_string_lossy().into_owned();

    // A file-backed slot: the data-dir's file system is the loop device over a.img.
    set_config(
        &gw,
        "data-dir = \"data\"",
        "data-dir = \"root-a/var/lib/rota\"",
    );
    let log = refused_start(&mut gw);
    let want = format!(
        "[system] data-dir {}/var/lib/rota is on /dev/{dev_name} (",
        root_a.display()
    );
    assert!(log.contains(&want), "{want:?} in {log}");
    let want = format!(
        "a loop device backed by {}, the image of slot rootfs.0",
        gw.path("a.img").display()
    );
    assert!(log.contains(&want), "{want:?} in {log}");
    assert!(log.contains("lost when the other slot boots"), "{log}");
    assert!(
        !root_a.join("var").exists(),
        "nothing is created on the slot"
    );

    // The same slot named by its block device.
    set_config(&gw, "device = \"a.img\"", &format!("device = \"{}\"", lo.0));
    let log = refused_start(&mut gw);
    let want = format!("the device of slot rootfs.0 ({})", lo.0);
    assert!(log.contains(&want), "{want:?} in {log}");
    assert!(!root_a.join("var").exists());

    // At install: the service started on shared storage, then the slot got mounted over
    // its data directory.
    set_config(
        &gw,
        "data-dir = \"root-a/var/lib/rota\"",
        "data-dir = \"data\"",
    );
    gw.start_service();
    drop(mount);
    let _over = Mount::new(&lo.0, &gw.path("data"));
    let (bundle, _) = gw.bundle(
        "v2",
        "acme-gateway",
        "2.0.0",
        pattern(1 << 20, 9),
        "release",
    );
    let r = gw.rota(&["install", path_str(&bundle)]);
    assert_eq!(r.code(), 1, "{} {}", r.stdout(), r.stderr());
    let out = format!("{}{}", r.stdout(), r.stderr());
    assert!(
        out.contains(&format!(
            "[system] data-dir {} is on /dev/{dev_name}",
            gw.path("data").display()
        )),
        "{out}"
    );
    assert_eq!(
        gw.fw_printenv()["BOOT_ORDER"],
        "A B",
        "nothing was installed"
    );
    // Nothing of the service may hold the mount when the guards unmount and detach.
    gw.stop_service();
}

/// The service in a namespace where `/var/lib` is slot `bootname`'s and `/data` is shared.
fn spawn_on_board(gw: &mut Gateway, bootname: &str) {
    let var_lib = gw.path(&format!("root-{bootname}/var/lib"));
    let data = gw.path("data-partition");
    std::fs::create_dir_all(&var_lib).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    gw.spawn_service_with(move |c| {
        use nix::mount::{mount, MsFlags};
        use std::os::unix::process::CommandExt;
        // SAFETY: only system calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let none: Option<&str> = None;
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
                mount(Some(&var_lib), "/var/lib", none, MsFlags::MS_BIND, none)?;
                mount(Some(&data), "/data", none, MsFlags::MS_BIND, none)?;
                Ok(())
            });
        }
    });
    gw.wait_for_service();
}

#[test]
fn booting_the_other_slot_keeps_the_state_on_the_default_data_dir() {
    // The mount point of the board's data partition; an existing /data is only covered
    // inside the service's namespace.
    let _data = MountPoint::make("/data");
    let mut gw = Gateway::new(false);
    set_config(&gw, "data-dir = \"data\"\n", "");
    make_pki(&gw.path("pki"));
    std::fs::create_dir_all(gw.path("www/bundles")).unwrap();
    let ng = Nginx::start(&gw.path("www"), &gw.path("pki"), &gw.path("nginx"));
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    std::fs::write(
        gw.path("system.toml"),
        format!(
            "{cfg}[update]\npoll = \"{}\"\ninterval = \"1s\"\n",
            ng.url(ng.http, false, "stable.json")
        ),
    )
    .unwrap();
    let (bundle, image) = gw.bundle(
        "v110",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 71),
        "release",
    );
    std::fs::copy(&bundle, gw.path("www/bundles/v110.rota")).unwrap();
    let feed = json!({"version": "1.1.0", "url": "bundles/v110.rota"});
    std::fs::write(gw.path("www/stable.json"), feed.to_string()).unwrap();
    let log = gw.path("nginx/logs/access.log");
    let count = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    let fetches = || count("GET /bundles/v110.rota ");
    let polls = || count("GET /stable.json ");
    let status = |gw: &Gateway| -> Value { gw.status_json() };

    spawn_on_board(&mut gw, "A");
    wait_for("1.1.0 activated", 60, || {
        let st = status(&gw);
        st["last_install"]["version"] == "1.1.0" && st["last_install"]["result"] == "activated"
    });
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    let state_file = gw.path("data-partition/rota/status.json");
    assert!(state_file.is_file(), "the state is on the data partition");
    assert!(
        !gw.path("root-A/var/lib/rota").exists(),
        "nothing of rota's state on slot A's root file system"
    );
    let fetched = fetches();

    // Reboot into B: another root file system, the same data partition.
    gw.stop_service();
    gw.boot_into("B");
    spawn_on_board(&mut gw, "B");
    let st = status(&gw);
    assert_eq!(st["booted"], "B", "{st}");
    assert_eq!(st["last_install"]["version"], "1.1.0", "{st}");
    assert_eq!(st["last_install"]["result"], "booted", "{st}");
    gw.rota(&["mark", "good", "booted"]).success();
    // The feed still offers 1.1.0: it is what runs, so nothing is installed.
    let seen = polls();
    wait_for("three more polls", 60, || polls() >= seen + 3);
    let st = status(&gw);
    assert_eq!(st["last_install"]["result"], "good", "{st}");
    assert_eq!(fetches(), fetched, "1.1.0 is not installed again");
    assert_eq!(
        gw.fw_printenv()["BOOT_ORDER"],
        "B A",
        "slot A is not activated again"
    );
    assert!(!gw.path("root-B/var/lib/rota").exists());
    gw.stop_service();
    drop(ng);
}

/// An empty directory made for a mount point, removed on drop (also when the test fails)
/// if this test made it.
struct MountPoint(Option<&'static str>);

impl MountPoint {
    fn make(path: &'static str) -> MountPoint {
        if Path::new(path).exists() {
            return MountPoint(None);
        }
        std::fs::create_dir_all(path).unwrap();
        MountPoint(Some(path))
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_dir(p);
        }
    }
}
