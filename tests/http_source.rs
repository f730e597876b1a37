//! `HttpSource` against a real nginx on 127.0.0.1: bit-exact ranges over HTTP, HTTPS with
//! a pinned private CA and mutual TLS; and every answer that retrying cannot fix (wrong CA,
//! missing or foreign client certificate, 404, 403, 401, 416, a server without Range, a
//! bundle replaced mid-install) failing within a few seconds with a message that says why.

mod support;
use rota::source::http::{HttpOptions, HttpSource};
use rota::source::{ByteSource, SourceError};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::gateway::pattern;
use support::nginx::{make_pki, Nginx, BASIC_AUTH};

/// Fatal answers must end the read within this (no retry of an unfixable error).
const FAST: Duration = Duration::from_secs(3);

struct Site {
    dir: tempfile::TempDir,
    ng: Nginx,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        make_pki(&dir.path().join("pki"));
        std::fs::create_dir_all(dir.path().join("www/private")).unwrap();
        std::fs::create_dir_all(dir.path().join("www/auth")).unwrap();
        let ng = Nginx::start(
            &dir.path().join("www"),
            &dir.path().join("pki"),
            &dir.path().join("nginx"),
        );
        Site { dir, ng }
    }
    fn pki(&self, name: &str) -> PathBuf {
        self.dir.path().join("pki").join(name)
    }
    fn publish(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.path().join("www").join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
    fn http(&self, name: &str) -> String {
        self.ng.url(self.ng.http, false, name)
    }
    fn https(&self, name: &str) -> String {
        self.ng.url(self.ng.https, true, name)
    }
    fn mtls(&self, name: &str) -> String {
        self.ng.url(self.ng.mtls, true, name)
    }
}

fn opts() -> HttpOptions {
    HttpOptions {
        retries: 3,
        stall_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        // The range machinery alone: a one-byte probe, nothing held (the installer's
        // metadata prefetch is tested in http_install.rs).
        prefetch: 1,
        ..Default::default()
    }
}

fn source(url: &str, o: &HttpOptions) -> HttpSource {
    HttpSource::new(url, o, Arc::new(AtomicBool::new(false))).unwrap()
}

fn read_all(src: &mut HttpSource, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut r = src.read_range(offset, len).map_err(|e| e.to_string())?;
    r.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Opens `url` and reads its first KiB; returns the error message and how long it took.
fn failure(url: &str, o: &HttpOptions) -> (String, Duration) {
    let t = Instant::now();
    let res = HttpSource::new(url, o, Arc::new(AtomicBool::new(false))).and_then(|mut s| {
        let n = s.len()?.min(1024);
        let mut buf = vec![0u8; n as usize];
        s.read_exact_at(0, &mut buf)
    });
    match res {
        Ok(()) => panic!("{url} was read, but should have failed"),
        Err(e) => {
            assert!(
                matches!(e, SourceError::Fatal(_)),
                "{url}: {e:?} should be a fatal (not retried) error"
            );
            (e.to_string(), t.elapsed())
        }
    }
}

fn assert_fails_fast(url: &str, o: &HttpOptions, expect: &[&str]) {
    let (msg, took) = failure(url, o);
    println!("{url}: {took:?}: {msg}");
    for e in expect {
        assert!(msg.contains(e), "{url}: {msg:?} should mention {e:?}");
    }
    assert!(took < FAST, "{url}: took {took:?} to fail");
}

#[test]
fn ranges_are_bit_exact_over_http() {
    let site = Site::new();
    let data = pattern(3 << 20, 7);
    site.publish("b.rota", &data);
    let mut src = source(&site.http("b.rota"), &opts());
    assert_eq!(src.len().unwrap(), data.len() as u64);
    let mut x = 99u64;
    let mut wanted = 0u64;
    for _ in 0..40 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % data.len() as u64;
        let len = ((x >> 8) % (300 << 10)).min(data.len() as u64 - off);
        let got = read_all(&mut src, off, len).unwrap();
        assert!(
            got == data[off as usize..(off + len) as usize],
            "bytes {off}+{len} differ"
        );
        wanted += len;
    }
    // Edges: the last byte, an empty range, the whole file, read_exact_at.
    let last = data.len() as u64 - 1;
    assert_eq!(read_all(&mut src, last, 1).unwrap(), &data[last as usize..]);
    assert!(read_all(&mut src, 5, 0).unwrap().is_empty());
    assert!(read_all(&mut src, 0, data.len() as u64).unwrap() == data);
    let mut buf = [0u8; 4096];
    src.read_exact_at(1 << 20, &mut buf).unwrap();
    assert_eq!(&buf[..], &data[1 << 20..(1 << 20) + 4096]);
    wanted += 1 + data.len() as u64 + 4096;
    // Reading past the end is refused before any request.
    match src.read_range(last, 2) {
        Err(SourceError::OutOfRange { end, len, .. }) => {
            assert_eq!((end, len), (last + 2, data.len() as u64))
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("read past the end"),
    }
    // Body bytes only: the one-byte size probe plus what was asked for.
    assert_eq!(src.bytes_fetched(), wanted + 1);
    assert_eq!(src.describe(), site.http("b.rota"));
    assert!(src.validator().is_some(), "nginx sends an ETag");
}

#[test]
fn https_with_a_pinned_private_ca_and_mutual_tls() {
    let site = Site::new();
    let data = pattern(1 << 20, 8);
    site.publish("b.rota", &data);
    let pinned = HttpOptions {
        ca: Some(site.pki("ca.pem")),
        ..opts()
    };
    let mut src = source(&site.https("b.rota"), &pinned);
    assert!(read_all(&mut src, 0, data.len() as u64).unwrap() == data);

    let client = HttpOptions {
        cert: Some(site.pki("client.pem")),
        key: Some(site.pki("client.key")),
        ..pinned.clone()
    };
    let mut src = source(&site.mtls("b.rota"), &client);
    assert!(read_all(&mut src, 1000, 70_000).unwrap() == data[1000..71_000]);

    // tls-no-verify: any server certificate, still encrypted.
    let any = HttpOptions {
        no_verify: true,
        ..opts()
    };
    let mut src = source(&site.https("b.rota"), &any);
    assert_eq!(read_all(&mut src, 0, 16).unwrap(), &data[..16]);
}

#[test]
fn tls_failures_fail_fast_with_a_clear_message() {
    let site = Site::new();
    site.publish("b.rota", &pattern(64 << 10, 9));
    let untrusted = ["TLS failure", "not signed by a trusted CA"];
    // The built-in web roots do not know the private CA.
    assert_fails_fast(&site.https("b.rota"), &opts(), &untrusted);
    // Pinned to another CA: the real server is refused too.
    let other = HttpOptions {
        ca: Some(site.pki("otherca.pem")),
        ..opts()
    };
    assert_fails_fast(&site.https("b.rota"), &other, &untrusted);
    // The mTLS port without a client certificate: nginx answers 400 and says why.
    let pinned = HttpOptions {
        ca: Some(site.pki("ca.pem")),
        ..opts()
    };
    assert_fails_fast(
        &site.mtls("b.rota"),
        &pinned,
        &["400", "No required SSL certificate"],
    );
    // A client certificate from a CA the server does not trust.
    let foreign = HttpOptions {
        cert: Some(site.pki("otherclient.pem")),
        key: Some(site.pki("otherclient.key")),
        ..pinned.clone()
    };
    assert_fails_fast(&site.mtls("b.rota"), &foreign, &["400", "certificate"]);
    // A certificate with the wrong key is refused before any connection.
    let mismatched = HttpOptions {
        cert: Some(site.pki("client.pem")),
        key: Some(site.pki("server.key")),
        ..pinned.clone()
    };
    let err = HttpSource::new(&site.mtls("b.rota"), &mismatched, Default::default())
        .err()
        .expect("mismatched key refused");
    assert!(err.to_string().contains("do not go together"), "{err}");
    let half = HttpOptions {
        cert: Some(site.pki("client.pem")),
        ..pinned.clone()
    };
    let err = HttpSource::new(&site.mtls("b.rota"), &half, Default::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("without its key"), "{err}");
    let missing = HttpOptions {
        ca: Some(site.pki("nope.pem")),
        ..opts()
    };
    let err = HttpSource::new(&site.https("b.rota"), &missing, Default::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("CA bundle") && err.to_string().contains("nope.pem"),
        "{err}"
    );
    let not_pem = HttpOptions {
        ca: Some(site.pki("server.ext")),
        ..opts()
    };
    let err = HttpSource::new(&site.https("b.rota"), &not_pem, Default::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("holds no PEM certificate"),
        "{err}"
    );
}

#[test]
fn unfixable_answers_fail_fast_with_a_clear_message() {
    let site = Site::new();
    let data = pattern(256 << 10, 10);
    site.publish("b.rota", &data);
    site.publish("private/b.rota", &data);
    site.publish("auth/b.rota", &data);
    assert_fails_fast(
        &site.http("missing.rota"),
        &opts(),
        &["not found (404 Not Found)", "missing.rota"],
    );
    assert_fails_fast(
        &site.http("private/b.rota"),
        &opts(),
        &["denied (403 Forbidden)"],
    );
    assert_fails_fast(
        &site.http("auth/b.rota"),
        &opts(),
        &["denied (401 Unauthorized)"],
    );
    let wrong = HttpOptions {
        headers: vec!["Authorization: Basic d3Jvbmc6d3Jvbmc=".into()],
        ..opts()
    };
    assert_fails_fast(&site.http("auth/b.rota"), &wrong, &["401"]);
    // The header from the options opens it.
    let auth = HttpOptions {
        headers: vec![BASIC_AUTH.into()],
        ..opts()
    };
    let mut src = source(&site.http("auth/b.rota"), &auth);
    assert!(read_all(&mut src, 0, data.len() as u64).unwrap() == data);

    // 416: the file shrank on the server after the size was learned.
    let p = site.publish("shrinks.rota", &data);
    let mut src = source(&site.http("shrinks.rota"), &opts());
    assert_eq!(src.len().unwrap(), data.len() as u64);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(1000).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    let t = Instant::now();
    let err = read_all(&mut src, 200_000, 1000).unwrap_err();
    assert!(
        err.contains("416") && err.contains("shorter than expected"),
        "{err}"
    );
    assert!(t.elapsed() < FAST);

    // Python's http.server ignores Range and answers 200 with the whole file.
    let root = site.dir.path().join("www");
    let py = PyServer::start(&root);
    assert_fails_fast(
        &py.url("b.rota"),
        &opts(),
        &["does not support Range requests", "(200)"],
    );

    // Bad URLs and headers are refused before any request.
    for (url, o, expect) in [
        ("ftp://127.0.0.1/b.rota", opts(), "unsupported URL scheme"),
        ("http://", opts(), "bad URL"),
        (
            "http://127.0.0.1/b.rota",
            HttpOptions {
                headers: vec!["Broken header".into()],
                ..opts()
            },
            "header 1 of 1 (13 bytes, not shown) is not \"Name: value\"",
        ),
        (
            "http://127.0.0.1/b.rota",
            HttpOptions {
                headers: vec!["X-Bad: a\nb".into()],
                ..opts()
            },
            "HTTP header x-bad",
        ),
    ] {
        let e = HttpSource::new(url, &o, Default::default())
            .err()
            .expect(url);
        assert!(e.to_string().contains(expect), "{url}: {e}");
    }
}

#[test]
fn a_bundle_replaced_on_the_server_is_noticed() {
    let site = Site::new();
    let data = pattern(512 << 10, 11);
    let p = site.publish("b.rota", &data);
    let mut src = source(&site.http("b.rota"), &opts());
    assert!(read_all(&mut src, 0, 1000).unwrap() == data[..1000]);
    // Same size, new content and modification time: a new ETag.
    std::fs::write(&p, pattern(512 << 10, 12)).unwrap();
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000))
        .unwrap();
    drop(f);
    let t = Instant::now();
    let err = read_all(&mut src, 1000, 1000).unwrap_err();
    assert!(err.contains("changed on the server"), "{err}");
    assert!(t.elapsed() < FAST);
    // A different size at the same validator is caught as well (a new source learns anew).
    let mut src = source(&site.http("b.rota"), &opts());
    assert_eq!(src.len().unwrap(), data.len() as u64);
}

/// Before the server ever answered, a refused connection or a name that does not
/// resolve is a wrong URL or a server that is down: said at once, not retried.
#[test]
fn an_unreachable_server_is_reported_at_once() {
    let port = support::nginx::free_port();
    assert_fails_fast(
        &format!("http://127.0.0.1:{port}/b.rota"),
        &opts(),
        &["cannot reach", "connection refused"],
    );
    assert_fails_fast(
        "https://updates.invalid/b.rota",
        &opts(),
        &["cannot reach", "dns error"],
    );
}

#[test]
fn cancel_stops_a_waiting_read() {
    // A proxy that stalls: the read waits, the cancel flag ends it.
    let site = Site::new();
    site.publish("b.rota", &pattern(1 << 20, 13));
    let proxy = support::fault_proxy::FaultProxy::start(site.ng.http);
    use support::fault_proxy::Fault;
    proxy.push([
        Fault::Stall {
            after: 200_000,
            hold: Duration::from_secs(20),
        },
        Fault::Stall {
            after: 0,
            hold: Duration::from_secs(20),
        },
        Fault::Stall {
            after: 0,
            hold: Duration::from_secs(20),
        },
    ]);
    let cancel = Arc::new(AtomicBool::new(false));
    let o = HttpOptions {
        stall_timeout: Duration::from_secs(1),
        retries: 10,
        ..opts()
    };
    let mut src = HttpSource::new(&proxy.url("b.rota"), &o, cancel.clone()).unwrap();
    let c = cancel.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        c.store(true, Ordering::Relaxed);
    });
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let err = src.read_exact_at(0, &mut buf).unwrap_err();
    stopper.join().unwrap();
    assert!(matches!(err, SourceError::Cancelled), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

// `python3 -m http.server`: a real server that ignores Range.
use support::py_http::PyHttp as PyServer;

// ---- Redirects -------------------------------------------------------------------------

/// Options with a configured secret header (and the hawkBit-style token), pinned to the CA.
fn with_token(site: &Site) -> HttpOptions {
    HttpOptions {
        ca: Some(site.pki("ca.pem")),
        headers: vec![
            "X-Fleet-Token: fleet-secret".into(),
            "Authorization: TargetToken target-secret".into(),
        ],
        ..opts()
    }
}

/// Reads all of `url` in a few separate ranges (each one a new request through the chain).
fn read_in_ranges(url: &str, o: &HttpOptions, data: &[u8]) {
    let mut src = source(url, o);
    assert_eq!(src.len().unwrap(), data.len() as u64, "{url}");
    let step = data.len() as u64 / 3;
    for off in [0, step, 2 * step] {
        let len = step.min(data.len() as u64 - off);
        let got = read_all(&mut src, off, len).unwrap();
        assert!(got == data[off as usize..(off + len) as usize], "{url}");
    }
}

#[test]
fn https_to_http_redirects_are_refused() {
    let site = Site::new();
    site.publish("b.rota", &pattern(64 << 10, 21));
    let url = format!(
        "https://127.0.0.1:{}/to-http/b.rota?token=SECRET123",
        site.ng.https
    );
    let (msg, took) = failure(&url, &with_token(&site));
    assert!(took < FAST, "took {took:?}");
    let expect = format!(
        "refusing redirect from https://127.0.0.1:{}/to-http/b.rota?<redacted> to http://127.0.0.1:{}/b.rota?<redacted> (would send the request in clear)",
        site.ng.https, site.ng.http
    );
    assert!(msg.contains(&expect), "{msg}");
    assert!(!msg.contains("SECRET123"), "{msg}");
    // The redirect was asked for, but nothing ever reached the plain-HTTP server.
    assert!(!site.ng.requests_to_at_least(site.ng.https, 1).is_empty());
    assert_eq!(site.ng.requests_to(site.ng.http), Vec::<String>::new());
}

#[test]
fn cross_origin_redirects_drop_the_extra_headers() {
    let site = Site::new();
    let data = pattern(300 << 10, 22);
    site.publish("b.rota", &data);
    let o = with_token(&site);
    // Same origin (a relative Location): the headers follow.
    read_in_ranges(&site.http("same/b.rota"), &o, &data);
    let b_rota = |l: &[String]| l.iter().filter(|l| l.contains(" /b.rota ")).count();
    let same = site.ng.requests_to_when(site.ng.http, |l| b_rota(l) >= 4);
    let served: Vec<_> = same.iter().filter(|l| l.contains(" /b.rota ")).collect();
    assert_eq!(served.len(), 4, "{same:#?}");
    for l in &served {
        assert!(
            l.ends_with("token=fleet-secret auth=TargetToken target-secret"),
            "{l}"
        );
    }
    // Another port is another origin: neither header reaches it, every range still works
    // (and the ETag check holds across the chain).
    read_in_ranges(&site.http("cross/b.rota"), &o, &data);
    let alt = site.ng.requests_to_at_least(site.ng.alt, 4);
    assert_eq!(alt.len(), 4, "{alt:#?}");
    for l in &alt {
        assert!(l.ends_with("/b.rota token=- auth=-"), "{l}");
    }
    // http → https is followed (with the pinned CA), without the headers either.
    read_in_ranges(&site.http("up/b.rota"), &o, &data);
    let tls = site.ng.requests_to_at_least(site.ng.https, 4);
    assert_eq!(tls.len(), 4, "{tls:#?}");
    for l in &tls {
        assert!(l.ends_with("token=- auth=-"), "{l}");
    }
    // The redirecting server itself got them each time.
    for l in site.ng.requests_to(site.ng.http) {
        assert!(l.contains("token=fleet-secret"), "{l}");
    }
}

#[test]
fn cross_origin_redirects_can_be_refused() {
    let site = Site::new();
    let data = pattern(64 << 10, 23);
    site.publish("b.rota", &data);
    let o = HttpOptions {
        cross_origin_redirects: rota::config::CrossOriginRedirects::Refuse,
        ..with_token(&site)
    };
    read_in_ranges(&site.http("same/b.rota"), &o, &data);
    let url = format!("{}?sig=SECRET", site.http("cross/b.rota"));
    assert_fails_fast(
        &url,
        &o,
        &[
            &format!(
                "refusing cross-origin redirect from http://127.0.0.1:{}/cross/b.rota?<redacted> to http://127.0.0.1:{}/b.rota?<redacted>",
                site.ng.http, site.ng.alt
            ),
            "cross-origin-redirects = \"refuse\"",
        ],
    );
    assert_eq!(site.ng.requests_to(site.ng.alt), Vec::<String>::new());
    // The config key parses as documented.
    let c: rota::config::HttpSection =
        toml::from_str("cross-origin-redirects = \"refuse\"").unwrap();
    assert_eq!(
        c.cross_origin_redirects,
        rota::config::CrossOriginRedirects::Refuse
    );
    let c: rota::config::HttpSection = toml::from_str("").unwrap();
    assert_eq!(
        c.cross_origin_redirects,
        rota::config::CrossOriginRedirects::StripHeaders
    );
}

#[test]
fn redirect_loops_end() {
    let site = Site::new();
    assert_fails_fast(
        &site.http("loop/b.rota"),
        &opts(),
        &["redirected more than 10 times"],
    );
    assert_eq!(site.ng.requests_to_at_least(site.ng.http, 11).len(), 11);
}

/// The pollers' client (hawkBit DDI, JSON feed) goes through the same redirect rules.
#[test]
fn the_poller_client_follows_the_same_rules() {
    use rota::update::net::Api;
    let site = Site::new();
    let data = pattern(10_000, 24);
    site.publish("b.rota", &data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let o = with_token(&site);
    let api = Api::new(&o, false).unwrap();
    let size = |url: String| rt.block_on(api.size_of(&url, Default::default()));
    assert_eq!(size(site.http("same/b.rota")).unwrap(), 10_000);
    assert_eq!(size(site.http("cross/b.rota")).unwrap(), 10_000);
    assert_eq!(size(site.http("up/b.rota")).unwrap(), 10_000);
    // The plain server: three redirects and the same-origin target.
    let http: Vec<_> = site
        .ng
        .requests_to_when(site.ng.http, |l| {
            l.len() >= 4 && l.iter().any(|l| l.contains(" /b.rota "))
        })
        .into_iter()
        .filter(|l| l.contains(" /b.rota "))
        .collect();
    // (A busy machine may make the client retry a request: count kinds, not requests.)
    assert!(!http.is_empty(), "the same-origin target was reached");
    assert!(
        http.iter()
            .all(|l| l.ends_with("token=fleet-secret auth=TargetToken target-secret")),
        "{http:#?}"
    );
    for port in [site.ng.alt, site.ng.https] {
        let lines = site.ng.requests_to_at_least(port, 1);
        assert!(!lines.is_empty(), "{lines:#?}");
        assert!(
            lines.iter().all(|l| l.ends_with("token=- auth=-")),
            "{lines:#?}"
        );
    }
    // https → http: refused, nothing reaches the plain server.
    let api = Api::new(&o, true).unwrap();
    let before = site.ng.requests_to(site.ng.http).len();
    let url = format!(
        "https://127.0.0.1:{}/to-http/b.rota?token=SECRET123",
        site.ng.https
    );
    let e = rt
        .block_on(api.size_of(&url, Default::default()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("would send the request in clear"), "{e}");
    assert!(!e.contains("SECRET123"), "{e}");
    assert_eq!(site.ng.requests_to(site.ng.http).len(), before);
    // Refused cross-origin hop.
    let api = Api::new(
        &HttpOptions {
            cross_origin_redirects: rota::config::CrossOriginRedirects::Refuse,
            ..o.clone()
        },
        false,
    )
    .unwrap();
    let e = rt
        .block_on(api.size_of(&site.http("cross/b.rota"), Default::default()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing cross-origin redirect"), "{e}");
}

// ---- Secrets in messages ---------------------------------------------------------------

#[test]
fn messages_do_not_echo_secrets() {
    let site = Site::new();
    site.publish("private/b.rota", b"x");
    let cases = [
        (
            format!("{}?token=SECRET123", site.http("missing.rota")),
            "/missing.rota?<redacted> not found (404",
        ),
        (
            format!("{}?token=SECRET123", site.http("private/b.rota")),
            "/private/b.rota?<redacted> denied (403",
        ),
        (
            format!(
                "http://user:SECRET123@127.0.0.1:{}/missing.rota",
                site.ng.http
            ),
            "/missing.rota not found",
        ),
        (
            "http://127.0.0.1:1/b.rota?token=SECRET123#SECRET123".to_string(),
            "",
        ),
    ];
    for (url, expect) in cases {
        let o = HttpOptions {
            retries: 0,
            ..opts()
        };
        let msg = match HttpSource::new(&url, &o, Default::default()).and_then(|mut s| s.len()) {
            Ok(_) => panic!("{url} was read"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(expect), "{msg:?} should mention {expect:?}");
        assert!(!msg.contains("SECRET123"), "{msg}");
        assert!(msg.contains("127.0.0.1:"), "{msg}");
    }
    // A malformed header is refused without quoting it.
    for h in ["Bearer SECRET123", "X-Token: SECRET123\u{1}"] {
        let o = HttpOptions {
            headers: vec![h.into()],
            ..opts()
        };
        let e = HttpSource::new(&site.http("b.rota"), &o, Default::default())
            .err()
            .expect(h)
            .to_string();
        assert!(!e.contains("SECRET123"), "{e}");
    }
    let src = source(&format!("{}?token=SECRET123", site.http("b.rota")), &opts());
    assert_eq!(
        src.describe(),
        format!("{}?<redacted>", site.http("b.rota"))
    );
}

/// A self-signed server certificate made as most people make one (`openssl req -x509`:
/// basicConstraints CA:TRUE), pinned in `[http] ca`: accepted as curl accepts it; with
/// the wrong host name, or when another certificate is pinned, refused in plain words.
#[test]
fn a_pinned_self_signed_server_certificate_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let selfsigned = |name: &str, san: &str| {
        let out = std::process::Command::new("openssl")
            .current_dir(d)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ])
            .args(["-days", "30", "-subj", &format!("/CN={name}"), "-addext"])
            .arg(format!("subjectAltName={san}"))
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.join(format!("{name}.pem"))
    };
    let good = selfsigned("server", "IP:127.0.0.1,DNS:localhost");
    let misnamed = selfsigned("misnamed", "DNS:other.example");
    let stranger = selfsigned("stranger", "IP:127.0.0.1,DNS:localhost");
    let text = std::fs::read_to_string(&good).unwrap();
    let shown = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("CA:TRUE"),
        "the case of the issue: a CA:TRUE self-signed certificate"
    );
    assert!(text.contains("BEGIN CERTIFICATE"));

    let www = d.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let data = pattern(200_000, 4);
    std::fs::write(www.join("b.rota"), &data).unwrap();
    let (p1, p2) = (support::nginx::free_port(), support::nginx::free_port());
    let server = |port: u16, name: &str| {
        format!(
            "server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {c}; ssl_certificate_key {k}; root {r}; }}\n",
            c = d.join(format!("{name}.pem")).display(),
            k = d.join(format!("{name}.key")).display(),
            r = www.display()
        )
    };
    let mut ng = support::nginx::launch(
        &d.join("nginx"),
        &format!("{}{}", server(p1, "server"), server(p2, "misnamed")),
        &[p1, p2],
    );
    let url = |port: u16| format!("https://127.0.0.1:{port}/b.rota");
    let pinned = |ca: &std::path::Path| HttpOptions {
        ca: Some(ca.to_owned()),
        ..opts()
    };

    // Pinned: read, bit-exact.
    let mut src = source(&url(p1), &pinned(&good));
    assert_eq!(read_all(&mut src, 0, data.len() as u64).unwrap(), data);
    // The same certificate among others in the file.
    let both = d.join("both.pem");
    std::fs::write(
        &both,
        format!("{}{}", std::fs::read_to_string(&stranger).unwrap(), text),
    )
    .unwrap();
    let mut src = source(&url(p1), &pinned(&both));
    assert_eq!(read_all(&mut src, 100, 1000).unwrap(), &data[100..1100]);
    // Pinned, but not valid for the host name.
    assert_fails_fast(
        &url(p2),
        &pinned(&misnamed),
        &["TLS failure", "not valid for this host name"],
    );
    // Another certificate pinned, or none: plain words saying what to do, not the raw
    // CaUsedAsEndEntity.
    for o in [pinned(&stranger), opts()] {
        let (msg, _) = failure(&url(p1), &o);
        assert!(!msg.contains("CaUsedAsEndEntity"), "{msg}");
        assert!(
            msg.contains("not signed by a trusted CA")
                || msg.contains("put exactly that certificate into [http] ca"),
            "{msg}"
        );
    }
    support::procs::terminate(&mut ng);
}
