//! Format 2 bundles from the command line: what `rota bundle create` writes by default,
//! what `bundle info` says about it, that `bundle verify` and `tar` read it, and that a
//! payload byte changed anywhere is found.

use std::path::Path;
use std::process::Command;

fn rota(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rota"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// 3 MiB: 1 MiB of text-like bytes, 1 MiB of zeros, 1 MiB of noise.
fn image() -> Vec<u8> {
    let mut img: Vec<u8> = (0..1 << 20)
        .map(|i: u32| b"the quick brown fox jumps over the lazy dog\n"[(i % 44) as usize])
        .collect();
    img.extend(vec![0u8; 1 << 20]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    img.extend((0..1 << 20).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    img
}

fn setup(dir: &Path) {
    ok(rota(
        dir,
        &["keygen", "--out-dir", ".", "--name", "release"],
    ));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/rootfs.ext4"), image()).unwrap();
    std::fs::write(
        dir.join("src/manifest.toml"),
        "[update]\ncompatible = \"acme\"\nversion = \"1.0.0\"\n[[image]]\nslot-class = \"rootfs\"\nfile = \"rootfs.ext4\"\n",
    )
    .unwrap();
}

#[test]
fn a_default_bundle_is_format_2_compressed_with_zero_runs_free_and_verifiable() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let out = ok(rota(
        d,
        &[
            "bundle",
            "create",
            "src",
            "b.rota",
            "--key",
            "release.key.pem",
        ],
    ));
    assert!(out.contains("format 2"), "{out}");
    let info = ok(rota(
        d,
        &[
            "bundle",
            "info",
            "b.rota",
            "--keyring",
            "release.pub.pem",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["format"], 2);
    let img = &v["images"][0];
    assert_eq!(img["layout"], "blocks");
    assert_eq!(img["size"], 3 << 20);
    assert_eq!(img["zero"], 1 << 20, "the zero MiB is a zero run: {img}");
    let stored = img["stored"].as_u64().unwrap();
    // Noise does not compress, text does, zeros cost nothing.
    assert!(
        stored > 1 << 20 && stored < (1 << 20) + (64 << 10),
        "stored {stored}: {img}"
    );
    let bundle_len = std::fs::metadata(d.join("b.rota")).unwrap().len();
    assert!(bundle_len < stored + (16 << 10), "{bundle_len}");
    let text = ok(rota(d, &["bundle", "info", "b.rota"]));
    assert!(
        text.contains("3.0 MiB raw") && text.contains("1.0 MiB zero"),
        "{text}"
    );

    ok(rota(
        d,
        &["bundle", "verify", "b.rota", "--keyring", "release.pub.pem"],
    ));
    let tar = Command::new("tar")
        .args(["tf"])
        .arg(d.join("b.rota"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tar.stdout),
        "manifest.toml\nmanifest.toml.sig\nrootfs.ext4.blocks\nrootfs.ext4\n"
    );

    // Any payload byte changed is found by `bundle verify` (the frame hash, or the
    // payload's signed SHA-256).
    let mut bytes = std::fs::read(d.join("b.rota")).unwrap();
    let n = bytes.len();
    bytes[n - 2048 - 700] ^= 0x40;
    std::fs::write(d.join("bad.rota"), &bytes).unwrap();
    let o = rota(
        d,
        &[
            "bundle",
            "verify",
            "bad.rota",
            "--keyring",
            "release.pub.pem",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("image rootfs.ext4:") && (e.contains("frame") || e.contains("payload SHA-256")),
        "{e}"
    );
}

#[test]
fn format_1_is_still_written_on_request_and_read() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    ok(rota(
        d,
        &[
            "bundle",
            "create",
            "src",
            "b.rota",
            "--key",
            "release.key.pem",
            "--format",
            "1",
        ],
    ));
    let v: serde_json::Value =
        serde_json::from_str(&ok(rota(d, &["bundle", "info", "b.rota", "--json"]))).unwrap();
    assert_eq!(v["format"], 1);
    assert_eq!(v["images"][0]["layout"], "chunks");
    assert_eq!(v["images"][0]["stored"], (3 << 20) + 48 * 32);
    ok(rota(
        d,
        &["bundle", "verify", "b.rota", "--keyring", "release.pub.pem"],
    ));
    let o = rota(
        d,
        &[
            "bundle",
            "create",
            "src",
            "c.rota",
            "--key",
            "release.key.pem",
            "--format",
            "1",
            "--delta-from",
            "src/rootfs.ext4",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
