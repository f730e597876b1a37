//! Hostile format-2 bundles: a tampered compressed frame, a re-signed block map that
//! lies about a frame's hash or size, and a decompression bomb are each installed
//! through the real service path (`rota install` → D-Bus → `rota service`). Each must
//! fail with a message naming the problem, not one byte of the bad frame may reach slot
//! B (filled with a known pattern first), and the booted slot A and its place in the
//! boot order stay as they were.

mod support;

use rota::bundle::blockmap::{BlockMap, Codec};
use rota::bundle::digest::sha256_hex;
use rota::bundle::manifest::Manifest;
use support::gateway::{path_str, pattern, Gateway};
use support::tarcraft::{assemble, member_names, members, resign, signing_key, Raw};

/// Image size: five 64 KiB frames, the last one partial.
const IMAGE: usize = 300_000;

/// A compressible image (each 4 KiB block is one 512-byte pattern eight times) so that
/// its frames are zstd frames, not stored ones.
fn image(seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(IMAGE + 4096);
    let mut i = 0;
    while v.len() < IMAGE {
        let unit = pattern(512, seed * 1000 + i);
        for _ in 0..8 {
            v.extend_from_slice(&unit);
        }
        i += 1;
    }
    v.truncate(IMAGE);
    v
}

/// The block map of a bundle's one image, with its members.
fn parse(bundle: &[u8]) -> (Vec<Raw>, Manifest, BlockMap) {
    let ms = members(bundle);
    let names = member_names(&ms);
    assert_eq!(
        names,
        [
            "manifest.toml",
            "manifest.toml.sig",
            "rootfs.ext4.blocks",
            "rootfs.ext4"
        ]
    );
    let manifest = Manifest::parse(&ms[0].data).expect("manifest");
    let map = BlockMap::from_bytes(&ms[2].data, IMAGE as u64, ms[3].data.len() as u64)
        .expect("block map");
    (ms, manifest, map)
}

/// The bundle with its block map and payload changed by `f`, every manifest hash
/// recomputed and the manifest signed again with the release key: only the content
/// checks can catch what `f` did.
fn reforge(gw: &Gateway, bundle: &[u8], f: &dyn Fn(&mut BlockMap, &mut Vec<u8>)) -> Vec<u8> {
    let (mut ms, mut manifest, mut map) = parse(bundle);
    let mut payload = ms[3].data.clone();
    f(&mut map, &mut payload);
    let map_bytes = map.to_bytes();
    let img = &mut manifest.images[0];
    img.block_map_size = Some(map_bytes.len() as u64);
    img.block_map_sha256 = Some(sha256_hex(&map_bytes));
    img.payload_size = Some(payload.len() as u64);
    img.payload_sha256 = Some(sha256_hex(&payload));
    ms[2].data = map_bytes;
    ms[3].data = payload;
    let text = manifest.to_toml().expect("manifest to toml");
    let key = signing_key(&gw.path("keys/release.key.pem"));
    resign(&mut ms, text.as_bytes(), &key);
    assemble(&ms)
}

struct Case {
    kind: &'static str,
    bytes: Vec<u8>,
    /// Every one of these must be in the error.
    want: Vec<&'static str>,
    /// Bytes of the image that must not change in slot B.
    guarded: (usize, usize),
}

#[test]
fn hostile_block_bundles_never_reach_the_slot() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let (good_path, good_image) = gw.bundle_with(
        "good",
        "acme-gateway",
        "3.0.0",
        image(31),
        "release",
        &["--zstd-level", "1"],
    );
    let good = std::fs::read(&good_path).unwrap();
    let (_, _, map) = parse(&good);
    assert!(map.frames.len() >= 4, "{} frames", map.frames.len());
    assert!(
        map.frames.iter().all(|f| f.codec == Codec::Zstd),
        "{:?}",
        map.frames
    );
    let range = |i: usize| {
        let (at, len) = map.frame_range(&map.frames[i]);
        (at as usize, (at + len) as usize)
    };
    let payload_at = |i: usize| map.frames[i].offset as usize;

    let mut cases = Vec::new();
    // a. One byte flipped inside frame 1's compressed bytes, signature untouched.
    {
        let mut ms = members(&good);
        let f = &map.frames[1];
        ms[3].data[payload_at(1) + f.csize as usize / 2] ^= 0x40;
        cases.push(Case {
            kind: "tampered compressed frame",
            bytes: assemble(&ms),
            want: vec!["refused", "does not match its signed hash"],
            guarded: range(1),
        });
    }
    // b. A re-signed block map claiming a wrong SHA-256 for frame 2.
    cases.push(Case {
        kind: "block map with a wrong frame hash",
        bytes: reforge(&gw, &good, &|m, _| m.frames[2].sha256[0] ^= 1),
        want: vec!["refused", "does not match its signed hash"],
        guarded: range(2),
    });
    // b'. A re-signed block map claiming frame 2 is one byte shorter than it is (the
    // payload shrunk to match, so the sizes add up).
    cases.push(Case {
        kind: "block map with a wrong frame csize",
        bytes: reforge(&gw, &good, &|m, p| {
            let f = &mut m.frames[2];
            let cut = (f.offset + u64::from(f.csize) - 1) as usize;
            p.remove(cut);
            f.csize -= 1;
            for g in m.frames.iter_mut().skip(3) {
                g.offset -= 1;
            }
        }),
        want: vec!["refused", "zstd"],
        guarded: range(2),
    });
    // c. A decompression bomb: the last frame's bytes replaced by 1 MiB of zeros then
    // data, compressed, under the frame's declared size.
    {
        let last = map.frames.len() - 1;
        let mut raw = vec![0u8; 1 << 20];
        raw[(1 << 20) - 64..].copy_from_slice(&pattern(64, 7));
        let bomb = zstd::bulk::compress(&raw, 19).unwrap();
        assert!(bomb.len() < 1024, "{} byte bomb", bomb.len());
        cases.push(Case {
            kind: "decompression bomb",
            bytes: reforge(&gw, &good, &|m, p| {
                let f = &mut m.frames[last];
                p.truncate(f.offset as usize);
                p.extend_from_slice(&bomb);
                f.csize = bomb.len() as u32;
            }),
            want: vec!["refused", "inflates past its declared"],
            guarded: range(last),
        });
    }

    let a_image = gw.read("a.img");
    for (n, case) in cases.iter().enumerate() {
        let file = gw.path(&format!("bad-{n}.rota"));
        std::fs::write(&file, &case.bytes).unwrap();
        // Slot B holds a known pattern: the guarded region must still hold it after.
        let b_len = gw.read("b.img").len();
        let fill = pattern(b_len, 90 + n as u64);
        std::fs::write(gw.path("b.img"), &fill).unwrap();
        let vars_before = gw.fw_printenv();
        let r = gw.rota(&["install", path_str(&file)]);
        let err = r.stderr();
        assert_eq!(
            r.code(),
            1,
            "[{}] must fail: {}{err}",
            case.kind,
            r.stdout()
        );
        let (from, to) = case.guarded;
        let named = format!("the frame at bytes {from}..{to}");
        assert!(
            err.contains(&named),
            "[{}] want {named:?} in:\n{err}",
            case.kind
        );
        for want in &case.want {
            assert!(
                err.contains(want),
                "[{}] want {want:?} in:\n{err}",
                case.kind
            );
        }
        assert!(
            !err.contains("panick") && err.len() < 2048,
            "[{}] {err}",
            case.kind
        );
        let b = gw.read("b.img");
        assert!(
            b[from..to] == fill[from..to],
            "[{}] bytes of the bad frame ({from}..{to}) reached slot B",
            case.kind
        );
        assert!(gw.read("a.img") == a_image, "[{}] a.img changed", case.kind);
        let vars = gw.fw_printenv();
        let order = &vars["BOOT_ORDER"];
        assert!(order.starts_with('A'), "[{}] BOOT_ORDER={order}", case.kind);
        assert!(
            !order.split_whitespace().any(|s| s == "B"),
            "[{}] B activated: BOOT_ORDER={order}",
            case.kind
        );
        assert_eq!(
            vars["BOOT_A_LEFT"], vars_before["BOOT_A_LEFT"],
            "[{}]",
            case.kind
        );
        eprintln!("{n} {}: {}", case.kind, err.trim());
    }
    // The honest bundle still installs, bit-exact.
    gw.rota(&["install", path_str(&good_path)]).success();
    assert!(gw.read("b.img")[..IMAGE] == good_image[..]);
}

/// Slot B filled with a known pattern; returns it.
fn fill_b(gw: &Gateway, seed: u64) -> Vec<u8> {
    let fill = pattern(gw.read("b.img").len(), seed);
    std::fs::write(gw.path("b.img"), &fill).unwrap();
    fill
}

/// A and its place first in the boot order are as before; B is not in the boot order.
fn assert_a_kept(gw: &Gateway, a: &[u8], a_left: &str, what: &str) {
    assert!(gw.read("a.img") == a, "[{what}] a.img changed");
    let vars = gw.fw_printenv();
    let order = &vars["BOOT_ORDER"];
    assert!(order.starts_with('A'), "[{what}] BOOT_ORDER={order}");
    assert!(
        !order.split_whitespace().any(|s| s == "B"),
        "[{what}] B activated: BOOT_ORDER={order}"
    );
    assert_eq!(vars["BOOT_A_LEFT"], a_left, "[{what}]");
}

/// d. A server that, after the signed head of one bundle, serves the frames of another
/// bundle of exactly the same layout (stored frames, same sizes): every frame fetched
/// over HTTP is refused by its hash and nothing of the other image reaches slot B.
#[test]
fn a_server_serving_another_bundles_blocks_is_refused() {
    let mut gw = Gateway::new(false);
    let pki = gw.path("pki");
    support::nginx::make_pki(&pki);
    std::fs::create_dir_all(gw.path("www")).unwrap();
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    std::fs::write(
        gw.path("system.toml"),
        format!("{cfg}[http]\nretries = 3\nstall-timeout = \"5s\"\n"),
    )
    .unwrap();
    let ng = support::nginx::Nginx::start(&gw.path("www"), &pki, &gw.path("nginx"));
    gw.start_service();
    let level0 = ["--zstd-level", "0"];
    let (x_path, _) = gw.bundle_with("x", "acme-gateway", "3.0.0", image(51), "release", &level0);
    let (y_path, _) = gw.bundle_with("y", "acme-gateway", "3.0.1", image(52), "release", &level0);
    let x = std::fs::read(&x_path).unwrap();
    let y = std::fs::read(&y_path).unwrap();
    let (mut xs, _, xmap) = parse(&x);
    let (ys, _, ymap) = parse(&y);
    // Same layout: only the bytes differ.
    assert_eq!(x.len(), y.len());
    let layout = |m: &BlockMap| -> Vec<(u64, u64, u32)> {
        m.frames
            .iter()
            .map(|f| (f.first, f.offset, f.csize))
            .collect()
    };
    assert_eq!(layout(&xmap), layout(&ymap));
    xs[3].data = ys[3].data.clone();
    let hybrid = assemble(&xs);
    assert_eq!(hybrid.len(), x.len());
    std::fs::write(gw.path("www/x.rota"), &hybrid).unwrap();

    let fill = fill_b(&gw, 77);
    let a = gw.read("a.img");
    let a_left = gw.fw_printenv()["BOOT_A_LEFT"].clone();
    let r = gw.rota(&["install", &ng.url(ng.http, false, "x.rota")]);
    let err = r.stderr();
    assert_eq!(r.code(), 1, "must fail: {}{err}", r.stdout());
    assert!(
        err.contains("refused") && err.contains("does not match its signed hash"),
        "{err}"
    );
    assert!(err.contains("the frame at bytes"), "{err}");
    assert!(
        gw.read("b.img")[..IMAGE] == fill[..IMAGE],
        "bytes of the other image reached slot B"
    );
    assert_a_kept(&gw, &a, &a_left, "other bundle's blocks");
    eprintln!("served another bundle's blocks: {}", err.trim());
}

/// e. Patches: a `--delta-from` bundle on a device not running its base installs
/// bit-exact from frames (the patches' references do not match); on a device running
/// the base, a patch with bytes flipped (re-signed, so only content checks catch it)
/// never puts a wrong byte into slot B.
#[test]
fn patches_against_the_wrong_base_or_tampered_are_never_trusted() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let base = image(61);
    // v2: the base with a few bytes changed in every other block, so patches pay.
    let mut v2 = base.clone();
    for blk in (0..IMAGE / 4096).step_by(2) {
        for k in 0..16 {
            v2[blk * 4096 + 100 + k * 37] ^= 0x5a;
        }
    }
    std::fs::write(gw.path("base.img"), &base).unwrap();
    let base_arg = path_str(&gw.path("base.img")).to_owned();
    let (delta_path, _) = gw.bundle_with(
        "delta",
        "acme-gateway",
        "3.0.0",
        v2.clone(),
        "release",
        &["--delta-from", &base_arg],
    );
    let delta = std::fs::read(&delta_path).unwrap();
    let (_, _, map) = parse(&delta);
    assert!(!map.patches.is_empty(), "no patches were made");

    // Not running the base: the patches are ignored, the install is bit-exact.
    assert!(gw.read("a.img")[..IMAGE] != base[..]);
    let a = gw.read("a.img");
    fill_b(&gw, 78);
    gw.rota(&["install", path_str(&delta_path)]).success();
    assert!(gw.read("b.img")[..IMAGE] == v2[..], "B is not v2");
    assert!(gw.read("a.img") == a, "a.img changed");
    gw.rota(&["mark", "active", "A"]).success();

    // Running the base, with every patch's bytes flipped in the middle.
    let mut a = gw.read("a.img");
    a[..IMAGE].copy_from_slice(&base);
    std::fs::write(gw.path("a.img"), &a).unwrap();
    let tampered = reforge(&gw, &delta, &|m, p| {
        for patch in &m.patches {
            p[(patch.offset + u64::from(patch.csize) / 2) as usize] ^= 0xff;
        }
    });
    let file = gw.path("tampered-patch.rota");
    std::fs::write(&file, tampered).unwrap();
    let fill = fill_b(&gw, 79);
    let a_left = gw.fw_printenv()["BOOT_A_LEFT"].clone();
    let r = gw.rota(&["install", path_str(&file)]);
    let b = gw.read("b.img");
    assert!(gw.read("a.img") == a, "a.img changed");
    if r.code() == 0 {
        assert!(b[..IMAGE] == v2[..], "installed, but B is not v2");
        eprintln!("tampered patch: fell back to frames, bit-exact");
    } else {
        let err = r.stderr();
        assert!(!err.contains("panick") && err.len() < 2048, "{err}");
        // Every block of B is the old pattern or the right new bytes, never other.
        for (i, blk) in b[..IMAGE].chunks(4096).enumerate() {
            let at = i * 4096;
            let end = at + blk.len();
            assert!(
                blk == &fill[at..end] || blk == &v2[at..end],
                "wrong bytes in B at {at}: {err}"
            );
        }
        assert_a_kept(&gw, &a, &a_left, "tampered patch");
        eprintln!("tampered patch refused: {}", err.trim());
    }
}

/// f. Frames that all match their hashes, under a re-signed manifest whose CRC32 of the
/// image is another: the read-back, which follows the writer straight from the device,
/// finds the difference, and slot B is never activated.
#[test]
fn an_image_that_reads_back_other_than_its_manifest_says_is_not_activated() {
    let mut gw = Gateway::new(false);
    gw.start_service();
    let (good_path, _) = gw.bundle_with(
        "good",
        "acme-gateway",
        "3.0.0",
        image(33),
        "release",
        &["--zstd-level", "1"],
    );
    let good = std::fs::read(&good_path).unwrap();
    let (mut ms, mut manifest, _) = parse(&good);
    let crc = manifest.images[0].crc32;
    manifest.images[0].crc32 = crc ^ 1;
    let text = manifest.to_toml().expect("manifest to toml");
    let key = signing_key(&gw.path("keys/release.key.pem"));
    resign(&mut ms, text.as_bytes(), &key);
    let file = gw.path("lying-crc.rota");
    std::fs::write(&file, assemble(&ms)).unwrap();
    let a_image = gw.read("a.img");
    let vars_before = gw.fw_printenv();
    let r = gw.rota(&["install", path_str(&file)]);
    let err = r.stderr();
    assert_eq!(r.code(), 1, "must fail: {}{err}", r.stdout());
    let want = format!("CRC32 is {crc:08x}, expected {:08x}", crc ^ 1);
    assert!(
        err.contains("read-back of rootfs.ext4 from slot") && err.contains(&want),
        "want the read-back's finding ({want}) in:\n{err}"
    );
    assert!(gw.read("a.img") == a_image, "a.img changed");
    // The install took B out of the boot order before writing it, and left it out.
    let vars = gw.fw_printenv();
    assert_eq!(
        vars["BOOT_ORDER"], "A",
        "before: {}",
        vars_before["BOOT_ORDER"]
    );
    assert_eq!(vars["BOOT_A_LEFT"], vars_before["BOOT_A_LEFT"]);
    // The honest bundle installs, read back and activated.
    gw.rota(&["install", path_str(&good_path)]).success();
    assert!(gw.fw_printenv()["BOOT_ORDER"].starts_with('B'));
}
