//! The malicious and broken bundle corpus (format 1 bundles; format 2's own cases are in
//! tests/malicious_blocks.rs): every kind of bad bundle (forged, unsigned,
//! swapped, truncated, padded, traversing, linking, duplicated, oversized, overflowing,
//! non-UTF-8, wrong board, downgrade, unknown format, reordered, damaged, not a tar at
//! all) is installed through the real service path (`rota install` → D-Bus → `rota
//! service`) and must be refused with a message naming the problem, while the booted
//! slot and the U-Boot environment stay as they were, no byte of a pre-write refusal
//! reaches the target slot, a payload failure never activates it, and a good install
//! right after still works. Also: reader-level allocation bounds. (D-Bus argument limits
//! and status clients hammering the bus are in dbus_service.rs.)

mod support;

use std::path::PathBuf;
use std::time::Instant;
use support::gateway::{path_str, pattern, Gateway};
use support::tarcraft::{
    assemble, assemble_open, data_offset, header, member_names, members, resign, set_line,
    signing_key, MemSource, Raw,
};

/// Size of the images in the corpus bundles: five 64 KiB chunks, the last one partial.
const IMAGE: usize = 300_000;

/// When the install must stop.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    /// Before any byte is written: booted slot, target slot and env all unchanged.
    Refused,
    /// While copying: the target was taken out of the boot selection and stays out.
    Payload,
}

struct Case {
    kind: String,
    file: PathBuf,
    /// Every one of these must appear in the error.
    want: Vec<String>,
    stage: Stage,
}

/// The corpus, built from real bundles of the gateway.
struct Corpus {
    cases: Vec<Case>,
}

impl Corpus {
    fn add(&mut self, gw: &Gateway, kind: &str, bytes: Vec<u8>, want: &[&str], stage: Stage) {
        let file = gw.path(&format!("bad-{:02}.rota", self.cases.len()));
        std::fs::write(&file, bytes).unwrap();
        self.add_file(kind, file, want, stage);
    }

    fn add_file(&mut self, kind: &str, file: PathBuf, want: &[&str], stage: Stage) {
        self.cases.push(Case {
            kind: kind.to_owned(),
            file,
            want: want.iter().map(|s| s.to_string()).collect(),
            stage,
        });
    }
}

fn build_corpus(gw: &Gateway) -> Corpus {
    let mut c = Corpus { cases: Vec::new() };
    let release = signing_key(&gw.path("keys/release.key.pem"));
    let (base_path, _) = gw.bundle_with(
        "base",
        "acme-gateway",
        "3.0.0",
        pattern(IMAGE, 21),
        "release",
        &["--format", "1"],
    );
    let (twin_path, _) = gw.bundle_with(
        "twin",
        "acme-gateway",
        "3.0.1",
        pattern(IMAGE, 22),
        "release",
        &["--format", "1"],
    );
    let base = std::fs::read(&base_path).unwrap();
    let ms = members(&base);
    let twin = members(&std::fs::read(&twin_path).unwrap());
    let names = member_names(&ms);
    assert_eq!(
        names,
        [
            "manifest.toml",
            "manifest.toml.sig",
            "rootfs.ext4.chunks",
            "rootfs.ext4"
        ]
    );
    let text = String::from_utf8(ms[0].data.clone()).unwrap();
    let signed = |manifest: &[u8]| {
        let mut m = ms.clone();
        resign(&mut m, manifest, &release);
        assemble(&m)
    };
    let with = |f: &dyn Fn(&mut Vec<Raw>)| {
        let mut m = ms.clone();
        f(&mut m);
        assemble(&m)
    };
    use Stage::*;
    let sig_mismatch = "does not match any of the 1 key(s) in the keyring";

    // --- signatures ---
    c.add(
        gw,
        "bad signature (one bit flipped)",
        with(&|m| m[1].data[7] ^= 0x10),
        &["signature check failed", sig_mismatch],
        Refused,
    );
    c.add(
        gw,
        "signature member missing",
        with(&|m| {
            m.remove(1);
        }),
        &[
            "the bundle is not signed",
            "member 2 is \"rootfs.ext4.chunks\" where manifest.toml.sig must be",
        ],
        Refused,
    );
    c.add(
        gw,
        "signature member missing, archive ends after the manifest",
        with(&|m| m.truncate(1)),
        &["the bundle is not signed: the archive ends after manifest.toml"],
        Refused,
    );
    c.add(
        gw,
        "signature of 65 bytes",
        with(&|m| m[1].data.push(0)),
        &["manifest.toml.sig has 65 bytes, an ed25519 signature is 64"],
        Refused,
    );
    c.add(
        gw,
        "signature member declaring 2^64-1 bytes",
        with(&|m| m[1].declared = Some(u64::MAX)),
        &["manifest.toml.sig has 18446744073709551615 bytes, an ed25519 signature is 64"],
        Refused,
    );
    let (untrusted, _) = gw.bundle_with(
        "untrusted",
        "acme-gateway",
        "3.0.0",
        pattern(IMAGE, 23),
        "other",
        &["--format", "1"],
    );
    c.add_file(
        "signed by an untrusted key",
        untrusted,
        &["signature check failed", sig_mismatch],
        Refused,
    );
    c.add(
        gw,
        "manifest edited after signing (version 3.0.0 -> 9.0.0)",
        with(&|m| {
            let t = String::from_utf8(m[0].data.clone()).unwrap();
            m[0].data = t.replace("\"3.0.0\"", "\"9.0.0\"").into_bytes();
        }),
        &["signature check failed", sig_mismatch],
        Refused,
    );
    c.add(
        gw,
        "manifest of another signed bundle, with its own signature, over this payload",
        with(&|m| {
            m[0] = twin[0].clone();
            m[1] = twin[1].clone();
        }),
        &[
            "image rootfs.ext4: chunk index SHA-256 is",
            "the signed manifest says",
        ],
        Refused,
    );
    c.add(
        gw,
        "manifest of another bundle under this bundle's signature",
        with(&|m| m[0] = twin[0].clone()),
        &[sig_mismatch],
        Refused,
    );

    // --- chunk index ---
    c.add(
        gw,
        "chunk index edited",
        with(&|m| m[2].data[40] ^= 1),
        &[
            "image rootfs.ext4: chunk index SHA-256 is",
            "the signed manifest says",
        ],
        Refused,
    );
    c.add(
        gw,
        "chunk index of another bundle",
        with(&|m| m[2] = twin[2].clone()),
        &["image rootfs.ext4: chunk index SHA-256 is"],
        Refused,
    );
    c.add(
        gw,
        "chunk index one hash short",
        with(&|m| {
            let n = m[2].data.len() - 32;
            m[2].data.truncate(n)
        }),
        &["member rootfs.ext4.chunks has 128 bytes, 32 fewer than the 160 the signed manifest declares"],
        Refused,
    );

    // --- payload sizes ---
    c.add(
        gw,
        "payload longer than the manifest says",
        with(&|m| m[3].data.extend_from_slice(&[0xAA; 4096])),
        &[&format!(
            "member rootfs.ext4 has {} bytes, 4096 more than the {IMAGE} the signed manifest declares",
            IMAGE + 4096
        )],
        Refused,
    );
    c.add(
        gw,
        "payload shorter than the manifest says",
        with(&|m| m[3].data.truncate(IMAGE - 1000)),
        &[&format!(
            "member rootfs.ext4 has {} bytes, 1000 fewer than the {IMAGE} the signed manifest declares",
            IMAGE - 1000
        )],
        Refused,
    );
    let cut = data_offset(&ms, "rootfs.ext4") + 100_000;
    c.add(
        gw,
        "truncated bundle (cut inside the image)",
        base[..cut].to_vec(),
        &[
            "bundle is truncated",
            &format!(
                "member rootfs.ext4 needs bytes up to {}, the bundle has {cut}",
                cut - 100_000 + IMAGE
            ),
        ],
        Refused,
    );
    c.add(
        gw,
        "truncated bundle (end-of-archive marker missing)",
        assemble_open(&ms),
        &[
            "bundle is truncated",
            "the header of the end-of-archive marker",
        ],
        Refused,
    );
    c.add(
        gw,
        "image member declaring 2^63 bytes",
        with(&|m| m[3].declared = Some(1 << 63)),
        &["member rootfs.ext4 has 9223372036854775808 bytes"],
        Refused,
    );

    // --- member names and types ---
    c.add(
        gw,
        "path traversal member name",
        with(&|m| m[3].name = b"../rootfs.ext4".to_vec()),
        &["member \"../rootfs.ext4\" is a path traversal ('..'); bundle members are plain file names"],
        Refused,
    );
    c.add(
        gw,
        "absolute member name",
        with(&|m| m[2].name = b"/etc/rootfs.ext4.chunks".to_vec()),
        &["member \"/etc/rootfs.ext4.chunks\" is an absolute path"],
        Refused,
    );
    c.add(
        gw,
        "member name with a directory",
        with(&|m| m[3].name = b"boot/rootfs.ext4".to_vec()),
        &["member \"boot/rootfs.ext4\" is a path with directories"],
        Refused,
    );
    c.add(
        gw,
        "symbolic link member",
        with(&|m| {
            m[3].kind = tar::EntryType::Symlink;
            m[3].link = b"/dev/mmcblk0".to_vec();
            m[3].data.clear();
        }),
        &["member \"rootfs.ext4\" is a symbolic link to \"/dev/mmcblk0\"; bundles hold regular files only"],
        Refused,
    );
    c.add(
        gw,
        "hard link member",
        with(&|m| {
            m[2].kind = tar::EntryType::Link;
            m[2].link = b"manifest.toml".to_vec();
            m[2].data.clear();
        }),
        &["member \"rootfs.ext4.chunks\" is a hard link to \"manifest.toml\""],
        Refused,
    );
    c.add(
        gw,
        "directory member",
        with(&|m| {
            m.insert(
                2,
                Raw {
                    kind: tar::EntryType::Directory,
                    ..Raw::file("d", b"")
                },
            )
        }),
        &["member \"d\" is a directory"],
        Refused,
    );
    c.add(
        gw,
        "PAX extended header renaming the next member",
        with(&|m| {
            m.insert(
                3,
                Raw {
                    kind: tar::EntryType::XHeader,
                    ..Raw::file("PaxHeader", b"30 path=../../etc/shadow\n")
                },
            )
        }),
        &["member \"PaxHeader\" is a PAX extended header"],
        Refused,
    );
    c.add(
        gw,
        "duplicate member (chunk index twice)",
        with(&|m| {
            let dup = m[2].clone();
            m.insert(3, dup);
        }),
        &["member 4 is \"rootfs.ext4.chunks\" where rootfs.ext4 was expected (a duplicate member"],
        Refused,
    );
    c.add(
        gw,
        "duplicate member (image appended again)",
        with(&|m| {
            let dup = m[3].clone();
            m.push(dup);
        }),
        &["unexpected member \"rootfs.ext4\" after the last image (a duplicate member"],
        Refused,
    );
    c.add(
        gw,
        "duplicate manifest",
        with(&|m| {
            let dup = m[0].clone();
            m.insert(1, dup);
        }),
        &["member 2 is manifest.toml again (a duplicate member"],
        Refused,
    );
    c.add(
        gw,
        "members out of order (image before its chunk index)",
        with(&|m| m.swap(2, 3)),
        &["member 3 is \"rootfs.ext4\" where rootfs.ext4.chunks was expected (out of order)"],
        Refused,
    );
    c.add(
        gw,
        "signature before the manifest",
        with(&|m| m.swap(0, 1)),
        &["first member is \"manifest.toml.sig\", expected manifest.toml"],
        Refused,
    );
    c.add(
        gw,
        "unexpected extra member",
        with(&|m| m.push(Raw::file("extra.sh", b"#!/bin/sh\nrm -rf /\n"))),
        &["unexpected member \"extra.sh\" after the last image (bundles carry only what the manifest lists)"],
        Refused,
    );
    c.add(
        gw,
        "foreign member in place of the chunk index",
        with(&|m| m[2].name = b"evil.chunks".to_vec()),
        &["member 3 is \"evil.chunks\" where rootfs.ext4.chunks was expected (not listed in the signed manifest)"],
        Refused,
    );
    c.add(
        gw,
        "member hidden after the end-of-archive marker",
        {
            let mut b = assemble_open(&ms);
            b.extend_from_slice(&[0u8; 512]);
            b.extend_from_slice(&header(&Raw::file("hidden", b"x")));
            b.extend_from_slice(&[b'x'; 512]);
            b.extend_from_slice(&[0u8; 1024]);
            b
        },
        &[
            "data after the end-of-archive marker",
            "hidden members are refused",
        ],
        Refused,
    );
    c.add(
        gw,
        "non-UTF-8 member name",
        with(&|m| m[3].name = b"rootfs\xff.ext4".to_vec()),
        &["has a name that is not UTF-8"],
        Refused,
    );

    // --- numbers and sizes in the (validly signed) manifest ---
    c.add(
        gw,
        "image size 2^63",
        signed(set_line(&text, "size", "9223372036854775808").as_bytes()),
        &["image rootfs.ext4 declares 9223372036854775808 bytes, the limit is 68719476736"],
        Refused,
    );
    c.add(
        gw,
        "image size 2^63-1",
        signed(set_line(&text, "size", "9223372036854775807").as_bytes()),
        &["image rootfs.ext4 declares 9223372036854775807 bytes, the limit is 68719476736"],
        Refused,
    );
    c.add(
        gw,
        "negative image size",
        signed(set_line(&text, "size", "-1").as_bytes()),
        &["invalid manifest", "size", "-1"],
        Refused,
    );
    c.add(
        gw,
        "CRC32 overflowing 32 bits",
        signed(set_line(&text, "crc32", "4294967296").as_bytes()),
        &["invalid manifest", "crc32", "4294967296"],
        Refused,
    );
    c.add(
        gw,
        "chunk size 1 (a chunk count of 2^36 for the largest image)",
        signed(set_line(&text, "chunk-size", "1").as_bytes()),
        &["image rootfs.ext4: chunk size 1 must be a power of two from 4096 to 16777216"],
        Refused,
    );
    c.add(
        gw,
        "chunk size 2^32 (overflowing u32)",
        signed(set_line(&text, "chunk-size", "4294967296").as_bytes()),
        &["invalid manifest", "chunk-size"],
        Refused,
    );
    c.add(
        gw,
        "zero-length image",
        {
            let mut m = ms.clone();
            let t = set_line(&text, "size", "0");
            resign(&mut m, t.as_bytes(), &release);
            m[2].data.clear();
            m[3].data.clear();
            assemble(&m)
        },
        &["image rootfs.ext4 is empty (size 0)"],
        Refused,
    );
    c.add(
        gw,
        "unknown manifest format version",
        signed(set_line(&text, "format", "3").as_bytes()),
        &["format 3 is not supported (this rota reads formats 1 and 2)"],
        Refused,
    );
    c.add(
        gw,
        "unknown manifest key",
        signed(
            text.replace("[update]\n", "[update]\npre-install = \"rm -rf /\"\n")
                .as_bytes(),
        ),
        &["invalid manifest", "unknown field `pre-install`"],
        Refused,
    );
    c.add(
        gw,
        "non-UTF-8 manifest",
        {
            let mut t = text.clone().into_bytes();
            let at = text.find("acme-gateway").unwrap() + 2;
            t[at] = 0xff;
            signed(&t)
        },
        &["invalid manifest: not UTF-8 (at byte"],
        Refused,
    );
    c.add(
        gw,
        "deeply nested manifest (a parser stack bomb)",
        signed(format!("{text}x = {}{}\n", "[".repeat(200_000), "]".repeat(200_000)).as_bytes()),
        &[
            "invalid manifest",
            "cannot recurse further; max recursion depth met",
        ],
        Refused,
    );
    c.add(
        gw,
        "over-long compatible string",
        signed(
            text.replace("\"acme-gateway\"", &format!("\"{}\"", "g".repeat(100_000)))
                .as_bytes(),
        ),
        &["invalid manifest: [update] compatible is 100000 bytes, at most 256 are allowed"],
        Refused,
    );
    // 100 MiB on paper, a sparse file on disk: the header alone must get it refused.
    let huge = gw.path("huge-manifest.rota");
    {
        let big = 100u64 << 20;
        let mut h = Raw::file("manifest.toml", b"");
        h.declared = Some(big);
        std::fs::write(&huge, header(&h)).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&huge).unwrap();
        f.set_len(512 + big + 1024).unwrap();
    }
    c.add_file(
        "gigantic manifest (100 MiB member)",
        huge,
        &["manifest.toml is 104857600 bytes, larger than the 1048576-byte limit"],
        Refused,
    );

    // --- device checks on a validly signed bundle ---
    let (wrong, _) = gw.bundle_with(
        "wrongcompat",
        "other-board",
        "3.0.0",
        pattern(IMAGE, 24),
        "release",
        &["--format", "1"],
    );
    c.add_file(
        "wrong compatible",
        wrong,
        &["bundle is for \"other-board\", this device is \"acme-gateway\""],
        Refused,
    );
    let (old, _) = gw.bundle_with(
        "downgrade",
        "acme-gateway",
        "1.0.0",
        pattern(IMAGE, 25),
        "release",
        &["--format", "1"],
    );
    c.add_file(
        "downgrade",
        old,
        &["bundle version 1.0.0 is lower than the booted slot's 2.0.0"],
        Refused,
    );
    let (big, _) = gw.bundle_with(
        "toobig",
        "acme-gateway",
        "3.0.0",
        pattern(support::gateway::SLOT_SIZE + 4096, 26),
        "release",
        &["--format", "1"],
    );
    c.add_file(
        "image larger than its slot",
        big,
        &[&format!(
            "image rootfs.ext4 is {} bytes, larger than slot rootfs.1",
            support::gateway::SLOT_SIZE + 4096
        )],
        Refused,
    );
    c.add(
        gw,
        "image for a slot class the device does not have",
        signed(
            text.replace("slot-class = \"rootfs\"", "slot-class = \"bootloader\"")
                .as_bytes(),
        ),
        &["image rootfs.ext4 is for slot class \"bootloader\", which is not configured"],
        Refused,
    );

    // --- not a bundle at all ---
    c.add(
        gw,
        "empty file",
        Vec::new(),
        &["not a rota bundle: the file is empty (0 bytes)"],
        Refused,
    );
    c.add(
        gw,
        "file shorter than one tar header",
        b"hello".to_vec(),
        &["the file is 5 bytes, too short for a tar archive"],
        Refused,
    );
    c.add(
        gw,
        "non-tar file",
        pattern(4096, 99),
        &["the file is not a tar archive (its first 512 bytes are not a tar header)"],
        Refused,
    );
    let gz = gw.cmd("gzip", &["-kf", path_str(&base_path)]);
    gz.success();
    c.add_file(
        "gzip-compressed bundle",
        PathBuf::from(format!("{}.gz", base_path.display())),
        &["the file is gzip-compressed; a bundle is a plain, uncompressed tar archive"],
        Refused,
    );
    c.add(
        gw,
        "garbage header checksum",
        {
            let mut b = base.clone();
            let h = data_offset(&ms, "rootfs.ext4") - 512;
            b[h + 150] ^= 0x05; // inside the checksum field
            b
        },
        &[&format!(
            "the tar header at byte {} (of rootfs.ext4) is damaged: its checksum field says",
            data_offset(&ms, "rootfs.ext4") - 512
        )],
        Refused,
    );
    c.add(
        gw,
        "header bytes changed under a valid checksum field (first header)",
        {
            let mut b = base.clone();
            b[0] = b'X';
            b
        },
        &["the tar header at byte 0 (of manifest.toml) is damaged"],
        Refused,
    );

    // --- payload corruption: found while copying, target never activated ---
    let img = data_offset(&ms, "rootfs.ext4");
    c.add(
        gw,
        "payload byte flipped (chunk 2)",
        {
            let mut b = base.clone();
            b[img + 2 * 65536 + 77] ^= 0x40;
            b
        },
        &["chunk 2 of rootfs.ext4 (bytes 131072..196608) does not match its signed hash"],
        Payload,
    );
    c.add(
        gw,
        "payload of another bundle (same size)",
        with(&|m| m[3] = twin[3].clone()),
        &["chunk 0 of rootfs.ext4 (bytes 0..65536) does not match its signed hash"],
        Payload,
    );
    c.add(
        gw,
        "last partial chunk corrupted",
        {
            let mut b = base.clone();
            b[img + IMAGE - 1] ^= 1;
            b
        },
        &["chunk 4 of rootfs.ext4 (bytes 262144..300000) does not match its signed hash"],
        Payload,
    );
    c
}

/// Everything a refused install must leave alone, captured before it.
struct Before {
    a: Vec<u8>,
    b: Vec<u8>,
    env: Vec<u8>,
    vars: std::collections::BTreeMap<String, String>,
}

fn capture(gw: &Gateway) -> Before {
    Before {
        a: gw.read("a.img"),
        b: gw.read("b.img"),
        env: gw.read("uboot.env"),
        vars: gw.fw_printenv(),
    }
}

/// A gateway whose booted slot A runs 2.0.0 (as recorded by an earlier install), with the
/// service up.
fn gateway_running_2_0_0() -> Gateway {
    let mut gw = Gateway::new(false);
    std::fs::create_dir_all(gw.path("data")).unwrap();
    std::fs::write(
        gw.path("data/status.json"),
        r#"{"slots":{"rootfs.0":{"status":"ok","version":"2.0.0","compatible":"acme-gateway",
            "sha256":"","size":0,"bundle_hash":"","transaction":"","installed_at":"2025-01-01T00:00:00Z"}}}"#,
    )
    .unwrap();
    gw.start_service();
    gw
}

#[test]
fn the_service_refuses_every_malicious_bundle_and_keeps_the_device_intact() {
    let started = Instant::now();
    let gw = gateway_running_2_0_0();
    let corpus = build_corpus(&gw);
    let goods: Vec<(PathBuf, Vec<u8>)> = (0..2)
        .map(|i| {
            gw.bundle_with(
                &format!("good{i}"),
                "acme-gateway",
                &format!("3.1.{i}"),
                pattern(200_000, 40 + i),
                "release",
                &["--format", "1"],
            )
        })
        .collect();
    let a_image = gw.read("a.img");
    let built = started.elapsed();
    let mut kinds = std::collections::BTreeSet::new();
    let mut accepted = 0;
    for (n, case) in corpus.cases.iter().enumerate() {
        assert!(
            kinds.insert(case.kind.clone()),
            "kind listed twice: {}",
            case.kind
        );
        let t = Instant::now();
        let before = capture(&gw);
        let r = gw.rota(&["install", path_str(&case.file)]);
        let err = r.stderr();
        if r.code() == 0 {
            accepted += 1;
        }
        assert_eq!(
            r.code(),
            1,
            "[{}] must be refused (exit 1): {}{err}",
            case.kind,
            r.stdout()
        );
        for want in &case.want {
            assert!(
                err.contains(want.as_str()),
                "[{}] expected {want:?} in the error:\n  {err}",
                case.kind
            );
        }
        // Specific, and bounded whatever the bundle holds.
        assert!(
            err.len() < 2048,
            "[{}] {} bytes of error",
            case.kind,
            err.len()
        );
        assert!(
            !err.contains("panick") && !err.contains("internal error"),
            "[{}] {err}",
            case.kind
        );
        // The service recorded the same reason and is idle again.
        let last_error = gw
            .property("LastError")
            .replace("\\'", "'")
            .replace("\\\"", "\"");
        assert!(
            last_error.contains(case.want[0].as_str()),
            "[{}] LastError {last_error}",
            case.kind
        );
        assert_eq!(gw.property("Operation"), "s \"idle\"", "[{}]", case.kind);
        // The booted slot is never touched, and stays first.
        assert!(
            gw.read("a.img") == before.a,
            "[{}] a.img changed",
            case.kind
        );
        let vars = gw.fw_printenv();
        let order = vars["BOOT_ORDER"].clone();
        assert!(order.starts_with('A'), "[{}] BOOT_ORDER={order}", case.kind);
        assert_eq!(
            vars["BOOT_A_LEFT"], before.vars["BOOT_A_LEFT"],
            "[{}]",
            case.kind
        );
        match case.stage {
            Stage::Refused => {
                assert_eq!(
                    gw.read("uboot.env"),
                    before.env,
                    "[{}] env changed",
                    case.kind
                );
                assert!(
                    gw.read("b.img") == before.b,
                    "[{}] a byte reached slot B",
                    case.kind
                );
            }
            Stage::Payload => {
                // Taken out of the selection before writing, and left out.
                assert!(
                    !order.split_whitespace().any(|b| b == "B"),
                    "[{}] BOOT_ORDER={order}",
                    case.kind
                );
                assert_eq!(vars["BOOT_B_LEFT"], "0", "[{}]", case.kind);
                let mut others = vars.clone();
                let mut was = before.vars.clone();
                for k in ["BOOT_ORDER", "BOOT_B_LEFT"] {
                    others.remove(k);
                    was.remove(k);
                }
                assert_eq!(others, was, "[{}] other env variables changed", case.kind);
            }
        }
        // A good install right after works: no stale lock, journal or state.
        let (good, image) = &goods[n % 2];
        gw.rota(&["install", path_str(good)]).success();
        assert!(
            gw.read("b.img")[..image.len()] == image[..],
            "[{}] good image not in B",
            case.kind
        );
        let vars = gw.fw_printenv();
        assert_eq!(vars["BOOT_ORDER"], "B A", "[{}]", case.kind);
        assert_eq!(vars["BOOT_B_LEFT"], "3", "[{}]", case.kind);
        // Back to A first for the next case, as after a rollback.
        gw.rota(&["mark", "active", "A"]).success();
        assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "A B");
        eprintln!(
            "{n:2} {} ({} ms): {}",
            case.kind,
            t.elapsed().as_millis(),
            err.trim().trim_start_matches("rota: ")
        );
    }
    assert!(gw.read("a.img") == a_image);
    let tried = corpus.cases.len();
    eprintln!(
        "bundles tried: {tried}, accepted: {accepted} ({} kinds; corpus built in {:.1} s, total {:.1} s)",
        kinds.len(),
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(tried >= 24, "only {tried} kinds");
}

/// The reader refuses a 100 MiB manifest from its tar header alone: no read larger than
/// one header block happens, so nothing of that size is allocated.
#[test]
fn a_gigantic_manifest_is_refused_before_it_is_read() {
    let mut h = Raw::file("manifest.toml", b"");
    h.declared = Some(100 << 20);
    let mut src = MemSource::new(header(&h).to_vec());
    src.len = 512 + (100 << 20) + 1024;
    let e = rota::bundle::reader::open_unverified(&mut src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("manifest.toml is 104857600 bytes, larger than the 1048576-byte limit"),
        "{e}"
    );
    assert_eq!(src.largest_read(), 512, "{:?}", src.reads);
    // Just at the limit it is read (and then judged on its content).
    h.declared = Some(rota::bundle::MAX_MANIFEST_SIZE);
    let mut src = MemSource::new(header(&h).to_vec());
    src.len = 512 + rota::bundle::MAX_MANIFEST_SIZE + 1024;
    let e = rota::bundle::reader::open_unverified(&mut src)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the bundle is not signed"), "{e}");
    assert_eq!(src.largest_read(), rota::bundle::MAX_MANIFEST_SIZE);
}

/// Declared sizes near 2^64 in tar headers (base-256 numbers) give size errors, never an
/// arithmetic overflow, and nothing is read for them.
#[test]
fn absurd_tar_sizes_are_errors_not_overflows() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let ring = rota::bundle::Keyring::from_keys(vec![key.verifying_key()]);
    let manifest = b"format = 1\n".to_vec();
    let mut ms = vec![
        Raw::file("manifest.toml", b""),
        Raw::file("manifest.toml.sig", b""),
    ];
    resign(&mut ms, &manifest, &key);
    for (member, declared, want) in [
        (
            1,
            u64::MAX,
            "manifest.toml.sig has 18446744073709551615 bytes",
        ),
        (1, u64::MAX - 511, "an ed25519 signature is 64"),
        (0, u64::MAX, "manifest.toml is 18446744073709551615 bytes"),
    ] {
        let mut m = ms.clone();
        m[member].declared = Some(declared);
        let mut src = MemSource::new(assemble(&m));
        let e = rota::bundle::reader::open(&mut src, &ring)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
        assert!(src.largest_read() <= 512, "{:?}", src.reads);
    }
}

/// The trailer rule does not refuse honest tools: a bundle unpacked and packed again by
/// GNU tar (which pads to its 10 KiB record size) still opens and verifies, and up to
/// `MAX_TRAILER` zero bytes of padding are fine; one more byte, or any non-zero byte
/// after the end-of-archive marker, is refused.
#[test]
fn tar_padding_is_accepted_but_trailing_data_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = rota::bundle::keys::generate().unwrap();
    let ring = rota::bundle::Keyring::from_keys(vec![key.verifying_key()]);
    std::fs::create_dir(d.join("in")).unwrap();
    std::fs::write(d.join("in/rootfs.ext4"), pattern(IMAGE, 5)).unwrap();
    std::fs::write(
        d.join("in/manifest.toml"),
        "[update]\ncompatible = \"acme-gateway\"\nversion = \"1.0.0\"\n[[image]]\nslot-class = \"rootfs\"\nfile = \"rootfs.ext4\"\n",
    )
    .unwrap();
    // Format 1: this corpus is about the tar layer and the chunk index (format 2's own
    // hostile cases are in tests/malicious_blocks.rs).
    rota::bundle::writer::create_with(
        &d.join("in"),
        &d.join("b.rota"),
        &key,
        &rota::bundle::writer::CreateOptions {
            pack: None,
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::create_dir(d.join("x")).unwrap();
    let tar = |args: &[&str]| {
        let st = std::process::Command::new("tar")
            .current_dir(d.join("x"))
            .args(args)
            .status()
            .expect("GNU tar must be installed");
        assert!(st.success(), "tar {args:?}");
    };
    tar(&["xf", "../b.rota"]);
    tar(&[
        "--format=ustar",
        "-cf",
        "../repacked.rota",
        "manifest.toml",
        "manifest.toml.sig",
        "rootfs.ext4.chunks",
        "rootfs.ext4",
    ]);
    let repacked = std::fs::read(d.join("repacked.rota")).unwrap();
    assert_eq!(repacked.len() % 10240, 0, "GNU tar pads to its record size");
    let mut src = MemSource::new(repacked.clone());
    let b = rota::bundle::reader::open(&mut src, &ring).unwrap();
    rota::bundle::reader::verify_payload(&mut src, &b, &mut |_, _| {}).unwrap();

    // The end-of-archive block of rota's own bundle, then padding of various sizes.
    let own = std::fs::read(d.join("b.rota")).unwrap();
    let marker_end = own.len() - 512; // rota writes two zero blocks
    let with_trailer = |extra: usize, byte: Option<usize>| {
        let mut v = own[..marker_end].to_vec();
        v.resize(marker_end + extra, 0);
        if let Some(at) = byte {
            v[marker_end + at] = 1;
        }
        MemSource::new(v)
    };
    let max = rota::bundle::reader::MAX_TRAILER as usize;
    assert!(rota::bundle::reader::open(&mut with_trailer(max, None), &ring).is_ok());
    let e = rota::bundle::reader::open(&mut with_trailer(max + 1, None), &ring)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1048577 bytes follow the end-of-archive marker"),
        "{e}"
    );
    let e = rota::bundle::reader::open(&mut with_trailer(4096, Some(4000)), &ring)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data after the end-of-archive marker"), "{e}");
}
