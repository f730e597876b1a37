//! Benchmark (not a test): a whole network install by `rota service` from a real nginx
//! on loopback, in one run (issue 3's figures):
//!
//! 0. the first update of a factory device (its running slot probed at the same offsets);
//! 1. `curl URL | dd of=FILE conv=fsync` of the bundle, next to `rota install URL`
//!    (signature, verified chunks into slot B, fsync, read-back, activation), alternating,
//!    `ROTA_BENCH_RUNS` (5) times each with the page cache dropped before each run: min
//!    and median time, throughput and the speed ratio; the service's peak RSS (VmHWM);
//! 2. an install of another bundle of the same size through the fault proxy with ten
//!    connection cuts at random offsets: bytes downloaded / image size;
//! 3. after "rebooting" into B: an update whose image differs from the running one in
//!    1 % of its 4 KiB blocks: bytes downloaded and reused.
//!
//! `cargo bench --bench install_http` (image size in MiB from `ROTA_BENCH_MIB`, default
//! 256). Under `cargo test --all-targets` it only prints how to run it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;
use support::fault_proxy::{Fault, FaultProxy};
use support::fixture::Fixture;
use support::gateway::{pattern, Gateway};
use support::nginx::{make_pki, Nginx};

fn json_events(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// (bytes downloaded, bytes reused) from `rota install --json` output.
fn traffic(out: &str) -> (u64, u64) {
    let ev = json_events(out);
    let p = ev
        .iter()
        .rev()
        .find(|e| e["event"] == "progress")
        .expect("progress events");
    (
        p["bytes_downloaded"].as_u64().unwrap_or(0),
        p["bytes_reused"].as_u64().unwrap_or(0),
    )
}

fn vm_hwm_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("install_http is a benchmark: run `cargo bench --bench install_http`");
        return;
    }
    let mib: usize = std::env::var("ROTA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = mib << 20;
    let mut gw = Gateway::with(
        Fixture::builder()
            .slot_size(size + (16 << 20))
            .http("retries = 8\nstall-timeout = \"5s\""),
    );
    make_pki(&gw.path("pki"));
    std::fs::create_dir_all(gw.path("www")).unwrap();
    let ng = Nginx::start(&gw.path("www"), &gw.path("pki"), &gw.path("nginx"));
    gw.start_service();
    let publish = |gw: &Gateway, name: &str, version: &str, image: Vec<u8>| {
        let (path, image) = gw.bundle(name, "acme-gateway", version, image, "release");
        std::fs::rename(&path, gw.path(&format!("www/{name}.rota"))).unwrap();
        std::fs::remove_dir_all(gw.path(&format!("src-{name}"))).unwrap();
        image
    };
    println!("== {mib} MiB image, rota install over loopback HTTP (nginx)");

    // 1. Throughput next to curl | dd: alternating runs, page cache dropped before each.
    let runs: usize = std::env::var("ROTA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let drop_caches = || {
        let _ = std::process::Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    };
    // 0. The first update of a factory device: the running slot A was not installed by
    // rota, so nothing is recorded of it and it is probed chunk by chunk at the same
    // offsets (read and hashed) before the chunks that differ are fetched.
    let v0 = publish(&gw, "v0", "1.0.0", pattern(size, 100));
    drop_caches();
    let t = Instant::now();
    let o = gw
        .rota(&["install", "--json", &ng.url(ng.http, false, "v0.rota")])
        .success();
    let first_s = t.elapsed().as_secs_f64();
    assert!(
        gw.read("b.img")[..size] == v0[..],
        "slot B is not bit-exact"
    );
    let (d, _) = traffic(&o);
    println!(
        "first update from a factory slot (probed): {first_s:.2} s, {:.1} MiB/s, {d} bytes downloaded",
        mib as f64 / first_s
    );
    // From here on the device runs B, whose chunk index rota recorded when it installed it:
    // the steady state of a fleet. Updates go to A.
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "rota.slot=B\n").unwrap();
    gw.start_service();
    gw.rota(&["mark", "good", "booted"]).success();

    // Not seed 1: the fixture fills slot A from that seed, and every chunk would be
    // reused instead of downloaded.
    let v1 = publish(&gw, "v1", "1.1.0", pattern(size, 101));
    let url = ng.url(ng.http, false, "v1.rota");
    let out = gw.path("curl.out");
    let (mut curl_t, mut rota_t) = (Vec::new(), Vec::new());
    let mut down = 0;
    for round in 1..=runs {
        drop_caches();
        let t = Instant::now();
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "curl -sS --fail '{url}' | dd of='{}' bs=1M conv=fsync status=none",
                out.display()
            ))
            .status()
            .expect("curl and dd");
        curl_t.push(t.elapsed().as_secs_f64());
        assert!(st.success());
        std::fs::remove_file(&out).unwrap();
        drop_caches();
        let t = Instant::now();
        let o = gw
            .rota(&["install", "--json", "--force-version", &url])
            .success();
        rota_t.push(t.elapsed().as_secs_f64());
        assert!(
            gw.read("a.img")[..size] == v1[..],
            "slot A is not bit-exact"
        );
        let (d, r) = traffic(&o);
        down = d;
        println!(
            "round {round}: curl | dd {:.2} s, rota {:.2} s ({d} bytes downloaded, {r} reused)",
            curl_t[round - 1],
            rota_t[round - 1]
        );
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    };
    let (curl_min, curl_med) = stats(&mut curl_t);
    let (rota_min, rota_med) = stats(&mut rota_t);
    let rss = vm_hwm_kib(gw.service_pid());
    println!("{runs} alternating runs, page cache dropped before each (min / median):");
    println!(
        "curl | dd conv=fsync              : {curl_min:7.2} / {curl_med:7.2} s  {:7.1} MiB/s (median)",
        mib as f64 / curl_med
    );
    println!(
        "rota install (verify+write+check) : {rota_min:7.2} / {rota_med:7.2} s  {:7.1} MiB/s (median)  ({down} bytes downloaded)",
        mib as f64 / rota_med
    );
    println!(
        "rota speed vs curl | dd           : {:.2}x median, {:.2}x best  (target >= 0.9)",
        curl_med / rota_med,
        curl_min / rota_min
    );
    println!("rota service peak RSS (VmHWM)     : {rss} KiB");

    // 2. Ten cuts at random offsets.
    let v1c = publish(&gw, "v1c", "1.2.0", pattern(size, 2));
    let proxy = FaultProxy::start(ng.http);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    proxy.push((0..10).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Fault::Cut {
            after: 4096 + x % (size as u64 / 10),
        }
    }));
    let t = Instant::now();
    let o = gw
        .rota(&["install", "--json", &proxy.url("v1c.rota")])
        .success();
    let cut_s = t.elapsed().as_secs_f64();
    assert!(
        gw.read("a.img")[..size] == v1c[..],
        "slot A is not bit-exact after cuts"
    );
    let cuts = proxy
        .handed_out()
        .iter()
        .filter(|f| **f != Fault::Pass)
        .count();
    let (down, reused) = traffic(&o);
    println!(
        "{cuts} cuts: {cut_s:.2} s, {down} bytes downloaded for a {size}-byte image (ratio {:.5}), {reused} reused, {} bytes sent by the proxy",
        down as f64 / size as f64,
        proxy.bytes_to_clients()
    );

    // 3. Adaptive: run v1c from A, update to v2 = v1c with 1 % of 4 KiB blocks changed.
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "rota.slot=A\n").unwrap();
    gw.start_service();
    gw.rota(&["mark", "good", "booted"]).success();
    let mut v2 = v1c.clone();
    let blocks = size / 4096;
    let mut y = 12345u64;
    for _ in 0..blocks / 100 {
        y = y
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v2[((y >> 33) as usize % blocks) * 4096] ^= 0xFF;
    }
    let v2 = publish(&gw, "v2", "1.3.0", v2);
    let t = Instant::now();
    let o = gw
        .rota(&["install", "--json", &ng.url(ng.http, false, "v2.rota")])
        .success();
    let ad_s = t.elapsed().as_secs_f64();
    assert!(
        gw.read("b.img")[..size] == v2[..],
        "slot B is not bit-exact"
    );
    let (down, reused) = traffic(&o);
    println!(
        "adaptive (1 % of 4 KiB blocks changed): {ad_s:.2} s, {down} bytes downloaded ({:.1} % of the image), {reused} reused from the running slot",
        100.0 * down as f64 / size as f64
    );
    println!(
        "rota service peak RSS after all three: {} KiB",
        vm_hwm_kib(gw.service_pid())
    );
}
