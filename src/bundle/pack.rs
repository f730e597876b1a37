//! Packing a slot image into its format-2 form (`rota bundle create`): zero runs,
//! compressed frames with their block keys, and — against a previous image given with
//! `--delta-from` — patches that supply the blocks a device running that image will not
//! find by key (the device gathers the rest of those frames itself).
//!
//! The image is read twice, streaming: once to hash every 4 KiB block, once to compress
//! the frames (on every core, in order) into a payload file next to the output. Memory
//! is one small record per block plus a bounded batch of frames.

use super::blockmap::{
    block_count, key_of, BlockMap, BlockRun, Codec, Frame, Patch, RefRange, ZeroRun, BLOCK,
    MAX_FRAME_BLOCKS, MAX_PATCH_FRAMES, MAX_PATCH_RAW, MAX_REF_BLOCKS,
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
/// Default raw bytes per frame with a known base: patches carry just the blocks that
/// changed, so frames can be as large as the format allows (compression gains most).
pub const FRAME_BYTES_WITH_BASE: u32 = MAX_FRAME_BLOCKS * BLOCK as u32;

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// zstd level (1..=22); 0 stores frames uncompressed.
    pub level: i32,
    /// Most blocks per frame.
    pub frame_blocks: u32,
    /// The image the devices run now, if known: patches are made against it.
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

/// The previous image as a device running it sees it: its blocks by key.
struct Base {
    file: File,
    path: std::path::PathBuf,
    /// Its whole blocks (a partial last block is never part of a reference).
    blocks: u64,
    /// Per key, the block a device's key table holds for it (the first non-zero whole
    /// block with that key) and that block's SHA-256.
    by_key: HashMap<u32, ([u8; 32], u64)>,
}

impl Base {
    fn open(path: &Path) -> Result<Base, BundleError> {
        let (hashes, digest) = hash_blocks(path)?;
        let blocks = digest.size / BLOCK;
        let mut by_key = HashMap::new();
        for (i, h) in hashes.iter().enumerate().take(blocks as usize) {
            if let Some(h) = h {
                by_key.entry(key_of(h)).or_insert((*h, i as u64));
            }
        }
        Ok(Base {
            file: File::open(path).map_err(|e| io_err(path, e))?,
            path: path.to_owned(),
            // Whole blocks only: a reference is read as whole blocks (here and from the
            // device's running slot), and past a partial last block the slot holds
            // whatever the partition had, not what the base file has.
            blocks,
            by_key,
        })
    }

    /// Where a device running this image finds a block of content `h` by its key: only
    /// when the block its key table holds for that key is that content (two contents
    /// may share a 4-byte key; the device keeps one).
    fn find(&self, h: &[u8; 32]) -> Option<u64> {
        self.by_key
            .get(&key_of(h))
            .filter(|(have, _)| have == h)
            .map(|(_, at)| *at)
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
    let mut map = BlockMap {
        image_size: digest.size,
        ..Default::default()
    };
    debug_assert_eq!(hashes.len() as u64, block_count(digest.size));
    // Cut: zero runs; frames end at a zero block and at the size limit.
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
        while i < hashes.len() && hashes[i].is_some() && i - start < opts.frame_blocks as usize {
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

/// A run of blocks a device running the base will not find, and the range of the base
/// it is compressed against.
struct Missing {
    frame: u32,
    run: BlockRun,
    reference: Option<RefRange>,
}

/// The runs of blocks (within each frame) a device running `base` will not find by key,
/// each with the range of the base its old version most likely lies in: images made
/// from scratch keep files in the same order, so the old version of a changed file sits
/// right after the old copy of the last block before it that the base has.
fn missing_runs(map: &BlockMap, hashes: &[Option<[u8; 32]>], base: &Base) -> Vec<Missing> {
    const BEFORE: u64 = 4;
    const AFTER: u64 = 8;
    // A partial last block is never in a device's key table.
    let whole = map.image_size / BLOCK;
    let found = |b: u64| -> Option<u64> {
        (b < whole)
            .then(|| hashes[b as usize].as_ref())
            .flatten()
            .and_then(|h| base.find(h))
    };
    let mut out = Vec::new();
    // The last block found so far: (block of the new image, where the base has it).
    let mut anchor: Option<(u64, u64)> = None;
    for (fi, f) in map.frames.iter().enumerate() {
        let end = f.first + u64::from(f.blocks);
        let mut b = f.first;
        while b < end {
            if let Some(at) = found(b) {
                anchor = Some((b, at));
                b += 1;
                continue;
            }
            let first = b;
            while b < end && found(b).is_none() {
                b += 1;
            }
            let blocks = b - first;
            // Without an anchor: the same place in the base (the file system's own
            // metadata at the start of the image).
            let guess = anchor.map_or(first, |(k, at)| at + (first - k));
            let start = guess.saturating_sub(BEFORE).min(base.blocks);
            let stop = (guess + blocks + AFTER)
                .min(base.blocks)
                .min(start + MAX_REF_BLOCKS);
            out.push(Missing {
                frame: fi as u32,
                run: BlockRun {
                    first,
                    blocks: blocks as u32,
                },
                reference: (stop > start).then_some(RefRange {
                    start,
                    blocks: (stop - start) as u32,
                }),
            });
        }
    }
    out
}

/// Blocks `r` would add to references ending with `last`: none where it lies within.
fn ref_growth(last: Option<&RefRange>, r: &RefRange) -> u64 {
    let end = r.start + u64::from(r.blocks);
    match last {
        Some(l) if r.start >= l.start && r.start <= l.start + u64::from(l.blocks) => {
            end.saturating_sub(l.start + u64::from(l.blocks))
        }
        _ => u64::from(r.blocks),
    }
}

/// Adds `r` to `refs`, merged into the last range when it overlaps or touches it;
/// returns the blocks added.
fn push_ref(refs: &mut Vec<RefRange>, r: RefRange) -> u64 {
    let grows = ref_growth(refs.last(), &r);
    match refs.last_mut() {
        Some(l) if r.start >= l.start && r.start <= l.start + u64::from(l.blocks) => {
            l.blocks += grows as u32;
        }
        _ => refs.push(r),
    }
    grows
}

/// Patches for the blocks a device running the base will not find: runs grouped in image
/// order up to the patch limits, each group compressed against its references.
fn make_patches(
    map: &BlockMap,
    hashes: &[Option<[u8; 32]>],
    base: &Base,
    src: &File,
    image: &Path,
    level: i32,
) -> Result<Vec<(Patch, Vec<u8>)>, BundleError> {
    // Per frame: its missing runs and their references, merged, within MAX_REF_BLOCKS
    // (a frame's runs all go into one patch: a device completes a frame from one).
    let mut per_frame: Vec<(u32, Vec<BlockRun>, Vec<RefRange>, u64)> = Vec::new();
    for m in missing_runs(map, hashes, base) {
        if per_frame.last().map(|p| p.0) != Some(m.frame) {
            per_frame.push((m.frame, Vec::new(), Vec::new(), 0));
        }
        let Some((_, runs, refs, ref_blocks)) = per_frame.last_mut() else {
            continue;
        };
        runs.push(m.run);
        let Some(r) = m.reference else { continue };
        // Past the limit the run still goes in, compressed without more reference.
        if *ref_blocks + ref_growth(refs.last(), &r) <= MAX_REF_BLOCKS {
            *ref_blocks += push_ref(refs, r);
        }
    }
    let mut groups: Vec<(Vec<BlockRun>, Vec<u32>, Vec<RefRange>)> = Vec::new();
    let (mut runs, mut frames, mut refs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut frames_raw, mut ref_blocks) = (0u64, 0u64);
    for (frame, frame_runs, frame_refs, rb) in per_frame {
        let len = map.frame_len(&map.frames[frame as usize]);
        if !frames.is_empty()
            && (frames.len() as u32 >= MAX_PATCH_FRAMES
                || frames_raw + len > MAX_PATCH_RAW
                || ref_blocks + rb > MAX_REF_BLOCKS)
        {
            groups.push((
                std::mem::take(&mut runs),
                std::mem::take(&mut frames),
                std::mem::take(&mut refs),
            ));
            frames_raw = 0;
            ref_blocks = 0;
        }
        frames.push(frame);
        frames_raw += len;
        ref_blocks += rb;
        runs.extend(frame_runs);
        for r in frame_refs {
            push_ref(&mut refs, r);
        }
    }
    if !frames.is_empty() {
        groups.push((runs, frames, refs));
    }
    let mut jobs = Vec::new();
    let mut metas = Vec::new();
    for (runs, frames, refs) in groups {
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
        for r in &runs {
            let (at, len) = map.run_range(r);
            raw.extend(read_at(src, image, at, len as usize)?);
        }
        metas.push(Patch {
            runs,
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
    // A patch that is not smaller than the frames it completes is no patch.
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
    fn a_patch_supplies_just_the_blocks_the_base_does_not_have() {
        let dir = tempfile::tempdir().unwrap();
        let base: Vec<u8> = (0..8).flat_map(block).collect();
        std::fs::write(dir.path().join("base"), &base).unwrap();
        // Base blocks 0..4, four new blocks, base blocks 4..8, one more new block.
        let image: Vec<u8> = (0..4)
            .chain(100..104)
            .chain(4..8)
            .chain(200..201)
            .flat_map(block)
            .collect();
        let opts = PackOptions {
            level: 3,
            frame_blocks: MAX_FRAME_BLOCKS,
            delta_from: Some(dir.path().join("base")),
        };
        let (p, _) = pack_bytes(dir.path(), &image, &opts);
        // One frame: frames are not cut where old blocks meet new ones.
        let cut: Vec<(u64, u32)> = p.map.frames.iter().map(|f| (f.first, f.blocks)).collect();
        assert_eq!(cut, [(0, 13)]);
        let (at, len) = p.map.frame_range(&p.map.frames[0]);
        assert_eq!(
            p.map.frames[0].sha256,
            sha256(&image[at as usize..(at + len) as usize])
        );
        assert_eq!(p.map.patches.len(), 1, "{:?}", p.map.patches);
        let patch = &p.map.patches[0];
        let runs: Vec<(u64, u32)> = patch.runs.iter().map(|r| (r.first, r.blocks)).collect();
        assert_eq!(runs, [(4, 4), (12, 1)]);
        assert_eq!(patch.frames, [0]);
        // The first run's old version is looked for right after base block 3.
        assert!(patch.refs[0].start <= 4, "{:?}", patch.refs);
    }

    /// Two contents with one 4-byte key: a device's key table holds the first block of
    /// the running slot with that key, so the other content is not found there by key,
    /// though the base has it. The packer knows and puts it into the patch.
    #[test]
    fn a_block_whose_key_the_base_gives_to_other_content_goes_into_the_patch() {
        // Found by search: block(21511) and block(90443) share a key.
        let (x, y) = (block(21511), block(90443));
        assert_eq!(key_of(&sha256(&x)), key_of(&sha256(&y)));
        assert_ne!(x, y);
        let dir = tempfile::tempdir().unwrap();
        // The base has x first, then y.
        let base: Vec<u8> = [x.clone(), block(1), block(2), y.clone()].concat();
        std::fs::write(dir.path().join("base"), &base).unwrap();
        let image: Vec<u8> = [block(1), block(2), y, block(3)].concat();
        let opts = PackOptions {
            level: 3,
            frame_blocks: MAX_FRAME_BLOCKS,
            delta_from: Some(dir.path().join("base")),
        };
        let (p, _) = pack_bytes(dir.path(), &image, &opts);
        let runs: Vec<(u64, u32)> = p
            .map
            .patches
            .iter()
            .flat_map(|p| p.runs.iter().map(|r| (r.first, r.blocks)))
            .collect();
        assert_eq!(runs, [(2, 2)], "y and the new block 3 are supplied");
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

    /// MAX_FRAME_BLOCKS changed blocks in the middle of a larger base: the predicted
    /// reference of the run in the first frame (the run plus a margin) would pass
    /// MAX_REF_BLOCKS; the packer keeps it within, and the map it makes is one the
    /// reader accepts.
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
        // Frames 0..n and n..n+40: the changed blocks lie in both.
        let runs: Vec<(u64, u32)> = p
            .map
            .patches
            .iter()
            .flat_map(|p| p.runs.iter().map(|r| (r.first, r.blocks)))
            .collect();
        assert_eq!(runs, [(20, n as u32 - 20), (n, 20)]);
        for patch in &p.map.patches {
            assert!(patch.ref_blocks() <= MAX_REF_BLOCKS, "{patch:?}");
        }
        BlockMap::from_bytes(&p.map.to_bytes(), p.map.image_size, p.map.payload_size())
            .expect("the reader accepts what the packer made");
    }
}
