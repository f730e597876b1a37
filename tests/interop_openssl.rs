//! Keys and signatures interoperate with stock OpenSSL, both directions.

mod support;
use std::process::Command;
use support::gateway::{path_str, pattern, rota_cmd};

fn run(c: &mut Command) -> String {
    let out = c
        .output()
        .expect("command runs (openssl must be installed)");
    assert!(
        out.status.success(),
        "{:?}: {}{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> String {
    run(Command::new("openssl").current_dir(dir).args(args))
}

fn rota(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    rota_cmd().current_dir(dir).args(args).output().unwrap()
}

fn make_src(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/img"), pattern(200_000, 3)).unwrap();
    std::fs::write(dir.join("src/manifest.toml"), "[update]\ncompatible = \"x\"\nversion = \"1.0.0\"\n[[image]]\nslot-class = \"rootfs\"\nfile = \"img\"\n").unwrap();
}

#[test]
fn openssl_keys_sign_bundles_rota_verifies() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_src(d);
    openssl(
        d,
        &["genpkey", "-algorithm", "ed25519", "-out", "o.key.pem"],
    );
    openssl(
        d,
        &["pkey", "-in", "o.key.pem", "-pubout", "-out", "o.pub.pem"],
    );
    assert!(rota(
        d,
        &["bundle", "create", "src", "b.rota", "--key", "o.key.pem"]
    )
    .status
    .success());
    let out = rota(d, &["bundle", "verify", "b.rota", "--keyring", "o.pub.pem"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // tar lists it, manifest first, signature second.
    let list = run(Command::new("tar").current_dir(d).args(["tf", "b.rota"]));
    let names: Vec<&str> = list.lines().collect();
    assert_eq!(
        names,
        ["manifest.toml", "manifest.toml.sig", "img.blocks", "img"]
    );
    // OpenSSL verifies the signature of the manifest as extracted by tar.
    run(Command::new("tar").current_dir(d).args([
        "xf",
        "b.rota",
        "manifest.toml",
        "manifest.toml.sig",
    ]));
    let v = openssl(
        d,
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "o.pub.pem",
            "-rawin",
            "-in",
            "manifest.toml",
            "-sigfile",
            "manifest.toml.sig",
        ],
    );
    assert!(v.contains("Signature Verified Successfully"), "{v}");
    // ed25519 is deterministic: OpenSSL's own signature is byte-identical to rota's.
    openssl(
        d,
        &[
            "pkeyutl",
            "-sign",
            "-inkey",
            "o.key.pem",
            "-rawin",
            "-in",
            "manifest.toml",
            "-out",
            "openssl.sig",
        ],
    );
    assert_eq!(
        std::fs::read(d.join("openssl.sig")).unwrap(),
        std::fs::read(d.join("manifest.toml.sig")).unwrap()
    );
}

#[test]
fn rota_keys_are_read_by_openssl_and_wrong_keys_are_named() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_src(d);
    assert!(rota(d, &["keygen", "--out-dir", "k", "--name", "rel"])
        .status
        .success());
    assert!(rota(d, &["keygen", "--out-dir", "k", "--name", "next"])
        .status
        .success());
    let text = openssl(d, &["pkey", "-in", "k/rel.key.pem", "-text", "-noout"]);
    assert!(text.contains("ED25519 Private-Key"), "{text}");
    // The public key OpenSSL derives equals rota's public key file.
    let derived = openssl(d, &["pkey", "-in", "k/rel.key.pem", "-pubout"]);
    assert_eq!(
        derived,
        std::fs::read_to_string(d.join("k/rel.pub.pem")).unwrap()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.join("k/rel.key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "private key is private");
    assert!(rota(
        d,
        &[
            "bundle",
            "create",
            "src",
            "b.rota",
            "--key",
            "k/rel.key.pem"
        ]
    )
    .status
    .success());
    run(Command::new("tar").current_dir(d).args([
        "xf",
        "b.rota",
        "manifest.toml",
        "manifest.toml.sig",
    ]));
    openssl(
        d,
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "k/rel.pub.pem",
            "-rawin",
            "-in",
            "manifest.toml",
            "-sigfile",
            "manifest.toml.sig",
        ],
    );
    // Key rotation: a keyring with the old and the new key accepts the bundle...
    let out = rota(
        d,
        &[
            "bundle",
            "verify",
            "b.rota",
            "--keyring",
            "k/next.pub.pem",
            "--keyring",
            "k/rel.pub.pem",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...a keyring without the signing key rejects it and names the key tried.
    let out = rota(
        d,
        &["bundle", "verify", "b.rota", "--keyring", "k/next.pub.pem"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let next_id = String::from_utf8_lossy(&rota(d, &["bundle", "info", "b.rota", "--json"]).stdout)
        .to_string();
    assert!(err.contains("does not match any of the 1 key(s)"), "{err}");
    assert!(!next_id.is_empty());
    // Tampered payload: verify names the image and the chunk.
    let mut bytes = std::fs::read(d.join("b.rota")).unwrap();
    let n = bytes.len();
    bytes[n - 1024 - 1000] ^= 0x40;
    std::fs::write(d.join("t.rota"), &bytes).unwrap();
    let out = rota(
        d,
        &[
            "bundle",
            "verify",
            path_str(&d.join("t.rota")),
            "--keyring",
            "k/rel.pub.pem",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("image img: the frame at bytes")
            && err.contains("does not match its signed hash"),
        "{err}"
    );
}
