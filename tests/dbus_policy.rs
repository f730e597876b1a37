//! The shipped system-bus policy (`dbus/io.rota.conf`, `dbus/de.pengutronix.rauc.conf`)
//! enforced by a real `dbus-daemon`, in front of the real `rota service`.
//!
//! The bus config has Debian's system-bus defaults (every method call denied unless a
//! policy file opens it) and `<include>`s the shipped files unchanged. Calls are made with
//! `busctl` as real users, switched with `setpriv`: an unprivileged user (no groups), and
//! a member of the policy's group (`rota`). Users and the group are created with
//! `useradd`/`groupadd` when missing, so the tests need root.

mod pkg_support;

use pkg_support::{busctl, Bus, Caller, Gateway, Service};
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::{Duration, Instant};

const READER: &str = "rota-test-reader";
const OPERATOR: &str = "rota-test-operator";

/// Holds the machine-wide lock on user and group administration: `useradd`, `usermod`,
/// `gpasswd` and `systemd-sysusers` fail or lose each other's changes when they run at
/// once. A file lock, not a mutex: nextest runs each test in its own process, and CI runs
/// this binary for the host and under qemu-user for two ARM targets at the same time.
fn accounts_lock() -> nix::fcntl::Flock<std::fs::File> {
    let path = std::env::temp_dir().join("rota-test-accounts.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {}: {e}", path.display()))
}

fn policy_path(name: &str) -> String {
    format!("{}/dbus/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The group the shipped native policy opens to (the documented default is "rota").
fn policy_group() -> String {
    let text = std::fs::read_to_string(policy_path("io.rota.conf")).unwrap();
    let start = text
        .find("<policy group=\"")
        .expect("io.rota.conf has a <policy group=...> section")
        + "<policy group=\"".len();
    let end = start + text[start..].find('"').unwrap();
    text[start..end].to_owned()
}

fn run_admin(args: &[&str]) {
    let out = pkg_support::tool(args[0], "passwd")
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes sure the group and both users exist, with the operator (only) in the group.
fn accounts() -> (Caller, Caller) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the D-Bus policy tests create users and switch to them: run them as root"
    );
    let _lock = accounts_lock();
    let group = policy_group();
    if nix::unistd::Group::from_name(&group).unwrap().is_none() {
        run_admin(&["groupadd", "--system", &group]);
    }
    for (name, groups) in [(READER, ""), (OPERATOR, group.as_str())] {
        if nix::unistd::User::from_name(name).unwrap().is_none() {
            let mut args = vec![
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
            ];
            if !groups.is_empty() {
                args.extend(["--groups", groups]);
            }
            args.push(name);
            run_admin(&args);
        } else if !groups.is_empty() {
            run_admin(&["usermod", "--append", "--groups", groups, name]);
        }
    }
    let g = nix::unistd::Group::from_name(&group).unwrap().unwrap();
    assert!(
        !g.mem.iter().any(|m| m == READER),
        "{READER} must not be a member of {group}"
    );
    let caller = |name: &str, with_groups| {
        let u = nix::unistd::User::from_name(name).unwrap().unwrap();
        Caller {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            with_groups,
        }
    };
    (caller(READER, false), caller(OPERATOR, true))
}

/// A gateway with rauc-compat on, a bus with the shipped policies, the service on it.
fn setup() -> (Gateway, Bus, Service) {
    setup_with("", &[])
}

/// [`setup`] with more config (whole tables, after `[dbus]`) and service environment.
fn setup_with(extra: &str, env: &[(&str, Option<&str>)]) -> (Gateway, Bus, Service) {
    let gw = Gateway::new(&format!(
        "rauc-compat = true\ngroup = \"{}\"\n{extra}",
        policy_group()
    ));
    let policies = format!(
        "{}\n  <include>{}</include>\n  <include>{}</include>\n",
        pkg_support::SYSTEM_BUS_DEFAULTS,
        policy_path("io.rota.conf"),
        policy_path("de.pengutronix.rauc.conf")
    );
    let bus = Bus::start(gw.dir.path(), &policies);
    let svc = Service::start(&gw, &bus, env);
    (gw, bus, svc)
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} should succeed: {}", text(out));
}

/// Refused by dbus-daemon's policy: `org.freedesktop.DBus.Error.AccessDenied` sent by the
/// bus itself, "Rejected send message" — the service never saw the call.
#[track_caller]
fn assert_denied_by_bus(out: &Output, what: &str) {
    let err = pkg_support::reply_error(out);
    assert!(
        !out.status.success()
            && err
                .as_ref()
                .is_some_and(|(sender, name, message)| sender == "org.freedesktop.DBus"
                    && name == "org.freedesktop.DBus.Error.AccessDenied"
                    && message.starts_with("Rejected send message")),
        "{what} should be denied by the bus policy, got {err:?}: {}",
        text(out)
    );
}

/// Let through by the bus, refused by the service with an `io.rota.Error.*` whose message
/// contains `needle`.
#[track_caller]
fn assert_refused_by_service(out: &Output, what: &str, needle: &str) {
    let err = pkg_support::reply_error(out);
    assert!(
        !out.status.success()
            && err
                .as_ref()
                .is_some_and(|(sender, name, message)| sender != "org.freedesktop.DBus"
                    && name.starts_with("io.rota.Error.")
                    && message.contains(needle)),
        "{what} should reach the service and fail with {needle:?}, got {err:?}: {}",
        text(out)
    );
}

const NATIVE: [&str; 3] = ["io.rota", "/io/rota", "io.rota.Agent1"];
const RAUC: [&str; 3] = ["de.pengutronix.rauc", "/", "de.pengutronix.rauc.Installer"];

fn call(bus: &Bus, who: Option<Caller>, target: [&str; 3], rest: &[&str]) -> Output {
    let mut args = vec!["call", target[0], target[1], target[2]];
    args.extend_from_slice(rest);
    busctl(bus, who, &args)
}

/// `GetStatus` as parsed JSON.
fn status(bus: &Bus) -> serde_json::Value {
    let out = busctl(
        bus,
        None,
        &[
            "--json=short",
            "call",
            NATIVE[0],
            NATIVE[1],
            NATIVE[2],
            "GetStatus",
        ],
    );
    assert_ok(&out, "GetStatus as root");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_str(reply["data"][0].as_str().unwrap()).unwrap()
}

fn wait_for_result(bus: &Bus, want: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let st = status(bus);
        let result = st["last_install"]["result"].as_str().unwrap_or("");
        if result == want {
            return st;
        }
        assert!(
            result != "failed" && start.elapsed() < Duration::from_secs(120),
            "install did not reach {want:?}: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn unprivileged_user_may_read_but_not_install_mark_or_own() {
    let (reader, _) = accounts();
    let (gw, bus, _svc) = setup();
    let r = Some(reader);
    let bundle = gw.bundle("update", "1.1.0", &pkg_support::pattern(200_000, 7));
    let bundle = bundle.to_str().unwrap();
    let env_before = std::fs::read(gw.path("uboot.env")).unwrap();
    let slot_b_before = std::fs::read(gw.path("b.img")).unwrap();

    // Reads: native.
    let out = call(&bus, r, NATIVE, &["GetStatus"]);
    assert_ok(&out, "GetStatus");
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme-gateway"));
    let out = call(&bus, r, NATIVE, &["GetSlotStatus"]);
    assert_ok(&out, "GetSlotStatus");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rootfs.1"));
    let out = busctl(
        &bus,
        r,
        &["get-property", NATIVE[0], NATIVE[1], NATIVE[2], "Operation"],
    );
    assert_ok(&out, "Get(Operation)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "s \"idle\"");
    assert_ok(
        &call(
            &bus,
            r,
            ["io.rota", "/io/rota", "org.freedesktop.DBus.Properties"],
            &["GetAll", "s", "io.rota.Agent1"],
        ),
        "GetAll",
    );
    assert_ok(
        &busctl(&bus, r, &["introspect", NATIVE[0], NATIVE[1]]),
        "Introspect",
    );
    assert_ok(
        &call(
            &bus,
            r,
            ["io.rota", "/io/rota", "org.freedesktop.DBus.Peer"],
            &["Ping"],
        ),
        "Ping",
    );

    // Reads: RAUC compat.
    assert_ok(
        &call(&bus, r, RAUC, &["GetSlotStatus"]),
        "rauc GetSlotStatus",
    );
    assert_ok(&call(&bus, r, RAUC, &["GetPrimary"]), "rauc GetPrimary");
    let out = busctl(
        &bus,
        r,
        &["get-property", RAUC[0], RAUC[1], RAUC[2], "Operation"],
    );
    assert_ok(&out, "rauc Get(Operation)");
    let out = call(&bus, r, RAUC, &["Info", "s", bundle]);
    assert_ok(&out, "rauc Info of a bundle the caller can read");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1.1.0"));

    // Writes: all refused by the bus, none reaches the service.
    let denied: [(&[&str; 3], Vec<&str>, &str); 8] = [
        (
            &NATIVE,
            vec!["Install", "sa{sv}", bundle, "0"],
            "native Install",
        ),
        (&NATIVE, vec!["Mark", "ss", "good", "booted"], "native Mark"),
        (
            &NATIVE,
            vec!["Mark", "ss", "active", "other"],
            "native Mark active",
        ),
        (&NATIVE, vec!["Cancel"], "native Cancel"),
        (&NATIVE, vec!["Poll"], "native Poll"),
        (
            &RAUC,
            vec!["InstallBundle", "sa{sv}", bundle, "0"],
            "rauc InstallBundle",
        ),
        (&RAUC, vec!["Install", "s", bundle], "rauc Install"),
        (&RAUC, vec!["Mark", "ss", "good", "booted"], "rauc Mark"),
    ];
    for (target, rest, what) in denied {
        assert_denied_by_bus(&call(&bus, r, *target, &rest), what);
    }
    // Properties are read-only for everyone but root and the group.
    assert_denied_by_bus(
        &busctl(
            &bus,
            r,
            &[
                "set-property",
                NATIVE[0],
                NATIVE[1],
                NATIVE[2],
                "Operation",
                "s",
                "idle",
            ],
        ),
        "Set(Operation)",
    );
    // A method the policy does not list stays closed (deny by default).
    assert_denied_by_bus(
        &call(&bus, r, NATIVE, &["NoSuchMethod"]),
        "an unlisted method",
    );
    // Nobody but root may own the service names.
    for name in ["io.rota", "de.pengutronix.rauc"] {
        let out = busctl(
            &bus,
            r,
            &[
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "RequestName",
                "su",
                name,
                "0",
            ],
        );
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("not allowed to own"),
            "owning {name} must be refused: {}",
            text(&out)
        );
    }

    // Nothing happened: no install, env and inactive slot untouched.
    let st = status(&bus);
    assert_eq!(st["operation"], "idle", "{st:#}");
    assert!(st["last_install"].is_null(), "{st:#}");
    assert_eq!(std::fs::read(gw.path("uboot.env")).unwrap(), env_before);
    assert_eq!(std::fs::read(gw.path("b.img")).unwrap(), slot_b_before);
}

#[test]
fn group_member_may_install_and_mark() {
    let (_, operator) = accounts();
    let (gw, bus, _svc) = setup();
    let op = Some(operator);
    let image = pkg_support::pattern(300_000, 11);
    let bundle = gw.bundle("update", "1.1.0", &image);

    let out = call(
        &bus,
        op,
        NATIVE,
        &["Install", "sa{sv}", bundle.to_str().unwrap(), "0"],
    );
    assert_ok(&out, "Install by a member of the group");
    let st = wait_for_result(&bus, "activated");
    assert_eq!(st["last_install"]["slot"], "rootfs.1", "{st:#}");
    let slot_b = std::fs::read(gw.path("b.img")).unwrap();
    assert_eq!(&slot_b[..image.len()], &image[..], "slot B holds the image");
    assert_eq!(st["primary"], "rootfs.1", "{st:#}");

    // Mark: the member may put the old slot back first, through either API.
    assert_ok(
        &call(&bus, op, NATIVE, &["Mark", "ss", "active", "booted"]),
        "Mark active booted by a member",
    );
    assert_eq!(status(&bus)["primary"], "rootfs.0");
    assert_ok(
        &call(&bus, op, RAUC, &["Mark", "ss", "active", "other"]),
        "rauc Mark active other by a member",
    );
    assert_eq!(status(&bus)["primary"], "rootfs.1");

    // Cancel with nothing running reaches the service (and fails there, not on the bus).
    let out = call(&bus, op, NATIVE, &["Cancel"]);
    let err = pkg_support::reply_error(&out);
    assert!(
        err.as_ref()
            .is_none_or(|(sender, _, _)| sender != "org.freedesktop.DBus"),
        "Cancel by a member must pass the bus, got {err:?}"
    );

    // Without its supplementary groups the same user is an ordinary caller again.
    let stripped = Some(Caller {
        with_groups: false,
        ..operator
    });
    assert_denied_by_bus(
        &call(&bus, stripped, NATIVE, &["Mark", "ss", "good", "booted"]),
        "Mark by the same user outside the group",
    );
}

/// A RAUC client that runs as its own system user (rauc-hawkbit-updater: `User=rauc-hawkbit`,
/// a user with its own primary group, made by meta-rauc's recipe) is refused by the bus
/// until it joins the policy's group; with the shipped sysusers.d line
/// (`systemd/rota-rauc-hawkbit.sysusers`, applied by the real `systemd-sysusers`) it may
/// call InstallBundle and the native Install.
#[test]
fn a_client_with_its_own_user_gets_in_through_the_shipped_sysusers_line() {
    // One client user per architecture: the host and the qemu-user runs of this test
    // overlap in CI, and each takes its user out of the group when it starts.
    let hawkbit_user = format!("rota-test-hawkbit-{}", std::env::consts::ARCH);
    let hawkbit_user = hawkbit_user.as_str();
    let (reader, _) = accounts();
    let group = policy_group();
    let client = {
        let _lock = accounts_lock();
        match nix::unistd::User::from_name(hawkbit_user).unwrap() {
            None => run_admin(&[
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/",
                "--shell",
                "/bin/false",
                hawkbit_user,
            ]),
            Some(_) => {
                // From an earlier run: out of the group again, as a fresh image has it.
                let g = nix::unistd::Group::from_name(&group).unwrap().unwrap();
                if g.mem.iter().any(|m| m == hawkbit_user) {
                    run_admin(&["gpasswd", "--delete", hawkbit_user, &group]);
                }
            }
        }
        let u = nix::unistd::User::from_name(hawkbit_user).unwrap().unwrap();
        Caller {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            with_groups: true,
        }
    };
    let (gw, bus, _svc) = setup();
    let b1 = gw.bundle("update", "1.1.0", &pkg_support::pattern(150_000, 5));
    let b1 = b1.to_str().unwrap();
    let b2 = gw.bundle("update2", "1.2.0", &pkg_support::pattern(150_000, 6));
    let b2 = b2.to_str().unwrap();

    // What the issue saw: AccessDenied ... member="InstallBundle".
    assert_denied_by_bus(
        &call(
            &bus,
            Some(client),
            RAUC,
            &["InstallBundle", "sa{sv}", b1, "0"],
        ),
        "InstallBundle by a client user outside the group",
    );

    // The shipped line, for this test's user name, through the real systemd-sysusers.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/rota-rauc-hawkbit.sysusers"
    ))
    .unwrap();
    let lines: Vec<String> = shipped
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("rauc-hawkbit", hawkbit_user))
        .collect();
    assert_eq!(lines, [format!("m {hawkbit_user} {group}")], "{shipped}");
    {
        let _lock = accounts_lock();
        let mut cmd = pkg_support::tool("systemd-sysusers", "systemd");
        cmd.arg("--inline").args(&lines);
        pkg_support::run_ok(&mut cmd);
    }

    assert_ok(
        &call(
            &bus,
            Some(client),
            RAUC,
            &["InstallBundle", "sa{sv}", b1, "0"],
        ),
        "InstallBundle by the client user in the group",
    );
    let st = wait_for_result(&bus, "activated");
    assert_eq!(st["last_install"]["version"], "1.1.0", "{st:#}");
    assert_ok(
        &call(&bus, Some(client), NATIVE, &["Install", "sa{sv}", b2, "0"]),
        "native Install by the client user in the group",
    );
    let start = Instant::now();
    loop {
        let st = status(&bus);
        if st["last_install"]["version"] == "1.2.0" && st["last_install"]["result"] == "activated" {
            break;
        }
        assert!(
            st["last_install"]["result"] != "failed" && start.elapsed() < Duration::from_secs(120),
            "{st:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everyone else is still refused.
    assert_denied_by_bus(
        &call(
            &bus,
            Some(reader),
            RAUC,
            &["InstallBundle", "sa{sv}", b1, "0"],
        ),
        "InstallBundle by a user outside the group",
    );
    assert_denied_by_bus(
        &call(&bus, Some(reader), NATIVE, &["Install", "sa{sv}", b1, "0"]),
        "Install by a user outside the group",
    );
}

#[test]
fn service_refuses_a_bundle_the_caller_cannot_read() {
    let (reader, operator) = accounts();
    let (gw, bus, _svc) = setup();
    let bundle = gw.bundle("update", "1.1.0", &pkg_support::pattern(100_000, 3));
    let private = gw.path("private");
    std::fs::create_dir(&private).unwrap();
    let hidden = private.join("update.rota");
    std::fs::copy(&bundle, &hidden).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let hidden = hidden.to_str().unwrap();

    // The member passes the bus, but the service checks the file as the caller.
    assert_refused_by_service(
        &call(
            &bus,
            Some(operator),
            NATIVE,
            &["Install", "sa{sv}", hidden, "0"],
        ),
        "Install of a root-only bundle by a member",
        "cannot read",
    );
    assert_refused_by_service(
        &call(
            &bus,
            Some(operator),
            RAUC,
            &["InstallBundle", "sa{sv}", hidden, "0"],
        ),
        "rauc InstallBundle of a root-only bundle by a member",
        "cannot read",
    );
    let st = status(&bus);
    assert!(st["last_install"].is_null(), "{st:#}");

    // Root may install it.
    assert_ok(
        &call(&bus, None, NATIVE, &["Install", "sa{sv}", hidden, "0"]),
        "Install by root",
    );
    wait_for_result(&bus, "activated");

    // Reading a bundle by path is open to everyone, so it must check the caller too.
    assert_refused_by_service(
        &call(&bus, Some(reader), RAUC, &["Info", "s", hidden]),
        "rauc Info of a root-only bundle by an unprivileged user",
        "cannot read",
    );
    assert_refused_by_service(
        &call(
            &bus,
            Some(reader),
            RAUC,
            &["InspectBundle", "sa{sv}", hidden, "0"],
        ),
        "rauc InspectBundle of a root-only bundle by an unprivileged user",
        "cannot read",
    );
}

/// The inspection calls are open to everyone, so they must not lend the device's
/// credentials to a caller's server, must not read without bound or block on special
/// files, and must not let a caller tie up the service's threads.
#[test]
fn inspection_by_anyone_uses_no_device_credentials_and_cannot_stall_the_service() {
    let (reader, operator) = accounts();
    let served = tempfile::tempdir().unwrap();
    let http = pkg_support::http::FileServer::start(served.path(), true);
    let (gw, bus, mut svc) = setup_with(
        "[http]\nheaders = [\"X-Fleet-Token: fleet-secret-42\"]\nstall-timeout = \"30s\"\n",
        &[],
    );
    let bundle = gw.bundle("update", "1.1.0", &pkg_support::pattern(100_000, 7));
    std::fs::copy(&bundle, served.path().join("update.rota")).unwrap();
    let url = http.url("update.rota");

    // A device operator inspects with the device's identity; anyone else without it.
    assert_ok(
        &call(
            &bus,
            Some(operator),
            RAUC,
            &["InspectBundle", "sa{sv}", &url, "0"],
        ),
        "InspectBundle by a member",
    );
    let with_token = http
        .heads()
        .iter()
        .filter(|h| h.contains("fleet-secret-42"))
        .count();
    assert!(
        with_token > 0,
        "the member's inspection carries the configured header"
    );
    let before = http.heads().len();
    let out = call(
        &bus,
        Some(reader),
        RAUC,
        &["InspectBundle", "sa{sv}", &url, "0"],
    );
    assert_ok(&out, "InspectBundle by an unprivileged user");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1.1.0"));
    let heads = http.heads();
    assert!(
        heads.len() > before,
        "the reader's inspection reached the server"
    );
    assert!(
        heads[before..].iter().all(|h| !h.contains("x-fleet-token")),
        "the fleet token went to a server an unprivileged caller chose: {:?}",
        &heads[before..]
    );

    // Special files: a CA "file" that never ends, a FIFO nobody writes to. Both answer at
    // once (busctl would time out after 30 s otherwise).
    let https = format!("https://127.0.0.1:{}/update.rota", http.port);
    let out = call(
        &bus,
        Some(reader),
        RAUC,
        &[
            "InspectBundle",
            "sa{sv}",
            &https,
            "1",
            "tls-ca",
            "s",
            "/dev/zero",
        ],
    );
    assert_refused_by_service(&out, "tls-ca /dev/zero", "not a regular file");
    let fifo = gw.path("trap.rota");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let fifo = fifo.to_str().unwrap();
    assert_refused_by_service(
        &call(&bus, Some(reader), RAUC, &["Info", "s", fifo]),
        "Info of a FIFO",
        "not a regular file (it is a FIFO)",
    );
    // A client key the caller cannot read is not presented for it.
    assert_refused_by_service(
        &call(
            &bus,
            Some(reader),
            RAUC,
            &[
                "InspectBundle",
                "sa{sv}",
                &url,
                "2",
                "tls-cert",
                "s",
                "/etc/shadow",
                "tls-key",
                "s",
                "/etc/shadow",
            ],
        ),
        "tls-key the caller cannot read",
        "cannot read /etc/shadow",
    );

    // Thread exhaustion: a server that accepts and never answers holds inspections; past
    // the limit more are refused at once, and root is still served.
    let held = tempfile::tempdir().unwrap();
    let tarpit = pkg_support::http::FileServer::start(held.path(), false);
    std::fs::copy(&bundle, held.path().join("slow.rota")).unwrap();
    let slow = tarpit.url("slow.rota");
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.arg(format!("--reuid={}", reader.uid))
            .arg(format!("--regid={}", reader.gid))
            .arg("--clear-groups")
            .args([
                "busctl",
                &format!("--address={}", bus.address),
                "--timeout=120",
                "call",
            ])
            .args(RAUC)
            .args(["InspectBundle", "sa{sv}", &slow, "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        waiting.push(cmd.spawn().unwrap());
    }
    tarpit.wait_requests(4, 60);
    let out = call(
        &bus,
        Some(reader),
        RAUC,
        &["InspectBundle", "sa{sv}", &slow, "0"],
    );
    let err = pkg_support::reply_error(&out);
    assert!(
        err.as_ref().is_some_and(|(_, name, msg)| name == "io.rota.Error.Busy" && msg.contains("try again")),
        "a fifth inspection should be refused at once: {err:?}"
    );
    assert_eq!(status(&bus)["operation"], "idle");
    // SIGTERM stops the service although inspections are still blocked in reads.
    let st = svc.stop();
    assert!(st.success(), "{st}: {}", svc.log_text());
    for mut w in waiting {
        let _ = w.kill();
        let _ = w.wait();
    }
    drop(tarpit);
}

/// `rota install` believes only the service: a `Completed` sent by anyone else — even
/// straight to the client's connection — is ignored, and success is checked with a call.
#[test]
fn rota_install_ignores_a_forged_completed_signal() {
    let (reader, _) = accounts();
    let (gw, bus, _svc) = setup();
    let served = tempfile::tempdir().unwrap();
    let http = pkg_support::http::FileServer::start(served.path(), false);
    let image = pkg_support::pattern(300_000, 11);
    let bundle = gw.bundle("update", "1.1.0", &image);
    std::fs::copy(&bundle, served.path().join("update.rota")).unwrap();

    let mut cli = pkg_support::rota_command();
    cli.args(["install", &http.url("update.rota")])
        .env("ROTA_CONFIG", gw.path("system.toml"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut cli = cli.spawn().unwrap();
    // The install is running (held by the server) once the service asked for the bundle.
    let start = Instant::now();
    while http.requests() == 0 {
        if cli.try_wait().unwrap().is_some() {
            let out = cli.wait_with_output().unwrap();
            panic!(
                "rota install ended before the service asked for the bundle: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no request reached the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let txn = loop {
        let out = busctl(
            &bus,
            Some(reader),
            &[
                "get-property",
                NATIVE[0],
                NATIVE[1],
                NATIVE[2],
                "Transaction",
            ],
        );
        let t = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("s ")
            .trim_matches('"')
            .to_owned();
        if !t.is_empty() {
            break t;
        }
    };
    // The attacker signals every connection on the bus, broadcast and unicast.
    let names = busctl(&bus, Some(reader), &["list", "--unique"]);
    let names: Vec<String> = String::from_utf8_lossy(&names.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n.starts_with(':'))
        .collect();
    assert!(!names.is_empty());
    let forge = |dest: Option<&str>| {
        let mut args = vec!["emit".to_owned()];
        if let Some(d) = dest {
            args.push(format!("--destination={d}"));
        }
        args.extend(
            [
                NATIVE[1],
                NATIVE[2],
                "Completed",
                "sis",
                &txn,
                "0",
                "FORGED success",
            ]
            .map(str::to_owned),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        busctl(&bus, Some(reader), &args)
    };
    forge(None);
    for n in &names {
        forge(Some(n));
    }
    // Give a fooled client the chance to exit (a correct one keeps waiting).
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && cli.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        cli.try_wait().unwrap().is_none(),
        "rota install exited on a forged signal while the install was held: {:?}",
        cli.wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    );
    http.open();
    let out = cli.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("FORGED"), "{text}");
    assert_eq!(status(&bus)["last_install"]["result"], "activated");
    assert_eq!(
        &std::fs::read(gw.path("b.img")).unwrap()[..image.len()],
        &image[..]
    );
}

/// The watchdog is pinged only while the service really answers: with the bus daemon
/// frozen, its own D-Bus interface cannot answer and the pings stop; they resume after.
#[test]
fn the_watchdog_stops_when_the_service_cannot_answer_on_the_bus() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let (_gw, bus, svc) = setup_with(
        "",
        &[
            ("NOTIFY_SOCKET", sock_path.to_str()),
            ("WATCHDOG_USEC", Some("1000000")),
        ],
    );
    let next = |secs: u64| -> Option<String> {
        sock.set_read_timeout(Some(Duration::from_secs(secs)))
            .unwrap();
        let mut buf = [0u8; 4096];
        sock.recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let wait_ping = |secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if next(1).is_some_and(|m| m.contains("WATCHDOG=1")) {
                return true;
            }
        }
        false
    };
    assert!(wait_ping(30), "no watchdog ping from a healthy service");
    /// Thaws the bus daemon however the test ends, so the service can be stopped.
    struct Frozen(nix::unistd::Pid);
    impl Drop for Frozen {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    let daemon = nix::unistd::Pid::from_raw(bus.pid() as i32);
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let frozen = Frozen(daemon);
    let misses = |log: &str| log.matches("not pinging").count();
    // Two missed pings in the log: everything sent before the first is drained.
    let start = Instant::now();
    while misses(&svc.log_text()) < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            svc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while sock.recv(&mut buf).is_ok() {}
    let mut got = Vec::new();
    while misses(&svc.log_text()) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            svc.log_text()
        );
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(frozen);
    sock.set_nonblocking(false).unwrap();
    assert!(
        got.iter().all(|m| !m.contains("WATCHDOG=1")),
        "pinged while the service could not answer: {got:?}"
    );
    assert!(
        wait_ping(30),
        "pings resume once the bus answers: {}",
        svc.log_text()
    );
}
