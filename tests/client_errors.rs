//! What a user waiting on the command line sees when something fails early: a host that
//! does not resolve or a port nobody listens on is said at once, on the first attempt
//! (not after the retry budget); `rota status` afterwards says how far the install got
//! instead of printing blanks; `--config` given to a command that does not read it is
//! refused with the reason instead of being ignored.

mod support;
use std::time::{Duration, Instant};
use support::gateway::Gateway;

#[test]
fn unreachable_servers_are_reported_at_once_and_status_says_how_far_it_got() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    // A port that was free a moment ago: nothing listens there.
    let port = support::nginx::free_port();
    for (url, want) in [
        ("https://updates.invalid/x.rota".to_owned(), "dns error"),
        (
            format!("http://127.0.0.1:{port}/x.rota"),
            "connection refused",
        ),
    ] {
        let start = Instant::now();
        let r = gw.rota(&["install", &url]);
        let took = start.elapsed();
        assert_eq!(r.code(), 1, "{url}: {}", r.stderr());
        assert!(r.stderr().contains(want), "{url}: {}", r.stderr());
        // The default retry budget (8 attempts with backoff) takes well over 10 s.
        assert!(took < Duration::from_secs(10), "{url}: took {took:?}");

        let status = gw.rota(&["status"]).success();
        let line = status
            .lines()
            .find(|l| l.starts_with("last install:"))
            .unwrap_or_else(|| panic!("{status}"));
        assert!(
            line.starts_with(
                "last install: failed before the bundle was read (failed), transaction "
            ),
            "{status}"
        );
        assert!(!status.contains(" →  ("), "{status}");
    }
}

#[test]
fn config_is_refused_where_it_would_be_ignored() {
    let gw = Gateway::new(false);
    let cfg = gw.path("system.toml");
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["--config", cfg, "status"],
        vec!["status", "--config", cfg],
        vec!["--config", cfg, "install", "x.rota"],
        vec!["--config", cfg, "mark", "good"],
        vec!["--config", cfg, "bundle", "info", "x.rota"],
    ] {
        let r = gw.rota(&args);
        assert_eq!(r.code(), 2, "{args:?}: {}", r.stderr());
        assert!(
            r.stderr().contains("--config") && r.stderr().contains("does not apply to `rota "),
            "{args:?}: {}",
            r.stderr()
        );
    }
    // Where it is read, it is used: a config that does not exist is named.
    let r = gw.rota(&["--config", "/nonexistent/system.toml", "mcu", "list"]);
    assert_ne!(r.code(), 0);
    assert!(
        r.stderr().contains("/nonexistent/system.toml"),
        "{}",
        r.stderr()
    );
}
