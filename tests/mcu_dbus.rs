//! Per-node D-Bus objects (`/io/rota/mcu/<name>`, `io.rota.Mcu1`) on a private
//! dbus-daemon: Relay mirrors progress, ends with Completed and final properties;
//! busy, bad paths, refused images and reverts are reported; relays the engine starts
//! through `McuBus` show on the same object. busctl reads what zbus serves.

mod mcu_sim;
mod support;

use mcu_sim::{tools, Sim, SimConfig};
use rota::mcu::relay::RelayOutcome;
use rota::mcu::staging;
use rota::service::mcu::{object_path, register};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;
use support::fixture::Bus;
use zbus::export::futures_core::Stream;

/// The bus of these tests: everyone may own, call and eavesdrop.
const POLICY: &str = r#"<policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>"#;

async fn next<S: Stream + Unpin>(s: &mut S, within: Duration) -> S::Item {
    tokio::time::timeout(
        within,
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)),
    )
    .await
    .expect("timed out waiting for a D-Bus signal")
    .expect("signal stream ended")
}

async fn prop<T>(p: &zbus::Proxy<'_>, name: &str) -> T
where
    T: TryFrom<zbus::zvariant::OwnedValue>,
    T::Error: Into<zbus::Error>,
{
    p.get_property::<T>(name).await.unwrap()
}

async fn relay_and_wait(p: &zbus::Proxy<'_>, image: &Path) -> (String, String) {
    let mut completed = p.receive_signal("Completed").await.unwrap();
    p.call_method("Relay", &(image.to_str().unwrap(),))
        .await
        .unwrap();
    let msg = next(&mut completed, Duration::from_secs(30)).await;
    msg.body().deserialize::<(String, String)>().unwrap()
}

fn busctl(address: &str, args: &[&str]) -> String {
    let out = Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("busctl is required (systemd package)");
    assert!(
        out.status.success(),
        "busctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_dbus_objects() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(dir.path(), POLICY);
    let (key, public) = tools::keygen(dir.path(), "release");
    let mut sim = Sim::new(SimConfig::default());
    let addr = sim.serve_udp("127.0.0.1:0").unwrap();
    let mut cfg = tools::udp_node(&addr.to_string(), Duration::from_millis(300));
    cfg.key = Some(public);
    let data_dir: PathBuf = dir.path().join("data");
    let nodes = BTreeMap::from([
        ("sensor".to_string(), cfg.clone()),
        ("radio-1".to_string(), cfg.clone()),
    ]);

    let server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("io.rota")
        .unwrap()
        .build()
        .await
        .unwrap();
    let mcu = register(&server, &nodes, &data_dir, "rota").await.unwrap();
    assert_eq!(mcu.nodes(), ["radio-1".to_string(), "sensor".to_string()]);

    let client = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    // Reads go through an uncached proxy: a cached one may lag the signals.
    let p: zbus::Proxy = zbus::proxy::Builder::new(&client)
        .destination("io.rota")
        .unwrap()
        .path(object_path("sensor"))
        .unwrap()
        .interface("io.rota.Mcu1")
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let cached = zbus::Proxy::new(&client, "io.rota", object_path("sensor"), "io.rota.Mcu1")
        .await
        .unwrap();
    assert_eq!(prop::<String>(&p, "State").await, "unknown");
    assert_eq!(prop::<String>(&p, "Name").await, "sensor");
    assert!(prop::<String>(&p, "Transport")
        .await
        .starts_with("udp 127.0.0.1:"));

    // A relay: progress changes while it runs, then Completed and final properties.
    let image = tools::sign(dir.path(), &key, &tools::payload(60_000, 8), "1.4.0", &[]);
    let mut progress = cached
        .receive_property_changed::<(u32, String, u64, u64)>("Progress")
        .await;
    let seen = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Ok(Some(c)) = tokio::time::timeout(
            Duration::from_secs(20),
            std::future::poll_fn(|cx| Pin::new(&mut progress).poll_next(cx)),
        )
        .await
        {
            if let Ok((pct, ..)) = c.get().await {
                v.push(pct);
                if pct == 100 {
                    break;
                }
            }
        }
        v
    });
    // Lost frames slow the upload down enough for throttled progress updates.
    sim.dev().faults.drop_every = 10;
    let mut completed = p.receive_signal("Completed").await.unwrap();
    p.call_method("Relay", &(image.to_str().unwrap(),))
        .await
        .unwrap();
    // A second relay to the same node while the first runs is refused.
    let busy = p
        .call_method("Relay", &(image.to_str().unwrap(),))
        .await
        .unwrap_err()
        .to_string();
    assert!(busy.contains("busy"), "{busy}");
    let msg = next(&mut completed, Duration::from_secs(30)).await;
    let (result, message) = msg.body().deserialize::<(String, String)>().unwrap();
    assert_eq!(result, "confirmed", "{message}");
    assert!(message.contains("version 1.4.0"), "{message}");
    assert_eq!(prop::<String>(&p, "Version").await, "1.4.0");
    assert_eq!(prop::<String>(&p, "State").await, "confirmed");
    assert_eq!(prop::<String>(&p, "LastError").await, "");
    let (pct, _, done, total) = prop::<(u32, String, u64, u64)>(&p, "Progress").await;
    assert_eq!(
        (pct, done, total),
        (100, total, std::fs::metadata(&image).unwrap().len())
    );
    let seen = seen.await.unwrap();
    assert!(
        seen.iter().any(|&x| x > 5 && x < 90),
        "no upload progress seen: {seen:?}"
    );
    assert_eq!(sim.dev().primary.data, std::fs::read(&image).unwrap());
    sim.dev().faults.drop_every = 0;

    // busctl sees the same object.
    let v = busctl(
        &bus.address,
        &[
            "get-property",
            "io.rota",
            "/io/rota/mcu/sensor",
            "io.rota.Mcu1",
            "Version",
        ],
    );
    assert_eq!(v.trim(), "s \"1.4.0\"");
    let intro = busctl(
        &bus.address,
        &[
            "introspect",
            "io.rota",
            "/io/rota/mcu/radio_2d1",
            "io.rota.Mcu1",
        ],
    );
    for m in [
        ".Relay",
        ".Cancel",
        ".Refresh",
        ".Completed",
        ".Progress",
        ".LastError",
    ] {
        assert!(intro.contains(m), "{m} missing:\n{intro}");
    }

    // A tampered image: Completed "failed", LastError says why, nothing sent.
    let mut b = std::fs::read(&image).unwrap();
    b[0x300] ^= 1;
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, b).unwrap();
    let before = sim.dev().stats.requests;
    let (result, message) = relay_and_wait(&p, &bad).await;
    assert_eq!(result, "failed");
    assert!(message.contains("SHA256 TLV does not match"), "{message}");
    assert!(prop::<String>(&p, "LastError").await.contains("SHA256 TLV"));
    assert_eq!(prop::<String>(&p, "State").await, "failed");
    assert_eq!(sim.dev().stats.requests, before);

    // The node reverts the next image.
    sim.dev().faults.boot_fail = true;
    let next_img = tools::sign(dir.path(), &key, &tools::payload(10_000, 9), "1.5.0", &[]);
    let (result, _) = relay_and_wait(&p, &next_img).await;
    assert_eq!(result, "reverted");
    assert_eq!(prop::<String>(&p, "State").await, "reverted");
    assert_eq!(prop::<String>(&p, "Version").await, "1.4.0");
    assert!(prop::<String>(&p, "LastError")
        .await
        .contains("reverted version 1.5.0"));
    sim.dev().faults.boot_fail = false;

    // Bad arguments.
    let e = p
        .call_method("Relay", &("relative.bin",))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("absolute"), "{e}");
    let e = p.call_method("Cancel", &()).await.unwrap_err().to_string();
    assert!(e.contains("no relay"), "{e}");

    // The engine relays a staged image through McuBus: the object follows.
    staging::stage_image("sensor", &cfg, &next_img, &data_dir).unwrap();
    let out = mcu.relay_staged("sensor").await.unwrap();
    assert!(matches!(out, RelayOutcome::Confirmed { .. }), "{out:?}");
    assert_eq!(prop::<String>(&p, "Version").await, "1.5.0");
    assert_eq!(prop::<String>(&p, "State").await, "confirmed");
    assert!(mcu.relay_staged("nosuch").await.is_err());

    // Refresh asks the node.
    sim.dev().faults.silent = true;
    p.call_method("Refresh", &()).await.unwrap();
    assert_eq!(prop::<String>(&p, "State").await, "unreachable");
    drop(bus);
}

/// Relay, Cancel and Refresh are refused by the service itself to a caller that is neither root
/// nor in the group, even on a bus whose policy lets everyone call everything; reads
/// stay open to everyone, and a bad image path is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_cancel_need_root_or_the_group() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // nobody must reach the bus socket and the image.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bus = Bus::start(dir.path(), POLICY);
    let mut sim = Sim::new(SimConfig::default());
    let addr = sim.serve_udp("127.0.0.1:0").unwrap();
    let cfg = tools::udp_node(&addr.to_string(), Duration::from_millis(300));
    let data_dir: PathBuf = dir.path().join("data");
    let nodes = BTreeMap::from([("sensor".to_string(), cfg)]);
    let server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("io.rota")
        .unwrap()
        .build()
        .await
        .unwrap();
    register(&server, &nodes, &data_dir, "rota").await.unwrap();
    let image = dir.path().join("fw.bin");
    std::fs::write(&image, tools::payload(4096, 3)).unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();

    let path = object_path("sensor");
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
            .arg(format!("--address={}", bus.address))
            .args(["call", "io.rota", &path, "io.rota.Mcu1"])
            .args(args);
        cmd.output().expect("setpriv (util-linux) is required")
    };
    // Refresh talks to the device: it is an action too.
    for call in [
        vec!["Relay", "s", image.to_str().unwrap()],
        vec!["Cancel"],
        vec!["Refresh"],
    ] {
        let out = as_nobody(&call);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{call:?} was allowed");
        assert!(
            err.contains("uid 65534 may only read") && err.contains("group \"rota\""),
            "{call:?}: {err}"
        );
    }
    let state = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
        .arg(format!("--address={}", bus.address))
        .args(["get-property", "io.rota", &path, "io.rota.Mcu1", "State"])
        .output()
        .unwrap();
    assert!(
        state.status.success(),
        "{}",
        String::from_utf8_lossy(&state.stderr)
    );
    // Nothing was relayed.
    assert_eq!(sim.dev().stats.bytes_written, 0);

    // Root may call, but not with a relative or oversized path.
    let bad = |p: &str| {
        Command::new("busctl")
            .arg(format!("--address={}", bus.address))
            .args(["call", "io.rota", &path, "io.rota.Mcu1", "Relay", "s", p])
            .output()
            .unwrap()
    };
    let out = bad("fw.bin");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be absolute"));
    let out = bad(&format!("/{}", "a".repeat(5000)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 4096 bytes"));
}
