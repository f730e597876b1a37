//! Installs from a real nginx on 127.0.0.1: HTTP, HTTPS with a private CA, mutual TLS,
//! fail-fast errors, and adaptive reuse of the running slot.

mod support;
use std::time::{Duration, Instant};
use support::fixture::Fixture;
use support::gateway::{pattern, Gateway};
use support::nginx::{make_pki, Nginx};

fn setup(extra_http: &str) -> (Gateway, Nginx) {
    setup_with(Gateway::new(false), extra_http)
}

/// [`setup`] on a gateway of one's own making.
fn setup_with(mut gw: Gateway, extra_http: &str) -> (Gateway, Nginx) {
    let pki = gw.path("pki");
    make_pki(&pki);
    std::fs::create_dir_all(gw.path("www")).unwrap();
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    std::fs::write(
        gw.path("system.toml"),
        format!("{cfg}[http]\nretries = 3\nstall-timeout = \"5s\"\n{extra_http}"),
    )
    .unwrap();
    let ng = Nginx::start(&gw.path("www"), &pki, &gw.path("nginx"));
    gw.start_service();
    (gw, ng)
}

fn publish(gw: &Gateway, name: &str, version: &str, image: Vec<u8>) -> Vec<u8> {
    publish_with(gw, name, version, image, &[])
}

/// [`publish`] with more `rota bundle create` arguments.
fn publish_with(
    gw: &Gateway,
    name: &str,
    version: &str,
    image: Vec<u8>,
    extra: &[&str],
) -> Vec<u8> {
    let (path, image) = gw.bundle_with(name, "acme-gateway", version, image, "release", extra);
    std::fs::copy(&path, gw.path(&format!("www/{name}.rota"))).unwrap();
    image
}

fn json_events(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn installs_over_http_and_https_with_a_private_ca() {
    let (gw, ng) = setup(&format!("ca = \"{}\"\n", gw_pki_ca()));
    let image = publish(&gw, "v11", "1.1.0", pattern(3 << 20, 31));
    let r = gw.rota(&["install", "--json", &ng.url(ng.http, false, "v11.rota")]);
    let out = r.success();
    let last = json_events(&out).pop().unwrap();
    assert_eq!(last["result"], 0, "{out}");
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    // HTTPS with the pinned private CA.
    let image = publish(&gw, "v12", "1.2.0", pattern(3 << 20, 32));
    gw.rota(&["install", &ng.url(ng.https, true, "v12.rota")])
        .success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
}

/// The config's CA path is relative to system.toml's directory.
fn gw_pki_ca() -> String {
    "pki/ca.pem".into()
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let (gw, ng) =
        setup("ca = \"pki/ca.pem\"\ncert = \"pki/client.pem\"\nkey = \"pki/client.key\"\n");
    let image = publish(&gw, "m", "1.1.0", pattern(1 << 20, 33));
    gw.rota(&["install", &ng.url(ng.mtls, true, "m.rota")])
        .success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
}

#[test]
fn unrecoverable_answers_fail_fast_with_a_clear_message() {
    let (gw, ng) = setup("");
    publish(&gw, "v", "1.1.0", pattern(1 << 20, 34));
    let env_before = gw.read("uboot.env");
    let cases = [
        (ng.url(ng.http, false, "missing.rota"), "not found (404"),
        (ng.url(ng.https, true, "v.rota"), "TLS failure"),
        (ng.url(ng.mtls, true, "v.rota"), "TLS failure"),
    ];
    for (url, expect) in cases {
        let t = Instant::now();
        let r = gw.rota(&["install", &url]);
        assert_eq!(r.code(), 1, "{url}");
        assert!(
            r.stderr().contains(expect),
            "{url}: {:?} should mention {expect:?}",
            r.stderr()
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{url} took {:?}",
            t.elapsed()
        );
    }
    // A server that ignores Range (Python's http.server) is refused, not half-used.
    let py = support::py_http::PyHttp::start(&gw.path("www"));
    let r = gw.rota(&["install", &py.url("v.rota")]);
    drop(py);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("does not support Range requests"),
        "{}",
        r.stderr()
    );
    assert_eq!(
        gw.read("uboot.env"),
        env_before,
        "nothing activated or disabled by failed fetches"
    );
}

/// v2 = v1 with 1 % of its 4 KiB blocks changed: a device running v1 downloads only the
/// chunks that differ.
#[test]
fn adaptive_update_downloads_only_changed_chunks() {
    let (mut gw, ng) = setup("");
    let size = 8 << 20;
    let v1 = pattern(size, 40);
    let mut v2 = v1.clone();
    let blocks = size / 4096;
    let mut x = 12345u64;
    for _ in 0..blocks / 100 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let b = (x >> 33) as usize % blocks;
        v2[b * 4096] ^= 0xFF;
    }
    publish(&gw, "v1", "1.1.0", v1.clone());
    gw.rota(&["install", &ng.url(ng.http, false, "v1.rota")])
        .success();
    // Reboot into B (which now runs v1); v2 goes to A.
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "rota.slot=B\n").unwrap();
    gw.start_service();
    gw.rota(&["mark", "good", "booted"]).success();
    publish(&gw, "v2", "1.2.0", v2.clone());
    let out = gw
        .rota(&["install", "--json", &ng.url(ng.http, false, "v2.rota")])
        .success();
    let ev = json_events(&out);
    let last_progress = ev.iter().rev().find(|e| e["event"] == "progress").unwrap();
    let downloaded = last_progress["bytes_downloaded"].as_u64().unwrap();
    let reused = last_progress["bytes_reused"].as_u64().unwrap();
    let ratio = downloaded as f64 / size as f64;
    println!(
        "adaptive: {downloaded} of {size} bytes downloaded ({:.1} %), {reused} reused",
        ratio * 100.0
    );
    assert_eq!(downloaded + reused, size as u64);
    assert!(
        ratio < 0.30,
        "1 % of blocks changed, {:.1} % downloaded",
        ratio * 100.0
    );
    assert_eq!(
        &gw.read("a.img")[..size],
        &v2[..],
        "slot A holds v2 bit-exact"
    );
}

/// Opening a bundle costs one round trip: the first request fetches the bundle's head
/// (manifest, signature, chunk index), then come the end-of-archive check and the data.
/// (Before, every metadata read was a request of its own: about ten before the data.)
#[test]
fn a_network_install_reads_all_bundle_metadata_with_its_first_request() {
    let (gw, ng) = setup("");
    let image = publish(&gw, "meta", "1.1.0", pattern(3 << 20, 43));
    gw.rota(&["install", &ng.url(ng.http, false, "meta.rota")])
        .success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    // A marker request after the install: once its line is logged, so are the install's.
    let marker = ng.url(ng.http, false, "marker-after-install");
    let _ = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", &marker])
        .status();
    ng.requests_to_when(ng.http, |l| {
        l.iter().any(|x| x.contains("marker-after-install"))
    });
    let lines = ng.range_log();
    let bundle: Vec<&String> = lines.iter().filter(|l| l.contains("/meta.rota")).collect();
    assert_eq!(
        bundle.len(),
        3,
        "head (metadata), end-of-archive check, one data range: {bundle:#?}"
    );
}

/// Format 1. Data that moved keeps being reused: rota recorded slot B's chunk index when it
/// installed v1 there, so v2 — v1 shifted by one chunk, with one new chunk in front — is
/// found chunk by chunk wherever it lies in the running slot. Without that record (the
/// same update onto a factory-like slot) the same-offset probe finds almost nothing: the
/// record is what saves the bytes.
#[test]
fn moved_chunks_are_found_anywhere_in_the_running_slot_by_its_recorded_index() {
    let (mut gw, ng) = setup("");
    let chunk = 64 << 10;
    let size = 4 << 20;
    let v1 = pattern(size, 41);
    let mut v2 = pattern(chunk, 42);
    v2.extend_from_slice(&v1[..size - chunk]);
    publish_with(&gw, "v1", "1.1.0", v1.clone(), &["--format", "1"]);
    gw.rota(&["install", &ng.url(ng.http, false, "v1.rota")])
        .success();
    assert!(
        gw.path("data/slot-index/rootfs.1").exists(),
        "the install recorded what slot B holds"
    );
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "rota.slot=B\n").unwrap();
    gw.start_service();
    gw.rota(&["mark", "good", "booted"]).success();
    publish_with(&gw, "v2", "1.2.0", v2.clone(), &["--format", "1"]);
    let install = |gw: &Gateway| {
        let out = gw
            .rota(&["install", "--json", &ng.url(ng.http, false, "v2.rota")])
            .success();
        let ev = json_events(&out);
        let p = ev.iter().rev().find(|e| e["event"] == "progress").unwrap();
        (
            p["bytes_downloaded"].as_u64().unwrap(),
            p["bytes_reused"].as_u64().unwrap(),
        )
    };
    let (downloaded, reused) = install(&gw);
    println!("moved data, recorded index: {downloaded} downloaded, {reused} reused");
    assert_eq!(downloaded, chunk as u64, "only the new chunk is downloaded");
    assert_eq!(reused, (size - chunk) as u64);
    assert_eq!(
        &gw.read("a.img")[..size],
        &v2[..],
        "slot A holds v2 bit-exact"
    );
    assert!(gw.path("data/slot-index/rootfs.0").exists());

    // The same update without the running slot's record: probing at the same offsets.
    std::fs::remove_file(gw.path("data/slot-index/rootfs.1")).unwrap();
    std::fs::write(gw.path("a.img"), vec![0u8; gw.read("a.img").len()]).unwrap();
    let (downloaded, _) = install(&gw);
    println!("moved data, no record: {downloaded} downloaded");
    assert!(
        downloaded >= (size - 2 * chunk) as u64,
        "without the record the moved chunks are not found ({downloaded} downloaded)"
    );
    assert_eq!(
        &gw.read("a.img")[..size],
        &v2[..],
        "slot A holds v2 bit-exact"
    );
}

/// (bytes done, bytes downloaded, bytes reused) of the running or last install, from the
/// service's `Progress` property `(ustttttt)`.
fn progress_bytes(gw: &Gateway) -> (u64, u64, u64) {
    let text = gw.property("Progress");
    let f: Vec<u64> = text
        .split_whitespace()
        .rev()
        .take(6)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // From the end: eta, rate, reused, downloaded, total, done.
    (f[5], f[3], f[2])
}

/// `kill -9` of the service in the middle of a download: the next start resumes the same
/// install from the journal, takes what already landed in the slot (re-checked chunk by
/// chunk) and downloads only the rest — at most a few chunks more than were missing.
#[test]
fn killed_service_resumes_a_download_refetching_only_a_few_chunks() {
    let mut gw = Gateway::new(false);
    let http = gw.slow_http(&gw.path("www"), 2 << 20);
    let size = 8 << 20;
    let (url, image) = gw.slow_bundle(&http, "big", "1.1.0", size);
    gw.start_service();
    gw.call("Install", &["sa{sv}", &url, "0"]).success();
    let mut done_at_kill = 0;
    support::gateway::wait_for("4 MiB to land", 60, || {
        done_at_kill = progress_bytes(&gw).0;
        done_at_kill > 4 << 20
    });
    gw.kill_service();
    assert!(
        done_at_kill < size as u64,
        "the install finished before the kill"
    );
    gw.start_service();
    support::gateway::wait_for("the resumed install to finish", 60, || {
        gw.status_json()["last_install"]["result"] == "activated"
    });
    assert_eq!(&gw.read("b.img")[..size], &image[..], "slot B is bit-exact");
    let (_, downloaded, reused) = progress_bytes(&gw);
    let chunk = 64 << 10;
    let missing = size as u64 - done_at_kill;
    println!(
        "resume after kill -9 at {done_at_kill} of {size} bytes: {downloaded} downloaded, {reused} reused ({} bytes fetched again)",
        downloaded.saturating_sub(missing)
    );
    assert!(
        reused + 2 * chunk >= done_at_kill,
        "only {reused} of the {done_at_kill} bytes written before the kill were reused"
    );
    assert!(
        downloaded <= missing + 4 * chunk,
        "{downloaded} bytes downloaded for the {missing} that were missing"
    );
}

/// A token in the URL's query, credentials in its userinfo, or a malformed header never
/// show up in what the service tells others: the CLI's error, `LastError`, `rota status`
/// and `status.json`. The path still does, so the message stays useful.
#[test]
fn failed_installs_do_not_reveal_secrets() {
    let (gw, ng) = setup("");
    let secret_free = |what: &str, text: &str| {
        assert!(
            !text.contains("SECRET123") && !text.contains("SECRET456"),
            "{what} reveals a secret: {text}"
        );
    };
    let check_everywhere = |expect: &str| {
        let last = gw.property("LastError");
        assert!(
            last.contains(expect),
            "LastError {last:?} should mention {expect:?}"
        );
        secret_free("LastError", &last);
        let st = gw.status_json();
        secret_free("rota status --json", &st.to_string());
        assert!(st["last_error"].as_str().unwrap().contains(expect), "{st}");
        let file = std::fs::read_to_string(gw.path("data/status.json")).unwrap();
        secret_free("status.json", &file);
    };
    for (url, expect) in [
        (
            format!("{}?token=SECRET123", ng.url(ng.http, false, "missing.rota")),
            "/missing.rota?<redacted> not found (404",
        ),
        (
            format!(
                "http://device:SECRET123@127.0.0.1:{}/missing.rota#SECRET123",
                ng.http
            ),
            &format!(
                "http://127.0.0.1:{}/missing.rota#<redacted> not found (404",
                ng.http
            ),
        ),
    ] {
        let r = gw.rota(&["install", &url]);
        assert_eq!(r.code(), 1, "{url}");
        assert!(
            r.stderr().contains(expect),
            "{:?} should mention {expect:?}",
            r.stderr()
        );
        secret_free("rota install", &r.stderr());
        secret_free("rota install", &r.stdout());
        check_everywhere(expect);
    }
    // A header without its colon (a bare token) given with the D-Bus install request.
    gw.call(
        "Install",
        &[
            "sa{sv}",
            &ng.url(ng.http, false, "missing.rota"),
            "1",
            "http-headers",
            "as",
            "1",
            "Bearer SECRET456",
        ],
    )
    .success();
    let expect = "extra HTTP header 1 of 1 (16 bytes, not shown)";
    support::gateway::wait_for("the install to fail", 20, || {
        gw.property("LastError").contains(expect)
    });
    check_everywhere(expect);
}

/// Boots slot B running v1 (installed over HTTP from `v1.rota`, marked good); returns
/// what that install counted: (downloaded, reused, zero).
fn running_v1(gw: &mut Gateway, ng: &Nginx, v1: Vec<u8>, extra: &[&str]) -> (u64, u64, u64) {
    publish_with(gw, "v1", "1.1.0", v1, extra);
    let counts = install_counts(gw, &ng.url(ng.http, false, "v1.rota"));
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "rota.slot=B\n").unwrap();
    gw.start_service();
    gw.rota(&["mark", "good", "booted"]).success();
    counts
}

/// What `rota bundle info --json` says of the one image of the published bundle `name`.
fn image_info(gw: &Gateway, name: &str) -> serde_json::Value {
    let bundle = gw.path(&format!("www/{name}.rota"));
    let out = gw
        .rota(&["bundle", "info", "--json", bundle.to_str().unwrap()])
        .success();
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    info["images"][0].clone()
}

/// (downloaded, reused, zero) from the last progress event of `rota install --json`.
fn install_counts(gw: &Gateway, url: &str) -> (u64, u64, u64) {
    let out = gw.rota(&["install", "--json", url]).success();
    let ev = json_events(&out);
    let p = ev.iter().rev().find(|e| e["event"] == "progress").unwrap();
    (
        p["bytes_downloaded"].as_u64().unwrap(),
        p["bytes_reused"].as_u64().unwrap(),
        p["bytes_zero"].as_u64().unwrap_or(0),
    )
}

/// v1 with a new 4 KiB block inserted at `at` (each shifting what follows), cut to size.
fn with_inserted_blocks(v1: &[u8], at: &[usize], seed: u64) -> Vec<u8> {
    let mut v2 = Vec::with_capacity(v1.len());
    let mut from = 0;
    for (i, a) in at.iter().enumerate() {
        v2.extend_from_slice(&v1[from..*a]);
        v2.extend_from_slice(&pattern(4096, seed + i as u64));
        from = *a;
    }
    v2.extend_from_slice(&v1[from..]);
    v2.truncate(v1.len());
    v2
}

/// Format 2: blocks are found by content anywhere in the running slot, at 4 KiB
/// granularity and with no record of what it holds: three inserted blocks shift
/// everything after them, and only the frames holding new blocks are fetched.
#[test]
fn moved_blocks_are_found_by_content_anywhere_in_the_running_slot() {
    let (mut gw, ng) = setup("");
    let size = 4 << 20;
    let v1 = pattern(size, 51);
    running_v1(&mut gw, &ng, v1.clone(), &[]);
    let v2 = with_inserted_blocks(&v1, &[100 << 10, (1 << 20) + 8192, 3 << 20], 900);
    publish(&gw, "v2", "1.2.0", v2.clone());
    let (downloaded, reused, _) = install_counts(&gw, &ng.url(ng.http, false, "v2.rota"));
    println!("moved blocks: {downloaded} downloaded, {reused} reused");
    // Random data does not compress: each of the 3 frames (64 KiB) holding a new block.
    assert!(downloaded <= 3 * (64 << 10) + 1024, "{downloaded}");
    assert!(reused >= (size - 3 * (64 << 10)) as u64, "{reused}");
    assert_eq!(
        &gw.read("a.img")[..size],
        &v2[..],
        "slot A holds v2 bit-exact"
    );
}

/// Built against the image the devices run (`--delta-from`), a patch carries the three
/// new blocks (random: they do not compress) and the device gathers the rest of their
/// frame from its running slot: the update downloads those blocks and nothing else.
#[test]
fn a_bundle_built_against_the_running_image_downloads_only_new_blocks() {
    let (mut gw, ng) = setup("");
    let size = 4 << 20;
    let v1 = pattern(size, 52);
    running_v1(&mut gw, &ng, v1.clone(), &[]);
    let v2 = with_inserted_blocks(&v1, &[100 << 10, (1 << 20) + 8192, 3 << 20], 950);
    std::fs::write(gw.path("v1-base.img"), &v1).unwrap();
    let base = gw.path("v1-base.img");
    publish_with(
        &gw,
        "v2",
        "1.2.0",
        v2.clone(),
        &["--delta-from", base.to_str().unwrap()],
    );
    // The dry run says what the install will cost, and writes nothing.
    let env_before = gw.read("uboot.env");
    let a_before = gw.read("a.img");
    let url = ng.url(ng.http, false, "v2.rota");
    let out = gw.rota(&["install", "--dry-run", "--json", &url]).success();
    let est: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let bundle_size = std::fs::metadata(gw.path("www/v2.rota")).unwrap().len();
    println!("dry run: {est} (bundle {bundle_size} bytes)");
    assert_eq!(est["reuse"], (size - 3 * 4096) as u64, "{est}");
    assert_eq!(est["zero"], 0, "{est}");
    assert_eq!(est["total"], size as u64, "{est}");
    let download = est["download"].as_u64().unwrap();
    assert!(
        (3 * 4096..3 * 4096 + (256 << 10)).contains(&download),
        "the new blocks and the bundle's metadata: {download}"
    );
    assert_eq!(
        gw.read("uboot.env"),
        env_before,
        "a dry run activates nothing"
    );
    assert_eq!(gw.read("a.img"), a_before, "a dry run writes nothing");
    let text = gw.rota(&["install", "--dry-run", &url]).success();
    assert!(
        text.starts_with(&format!("would download {download} bytes")),
        "{text}"
    );

    let (downloaded, reused, _) = install_counts(&gw, &url);
    println!("delta-from: {downloaded} downloaded, {reused} reused");
    assert!(
        (3 * 4096..3 * 4096 + 256).contains(&downloaded),
        "the three new blocks, in one patch: {downloaded}"
    );
    assert_eq!(reused, (size - 3 * 4096) as u64);
    assert_eq!(
        &gw.read("a.img")[..size],
        &v2[..],
        "slot A holds v2 bit-exact"
    );
}

/// The largest frames the format allows (8 MiB, what `--delta-from` packs by default):
/// a full install of them lands bit-exact on a slot with nothing in common, and an
/// update built against that image fetches three new blocks by patch, the device
/// gathering the rest of each 8 MiB frame from its running slot.
#[test]
fn the_largest_frames_install_whole_and_by_patch() {
    let size = (17 << 20) + 4096;
    let gw = Gateway::with(
        Fixture::builder()
            .slot_size(24 << 20)
            .dbus("rauc-compat = false"),
    );
    let (mut gw, ng) = setup_with(gw, "");
    // Text-like bytes with random blocks strewn in: compressible, yet every block differs.
    let mut v1: Vec<u8> = (0..size)
        .map(|i| b"gateway firmware, release one\n"[i % 30])
        .collect();
    for (n, b) in (0..size / 4096).enumerate() {
        let at = b * 4096;
        v1[at..at + 64].copy_from_slice(&pattern(64, 7000 + n as u64));
    }
    let big = ["--frame-size", "8388608", "--zstd-level", "1"];
    let (downloaded, reused, _) = running_v1(&mut gw, &ng, v1.clone(), &big);
    let info = image_info(&gw, "v1");
    assert_eq!(info["frames"], 3, "8 MiB, 8 MiB and the rest: {info}");
    assert_eq!(reused, 0, "slot A had nothing of v1");
    assert!(
        downloaded < size as u64 / 2,
        "frames are compressed: {downloaded}"
    );
    assert_eq!(
        &gw.read("b.img")[..size],
        &v1[..],
        "slot B holds v1 bit-exact"
    );

    let v2 = with_inserted_blocks(&v1, &[1 << 20, (9 << 20) + 8192, 16 << 20], 960);
    std::fs::write(gw.path("v1-base.img"), &v1).unwrap();
    let base = gw.path("v1-base.img");
    let args = ["--delta-from", base.to_str().unwrap(), "--zstd-level", "1"];
    publish_with(&gw, "v2", "1.2.0", v2.clone(), &args);
    let info = image_info(&gw, "v2");
    assert_eq!(info["frames"], 3, "{info}");
    assert_eq!(info["patches"], 3, "one per frame: {info}");
    let (downloaded, reused, _) = install_counts(&gw, &ng.url(ng.http, false, "v2.rota"));
    assert!(
        (3 * 4096..3 * 4096 + 1024).contains(&downloaded),
        "the three new blocks (random, so uncompressed) and the patches' framing: {downloaded}"
    );
    assert_eq!(reused, (size - 3 * 4096) as u64);
    assert_eq!(
        &gw.read("a.img")[..size],
        &v2[..],
        "slot A holds v2 bit-exact"
    );
}

/// Zero runs cost nothing over the air and are written as zeros: an image half zeros
/// downloads only its other half (random, so uncompressed), and the progress says where
/// every byte came from.
#[test]
fn zero_runs_are_written_without_a_download() {
    let (gw, ng) = setup("");
    let mut image = pattern(1 << 20, 61);
    image.extend(vec![0u8; 2 << 20]);
    image.extend(pattern(1 << 20, 62));
    // Whatever slot B held must not shine through the zero run.
    let b_len = gw.read("b.img").len();
    std::fs::write(gw.path("b.img"), vec![0xA5u8; b_len]).unwrap();
    publish(&gw, "z", "1.1.0", image.clone());
    let (downloaded, reused, zero) = install_counts(&gw, &ng.url(ng.http, false, "z.rota"));
    println!("zero runs: {downloaded} downloaded, {reused} reused, {zero} zero");
    assert_eq!(zero, 2 << 20);
    assert_eq!(reused, 0);
    assert!(
        (2 << 20..(2 << 20) + 4096).contains(&downloaded),
        "{downloaded}"
    );
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    let st = gw.status_json();
    assert_eq!(st["last_install"]["result"], "activated", "{st}");
}

/// A device without a CA store (no ca-certificates; first seen on the emulated gateway,
/// tests/gateway_vm.rs) still installs from an http:// URL; only https needs trust
/// anchors, and says so.
#[test]
fn plain_http_installs_without_a_system_ca_store() {
    let mut gw = Gateway::new(false);
    let pki = gw.path("pki");
    make_pki(&pki);
    std::fs::create_dir_all(gw.path("www")).unwrap();
    let ng = Nginx::start(&gw.path("www"), &pki, &gw.path("nginx"));
    let none = gw.path("no-ca-store");
    gw.spawn_service_with(|c| {
        c.env("SSL_CERT_FILE", &none).env("SSL_CERT_DIR", &none);
    });
    gw.wait_for_service();
    let image = publish(&gw, "v11", "1.1.0", pattern(1 << 20, 41));
    gw.rota(&["install", &ng.url(ng.http, false, "v11.rota")])
        .success();
    assert_eq!(&gw.read("b.img")[..image.len()], &image[..]);
    let image = publish(&gw, "v12", "1.2.0", pattern(1 << 20, 42));
    let r = gw.rota(&["install", &ng.url(ng.https, true, "v12.rota")]);
    let out = format!("{}{}", r.stdout(), r.stderr());
    assert_eq!(r.code(), 1, "{out}");
    assert!(
        out.contains("no trusted CA certificates"),
        "https names the missing trust anchors: {out}"
    );
    assert_ne!(&gw.read("b.img")[..image.len()], &image[..]);
}
