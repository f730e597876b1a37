//! `HttpSource` through a fault-injecting proxy in front of a real nginx: connections cut
//! at random offsets, bodies ending short, stalls, `500` answers and flipped bytes. Every
//! run reads the whole bundle bit-exact, and the bytes fetched stay close to its size
//! (the ratio is printed). A flipped byte is delivered as it arrived — the engine's
//! per-chunk hash is what catches it — and the range reads correctly the second time.

mod support;
use rota::source::http::{HttpOptions, HttpSource, RetryNotice};
use rota::source::ByteSource;
use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fault_proxy::{Fault, FaultProxy, RandomPlan};
use support::gateway::pattern;
use support::nginx::{make_pki, Nginx};

const SIZE: usize = 4 << 20;

struct Bench {
    _dir: tempfile::TempDir,
    _ng: Nginx,
    proxy: FaultProxy,
    data: Vec<u8>,
}

fn setup(seed: u64) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    make_pki(&dir.path().join("pki"));
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    let data = pattern(SIZE, seed);
    std::fs::write(dir.path().join("www/b.rota"), &data).unwrap();
    let ng = Nginx::start(
        &dir.path().join("www"),
        &dir.path().join("pki"),
        &dir.path().join("nginx"),
    );
    let proxy = FaultProxy::start(ng.http);
    Bench {
        _dir: dir,
        _ng: ng,
        proxy,
        data,
    }
}

fn opts() -> HttpOptions {
    HttpOptions {
        retries: 4,
        stall_timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_secs(2),
        // The range machinery alone: a one-byte probe, nothing held.
        prefetch: 1,
        ..Default::default()
    }
}

fn open(b: &Bench, o: &HttpOptions) -> HttpSource {
    HttpSource::new(&b.proxy.url("b.rota"), o, Arc::new(AtomicBool::new(false))).unwrap()
}

/// A source that has learned the size already (its one-byte probe passed the proxy
/// unharmed), so queued faults hit the data requests.
fn open_probed(b: &Bench) -> HttpSource {
    let mut src = open(b, &opts());
    assert_eq!(src.len().unwrap(), SIZE as u64);
    src
}

fn read_whole(src: &mut HttpSource) -> Vec<u8> {
    let len = src.len().unwrap();
    let mut out = Vec::with_capacity(len as usize);
    src.read_range(0, len)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn offsets(seed: u64, n: usize, max: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1000 + x % max
        })
        .collect()
}

fn report(what: &str, b: &Bench, src: &HttpSource, took: Duration) -> f64 {
    let ratio = src.bytes_fetched() as f64 / SIZE as f64;
    println!(
        "{what}: {} bytes fetched for a {SIZE}-byte bundle (ratio {ratio:.4}), {} sent by the proxy (headers and bytes lost in cuts included), {} connections, {took:?}",
        src.bytes_fetched(),
        b.proxy.bytes_to_clients(),
        b.proxy.connections()
    );
    ratio
}

#[test]
fn ten_cuts_at_random_offsets() {
    let b = setup(21);
    // Each request's answer is cut (RST) somewhere in its first 1 MiB.
    let mut src = open_probed(&b);
    b.proxy.push(
        offsets(5, 10, 1 << 20)
            .into_iter()
            .map(|after| Fault::Cut { after }),
    );
    let t = Instant::now();
    let got = read_whole(&mut src);
    let ratio = report("10 cuts", &b, &src, t.elapsed());
    assert!(got == b.data, "the bundle read through cuts differs");
    assert!(
        b.proxy.connections() >= 11,
        "every cut needs a new connection"
    );
    // Resuming from the byte reached: nothing but the 1-byte probe is fetched twice.
    assert!(ratio < 1.001, "ratio {ratio}");
}

#[test]
fn bodies_that_end_short() {
    let b = setup(22);
    let mut src = open_probed(&b);
    b.proxy.push(
        offsets(6, 6, 2 << 20)
            .into_iter()
            .map(|after| Fault::Short { after }),
    );
    let t = Instant::now();
    let got = read_whole(&mut src);
    let ratio = report("6 short reads", &b, &src, t.elapsed());
    assert!(got == b.data);
    assert!(ratio < 1.001, "ratio {ratio}");
}

#[test]
fn stalls_are_detected_and_resumed() {
    let b = setup(23);
    let hold = Duration::from_secs(30);
    let mut src = open_probed(&b);
    b.proxy.push([
        Fault::Stall {
            after: 300_000,
            hold,
        },
        Fault::Stall {
            after: 700_000,
            hold,
        },
        Fault::Stall { after: 10, hold },
    ]);
    let t = Instant::now();
    let got = read_whole(&mut src);
    let took = t.elapsed();
    let ratio = report("3 stalls", &b, &src, took);
    assert!(got == b.data);
    assert!(ratio < 1.001, "ratio {ratio}");
    // Three stall timeouts of 0.8 s plus short backoffs, far below the 30 s hold.
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn server_errors_are_retried_within_the_budget() {
    let b = setup(24);
    // The range is cut, then three reconnections are answered 500.
    let mut src = open_probed(&b);
    b.proxy.push([
        Fault::Cut { after: 200_000 },
        Fault::Status500,
        Fault::Status500,
        Fault::Status500,
    ]);
    let t = Instant::now();
    let got = read_whole(&mut src);
    report("cut + 3 x 500", &b, &src, t.elapsed());
    assert!(got == b.data);

    // More 500s in a row than the retry budget: a clear error, quickly.
    let b = setup(25);
    b.proxy.push(vec![Fault::Status500; 10]);
    let o = HttpOptions {
        retries: 2,
        ..opts()
    };
    let mut src = open(&b, &o);
    let t = Instant::now();
    let err = src.len().unwrap_err().to_string();
    assert!(
        err.contains("after 3 failed attempts in a row: server answered 500"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(b.proxy.connections(), 3);
}

/// Each retry is told to the `on_retry` hook with its reason and count, before the wait;
/// a read without faults tells it nothing.
#[test]
fn each_retry_is_told_with_its_reason() {
    let b = setup(27);
    let heard = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let h = heard.clone();
    let o = HttpOptions {
        on_retry: Some(RetryNotice::new(move |why| {
            h.lock().unwrap().push(why.to_owned())
        })),
        ..opts()
    };
    let mut src = open(&b, &o);
    assert_eq!(src.len().unwrap(), SIZE as u64);
    assert!(heard.lock().unwrap().is_empty(), "no fault, no notice");
    b.proxy
        .push([Fault::Cut { after: 200_000 }, Fault::Status500]);
    let got = read_whole(&mut src);
    assert!(got == b.data);
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(heard[0].ends_with("(retry 1 of 4)"), "{heard:?}");
    assert!(
        heard[1].starts_with("server answered 500") && heard[1].ends_with("(retry 2 of 4)"),
        "{heard:?}"
    );
}

#[test]
fn a_flipped_byte_is_delivered_as_is_and_the_range_reads_right_again() {
    let b = setup(26);
    // Byte 500 000 of the range's answer lies in its body.
    let mut src = open_probed(&b);
    b.proxy.push([Fault::Flip { at: 500_000 }]);
    let first = read_whole(&mut src);
    let diff: Vec<usize> = (0..SIZE).filter(|&i| first[i] != b.data[i]).collect();
    assert_eq!(diff.len(), 1, "exactly one byte differs");
    let i = diff[0];
    assert_eq!(
        first[i],
        b.data[i] ^ 0xFF,
        "the byte arrives inverted, not dropped or fixed"
    );
    // What the engine does on a chunk hash mismatch: read that chunk again.
    let chunk = (i / 65536 * 65536) as u64;
    let mut again = vec![0u8; 65536];
    src.read_exact_at(chunk, &mut again).unwrap();
    assert!(again[..] == b.data[chunk as usize..chunk as usize + 65536]);
}

/// The engine's way: 1 MiB runs of 64 KiB chunks, each checked and re-read on mismatch,
/// through a seeded mix of every fault.
#[test]
fn a_random_mix_of_faults_still_reads_bit_exact() {
    for seed in [1u64, 2, 3] {
        let b = setup(30 + seed);
        b.proxy.random(RandomPlan {
            seed,
            percent: 60,
            max_faults: 12,
            min_offset: 100,
            max_offset: 1 << 20,
            stall: Duration::from_secs(20),
            min_range: 0,
        });
        let mut src = open(&b, &opts());
        let t = Instant::now();
        let len = src.len().unwrap();
        let mut out = vec![0u8; len as usize];
        let mut rereads = 0;
        const CHUNK: usize = 65536;
        for run in (0..len as usize).step_by(1 << 20) {
            let run_len = (1 << 20).min(len as usize - run);
            let mut r = src.read_range(run as u64, run_len as u64).unwrap();
            r.read_exact(&mut out[run..run + run_len]).unwrap();
            drop(r);
            for c in (run..run + run_len).step_by(CHUNK) {
                let end = (c + CHUNK).min(len as usize);
                while out[c..end] != b.data[c..end] {
                    rereads += 1;
                    assert!(
                        rereads < 20,
                        "seed {seed}: chunk at {c} keeps arriving wrong"
                    );
                    src.read_exact_at(c as u64, &mut out[c..end]).unwrap();
                }
            }
        }
        let faults: Vec<_> = b
            .proxy
            .handed_out()
            .into_iter()
            .filter(|f| *f != Fault::Pass)
            .collect();
        let ratio = report(
            &format!(
                "random mix seed {seed} ({} faults, {rereads} chunk re-reads)",
                faults.len()
            ),
            &b,
            &src,
            t.elapsed(),
        );
        println!("  faults: {faults:?}");
        assert!(out == b.data, "seed {seed}: not bit-exact");
        assert!(!faults.is_empty());
        assert!(ratio < 1.10, "seed {seed}: ratio {ratio}");
    }
}
