//! The power-cut campaign: installs through the real service on a simulated gateway with
//! a redundant U-Boot env, cut over and over, with the invariants checked after each cut.
//!
//! A cut is one of:
//! - a deterministic crash point (`rota::failpoint`, armed with `ROTA_FAILPOINT=<point>:<n>`):
//!   inside a chunk write, after it, after the journal, between read-back and record,
//!   between record and activation, in the middle of an env write, before a state file's
//!   rename, ... — the short windows a timer would almost never hit;
//! - SIGKILL at a random instant of an install (timed from the install request);
//! - none (every tenth round): that install must simply succeed — nothing stale may block it.
//!
//! While the service is down the storage may be torn as well: the U-Boot env copy that is
//! not the current one cut at a random byte (erased or garbage tail, as a torn flash write
//! leaves it), or `data/status.json` cut at a random byte.
//!
//! A third of the cuts are reboots as well: U-Boot (modelled as `bootloader-env/boot.cmd`
//! chooses, with the real `fw_setenv` spending the attempt) boots the first slot with
//! attempts left — the new slot, when the cut came after its activation.
//!
//! At the cut (what U-Boot would see) and again after the restart these must hold:
//! - the booted slot A is byte-identical to what it was;
//! - the env is readable by the real `fw_printenv`, and the first slot of BOOT_ORDER has
//!   attempts left and is A or a B that holds a complete image some install verified;
//! - an install the journal resumes ends `activated`, bit-exact; on a reboot into the new
//!   slot the journal is closed instead (never resumed into the old slot);
//! - the service ends idle, with no install left "installing".
//!
//! Violations are collected (the run continues) and listed at the end. Knobs:
//! `ROTA_POWERCUT_CUTS` (default 200; fewer, at least 20, when `ROTA_POWERCUT_SECS`, default
//! 180, run out on a slow machine), `ROTA_POWERCUT_SEED` (default from the clock; always
//! printed): `ROTA_POWERCUT_CUTS=1000 cargo test --release --test powercut -- --nocapture`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::gateway::{path_str, pattern, Gateway};
use support::nginx::{make_pki, Nginx};

const IMAGE: usize = 4 << 20;
/// The installer writes in batches of this size (install::copy::BATCH_BYTES).
const CHUNK: usize = 64 << 10;
const BUNDLES: usize = 6;
const ENV_SIZE: usize = 0x4000;
/// Stop early once this many violations are collected (later ones are usually echoes).
const MAX_VIOLATIONS: usize = 20;

/// xorshift64: small, seedable, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// (valid, flag) of copy `i` of the redundant env file.
fn env_copy(env: &[u8], i: usize) -> (bool, u8) {
    let c = &env[i * ENV_SIZE..(i + 1) * ENV_SIZE];
    let crc = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    (crc == crc32fast::hash(&c[5..]), c[4])
}

/// Index of the copy U-Boot and libubootenv do not use (the older or the invalid one).
fn stale_env_copy(env: &[u8]) -> usize {
    let (v0, f0) = env_copy(env, 0);
    let (v1, f1) = env_copy(env, 1);
    match (v0, v1) {
        (true, true) => {
            let one_newer = match (f1, f0) {
                (0, 255) => true,
                (255, 0) => false,
                _ => f1 > f0,
            };
            if one_newer {
                0
            } else {
                1
            }
        }
        (true, false) => 1,
        _ => 0,
    }
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    Point(&'static str, u64),
    Random(Duration),
    None,
}

/// Waits up to `secs` for the service to end: `Some(exit code)` (None when killed by a
/// signal), or None when it still runs.
fn service_exit(gw: &mut Gateway, secs: u64) -> Option<Option<i32>> {
    let mut code = None;
    wait_until(secs, || match gw.service.as_mut().map(|s| s.try_wait()) {
        Some(Ok(Some(st))) => {
            code = Some(st.code());
            true
        }
        _ => false,
    });
    if code.is_some() {
        gw.service = None;
    }
    code
}

/// Waits for `f`, false on timeout.
fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `rota status --json`, or None while the service does not answer.
fn status_quiet(gw: &Gateway) -> Option<serde_json::Value> {
    let r = gw.rota(&["status", "--json"]);
    (r.code() == 0)
        .then(|| serde_json::from_str(&r.stdout()).ok())
        .flatten()
}

fn state_json(gw: &Gateway) -> Option<serde_json::Value> {
    std::fs::read(gw.path("data/status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The env invariants: readable by the real `fw_printenv`, other variables kept, the
/// first slot of BOOT_ORDER has attempts left, and B is bootable at all (in the order with
/// attempts) only while it holds a complete image — this install's, or the one an earlier
/// install activated (`b_good`, updated here) when this one was cut before touching B.
fn check_env(
    gw: &Gateway,
    images: &[Vec<u8>],
    which: usize,
    b_good: &mut Option<usize>,
) -> Result<(), String> {
    let run = gw.cmd("fw_printenv", &["-c", path_str(&gw.path("fw_env.config"))]);
    if run.code() != 0 {
        return Err(format!("fw_printenv failed: {}", run.stderr()));
    }
    let env: BTreeMap<String, String> = run
        .stdout()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    if env.get("serial").map(String::as_str) != Some("GW-1") {
        return Err(format!("the env lost other variables: {env:?}"));
    }
    let order = env.get("BOOT_ORDER").cloned().unwrap_or_default();
    let first = order.split_whitespace().next().unwrap_or_default();
    let left = |s: &str| {
        env.get(&format!("BOOT_{s}_LEFT"))
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    if !((first == "A" || first == "B") && left(first) > 0) {
        return Err(format!(
            "BOOT_ORDER={order:?}, first slot has {} attempts: {env:?}",
            left(first)
        ));
    }
    let b = gw.read("b.img");
    let holds = |i: usize| b[..IMAGE] == images[i][..];
    let b_bootable = order.split_whitespace().any(|s| s == "B") && left("B") > 0;
    if b_bootable {
        if holds(which) {
            *b_good = Some(which);
        } else if !b_good.is_some_and(holds) {
            return Err(format!(
                "B is bootable but holds no complete image (BOOT_ORDER={order:?}, B_LEFT={})",
                left("B")
            ));
        }
    } else if b_good.is_some_and(|i| !holds(i)) {
        *b_good = None;
    }
    Ok(())
}

#[test]
fn power_cuts_at_every_step_never_brick_and_never_lose_an_install() {
    // Seconds the cuts may take (ROTA_POWERCUT_SECS, default 180): under nextest's limit.
    let budget = std::time::Duration::from_secs(
        std::env::var("ROTA_POWERCUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(180),
    );
    let cuts: u64 = std::env::var("ROTA_POWERCUT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("ROTA_POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                % 1_000_000_007
        })
        .max(1);
    eprintln!("powercut: {cuts} cuts, seed: {seed} (ROTA_POWERCUT_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let mut gw = Gateway::new(false);
    // Slot A's own release file: torn state files make rota forget the versions, and the
    // downgrade check then reads the running version from here (it fails closed without).
    std::fs::write(gw.path("os-release"), "VERSION_ID=1.0.0\n").unwrap();
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    let cfg = cfg.replace("[system]\n", "[system]\nversion-file = \"os-release\"\n");
    std::fs::write(gw.path("system.toml"), cfg).unwrap();
    gw.use_redundant_env();
    let mut a = gw.read("a.img");
    let images: Vec<Vec<u8>> = (0..BUNDLES)
        .map(|i| pattern(IMAGE, 500 + i as u64))
        .collect();
    let bundles: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let src = gw.path(&format!("src-{i}"));
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("rootfs.ext4"), img).unwrap();
            std::fs::write(
                src.join("manifest.toml"),
                format!("[update]\ncompatible = \"acme-gateway\"\nversion = \"1.0.{i}\"\n\n[[image]]\nslot-class = \"rootfs\"\nfile = \"rootfs.ext4\"\n"),
            )
            .unwrap();
            let out = gw.path(&format!("b{i}.rota"));
            gw.rota(&[
                "bundle", "create", path_str(&src), path_str(&out), "--key", "keys/release.key.pem",
                "--chunk-size", &CHUNK.to_string(),
            ])
            .success();
            path_str(&out).to_owned()
        })
        .collect();
    // How often one install reaches each point: state saves are the journal, "installing",
    // the slot record, the slot's chunk index and "activated"; env writes are disable and
    // activate; the slot is written in batches.
    let reach = |p: &str| -> u64 {
        match p {
            // Format 2 writes frame by frame (64 KiB of random data each).
            "copy.mid-chunk" | "copy.after-write" => (IMAGE / CHUNK) as u64,
            "env.mid-write" | "env.after-write" => 2,
            "state.before-rename" => 5,
            _ => 1,
        }
    };

    // One uncut install first: the baseline, and how long an install takes (the range of
    // random-time kills).
    gw.start_service();
    let t = Instant::now();
    gw.rota(&["install", &bundles[BUNDLES - 1]]).success();
    let mut install_time = t.elapsed();
    gw.stop_service();
    // The image B is known to hold completely, once an install verified and activated it.
    let mut b_good: Option<usize> = Some(BUNDLES - 1);

    let mut violations: Vec<String> = Vec::new();
    // failpoint → (armed, killed there)
    let mut per_point: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let (mut random_kills, mut torn_env, mut torn_state, mut resumed, mut uncut) = (0, 0, 0, 0, 0);
    let (mut reboots, mut new_slot_boots) = (0, 0);
    let t0 = Instant::now();
    let mut done = 0;
    for cut in 0..cuts {
        if violations.len() >= MAX_VIOLATIONS {
            break;
        }
        // The count scales with the machine, not the deadline: on a busy one the campaign
        // ends after its time budget with fewer cuts (at least 20), and says so.
        if done >= 20 && t0.elapsed() > budget {
            println!("time budget of {budget:?} spent: {done} of {cuts} cuts");
            break;
        }
        done += 1;
        let which = (cut as usize) % BUNDLES;
        let plan = if cut % 10 == 9 {
            Cut::None
        } else if rng.below(4) == 0 {
            let range = install_time.as_micros() as u64 * 3 / 2;
            Cut::Random(Duration::from_micros(rng.below(range)))
        } else {
            let points = rota::failpoint::POINTS;
            let p = points[rng.below(points.len() as u64) as usize];
            Cut::Point(p, 1 + rng.below(reach(p)))
        };
        let mut fail = |what: String| violations.push(format!("cut {cut} ({plan:?}): {what}"));

        // The install, and the cut.
        match plan {
            Cut::None => {
                gw.start_service();
                let t = Instant::now();
                let r = gw.rota(&["install", &bundles[which]]);
                if r.code() == 0 {
                    install_time = (install_time + t.elapsed()) / 2;
                } else {
                    fail(format!("an uncut install failed: {}", r.stderr()));
                }
                uncut += 1;
                gw.stop_service();
            }
            Cut::Point(p, n) => {
                per_point.entry(p).or_default().0 += 1;
                gw.spawn_service_with(|c| {
                    c.env("ROTA_FAILPOINT", format!("{p}:{n}"));
                });
                gw.wait_for_service();
                let r = gw.rota(&["install", &bundles[which]]);
                if r.code() == 0 {
                    // Finished without reaching the n-th hit (e.g. chunks reused).
                    gw.stop_service();
                } else {
                    match service_exit(&mut gw, 30) {
                        Some(None) => per_point.entry(p).or_default().1 += 1,
                        other => {
                            gw.kill_service();
                            fail(format!(
                                "the install failed instead of dying at the point (service: {other:?}): {}",
                                r.stderr()
                            ));
                        }
                    }
                }
            }
            Cut::Random(d) => {
                random_kills += 1;
                gw.start_service();
                let mut cli = gw.spawn_rota(&["install", &bundles[which]]);
                std::thread::sleep(d);
                gw.kill_service();
                let ended = wait_until(120, || matches!(cli.try_wait(), Ok(Some(_))));
                if !ended {
                    let _ = cli.kill();
                    fail("rota install hung after the service died".into());
                }
                let _ = cli.wait();
            }
        }

        // While the power is off, storage may be torn as well.
        if !matches!(plan, Cut::None) {
            if rng.below(5) == 0 {
                // The copy being (or last) replaced: cut at a random byte, the rest erased
                // flash or garbage.
                let mut env = gw.read("uboot.env");
                let i = stale_env_copy(&env);
                let from = i * ENV_SIZE + rng.below(ENV_SIZE as u64) as usize;
                let erased = rng.below(2) == 0;
                for b in &mut env[from..(i + 1) * ENV_SIZE] {
                    *b = if erased { 0xFF } else { rng.next() as u8 };
                }
                std::fs::write(gw.path("uboot.env"), env).unwrap();
                torn_env += 1;
            }
            if rng.below(10) == 0 {
                let path = gw.path("data/status.json");
                if let Ok(bytes) = std::fs::read(&path) {
                    let keep = rng.below(bytes.len() as u64) as usize;
                    std::fs::write(&path, &bytes[..keep]).unwrap();
                    torn_state += 1;
                }
            }
        }

        // What U-Boot would find if this cut were a reboot: checked before any restart,
        // since a resume could hide a slot that was bootable while incomplete.
        if let Err(e) = check_env(&gw, &images, which, &mut b_good) {
            fail(format!("at the cut: {e}"));
        }

        // Power back. Often the cut is a reboot: U-Boot picks a slot (the new one, when it
        // was activated) and spends an attempt. Otherwise only the service restarted.
        let reboot = !matches!(plan, Cut::None) && rng.below(3) == 0;
        let booted = if reboot {
            reboots += 1;
            uboot_boots(&gw)
        } else {
            "A".to_owned()
        };
        let had_journal = state_json(&gw).is_some_and(|v| v["journal"].is_object());
        gw.start_service();
        let mut st = serde_json::Value::Null;
        let settled = wait_until(120, || {
            st = gw.status_json();
            st["operation"] == "idle" && st["last_install"]["result"] != "installing"
        });
        if !settled {
            fail(format!("the service did not settle after restart: {st}"));
        }
        let a_now = gw.read("a.img");
        if a_now != a {
            fail("slot A changed".into());
            a = a_now; // report each change once
        }
        let b_now = gw.read("b.img");
        let holds = |i: usize| b_now[..IMAGE] == images[i][..];
        if booted == "A" {
            if had_journal {
                resumed += 1;
                if st["last_install"]["result"] != "activated" {
                    fail(format!("the resumed install did not finish: {st}"));
                }
                if !holds(which) {
                    fail("the resumed install is not bit-exact".into());
                }
            }
        } else {
            // Running the new slot: the journal is closed, not resumed into A.
            new_slot_boots += 1;
            if state_json(&gw).is_some_and(|v| v["journal"].is_object()) {
                fail(format!("the journal is still open on slot B: {st}"));
            }
            if !(holds(which) || b_good.is_some_and(holds)) {
                fail("slot B runs but holds no complete image".into());
            }
        }
        if let Err(e) = check_env(&gw, &images, which, &mut b_good) {
            fail(format!("after the restart: {e}"));
        }
        if reboot {
            // The mark-good unit, then (on B) back to A for the next round.
            let mut mark = |how: &str, slot: &str| {
                let r = gw.rota(&["mark", how, slot]);
                if r.code() != 0 {
                    fail(format!("rota mark {how} {slot} failed: {}", r.stderr()));
                }
            };
            mark("good", "booted");
            if booted == "B" {
                mark("active", "rootfs.0");
                gw.stop_service();
                let back = uboot_boots(&gw);
                gw.start_service();
                let r = gw.rota(&["mark", "good", "booted"]);
                if back != "A" || r.code() != 0 {
                    fail(format!("mark active A did not bring A back: booted {back}"));
                }
            }
        }
        gw.stop_service();
    }

    // And after all that, one more install without a cut.
    gw.start_service();
    let r = gw.rota(&["install", &bundles[0]]);
    if r.code() != 0 || gw.read("b.img")[..IMAGE] != images[0][..] {
        violations.push(format!(
            "the final uncut install failed or is not bit-exact: {}",
            r.stderr()
        ));
    }
    gw.stop_service();

    eprintln!(
        "powercut: cuts: {done}, invariant violations: {}, seed: {seed}",
        violations.len()
    );
    eprintln!(
        "powercut: random-time kills {random_kills}, uncut installs {uncut}, resumed installs \
         {resumed}, torn env copies {torn_env}, torn state files {torn_state}, reboots \
         {reboots} (into the new slot {new_slot_boots}), {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for (p, (armed, killed)) in &per_point {
        eprintln!("powercut:   {p:<26} armed {armed:>4}, killed there {killed:>4}");
    }
    for v in &violations {
        eprintln!("powercut: VIOLATION {v}");
    }
    assert!(
        violations.is_empty(),
        "{} invariant violations (seed {seed}); first: {}",
        violations.len(),
        violations[0]
    );
}

/// U-Boot's choice at power-on, as `bootloader-env/boot.cmd` makes it: the first slot of
/// BOOT_ORDER with attempts left, its counter decremented and saved (with the real
/// `fw_setenv`). The kernel command line then names that slot.
fn uboot_boots(gw: &Gateway) -> String {
    let env = gw.fw_printenv();
    let left = |s: &str| {
        env.get(&format!("BOOT_{s}_LEFT"))
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    let slot = env["BOOT_ORDER"]
        .split_whitespace()
        .find(|s| left(s) > 0)
        .expect("a slot with attempts left")
        .to_owned();
    let cfg = gw.path("fw_env.config");
    gw.cmd(
        "fw_setenv",
        &[
            "-c",
            path_str(&cfg),
            &format!("BOOT_{slot}_LEFT"),
            &format!("{:x}", left(&slot) - 1),
        ],
    )
    .success();
    std::fs::write(
        gw.path("cmdline"),
        format!("console=ttyAMA0 rota.slot={slot}\n"),
    )
    .unwrap();
    slot
}

/// A power cut after the new slot was activated but before the install's journal was
/// closed is a reboot: U-Boot boots the new slot. The service that comes up there must
/// not resume the journal into the other slot — that is the old, known-good fallback —
/// but see the update through: the new slot is running, not yet marked good.
#[test]
fn a_cut_after_activation_boots_the_new_slot_and_the_old_one_stays_intact() {
    for point in [
        "env.after-write:2",
        "install.after-activate",
        "state.before-rename:5",
    ] {
        let mut gw = Gateway::new(false);
        gw.use_redundant_env();
        let a = gw.read("a.img");
        let (bundle, image) =
            gw.bundle("v2", "acme-gateway", "2.0.0", pattern(IMAGE, 9), "release");
        gw.spawn_service_with(|c| {
            c.env("ROTA_FAILPOINT", point);
        });
        gw.wait_for_service();
        let r = gw.rota(&["install", path_str(&bundle)]);
        assert_ne!(r.code(), 0, "{point}: the service was not cut");
        assert_eq!(gw.wait_service_exit(120), None, "{point}: killed");
        assert_eq!(uboot_boots(&gw), "B", "{point}: U-Boot boots the new slot");
        gw.start_service();
        assert!(
            wait_until(120, || gw.status_json()["operation"] == "idle"),
            "{point}"
        );
        let st = gw.status_json();
        assert_eq!(st["booted"], "B", "{point}");
        assert_eq!(
            st["last_install"]["result"], "booted",
            "{point}: running the new slot, not yet marked good: {st}"
        );
        assert!(
            state_json(&gw).is_some_and(|s| s["journal"].is_null()),
            "{point}: the journal is closed"
        );
        assert_eq!(gw.read("a.img"), a, "{point}: the old slot A is untouched");
        assert_eq!(&gw.read("b.img")[..IMAGE], &image[..], "{point}");
        let env = gw.fw_printenv();
        assert_eq!(env["BOOT_ORDER"], "B A", "{point}: {env:?}");
        assert_ne!(env["BOOT_A_LEFT"], "0", "{point}: A stays the fallback");
        gw.rota(&["mark", "good", "booted"]).success();
        assert_eq!(
            gw.status_json()["last_install"]["result"],
            "good",
            "{point}"
        );
        gw.stop_service();
    }
}

/// A crash that comes back at every start of a resumed install (a power supply that
/// always fails at the same step, a bug) must not keep the service in a crash loop with
/// the journal blocking every other install: after `MAX_RESUMES` resumes the install is
/// given up, reported failed, the target stays out of the boot selection, and a fresh
/// install works.
#[test]
fn an_install_that_dies_at_every_resume_is_given_up() {
    let mut gw = Gateway::new(false);
    gw.use_redundant_env();
    let a = gw.read("a.img");
    let (bundle, image) = gw.bundle("v2", "acme-gateway", "2.0.0", pattern(IMAGE, 11), "release");
    let arm = |c: &mut std::process::Command| {
        c.env("ROTA_FAILPOINT", "install.after-disable");
    };
    gw.spawn_service_with(arm);
    gw.wait_for_service();
    assert_ne!(gw.rota(&["install", path_str(&bundle)]).code(), 0);
    assert_eq!(gw.wait_service_exit(120), None);
    let mut starts = 0;
    loop {
        // Every start resumes and dies again at the same point, until rota gives up.
        gw.spawn_service_with(arm);
        starts += 1;
        assert!(starts <= 20, "still resuming after {starts} starts");
        let st = std::time::Instant::now();
        let mut died = false;
        while st.elapsed() < Duration::from_secs(120) {
            if let Some(Ok(Some(_))) = gw.service.as_mut().map(|s| s.try_wait()) {
                died = true;
                break;
            }
            if status_quiet(&gw).is_some_and(|s| {
                s["operation"] == "idle" && s["last_install"]["result"] == "failed"
            }) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if died {
            gw.service = None;
            continue;
        }
        break;
    }
    let st = gw.status_json();
    assert_eq!(st["last_install"]["result"], "failed", "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("interrupted")
            || st["last_install"]["error"]
                .as_str()
                .unwrap_or("")
                .contains("interrupted"),
        "{st}"
    );
    assert!(state_json(&gw).is_some_and(|s| s["journal"].is_null()));
    let env = gw.fw_printenv();
    assert_eq!(env["BOOT_B_LEFT"], "0", "the target stays out: {env:?}");
    assert_eq!(gw.read("a.img"), a);
    gw.stop_service();
    gw.start_service();
    gw.rota(&["install", path_str(&bundle)]).success();
    assert_eq!(&gw.read("b.img")[..IMAGE], &image[..]);
    eprintln!("powercut: gave up after {starts} starts");
}

/// Power lost after activation but before the journal was closed, and then in each of
/// the new slot's boots before userspace: U-Boot spends its attempts and falls back. The
/// service on the old slot must report the rollback — not resume the journal, which would
/// activate the new slot again with full attempts and undo the bootloader's fallback.
#[test]
fn a_new_slot_the_bootloader_gave_up_on_is_not_activated_again() {
    let mut gw = Gateway::new(false);
    gw.use_redundant_env();
    let a = gw.read("a.img");
    let (bundle, image) = gw.bundle("v2", "acme-gateway", "2.0.0", pattern(IMAGE, 13), "release");
    gw.spawn_service_with(|c| {
        c.env("ROTA_FAILPOINT", "install.after-activate");
    });
    gw.wait_for_service();
    assert_ne!(gw.rota(&["install", path_str(&bundle)]).code(), 0);
    assert_eq!(gw.wait_service_exit(120), None, "killed after activation");
    for boot in 1..=3 {
        assert_eq!(
            uboot_boots(&gw),
            "B",
            "boot {boot}: power lost before userspace"
        );
    }
    assert_eq!(uboot_boots(&gw), "A", "attempts spent: U-Boot falls back");
    gw.start_service();
    assert!(wait_until(120, || gw.status_json()["operation"] == "idle"));
    let st = gw.status_json();
    assert_eq!(st["last_install"]["result"], "rolled-back", "{st}");
    assert!(state_json(&gw).is_some_and(|s| s["journal"].is_null()));
    let env = gw.fw_printenv();
    assert_eq!(env["BOOT_B_LEFT"], "0", "not activated again: {env:?}");
    assert!(env["BOOT_ORDER"].starts_with("B A"), "{env:?}");
    assert_eq!(gw.read("a.img"), a);
    assert_eq!(&gw.read("b.img")[..IMAGE], &image[..]);
    // The next update installs as usual.
    gw.rota(&["mark", "good", "booted"]).success();
    let (bundle, image) = gw.bundle("v3", "acme-gateway", "3.0.0", pattern(IMAGE, 14), "release");
    gw.rota(&["install", path_str(&bundle)]).success();
    assert_eq!(&gw.read("b.img")[..IMAGE], &image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");
}

/// A bug that panics in the middle of the copy aborts the service (every build: see
/// `rota::panics`) instead of leaving it half-alive; when it comes back (systemd restarts
/// it) the journal resumes the install and finishes it bit-exact, and slot A, the running
/// one, is untouched throughout.
#[test]
fn a_panic_mid_copy_aborts_and_the_restarted_service_finishes_the_install() {
    let mut gw = Gateway::new(false);
    let a = gw.read("a.img");
    let (bundle, image) = gw.bundle("v2", "acme-gateway", "2.0.0", pattern(IMAGE, 12), "release");
    gw.spawn_service_with(|c| {
        c.env("ROTA_FAILPOINT", "copy.after-write:2:panic");
    });
    gw.wait_for_service();
    let r = gw.rota(&["install", path_str(&bundle)]);
    assert_ne!(r.code(), 0, "the install did not see the service die");
    match service_exit(&mut gw, 60) {
        Some(None) => {}
        other => panic!("the service should have been killed by SIGABRT, got {other:?}"),
    }
    let log = std::fs::read_to_string(gw.path("service.log")).unwrap_or_default();
    assert!(
        log.contains("failpoint copy.after-write armed to panic"),
        "the panic is logged: {log}"
    );
    assert_eq!(gw.read("a.img"), a, "the running slot is untouched");
    assert_ne!(
        uboot_boots(&gw),
        "B",
        "the half-written slot is not bootable"
    );
    gw.start_service();
    assert!(wait_until(120, || gw.status_json()["operation"] == "idle"));
    let st = gw.status_json();
    assert_eq!(st["last_install"]["result"], "activated", "{st}");
    assert_eq!(
        &gw.read("b.img")[..image.len()],
        &image[..],
        "slot B bit-exact"
    );
    assert_eq!(uboot_boots(&gw), "B");
    assert_eq!(gw.read("a.img"), a);
}

/// Power cuts during a delta install over HTTP: the device runs v1 in slot A, v2 is v1
/// with new blocks inserted, bundled `--delta-from` v1 (256 KiB frames, so there are many
/// to cut between; patches against v1 carry the new blocks, the device gathers the rest
/// of their frames). Cut inside and after frame writes at several points, and killed at
/// a random instant; the restarted service resumes — keeping what landed, taking the rest
/// from the running slot, patches and frames — and ends with slot B bit-exact, A untouched.
#[test]
fn power_cuts_during_a_delta_install_resume_and_finish_bit_exact() {
    let mut gw = Gateway::new(false);
    let pki = gw.path("pki");
    make_pki(&pki);
    std::fs::create_dir_all(gw.path("www")).unwrap();
    let ng = Nginx::start(&gw.path("www"), &pki, &gw.path("nginx"));
    let mut a = gw.read("a.img");
    let v1 = pattern(IMAGE, 600);
    a[..IMAGE].copy_from_slice(&v1);
    std::fs::write(gw.path("a.img"), &a).unwrap();
    std::fs::write(gw.path("v1.img"), &v1).unwrap();
    let mut v2 = Vec::new();
    let mut from = 0;
    for (i, at) in [64 << 10, (1 << 20) + 4096, (3 << 20) + 8192]
        .iter()
        .enumerate()
    {
        v2.extend_from_slice(&v1[from..*at]);
        v2.extend_from_slice(&pattern(3 * 4096, 700 + i as u64));
        from = *at;
    }
    v2.extend_from_slice(&v1[from..]);
    v2.truncate(IMAGE);
    let base = gw.path("v1.img");
    let (bundle, v2) = gw.bundle_with(
        "v2",
        "acme-gateway",
        "2.0.0",
        v2,
        "release",
        &["--delta-from", path_str(&base), "--frame-size", "262144"],
    );
    std::fs::copy(&bundle, gw.path("www/v2.rota")).unwrap();
    let url = ng.url(ng.http, false, "v2.rota");
    let mut rng = Rng(0x05ee_d0fd_e17a);
    // A delta install writes a dozen frames or so: cuts early, in the middle and late.
    let points: Vec<String> = vec![
        "copy.after-write:1".into(),
        format!("copy.after-write:{}", 2 + rng.below(4)),
        format!("copy.mid-chunk:{}", 2 + rng.below(6)),
        "install.after-read-back".into(),
        "kill".into(),
        "kill".into(),
    ];
    let mut cut = Vec::new();
    for point in &points {
        std::fs::write(gw.path("b.img"), vec![0x5Au8; a.len()]).unwrap();
        if point == "kill" {
            gw.start_service();
            let mut cli = gw.spawn_rota(&["install", &url]);
            // A random instant of the install: the cut a timer makes.
            std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
            gw.kill_service();
            assert!(wait_until(120, || matches!(cli.try_wait(), Ok(Some(_)))));
        } else {
            gw.spawn_service_with(|c| {
                c.env("ROTA_FAILPOINT", point);
            });
            gw.wait_for_service();
            let r = gw.rota(&["install", &url]);
            if r.code() == 0 {
                // Done before the n-th write: nothing was cut.
                gw.stop_service();
            } else {
                assert_eq!(gw.wait_service_exit(120), None, "{point}: killed");
                cut.push(point.clone());
            }
        }
        assert_eq!(
            gw.read("a.img"),
            a,
            "{point}: the running slot is untouched"
        );
        if uboot_boots_peek(&gw) == "B" {
            assert_eq!(
                &gw.read("b.img")[..IMAGE],
                &v2[..],
                "{point}: B is bootable only once it is complete"
            );
        }
        gw.start_service();
        assert!(
            wait_until(120, || gw.status_json()["operation"] == "idle"),
            "{point}"
        );
        let st = gw.status_json();
        if st["last_install"]["result"] != "activated" {
            // Cut before the journal existed: nothing to resume, install again.
            assert!(point == "kill", "{point}: {st}");
            gw.rota(&["install", &url]).success();
        }
        assert_eq!(
            &gw.read("b.img")[..IMAGE],
            &v2[..],
            "{point}: slot B bit-exact"
        );
        assert_eq!(
            gw.read("a.img"),
            a,
            "{point}: the running slot is untouched"
        );
        // Back to a device that runs A and has B out of the selection.
        gw.rota(&["mark", "bad", "other"]).success();
        gw.stop_service();
    }
    eprintln!("delta install cut at: {cut:?}");
    for must in ["copy.after-write:1", "install.after-read-back"] {
        assert!(
            cut.iter().any(|c| c == must),
            "{must} was never reached: {cut:?}"
        );
    }
    assert!(cut.len() >= 3, "{cut:?}");
}

/// The slot U-Boot would boot now, without spending an attempt.
fn uboot_boots_peek(gw: &Gateway) -> String {
    let env = gw.fw_printenv();
    let left = |s: &str| {
        env.get(&format!("BOOT_{s}_LEFT"))
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    env["BOOT_ORDER"]
        .split_whitespace()
        .find(|s| left(s) > 0)
        .unwrap_or("none")
        .to_owned()
}
