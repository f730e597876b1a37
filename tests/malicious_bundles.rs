//! A corpus of malicious and broken bundles, each installed through the real service
//! (`rota install` → D-Bus → `rota service`) on a simulated gateway. Every one must be
//! refused with a message that names the problem, and after every one:
//! - the booted slot (A) is byte-identical to before;
//! - the env is readable by the real `fw_printenv`, A comes first in BOOT_ORDER with its
//!   attempts, and B is not bootable (BOOT_B_LEFT=0 once an install touched it);
//! - refusals of signature, format, compatible, version and size come before any byte
//!   reaches slot B (its bytes are unchanged) and before the env changes;
//! - payload failures (a chunk that does not match) never activate B.
//!
//! At the end a good bundle still installs: nothing stale blocks the next install.

mod support;

use ed25519_dalek::Signer;
use std::path::{Path, PathBuf};
use support::gateway::{path_str, pattern, Gateway};

/// Members of a tar file, in order: (name, data).
fn members(bundle: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(bundle);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// A tar of regular files (ustar headers), as `rota bundle create` writes them.
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses ".." and absolute paths; write the raw name for those cases.
        let raw = name.as_bytes();
        h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A member with a special entry type (symlink, hard link) pointing at `target`.
fn link_member(tar: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, target: &str) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_path(name).unwrap();
    h.set_link_name(target).unwrap();
    h.set_cksum();
    tar.append(&h, std::io::empty()).unwrap();
}

struct Corpus<'a> {
    gw: &'a Gateway,
    key: ed25519_dalek::SigningKey,
    good: Vec<(String, Vec<u8>)>,
    n: usize,
}

impl Corpus<'_> {
    fn sign(&self, manifest: &[u8]) -> Vec<u8> {
        self.key.sign(manifest).to_bytes().to_vec()
    }

    /// The good bundle's members with the manifest replaced (and signed again, with a
    /// trusted key: the damage is in what the signature covers, not the signature).
    fn with_manifest(&self, manifest: &str) -> Vec<(String, Vec<u8>)> {
        let mut m = self.good.clone();
        m[0].1 = manifest.as_bytes().to_vec();
        m[1].1 = self.sign(manifest.as_bytes());
        m
    }

    fn manifest_text(&self) -> String {
        String::from_utf8(self.good[0].1.clone()).unwrap()
    }

    fn write(&mut self, bytes: &[u8]) -> PathBuf {
        self.n += 1;
        let p = self.gw.path(&format!("bad-{}.rota", self.n));
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// What a refusal may have touched.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    /// Refused before any slot write: B and the env are unchanged.
    BeforeWrite,
    /// Refused while writing (a payload check): B is not bootable, not activated.
    DuringWrite,
}

fn refuse(gw: &Gateway, bundle: &Path, needles: &[&str], stage: Stage, tried: &mut usize) {
    *tried += 1;
    let a = gw.read("a.img");
    let b = gw.read("b.img");
    let env = gw.read("uboot.env");
    let r = gw.rota(&["install", path_str(bundle)]);
    assert_eq!(
        r.code(),
        1,
        "{} was not refused: {}{}",
        bundle.display(),
        r.stdout(),
        r.stderr()
    );
    eprintln!("refused {}: {}", bundle.display(), r.stderr().trim());
    let err = r.stderr().to_lowercase();
    assert!(
        needles.iter().any(|n| err.contains(&n.to_lowercase())),
        "{}: the message names none of {needles:?}: {}",
        bundle.display(),
        r.stderr()
    );
    assert_eq!(
        gw.read("a.img"),
        a,
        "{}: the booted slot changed",
        bundle.display()
    );
    let vars = gw.fw_printenv();
    assert!(
        vars["BOOT_ORDER"].starts_with('A'),
        "{}: BOOT_ORDER is {:?}",
        bundle.display(),
        vars["BOOT_ORDER"]
    );
    assert_ne!(vars["BOOT_A_LEFT"], "0");
    match stage {
        Stage::BeforeWrite => {
            assert_eq!(
                gw.read("b.img"),
                b,
                "{}: slot B was written",
                bundle.display()
            );
            assert_eq!(
                gw.read("uboot.env"),
                env,
                "{}: the env changed",
                bundle.display()
            );
        }
        Stage::DuringWrite => {
            assert_eq!(
                vars["BOOT_B_LEFT"],
                "0",
                "{}: B left bootable",
                bundle.display()
            );
            assert!(
                !vars["BOOT_ORDER"].starts_with('B'),
                "{}: B activated",
                bundle.display()
            );
        }
    }
    let st = gw.status_json();
    assert_eq!(st["operation"], "idle");
    assert_ne!(st["last_install"]["result"], "activated");
}

#[test]
fn every_malicious_or_broken_bundle_is_refused_and_nothing_is_lost() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let image = pattern(256 << 10, 41);
    let (good_path, _) = gw.bundle("good", "acme-gateway", "1.1.0", image.clone(), "release");
    let good_bytes = std::fs::read(&good_path).unwrap();
    let key = rota::bundle::keys::load_signing_key(&gw.path("keys/release.key.pem")).unwrap();
    let other = rota::bundle::keys::load_signing_key(&gw.path("keys/other.key.pem")).unwrap();
    let good = members(&good_bytes);
    let names: Vec<&str> = good.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "manifest.toml",
            "manifest.toml.sig",
            "rootfs.ext4.chunks",
            "rootfs.ext4"
        ]
    );
    let mut c = Corpus {
        gw: &gw,
        key,
        good: good.clone(),
        n: 0,
    };
    let mut tried = 0;
    let before = Stage::BeforeWrite;

    // 1. A signature with one bit flipped.
    let mut m = good.clone();
    m[1].1[10] ^= 1;
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["signature"], before, &mut tried);
    // 2. No signature member.
    let m: Vec<_> = good
        .iter()
        .filter(|(n, _)| n != "manifest.toml.sig")
        .cloned()
        .collect();
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["manifest.toml.sig was expected"],
        before,
        &mut tried,
    );
    // 3. Signed by a key the device does not trust.
    let mut m = good.clone();
    m[1].1 = other.sign(&m[0].1).to_bytes().to_vec();
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["does not match any"], before, &mut tried);
    // 4. The manifest edited after signing.
    let mut m = good.clone();
    let text = c.manifest_text().replace("1.1.0", "9.9.9");
    m[0].1 = text.into_bytes();
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["signature"], before, &mut tried);
    // 5. The manifest of another signed bundle, with this bundle's signature.
    let (other_path, _) = gw.bundle(
        "other",
        "acme-gateway",
        "1.2.0",
        pattern(128 << 10, 42),
        "release",
    );
    let other_members = members(&std::fs::read(&other_path).unwrap());
    let mut m = good.clone();
    m[0].1 = other_members[0].1.clone();
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["signature"], before, &mut tried);
    // 6. The chunk list edited.
    let mut m = good.clone();
    m[2].1[5] ^= 0x80;
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["chunk index sha-256 is"], before, &mut tried);
    // 7. The chunk list of another bundle.
    let mut m = good.clone();
    m[2].1 = other_members[2].1.clone();
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["member rootfs.ext4.chunks has 64 bytes"],
        before,
        &mut tried,
    );
    // 8. One payload byte flipped: caught by its chunk hash while writing.
    let mut m = good.clone();
    m[3].1[100_000] ^= 0x01;
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["does not match its signed hash"],
        Stage::DuringWrite,
        &mut tried,
    );
    // 9. The bundle cut inside the payload.
    let p = c.write(&good_bytes[..good_bytes.len() - 100_000]);
    refuse(&gw, &p, &["bundle is truncated"], before, &mut tried);
    // 10. A payload longer than the manifest says.
    let mut m = good.clone();
    m[3].1.extend_from_slice(&[0u8; 4096]);
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["has 266240 bytes, the manifest says 262144"],
        before,
        &mut tried,
    );
    // 11. A payload shorter than the manifest says.
    let mut m = good.clone();
    m[3].1.truncate(200_000);
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["has 200000 bytes, the manifest says 262144"],
        before,
        &mut tried,
    );
    // 12. Path traversal in a member name.
    let mut m = good.clone();
    m.push(("../../etc/evil".into(), b"x".to_vec()));
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["unexpected member \"../../etc/evil\""],
        before,
        &mut tried,
    );
    // 13. An absolute member name.
    let mut m = good.clone();
    m.push(("/etc/shadow".into(), b"x".to_vec()));
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["unexpected member \"/etc/shadow\""],
        before,
        &mut tried,
    );
    // 14, 15. A symlink and a hard link member.
    for (kind, name) in [
        (tar::EntryType::Symlink, "is a symlink entry"),
        (tar::EntryType::Link, "is a link entry"),
    ] {
        let mut t = tar::Builder::new(Vec::new());
        for (n, d) in &good[..3] {
            let mut h = tar::Header::new_ustar();
            h.set_path(n).unwrap();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append(&h, &d[..]).unwrap();
        }
        link_member(&mut t, "rootfs.ext4", kind, "/dev/mmcblk0p2");
        let p = c.write(&t.into_inner().unwrap());
        refuse(&gw, &p, &[name], before, &mut tried);
    }
    // 16. A duplicate member (the payload twice).
    let mut m = good.clone();
    m.push(m[3].clone());
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["unexpected member \"rootfs.ext4\""],
        before,
        &mut tried,
    );
    // 17. An extra member the manifest does not name.
    let mut m = good.clone();
    m.push(("payload.sh".into(), b"#!/bin/sh\nrm -rf /\n".to_vec()));
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["unexpected member \"payload.sh\""],
        before,
        &mut tried,
    );
    // 18. Members out of order (payload before its chunk list).
    let mut m = good.clone();
    m.swap(2, 3);
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["rootfs.ext4.chunks was expected"],
        before,
        &mut tried,
    );
    let text = c.manifest_text();
    let size_line = text
        .lines()
        .find(|l| l.starts_with("size"))
        .expect("size in the manifest")
        .to_owned();
    // 19. A huge declared image size (signed).
    let m = c.with_manifest(&text.replace(&size_line, "size = 4611686018427387904"));
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["declares 4611686018427387904 bytes, the limit is"],
        before,
        &mut tried,
    );
    // 20. A negative number.
    let m = c.with_manifest(&text.replace(&size_line, "size = -1"));
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["integer `-1`"], before, &mut tried);
    // 21. A number past u64.
    let m = c.with_manifest(&text.replace(&size_line, "size = 18446744073709551616"));
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["integer `18446744073709551616`"],
        before,
        &mut tried,
    );
    // 22. A gigantic manifest (declared 64 MiB; refused from its header alone).
    let mut m = good.clone();
    m[0].1 = vec![b'#'; 64 << 20];
    let p = c.write(&tar_of(&m));
    refuse(
        &gw,
        &p,
        &["manifest is 67108864 bytes, the limit is"],
        before,
        &mut tried,
    );
    // 23. A manifest that is not UTF-8 (signed).
    let mut m = good.clone();
    let mut bytes = m[0].1.clone();
    bytes.extend_from_slice(b"\n# \xff\xfe\n");
    m[1].1 = c.sign(&bytes);
    m[0].1 = bytes;
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["not utf-8"], before, &mut tried);
    // 24. Built for another board.
    let (wrong, _) = gw.bundle(
        "wc",
        "other-board",
        "1.1.0",
        pattern(64 << 10, 43),
        "release",
    );
    refuse(
        &gw,
        &wrong,
        &["bundle is for \"other-board\""],
        before,
        &mut tried,
    );
    // 25. An image larger than its slot.
    let (big, _) = gw.bundle(
        "big",
        "acme-gateway",
        "1.1.0",
        pattern(gw.read("b.img").len() + 4096, 44),
        "release",
    );
    refuse(&gw, &big, &["larger than slot"], before, &mut tried);
    // 26. A zero-length image (signed; `rota bundle create` refuses to make one).
    let mut m = c.with_manifest(&text.replace(&size_line, "size = 0"));
    m[2].1.clear();
    m[3].1.clear();
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["is empty (size 0)"], before, &mut tried);
    // 27. An unknown manifest format (signed).
    let m = c.with_manifest(&text.replacen("format = 1", "format = 2", 1));
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["format 2 is not supported"], before, &mut tried);
    // 28. An unknown manifest key (signed).
    let m = c.with_manifest(&format!("{text}\n[extra]\nrun = \"/bin/sh\"\n"));
    let p = c.write(&tar_of(&m));
    refuse(&gw, &p, &["unknown field `extra`"], before, &mut tried);
    // 29. A tar header with a wrong checksum.
    let mut bytes = good_bytes.clone();
    bytes[0] ^= 0x20;
    let p = c.write(&bytes);
    refuse(&gw, &p, &["has checksum"], before, &mut tried);
    // 30. An empty file.
    let p = c.write(b"");
    refuse(&gw, &p, &["the bundle has 0 bytes"], before, &mut tried);
    // 31. Not a tar at all.
    let p = c.write(&pattern(64 << 10, 45));
    refuse(
        &gw,
        &p,
        &["tar header at byte 0 is damaged"],
        before,
        &mut tried,
    );

    eprintln!("malicious bundles: tried {tried}, accepted 0");
    assert!(tried >= 30);

    // 32. A downgrade: install 2.0.0, boot it, then offer 1.0.0.
    let (v2, _) = gw.bundle(
        "v2",
        "acme-gateway",
        "2.0.0",
        pattern(64 << 10, 46),
        "release",
    );
    gw.rota(&["install", path_str(&v2)]).success();
    gw.stop_service();
    std::fs::write(gw.path("cmdline"), "rota.slot=B\n").unwrap();
    gw.start_service();
    gw.rota(&["mark", "good"]).success();
    let a_before = gw.read("a.img");
    let b_before = gw.read("b.img");
    let env_before = gw.read("uboot.env");
    let (v1, _) = gw.bundle(
        "v1",
        "acme-gateway",
        "1.0.0",
        pattern(64 << 10, 47),
        "release",
    );
    let r = gw.rota(&["install", path_str(&v1)]);
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains("lower than the booted slot's 2.0.0"),
        "{}",
        r.stderr()
    );
    assert_eq!(gw.read("a.img"), a_before);
    assert_eq!(gw.read("b.img"), b_before, "the booted slot B is untouched");
    assert_eq!(gw.read("uboot.env"), env_before);

    // Nothing stale: a good bundle installs right after all of this.
    let (fine, fine_image) = gw.bundle(
        "fine",
        "acme-gateway",
        "2.1.0",
        pattern(64 << 10, 48),
        "release",
    );
    gw.rota(&["install", path_str(&fine)]).success();
    assert_eq!(&gw.read("a.img")[..fine_image.len()], &fine_image[..]);
    assert_eq!(gw.fw_printenv()["BOOT_ORDER"], "A B");
}
