//! rota's U-Boot env codec against Debian's libubootenv tools (fw_printenv, fw_setenv)
//! and mkenvimage: single and redundant envs, in files and at offsets, both directions.

use rota::boot::uboot_env::{FwEnvConfig, UbootEnv};
use std::path::Path;
use std::process::Command;

fn tool(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog} must be installed: {e}"))
}

fn printenv(cfg: &Path) -> std::collections::BTreeMap<String, String> {
    let out = tool("fw_printenv", &["-c", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "fw_printenv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect()
}

fn setenv(cfg: &Path, k: &str, v: &str) {
    assert!(tool("fw_setenv", &["-c", cfg.to_str().unwrap(), k, v])
        .status
        .success());
}

fn mkenv(out: &Path, redundant: bool, text: &str) {
    let txt = out.with_extension("txt");
    std::fs::write(&txt, text).unwrap();
    let mut args = vec![
        "-s",
        "0x4000",
        "-o",
        out.to_str().unwrap(),
        txt.to_str().unwrap(),
    ];
    if redundant {
        args.insert(0, "-r");
    }
    assert!(tool("mkenvimage", &args).status.success());
}

const BASE: &str = "bootcmd=run distro_bootcmd\nbootdelay=2\nBOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nethaddr=02:00:00:00:00:01\n";

fn set(env: &UbootEnv, k: &str, v: &str) {
    env.update(|vars| {
        vars.insert(k.into(), v.into());
        Ok(())
    })
    .unwrap();
}

#[test]
fn single_env_round_trips_with_libubootenv() {
    let t = tempfile::tempdir().unwrap();
    let env_file = t.path().join("uboot.env");
    mkenv(&env_file, false, BASE);
    let cfg = t.path().join("fw_env.config");
    std::fs::write(&cfg, format!("{} 0x0 0x4000\n", env_file.display())).unwrap();
    let env = UbootEnv::open(&cfg).unwrap();
    assert_eq!(env.read().unwrap()["BOOT_ORDER"], "A B");
    set(&env, "BOOT_ORDER", "B A");
    let seen = printenv(&cfg);
    assert_eq!(seen["BOOT_ORDER"], "B A");
    assert_eq!(
        seen["ethaddr"], "02:00:00:00:00:01",
        "other variables survive"
    );
    assert_eq!(seen.len(), 6);
    setenv(&cfg, "BOOT_B_LEFT", "2");
    assert_eq!(env.read().unwrap()["BOOT_B_LEFT"], "2");
    // Byte-identical to what fw_setenv writes for the same content.
    let ours = std::fs::read(&env_file).unwrap();
    setenv(&cfg, "BOOT_B_LEFT", "2");
    assert_eq!(std::fs::read(&env_file).unwrap(), ours);
}

#[test]
fn single_env_at_an_offset_inside_a_disk_image() {
    let t = tempfile::tempdir().unwrap();
    let part = t.path().join("part.env");
    mkenv(&part, false, BASE);
    let disk = t.path().join("disk.img");
    let mut d = vec![0xA5u8; 1 << 20];
    d[0x40000..0x44000].copy_from_slice(&std::fs::read(&part).unwrap());
    std::fs::write(&disk, &d).unwrap();
    let cfg = t.path().join("fw_env.config");
    std::fs::write(&cfg, format!("{} 0x40000 0x4000\n", disk.display())).unwrap();
    let env = UbootEnv::open(&cfg).unwrap();
    set(&env, "rota_test", "1");
    assert_eq!(printenv(&cfg)["rota_test"], "1");
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(
        &after[..0x40000],
        &d[..0x40000],
        "bytes before the env untouched"
    );
    assert_eq!(
        &after[0x44000..],
        &d[0x44000..],
        "bytes after the env untouched"
    );
}

fn redundant_case(cfg_text: &dyn Fn(&Path) -> String, files: &dyn Fn(&Path)) {
    let t = tempfile::tempdir().unwrap();
    files(t.path());
    let cfg = t.path().join("fw_env.config");
    std::fs::write(&cfg, cfg_text(t.path())).unwrap();
    let env = UbootEnv::open(&cfg).unwrap();
    assert!(env.config().is_redundant());
    // Alternating writers keep the flag sequence and each other's variables.
    set(&env, "step", "rota-1");
    assert_eq!(printenv(&cfg)["step"], "rota-1");
    setenv(&cfg, "step", "fw-2");
    assert_eq!(env.read().unwrap()["step"], "fw-2");
    set(&env, "step", "rota-3");
    let seen = printenv(&cfg);
    assert_eq!(seen["step"], "rota-3");
    assert_eq!(seen["bootcmd"], "run distro_bootcmd");
}

fn two_files(dir: &Path) {
    mkenv(&dir.join("r1.env"), true, BASE);
    std::fs::copy(dir.join("r1.env"), dir.join("r2.env")).unwrap();
}

#[test]
fn redundant_env_in_two_files() {
    redundant_case(
        &|d| {
            format!(
                "{0}/r1.env 0x0 0x4000\n{0}/r2.env 0x0 0x4000\n",
                d.display()
            )
        },
        &two_files,
    );
}

#[test]
fn redundant_env_at_two_offsets_of_one_file() {
    redundant_case(
        &|d| {
            format!(
                "{0}/one.env 0x0 0x4000\n{0}/one.env 0x4000 0x4000\n",
                d.display()
            )
        },
        &|d| {
            mkenv(&d.join("r.env"), true, BASE);
            let c = std::fs::read(d.join("r.env")).unwrap();
            std::fs::write(d.join("one.env"), [c.clone(), c].concat()).unwrap();
        },
    );
}

#[test]
fn corrupt_newest_copy_falls_back_and_is_rewritten_first() {
    let t = tempfile::tempdir().unwrap();
    two_files(t.path());
    let cfg = t.path().join("fw_env.config");
    std::fs::write(
        &cfg,
        format!(
            "{0}/r1.env 0x0 0x4000\n{0}/r2.env 0x0 0x4000\n",
            t.path().display()
        ),
    )
    .unwrap();
    let env = UbootEnv::open(&cfg).unwrap();
    set(&env, "v", "old"); // r2, flag 2
    set(&env, "v", "new"); // r1, flag 3
    assert_eq!(std::fs::read(t.path().join("r1.env")).unwrap()[4], 3);
    // A torn write of the newest copy (r1): both readers fall back to r2.
    let mut r1 = std::fs::read(t.path().join("r1.env")).unwrap();
    r1[100] ^= 0xFF;
    std::fs::write(t.path().join("r1.env"), &r1).unwrap();
    assert_eq!(env.read().unwrap()["v"], "old");
    assert_eq!(printenv(&cfg)["v"], "old");
    let r2_before = std::fs::read(t.path().join("r2.env")).unwrap();
    set(&env, "v", "fixed");
    assert_eq!(
        std::fs::read(t.path().join("r2.env")).unwrap(),
        r2_before,
        "the valid copy is not touched"
    );
    assert_eq!(
        std::fs::read(t.path().join("r1.env")).unwrap()[4],
        3,
        "corrupt copy rewritten with valid flag + 1"
    );
    assert_eq!(printenv(&cfg)["v"], "fixed");
}

#[test]
fn no_valid_copy_is_an_error_and_nothing_is_written() {
    let t = tempfile::tempdir().unwrap();
    two_files(t.path());
    for f in ["r1.env", "r2.env"] {
        let p = t.path().join(f);
        let mut b = std::fs::read(&p).unwrap();
        b[0] ^= 1;
        std::fs::write(&p, b).unwrap();
    }
    let cfg = t.path().join("fw_env.config");
    std::fs::write(
        &cfg,
        format!(
            "{0}/r1.env 0x0 0x4000\n{0}/r2.env 0x0 0x4000\n",
            t.path().display()
        ),
    )
    .unwrap();
    let before: Vec<_> = ["r1.env", "r2.env"]
        .iter()
        .map(|f| std::fs::read(t.path().join(f)).unwrap())
        .collect();
    let env = UbootEnv::new(FwEnvConfig::load(&cfg).unwrap());
    let err = env.read().unwrap_err().to_string();
    assert!(
        err.contains("no valid U-Boot environment") && err.contains("CRC32"),
        "{err}"
    );
    let err = env
        .update(|v| {
            v.insert("x".into(), "1".into());
            Ok(())
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("no valid U-Boot environment"), "{err}");
    let after: Vec<_> = ["r1.env", "r2.env"]
        .iter()
        .map(|f| std::fs::read(t.path().join(f)).unwrap())
        .collect();
    assert_eq!(before, after);
}

/// fw_env.config sizes are hex even without `0x` (as libubootenv reads them).
#[test]
fn config_sizes_without_0x_are_hex_for_both_rota_and_libubootenv() {
    let t = tempfile::tempdir().unwrap();
    let env_file = t.path().join("uboot.env");
    mkenv(&env_file, false, BASE);
    let cfg = t.path().join("fw_env.config");
    std::fs::write(&cfg, format!("{} 0 4000\n", env_file.display())).unwrap();
    let env = UbootEnv::open(&cfg).unwrap();
    assert_eq!(env.config().copies[0].size, 0x4000);
    set(&env, "hexsize", "ok");
    assert_eq!(printenv(&cfg)["hexsize"], "ok");
}
