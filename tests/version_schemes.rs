//! Version schemes through the real CLI and service: `rota bundle create` checks the
//! version against the scheme (flag, or `[system] version-scheme` of `--config`), the
//! service's downgrade check orders board versions (`2024.04`, `1.0~rc1`) with the
//! Debian ordering, refuses a version that is not of the configured scheme, and reports
//! the running system's own version (os-release) for a factory slot in `rota status` and
//! over D-Bus.

mod support;
use support::gateway::{path_str, pattern, Gateway};

fn set_system(gw: &Gateway, lines: &str) {
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    let cfg = cfg.replacen("[system]\n", &format!("[system]\n{lines}\n"), 1);
    std::fs::write(gw.path("system.toml"), cfg).unwrap();
}

/// `rota bundle create` of `version`, with extra arguments; returns the run and the path.
fn create(
    gw: &Gateway,
    name: &str,
    version: &str,
    extra: &[&str],
) -> (support::fixture::Run, std::path::PathBuf) {
    let src = gw.bundle_src(name, "acme-gateway", version, &pattern(70_000, 3));
    let out = gw.path(&format!("{name}.rota"));
    let mut args = vec![
        "bundle",
        "create",
        path_str(&src),
        path_str(&out),
        "--key",
        "keys/release.key.pem",
    ];
    args.extend_from_slice(extra);
    (gw.rota(&args), out)
}

#[test]
fn bundle_create_checks_the_version_against_the_scheme() {
    let gw = Gateway::new(false);
    // Semver by default: a board version is refused, and the message says what to set.
    let (r, out) = create(&gw, "b1", "2024.04", &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("\"2024.04\" is not semver")
            && r.stderr().contains("version-scheme = \"debian\""),
        "{}",
        r.stderr()
    );
    assert!(!out.exists(), "no bundle is left behind");
    // The flag, or the scheme of the config named by --config.
    let (r, out) = create(&gw, "b2", "2024.04", &["--version-scheme", "debian"]);
    r.success();
    assert!(out.exists());
    set_system(&gw, "version-scheme = \"debian\"");
    let cfg = gw.path("system.toml");
    let (r, _) = create(
        &gw,
        "b3",
        "5.2+snapshot-20240101",
        &["--config", path_str(&cfg)],
    );
    r.success();
    // A version that is no Debian version either.
    let (r, _) = create(&gw, "b4", "v5.2", &["--version-scheme", "debian"]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("must start with a digit"),
        "{}",
        r.stderr()
    );
    let (r, _) = create(&gw, "b5", "1.0", &["--version-scheme", "dpkg"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
}

#[test]
fn debian_scheme_orders_board_versions_and_reports_the_factory_version() {
    let mut gw = Gateway::new(true);
    std::fs::write(
        gw.path("os-release"),
        "NAME=\"Acme\"\nVERSION_ID=\"2024.04\"\n",
    )
    .unwrap();
    set_system(
        &gw,
        "version-scheme = \"debian\"\nversion-file = \"os-release\"",
    );
    gw.start_service();

    // The factory slot has no record: its version is the running system's own.
    let st = gw.status_json();
    let booted = st["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "booted")
        .unwrap_or_else(|| panic!("{st:#}"));
    assert_eq!(booted["version"], "2024.04", "{st:#}");
    let text = gw.rota(&["status"]).success();
    assert!(text.contains("2024.04"), "{text}");
    assert_eq!(
        gw.busctl(&[
            "get-property",
            "de.pengutronix.rauc",
            "/",
            "de.pengutronix.rauc.Installer",
            "SystemVersion"
        ])
        .success()
        .trim(),
        "s \"2024.04\""
    );

    let bundle = |name: &str, v: &str| {
        let (r, out) = create(&gw, name, v, &["--version-scheme", "debian"]);
        r.success();
        out
    };
    // Older by the Debian order, though not by the text: refused.
    for older in ["2024.01", "2024.04~rc1", "2023.10.5"] {
        let b = bundle(&format!("old-{older}"), older);
        let r = gw.rota(&["install", path_str(&b)]);
        assert_eq!(r.code(), 1, "{older}: {}", r.stderr());
        assert!(
            r.stderr().contains(&format!(
                "bundle version {older} is lower than the booted slot's 2024.04 (debian order"
            )),
            "{}",
            r.stderr()
        );
    }
    // Newer: 2024.10 > 2024.04 (numbers, not text), 2024.04-1 (a revision) > 2024.04.
    for newer in ["2024.04-1", "2024.10"] {
        let b = bundle(&format!("new-{newer}"), newer);
        gw.rota(&["install", path_str(&b)]).success();
    }
}

#[test]
fn a_version_of_another_scheme_is_refused_by_the_install() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let (r, b) = create(&gw, "deb", "2024.04", &["--version-scheme", "debian"]);
    r.success();
    // The service is configured for semver (the default).
    let r = gw.rota(&["install", path_str(&b)]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("version \"2024.04\" is not semver")
            && r.stderr().contains("version-scheme"),
        "{}",
        r.stderr()
    );
}
