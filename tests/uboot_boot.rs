//! The shipped `bootloader-env/boot.cmd`, compiled with the real `mkimage`, run by real
//! U-Boot (u-boot-qemu under qemu-system-aarch64 -M virt) against the env rota writes.
//!
//! The disk image holds the env at offset 0x40000 (like raw eMMC) and an ext4 partition
//! with boot.scr. A read-only pflash env supplies the board hooks: `rota_env_load` /
//! `rota_env_save` move the env between RAM and the disk, `rota_boot` prints the chosen
//! slot and powers off instead of starting a kernel.
//!
//! The last two tests boot a real kernel (Debian's arm64 Image) from the chosen slot's
//! partition, once by the script's own boot path (GPT, i.MX-style) and once by the
//! Raspberry Pi hook exactly as the rota-boot-script recipe builds it (MBR, a stand-in
//! for the Pi firmware's device tree and cmdline.txt), and read the kernel's banner and
//! command line on the serial console.

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
        devtype=virtio\ndevnum=0\nrota_part_A=2\nrota_part_B=3\n\
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

// ------------------------------------------------------------ a real kernel per slot
//
// The boots above stop at the board's `rota_boot`; these go on into Debian's arm64
// kernel (scripts/fetch-test-kernel.sh fetches and caches it) loaded from the chosen
// slot's partition, and read the kernel's own banner and command line on the serial
// console. Only the chosen slot holds a kernel, so a load from the wrong partition
// cannot boot. The kernel panics or waits for its root device afterwards (no initrd,
// no virtio driver built in): the test stops QEMU as soon as the command line is out.

/// Partition layout of the kernel disks, in 512-byte sectors: boot (boot.scr), slot A,
/// slot B; the env sits at [`ENV_OFFSET`], before the first partition.
const KPARTS: [(u64, u64); 3] = [(2048, 16384), (18432, 98304), (116736, 98304)];
/// GPT partition UUIDs of slots A and B (the i.MX-style disk).
const GPT_UUID_A: &str = "6a3b0c2e-9f1d-4e55-8a61-0c1b2d3e4f5a";
const GPT_UUID_B: &str = "7d4e1f30-2a6b-4c88-9b72-1e2f3a4b5c6d";
/// The DOS disk signature of the Raspberry Pi-style disk: PARTUUID is `<sig>-<nn>`.
const DOS_SIGNATURE: &str = "5eed2a7c";

/// Debian's arm64 kernel Image: `ROTA_TEST_KERNEL`, or what the fetch script cached.
fn test_kernel() -> PathBuf {
    if let Some(p) = std::env::var_os("ROTA_TEST_KERNEL") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-test-kernel.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed (it needs the Debian mirror once; or set ROTA_TEST_KERNEL to an arm64 Image): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn mkfs_ext4(dir: &Path, name: &str, files: &[(&str, &Path)], mib: u64) -> PathBuf {
    let root = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(root.join("boot")).unwrap();
    for (dest, src) in files {
        std::fs::copy(src, root.join(dest)).unwrap();
    }
    let img = dir.join(format!("{name}.img"));
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg(format!("{mib}M")));
    img
}

fn dd_into(disk: &Path, part: &Path, seek_sectors: u64) {
    sh(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .arg(format!("seek={seek_sectors}"))
        .args(["bs=512", "conv=notrunc", "status=none"]));
}

fn mkenvimage(dir: &Path, name: &str, size: &str, text: &str) -> PathBuf {
    let txt = dir.join(format!("{name}.txt"));
    std::fs::write(&txt, text).unwrap();
    let img = dir.join(format!("{name}.bin"));
    sh(Command::new("mkenvimage")
        .args(["-s", size, "-o"])
        .arg(&img)
        .arg(&txt));
    img
}

/// The partition table of a kernel disk.
enum Table {
    /// MBR, as on a Raspberry Pi SD card.
    Dos,
    /// GPT with [`GPT_UUID_A`] / [`GPT_UUID_B`], as on an i.MX eMMC.
    Gpt,
}

/// A disk with boot.scr (`script`, already compiled) on partition 1, the kernel (and
/// `dtb` as boot/virt.dtb) only on slot `kernel_slot`'s partition, the rota env `env`,
/// and a read-only board env `board` in pflash.
fn kernel_disk(
    dir: &Path,
    table: Table,
    script: &Path,
    kernel_slot: &str,
    dtb: &Path,
    env: &str,
    board: &str,
) -> Disk {
    let kernel = test_kernel();
    let boot = mkfs_ext4(dir, "bootpart", &[("boot.scr", script)], 8);
    let with_kernel: [(&str, &Path); 2] = [("boot/Image", &kernel), ("boot/virt.dtb", dtb)];
    let marker = dir.join("marker");
    std::fs::write(&marker, "this slot holds no kernel\n").unwrap();
    let without: [(&str, &Path); 1] = [("boot/no-kernel-here", &marker)];
    let (a, b) = if kernel_slot == "A" {
        (&with_kernel[..], &without[..])
    } else {
        (&without[..], &with_kernel[..])
    };
    let slot_a = mkfs_ext4(dir, "slot-a", a, 48);
    let slot_b = mkfs_ext4(dir, "slot-b", b, 48);
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(112 << 20)
        .unwrap();
    let layout = match table {
        Table::Dos => format!(
            "label: dos\nlabel-id: 0x{DOS_SIGNATURE}\n\
             start={}, size={}, type=c, bootable\nstart={}, size={}, type=83\nstart={}, size={}, type=83\n",
            KPARTS[0].0, KPARTS[0].1, KPARTS[1].0, KPARTS[1].1, KPARTS[2].0, KPARTS[2].1
        ),
        Table::Gpt => format!(
            "label: gpt\n\
             start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot\n\
             start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={GPT_UUID_A}, name=rootfs_a\n\
             start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={GPT_UUID_B}, name=rootfs_b\n",
            KPARTS[0].0, KPARTS[0].1, KPARTS[1].0, KPARTS[1].1, KPARTS[2].0, KPARTS[2].1
        ),
    };
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk) must be installed");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(layout.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {layout}");
    for (img, (start, _)) in [boot, slot_a, slot_b].iter().zip(KPARTS) {
        dd_into(&disk, img, start);
    }
    let env_img = mkenvimage(dir, "env", "0x4000", env);
    dd_into(&disk, &env_img, ENV_OFFSET / 512);
    let flash = mkenvimage(dir, "board", "0x40000", board);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&flash)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    Disk { disk, flash }
}

/// The board env shared by the kernel boots: the rota env on the disk at [`ENV_OFFSET`]
/// (as on raw eMMC), addresses for a 512 MiB `virt` machine, and the boot command that, like distro boot, sets devtype/devnum and sources boot.scr from
/// partition 1. `extra` is added to it (before the boot command runs).
fn kernel_board_env(prelude: &str, extra: &str) -> String {
    format!(
        "bootdelay=0\n\
         loadaddr=0x40200000\nscriptaddr=0x40100000\n\
         kernel_addr_r=0x40400000\nfdt_addr_r=0x4c000000\n\
         bootcmd={prelude}virtio scan; setenv devtype virtio; setenv devnum 0; \
         load virtio 0:1 ${{scriptaddr}} boot.scr && source ${{scriptaddr}}; poweroff\n\
         rota_env_load=virtio read ${{loadaddr}} 0x200 0x20; env import -c ${{loadaddr}} 0x4000\n\
         rota_env_save=env export -c -s 0x4000 ${{loadaddr}}; virtio write ${{loadaddr}} 0x200 0x20\n\
         {extra}"
    )
}

fn qemu_args(mem: &str) -> Vec<String> {
    [
        "-M",
        "virt",
        "-cpu",
        "cortex-a57",
        "-m",
        mem,
        "-nographic",
        "-nic",
        "none",
        "-no-reboot",
        "-bios",
        UBOOT,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// QEMU's own device tree for the machine the kernel boots on (`dumpdtb`).
fn virt_dtb(dir: &Path) -> PathBuf {
    let dtb = dir.join("virt.dtb");
    let mut args = qemu_args("512");
    args[1] = format!("virt,dumpdtb={}", dtb.display());
    sh(Command::new("qemu-system-aarch64").args(&args));
    dtb
}

/// What the kernel said about itself on the serial console.
struct KernelBoot {
    banner: String,
    cmdline: String,
    log: String,
}

/// Powers on and reads the serial console until the kernel has printed its banner and
/// command line (then stops QEMU), or U-Boot gave up, QEMU ended or 45 s passed (then
/// fails with the log).
fn boot_kernel(d: &Disk) -> KernelBoot {
    use std::io::Read;
    let mut child = Command::new("qemu-system-aarch64")
        .args(qemu_args("512"))
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
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-aarch64 (qemu-system-arm) must be installed");
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    let mut log = String::new();
    let found = loop {
        let line_with = |log: &str, key: &str| {
            log.lines()
                .find(|l| l.contains(key))
                .map(|l| l.trim_end_matches('\r').to_owned())
        };
        let banner = line_with(&log, "Linux version ");
        let cmdline = line_with(&log, "Kernel command line: ").filter(|l| {
            // complete only once its line has ended
            log.contains(&format!("{l}\n")) || log.contains(&format!("{l}\r"))
        });
        if let (Some(banner), Some(cmdline)) = (banner, cmdline) {
            break Some((banner, cmdline));
        }
        if log.contains("rota: booting slot") && log.contains("failed") {
            break None;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => log.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => break None, // timed out, or QEMU ended
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    while let Ok(bytes) = rx.try_recv() {
        log.push_str(&String::from_utf8_lossy(&bytes));
    }
    let Some((banner, cmdline)) = found else {
        panic!("the kernel did not start (no banner and command line on the console):\n{log}");
    };
    let cmdline = cmdline
        .split_once("Kernel command line: ")
        .map(|(_, c)| c.trim().to_owned())
        .unwrap_or_default();
    KernelBoot {
        banner,
        cmdline,
        log,
    }
}

/// The rota env as U-Boot left it on a kernel disk.
fn disk_env(d: &Disk) -> std::collections::BTreeMap<String, String> {
    let cfg = d.disk.with_extension("fw_env.config");
    std::fs::write(
        &cfg,
        format!("{} {ENV_OFFSET:#x} 0x4000\n", d.disk.display()),
    )
    .unwrap();
    let out = Command::new("fw_printenv")
        .arg("-c")
        .arg(&cfg)
        .output()
        .expect("fw_printenv (libubootenv-tool)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn compile_script(src: &Path, out: &Path) {
    sh(Command::new("mkimage")
        .args([
            "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", "rota", "-d",
        ])
        .arg(src)
        .arg(out));
}

/// i.MX-style: GPT eMMC, the board env naming the slot partitions, and the shipped
/// boot.cmd's own boot path (kernel and ${fdtfile} from the slot, booti).
#[test]
fn default_boot_path_starts_the_kernel_of_slot_a_with_its_partition_as_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = d.join("boot.scr");
    compile_script(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("bootloader-env/boot.cmd"),
        &script,
    );
    let dtb = virt_dtb(d);
    let board = kernel_board_env(
        "",
        "bootargs=console=ttyAMA0 earlycon\nfdtfile=virt.dtb\nrota_part_A=2\nrota_part_B=3\n",
    );
    let disk = kernel_disk(
        d,
        Table::Gpt,
        &script,
        "A",
        &dtb,
        "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
        &board,
    );
    let k = boot_kernel(&disk);
    assert!(k.banner.contains("Linux version 6."), "{}", k.banner);
    assert_eq!(
        k.cmdline,
        format!(
            "console=ttyAMA0 earlycon root=PARTUUID={GPT_UUID_A} rootwait ro rauc.slot=A rota.slot=A"
        ),
        "{}",
        k.log
    );
    assert_eq!(disk_env(&disk)["BOOT_A_LEFT"], "2", "the attempt was spent");
}

/// Raspberry Pi-style: an SD card with an MBR, the boot script exactly as the
/// rota-boot-script recipe builds it for an `rpi` machine (its board defaults and its
/// rpi hook), and a board env that stands in for the Pi firmware: a device tree at
/// ${fdt_addr} whose /chosen/bootargs holds cmdline.txt (console, and the factory
/// root=/dev/mmcblk0p2 that must not win).
#[test]
fn raspberry_pi_hook_starts_the_kernel_of_slot_b_with_its_partition_as_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let recipe = "recipes-bsp/u-boot/rota-boot-script_0.1.0.bb";
    let hook = support::bitbake::layer_var(recipe, "ROTA_UBOOT_BOOT:rpi")
        .replace("${KERNEL_BOOTCMD}", "booti");
    let build = d.join("build");
    std::fs::create_dir(&build).unwrap();
    let vars: Vec<(&str, String)> = vec![
        ("MACHINE", "raspberrypi4-64".into()),
        ("ROTA_UBOOT_PART_A", "2".into()),
        ("ROTA_UBOOT_PART_B", "3".into()),
        ("ROTA_UBOOT_KERNEL", "boot/Image".into()),
        ("ROTA_UBOOT_BOOT", hook),
        ("S", env!("CARGO_MANIFEST_DIR").into()),
        ("B", build.display().to_string()),
        ("UBOOT_ARCH", "arm64".into()),
    ];
    let out =
        support::bitbake::run_shell(recipe, "do_compile() {", &vars, Path::new("/nonexistent"));
    assert!(
        out.status.success(),
        "do_compile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dtb = virt_dtb(d);
    // The "firmware": QEMU's device tree copied to ${fdt_addr}, cmdline.txt in /chosen.
    let firmware = "fdt addr ${fdtcontroladdr}; fdt move ${fdtcontroladdr} ${fdt_addr} 0x100000; \
        fdt set /chosen bootargs \"console=ttyAMA0 earlycon root=/dev/mmcblk0p2 rootfstype=ext4 fw.cmdline.txt\"; ";
    let board = kernel_board_env(firmware, "fdt_addr=0x48000000\n");
    let disk = kernel_disk(
        d,
        Table::Dos,
        &build.join("boot.scr"),
        "B",
        &dtb,
        "BOOT_ORDER=B A\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
        &board,
    );
    let k = boot_kernel(&disk);
    assert!(k.banner.contains("Linux version 6."), "{}", k.banner);
    // The firmware's arguments first, then U-Boot's board bootargs and the slot's.
    assert_eq!(
        k.cmdline,
        format!(
            "console=ttyAMA0 earlycon root=/dev/mmcblk0p2 rootfstype=ext4 fw.cmdline.txt \
             root=PARTUUID={DOS_SIGNATURE}-03 rootwait ro rauc.slot=B rota.slot=B"
        ),
        "{}",
        k.log
    );
    assert_eq!(disk_env(&disk)["BOOT_B_LEFT"], "2", "the attempt was spent");
}
