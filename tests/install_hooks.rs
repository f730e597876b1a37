//! Install hooks (`[hooks]` in system.toml) through `rota service` on a private bus,
//! with real programs: a pre-install hook that checks the hardware revision and refuses,
//! a post-install hook that fails after the slot was written (never activated), a
//! slot-post-install hook that edits the new rootfs (a real ext4 made by `mkfs.ext4 -d`,
//! loop-mounted by rota, read back with `debugfs`) and dumps its environment, a hook
//! killed at its timeout, and hook files that others could have changed.

mod support;
use sha2::Digest;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::fixture::Fixture;
use support::gateway::{path_str, pattern, Gateway, Run};

/// A gateway whose system.toml has `[hooks]` with `body`, its service running with a
/// variable of its own that no hook may see.
fn gateway(body: &str) -> Gateway {
    let mut gw = Gateway::with(Fixture::builder().table("hooks", body));
    gw.spawn_service_with(|c| {
        c.env("ROTA_TEST_SECRET", "must-not-leak")
            .env("HOME", "/root");
    });
    gw.wait_for_service();
    gw
}

/// Writes an executable `#!/bin/sh` script `name` (mode 0755) in the gateway's directory.
fn hook(gw: &Gateway, name: &str, body: &str) -> PathBuf {
    let p = gw.path(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A 4 MiB ext4 file system holding `/etc/version` (made by `mkfs.ext4 -d`).
fn ext4_image(gw: &Gateway, version: &str) -> Vec<u8> {
    let root = gw.path("rootfs-tree");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/version"), format!("{version}\n")).unwrap();
    let img = gw.path("rootfs-fs.ext4");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(4 << 20).unwrap();
    drop(f);
    Run::of(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&img),
    )
    .success();
    std::fs::read(&img).unwrap()
}

/// `debugfs -R "cat PATH"` of the slot file `slot`: the file's content in that ext4.
fn debugfs_cat(gw: &Gateway, slot: &str, path: &str) -> String {
    let out = Run::of(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {path}"))
            .arg(gw.path(slot)),
    );
    out.success()
}

/// `KEY=VALUE` lines of `env` output.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn boot_order(gw: &Gateway) -> (String, String) {
    let env = gw.fw_printenv();
    (env["BOOT_ORDER"].clone(), env["BOOT_B_LEFT"].clone())
}

/// B is out of the boot selection: not in BOOT_ORDER, or no attempts left.
fn assert_b_not_bootable(gw: &Gateway) {
    let (order, left) = boot_order(gw);
    assert!(
        !order.split_whitespace().any(|b| b == "B") || left == "0",
        "B must not be bootable: BOOT_ORDER={order:?} BOOT_B_LEFT={left:?}"
    );
}

fn no_loop_device_on(gw: &Gateway, slot: &str) {
    let out = Run::of(Command::new("losetup").arg("-j").arg(gw.path(slot))).success();
    assert_eq!(out.trim(), "", "a loop device is left on {slot}");
}

#[test]
fn pre_install_hook_checks_the_hardware_revision_and_refuses() {
    let gw = gateway("pre-install = \"check-hw\"");
    let rev = gw.path("hw-revision");
    std::fs::write(&rev, "rev-b\n").unwrap();
    let script = hook(
        &gw,
        "check-hw",
        &format!(
            "rev=$(cat {})\necho \"checking hardware for $RAUC_MF_VERSION\"\n\
             if [ \"$rev\" != rev-c ]; then\n  echo 'starting check' >&2\n  \
             echo \"hardware revision $rev cannot run $RAUC_MF_VERSION\" >&2\n  exit 3\nfi",
            rev.display()
        ),
    );
    let (bundle, image) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(3 << 20, 7),
        "release",
    );
    let env_before = gw.read("uboot.env");
    let b_before = gw.read("b.img");
    let r = gw.rota(&["install", path_str(&bundle)]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let want = format!(
        "pre-install hook {} refused the install (exit status 3): hardware revision rev-b cannot run 1.1.0",
        script.display()
    );
    assert!(
        r.stderr().contains(&want),
        "{}\nshould contain {want}",
        r.stderr()
    );
    assert_eq!(gw.read("b.img"), b_before, "slot B untouched");
    assert_eq!(gw.read("uboot.env"), env_before, "the env untouched");
    let st = gw.status_json();
    assert_eq!(st["last_install"]["result"], "failed", "{st}");
    assert!(
        st["last_install"]["error"]
            .as_str()
            .unwrap()
            .contains(&want),
        "{st}"
    );
    assert_eq!(st["primary"], "rootfs.0");
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    assert!(
        log.contains("pre-install hook: checking hardware for 1.1.0"),
        "{log}"
    );
    // The right revision: the same hook lets the install through.
    std::fs::write(&rev, "rev-c\n").unwrap();
    gw.rota(&["install", path_str(&bundle)]).success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(boot_order(&gw), ("B A".into(), "3".into()));
}

#[test]
fn failing_post_install_hook_leaves_the_written_slot_inactive() {
    let gw = gateway("post-install = \"migrate\"");
    let script = hook(
        &gw,
        "migrate",
        "echo 'migrating /data' \necho 'migration of /data failed: no space left' >&2\nexit 1",
    );
    let (bundle, image) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(3 << 20, 9),
        "release",
    );
    let a_before = gw.read("a.img");
    let r = gw.rota(&["install", path_str(&bundle)]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let want = format!(
        "post-install hook {} failed (exit status 1): migration of /data failed: no space left",
        script.display()
    );
    assert!(
        r.stderr().contains(&want),
        "{}\nshould contain {want}",
        r.stderr()
    );
    // Written and read back, but never activated.
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    assert_eq!(gw.read("a.img"), a_before);
    assert_b_not_bootable(&gw);
    assert!(boot_order(&gw).0.starts_with('A'), "{:?}", boot_order(&gw));
    let st = gw.status_json();
    assert_eq!(st["primary"], "rootfs.0", "{st}");
    assert_eq!(st["last_install"]["result"], "failed", "{st}");
    assert!(
        st["last_install"]["error"]
            .as_str()
            .unwrap()
            .contains(&want),
        "{st}"
    );
    let b = &st["slots"][1];
    assert_eq!(b["name"], "rootfs.1", "{st}");
    assert_eq!(b["status"], "failed", "{st}");
}

#[test]
fn slot_post_install_hook_edits_the_mounted_rootfs_in_a_clean_environment() {
    let gw = gateway(
        "pre-install = \"dump\"\nslot-post-install = \"dump\"\npost-install = \"dump\"\n\
         mount-classes = [\"rootfs\"]\nmount-prefix = \"mnt\"",
    );
    let dir = gw.path("");
    let dir = dir.display();
    hook(
        &gw,
        "dump",
        &format!(
            "set -e\necho \"$ROTA_HOOK\" >> {dir}/order\nenv > {dir}/env-$ROTA_HOOK\n\
             if [ \"$ROTA_HOOK\" = slot-post-install ]; then\n  \
             cp \"$RAUC_SLOT_MOUNT_POINT/etc/version\" {dir}/seen-version\n  \
             echo \"hostname=gw-$RAUC_SLOT_BOOTNAME\" > \"$RAUC_SLOT_MOUNT_POINT/etc/hook.conf\"\nfi"
        ),
    );
    let image = ext4_image(&gw, "1.1.0");
    let digest = hex::encode(sha2::Sha256::digest(&image));
    let (bundle, _) = gw.bundle("v11", "acme-gateway", "1.1.0", image.clone(), "release");
    let out = gw.rota(&["install", "--json", path_str(&bundle)]).success();
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let tr = first["transaction"].as_str().unwrap().to_owned();
    for step in [
        "Running pre-install hook",
        "Running slot-post-install hook for rootfs.1",
        "Running post-install hook",
    ] {
        assert!(
            out.contains(&format!("\"message\":\"{step}\"")),
            "no progress step {step:?}: {out}"
        );
    }
    assert_eq!(boot_order(&gw), ("B A".into(), "3".into()));

    let order = std::fs::read_to_string(gw.path("order")).unwrap();
    assert_eq!(order, "pre-install\nslot-post-install\npost-install\n");
    // The hook saw the new rootfs and changed it; the change is in slot B.
    assert_eq!(
        std::fs::read_to_string(gw.path("seen-version")).unwrap(),
        "1.1.0\n"
    );
    assert_eq!(
        debugfs_cat(&gw, "b.img", "/etc/hook.conf"),
        "hostname=gw-B\n"
    );
    assert_eq!(debugfs_cat(&gw, "b.img", "/etc/version"), "1.1.0\n");
    // Unmounted, mount point removed, loop device released.
    assert!(!gw.path("mnt/rootfs.1").exists());
    no_loop_device_on(&gw, "b.img");

    let s = |v: &str| v.to_owned();
    let p = |n: &str| gw.path(n).display().to_string();
    let mut common = BTreeMap::from([
        (s("PATH"), s("/usr/sbin:/usr/bin:/sbin:/bin")),
        (s("PWD"), s("/")), // set by the shell: hooks run in /
        (s("RAUC_SYSTEM_CONFIG"), p("system.toml")),
        (s("RAUC_SYSTEM_COMPATIBLE"), s("acme-gateway")),
        (s("RAUC_MF_COMPATIBLE"), s("acme-gateway")),
        (s("RAUC_MF_VERSION"), s("1.1.0")),
        (s("RAUC_TRANSACTION_ID"), tr.clone()),
        (s("RAUC_CURRENT_BOOTNAME"), s("A")),
        (s("RAUC_SLOTS"), s("1 2")),
        (s("RAUC_TARGET_SLOTS"), s("2")),
    ]);
    for (n, name, dev, boot) in [(1, "rootfs.0", "a.img", "A"), (2, "rootfs.1", "b.img", "B")] {
        common.insert(format!("RAUC_SLOT_NAME_{n}"), s(name));
        common.insert(format!("RAUC_SLOT_CLASS_{n}"), s("rootfs"));
        common.insert(format!("RAUC_SLOT_TYPE_{n}"), s("raw"));
        common.insert(format!("RAUC_SLOT_DEVICE_{n}"), p(dev));
        common.insert(format!("RAUC_SLOT_BOOTNAME_{n}"), s(boot));
        common.insert(format!("RAUC_SLOT_PARENT_{n}"), s(""));
    }
    for hook in ["pre-install", "post-install"] {
        let got = parse_env(&std::fs::read_to_string(gw.path(&format!("env-{hook}"))).unwrap());
        let mut want = common.clone();
        want.insert(s("ROTA_HOOK"), s(hook));
        assert_eq!(got, want, "{hook}");
    }
    let got = parse_env(&std::fs::read_to_string(gw.path("env-slot-post-install")).unwrap());
    let mut want = common.clone();
    want.extend([
        (s("ROTA_HOOK"), s("slot-post-install")),
        (s("RAUC_SLOT_NAME"), s("rootfs.1")),
        (s("RAUC_SLOT_CLASS"), s("rootfs")),
        (s("RAUC_SLOT_TYPE"), s("raw")),
        (s("RAUC_SLOT_DEVICE"), p("b.img")),
        (s("RAUC_SLOT_BOOTNAME"), s("B")),
        (s("RAUC_SLOT_PARENT"), s("")),
        (s("RAUC_SLOT_MOUNT_POINT"), p("mnt/rootfs.1")),
        (s("RAUC_IMAGE_NAME"), s("rootfs.ext4")),
        (s("RAUC_IMAGE_CLASS"), s("rootfs")),
        (s("RAUC_IMAGE_DIGEST"), digest),
        (s("RAUC_IMAGE_SIZE"), (4u64 << 20).to_string()),
    ]);
    assert_eq!(got, want);
    assert!(!got.contains_key("HOME") && !got.contains_key("ROTA_TEST_SECRET"));
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_its_slot_unmounted() {
    let gw = gateway(
        "slot-post-install = \"slow\"\nmount-classes = [\"rootfs\"]\nmount-prefix = \"mnt\"\ntimeout = \"1s\"",
    );
    let script = hook(
        &gw,
        "slow",
        "echo 'waiting for the modem' >&2\nsleep 37.25\necho never >&2",
    );
    let image = ext4_image(&gw, "1.1.0");
    let (bundle, _) = gw.bundle("v11", "acme-gateway", "1.1.0", image, "release");
    let started = Instant::now();
    let r = gw.rota(&["install", path_str(&bundle)]);
    let took = started.elapsed();
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let want = format!(
        "slot-post-install hook {} timed out after 1s: waiting for the modem",
        script.display()
    );
    assert!(
        r.stderr().contains(&want),
        "{}\nshould contain {want}",
        r.stderr()
    );
    assert!(
        took < Duration::from_secs(30),
        "the hook was not killed: {took:?}"
    );
    assert_b_not_bootable(&gw);
    assert_eq!(gw.status_json()["last_install"]["result"], "failed");
    assert!(
        !gw.path("mnt/rootfs.1").exists(),
        "the mount point is removed"
    );
    no_loop_device_on(&gw, "b.img");
    // Its child went with it (same process group).
    let left = Run::of(Command::new("pgrep").args(["-f", "sleep 37.25"]));
    assert_ne!(left.code(), 0, "sleep still runs: {}", left.stdout());
}

#[test]
fn hook_files_others_could_change_are_refused() {
    let gw = gateway("pre-install = \"open-hook\"");
    let marker = gw.path("ran");
    let script = hook(&gw, "open-hook", &format!("touch {}", marker.display()));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (bundle, _) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 3),
        "release",
    );
    let b_before = gw.read("b.img");
    let env_before = gw.read("uboot.env");
    let r = gw.rota(&["install", path_str(&bundle)]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let want = format!(
        "pre-install hook {} not run: it is writable by group or others (mode 0777; chmod go-w it)",
        script.display()
    );
    assert!(
        r.stderr().contains(&want),
        "{}\nshould contain {want}",
        r.stderr()
    );
    assert!(!marker.exists(), "the hook must not run");
    assert_eq!(gw.read("b.img"), b_before);
    assert_eq!(gw.read("uboot.env"), env_before);
    // Owned by another user: refused too.
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(&script, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let r = gw.rota(&["install", path_str(&bundle)]);
    assert!(
        r.stderr()
            .contains("not run: it is owned by uid 65534, not root"),
        "{}",
        r.stderr()
    );
    assert!(!marker.exists());
    // A missing hook is an error too, not a silent skip.
    std::fs::remove_file(&script).unwrap();
    let r = gw.rota(&["install", path_str(&bundle)]);
    assert!(
        r.stderr().contains("not run: cannot use it: No such file"),
        "{}",
        r.stderr()
    );
    assert_eq!(gw.read("b.img"), b_before);
}

#[test]
fn a_slot_that_does_not_mount_fails_the_install_before_its_hook() {
    let gw = gateway(
        "slot-post-install = \"fix\"\nmount-classes = [\"rootfs\"]\nmount-prefix = \"mnt\"",
    );
    let marker = gw.path("ran");
    hook(&gw, "fix", &format!("touch {}", marker.display()));
    // Raw bytes, no file system.
    let (bundle, _) = gw.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(2 << 20, 4),
        "release",
    );
    let r = gw.rota(&["install", path_str(&bundle)]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let want = format!(
        "cannot mount slot rootfs.1 ({}) at {} for the slot-post-install hook: ",
        gw.path("b.img").display(),
        gw.path("mnt/rootfs.1").display()
    );
    assert!(
        r.stderr().contains(&want),
        "{}\nshould contain {want}",
        r.stderr()
    );
    assert!(
        !marker.exists(),
        "the hook must not run on an unmounted slot"
    );
    assert_b_not_bootable(&gw);
    no_loop_device_on(&gw, "b.img");
}
