//! Packing a slot image into its format-2 form (`rota bundle create`): zero runs,
//! compressed frames with their block keys, and — against a previous image given with
//! `--delta-from` — patches for the blocks that image does not have.
//!
//! The image is read twice, streaming: once to hash every 4 KiB block, once to compress
//! the frames (on every core, in order) into a payload file next to the output. Memory
//! is one small record per block plus a bounded batch of frames.

use super::blockmap::{
    block_count, key_of, BlockMap, Codec, Frame, Patch, RefRange, ZeroRun, BLOCK, MAX_FRAME_BLOCKS,
    MAX_PATCH_FRAMES, MAX_PATCH_RAW, MAX_REF_BLOCKS,
};
use super::digest::{sha256, ImageDigest, ImageHasher};
use super::BundleError;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Default raw bytes per frame: small enough that a device on any earlier image fetches
/// little more than what changed.
pub const FRAME_BYTES: u32 = 64 << 10;
/// Default raw bytes per frame with a known base: cuts and patches already isolate what
/// changed, so frames can be as large as compression likes.
pub const FRAME_BYTES_WITH_BASE: u32 = 1 << 20;

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// zstd level (1..=22); 0 stores frames uncompressed.
    pub level: i32,
    /// Most blocks per frame.
    pub frame_blocks: u32,
    /// The image the devices run now, if known: frames are cut where its blocks stop
    /// and start, and patches are made against it.
    pub delta_from: Option<std::path::PathBuf>,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            level: 19,
            frame_blocks: FRAME_BYTES / BLOCK as u32,
            delta_from: None,
        }
    }
}

/// The result: the block map, the payload (in a file), and the image's digest.
pub struct Packed {
    pub map: BlockMap,
    pub digest: ImageDigest,
    pub payload_sha256: String,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> BundleError {
    BundleError::Io(format!("{}: {e}", path.display()))
}

/// Per block of an image: `None` for an all-zero block, else its SHA-256.
type BlockHashes = Vec<Option<[u8; 32]>>;
/// A compression job's result slot, filled by whichever thread takes the job.
type ResultSlot = std::sync::Mutex<Option<Result<Vec<u8>, String>>>;

/// The image's block hashes and its whole digest.
fn hash_blocks(path: &Path) -> Result<(BlockHashes, ImageDigest), BundleError> {
    let mut whole = ImageHasher::new();
    let mut blocks = Vec::new();
    super::writer::for_each_piece(path, 1 << 20, |piece| {
        whole.update(piece);
        for b in piece.chunks(BLOCK as usize) {
            blocks.push((!b.iter().all(|x| *x == 0)).then(|| sha256(b)));
        }
    })?;
    Ok((blocks, whole.finish()))
}

/// Reads `len` bytes at `offset` of `f` (the image is a regular file that must not
/// shrink while it is packed).
fn read_at(f: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, BundleError> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| io_err(path, format!("reading {len} bytes at {offset}: {e}")))?;
    Ok(buf)
}

/// Whether this build can compress (Cargo feature `encoder`; device builds leave it out).
pub const HAS_ENCODER: bool = cfg!(feature = "encoder");

#[cfg(feature = "encoder")]
fn compress(level: i32, data: &[u8], prefix: Option<&[u8]>) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::try_create().ok_or("zstd: cannot allocate an encoder")?;
    let err = |c: usize| format!("zstd: {}", zstd::zstd_safe::get_error_name(c));
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(err)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(err)?;
    // A frame and its reference always fit a 16 MiB window: the decoder's limit.
    cctx.set_parameter(CParameter::WindowLog(23)).map_err(err)?;
    if let Some(p) = prefix {
        cctx.ref_prefix(p).map_err(err)?;
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(err)?;
    Ok(out)
}

/// A device build has no encoder (Cargo feature `encoder`): bundles are made on the
/// build host.
#[cfg(not(feature = "encoder"))]
fn compress(level: i32, _data: &[u8], _prefix: Option<&[u8]>) -> Result<Vec<u8>, String> {
    Err(format!(
        "zstd compression (level {level}) needs the zstd encoder, which this rota was built without \
         (Cargo feature `encoder`, left out of device builds): create bundles on the build \
         host, or pass --zstd-level 0 to store frames uncompressed"
    ))
}

/// Compresses `jobs` (raw bytes, optional reference) on every core, results in order.
fn compress_all(level: i32, jobs: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<Vec<Vec<u8>>, String> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<ResultSlot> = jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((data, prefix)) = jobs.get(i) else {
                    return;
                };
                let r = compress(level, data, prefix.as_deref());
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err("a compression thread stopped".into()))
        })
        .collect()
}

/// Where the blocks of the previous image lie, by content.
struct Base {
    file: File,
    path: std::path::PathBuf,
    /// Its whole blocks (a partial last block is never part of a reference).
    blocks: u64,
    at: HashMap<[u8; 32], u64>,
}

impl Base {
    fn open(path: &Path) -> Result<Base, BundleError> {
        let (hashes, digest) = hash_blocks(path)?;
        let mut at = HashMap::new();
        for (i, h) in hashes.iter().enumerate() {
            if let Some(h) = h {
                at.entry(*h).or_insert(i as u64);
            }
        }
        Ok(Base {
            file: File::open(path).map_err(|e| io_err(path, e))?,
            path: path.to_owned(),
            // Whole blocks only: a reference is read as whole blocks (here and from the
            // device's running slot), and past a partial last block the slot holds
            // whatever the partition had, not what the base file has.
            blocks: digest.size / BLOCK,
            at,
        })
    }
}

/// Packs `image` into `payload` (created or truncated); see the module docs.
pub fn pack(image: &Path, payload: &Path, opts: &PackOptions) -> Result<Packed, BundleError> {
    let bad = |m: String| BundleError::Manifest(m);
    if !(0..=22).contains(&opts.level) {
        return Err(bad(format!("zstd level {} is not in 0..=22", opts.level)));
    }
    if !(1..=MAX_FRAME_BLOCKS).contains(&opts.frame_blocks) {
        return Err(bad(format!(
            "a frame holds 1 to {MAX_FRAME_BLOCKS} blocks, not {}",
            opts.frame_blocks
        )));
    }
    let (hashes, digest) = hash_blocks(image)?;
    let base = opts.delta_from.as_deref().map(Base::open).transpose()?;
    let known = |i: usize| -> Option<u64> {
        let b = base.as_ref()?;
        hashes[i].as_ref().and_then(|h| b.at.get(h).copied())
    };
    let mut map = BlockMap {
        image_size: digest.size,
        ..Default::default()
    };
    debug_assert_eq!(hashes.len() as u64, block_count(digest.size));
    // Cut: zero runs; frames end at a zero block, at the size limit, and (with a base)
    // where blocks the base has meet blocks it has not.
    let mut i = 0usize;
    while i < hashes.len() {
        if hashes[i].is_none() {
            let start = i;
            while i < hashes.len() && hashes[i].is_none() {
                i += 1;
            }
            map.zeros.push(ZeroRun {
                first: start as u64,
                blocks: (i - start) as u64,
            });
            continue;
        }
        let start = i;
        let is_known = known(i).is_some();
        while i < hashes.len()
            && hashes[i].is_some()
            && i - start < opts.frame_blocks as usize
            && (base.is_none() || known(i).is_some() == is_known)
        {
            i += 1;
        }
        let keys_at = map.keys.len();
        map.keys
            .extend(hashes[start..i].iter().flatten().map(key_of));
        map.frames.push(Frame {
            first: start as u64,
            blocks: (i - start) as u32,
            codec: Codec::Zstd,
            offset: 0,
            csize: 0,
            sha256: [0; 32],
            keys_at,
        });
    }

    let src = File::open(image).map_err(|e| io_err(image, e))?;
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        File::create(payload).map_err(|e| io_err(payload, e))?,
    );
    let mut payload_hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut offset = 0u64;
    // Frames in batches of at most 64 MiB raw: compressed on every core, written in order.
    let mut f = 0;
    while f < map.frames.len() {
        let mut end = f;
        let mut raw = 0u64;
        while end < map.frames.len() && raw < 64 << 20 {
            raw += map.frame_len(&map.frames[end]);
            end += 1;
        }
        let mut jobs = Vec::with_capacity(end - f);
        for fr in &map.frames[f..end] {
            let (at, len) = map.frame_range(fr);
            jobs.push((read_at(&src, image, at, len as usize)?, None));
        }
        let packed = if opts.level == 0 {
            Vec::new()
        } else {
            compress_all(opts.level, &jobs).map_err(bad)?
        };
        for (k, (raw, _)) in jobs.iter().enumerate() {
            let fr = &mut map.frames[f + k];
            fr.sha256 = sha256(raw);
            // Stored when compression does not pay.
            let data = match packed.get(k) {
                Some(p) if p.len() < raw.len() => p,
                _ => {
                    fr.codec = Codec::Stored;
                    raw
                }
            };
            fr.offset = offset;
            fr.csize = data.len() as u32;
            out.write_all(data).map_err(|e| io_err(payload, e))?;
            payload_hash.update(data);
            offset += data.len() as u64;
        }
        f = end;
    }

    if let Some(base) = &base {
        for (patch, data) in make_patches(&map, &hashes, base, &src, image, opts.level)? {
            let mut patch = patch;
            patch.offset = offset;
            patch.csize = data.len() as u32;
            out.write_all(&data).map_err(|e| io_err(payload, e))?;
            payload_hash.update(&data);
            offset += data.len() as u64;
            map.patches.push(patch);
        }
    }
    let file = out.into_inner().map_err(|e| io_err(payload, e.error()))?;
    file.sync_all().map_err(|e| io_err(payload, e))?;
    debug_assert_eq!(offset, map.payload_size());
    // What devices will parse: a map the reader refuses must never be signed.
    BlockMap::from_bytes(&map.to_bytes(), map.image_size, map.payload_size()).map_err(|e| {
        bad(format!(
            "the packer made a block map the reader refuses: {e}"
        ))
    })?;
    Ok(Packed {
        map,
        digest,
        payload_sha256: hex::encode(payload_hash.finish()),
    })
}

/// Blocks of the previous image around where a frame of new blocks most likely came
/// from: images made from scratch keep files in the same order, so the old version of a
/// changed file sits right after the old copy of the block before it.
fn predicted_ref(
    map: &BlockMap,
    frame: &Frame,
    hashes: &[Option<[u8; 32]>],
    base: &Base,
) -> Option<RefRange> {
    const BEFORE: u64 = 4;
    const AFTER: u64 = 8;
    let mut k = frame.first;
    let anchor = loop {
        if k == 0 {
            return None;
        }
        k -= 1;
        if let Some(at) = hashes[k as usize].as_ref().and_then(|h| base.at.get(h)) {
            break *at;
        }
    };
    let guess = anchor + (frame.first - k);
    let start = guess.saturating_sub(BEFORE).min(base.blocks);
    let end = (guess + u64::from(frame.blocks) + AFTER).min(base.blocks);
    let _ = map;
    (end > start).then_some(RefRange {
        start,
        blocks: (end - start) as u32,
    })
}

/// Patches for the frames whose blocks the base does not have, grouped in image order up
/// to the patch limits; each compressed against its predicted reference.
fn make_patches(
    map: &BlockMap,
    hashes: &[Option<[u8; 32]>],
    base: &Base,
    src: &File,
    image: &Path,
    level: i32,
) -> Result<Vec<(Patch, Vec<u8>)>, BundleError> {
    let new_frames: Vec<usize> = map
        .frames
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            hashes[f.first as usize]
                .as_ref()
                .is_some_and(|h| !base.at.contains_key(h))
        })
        .map(|(i, _)| i)
        .collect();
    let mut groups: Vec<(Vec<u32>, Vec<RefRange>)> = Vec::new();
    let (mut frames, mut refs, mut raw, mut ref_blocks) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for fi in new_frames {
        let f = &map.frames[fi];
        let len = map.frame_len(f);
        // A large frame's predicted reference may pass what one patch may name.
        let r = predicted_ref(map, f, hashes, base).map(|r| RefRange {
            blocks: r.blocks.min(MAX_REF_BLOCKS as u32),
            ..r
        });
        let rb = r.map_or(0, |r| u64::from(r.blocks));
        if !frames.is_empty()
            && (frames.len() as u32 >= MAX_PATCH_FRAMES
                || raw + len > MAX_PATCH_RAW.min(1 << 20)
                || ref_blocks + rb > MAX_REF_BLOCKS)
        {
            groups.push((std::mem::take(&mut frames), std::mem::take(&mut refs)));
            raw = 0;
            ref_blocks = 0;
        }
        frames.push(fi as u32);
        raw += len;
        if let Some(r) = r {
            // Overlapping or touching references are one range.
            match refs.last_mut() {
                Some(RefRange { start, blocks })
                    if r.start >= *start && r.start <= *start + u64::from(*blocks) =>
                {
                    let end = (r.start + u64::from(r.blocks)).max(*start + u64::from(*blocks));
                    ref_blocks += end - (*start + u64::from(*blocks));
                    *blocks = (end - *start) as u32;
                }
                _ => {
                    refs.push(r);
                    ref_blocks += rb;
                }
            }
        }
    }
    if !frames.is_empty() {
        groups.push((frames, refs));
    }
    let mut jobs = Vec::new();
    let mut metas = Vec::new();
    for (frames, refs) in groups {
        if refs.is_empty() {
            continue;
        }
        let mut reference = Vec::new();
        for r in &refs {
            reference.extend(read_at(
                &base.file,
                &base.path,
                r.start * BLOCK,
                r.blocks as usize * BLOCK as usize,
            )?);
        }
        let mut raw = Vec::new();
        for fi in &frames {
            let (at, len) = map.frame_range(&map.frames[*fi as usize]);
            raw.extend(read_at(src, image, at, len as usize)?);
        }
        metas.push(Patch {
            frames,
            offset: 0,
            csize: 0,
            ref_sha256: sha256(&reference),
            refs,
        });
        jobs.push((raw, Some(reference)));
    }
    let level = if level == 0 { 3 } else { level };
    let packed = compress_all(level, &jobs).map_err(BundleError::Manifest)?;
    // A patch that is not smaller than its frames is no patch.
    Ok(metas
        .into_iter()
        .zip(packed)
        .filter(|(p, data)| {
            let frames: u64 = p
                .frames
                .iter()
                .map(|f| u64::from(map.frames[*f as usize].csize))
                .sum();
            (data.len() as u64) < frames
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of `BLOCK` bytes that is not all zero and differs for every `n`.
    fn block(n: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK as usize];
        let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for byte in b.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        b
    }

    fn pack_bytes(dir: &Path, image: &[u8], opts: &PackOptions) -> (Packed, u64) {
        let img = dir.join("image");
        let payload = dir.join("payload");
        std::fs::write(&img, image).unwrap();
        let packed = pack(&img, &payload, opts).unwrap();
        let len = std::fs::metadata(&payload).unwrap().len();
        (packed, len)
    }

    #[test]
    fn zero_runs_cost_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // 8 MiB of zeros: no frame, one zero run, an empty payload.
        let (p, len) = pack_bytes(dir.path(), &vec![0u8; 8 << 20], &PackOptions::default());
        assert!(p.map.frames.is_empty(), "{:?}", p.map.frames);
        assert_eq!(
            p.map.zeros,
            [ZeroRun {
                first: 0,
                blocks: 2048
            }]
        );
        assert_eq!((len, p.map.payload_size()), (0, 0));
        assert_eq!(p.digest.size, 8 << 20);
        // Data, 4 MiB of zeros, data: two one-block frames around one zero run, and the
        // payload is no larger than the two blocks.
        let mut image = block(1);
        image.resize(image.len() + (4 << 20), 0);
        image.extend_from_slice(&block(2));
        let (p, len) = pack_bytes(dir.path(), &image, &PackOptions::default());
        let cut: Vec<(u64, u32)> = p.map.frames.iter().map(|f| (f.first, f.blocks)).collect();
        assert_eq!(cut, [(0, 1), (1025, 1)]);
        assert_eq!(
            p.map.zeros,
            [ZeroRun {
                first: 1,
                blocks: 1024
            }]
        );
        assert!(len <= 2 * BLOCK, "{len} bytes of payload");
    }

    #[test]
    fn frames_are_cut_where_base_blocks_meet_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let base: Vec<u8> = (0..8).flat_map(block).collect();
        std::fs::write(dir.path().join("base"), &base).unwrap();
        // Base blocks 0..4, four new blocks, base blocks 4..8.
        let image: Vec<u8> = (0..4).chain(100..104).chain(4..8).flat_map(block).collect();
        let opts = PackOptions {
            level: 3,
            frame_blocks: MAX_FRAME_BLOCKS,
            delta_from: Some(dir.path().join("base")),
        };
        let (p, _) = pack_bytes(dir.path(), &image, &opts);
        let cut: Vec<(u64, u32)> = p.map.frames.iter().map(|f| (f.first, f.blocks)).collect();
        assert_eq!(cut, [(0, 4), (4, 4), (8, 4)]);
        for f in &p.map.frames {
            let (at, len) = p.map.frame_range(f);
            assert_eq!(f.sha256, sha256(&image[at as usize..(at + len) as usize]));
        }
        // Without a base the same image is one frame.
        let (p, _) = pack_bytes(
            dir.path(),
            &image,
            &PackOptions {
                delta_from: None,
                ..opts
            },
        );
        assert_eq!(p.map.frames.len(), 1);
    }

    /// A base whose size is not a multiple of 4 KiB packs (it used to fail reading a
    /// whole last block), and no reference reaches into its partial last block.
    #[test]
    fn a_base_with_a_partial_last_block_packs() {
        let dir = tempfile::tempdir().unwrap();
        let mut base: Vec<u8> = (0..3).flat_map(block).collect();
        base.extend_from_slice(&block(3)[..1000]);
        std::fs::write(dir.path().join("base"), &base).unwrap();
        let mut image = base.clone();
        for k in 0..16 {
            image[2 * BLOCK as usize + 7 + k * 111] ^= 0x5a;
        }
        let opts = PackOptions {
            level: 3,
            frame_blocks: 1,
            delta_from: Some(dir.path().join("base")),
        };
        let (p, _) = pack_bytes(dir.path(), &image, &opts);
        assert!(!p.map.patches.is_empty());
        for patch in &p.map.patches {
            for r in &patch.refs {
                assert!(r.start + u64::from(r.blocks) <= 3, "{r:?}");
            }
        }
    }

    /// A frame of MAX_FRAME_BLOCKS changed blocks in the middle of a larger base: its
    /// predicted reference (the frame plus a margin) would pass MAX_REF_BLOCKS; the
    /// packer keeps it within, and the map it makes is one the reader accepts.
    #[test]
    fn a_patch_for_the_largest_frame_keeps_its_reference_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let n = u64::from(MAX_FRAME_BLOCKS);
        let base: Vec<u8> = (0..n + 40).flat_map(block).collect();
        std::fs::write(dir.path().join("base"), &base).unwrap();
        // Base blocks 0..20, then the old middle with one byte changed per block, then
        // the base's last 20 blocks.
        let mut image = base.clone();
        for b in 20..20 + n as usize {
            image[b * BLOCK as usize + 9] ^= 0x77;
        }
        let opts = PackOptions {
            level: 1,
            frame_blocks: MAX_FRAME_BLOCKS,
            delta_from: Some(dir.path().join("base")),
        };
        let (p, _) = pack_bytes(dir.path(), &image, &opts);
        assert_eq!(p.map.patches.len(), 1, "{:?}", p.map.patches);
        assert!(p.map.patches[0].ref_blocks() <= MAX_REF_BLOCKS);
        BlockMap::from_bytes(&p.map.to_bytes(), p.map.image_size, p.map.payload_size())
            .expect("the reader accepts what the packer made");
    }
}
