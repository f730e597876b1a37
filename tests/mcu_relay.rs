//! The relay flow against the MCU simulator, over a pty (serial console framing) and
//! over UDP loopback, with real `imgtool` ed25519 images: bytes received equal the
//! image, test → reset → confirm, reverts reported, interrupted transfers resumed,
//! bad images refused before a single request goes out.

mod mcu_sim;

use mcu_sim::{tools, Faults, Sim, SimConfig};
use rota::config::McuSection;
use rota::mcu::record::{self, RelayPhase};
use rota::mcu::relay::{self, RelayJob, RelayOutcome, RelayProgress};
use rota::mcu::{staging, McuError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_millis(300);

struct Fixture {
    dir: tempfile::TempDir,
    key: PathBuf,
    public: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = tools::keygen(dir.path(), "release");
        Self { dir, key, public }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn image(&self, size: usize, version: &str) -> PathBuf {
        tools::sign(
            self.dir.path(),
            &self.key,
            &tools::payload(size, size as u32),
            version,
            &[],
        )
    }

    fn with_key(&self, mut cfg: McuSection) -> McuSection {
        cfg.key = Some(self.public.clone());
        cfg
    }
}

fn pty_sim(cfg: SimConfig) -> (Sim, PathBuf) {
    let mut sim = Sim::new(cfg);
    let p = sim.serve_pty().unwrap();
    (sim, p)
}

fn udp_sim(cfg: SimConfig) -> (Sim, String) {
    let mut sim = Sim::new(cfg);
    let a = sim.serve_udp("127.0.0.1:0").unwrap();
    (sim, a.to_string())
}

fn relay(
    node: &str,
    cfg: &McuSection,
    image: &Path,
    data_dir: &Path,
) -> Result<RelayOutcome, McuError> {
    relay::relay_file(
        node,
        cfg,
        image,
        data_dir,
        &mut |_p| {},
        &AtomicBool::new(false),
    )
}

fn assert_running(sim: &Sim, image: &Path) {
    let bytes = std::fs::read(image).unwrap();
    let d = sim.dev();
    assert_eq!(
        d.stats.last_upload.as_deref(),
        Some(bytes.as_slice()),
        "bytes received differ from the image"
    );
    assert_eq!(d.primary.data, bytes, "the node does not run the image");
    assert!(d.primary_confirmed, "the image is not confirmed");
    assert!(!d.test_boot);
}

fn happy_path(sim: &Sim, cfg: McuSection, fx: &Fixture) {
    let image = fx.image(40_000, "1.4.2");
    let mut phases = Vec::new();
    let out = relay::relay_file(
        "sensor",
        &cfg,
        &image,
        &fx.data_dir(),
        &mut |p: RelayProgress| {
            if phases.last() != Some(&p.phase) {
                phases.push(p.phase);
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    match &out {
        RelayOutcome::Confirmed {
            version,
            bytes_sent,
            resumed_from,
            ..
        } => {
            assert_eq!(version, "1.4.2");
            assert_eq!(*bytes_sent, std::fs::metadata(&image).unwrap().len());
            assert_eq!(*resumed_from, 0);
        }
        other => panic!("expected Confirmed, got {other:?}"),
    }
    assert_eq!(
        phases,
        vec![
            RelayPhase::Connecting,
            RelayPhase::Uploading,
            RelayPhase::Testing,
            RelayPhase::Rebooting,
            RelayPhase::Confirmed
        ]
    );
    assert_running(sim, &image);
    assert_eq!(sim.dev().stats.swaps, 1);
    let rec = record::load(&fx.data_dir(), "sensor").unwrap().unwrap();
    assert_eq!(rec.state.as_str(), "confirmed");
    assert_eq!(rec.version, "1.4.2");
    assert_eq!(rec.relay.unwrap().phase, RelayPhase::Confirmed);

    // Again: nothing to do, nothing sent.
    let written = sim.dev().stats.bytes_written;
    let again = relay("sensor", &cfg, &image, &fx.data_dir()).unwrap();
    assert_eq!(
        again,
        RelayOutcome::AlreadyRunning {
            version: "1.4.2".into()
        }
    );
    assert_eq!(sim.dev().stats.bytes_written, written);
    let rep = relay::node_report("sensor", &cfg, &fx.data_dir(), true);
    assert_eq!(
        (
            rep.version.as_str(),
            rep.state.as_str(),
            rep.last_error.as_str()
        ),
        ("1.4.2", "confirmed", "")
    );
}

#[test]
fn signed_image_over_pty_test_reset_confirm() {
    let fx = Fixture::new();
    let (sim, pty) = pty_sim(SimConfig::default());
    happy_path(&sim, fx.with_key(tools::serial_node(&pty, T)), &fx);
}

#[test]
fn signed_image_over_udp_test_reset_confirm() {
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    happy_path(&sim, fx.with_key(tools::udp_node(&addr, T)), &fx);
}

#[test]
fn imgtool_pure_and_sha512_images_are_accepted() {
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    let cfg = fx.with_key(tools::udp_node(&addr, T));
    let pure = tools::sign(
        fx.dir.path(),
        &fx.key,
        &tools::payload(3000, 1),
        "3.0.0",
        &["--pure"],
    );
    assert!(tools::imgtool_verify(&fx.key, &pure));
    assert!(matches!(
        relay("n", &cfg, &pure, &fx.data_dir()).unwrap(),
        RelayOutcome::Confirmed { .. }
    ));
    assert_running(&sim, &pure);
    let sha512 = tools::sign(
        fx.dir.path(),
        &fx.key,
        &tools::payload(3000, 2),
        "3.0.1",
        &["--sha", "512"],
    );
    assert!(matches!(
        relay("n", &cfg, &sha512, &fx.data_dir()).unwrap(),
        RelayOutcome::Confirmed { .. }
    ));
    assert_running(&sim, &sha512);
}

#[test]
fn flipped_byte_or_foreign_key_is_refused_before_any_request() {
    let fx = Fixture::new();
    let (sim, pty) = pty_sim(SimConfig::default());
    let cfg = fx.with_key(tools::serial_node(&pty, T));
    let good = fx.image(20_000, "1.0.1");

    // One flipped byte in the body: imgtool rejects it, so must rota.
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[0x200 + 1234] ^= 0x01;
    let tampered = fx.dir.path().join("tampered.bin");
    std::fs::write(&tampered, &bytes).unwrap();
    assert!(!tools::imgtool_verify(&fx.key, &tampered));
    let e = relay("sensor", &cfg, &tampered, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tampered.bin") && e.contains("SHA256 TLV does not match"),
        "{e}"
    );

    // A flipped byte inside the signature.
    let mut bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40;
    let badsig = fx.dir.path().join("badsig.bin");
    std::fs::write(&badsig, &bytes).unwrap();
    let e = relay("sensor", &cfg, &badsig, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(e.contains("signature does not verify"), "{e}");

    // Signed by another key.
    let (other_key, _) = tools::keygen(fx.dir.path(), "other");
    let foreign = tools::sign(
        fx.dir.path(),
        &other_key,
        &tools::payload(20_000, 9),
        "1.0.2",
        &[],
    );
    let e = relay("sensor", &cfg, &foreign, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(e.contains("signed by another key"), "{e}");
    // Expected and found are two different hashes, each named once.
    let hashes: Vec<&str> = e
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() >= 16)
        .collect();
    assert_eq!(hashes.len(), 2, "{e}");
    assert_ne!(hashes[0], hashes[1], "{e}");

    // Not signed at all, while the node has a key.
    let unsigned = fx.dir.path().join("unsigned.bin");
    std::fs::write(
        &unsigned,
        rota::mcu::image::build_unsigned(b"abc", (1, 0, 0, 0)),
    )
    .unwrap();
    let e = relay("sensor", &cfg, &unsigned, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not signed"), "{e}");

    // Not an image at all.
    let junk = fx.dir.path().join("junk.bin");
    std::fs::write(&junk, b"this is no firmware").unwrap();
    let e = relay("sensor", &cfg, &junk, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither an MCUboot image"), "{e}");

    assert_eq!(
        sim.dev().stats.requests,
        0,
        "a request went out for a refused image"
    );
    assert!(sim.dev().secondary.is_none());
}

#[test]
fn unconfirmed_test_image_reverts_and_rota_reports_it() {
    let fx = Fixture::new();
    let (sim, pty) = pty_sim(SimConfig::default());
    let cfg = fx.with_key(tools::serial_node(&pty, T));
    let factory = sim.dev().primary.clone();
    sim.dev().faults.boot_fail = true; // the new firmware crashes before confirming
    let image = fx.image(10_000, "2.0.0");
    let out = relay("sensor", &cfg, &image, &fx.data_dir()).unwrap();
    match &out {
        RelayOutcome::Reverted {
            running_version,
            wanted_version,
            ..
        } => {
            assert_eq!(running_version, "1.0.0");
            assert_eq!(wanted_version, "2.0.0");
        }
        other => panic!("expected Reverted, got {other:?}"),
    }
    assert!(!out.is_success());
    assert_eq!(sim.dev().primary, factory);
    assert_eq!(sim.dev().stats.reverts, 1);
    let rep = relay::node_report("sensor", &cfg, &fx.data_dir(), true);
    assert_eq!(rep.state.as_str(), "reverted");
    assert_eq!(rep.version, "1.0.0");
    assert!(
        rep.last_error.contains("reverted version 2.0.0"),
        "{}",
        rep.last_error
    );
}

#[test]
fn test_image_left_unconfirmed_reverts_on_the_next_reset_and_a_restarted_relay_says_so() {
    // rota sends the test reset, then "dies" (cancel) before confirming; the node is
    // reset again (watchdog, power) and MCUboot reverts. The next relay of the same
    // image sees the recorded test boot and reports the revert instead of retrying.
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    let cfg = fx.with_key(tools::udp_node(&addr, T));
    let image = fx.image(8_000, "2.1.0");
    let cancel = AtomicBool::new(false);
    let e = relay::relay_file(
        "n",
        &cfg,
        &image,
        &fx.data_dir(),
        &mut |p: RelayProgress| {
            if p.phase == RelayPhase::Rebooting {
                cancel.store(true, Ordering::SeqCst);
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(e, McuError::Cancelled), "{e}");
    std::thread::sleep(Duration::from_millis(300));
    {
        let d = sim.dev();
        assert!(
            d.test_boot && !d.primary_confirmed,
            "the node should run the test image unconfirmed"
        );
        assert_eq!(d.primary.version, "2.1.0");
    }
    sim.power_cycle();
    assert_eq!(
        sim.dev().primary.version,
        "1.0.0",
        "MCUboot must revert an unconfirmed image"
    );
    std::thread::sleep(Duration::from_millis(200));
    let out = relay("n", &cfg, &image, &fx.data_dir()).unwrap();
    assert!(matches!(out, RelayOutcome::Reverted { .. }), "{out:?}");
    assert_eq!(
        record::load(&fx.data_dir(), "n")
            .unwrap()
            .unwrap()
            .state
            .as_str(),
        "reverted"
    );
}

#[test]
fn crash_after_test_reset_resumes_by_confirming() {
    // Same cancel point, but the node keeps running the test image: the next relay
    // finds it active and unconfirmed and confirms it without sending anything else.
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    let cfg = fx.with_key(tools::udp_node(&addr, T));
    let image = fx.image(8_000, "2.2.0");
    let cancel = AtomicBool::new(false);
    let _ = relay::relay_file(
        "n",
        &cfg,
        &image,
        &fx.data_dir(),
        &mut |p: RelayProgress| {
            if p.phase == RelayPhase::Rebooting {
                cancel.store(true, Ordering::SeqCst);
            }
        },
        &cancel,
    );
    std::thread::sleep(Duration::from_millis(300));
    let written = sim.dev().stats.bytes_written;
    let out = relay("n", &cfg, &image, &fx.data_dir()).unwrap();
    assert!(
        matches!(out, RelayOutcome::Confirmed { bytes_sent: 0, .. }),
        "{out:?}"
    );
    assert_eq!(sim.dev().stats.bytes_written, written);
    assert_running(&sim, &image);
}

#[test]
fn reset_in_the_middle_of_an_upload_restarts_and_completes() {
    let fx = Fixture::new();
    let (sim, pty) = pty_sim(SimConfig::default());
    let cfg = fx.with_key(tools::serial_node(&pty, T));
    let image = fx.image(30_000, "1.1.0");
    sim.dev().faults.reset_at_offset = Some(15_000);
    let out = relay("sensor", &cfg, &image, &fx.data_dir()).unwrap();
    assert!(matches!(out, RelayOutcome::Confirmed { .. }), "{out:?}");
    assert_running(&sim, &image);
    let d = sim.dev();
    assert!(
        d.stats.resets >= 2,
        "mid-upload reset and test reset expected, got {}",
        d.stats.resets
    );
    assert!(
        d.stats.bytes_written > 30_000,
        "the upload should have restarted after the reset"
    );
}

#[test]
fn dropped_frames_and_bad_crc_over_pty_are_retried() {
    let fx = Fixture::new();
    let (sim, pty) = pty_sim(SimConfig::default());
    let cfg = fx.with_key(tools::serial_node(&pty, T));
    let image = fx.image(30_000, "1.2.0");
    sim.set_faults(Faults {
        drop_every: 7,
        corrupt_every: 5,
        ..Default::default()
    });
    let out = relay("sensor", &cfg, &image, &fx.data_dir()).unwrap();
    assert!(matches!(out, RelayOutcome::Confirmed { .. }), "{out:?}");
    assert_running(&sim, &image);
    let d = sim.dev();
    assert!(
        d.stats.dropped > 3 && d.stats.corrupted > 3,
        "{:?}",
        d.stats
    );
}

#[test]
fn dropped_and_damaged_datagrams_over_udp_are_retried() {
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    let cfg = fx.with_key(tools::udp_node(&addr, T));
    let image = fx.image(30_000, "1.2.1");
    sim.set_faults(Faults {
        drop_every: 6,
        corrupt_every: 4,
        ..Default::default()
    });
    let out = relay("sensor", &cfg, &image, &fx.data_dir()).unwrap();
    assert!(matches!(out, RelayOutcome::Confirmed { .. }), "{out:?}");
    assert_running(&sim, &image);
    assert!(sim.dev().stats.corrupted > 3);
}

#[test]
fn interrupted_relay_resumes_from_the_device_offset() {
    // A relay stopped half way (the service stopped) continues where the device is,
    // in a new call, with a fresh transport, from the persisted record.
    let fx = Fixture::new();
    let (sim, pty) = pty_sim(SimConfig::default());
    let cfg = fx.with_key(tools::serial_node(&pty, T));
    let image = fx.image(60_000, "1.3.0");
    let size = std::fs::metadata(&image).unwrap().len();
    let cancel = AtomicBool::new(false);
    let e = relay::relay_file(
        "sensor",
        &cfg,
        &image,
        &fx.data_dir(),
        &mut |p: RelayProgress| {
            if p.phase == RelayPhase::Uploading && p.bytes_done > size / 2 {
                cancel.store(true, Ordering::SeqCst);
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(e, McuError::Cancelled));
    let rec = record::load(&fx.data_dir(), "sensor").unwrap().unwrap();
    let r = rec.relay.unwrap();
    assert_eq!(r.phase, RelayPhase::Uploading);
    assert!(r.offset > size / 2, "recorded offset {}", r.offset);
    assert!(rec.last_error.contains("cancelled"));

    let out = relay("sensor", &cfg, &image, &fx.data_dir()).unwrap();
    match out {
        RelayOutcome::Confirmed {
            bytes_sent,
            resumed_from,
            ..
        } => {
            assert!(resumed_from > size / 2, "resumed from {resumed_from}");
            assert!(
                bytes_sent < size / 2 + 2048,
                "sent {bytes_sent} of {size} after resume"
            );
        }
        other => panic!("expected Confirmed, got {other:?}"),
    }
    assert_eq!(sim.dev().stats.resumed_sessions, 1);
    assert_running(&sim, &image);
}

#[test]
fn raw_images_with_crc_trailer() {
    let fx = Fixture::new();
    let raw = fx.dir.path().join("fw.bin");
    std::fs::write(&raw, rota::mcu::image::build_raw(&tools::payload(5000, 4))).unwrap();

    // A node whose bootloader takes raw images.
    let (sim, addr) = udp_sim(SimConfig {
        accept_raw: true,
        ..Default::default()
    });
    let cfg = tools::udp_node(&addr, T);
    let out = relay("raw", &cfg, &raw, &fx.data_dir()).unwrap();
    assert!(matches!(out, RelayOutcome::Confirmed { .. }), "{out:?}");
    assert_running(&sim, &raw);

    // A stock MCUboot node refuses it on the first chunk: reported as such.
    let (_sim2, addr2) = udp_sim(SimConfig::default());
    let e = relay("stock", &tools::udp_node(&addr2, T), &raw, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("image group error 23 (invalid image header magic)"),
        "{e}"
    );

    // A broken trailer never leaves the gateway.
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&raw, &bytes).unwrap();
    let before = sim.dev().stats.requests;
    let e = relay("raw", &cfg, &raw, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(e.contains("CRC32"), "{e}");
    assert_eq!(sim.dev().stats.requests, before);
}

#[test]
fn v1_only_device_is_spoken_to_in_v1() {
    let fx = Fixture::new();
    let (sim, pty) = pty_sim(SimConfig {
        v1_only: true,
        ..Default::default()
    });
    let cfg = fx.with_key(tools::serial_node(&pty, T));
    let image = fx.image(5_000, "1.0.5");
    assert!(matches!(
        relay("n", &cfg, &image, &fx.data_dir()).unwrap(),
        RelayOutcome::Confirmed { .. }
    ));
    assert_running(&sim, &image);
}

#[test]
fn device_refusals_and_silence_are_clear_errors() {
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    let cfg = fx.with_key(tools::udp_node(&addr, T));
    let image = fx.image(5_000, "1.0.6");

    sim.dev().faults.refuse_upload = Some(12);
    let e = relay("n", &cfg, &image, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("image upload at offset 0")
            && e.contains("image group error 12 (flash write failed)"),
        "{e}"
    );
    let rep = relay::node_report("n", &cfg, &fx.data_dir(), false);
    assert_eq!(rep.state.as_str(), "failed");
    assert!(rep.last_error.contains("flash write failed"));

    sim.dev().faults.refuse_upload = None;
    sim.dev().faults.refuse_confirm = true;
    let e = relay("n", &cfg, &image, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("image confirm") && e.contains("image confirmation denied"),
        "{e}"
    );
    // Unconfirmed: the next reset reverts it.
    sim.power_cycle();
    assert_eq!(sim.dev().primary.version, "1.0.0");

    sim.dev().faults.silent = true;
    let t0 = std::time::Instant::now();
    let e = relay("n", &cfg, &image, &fx.data_dir())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no answer to MCUmgr parameters") && e.contains("4 attempts"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let rep = relay::node_report("n", &cfg, &fx.data_dir(), true);
    assert_eq!(rep.state.as_str(), "unreachable");
}

#[test]
fn several_nodes_relay_in_parallel() {
    let fx = Fixture::new();
    let (a, pty) = pty_sim(SimConfig::default());
    let (b, addr) = udp_sim(SimConfig::default());
    let img_a = fx.image(20_000, "4.0.0");
    let img_b = fx.image(25_000, "4.0.1");
    let jobs = vec![
        RelayJob {
            node: "a".into(),
            cfg: fx.with_key(tools::serial_node(&pty, T)),
            image: img_a.clone(),
        },
        RelayJob {
            node: "b".into(),
            cfg: fx.with_key(tools::udp_node(&addr, T)),
            image: img_b.clone(),
        },
    ];
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let results = relay::relay_many(
        &jobs,
        &fx.data_dir(),
        &|p: &RelayProgress| {
            seen.lock().unwrap().insert(p.node.clone());
        },
        &AtomicBool::new(false),
    );
    for (node, r) in &results {
        assert!(
            matches!(r, Ok(RelayOutcome::Confirmed { .. })),
            "{node}: {r:?}"
        );
    }
    assert_eq!(seen.into_inner().unwrap().len(), 2);
    assert_running(&a, &img_a);
    assert_running(&b, &img_b);
}

#[test]
fn staged_images_are_checked_relayed_and_removed() {
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    let cfg = fx.with_key(tools::udp_node(&addr, T));
    let image = fx.image(12_000, "5.0.0");
    let staged = staging::stage_image("n", &cfg, &image, &fx.data_dir()).unwrap();
    assert_eq!(staged.version, "5.0.0");
    assert_eq!(
        staging::staged_nodes(&fx.data_dir()).unwrap(),
        vec!["n".to_string()]
    );
    let out = staging::relay_staged(
        "n",
        &cfg,
        &fx.data_dir(),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(matches!(out, RelayOutcome::Confirmed { .. }));
    assert_running(&sim, &image);
    assert!(staging::staged_nodes(&fx.data_dir()).unwrap().is_empty());

    // A foreign image is refused at staging time.
    let (other, _) = tools::keygen(fx.dir.path(), "other");
    let foreign = tools::sign(
        fx.dir.path(),
        &other,
        &tools::payload(1000, 5),
        "5.0.1",
        &[],
    );
    assert!(staging::stage_image("n", &cfg, &foreign, &fx.data_dir()).is_err());
    assert!(!staging::path(&fx.data_dir(), "n").exists());

    // A staged image damaged on disk is refused at relay time and dropped.
    let next = fx.image(12_000, "5.0.2");
    staging::stage_image("n", &cfg, &next, &fx.data_dir()).unwrap();
    let p = staging::path(&fx.data_dir(), "n");
    let mut b = std::fs::read(&p).unwrap();
    b[0x300] ^= 0xff;
    std::fs::write(&p, b).unwrap();
    let before = sim.dev().stats.requests;
    let e = staging::relay_staged(
        "n",
        &cfg,
        &fx.data_dir(),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(matches!(e, McuError::Image { .. }), "{e}");
    assert!(!p.exists());
    assert_eq!(sim.dev().stats.requests, before);
}

#[test]
fn node_lock_keeps_a_second_relay_off_the_node() {
    let fx = Fixture::new();
    let (_sim, addr) = udp_sim(SimConfig::default());
    let cfg = fx.with_key(tools::udp_node(&addr, T));
    let image = fx.image(5_000, "6.0.0");
    let _held = record::NodeLock::acquire(&fx.data_dir(), "n").unwrap();
    let e = relay("n", &cfg, &image, &fx.data_dir()).unwrap_err();
    assert!(matches!(e, McuError::Busy(_)), "{e}");
}

#[test]
fn lost_reset_request_is_sent_again_once_the_node_shows_it_did_not_reset() {
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    let cfg = fx.with_key(tools::udp_node(&addr, T));
    let image = fx.image(6_000, "7.0.0");
    let out = relay::relay_file(
        "n",
        &cfg,
        &image,
        &fx.data_dir(),
        &mut |p: RelayProgress| {
            if p.phase == RelayPhase::Rebooting && p.message.starts_with("resetting") {
                sim.dev().faults.drop_next = 1; // the reset request is lost
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(matches!(out, RelayOutcome::Confirmed { .. }), "{out:?}");
    assert_running(&sim, &image);
    let d = sim.dev();
    assert_eq!(d.stats.resets, 1, "exactly one reset must reach the node");
    assert_eq!(d.stats.dropped, 1);
}

/// An answer with the request's sequence number but the wrong op is reported at once as
/// what arrived, not after the timeouts as "no answer".
#[test]
fn an_answer_with_the_wrong_op_is_reported_at_once() {
    let fx = Fixture::new();
    let (sim, addr) = udp_sim(SimConfig::default());
    let timeout = Duration::from_secs(5);
    let cfg = fx.with_key(tools::udp_node(&addr, timeout));
    let image = fx.image(20_000, "1.2.1");
    sim.set_faults(Faults {
        wrong_op: true,
        ..Default::default()
    });
    let start = std::time::Instant::now();
    let e = relay("sensor", &cfg, &image, &fx.data_dir())
        .unwrap_err()
        .to_string();
    let took = start.elapsed();
    assert!(
        e.contains("the answer does not fit the request: op WriteResponse group 0 command 6 arrived, op ReadResponse group 0 command 6 expected"),
        "{e}"
    );
    assert!(!e.contains("no answer"), "{e}");
    assert!(took < timeout, "took {took:?}: {e}");
}
