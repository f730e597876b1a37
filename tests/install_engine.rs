//! The install pipeline and the agent, driven through the library on a file-backed
//! device (slot files, a U-Boot env made by the real `mkenvimage`, a kernel command line
//! file). Every failure path checks that the booted slot and, where nothing may be
//! written yet, the env are byte-for-byte unchanged.

mod support;
use support::fixture::{pattern, Fixture};

use rota::agent::{self, AgentEvent, AgentHandle, InstallRequest, InstallResult, MarkState};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SLOT_SIZE: u64 = 4 << 20;

/// The shared simulated gateway's files, driven through the library.
struct Device {
    fx: Fixture,
}

impl std::ops::Deref for Device {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

impl Device {
    fn new() -> Device {
        Device {
            fx: Fixture::builder()
                .slot_size(SLOT_SIZE as usize)
                .env_var("board_serial", "GW-0042")
                .build(),
        }
    }

    fn config(&self) -> rota::config::Config {
        rota::config::Config::load(&self.path("system.toml")).unwrap()
    }

    fn env(&self) -> std::collections::BTreeMap<String, String> {
        self.fw_printenv()
    }

    fn reboot_into(&self, bootname: &str) {
        self.boot_into(bootname);
    }
}

async fn start(dev: &Device) -> AgentHandle {
    agent::start(dev.config()).await.expect("agent starts")
}

/// Installs and waits for the Completed event.
async fn install(handle: &AgentHandle, req: InstallRequest) -> (InstallResult, String) {
    let mut events = handle.subscribe();
    let tr = handle.install(req).await.expect("install accepted");
    wait_completed(&mut events, &tr).await
}

async fn wait_completed(
    events: &mut tokio::sync::broadcast::Receiver<AgentEvent>,
    tr: &str,
) -> (InstallResult, String) {
    let fut = async {
        loop {
            match events.recv().await {
                Ok(AgentEvent::Completed {
                    transaction,
                    result,
                    message,
                }) if transaction == tr => return (result, message),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("install completes within 60 s")
}

fn req(source: &Path) -> InstallRequest {
    InstallRequest {
        source: agent::Location::File(source.to_owned()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn install_activates_new_slot_then_boot_and_mark_good() {
    let dev = Device::new();
    let a_before = dev.read("a.img");
    let (bundle, image) = dev.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(3 << 20, 7),
        "release",
    );
    let h = start(&dev).await;
    let (res, msg) = install(&h, req(&bundle)).await;
    assert_eq!(res, InstallResult::Success, "{msg}");
    assert_eq!(
        &dev.read("b.img")[..image.len()],
        &image[..],
        "slot B holds the image"
    );
    assert_eq!(dev.read("a.img"), a_before, "booted slot untouched");
    let env = dev.env();
    assert_eq!(env["BOOT_ORDER"], "B A");
    assert_eq!(env["BOOT_B_LEFT"], "3");
    assert_eq!(env["board_serial"], "GW-0042", "other variables survive");
    assert_eq!(env["bootcmd"], "run distro_bootcmd");
    let st = h.status().await.unwrap();
    assert_eq!(st.primary, "rootfs.1");
    let li = st.last_install.clone().unwrap();
    assert_eq!(
        (li.result.as_str(), li.version.as_str(), li.slot.as_str()),
        ("activated", "1.1.0", "rootfs.1")
    );
    let b = st.slots.iter().find(|s| s.name == "rootfs.1").unwrap();
    assert_eq!(b.version.as_deref(), Some("1.1.0"));
    assert_eq!(b.state.as_str(), "active");
    drop(h);

    // U-Boot boots B (decrementing its counter); the service starts on B.
    dev.fw_setenv("BOOT_B_LEFT", "2");
    dev.reboot_into("B");
    let h = start(&dev).await;
    let st = h.status().await.unwrap();
    assert_eq!(st.booted, "B");
    assert_eq!(st.last_install.as_ref().unwrap().result.as_str(), "booted");
    let (slot, _) = h.mark(MarkState::Good, "booted").await.unwrap();
    assert_eq!(slot, "rootfs.1");
    assert_eq!(dev.env()["BOOT_B_LEFT"], "3");
    assert_eq!(
        h.status()
            .await
            .unwrap()
            .last_install
            .unwrap()
            .result
            .as_str(),
        "good"
    );

    // The same version again is allowed; a lower one is refused without force.
    let (old, _) = dev.bundle(
        "v10",
        "acme-gateway",
        "1.0.0",
        pattern(1 << 20, 9),
        "release",
    );
    let (res, msg) = install(&h, req(&old)).await;
    assert_eq!(res, InstallResult::Failed);
    assert!(msg.contains("lower than the booted slot's 1.1.0"), "{msg}");
    let (res, msg) = install(
        &h,
        InstallRequest {
            force_version: true,
            ..req(&old)
        },
    )
    .await;
    assert_eq!(res, InstallResult::Success, "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_is_reported_after_the_bootloader_falls_back() {
    let dev = Device::new();
    let (bundle, _) = dev.bundle(
        "v11",
        "acme-gateway",
        "1.1.0",
        pattern(1 << 20, 3),
        "release",
    );
    let h = start(&dev).await;
    assert_eq!(install(&h, req(&bundle)).await.0, InstallResult::Success);
    drop(h);
    // Restart without reboot: still waiting.
    let h = start(&dev).await;
    assert_eq!(
        h.status()
            .await
            .unwrap()
            .last_install
            .unwrap()
            .result
            .as_str(),
        "activated"
    );
    drop(h);
    // U-Boot tried B three times, then fell back to A.
    dev.fw_setenv("BOOT_B_LEFT", "0");
    let h = start(&dev).await;
    let st = h.status().await.unwrap();
    let li = st.last_install.unwrap();
    assert_eq!(li.result.as_str(), "rolled-back");
    assert!(li.error.contains("rolled back"), "{}", li.error);
    assert!(h.snapshot().last_error.contains("rolled back"));
    assert_eq!(st.primary, "rootfs.0");
}

/// Refusals before any write: slot B and the whole env stay byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn refused_bundles_touch_nothing() {
    let dev = Device::new();
    let h = start(&dev).await;
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "wrong key",
            dev.bundle("k", "acme-gateway", "1.1.0", pattern(1 << 20, 1), "other")
                .0,
            "signature",
        ),
        (
            "wrong compatible",
            dev.bundle("c", "other-board", "1.1.0", pattern(1 << 20, 1), "release")
                .0,
            "this device is \"acme-gateway\"",
        ),
        (
            "oversize",
            dev.bundle(
                "o",
                "acme-gateway",
                "1.1.0",
                pattern(SLOT_SIZE as usize + 4096, 1),
                "release",
            )
            .0,
            "larger than slot rootfs.1",
        ),
        ("missing file", dev.path("nope.rota"), "nope.rota"),
    ];
    // A truncated and a corrupt-manifest bundle.
    let (good, _) = dev.bundle("g", "acme-gateway", "1.1.0", pattern(1 << 20, 2), "release");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dev.path("trunc.rota"), &bytes[..bytes.len() / 2]).unwrap();
    let mut corrupt = bytes.clone();
    corrupt[520] ^= 0x20; // inside manifest.toml
    std::fs::write(dev.path("corrupt.rota"), &corrupt).unwrap();
    let cases = cases.into_iter().chain([
        ("truncated", dev.path("trunc.rota"), "truncated"),
        ("corrupt manifest", dev.path("corrupt.rota"), "signature"),
    ]);
    for (what, path, expect) in cases {
        let a = dev.read("a.img");
        let b = dev.read("b.img");
        let env = dev.read("uboot.env");
        let (res, msg) = install(&h, req(&path)).await;
        assert_eq!(res, InstallResult::Failed, "{what}");
        assert!(
            msg.contains(expect),
            "{what}: {msg:?} should mention {expect:?}"
        );
        assert_eq!(dev.read("a.img"), a, "{what}: booted slot changed");
        assert_eq!(dev.read("b.img"), b, "{what}: target slot changed");
        assert_eq!(dev.read("uboot.env"), env, "{what}: env changed");
        assert_eq!(h.snapshot().last_error, msg);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_payload_is_never_activated() {
    let dev = Device::new();
    let (bundle, _) = dev.bundle("t", "acme-gateway", "1.1.0", pattern(2 << 20, 5), "release");
    let mut bytes = std::fs::read(&bundle).unwrap();
    let n = bytes.len();
    bytes[n - 1024 - 300_000] ^= 1; // inside the image member, not the end blocks
    std::fs::write(&bundle, &bytes).unwrap();
    let a = dev.read("a.img");
    let h = start(&dev).await;
    let (res, msg) = install(&h, req(&bundle)).await;
    assert_eq!(res, InstallResult::Failed);
    assert!(msg.contains("does not match its signed hash"), "{msg}");
    assert_eq!(dev.read("a.img"), a);
    let env = dev.env();
    assert_eq!(
        env["BOOT_ORDER"], "A",
        "B was taken out of the selection and stays out"
    );
    assert_eq!(env["BOOT_B_LEFT"], "0");
    let st = h.status().await.unwrap();
    assert_eq!(st.last_install.unwrap().result.as_str(), "failed");
    assert_eq!(st.primary, "rootfs.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn second_install_is_busy_and_cancel_leaves_slot_inactive() {
    let dev = Device::new();
    // Larger slots so the copy lasts long enough to be caught mid-write. Format 1: raw
    // chunks, so making the bundle is quick under qemu-user too (zstd -19 of 96 MiB in a
    // debug build under emulation took minutes).
    let big = 96 << 20;
    std::fs::write(dev.path("b.img"), vec![0u8; big]).unwrap();
    let (bundle, _) = dev.bundle_with(
        "big",
        "acme-gateway",
        "1.1.0",
        pattern(big, 11),
        "release",
        &["--format", "1"],
    );
    let h = start(&dev).await;
    let mut events = h.subscribe();
    let tr = h.install(req(&bundle)).await.unwrap();
    let busy = h.install(req(&bundle)).await.unwrap_err();
    assert!(matches!(busy, agent::AgentError::Busy(_)), "{busy:?}");
    assert!(busy.to_string().contains(&tr));
    // Cancel once bytes are landing.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            AgentEvent::Progress(p) if p.bytes_done > 0 => break,
            AgentEvent::Completed { message, .. } => panic!("finished before cancel: {message}"),
            _ => {}
        }
    }
    h.cancel().await.unwrap();
    let (res, _) = wait_completed(&mut events, &tr).await;
    assert_eq!(res, InstallResult::Cancelled);
    let st = h.status().await.unwrap();
    assert_eq!(st.last_install.unwrap().result.as_str(), "cancelled");
    let b = st.slots.iter().find(|s| s.name == "rootfs.1").unwrap();
    assert_eq!(b.boot_status.as_str(), "bad");
    assert_eq!(dev.env()["BOOT_ORDER"], "A");
}

/// A crash mid-install leaves the journal; the next start resumes and fetches only what
/// is missing or wrong in the target slot.
#[tokio::test(flavor = "multi_thread")]
async fn journaled_install_resumes_at_start_reusing_written_chunks() {
    let dev = Device::new();
    let (bundle, image) = dev.bundle(
        "r",
        "acme-gateway",
        "1.1.0",
        pattern(3 << 20, 13),
        "release",
    );
    // What a killed install leaves: the journal, B out of the selection, 2 MiB written.
    let mut b = dev.read("b.img");
    b[..2 << 20].copy_from_slice(&image[..2 << 20]);
    std::fs::write(dev.path("b.img"), &b).unwrap();
    dev.fw_setenv("BOOT_B_LEFT", "0");
    std::fs::create_dir_all(dev.path("data")).unwrap();
    let journal = serde_json::json!({"journal": {"transaction": "t-resume", "source": bundle.display().to_string(),
        "force_version": false, "ignore_compatible": false, "reboot": null}});
    std::fs::write(dev.path("data/status.json"), journal.to_string()).unwrap();

    // The agent resumes before anyone could subscribe: watch the snapshot instead.
    let h = start(&dev).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = h.status().await.unwrap();
        let done = st.operation.as_str() == "idle"
            && st
                .last_install
                .as_ref()
                .is_some_and(|l| l.result.as_str() != "installing");
        if done {
            let li = st.last_install.unwrap();
            assert_eq!(
                (li.transaction.as_str(), li.result.as_str()),
                ("t-resume", "activated"),
                "{}",
                li.error
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "resumed install did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = h.snapshot().progress;
    assert_eq!(
        p.bytes_reused,
        2 << 20,
        "the 2 MiB already written were verified and kept"
    );
    assert_eq!(
        p.bytes_downloaded,
        1 << 20,
        "only the missing 1 MiB was fetched"
    );
    assert_eq!(&dev.read("b.img")[..image.len()], &image[..]);
    assert_eq!(dev.env()["BOOT_ORDER"], "B A");
}
