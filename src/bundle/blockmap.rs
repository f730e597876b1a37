//! The block map of a format-2 image: how the image's 4 KiB blocks are stored in the
//! bundle, and how a device finds the ones it already has.
//!
//! The image is cut into 4 KiB blocks. All-zero blocks are stored as nothing (a zero run).
//! The rest are grouped into **frames**: runs of consecutive blocks (up to
//! [`MAX_FRAME_BLOCKS`]), each compressed on its own with zstd, so a device fetches any
//! frame with one ranged read. Every frame carries the SHA-256 of its raw bytes, checked
//! after decompression and before a byte of it is written, and one 4-byte **key** per
//! block (the first bytes of the block's SHA-256): a device looks the keys up in its
//! running slot, wherever those blocks lie there, and assembles a frame from what it has
//! when every key is found and the frame's SHA-256 agrees. The keys are a search aid,
//! never trusted: only the frame hash decides.
//!
//! A bundle built against a known previous image (`rota bundle create --delta-from`)
//! also carries **patches**: a patch supplies the blocks of some frames that image does
//! not have, compressed against a *reference* — ranges of that previous image which the
//! device reads from its own running slot (checked against the reference's SHA-256
//! before anything is fetched). The frames' other blocks come from the running slot by
//! key, as in a local gather, and each frame is checked against its SHA-256 as always.
//! Frames need not be cut where old and new blocks meet, so they can be large (better
//! compression for a full install) while an update fetches only the new blocks. A device
//! on another image ignores the patches.
//!
//! Serialized form (`<file>.blocks` member, little-endian), covered by the manifest's
//! `index-sha256`:
//! ```text
//! "ROTABLK2" u32 block-size u64 image-size u32 dictionary-size [32] dictionary-sha256
//! u32 extent-count, then per extent:
//!   0u8 u32 blocks                                   zero run
//!   1u8 u32 blocks u8 codec u32 csize [32] sha256 u32 keys[blocks]   frame
//! u32 patch-count, then per patch:
//!   u32 run-count (u64 first-block u32 blocks)[run-count]   the blocks it supplies
//!   u32 csize [32] ref-sha256 u32 ref-count (u64 start-block u32 blocks)[ref-count]
//! ```
//! A patch's runs ascend, and each lies within one frame; the patch decodes to the runs'
//! bytes back to back. (`ROTABLK1`, written by earlier releases, is read too: its patches
//! name whole frames, `u32 frame-count u32 frames[frame-count]`, instead of runs.)
//! The payload member holds the dictionary, then every frame's compressed bytes in
//! extent order, then every patch's, back to back: offsets follow from the sizes.

/// Bytes per block: the granularity of reuse and of zero runs.
pub const BLOCK: u64 = 4096;
/// Most blocks in one frame: 8 MiB of raw bytes, the most a frame may inflate to (and
/// what a device holds of it while it decodes and checks it). Bundles choose their frame
/// size up to this (`bundle create --frame-size`): larger frames compress better (zstd
/// -19 looks 8 MiB back, so 8 MiB frames come within 3 % of compressing the whole
/// image), smaller ones cost less memory and are reused more often.
pub const MAX_FRAME_BLOCKS: u32 = 2048;
/// Largest reference a patch may name (8 MiB): what a device holds in memory to decode
/// it. As large as a frame, so the runs of an 8 MiB frame all find their old versions.
pub const MAX_REF_BLOCKS: u64 = 2048;
/// Most frames one patch may complete.
pub const MAX_PATCH_FRAMES: u32 = 256;
/// Most raw bytes of frames one patch may complete (what a device assembles at once;
/// the patch itself decodes to at most as much).
pub const MAX_PATCH_RAW: u64 = MAX_FRAME_BLOCKS as u64 * BLOCK;
/// Largest shared dictionary.
pub const MAX_DICTIONARY: u32 = 1 << 20;
const MAGIC: &[u8; 8] = b"ROTABLK2";
/// The first block map version: patches name whole frames.
const MAGIC_V1: &[u8; 8] = b"ROTABLK1";

/// How a frame's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As they are.
    Stored,
    /// zstd, with the image's dictionary when it has one.
    Zstd,
}

impl Codec {
    fn byte(self) -> u8 {
        match self {
            Codec::Stored => 0,
            Codec::Zstd => 1,
        }
    }
    fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Stored),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// One frame: consecutive non-zero blocks of the image, compressed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// First block of the image in this frame.
    pub first: u64,
    pub blocks: u32,
    pub codec: Codec,
    /// Where its compressed bytes start in the payload member.
    pub offset: u64,
    pub csize: u32,
    /// SHA-256 of the raw bytes.
    pub sha256: [u8; 32],
    /// Index of its first key in [`BlockMap::keys`].
    pub keys_at: usize,
}

/// A range of blocks of the previous image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefRange {
    pub start: u64,
    pub blocks: u32,
}

/// Consecutive blocks of the new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRun {
    pub first: u64,
    pub blocks: u32,
}

/// A patch: blocks of some frames, compressed together against a reference taken from
/// the previous image. Decodes to its runs' raw bytes back to back; the rest of its
/// frames' blocks are the previous image's, found by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// The blocks it supplies, ascending; each run lies within one frame.
    pub runs: Vec<BlockRun>,
    /// The frames its runs lie in (indexes into [`BlockMap::frames`], ascending).
    pub frames: Vec<u32>,
    pub offset: u64,
    pub csize: u32,
    pub ref_sha256: [u8; 32],
    pub refs: Vec<RefRange>,
}

impl Patch {
    pub fn ref_blocks(&self) -> u64 {
        self.refs.iter().map(|r| u64::from(r.blocks)).sum()
    }
}

/// A zero run: `blocks` all-zero blocks from block `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroRun {
    pub first: u64,
    pub blocks: u64,
}

/// The parsed block map of one image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockMap {
    pub image_size: u64,
    pub dictionary_size: u32,
    pub dictionary_sha256: [u8; 32],
    /// In image order.
    pub frames: Vec<Frame>,
    /// In image order.
    pub zeros: Vec<ZeroRun>,
    pub keys: Vec<u32>,
    pub patches: Vec<Patch>,
}

/// The search key of a block: the first four bytes of its SHA-256.
pub fn key_of(sha256: &[u8; 32]) -> u32 {
    u32::from_le_bytes([sha256[0], sha256[1], sha256[2], sha256[3]])
}

/// Number of blocks of an image of `size` bytes (the last one may be short).
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

impl BlockMap {
    /// Byte range of frame `f` in the image: (offset, length).
    pub fn frame_range(&self, f: &Frame) -> (u64, u64) {
        let start = f.first * BLOCK;
        let end = ((f.first + u64::from(f.blocks)) * BLOCK).min(self.image_size);
        (start, end - start)
    }

    /// Raw length of frame `f`.
    pub fn frame_len(&self, f: &Frame) -> u64 {
        self.frame_range(f).1
    }

    /// Byte range of run `r` in the image: (offset, length).
    pub fn run_range(&self, r: &BlockRun) -> (u64, u64) {
        let start = r.first * BLOCK;
        let end = ((r.first + u64::from(r.blocks)) * BLOCK).min(self.image_size);
        (start, end.saturating_sub(start))
    }

    /// Raw bytes a patch decodes to: its runs, back to back.
    pub fn patch_len(&self, p: &Patch) -> u64 {
        p.runs.iter().map(|r| self.run_range(r).1).sum()
    }

    /// Raw bytes of the frames numbered in `frames` (a patch's), together.
    pub fn frames_len(&self, frames: &[u32]) -> u64 {
        frames
            .iter()
            .map(|f| self.frame_len(&self.frames[*f as usize]))
            .sum()
    }

    /// The keys of frame `f`'s blocks, in order.
    pub fn frame_keys(&self, f: &Frame) -> &[u32] {
        &self.keys[f.keys_at..f.keys_at + f.blocks as usize]
    }

    /// Size of the payload member: dictionary, frames and patches.
    pub fn payload_size(&self) -> u64 {
        let frames: u64 = self.frames.iter().map(|f| u64::from(f.csize)).sum();
        let patches: u64 = self.patches.iter().map(|p| u64::from(p.csize)).sum();
        u64::from(self.dictionary_size) + frames + patches
    }

    /// Raw bytes held in frames (the image minus its zero runs).
    pub fn data_bytes(&self) -> u64 {
        self.frames.iter().map(|f| self.frame_len(f)).sum()
    }

    /// Bytes of all frames, compressed.
    pub fn frame_bytes(&self) -> u64 {
        self.frames.iter().map(|f| u64::from(f.csize)).sum()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.keys.len() * 4 + self.frames.len() * 48);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        out.extend_from_slice(&self.dictionary_size.to_le_bytes());
        out.extend_from_slice(&self.dictionary_sha256);
        // Extents in image order: merge frames and zero runs by their first block.
        let mut extents: Vec<(u64, Option<&Frame>, u64)> = self
            .frames
            .iter()
            .map(|f| (f.first, Some(f), 0))
            .chain(self.zeros.iter().map(|z| (z.first, None, z.blocks)))
            .collect();
        extents.sort_by_key(|e| e.0);
        let mut body = Vec::new();
        let mut count = 0u32;
        for (_, frame, zero_blocks) in extents {
            match frame {
                None => {
                    // Zero runs longer than a u32 of blocks are split.
                    let mut left = zero_blocks;
                    while left > 0 {
                        let n = left.min(u64::from(u32::MAX));
                        body.push(0u8);
                        body.extend_from_slice(&(n as u32).to_le_bytes());
                        count += 1;
                        left -= n;
                    }
                }
                Some(f) => {
                    body.push(1u8);
                    body.extend_from_slice(&f.blocks.to_le_bytes());
                    body.push(f.codec.byte());
                    body.extend_from_slice(&f.csize.to_le_bytes());
                    body.extend_from_slice(&f.sha256);
                    for k in self.frame_keys(f) {
                        body.extend_from_slice(&k.to_le_bytes());
                    }
                    count += 1;
                }
            }
        }
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&(self.patches.len() as u32).to_le_bytes());
        for p in &self.patches {
            out.extend_from_slice(&(p.runs.len() as u32).to_le_bytes());
            for r in &p.runs {
                out.extend_from_slice(&r.first.to_le_bytes());
                out.extend_from_slice(&r.blocks.to_le_bytes());
            }
            out.extend_from_slice(&p.csize.to_le_bytes());
            out.extend_from_slice(&p.ref_sha256);
            out.extend_from_slice(&(p.refs.len() as u32).to_le_bytes());
            for r in &p.refs {
                out.extend_from_slice(&r.start.to_le_bytes());
                out.extend_from_slice(&r.blocks.to_le_bytes());
            }
        }
        out
    }

    /// Parses and checks a block map for an image of `image_size` bytes whose payload
    /// member has `payload_size` bytes. Nothing in it is trusted before this returns: the
    /// extents must cover the image exactly, frames must be within the size limits, and
    /// the payload must be exactly what the sizes add up to.
    pub fn from_bytes(bytes: &[u8], image_size: u64, payload_size: u64) -> Result<Self, String> {
        let mut r = Cursor { bytes, at: 0 };
        let v1 = match r.take(8)? {
            m if m == MAGIC => false,
            m if m == MAGIC_V1 => true,
            _ => return Err("the block map does not start with ROTABLK2 (or ROTABLK1)".into()),
        };
        let block = r.u32()?;
        if u64::from(block) != BLOCK {
            return Err(format!(
                "block size {block}, this rota reads {BLOCK}-byte blocks"
            ));
        }
        let declared = r.u64()?;
        if declared != image_size {
            return Err(format!(
                "the block map is for a {declared}-byte image, the manifest says {image_size}"
            ));
        }
        let dictionary_size = r.u32()?;
        if dictionary_size > MAX_DICTIONARY {
            return Err(format!(
                "dictionary of {dictionary_size} bytes, at most {MAX_DICTIONARY} are allowed"
            ));
        }
        let dictionary_sha256 = r.hash()?;
        let total_blocks = block_count(image_size);
        let extents = r.u32()?;
        let mut map = BlockMap {
            image_size,
            dictionary_size,
            dictionary_sha256,
            ..Default::default()
        };
        let mut next = 0u64;
        let mut offset = u64::from(dictionary_size);
        for e in 0..extents {
            let tag = r.u8()?;
            let blocks = r.u32()?;
            if blocks == 0 {
                return Err(format!("extent {e} is empty"));
            }
            if next + u64::from(blocks) > total_blocks {
                return Err(format!(
                    "extent {e} ends at block {}, the image has {total_blocks}",
                    next + u64::from(blocks)
                ));
            }
            match tag {
                0 => {
                    if let Some(z) = map.zeros.last_mut().filter(|z| z.first + z.blocks == next) {
                        z.blocks += u64::from(blocks);
                    } else {
                        map.zeros.push(ZeroRun {
                            first: next,
                            blocks: u64::from(blocks),
                        });
                    }
                }
                1 => {
                    if blocks > MAX_FRAME_BLOCKS {
                        return Err(format!(
                            "frame at block {next} has {blocks} blocks, at most {MAX_FRAME_BLOCKS} are allowed"
                        ));
                    }
                    let codec = Codec::from_byte(r.u8()?)
                        .ok_or_else(|| format!("frame at block {next} has an unknown codec"))?;
                    let csize = r.u32()?;
                    let sha256 = r.hash()?;
                    let keys_at = map.keys.len();
                    let key_bytes = r.take(blocks as usize * 4)?;
                    map.keys.extend(
                        key_bytes
                            .chunks_exact(4)
                            .map(|k| u32::from_le_bytes([k[0], k[1], k[2], k[3]])),
                    );
                    let frame = Frame {
                        first: next,
                        blocks,
                        codec,
                        offset,
                        csize,
                        sha256,
                        keys_at,
                    };
                    let raw = map.frame_len(&frame);
                    if codec == Codec::Stored && u64::from(csize) != raw {
                        return Err(format!(
                            "stored frame at block {next} has {csize} bytes for {raw} raw bytes"
                        ));
                    }
                    if csize == 0 {
                        return Err(format!("frame at block {next} has no bytes"));
                    }
                    offset += u64::from(csize);
                    map.frames.push(frame);
                }
                t => return Err(format!("extent {e} has unknown type {t}")),
            }
            next += u64::from(blocks);
        }
        if next != total_blocks {
            return Err(format!(
                "the extents cover {next} blocks, the image has {total_blocks}"
            ));
        }
        let patches = r.u32()?;
        for i in 0..patches {
            let (runs, frames) = if v1 {
                map.v1_patch_runs(&mut r, i)?
            } else {
                map.patch_runs(&mut r, i)?
            };
            if frames.is_empty() || frames.len() > MAX_PATCH_FRAMES as usize {
                return Err(format!("patch {i} completes {} frames", frames.len()));
            }
            let csize = r.u32()?;
            let ref_sha256 = r.hash()?;
            let nrefs = r.u32()?;
            if csize == 0 {
                return Err(format!("patch {i} has no bytes"));
            }
            let mut refs = Vec::new();
            let mut ref_blocks = 0u64;
            for _ in 0..nrefs {
                let start = r.u64()?;
                let blocks = r.u32()?;
                ref_blocks += u64::from(blocks);
                if ref_blocks > MAX_REF_BLOCKS || blocks == 0 {
                    return Err(format!(
                        "patch {i} has a reference of more than {MAX_REF_BLOCKS} blocks, or an empty one"
                    ));
                }
                refs.push(RefRange { start, blocks });
            }
            if refs.is_empty() {
                return Err(format!("patch {i} has no reference"));
            }
            let raw = map.frames_len(&frames);
            if raw > MAX_PATCH_RAW {
                return Err(format!(
                    "patch {i} completes frames of {raw} bytes, at most {MAX_PATCH_RAW} are allowed"
                ));
            }
            map.patches.push(Patch {
                runs,
                frames,
                offset,
                csize,
                ref_sha256,
                refs,
            });
            offset += u64::from(csize);
        }
        if r.at != bytes.len() {
            return Err(format!(
                "{} bytes follow the block map's last entry",
                bytes.len() - r.at
            ));
        }
        if offset != payload_size {
            return Err(format!(
                "the block map accounts for {offset} payload bytes, the payload has {payload_size}"
            ));
        }
        Ok(map)
    }
}

impl BlockMap {
    /// Index of the frame holding block `b`, if a frame does.
    fn frame_of(&self, b: u64) -> Option<usize> {
        let i = self
            .frames
            .partition_point(|f| f.first <= b)
            .checked_sub(1)?;
        let f = &self.frames[i];
        (b < f.first + u64::from(f.blocks)).then_some(i)
    }

    /// Reads patch `i`'s runs and derives its frames: runs ascend, do not overlap, and
    /// each lies within one frame.
    fn patch_runs(&self, r: &mut Cursor<'_>, i: u32) -> Result<(Vec<BlockRun>, Vec<u32>), String> {
        let count = r.u32()?;
        if count == 0 || u64::from(count) > block_count(self.image_size) {
            return Err(format!("patch {i} names {count} runs of blocks"));
        }
        let mut runs = Vec::new();
        let mut frames: Vec<u32> = Vec::new();
        let mut next = 0u64;
        for _ in 0..count {
            let first = r.u64()?;
            let blocks = r.u32()?;
            let inside = self.frame_of(first).filter(|f| {
                let f = &self.frames[*f];
                blocks > 0 && first + u64::from(blocks) <= f.first + u64::from(f.blocks)
            });
            let Some(f) = inside.filter(|_| first >= next) else {
                return Err(format!(
                    "patch {i} names blocks {first}..{} outside its frames or out of order",
                    first.saturating_add(u64::from(blocks))
                ));
            };
            next = first + u64::from(blocks);
            if frames.last() != Some(&(f as u32)) {
                frames.push(f as u32);
            }
            runs.push(BlockRun { first, blocks });
        }
        Ok((runs, frames))
    }

    /// A `ROTABLK1` patch: whole frames, ascending.
    fn v1_patch_runs(
        &self,
        r: &mut Cursor<'_>,
        i: u32,
    ) -> Result<(Vec<BlockRun>, Vec<u32>), String> {
        let count = r.u32()?;
        if count == 0 || count > MAX_PATCH_FRAMES {
            return Err(format!("patch {i} names {count} frames"));
        }
        let mut frames: Vec<u32> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let f = r.u32()?;
            if f as usize >= self.frames.len() || frames.last().is_some_and(|l| *l >= f) {
                return Err(format!(
                    "patch {i} names frames outside the image or out of order"
                ));
            }
            frames.push(f);
        }
        let runs = frames
            .iter()
            .map(|f| {
                let f = &self.frames[*f as usize];
                BlockRun {
                    first: f.first,
                    blocks: f.blocks,
                }
            })
            .collect();
        Ok((runs, frames))
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| format!("the block map ends early (at byte {})", self.bytes.len()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn hash(&mut self) -> Result<[u8; 32], String> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
}

/// Largest serialized block map for an image of `image_size` bytes: what a reader
/// accepts before reading it (keys, one frame header per block at worst, patches).
pub fn max_serialized(image_size: u64) -> u64 {
    let blocks = block_count(image_size);
    128 + blocks * (4 + 42 + 5) + blocks * (48 + 12 + 12)
}

/// Decompresses one zstd frame or patch into exactly `raw_len` bytes. Output past
/// `raw_len` (a decompression bomb, or a frame that lies about its size) is an error,
/// and so is less.
pub fn decode(
    data: &[u8],
    raw_len: usize,
    prefix: Option<&[u8]>,
    dictionary: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if prefix.is_none() && dictionary.is_none() {
        // The common case, a frame on its own: each thread keeps one decoder for all
        // of them (making one costs about as much as decoding a 64 KiB frame).
        thread_local! {
            static PLAIN: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        return PLAIN.with(|cell| {
            let mut slot = cell.borrow_mut();
            let dctx = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(new_decoder()?),
            };
            run_decoder(dctx, data, raw_len, out)
        });
    }
    let mut dctx = new_decoder()?;
    if let Some(d) = dictionary {
        dctx.load_dictionary(d).map_err(zstd_error)?;
    }
    if let Some(p) = prefix {
        dctx.ref_prefix(p).map_err(zstd_error)?;
    }
    run_decoder(&mut dctx, data, raw_len, out)
}

/// A decoder that refuses windows larger than a frame plus its reference can need.
fn new_decoder() -> Result<zstd::zstd_safe::DCtx<'static>, String> {
    let mut dctx = zstd::zstd_safe::DCtx::try_create()
        .ok_or_else(|| "zstd: cannot allocate a decoder".to_owned())?;
    dctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(24))
        .map_err(zstd_error)?;
    Ok(dctx)
}

/// Decodes `data` with `dctx` into exactly `raw_len` bytes of `out`.
fn run_decoder(
    dctx: &mut zstd::zstd_safe::DCtx<'_>,
    data: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    // A buffer of exactly raw_len (what it held before is overwritten; only growth is
    // zeroed): zstd stops with "destination buffer too small" before writing a byte
    // past it.
    out.resize(raw_len, 0);
    let got = dctx
        .decompress(&mut out[..], data)
        .map_err(|c| match zstd_error(c) {
            e if e.contains("Destination buffer is too small") => {
                format!("it inflates past its declared {raw_len} bytes")
            }
            e => e,
        })?;
    if got != raw_len {
        return Err(format!(
            "it inflates to {got} bytes, its declared size is {raw_len}"
        ));
    }
    out.truncate(got);
    Ok(())
}

fn zstd_error(code: usize) -> String {
    format!("zstd: {}", zstd::zstd_safe::get_error_name(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BlockMap {
        let mut m = BlockMap {
            image_size: 10 * BLOCK - 100,
            ..Default::default()
        };
        m.zeros.push(ZeroRun {
            first: 0,
            blocks: 2,
        });
        m.frames.push(Frame {
            first: 2,
            blocks: 3,
            codec: Codec::Zstd,
            offset: 0,
            csize: 100,
            sha256: [1; 32],
            keys_at: 0,
        });
        m.frames.push(Frame {
            first: 5,
            blocks: 5,
            codec: Codec::Stored,
            offset: 100,
            csize: (5 * BLOCK - 100) as u32,
            sha256: [2; 32],
            keys_at: 3,
        });
        m.keys = (0..8).collect();
        m.patches.push(Patch {
            runs: vec![
                BlockRun {
                    first: 3,
                    blocks: 2,
                },
                BlockRun {
                    first: 6,
                    blocks: 4,
                },
            ],
            frames: vec![0, 1],
            offset: 100 + 5 * BLOCK - 100,
            csize: 7,
            ref_sha256: [3; 32],
            refs: vec![RefRange {
                start: 9,
                blocks: 4,
            }],
        });
        m
    }

    #[test]
    fn a_block_map_round_trips() {
        let m = sample();
        let bytes = m.to_bytes();
        let back = BlockMap::from_bytes(&bytes, m.image_size, m.payload_size()).unwrap();
        assert_eq!(back, m);
        assert!(bytes.len() as u64 <= max_serialized(m.image_size));
    }

    #[test]
    fn a_block_map_that_lies_is_refused_with_the_reason() {
        let m = sample();
        let bytes = m.to_bytes();
        let e = BlockMap::from_bytes(&bytes, m.image_size + BLOCK, m.payload_size()).unwrap_err();
        assert!(e.contains("the manifest says"), "{e}");
        let e = BlockMap::from_bytes(&bytes, m.image_size, m.payload_size() + 1).unwrap_err();
        assert!(e.contains("the payload has"), "{e}");
        let e = BlockMap::from_bytes(&bytes[..bytes.len() - 1], m.image_size, m.payload_size())
            .unwrap_err();
        assert!(e.contains("ends early"), "{e}");
        let mut big = m.clone();
        big.frames[1].blocks = 6;
        big.keys.push(9);
        let e =
            BlockMap::from_bytes(&big.to_bytes(), m.image_size, big.payload_size()).unwrap_err();
        assert!(e.contains("ends at block 11, the image has 10"), "{e}");
        let mut long = BlockMap {
            image_size: u64::from(MAX_FRAME_BLOCKS + 1) * BLOCK,
            ..Default::default()
        };
        long.frames.push(Frame {
            first: 0,
            blocks: MAX_FRAME_BLOCKS + 1,
            codec: Codec::Stored,
            offset: 0,
            csize: 1,
            sha256: [1; 32],
            keys_at: 0,
        });
        long.keys = (0..MAX_FRAME_BLOCKS + 1).collect();
        let e = BlockMap::from_bytes(&long.to_bytes(), long.image_size, long.payload_size())
            .unwrap_err();
        assert!(e.contains("at most 2048 are allowed"), "{e}");
        long.frames[0].blocks = MAX_FRAME_BLOCKS;
        long.frames[0].codec = Codec::Zstd;
        long.image_size -= BLOCK;
        long.keys.pop();
        BlockMap::from_bytes(&long.to_bytes(), long.image_size, long.payload_size())
            .expect("a frame of MAX_FRAME_BLOCKS blocks is accepted");
        let mut huge = m.clone();
        huge.patches[0].refs[0].blocks = MAX_REF_BLOCKS as u32 + 1;
        let e = BlockMap::from_bytes(&huge.to_bytes(), m.image_size, m.payload_size()).unwrap_err();
        assert!(e.contains("reference of more than"), "{e}");
    }

    /// `m` serialized as a `ROTABLK1` map: patches as lists of whole frames.
    fn as_v1(m: &BlockMap) -> Vec<u8> {
        let mut bare = m.clone();
        bare.patches.clear();
        let mut out = bare.to_bytes();
        out.truncate(out.len() - 4);
        out[..8].copy_from_slice(MAGIC_V1);
        out.extend_from_slice(&(m.patches.len() as u32).to_le_bytes());
        for p in &m.patches {
            out.extend_from_slice(&(p.frames.len() as u32).to_le_bytes());
            for f in &p.frames {
                out.extend_from_slice(&f.to_le_bytes());
            }
            out.extend_from_slice(&p.csize.to_le_bytes());
            out.extend_from_slice(&p.ref_sha256);
            out.extend_from_slice(&(p.refs.len() as u32).to_le_bytes());
            for r in &p.refs {
                out.extend_from_slice(&r.start.to_le_bytes());
                out.extend_from_slice(&r.blocks.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn a_first_version_block_map_reads_with_whole_frame_patches() {
        let m = sample();
        let back = BlockMap::from_bytes(&as_v1(&m), m.image_size, m.payload_size()).unwrap();
        assert_eq!(back.frames, m.frames);
        let p = &back.patches[0];
        assert_eq!(p.frames, vec![0, 1]);
        // Whole frames, the short last block included.
        assert_eq!(
            p.runs,
            vec![
                BlockRun {
                    first: 2,
                    blocks: 3
                },
                BlockRun {
                    first: 5,
                    blocks: 5
                }
            ]
        );
        assert_eq!(back.patch_len(p), back.data_bytes());
    }

    #[test]
    fn patch_runs_outside_their_frames_or_out_of_order_are_refused() {
        let m = sample();
        assert_eq!(m.patch_len(&m.patches[0]), 2 * BLOCK + 4 * BLOCK - 100);
        let refuse = |runs: Vec<(u64, u32)>, what: &str| {
            let mut bad = m.clone();
            bad.patches[0].runs = runs
                .into_iter()
                .map(|(first, blocks)| BlockRun { first, blocks })
                .collect();
            let e =
                BlockMap::from_bytes(&bad.to_bytes(), m.image_size, m.payload_size()).unwrap_err();
            assert!(e.contains(what), "{e}");
        };
        // Block 1 is in a zero run, 4..6 crosses from frame 0 into frame 1, 10 is past
        // the image, a run of no blocks, runs that overlap or go back.
        refuse(vec![(1, 1)], "blocks 1..2 outside its frames");
        refuse(vec![(4, 2)], "blocks 4..6 outside its frames");
        refuse(vec![(9, 2)], "blocks 9..11 outside its frames");
        refuse(vec![(3, 0)], "outside its frames or out of order");
        refuse(
            vec![(3, 2), (4, 1)],
            "blocks 4..5 outside its frames or out of order",
        );
        refuse(vec![(6, 1), (3, 1)], "out of order");
        refuse(vec![], "names 0 runs");
        // Frames derived from the runs: one run in frame 1 completes frame 1 only.
        let mut one = m.clone();
        one.patches[0].runs = vec![BlockRun {
            first: 7,
            blocks: 1,
        }];
        one.patches[0].frames = vec![1];
        let back = BlockMap::from_bytes(&one.to_bytes(), m.image_size, m.payload_size()).unwrap();
        assert_eq!(back, one);
    }

    #[test]
    fn decode_refuses_a_frame_that_inflates_past_its_size() {
        let raw = vec![7u8; 1 << 20];
        let packed = zstd::bulk::compress(&raw, 3).unwrap();
        let mut out = Vec::new();
        decode(&packed, raw.len(), None, None, &mut out).unwrap();
        assert_eq!(out, raw);
        let e = decode(&packed, 4096, None, None, &mut out).unwrap_err();
        assert!(e.contains("inflates past its declared 4096 bytes"), "{e}");
        let e = decode(&packed, raw.len() + 1, None, None, &mut out).unwrap_err();
        assert!(e.contains("declared size is"), "{e}");
        let e = decode(b"not zstd", 10, None, None, &mut out).unwrap_err();
        assert!(e.starts_with("zstd: "), "{e}");
    }
}
