//! MCU images inside a gateway bundle, end to end with `rota service` on a private bus and
//! a simulated MCUboot node on UDP: the image is checked before any slot is written,
//! staged during the install, relayed only after the new rootfs is marked good (and
//! right away for an MCU-only bundle), dropped on a rollback; `rota status` shows the node.

mod mcu_sim;
mod support;

use mcu_sim::{tools, Sim, SimConfig};
use std::path::{Path, PathBuf};
use support::gateway::{path_str, pattern, wait_for, Gateway};

/// A gateway whose config has `[mcu.sensor]` on the simulator's UDP address, checked
/// with the imgtool key `mcu`. Returns (gateway, simulator, imgtool private key).
fn gateway_with_node() -> (Gateway, Sim, PathBuf) {
    gateway_with(SimConfig::default(), false)
}

/// As [`gateway_with_node`], with the node on a pty (serial framing) when `serial`.
fn gateway_with(cfg: SimConfig, serial: bool) -> (Gateway, Sim, PathBuf) {
    let gw = Gateway::new(false);
    let (key, public) = tools::keygen(gw.dir.path(), "mcu");
    let mut sim = Sim::new(cfg);
    let transport = if serial {
        let pty = sim.serve_pty().unwrap();
        format!(
            "transport = \"serial\"\ndevice = \"{}\"\ntimeout = \"2s\"",
            pty.display()
        )
    } else {
        let addr = sim.serve_udp("127.0.0.1:0").unwrap();
        format!("transport = \"udp\"\naddress = \"{addr}\"\ntimeout = \"500ms\"")
    };
    let mut config = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    config.push_str(&format!(
        "\n[mcu.sensor]\n{transport}\nkey = \"{}\"\n",
        public.display()
    ));
    std::fs::write(gw.path("system.toml"), config).unwrap();
    (gw, sim, key)
}

/// A signed bundle with an optional rootfs image and an MCU image for `sensor`.
fn bundle(gw: &Gateway, name: &str, version: &str, rootfs: Option<&[u8]>, mcu: &Path) -> PathBuf {
    bundle_for(gw, name, version, rootfs, mcu, "sensor")
}

/// As [`bundle`], the MCU image meant for `node`.
fn bundle_for(
    gw: &Gateway,
    name: &str,
    version: &str,
    rootfs: Option<&[u8]>,
    mcu: &Path,
    node: &str,
) -> PathBuf {
    let src = gw.path(&format!("src-{name}"));
    std::fs::create_dir_all(&src).unwrap();
    let mut manifest =
        format!("[update]\ncompatible = \"acme-gateway\"\nversion = \"{version}\"\n");
    if let Some(r) = rootfs {
        std::fs::write(src.join("rootfs.ext4"), r).unwrap();
        manifest.push_str("\n[[image]]\nslot-class = \"rootfs\"\nfile = \"rootfs.ext4\"\n");
    }
    std::fs::copy(mcu, src.join(format!("{node}.bin"))).unwrap();
    manifest.push_str(&format!(
        "\n[[image]]\nmcu = \"{node}\"\nfile = \"{node}.bin\"\n"
    ));
    std::fs::write(src.join("manifest.toml"), manifest).unwrap();
    let out = gw.path(&format!("{name}.rota"));
    gw.rota(&[
        "bundle",
        "create",
        path_str(&src),
        path_str(&out),
        "--key",
        "keys/release.key.pem",
    ])
    .success();
    out
}

fn node(gw: &Gateway) -> serde_json::Value {
    let st = gw.status_json();
    st["mcu"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "sensor").cloned())
        .unwrap_or_else(|| panic!("no sensor in status: {st}"))
}

#[test]
fn mcu_image_is_relayed_after_the_new_rootfs_is_marked_good() {
    let (mut gw, sim, key) = gateway_with_node();
    let firmware = tools::payload(40_000, 3);
    let signed = tools::sign(gw.dir.path(), &key, &firmware, "2.1.0", &[]);
    let rootfs = pattern(1 << 20, 5);
    let b = bundle(&gw, "both", "1.1.0", Some(&rootfs), &signed);
    gw.start_service();
    let out = gw.rota(&["install", path_str(&b)]).success();
    assert!(out.contains("staged for MCU nodes sensor"), "{out}");
    assert_eq!(&gw.read("b.img")[..rootfs.len()], &rootfs[..]);
    assert_eq!(node(&gw)["state"], "staged");
    assert_eq!(
        sim.dev().stats.uploads_completed,
        0,
        "nothing relayed before the new rootfs is good"
    );

    // Reboot into B: still not good, still not relayed.
    gw.reboot_into("B");
    assert_eq!(gw.status_json()["last_install"]["result"], "booted");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(sim.dev().stats.uploads_completed, 0);

    gw.rota(&["mark", "good"]).success();
    wait_for("the node to run the relayed image", 60, || {
        node(&gw)["state"] == "confirmed"
    });
    let dev = sim.dev();
    assert_eq!(
        dev.stats.last_upload.as_deref(),
        Some(&std::fs::read(&signed).unwrap()[..]),
        "the node received the bundle's image byte for byte"
    );
    assert_eq!(dev.primary.version, "2.1.0");
    assert!(dev.primary_confirmed);
    drop(dev);
    assert_eq!(node(&gw)["version"], "2.1.0");
    assert!(
        !gw.path("data/mcu/staged/sensor.img").exists(),
        "the staged copy is removed once the node confirmed"
    );
}

#[test]
fn mcu_only_bundle_is_relayed_at_once() {
    let (mut gw, sim, key) = gateway_with_node();
    let signed = tools::sign(
        gw.dir.path(),
        &key,
        &tools::payload(20_000, 4),
        "3.0.0",
        &[],
    );
    let b = bundle(&gw, "mcu-only", "1.2.0", None, &signed);
    let env_before = gw.read("uboot.env");
    gw.start_service();
    gw.rota(&["install", path_str(&b)]).success();
    wait_for("the node to confirm", 60, || {
        node(&gw)["state"] == "confirmed"
    });
    assert_eq!(sim.dev().primary.version, "3.0.0");
    assert_eq!(
        gw.read("uboot.env"),
        env_before,
        "no slot, no boot selection change"
    );
    assert_eq!(gw.status_json()["last_install"]["result"], "good");
}

#[test]
fn bad_mcu_images_refuse_the_bundle_before_any_slot_write() {
    let (mut gw, sim, key) = gateway_with_node();
    let signed = tools::sign(
        gw.dir.path(),
        &key,
        &tools::payload(30_000, 6),
        "2.0.0",
        &[],
    );
    // One flipped payload byte: the MCUboot hash TLV no longer matches.
    let mut flipped = std::fs::read(&signed).unwrap();
    flipped[0x200 + 100] ^= 0x40;
    let flipped_path = gw.path("flipped.bin");
    std::fs::write(&flipped_path, &flipped).unwrap();
    // Signed by a key the node does not trust.
    let (other, _) = tools::keygen(gw.dir.path(), "stranger");
    let foreign = tools::sign(
        gw.dir.path(),
        &other,
        &tools::payload(30_000, 7),
        "2.0.1",
        &[],
    );
    gw.start_service();
    let env_before = gw.read("uboot.env");
    let b_before = gw.read("b.img");
    for (name, image, why) in [
        ("flipped", &flipped_path, "hash"),
        ("foreign", &foreign, "signed by another key"),
    ] {
        let b = bundle(&gw, name, "1.1.0", Some(&pattern(1 << 20, 9)), image);
        let r = gw.rota(&["install", path_str(&b)]);
        assert_eq!(r.code(), 1, "{name}: {}", r.stdout());
        assert!(
            r.stderr().contains("MCU node sensor") && r.stderr().contains(why),
            "{name}: {}",
            r.stderr()
        );
        assert_eq!(gw.read("b.img"), b_before, "{name}: slot B untouched");
        assert_eq!(gw.read("uboot.env"), env_before, "{name}: env untouched");
        assert!(!gw.path("data/mcu/staged/sensor.img").exists());
    }
    // A node the config does not name.
    let out = bundle_for(&gw, "unknown", "1.1.0", None, &signed, "radio");
    let r = gw.rota(&["install", path_str(&out)]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr()
            .contains("MCU node \"radio\", which is not configured here"),
        "{}",
        r.stderr()
    );
    assert_eq!(sim.dev().stats.requests, 0, "the node was never contacted");
}

#[test]
fn a_rolled_back_update_drops_its_mcu_image() {
    let (mut gw, sim, key) = gateway_with_node();
    let signed = tools::sign(
        gw.dir.path(),
        &key,
        &tools::payload(20_000, 8),
        "2.2.0",
        &[],
    );
    let b = bundle(&gw, "rb", "1.1.0", Some(&pattern(1 << 20, 10)), &signed);
    gw.start_service();
    gw.rota(&["install", path_str(&b)]).success();
    assert!(gw.path("data/mcu/staged/sensor.img").exists());
    // The bootloader tried B and fell back to A: as U-Boot's script leaves the env.
    gw.stop_service();
    gw.cmd(
        "fw_setenv",
        &[
            "-c",
            path_str(&gw.path("fw_env.config")),
            "BOOT_B_LEFT",
            "0",
        ],
    )
    .success();
    gw.start_service();
    wait_for("the staged image to be dropped", 30, || {
        !gw.path("data/mcu/staged/sensor.img").exists()
    });
    assert_eq!(gw.status_json()["last_install"]["result"], "rolled-back");
    assert_eq!(sim.dev().stats.uploads_completed, 0, "nothing relayed");
    assert_ne!(node(&gw)["state"], "staged");
}

/// `kill -9` of the service in the middle of a relay over a 115200-baud line: the next
/// start relays the still-staged image again, resuming at the offset the node holds.
#[test]
fn killed_service_resumes_the_relay_at_next_start() {
    let (mut gw, sim, key) = gateway_with(
        SimConfig {
            baud: Some(115_200),
            ..Default::default()
        },
        true,
    );
    let signed = tools::sign(
        gw.dir.path(),
        &key,
        &tools::payload(30_000, 11),
        "4.0.0",
        &[],
    );
    let size = std::fs::metadata(&signed).unwrap().len();
    let b = bundle(&gw, "slow", "1.3.0", None, &signed);
    gw.start_service();
    gw.rota(&["install", path_str(&b)]).success();
    wait_for("a third of the image to reach the node", 60, || {
        sim.dev().stats.bytes_written > size / 3
    });
    gw.kill_service();
    let before = sim.dev().stats.bytes_written;
    assert!(before < size, "the relay finished before the kill");
    assert!(gw.path("data/mcu/staged/sensor.img").exists());
    gw.start_service();
    wait_for("the node to confirm", 90, || {
        node(&gw)["state"] == "confirmed"
    });
    let d = sim.dev();
    assert_eq!(d.primary.data, std::fs::read(&signed).unwrap());
    assert!(d.primary_confirmed);
    assert_eq!(d.stats.resumed_sessions, 1, "the upload resumed");
    assert!(
        d.stats.bytes_written < size + 2048,
        "sent {} bytes for a {size}-byte image",
        d.stats.bytes_written
    );
}
