//! Boot flapping, fast: power lost during each of the first N boots of a freshly
//! installed slot (N = 1..10), with U-Boot played by a model of the shipped
//! `bootloader-env/boot.cmd` over the real redundant env file — loaded with the real
//! `fw_printenv`, saved with the real `fw_setenv`, as U-Boot's `saveenv` would — and the
//! real `rota service` coming up whenever power stays on long enough.
//!
//! After the flaps, power stays on: the slot U-Boot picks boots, rota starts, the
//! mark-good unit runs. The device must end on a good slot that the next power-on picks
//! again, never in a reset loop: while the new slot has attempts it is chosen; once they
//! are exhausted the old slot is, and rota reports `rolled-back`; a power-on never needs
//! more than one counter reset to find a slot. `tests/uboot_boot.rs` checks the same
//! with the real U-Boot under qemu (slower, N = 1..4).

mod support;

use std::collections::BTreeMap;
use support::gateway::{path_str, pattern, wait_for, Gateway};

/// `rota_attempts` of the script and `[system] boot-attempts` of the gateway (defaults).
const ATTEMPTS: u32 = 3;

/// U-Boot's `simple_strtol(s, NULL, 0)`, which `test -gt` uses: 0x → hex, leading 0 →
/// octal, else decimal; parsing stops at the first character that is not a digit.
fn strtol0(s: &str) -> i64 {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, h)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let mut v: i64 = 0;
    for c in digits.chars() {
        match c.to_digit(radix) {
            Some(d) => v = v * radix as i64 + d as i64,
            None => break,
        }
    }
    if neg {
        -v
    } else {
        v
    }
}

/// U-Boot's `simple_strtoul(s, NULL, 16)`, which `setexpr` uses.
fn strtoul16(s: &str) -> u64 {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let mut v: u64 = 0;
    for c in s.chars() {
        match c.to_digit(16) {
            Some(d) => v = v.wrapping_mul(16).wrapping_add(d as u64),
            None => break,
        }
    }
    v
}

fn printenv(gw: &Gateway) -> BTreeMap<String, String> {
    gw.fw_printenv()
}

/// `saveenv`: every variable that differs from what was loaded, in one `fw_setenv -s`
/// (libubootenv's script takes `name=value` lines)
/// (one write of the whole env, as U-Boot makes it).
fn saveenv(gw: &Gateway, loaded: &BTreeMap<String, String>, ram: &BTreeMap<String, String>) {
    let script: String = ram
        .iter()
        .filter(|(k, v)| loaded.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    if script.is_empty() {
        return;
    }
    let file = gw.path("saveenv.script");
    std::fs::write(&file, script).unwrap();
    gw.cmd(
        "fw_setenv",
        &[
            "-c",
            path_str(&gw.path("fw_env.config")),
            "-s",
            path_str(&file),
        ],
    )
    .success();
}

/// One power-on, `boot.cmd` line by line. Returns the slot handed to the kernel and how
/// many counter resets (board resets) it took to get there.
fn power_on(gw: &Gateway) -> (String, u32) {
    let mut resets = 0;
    loop {
        let loaded = printenv(gw);
        let mut env = loaded.clone();
        let get = |env: &BTreeMap<String, String>, k: &str| env.get(k).cloned().unwrap_or_default();
        if get(&env, "rota_attempts").is_empty() {
            env.insert("rota_attempts".into(), ATTEMPTS.to_string());
        }
        if get(&env, "BOOT_ORDER").is_empty() {
            env.insert("BOOT_ORDER".into(), "A B".into());
        }
        let attempts = get(&env, "rota_attempts");
        for s in ["A", "B"] {
            let k = format!("BOOT_{s}_LEFT");
            if get(&env, &k).is_empty() {
                env.insert(k, attempts.clone());
            }
        }
        let mut slot = String::new();
        for s in get(&env, "BOOT_ORDER").split_whitespace() {
            if slot.is_empty() && (s == "A" || s == "B") {
                let k = format!("BOOT_{s}_LEFT");
                let left = get(&env, &k);
                if strtol0(&left) > 0 {
                    env.insert(k, format!("{:x}", strtoul16(&left).wrapping_sub(1)));
                    slot = s.to_owned();
                }
            }
        }
        if slot.is_empty() {
            env.insert("BOOT_A_LEFT".into(), attempts.clone());
            env.insert("BOOT_B_LEFT".into(), attempts);
            saveenv(gw, &loaded, &env);
            resets += 1;
            assert!(
                resets <= 1,
                "reset loop: no slot has attempts left even right after a counter reset: {env:?}"
            );
            continue;
        }
        saveenv(gw, &loaded, &env);
        std::fs::write(
            gw.path("cmdline"),
            format!("console=ttyAMA0 rota.slot={slot}\n"),
        )
        .unwrap();
        return (slot, resets);
    }
}

/// The slot the script hands the kernel at power-on number `boot` (1-based) after an
/// activation with both counters full and nothing marked good in between: the new slot
/// B for its attempts, then A for its attempts, then a counter reset and again.
fn expected_slot(boot: u32) -> &'static str {
    if (boot - 1) % (2 * ATTEMPTS) < ATTEMPTS {
        "B"
    } else {
        "A"
    }
}

fn left(env: &BTreeMap<String, String>, slot: &str) -> u32 {
    env.get(&format!("BOOT_{slot}_LEFT"))
        .map(|v| strtoul16(v) as u32)
        .unwrap_or(0)
}

/// One scenario: `flaps` power-ons that never reach mark-good. With `late`, power is lost
/// after rota started (and followed up the install) instead of before userspace. With
/// `fallback_marked`, the old slot A was marked good before the install; otherwise the
/// install ran before the mark-good unit did (A had spent an attempt).
fn flapping(flaps: u32, late: bool, fallback_marked: bool) {
    let what = format!("flaps={flaps} late={late} fallback_marked={fallback_marked}");
    let mut gw = Gateway::new(false);
    gw.use_redundant_env();
    let a = gw.read("a.img");
    let (bundle, image) = gw.bundle(
        "v2",
        "acme-gateway",
        "2.0.0",
        pattern(1 << 20, 40 + flaps as u64),
        "release",
    );
    // The factory slot boots; maybe marked good; the update is installed.
    assert_eq!(power_on(&gw), ("A".to_owned(), 0), "{what}");
    gw.start_service();
    if fallback_marked {
        gw.rota(&["mark", "good", "booted"]).success();
    }
    gw.rota(&["install", path_str(&bundle)]).success();
    gw.stop_service();
    let env = printenv(&gw);
    assert_eq!(env["BOOT_ORDER"], "B A", "{what}");
    assert_eq!(left(&env, "B"), ATTEMPTS, "{what}");
    assert_eq!(
        left(&env, "A"),
        ATTEMPTS,
        "{what}: the running slot, the fallback, gets full attempts at activation"
    );

    // Power lost in each of the first `flaps` boots.
    for boot in 1..=flaps {
        let (slot, resets) = power_on(&gw);
        assert_eq!(slot, expected_slot(boot), "{what}: boot {boot}");
        assert_eq!(
            resets,
            u32::from(boot > 1 && (boot - 1) % (2 * ATTEMPTS) == 0),
            "{what}: boot {boot}: a counter reset only once both slots ran out"
        );
        if late {
            gw.start_service();
            let st = gw.status_json();
            let want = if slot == "B" { "booted" } else { "rolled-back" };
            assert_eq!(
                st["last_install"]["result"], want,
                "{what}: boot {boot}: {st}"
            );
            gw.kill_service();
        }
        let env = printenv(&gw);
        assert!(
            env["BOOT_ORDER"].contains('A') && env["BOOT_ORDER"].contains('B'),
            "{what}: boot {boot}: both slots stay in the order: {env:?}"
        );
    }

    // Power stays on: a slot boots, rota starts, the mark-good unit runs.
    let boot = flaps + 1;
    let (slot, _) = power_on(&gw);
    assert_eq!(slot, expected_slot(boot), "{what}: the stable boot");
    gw.start_service();
    wait_for("the service to settle", 120, || {
        gw.status_json()["operation"] == "idle"
    });
    let st = gw.status_json();
    assert_eq!(st["booted"], slot.as_str(), "{what}");
    if slot == "B" {
        assert_eq!(st["last_install"]["result"], "booted", "{what}: {st}");
    } else {
        assert_eq!(
            st["last_install"]["result"], "rolled-back",
            "{what}: the old slot runs again: {st}"
        );
        assert!(
            st["last_install"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("rolled back")),
            "{what}: {st}"
        );
    }
    gw.rota(&["mark", "good", "booted"]).success();
    let st = gw.status_json();
    let env = printenv(&gw);
    assert_eq!(left(&env, &slot), ATTEMPTS, "{what}: counter refilled");
    assert_eq!(
        st["last_install"]["result"],
        if slot == "B" { "good" } else { "rolled-back" },
        "{what}: {st}"
    );
    gw.stop_service();
    // The slots hold what they should: A untouched, B the verified update.
    assert_eq!(gw.read("a.img"), a, "{what}");
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..], "{what}");
    // The next power-ons pick the same good slot, without a reset, every time (the
    // mark-good unit refills its counter after each).
    for _ in 0..2 {
        assert_eq!(power_on(&gw), (slot.clone(), 0), "{what}: stays on {slot}");
        gw.start_service();
        gw.rota(&["mark", "good", "booted"]).success();
        gw.stop_service();
    }
}

#[test]
fn power_lost_before_userspace_in_the_first_n_boots() {
    for flaps in 1..=10 {
        flapping(flaps, false, flaps % 2 == 0);
    }
}

#[test]
fn power_lost_after_rota_started_in_the_first_n_boots() {
    for flaps in 1..=10 {
        flapping(flaps, true, flaps % 2 == 1);
    }
}

#[test]
fn strtol_and_strtoul_read_counters_as_u_boot_does() {
    assert_eq!(strtol0("3"), 3);
    assert_eq!(
        strtol0("a"),
        0,
        "test -gt reads a hex letter as not a number"
    );
    assert_eq!(strtol0("0x10"), 16);
    assert_eq!(strtol0("010"), 8);
    assert_eq!(strtoul16("a"), 10);
    assert_eq!(strtoul16("10"), 16);
}
