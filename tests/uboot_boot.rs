//! The shipped `bootloader-env/boot.cmd`, compiled with the real `mkimage`, run by real
//! U-Boot (u-boot-qemu under qemu-system-aarch64 -M virt) against the env rota writes.
//!
//! The disk image holds the env at offset 0x40000 (like raw eMMC) and an ext4 partition
//! with boot.scr. A read-only pflash env supplies the board hooks: `rota_env_load` /
//! `rota_env_save` move the env between RAM and the disk, `rota_boot` prints the chosen
//! slot and powers off instead of starting a kernel.

mod support;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::gateway::{path_str, pattern, Gateway};

const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const ENV_OFFSET: u64 = 0x40000;

fn sh(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Disk {
    disk: PathBuf,
    flash: PathBuf,
}

/// Builds disk.img and flash.img in `dir`; the env starts as `env` (name=value lines).
fn build_disk(dir: &Path, env: &str) -> Disk {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bootfs = dir.join("bootfs");
    std::fs::create_dir_all(&bootfs).unwrap();
    sh(Command::new("mkimage")
        .args([
            "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", "rota", "-d",
        ])
        .arg(root.join("bootloader-env/boot.cmd"))
        .arg(bootfs.join("boot.scr")));
    let part = dir.join("part.img");
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&bootfs)
        .arg(&part)
        .arg("8M"));
    let disk = dir.join("disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(16 << 20).unwrap();
    drop(f);
    let mut sf = Command::new("sfdisk");
    sf.args(["-q"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().expect("sfdisk (fdisk) must be installed");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=16384, type=83, bootable\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    sh(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"]));
    let env_txt = dir.join("env.txt");
    std::fs::write(&env_txt, env).unwrap();
    let env_img = dir.join("env.bin");
    sh(Command::new("mkenvimage")
        .args(["-s", "0x4000", "-o"])
        .arg(&env_img)
        .arg(&env_txt));
    sh(Command::new("dd")
        .arg(format!("if={}", env_img.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=512", "seek=512", "conv=notrunc", "status=none"]));
    // Board env in read-only pflash: fast boot plus the rota hooks.
    let board = "bootdelay=0\n\
        loadaddr=0x40200000\nscriptaddr=0x40100000\n\
        bootcmd=virtio scan; load virtio 0:1 ${scriptaddr} boot.scr && source ${scriptaddr}; poweroff\n\
        rota_env_load=virtio read ${loadaddr} 0x200 0x20; env import -c ${loadaddr} 0x4000\n\
        rota_env_save=env export -c -s 0x4000 ${loadaddr}; virtio write ${loadaddr} 0x200 0x20\n\
        rota_boot=echo ROTA-TEST-BOOTED=${rota_slot}; poweroff\n";
    let board_txt = dir.join("board.txt");
    std::fs::write(&board_txt, board).unwrap();
    let flash = dir.join("flash.img");
    sh(Command::new("mkenvimage")
        .args(["-s", "0x40000", "-o"])
        .arg(&flash)
        .arg(&board_txt));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&flash)
        .unwrap();
    f.set_len(64 << 20).unwrap();
    Disk { disk, flash }
}

/// One power-on: returns the slot U-Boot booted (None when it reset without booting).
fn boot_once(d: &Disk) -> Option<String> {
    let out = Command::new("timeout")
        .args([
            "60",
            "qemu-system-aarch64",
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-m",
            "256",
            "-nographic",
            "-nic",
            "none",
            "-no-reboot",
            "-bios",
            UBOOT,
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,readonly=on,file={}",
            d.flash.display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=none,file={},format=raw,id=hd0",
            d.disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=hd0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("qemu-system-aarch64 (qemu-system-arm) must be installed");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("rota:"), "boot script did not run:\n{log}");
    log.lines()
        .find_map(|l| l.trim().strip_prefix("ROTA-TEST-BOOTED="))
        .map(|s| s.trim().to_owned())
}

fn gateway_on_disk() -> (Gateway, Disk) {
    let gw = Gateway::new(false);
    let d = build_disk(
        gw.dir.path(),
        "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nserial=GW-1\n",
    );
    std::fs::write(
        gw.path("fw_env.config"),
        format!("{} {ENV_OFFSET:#x} 0x4000\n", d.disk.display()),
    )
    .unwrap();
    (gw, d)
}

fn reboot_service(gw: &mut Gateway, slot: &str) {
    gw.stop_service();
    std::fs::write(
        gw.path("cmdline"),
        format!("console=ttyAMA0 rota.slot={slot}\n"),
    )
    .unwrap();
    gw.start_service();
}

#[test]
fn new_slot_boots_and_falls_back_when_never_marked_good() {
    let (mut gw, disk) = gateway_on_disk();
    assert_eq!(
        boot_once(&disk).as_deref(),
        Some("A"),
        "factory state boots A"
    );
    assert_eq!(gw.fw_printenv()["BOOT_A_LEFT"], "2");
    gw.start_service();
    gw.rota(&["mark", "good", "booted"]).success();
    let (bundle, _) = gw.bundle(
        "v2",
        "acme-gateway",
        "2.0.0",
        pattern(1 << 20, 2),
        "release",
    );
    gw.rota(&["install", path_str(&bundle)]).success();
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");

    // U-Boot boots the new slot and spends one attempt; rota sees it.
    assert_eq!(boot_once(&disk).as_deref(), Some("B"));
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_B_LEFT"].as_str(), env["serial"].as_str()),
        ("2", "GW-1"),
        "U-Boot kept rota's variables"
    );
    reboot_service(&mut gw, "B");
    assert_eq!(gw.status_json()["last_install"]["result"], "booted");

    // Never marked good: two more tries, then U-Boot falls back to A.
    assert_eq!(boot_once(&disk).as_deref(), Some("B"));
    assert_eq!(boot_once(&disk).as_deref(), Some("B"));
    assert_eq!(gw.fw_printenv()["BOOT_B_LEFT"], "0");
    assert_eq!(boot_once(&disk).as_deref(), Some("A"));
    reboot_service(&mut gw, "A");
    let st = gw.status_json();
    assert_eq!(st["last_install"]["result"], "rolled-back", "{st}");
    assert!(
        st["last_error"].as_str().unwrap().contains("rolled back"),
        "{st}"
    );
    assert_eq!(st["primary"], "rootfs.0");
    assert_eq!(st["booted"], "A");
}

#[test]
fn marked_good_slot_stays_and_exhausted_counters_reset() {
    let (mut gw, disk) = gateway_on_disk();
    gw.start_service();
    let (bundle, _) = gw.bundle(
        "v2",
        "acme-gateway",
        "2.0.0",
        pattern(1 << 20, 3),
        "release",
    );
    gw.rota(&["install", path_str(&bundle)]).success();
    reboot_service(&mut gw, "B");
    for _ in 0..4 {
        assert_eq!(boot_once(&disk).as_deref(), Some("B"));
        gw.rota(&["mark", "good", "booted"]).success();
        assert_eq!(gw.fw_printenv()["BOOT_B_LEFT"], "3");
    }
    assert_eq!(gw.status_json()["last_install"]["result"], "good");
    // Power lost in every boot of every slot: counters run out, U-Boot resets them
    // instead of looping, and the preferred slot boots again.
    gw.stop_service();
    for _ in 0..3 {
        boot_once(&disk);
    }
    let env = gw.fw_printenv();
    assert_eq!(env["BOOT_B_LEFT"], "0");
    assert_eq!(boot_once(&disk).as_deref(), Some("A"));
    assert_eq!(boot_once(&disk).as_deref(), Some("A"));
    assert_eq!(boot_once(&disk).as_deref(), Some("A"));
    assert_eq!(gw.fw_printenv()["BOOT_A_LEFT"], "0");
    assert_eq!(
        boot_once(&disk),
        None,
        "no slot left: counters are reset, no kernel started"
    );
    let env = gw.fw_printenv();
    assert_eq!(
        (env["BOOT_A_LEFT"].as_str(), env["BOOT_B_LEFT"].as_str()),
        ("3", "3")
    );
    assert_eq!(
        boot_once(&disk).as_deref(),
        Some("B"),
        "the preferred slot again"
    );
}

/// Boot flapping: power is lost during each of the first N boots of the new slot
/// (U-Boot spends an attempt, nothing marks the slot good), then power stays on and the
/// system comes up (the mark-good unit marks whatever booted). With the real U-Boot and
/// the shipped script: for N below the attempts the new slot wins; from N = attempts on
/// the old slot does and rota reports the rollback. Either way the device ends on a
/// good slot and the next boot chooses it again — no reset loop.
#[test]
fn power_lost_in_the_first_boots_of_a_new_slot_ends_on_a_good_slot() {
    for flaps in 1..=4 {
        let (mut gw, disk) = gateway_on_disk();
        gw.start_service();
        gw.rota(&["mark", "good", "booted"]).success();
        let (bundle, _) = gw.bundle(
            "v2",
            "acme-gateway",
            "2.0.0",
            pattern(1 << 20, 4),
            "release",
        );
        gw.rota(&["install", path_str(&bundle)]).success();
        gw.stop_service();
        for i in 0..flaps {
            let booted = boot_once(&disk);
            let want = if i < 3 { "B" } else { "A" };
            assert_eq!(booted.as_deref(), Some(want), "flaps={flaps}, boot {i}");
        }
        // Power stays on: U-Boot picks a slot, Linux comes up, mark-good runs.
        let slot = boot_once(&disk).expect("a slot boots");
        let want = if flaps < 3 { "B" } else { "A" };
        assert_eq!(slot, want, "flaps={flaps}: the stable boot");
        reboot_service(&mut gw, &slot);
        gw.rota(&["mark", "good", "booted"]).success();
        let st = gw.status_json();
        let env = gw.fw_printenv();
        assert_eq!(
            env[&format!("BOOT_{slot}_LEFT")],
            "3",
            "flaps={flaps}: {env:?}"
        );
        if slot == "B" {
            assert_eq!(st["last_install"]["result"], "good", "flaps={flaps}: {st}");
        } else {
            assert_eq!(
                st["last_install"]["result"], "rolled-back",
                "flaps={flaps}: {st}"
            );
        }
        gw.stop_service();
        // The next power-on boots the same good slot.
        assert_eq!(
            boot_once(&disk).as_deref(),
            Some(slot.as_str()),
            "flaps={flaps}"
        );
    }
}

/// Why `[system] boot-attempts` is at most 9: counters are hex (rota, RAUC and `setexpr`
/// write hex), but the script's `test ${BOOT_x_LEFT} -gt 0` reads a decimal number, so to
/// the real U-Boot a counter of "a" (10 attempts) is no attempt at all.
#[test]
fn a_two_digit_hex_counter_reads_as_no_attempts_to_the_boot_script() {
    let gw = Gateway::new(false);
    let d = build_disk(
        gw.dir.path(),
        "BOOT_ORDER=B A\nBOOT_A_LEFT=3\nBOOT_B_LEFT=a\n",
    );
    assert_eq!(
        boot_once(&d).as_deref(),
        Some("A"),
        "B with \"a\" is skipped"
    );
}
