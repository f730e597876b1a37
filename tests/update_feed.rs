//! The JSON feed poller in the real `rota service`, with the feed and bundles on a real
//! nginx: a newer version is installed (relative bundle URL), followed through reboot and
//! `mark good`, and not installed again; feeds that must not be acted on (other device,
//! size that disagrees with the server, not semver, missing) install nothing and back off;
//! a rolled-back version is not retried; `rota poll` checks at once.

mod support;
use serde_json::{json, Value};
use std::time::Duration;
use support::fixture::event_span;
use support::gateway::{pattern, wait_for, Gateway};
use support::nginx::{make_pki, Nginx};

struct Setup {
    gw: Gateway,
    ng: Nginx,
}

impl Setup {
    fn new(interval: &str) -> Setup {
        let gw = Gateway::new(false);
        make_pki(&gw.path("pki"));
        std::fs::create_dir_all(gw.path("www/bundles")).unwrap();
        let ng = Nginx::start(&gw.path("www"), &gw.path("pki"), &gw.path("nginx"));
        let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
        std::fs::write(
            gw.path("system.toml"),
            format!(
                "{cfg}[update]\npoll = \"{}\"\ninterval = \"{interval}\"\n[http]\nretries = 3\nstall-timeout = \"5s\"\n",
                ng.url(ng.http, false, "stable.json")
            ),
        )
        .unwrap();
        Setup { gw, ng }
    }

    /// Builds and publishes a bundle; returns its image and size.
    fn publish(&self, version: &str, seed: u64) -> (Vec<u8>, u64) {
        let name = format!("v{}", version.replace('.', ""));
        let (path, image) = self.gw.bundle(
            &name,
            "acme-gateway",
            version,
            pattern(1 << 20, seed),
            "release",
        );
        let dest = self.gw.path(&format!("www/bundles/{name}.rota"));
        std::fs::copy(&path, &dest).unwrap();
        (image, std::fs::metadata(&dest).unwrap().len())
    }

    fn feed(&self, feed: Value) {
        // Replace atomically so nginx never serves half a file.
        let tmp = self.gw.path("www/.stable.json");
        std::fs::write(&tmp, feed.to_string()).unwrap();
        std::fs::rename(tmp, self.gw.path("www/stable.json")).unwrap();
    }

    fn requests(&self, path: &str) -> usize {
        std::fs::read_to_string(self.gw.path("nginx/logs/access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("GET {path} ")))
            .count()
    }

    /// Waits until the poller has fetched the feed `n` more times: what it must not do
    /// between polls is then known not to have happened in that many polls.
    fn wait_polls(&self, n: usize) {
        let before = self.requests("/stable.json");
        wait_for(&format!("{n} more polls of the feed"), 120, || {
            self.requests("/stable.json") >= before + n
        });
    }

    fn poller(&self) -> Value {
        std::fs::read(self.gw.path("data/poller.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(json!({}))
    }

    fn wait_poller(&self, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, secs, || pred(&self.poller()));
        self.poller()
    }

    fn wait_install(&self, secs: u64, version: &str, result: &str) -> Value {
        let mut last = json!(null);
        wait_for(&format!("{version} {result}"), secs, || {
            last = self.gw.status_json();
            last["last_install"]["version"] == version && last["last_install"]["result"] == result
        });
        last
    }
}

#[test]
fn a_newer_version_is_installed_confirmed_and_not_installed_again() {
    let mut s = Setup::new("1s");
    let (image, size) = s.publish("1.1.0", 61);
    s.feed(json!({"version": "1.1.0", "url": "bundles/v110.rota", "size": size, "compatible": "acme-gateway", "channel": "stable"}));
    s.gw.start_service();
    s.wait_install(60, "1.1.0", "activated");
    assert_eq!(&s.gw.read("b.img")[..image.len()], &image[..]);
    let p = s.wait_poller(10, "waiting for the reboot", |p| {
        p["last_result"]
            .as_str()
            .unwrap_or("")
            .contains("waits for a reboot")
    });
    assert_eq!(p["tracked"]["phase"], "activated", "{p:#}");
    let fetches = s.requests("/bundles/v110.rota");
    s.wait_polls(3);
    assert_eq!(
        s.requests("/bundles/v110.rota"),
        fetches,
        "not installed twice while waiting for the reboot"
    );

    s.gw.reboot_into("B");
    s.gw.rota(&["mark", "good", "booted"]).success();
    let p = s.wait_poller(10, "confirmed", |p| p["tracked"].is_null());
    println!("poller after mark good: {}", p["last_result"]);
    let p = s.wait_poller(10, "up to date", |p| {
        p["last_result"]
            .as_str()
            .unwrap_or("")
            .contains("up to date")
    });
    assert_eq!(p["last_error"], "");
    // An older version in the feed is not a downgrade target.
    s.feed(json!({"version": "1.0.9", "url": "bundles/v110.rota"}));
    s.wait_poller(60, "the older version seen", |p| {
        p["last_result"]
            .as_str()
            .unwrap_or("")
            .contains("the feed offers 1.0.9")
    });
    s.wait_polls(2);
    assert_eq!(s.requests("/bundles/v110.rota"), fetches);
    assert!(s.poller()["last_result"]
        .as_str()
        .unwrap()
        .contains("running 1.1.0, the feed offers 1.0.9"));
    let _ = s.ng.http;
}

#[test]
fn feeds_that_must_not_be_acted_on_install_nothing() {
    let s = Setup::new("1s");
    let (_, size) = s.publish("1.1.0", 62);
    let cases = [
        (
            json!({"version": "1.1.0", "url": "bundles/v110.rota", "compatible": "other-device"}),
            "the feed is for \"other-device\"",
        ),
        (
            json!({"version": "1.1.0", "url": "bundles/v110.rota", "size": size + 1}),
            "the server has",
        ),
        (
            json!({"version": "1.1", "url": "bundles/v110.rota"}),
            "is not semver",
        ),
        (json!({"version": "1.1.0"}), "not the expected JSON"),
        (
            json!({"version": "1.1.0", "url": "bundles/missing.rota"}),
            "not found (404",
        ),
    ];
    let mut gw_started = false;
    let mut s = s;
    for (feed, expect) in cases {
        s.feed(feed);
        if !gw_started {
            s.gw.start_service();
            gw_started = true;
        } else {
            s.gw.rota(&["poll"]).success();
        }
        let p = s.wait_poller(15, expect, |p| {
            p["last_error"].as_str().unwrap_or("").contains(expect)
                || p["last_result"].as_str().unwrap_or("").contains(expect)
        });
        println!("{expect}: {} / {}", p["last_error"], p["last_result"]);
    }
    // None of them touched the device.
    assert!(
        s.gw.status_json()["last_install"].is_null()
            || s.gw.status_json()["last_install"]["result"] == "failed"
    );
    assert_eq!(s.gw.fw_printenv()["BOOT_ORDER"], "A B");

    // A missing feed: errors back off (1 s interval, then 2, 4, 8 s, each 80-100 %), no
    // hammering: from the first failed poll to the fourth at least 1.6 + 3.2 + 6.4 s pass,
    // where polls every interval would take 3 s. (A busy machine only makes it longer.)
    std::fs::remove_file(s.gw.path("www/stable.json")).unwrap();
    s.gw.stop_service();
    let before = s.requests("/stable.json") as u64;
    s.gw.start_service();
    let span = event_span(before, 4, 120, || s.requests("/stable.json") as u64);
    println!("4 polls of a missing feed over {span:?}");
    assert!(span >= Duration::from_secs(9), "{span:?}");
    let p = s.poller();
    assert!(p["last_error"].as_str().unwrap().contains("404"), "{p:#}");
}

#[test]
fn a_rolled_back_version_is_not_tried_again() {
    let mut s = Setup::new("1s");
    let (_, _) = s.publish("1.1.0", 63);
    s.feed(json!({"version": "1.1.0", "url": "bundles/v110.rota"}));
    s.gw.start_service();
    s.wait_install(60, "1.1.0", "activated");
    // The new slot never came up: U-Boot used up its attempts and went back to A.
    s.gw.stop_service();
    let cfg = s.gw.path("fw_env.config");
    s.gw.cmd(
        "fw_setenv",
        &["-c", cfg.to_str().unwrap(), "BOOT_B_LEFT", "0"],
    )
    .success();
    s.gw.start_service();
    let p = s.wait_poller(15, "rolled back", |p| {
        p["last_result"]
            .as_str()
            .unwrap_or("")
            .contains("rolled back")
    });
    assert!(
        p["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "1.1.0"),
        "{p:#}"
    );
    let fetches = s.requests("/bundles/v110.rota");
    s.wait_polls(3);
    assert_eq!(
        s.requests("/bundles/v110.rota"),
        fetches,
        "1.1.0 is not tried again"
    );
    assert_eq!(s.gw.status_json()["last_install"]["result"], "rolled-back");
    // A fixed release is.
    s.publish("1.1.1", 64);
    s.feed(json!({"version": "1.1.1", "url": "bundles/v111.rota"}));
    s.wait_install(60, "1.1.1", "activated");
    s.gw.reboot_into("B");
}

#[test]
fn rota_poll_checks_at_once() {
    let s = Setup::new("1h");
    let mut s = s;
    s.gw.start_service();
    // The first poll finds no feed; the next would be hours away.
    s.wait_poller(15, "first poll", |p| {
        p["last_error"].as_str().unwrap_or("").contains("404")
    });
    s.publish("1.1.0", 65);
    s.feed(json!({"version": "1.1.0", "url": "bundles/v110.rota"}));
    s.gw.rota(&["poll"]).success();
    s.wait_install(30, "1.1.0", "activated");
    s.gw.stop_service();
}
