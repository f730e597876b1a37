//! Slot aliases and slot groups through the real service and agent on the file-backed
//! gateway (booted A): two slots on the same storage are refused at start-up and by the
//! writer, and a class with `parent = ...` (appfs) follows the rootfs target while the
//! copy the running system uses stays byte-for-byte unchanged.

mod support;
use support::gateway::{path_str, pattern, Gateway, SLOT_SIZE};

use rota::agent::{self, AgentEvent, AgentHandle, InstallRequest, InstallResult};
use std::path::{Path, PathBuf};
use std::time::Duration;

const APPFS_PARENTS: &str = "[slot.appfs.0]\ndevice = \"app-a.img\"\nparent = \"rootfs.0\"\n\
                             [slot.appfs.1]\ndevice = \"app-b.img\"\nparent = \"rootfs.1\"\n";
const APPFS_ORPHANS: &str =
    "[slot.appfs.0]\ndevice = \"app-a.img\"\n[slot.appfs.1]\ndevice = \"app-b.img\"\n";

/// Adds `extra` slot sections to the gateway's config and creates the appfs slot files
/// (appfs.0, in use with A, holds a pattern; appfs.1 zeros).
fn add_slots(gw: &Gateway, extra: &str) {
    std::fs::write(gw.path("app-a.img"), pattern(SLOT_SIZE / 2, 21)).unwrap();
    std::fs::write(gw.path("app-b.img"), vec![0u8; SLOT_SIZE / 2]).unwrap();
    let mut cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    cfg.push_str(extra);
    std::fs::write(gw.path("system.toml"), cfg).unwrap();
}

/// A bundle with the given (slot class, file, bytes) images, built by `rota bundle create`.
fn bundle(gw: &Gateway, name: &str, images: &[(&str, &str, &[u8])]) -> PathBuf {
    let src = gw.path(&format!("src-{name}"));
    std::fs::create_dir_all(&src).unwrap();
    let mut manifest = "[update]\ncompatible = \"acme-gateway\"\nversion = \"1.1.0\"\n".to_owned();
    for (class, file, bytes) in images {
        std::fs::write(src.join(file), bytes).unwrap();
        manifest.push_str(&format!(
            "\n[[image]]\nslot-class = \"{class}\"\nfile = \"{file}\"\n"
        ));
    }
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

/// Every slot file and the env, to prove a refusal wrote nothing.
fn snapshot(gw: &Gateway) -> Vec<(String, Vec<u8>)> {
    ["a.img", "b.img", "app-a.img", "app-b.img", "uboot.env"]
        .into_iter()
        .filter(|f| gw.path(f).exists())
        .map(|f| (f.to_owned(), gw.read(f)))
        .collect()
}

fn config(gw: &Gateway) -> rota::config::Config {
    rota::config::Config::load(&gw.path("system.toml")).unwrap()
}

async fn install(h: &AgentHandle, source: &Path) -> (InstallResult, String) {
    let mut events = h.subscribe();
    let tr = h
        .install(InstallRequest {
            source: rota::agent::Location::File(source.to_owned()),
            ..Default::default()
        })
        .await
        .expect("install accepted");
    let done = async {
        loop {
            match events.recv().await {
                Ok(AgentEvent::Completed {
                    transaction,
                    result,
                    message,
                }) if transaction == tr => return (result, message),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), done)
        .await
        .expect("install completes within 60 s")
}

#[test]
fn service_refuses_to_start_when_a_slot_is_a_hard_link_to_another() {
    let mut gw = Gateway::new(false);
    let a = gw.read("a.img");
    std::fs::remove_file(gw.path("b.img")).unwrap();
    std::fs::hard_link(gw.path("a.img"), gw.path("b.img")).unwrap();
    gw.spawn_service();
    assert_eq!(
        gw.wait_service_exit(30),
        Some(1),
        "rota service must refuse"
    );
    let log = String::from_utf8_lossy(&gw.read("service.log")).into_owned();
    let want = format!(
        "slots rootfs.0 and rootfs.1 are the same file ({} and {} are both inode",
        gw.path("a.img").display(),
        gw.path("b.img").display()
    );
    assert!(log.contains(&want), "{log}\nshould contain {want}");
    assert_eq!(gw.read("a.img"), a, "booted slot unchanged");
}

/// The slot becomes an alias of the booted one after the service started (the config
/// check cannot see it): the install is refused and the booted slot is not written.
#[tokio::test(flavor = "multi_thread")]
async fn install_into_a_late_alias_of_the_booted_slot_is_refused() {
    let gw = Gateway::new(false);
    let image = pattern(1 << 20, 5);
    let b = bundle(&gw, "v11", &[("rootfs", "rootfs.ext4", &image)]);
    let h = agent::start(config(&gw)).await.expect("agent starts");
    for how in ["hard link", "symlink"] {
        std::fs::remove_file(gw.path("b.img")).unwrap();
        if how == "hard link" {
            std::fs::hard_link(gw.path("a.img"), gw.path("b.img")).unwrap();
        } else {
            std::os::unix::fs::symlink(gw.path("a.img"), gw.path("b.img")).unwrap();
        }
        let before = snapshot(&gw);
        let (res, msg) = install(&h, &b).await;
        assert_eq!(res, InstallResult::Failed, "{how}: {msg}");
        assert!(
            msg.contains("refusing to write slot rootfs.1: it and the booted slot rootfs.0 are the same file"),
            "{how}: {msg}"
        );
        assert_eq!(
            snapshot(&gw),
            before,
            "{how}: nothing written, env included"
        );
        assert_eq!(
            gw.read("a.img"),
            pattern(SLOT_SIZE, 1),
            "{how}: booted slot intact"
        );
    }
}

/// appfs.0/appfs.1 follow rootfs.0/rootfs.1: booted A, a bundle with rootfs and appfs
/// images writes rootfs.1 and appfs.1, activates B, and leaves appfs.0 alone. Through
/// `rota install`, `rota status --json` and GetSlotStatus on the real service.
#[test]
fn appfs_with_parents_follows_the_rootfs_target() {
    let mut gw = Gateway::new(false);
    add_slots(&gw, APPFS_PARENTS);
    let (rootfs, appfs) = (pattern(2 << 20, 7), pattern(1 << 20, 8));
    // appfs listed first: the order of images does not pick the targets.
    let b = bundle(
        &gw,
        "both",
        &[
            ("appfs", "appfs.img", &appfs),
            ("rootfs", "rootfs.ext4", &rootfs),
        ],
    );
    let (a, app_a) = (gw.read("a.img"), gw.read("app-a.img"));
    gw.start_service();
    gw.rota(&["install", path_str(&b)]).success();
    assert_eq!(&gw.read("b.img")[..rootfs.len()], &rootfs[..]);
    assert_eq!(&gw.read("app-b.img")[..appfs.len()], &appfs[..]);
    assert_eq!(
        gw.read("app-a.img"),
        app_a,
        "the running appfs copy is untouched"
    );
    assert_eq!(gw.read("a.img"), a, "the booted rootfs is untouched");
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "B A");

    let st = gw.status_json();
    assert_eq!(st["last_install"]["slot"], "rootfs.1");
    assert_eq!(st["last_install"]["result"], "activated");
    let slot = |name: &str| {
        st["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(slot("appfs.0")["parent"], "rootfs.0");
    assert_eq!(slot("appfs.0")["state"], "booted", "in use with its parent");
    assert_eq!(slot("appfs.1")["parent"], "rootfs.1");
    assert_eq!(
        slot("appfs.1")["state"],
        "active",
        "B is first in BOOT_ORDER"
    );
    assert_eq!(slot("appfs.1")["version"], "1.1.0");
    assert!(slot("rootfs.0")["parent"].is_null());
    let text = gw.rota(&["status"]).success();
    assert!(text.contains("parent rootfs.1"), "{text}");
    let dbus = gw
        .busctl(&[
            "--json=short",
            "call",
            "io.rota",
            "/io/rota",
            "io.rota.Agent1",
            "GetSlotStatus",
        ])
        .success();
    let v: serde_json::Value = serde_json::from_str(&dbus).unwrap();
    let slots = v["data"][0].as_array().unwrap();
    let app1 = slots.iter().find(|s| s[0] == "appfs.1").unwrap();
    assert_eq!(app1[1]["parent"]["data"], "rootfs.1", "{dbus}");
    let root1 = slots.iter().find(|s| s[0] == "rootfs.1").unwrap();
    assert!(root1[1].get("parent").is_none(), "{dbus}");
}

/// Several appfs copies without bootname or parent: rota cannot know which one the
/// running system uses, so it writes none of them.
#[tokio::test(flavor = "multi_thread")]
async fn appfs_without_parent_or_bootname_is_refused() {
    let gw = Gateway::new(false);
    add_slots(&gw, APPFS_ORPHANS);
    let (rootfs, appfs) = (pattern(2 << 20, 7), pattern(1 << 20, 8));
    let both = bundle(
        &gw,
        "both",
        &[
            ("rootfs", "rootfs.ext4", &rootfs),
            ("appfs", "appfs.img", &appfs),
        ],
    );
    let only = bundle(&gw, "only", &[("appfs", "appfs.img", &appfs)]);
    let h = agent::start(config(&gw)).await.expect("agent starts");
    for b in [&both, &only] {
        let before = snapshot(&gw);
        let (res, msg) = install(&h, b).await;
        assert_eq!(res, InstallResult::Failed, "{msg}");
        assert!(
            msg.contains("slot class \"appfs\", whose 2 slots have neither a bootname nor a parent: rota cannot tell which copy the running system uses"),
            "{msg}"
        );
        assert_eq!(snapshot(&gw), before, "nothing written, env included");
    }
}

/// A slot with a parent is installed with its parent: an appfs-only bundle would leave
/// B's old rootfs to boot with the new appfs.
#[tokio::test(flavor = "multi_thread")]
async fn appfs_alone_is_refused_without_its_parent() {
    let gw = Gateway::new(false);
    add_slots(&gw, APPFS_PARENTS);
    let only = bundle(&gw, "only", &[("appfs", "appfs.img", &pattern(1 << 20, 8))]);
    let h = agent::start(config(&gw)).await.expect("agent starts");
    let before = snapshot(&gw);
    let (res, msg) = install(&h, &only).await;
    assert_eq!(res, InstallResult::Failed, "{msg}");
    assert!(
        msg.contains("goes to slot appfs.1, whose parent rootfs.1 gets no image from this bundle"),
        "{msg}"
    );
    assert_eq!(snapshot(&gw), before, "nothing written, env included");
}
