//! Benchmark (not a test): streaming a bundle over loopback HTTP from a real nginx.
//!
//! 1. `HttpSource::read_range` of the whole file into a file (fsynced), next to
//!    `curl URL | dd of=FILE conv=fsync` of the same file: throughput and ratio.
//! 2. The same read through the fault proxy with 10 connection cuts at random offsets:
//!    bytes fetched / size, and bytes the proxy sent.
//! 3. Peak RSS of this process (VmHWM), which holds the HTTP client and buffers only.
//!
//! `cargo bench --bench http_source` (size in MiB from `ROTA_BENCH_MIB`, default 256).
//! Under `cargo test --all-targets` it only prints how to run it.

#[path = "../tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;
#[path = "../tests/support/nginx.rs"]
#[allow(dead_code)]
mod nginx;
#[path = "../tests/support/procs.rs"]
#[allow(dead_code)]
mod procs;

use rota::source::http::{HttpOptions, HttpSource};
use rota::source::ByteSource;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn make_file(path: &Path, size: u64) -> String {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut sha = Sha256::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().unwrap();
    hex::encode(sha.finalize())
}

/// Streams `url` into `out` with one ranged read; returns (sha256 of `out`, seconds of the
/// transfer and fsync, bytes fetched).
fn stream(url: &str, out: &Path, opts: &HttpOptions) -> (String, f64, u64) {
    let t = Instant::now();
    let mut src = HttpSource::new(url, opts, Arc::new(AtomicBool::new(false))).unwrap();
    let len = src.len().unwrap();
    let mut f = std::fs::File::create(out).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    {
        let mut r = src.read_range(0, len).unwrap();
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n]).unwrap();
        }
    }
    f.sync_all().unwrap();
    let took = t.elapsed().as_secs_f64();
    (file_sha(out), took, src.bytes_fetched())
}

fn file_sha(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut sha = Sha256::new();
    std::io::copy(&mut f, &mut sha).unwrap();
    hex::encode(sha.finalize())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("http_source is a benchmark: run `cargo bench --bench http_source`");
        return;
    }
    let mib: u64 = std::env::var("ROTA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = mib << 20;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("www")).unwrap();
    nginx::make_pki(&d.join("pki"));
    let want = make_file(&d.join("www/b.rota"), size);
    let ng = nginx::Nginx::start(&d.join("www"), &d.join("pki"), &d.join("nginx"));
    let url = ng.url(ng.http, false, "b.rota");
    let opts = HttpOptions {
        retries: 8,
        stall_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    // Warm the page cache so both readers see the same server.
    let _ = std::process::Command::new("cat")
        .arg(d.join("www/b.rota"))
        .stdout(std::process::Stdio::null())
        .status();

    println!("== {mib} MiB over loopback HTTP (nginx)");
    let t = Instant::now();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sS --fail '{url}' | dd of='{}' bs=1M conv=fsync status=none",
            d.join("curl.out").display()
        ))
        .status()
        .expect("curl and dd");
    let curl_s = t.elapsed().as_secs_f64();
    assert!(st.success());
    assert_eq!(
        file_sha(&d.join("curl.out")),
        want,
        "curl | dd copy differs"
    );
    std::fs::remove_file(d.join("curl.out")).unwrap();

    let (sha, rota_s, fetched) = stream(&url, &d.join("rota.out"), &opts);
    assert_eq!(sha, want, "HttpSource copy differs");
    std::fs::remove_file(d.join("rota.out")).unwrap();
    let mibs = |s: f64| mib as f64 / s;
    println!(
        "curl | dd         : {curl_s:7.3} s  {:8.1} MiB/s",
        mibs(curl_s)
    );
    println!(
        "HttpSource -> file: {rota_s:7.3} s  {:8.1} MiB/s  ({fetched} bytes fetched)",
        mibs(rota_s)
    );
    println!("ratio HttpSource/curl time: {:.2}", rota_s / curl_s);

    // Ten cuts at random offsets in the first part of each answer.
    let proxy = fault_proxy::FaultProxy::start(ng.http);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let cuts: Vec<fault_proxy::Fault> = (0..10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            fault_proxy::Fault::Cut {
                after: 4096 + x % (size / 10).max(1),
            }
        })
        .collect();
    proxy.push([fault_proxy::Fault::Pass]); // the size probe
    proxy.push(cuts);
    let (sha, cut_s, fetched) = stream(&proxy.url("b.rota"), &d.join("cut.out"), &opts);
    assert_eq!(sha, want, "copy through 10 cuts differs");
    let faults = proxy
        .handed_out()
        .iter()
        .filter(|f| matches!(f, fault_proxy::Fault::Cut { .. }))
        .count();
    println!(
        "10 cuts           : {cut_s:7.3} s  {:8.1} MiB/s  fetched {fetched} bytes = {:.5} x size; proxy sent {:.4} x size; {} connections, {faults} cuts",
        mibs(cut_s),
        fetched as f64 / size as f64,
        proxy.bytes_to_clients() as f64 / size as f64,
        proxy.connections()
    );
    println!("peak RSS of this process: {} KiB", peak_rss_kib());
}
