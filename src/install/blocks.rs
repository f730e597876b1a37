//! Installing a block image (bundle format 2) into its slot: every frame comes from the
//! cheapest place that has it, and nothing is written before it matches its signed hash.
//!
//! ```text
//!  planner (this thread) ──work──▶ workers (decode, SHA-256) ──verified frames──▶ writer
//!    1. target slot (resume), running slot (by block key, anywhere)   pwritev per MiB, 1 fdatasync
//!    2. what is still missing: patches against the running slot, else frames   ──▶ read-back
//! ```
//!
//! 1. **Local pass.** When resuming, a frame already in the target slot is kept. Else,
//!    when every block key of the frame is found in the running slot (a table built by
//!    hashing that slot once, 8 bytes per non-zero block), its blocks are gathered from
//!    wherever they lie. Workers hash each candidate; a miss just leaves the frame for
//!    the second pass.
//! 2. **Fetch pass.** Missing frames that a patch covers, whose reference (ranges of the
//!    running slot) matches the reference's signed SHA-256, come from the patch: one
//!    download for many small frames. The rest are fetched; consecutive frames in one
//!    ranged read. Workers decompress into a buffer of exactly the frame's size (a frame
//!    that inflates past it is refused) and check its SHA-256.
//!
//! Zero runs are written as zeros. The image is read back from the device (CRC32, or
//! also SHA-256, as `[install] read-back` says): with `O_DIRECT`, following the writer
//! through the image's written prefix while the install goes on; else after the sync.
//! Memory: the key table, the block map, and a budget of bytes between reading and
//! writing: 6 MiB, or three of the image's largest frames when that is more, so that an
//! 8 MiB frame is read while the one before it is decoded and the one before that
//! written. The planner takes credit for an item before it reads it; a worker gives back
//! the compressed part once it has decoded it; a patch's frames share its credit. One
//! item larger than the budget (a big patch) goes alone. Large buffers are recycled
//! through a [`BufferPool`].

use super::buffers::BufferPool;
use super::copy::DirectReader;
use super::progress::Reporter;
use super::{check_cancel, InstallError};
use crate::bundle::blockmap::{decode, key_of, BlockMap, BlockRun, Codec, Frame, Patch, BLOCK};
use crate::bundle::digest::{sha256, ImageHasher};
use crate::bundle::{ImageEntry, Member};
use crate::config::ReadBack;
use crate::slot::{SlotReader, SlotWriter};
use crate::source::{ByteSource, SourceError};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

/// Where the running slot's blocks are, by key: (key, block number), sorted by key.
pub struct KeyTable {
    entries: Vec<(u32, u32)>,
}

impl KeyTable {
    /// Hashes every non-zero 4 KiB block of the running slot, on every core (one stripe
    /// of the slot each: nothing else runs while the table is built). 8 bytes per block:
    /// 8 MiB for a full 4 GiB slot. Where a key occurs more than once, the first block
    /// holding it is kept, however the stripes fell.
    pub fn scan(slot: &SlotReader, size: u64, cancel: &AtomicBool) -> std::io::Result<KeyTable> {
        let blocks = (size / BLOCK).min(u64::from(u32::MAX));
        let threads = super::copy::cores() as u64;
        let stripe = blocks.div_ceil(threads).max(1);
        let parts = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (from, to) = ((t * stripe).min(blocks), ((t + 1) * stripe).min(blocks));
                    s.spawn(move || Self::scan_stripe(slot, from, to, cancel))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("a scan thread panicked")))
                })
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let mut entries: Vec<(u32, u32)> = parts.concat();
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.0);
        entries.shrink_to_fit();
        Ok(KeyTable { entries })
    }

    /// (key, block) of the non-zero blocks `from..to`, stopping at the slot's end.
    fn scan_stripe(
        slot: &SlotReader,
        from: u64,
        to: u64,
        cancel: &AtomicBool,
    ) -> std::io::Result<Vec<(u32, u32)>> {
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut b = from;
        while b < to {
            if cancel.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("cancelled"));
            }
            let n = (to - b).min(buf.len() as u64 / BLOCK);
            let part = &mut buf[..(n * BLOCK) as usize];
            if !slot.read_at(b * BLOCK, part)? {
                break;
            }
            for (i, block) in part.chunks_exact(BLOCK as usize).enumerate() {
                if block.iter().any(|x| *x != 0) {
                    entries.push((key_of(&sha256(block)), (b + i as u64) as u32));
                }
            }
            b += n;
        }
        Ok(entries)
    }

    /// A table recorded earlier (sorted by key, one entry per key).
    pub fn from_sorted(entries: Vec<(u32, u32)>) -> KeyTable {
        KeyTable { entries }
    }

    pub fn find(&self, key: u32) -> Option<u64> {
        self.entries
            .binary_search_by_key(&key, |e| e.0)
            .ok()
            .map(|i| u64::from(self.entries[i].1))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The running slot as a source of blocks.
pub struct Running {
    pub reader: SlotReader,
    pub keys: KeyTable,
}

/// The stages' view of one block image.
pub struct BlockJob<'a> {
    pub member: &'a Member,
    pub image: &'a ImageEntry,
    pub map: &'a BlockMap,
    pub writer: &'a SlotWriter,
    /// Resuming: frames already in the target slot are kept.
    pub resume: bool,
    pub running: Option<&'a Running>,
    pub read_back: ReadBack,
    pub cancel: &'a AtomicBool,
}

/// What a plan expects to move, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Bundle bytes to download (block map excluded).
    pub download: u64,
    /// Raw bytes found on the device.
    pub reuse: u64,
    /// Raw bytes of zero runs.
    pub zero: u64,
    /// Raw bytes that come from downloads.
    pub fetched_raw: u64,
}

/// Gathers frame `f`'s blocks from the running slot by key into a buffer from `pool`,
/// leaving the blocks of `supplied` (a patch's runs) for the patch to fill; `None` when
/// a key is not there (the frame must come from elsewhere). Whatever the buffer held
/// before stays only where the patch writes or the frame's hash check refuses it.
fn gather(
    map: &BlockMap,
    f: &Frame,
    running: &Running,
    supplied: &[BlockRun],
    pool: &BufferPool,
) -> Result<Option<Vec<u8>>, InstallError> {
    let len = map.frame_len(f) as usize;
    let is_supplied = |b: u64| {
        supplied
            .iter()
            .any(|r| b >= r.first && b < r.first + u64::from(r.blocks))
    };
    // (block of the frame, where the running slot has it)
    let mut at = Vec::with_capacity(f.blocks as usize);
    for (i, k) in map.frame_keys(f).iter().enumerate() {
        let b = f.first + i as u64;
        if is_supplied(b) {
            continue;
        }
        if (b + 1) * BLOCK > map.image_size {
            // A short last block has no key in the table.
            return Ok(None);
        }
        match running.keys.find(*k) {
            Some(from) => at.push((i, from)),
            None => return Ok(None),
        }
    }
    let mut data = pool.take(len);
    let mut i = 0;
    while i < at.len() {
        // Blocks consecutive in both the frame and the running slot: one read.
        let mut j = i + 1;
        while j < at.len() && at[j].0 == at[j - 1].0 + 1 && at[j].1 == at[j - 1].1 + 1 {
            j += 1;
        }
        let part = &mut data[at[i].0 * BLOCK as usize..(at[j - 1].0 + 1) * BLOCK as usize];
        if !running
            .reader
            .read_at(at[i].1 * BLOCK, part)
            .map_err(running_failed)?
        {
            pool.give(data);
            return Ok(None);
        }
        i = j;
    }
    Ok(Some(data))
}

fn running_failed(e: std::io::Error) -> InstallError {
    InstallError::Failed(format!("reading the running slot: {e}"))
}

/// Reads a patch's reference from the running slot; `None` when it is not there (the
/// running slot is not the image the patch was made against).
fn reference(
    p: &Patch,
    running: &Running,
    pool: &BufferPool,
) -> Result<Option<Vec<u8>>, InstallError> {
    let mut data = pool.take((p.ref_blocks() * BLOCK) as usize);
    let mut start = 0;
    for r in &p.refs {
        let end = start + r.blocks as usize * BLOCK as usize;
        let read = match r.start.checked_mul(BLOCK) {
            Some(offset) => running
                .reader
                .read_at(offset, &mut data[start..end])
                .map_err(running_failed)?,
            None => false,
        };
        if !read {
            pool.give(data);
            return Ok(None);
        }
        start = end;
    }
    if sha256(&data) == p.ref_sha256 {
        Ok(Some(data))
    } else {
        pool.give(data);
        Ok(None)
    }
}

/// The frames of patch `p` still missing whose other blocks the running slot has, each
/// gathered with the patch's blocks left to fill.
fn patch_frames(
    map: &BlockMap,
    p: &Patch,
    running: &Running,
    have: &[bool],
    pool: &BufferPool,
) -> Result<Vec<(usize, Vec<u8>)>, InstallError> {
    let mut out = Vec::new();
    for f in &p.frames {
        let f = *f as usize;
        if have[f] {
            continue;
        }
        if let Some(buf) = gather(map, &map.frames[f], running, &p.runs, pool)? {
            out.push((f, buf));
        }
    }
    Ok(out)
}

/// Where a frame comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Target,
    Running,
    Fetched,
}

enum Work<'a> {
    /// Raw candidate bytes for frame `frame`.
    Candidate {
        frame: usize,
        origin: Origin,
        data: Vec<u8>,
        credit: Credit<'a>,
    },
    /// Compressed bytes of frame `frame`.
    Packed {
        frame: usize,
        data: Vec<u8>,
        credit: Credit<'a>,
    },
    /// A patch's bytes, its (checked) reference, and the frames it completes with
    /// their other blocks already gathered from the running slot.
    Patch {
        patch: usize,
        data: Vec<u8>,
        reference: Vec<u8>,
        frames: Vec<(usize, Vec<u8>)>,
        credit: Credit<'a>,
    },
}

/// One verified frame's bytes, and the credit of the item it came with (which the
/// frames of one patch share: it returns when the last of them is written). Its buffer
/// goes back to the pool before its credit returns.
struct FrameBytes<'a> {
    buf: Vec<u8>,
    pool: &'a BufferPool,
    _credit: Arc<Credit<'a>>,
}

impl<'a> FrameBytes<'a> {
    fn whole(data: Vec<u8>, credit: Credit<'a>, pool: &'a BufferPool) -> FrameBytes<'a> {
        FrameBytes {
            buf: data,
            pool,
            _credit: Arc::new(credit),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for FrameBytes<'_> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

enum ToWriter<'a> {
    Frame(Written<'a>),
    Present { frame: usize },
}

/// A verified frame for the writer to write.
struct Written<'a> {
    frame: usize,
    origin: Origin,
    data: FrameBytes<'a>,
    /// Downloaded bytes this frame accounts for.
    downloaded: u64,
    /// Its raw bytes that came from the running slot (a patched frame's other blocks).
    from_running: u64,
}

/// Bytes in the slot by where they came from (counted when they landed).
#[derive(Default)]
struct Landed {
    fetched_raw: AtomicU64,
    downloaded: AtomicU64,
    reused: AtomicU64,
    zero: AtomicU64,
}

/// A worker's verdict on a frame it was given.
struct Verdict {
    frame: usize,
    ok: bool,
    why: String,
}

fn worker<'a>(
    job: &BlockJob<'_>,
    dictionary: Option<&[u8]>,
    pool: &'a BufferPool,
    work: &Mutex<Receiver<Work<'a>>>,
    to_writer: SyncSender<ToWriter<'a>>,
    verdicts: Sender<Verdict>,
) {
    let map = job.map;
    loop {
        let next = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(w) = next else { return };
        // (frame, origin, bytes, downloaded, raw bytes from the running slot)
        let mut out: Vec<(usize, Origin, FrameBytes<'a>, u64, u64)> = Vec::new();
        let mut bad: Vec<(usize, String)> = Vec::new();
        match w {
            Work::Candidate {
                frame,
                origin,
                data,
                credit,
            } => {
                if sha256(&data) == map.frames[frame].sha256 {
                    out.push((frame, origin, FrameBytes::whole(data, credit, pool), 0, 0));
                } else {
                    bad.push((frame, String::new()));
                }
            }
            Work::Packed {
                frame,
                data,
                mut credit,
            } => {
                let f = &map.frames[frame];
                let len = map.frame_len(f) as usize;
                let downloaded = data.len() as u64;
                let decoded = match f.codec {
                    Codec::Stored => Ok(data),
                    Codec::Zstd => {
                        let mut frame_bytes = pool.take(len);
                        let d = decode(&data, len, None, dictionary, &mut frame_bytes)
                            .map(|()| frame_bytes);
                        // The compressed bytes are done with: the planner may fetch on.
                        pool.give(data);
                        credit.shrink(downloaded);
                        d
                    }
                };
                match decoded {
                    Ok(d) if d.len() == len && sha256(&d) == f.sha256 => out.push((
                        frame,
                        Origin::Fetched,
                        FrameBytes::whole(d, credit, pool),
                        downloaded,
                        0,
                    )),
                    Ok(_) => bad.push((frame, "it does not match its signed hash".into())),
                    Err(e) => bad.push((frame, e)),
                }
            }
            Work::Patch {
                patch,
                data,
                reference,
                frames,
                mut credit,
            } => {
                let p = &map.patches[patch];
                let size = data.len() as u64;
                let patch_len = map.patch_len(p);
                let mut raw = pool.take(patch_len as usize);
                let decoded = decode(&data, raw.len(), Some(&reference), None, &mut raw);
                let used = size + reference.len() as u64;
                pool.give(data);
                pool.give(reference);
                credit.shrink(used);
                let filled: Vec<(usize, Vec<u8>, Option<u64>)> = frames
                    .into_iter()
                    .map(|(f, mut buf)| {
                        let fr = &map.frames[f];
                        let supplied = decoded
                            .is_ok()
                            .then(|| fill_from_patch(map, p, fr, &raw, &mut buf));
                        let verified = supplied.filter(|_| sha256(&buf) == fr.sha256);
                        (f, buf, verified)
                    })
                    .collect();
                // The decoded patch is in the frames now.
                pool.give(raw);
                credit.shrink(patch_len);
                let credit = Arc::new(credit);
                let count = filled.len() as u64;
                for (i, (f, buf, supplied)) in filled.into_iter().enumerate() {
                    let Some(supplied) = supplied else {
                        bad.push((f, String::new()));
                        continue;
                    };
                    // The patch's bytes are shared out over its frames.
                    let d = size / count + if i == 0 { size % count } else { 0 };
                    let from_running = buf.len() as u64 - supplied;
                    let bytes = FrameBytes {
                        buf,
                        pool,
                        _credit: credit.clone(),
                    };
                    out.push((f, Origin::Fetched, bytes, d, from_running));
                }
            }
        }
        for (frame, why) in bad {
            if verdicts
                .send(Verdict {
                    frame,
                    ok: false,
                    why,
                })
                .is_err()
            {
                return;
            }
        }
        for (frame, origin, data, downloaded, from_running) in out {
            let _ = verdicts.send(Verdict {
                frame,
                ok: true,
                why: String::new(),
            });
            let msg = if origin == Origin::Target {
                ToWriter::Present { frame }
            } else {
                ToWriter::Frame(Written {
                    frame,
                    origin,
                    data,
                    downloaded,
                    from_running,
                })
            };
            if to_writer.send(msg).is_err() {
                return;
            }
        }
    }
}

/// Copies the blocks patch `p` supplies for frame `f` from its decoded bytes (`decoded`:
/// the runs back to back) into the frame's buffer; returns how many bytes it copied.
fn fill_from_patch(map: &BlockMap, p: &Patch, f: &Frame, decoded: &[u8], frame: &mut [u8]) -> u64 {
    let (frame_at, frame_len) = map.frame_range(f);
    let mut at = 0usize;
    let mut copied = 0;
    for r in &p.runs {
        let (run_at, len) = map.run_range(r);
        let len = len as usize;
        if run_at >= frame_at && run_at < frame_at + frame_len {
            let into = (run_at - frame_at) as usize;
            if let (Some(src), Some(dst)) =
                (decoded.get(at..at + len), frame.get_mut(into..into + len))
            {
                dst.copy_from_slice(src);
                copied += len as u64;
            }
        }
        at += len;
    }
    copied
}

/// The writer stage: zero runs first, then verified frames as they come; counts what
/// landed and tells the read-back how far the image is written without a gap.
fn writer_stage(
    job: &BlockJob<'_>,
    incoming: Receiver<ToWriter<'_>>,
    landed: &Landed,
    done_to: Option<Sender<u64>>,
) -> Result<(), InstallError> {
    let map = job.map;
    let mut prefix = Prefix::default();
    let mut writeback = Writeback::default();
    let mut complete = |at: u64, len: u64, written: bool| {
        let grown = prefix.add(at, at + len);
        writeback.landed(job.writer, at, len, written, prefix.end, map.image_size);
        if let (Some(grown), Some(tx)) = (grown, &done_to) {
            let _ = tx.send(grown);
        }
    };
    // Zero runs first: they need nothing from anywhere.
    let zeros = vec![0u8; WRITEBACK_BATCH as usize];
    for z in &map.zeros {
        let end = ((z.first + z.blocks) * BLOCK).min(map.image_size);
        let mut at = z.first * BLOCK;
        while at < end {
            check_cancel(job.cancel)?;
            let n = (end - at).min(WRITEBACK_BATCH);
            job.writer.write_at(at, &zeros[..n as usize])?;
            landed.zero.fetch_add(n, Ordering::Relaxed);
            complete(at, n, true);
            at += n;
        }
    }
    // Frames that lie back to back are written with one system call per
    // WRITEBACK_BATCH (as a format 1 copy batches chunks). The batch is written
    // whenever no frame is waiting: the writer never sits on frames (and their credit)
    // while the planner waits for credit.
    let mut batch: Vec<Written<'_>> = Vec::new();
    let flush = |batch: &mut Vec<Written<'_>>,
                 complete: &mut dyn FnMut(u64, u64, bool)|
     -> Result<(), InstallError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let at = map.frame_range(&map.frames[first.frame]).0;
        let bufs: Vec<&[u8]> = batch.iter().map(|w| w.data.bytes()).collect();
        job.writer.write_vectored_at(at, &bufs)?;
        for w in batch.drain(..) {
            let (at, len) = map.frame_range(&map.frames[w.frame]);
            complete(at, len, true);
            match w.origin {
                Origin::Fetched => {
                    landed
                        .fetched_raw
                        .fetch_add(len - w.from_running, Ordering::Relaxed);
                    landed.reused.fetch_add(w.from_running, Ordering::Relaxed);
                    landed.downloaded.fetch_add(w.downloaded, Ordering::Relaxed);
                }
                _ => {
                    landed.reused.fetch_add(len, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    };
    loop {
        let msg = match incoming.try_recv() {
            Ok(m) => m,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                flush(&mut batch, &mut complete)?;
                match incoming.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        };
        match msg {
            ToWriter::Present { frame } => {
                let (at, len) = map.frame_range(&map.frames[frame]);
                landed.reused.fetch_add(len, Ordering::Relaxed);
                complete(at, len, false);
            }
            ToWriter::Frame(w) => {
                // The batch ends where its last frame does; it is full at WRITEBACK_BATCH.
                let at = map.frame_range(&map.frames[w.frame]).0;
                let batch_end = batch.last().map(|l| {
                    let (a, n) = map.frame_range(&map.frames[l.frame]);
                    a + n
                });
                let batch_bytes: usize = batch.iter().map(|b| b.data.bytes().len()).sum();
                if batch_end.is_some_and(|e| e != at) || batch_bytes as u64 >= WRITEBACK_BATCH {
                    flush(&mut batch, &mut complete)?;
                }
                batch.push(w);
            }
        }
    }
    flush(&mut batch, &mut complete)
}

/// How far from its start the image is written without a gap: what the read-back may
/// read while the install goes on.
#[derive(Default)]
struct Prefix {
    /// Bytes `0..end` are written.
    end: u64,
    /// Written ranges past a gap, start → end.
    beyond: std::collections::BTreeMap<u64, u64>,
}

impl Prefix {
    /// Records `start..end` as written; the new end of the prefix when it grew.
    fn add(&mut self, start: u64, end: u64) -> Option<u64> {
        if start > self.end {
            self.beyond.insert(start, end);
            return None;
        }
        let before = self.end;
        self.end = self.end.max(end);
        while let Some(e) = self.beyond.first_entry() {
            if *e.key() > self.end {
                break;
            }
            self.end = self.end.max(e.remove());
        }
        (self.end > before).then_some(self.end)
    }
}

/// Starts the writeback of what the writer wrote (zero runs and frames) in batches of at
/// least [`WRITEBACK_BATCH`], as a format 1 copy does: along the written prefix, where
/// the read-back follows, and for what was written past a gap once enough of it is
/// dirty, so an install does not fill a small device's page cache.
#[derive(Default)]
struct Writeback {
    /// The prefix up to here has been handed to writeback.
    prefix_done: u64,
    /// Written past the prefix and not yet handed: the span and its bytes.
    loose: Option<(u64, u64, u64)>,
}

const WRITEBACK_BATCH: u64 = 1 << 20;

impl Writeback {
    fn landed(
        &mut self,
        writer: &SlotWriter,
        at: u64,
        len: u64,
        written: bool,
        prefix_end: u64,
        size: u64,
    ) {
        let upto = if prefix_end >= size {
            prefix_end
        } else {
            prefix_end / WRITEBACK_BATCH * WRITEBACK_BATCH
        };
        if upto > self.prefix_done {
            writer.start_writeback(self.prefix_done, upto - self.prefix_done);
            self.prefix_done = upto;
        }
        // What joined the prefix goes with it.
        if !written || at + len <= prefix_end {
            return;
        }
        let (lo, hi, bytes) = self.loose.unwrap_or((at, at + len, 0));
        let span = (lo.min(at), hi.max(at + len), bytes + len);
        if span.2 >= WRITEBACK_BATCH {
            writer.start_writeback(span.0, span.1 - span.0);
            self.loose = None;
        } else {
            self.loose = Some(span);
        }
    }
}

/// What of [`Landed`] was reported already.
#[derive(Default)]
struct Reported {
    done: u64,
    downloaded: u64,
    reused: u64,
    zero: u64,
}

impl Reported {
    fn catch_up(&mut self, landed: &Landed, reporter: &mut Reporter<'_>) {
        let fetched_raw = landed.fetched_raw.load(Ordering::Relaxed);
        let downloaded = landed.downloaded.load(Ordering::Relaxed);
        let reused = landed.reused.load(Ordering::Relaxed);
        let zero = landed.zero.load(Ordering::Relaxed);
        let done = fetched_raw + reused + zero;
        reporter.landed(
            done - self.done,
            downloaded - self.downloaded,
            reused - self.reused,
            zero - self.zero,
        );
        *self = Reported {
            done,
            downloaded,
            reused,
            zero,
        };
    }
}

/// Bytes that may be in flight between the planner and the writer (read or fetched,
/// decoded, waiting to be written) when an image's frames are small. An image of larger
/// frames gets room for three of its largest: see [`budget_for`].
const IN_FLIGHT_BYTES: u64 = 6 << 20;

/// The credit a fetched frame needs until a worker has decoded it: its compressed bytes
/// and its raw bytes (a stored frame's bytes are both).
fn fetch_credit(map: &BlockMap, f: &Frame) -> u64 {
    match f.codec {
        Codec::Stored => map.frame_len(f),
        Codec::Zstd => u64::from(f.csize) + map.frame_len(f),
    }
}

/// The budget for installing `map`: [`IN_FLIGHT_BYTES`], or room for three of its
/// largest frames if that is more: one being read, one being decoded and hashed, one
/// being written. With room for one, an 8 MiB frame (as `--delta-from` packs them) would
/// be read, then decoded, then written, each stage waiting on the one before. A zstd
/// frame holds its compressed bytes too, until it is decoded; a patch larger than the
/// budget still goes alone.
fn budget_for(map: &BlockMap) -> u64 {
    let largest = map
        .frames
        .iter()
        .map(|f| map.frame_len(f))
        .max()
        .unwrap_or(0);
    IN_FLIGHT_BYTES.max(3 * largest)
}

/// Bounds the memory of the stages: the planner takes credit for an item's buffers
/// before it reads or fetches them; the credit comes back when the last of them is
/// dropped (written, refused, or the stages stopped), or in part once a worker has
/// decoded a frame and dropped its compressed bytes.
struct Budget {
    /// Bytes that may be in flight.
    limit: u64,
    /// Bytes in flight, and whether the writer stopped (no credit comes back then).
    state: Mutex<(u64, bool)>,
    freed: Condvar,
}

/// Credit for `bytes` of [`Budget`], given back on drop.
struct Credit<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    fn new(limit: u64) -> Budget {
        Budget {
            limit,
            state: Mutex::new((0, false)),
            freed: Condvar::new(),
        }
    }

    /// Waits until `bytes` fit (or nothing else is in flight); `None` once the writer
    /// has stopped.
    fn take(&self, bytes: u64) -> Option<Credit<'_>> {
        let mut st = self.state.lock().ok()?;
        while !st.1 && st.0 > 0 && st.0 + bytes > self.limit {
            st = self.freed.wait(st).ok()?;
        }
        if st.1 {
            return None;
        }
        st.0 += bytes;
        Some(Credit {
            budget: self,
            bytes,
        })
    }

    /// Gives back `bytes` of credit (a [`Credit`] never gives back more than it holds)
    /// and wakes the planner.
    fn give_back(&self, bytes: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.0 -= bytes;
        }
        self.freed.notify_all();
    }

    /// The writer stopped: wake the planner.
    fn close(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.1 = true;
        }
        self.freed.notify_all();
    }
}

impl Credit<'_> {
    /// Gives back `bytes` of this credit now (the buffer they paid for is gone); the
    /// rest comes back on drop.
    fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budget.give_back(bytes);
    }
}

impl Drop for Credit<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Room in each queue between the stages, in items.
const QUEUE: usize = 64;

/// A fetched frame or patch that arrives corrupted this many times fails the install.
const FETCH_ATTEMPTS: u32 = 2;
/// Most bytes fetched with one ranged read.
const MAX_RUN: u64 = 8 << 20;

fn source_failure(e: SourceError, cancel: &AtomicBool, what: String) -> InstallError {
    if matches!(e, SourceError::Cancelled) || check_cancel(cancel).is_err() {
        InstallError::Cancelled
    } else {
        InstallError::Failed(format!("{what}: {e}"))
    }
}

/// Installs one block image; see the module docs.
pub fn copy_blocks(
    source: &mut dyn ByteSource,
    job: &BlockJob<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<(), InstallError> {
    let map = job.map;
    let file = &job.image.file;
    let dictionary = fetch_dictionary(source, job)?;
    // Decompressing and hashing is most of the CPU an install spends: a worker per core
    // (the planner, writer and read-back mostly wait on I/O).
    let workers = super::copy::cores();
    let landed = Landed::default();
    let budget = Budget::new(budget_for(map));
    let pool = BufferPool::default();
    let mut reported = Reported::default();
    // The read-back follows the writer through the written prefix of the image, straight
    // from the device, while the install goes on (as in a format 1 copy).
    let direct = match job.read_back {
        ReadBack::Off => None,
        _ => DirectReader::open(job.writer),
    };
    let result = std::thread::scope(|s| -> Result<Option<ImageHasher>, InstallError> {
        // The budget bounds the bytes in flight; the queues only need room enough that
        // a stage seldom sleeps on a full or empty one (a wake-up per 64 KiB frame costs
        // more than hashing it).
        let (work_tx, work_rx) = sync_channel::<Work>(QUEUE);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (write_tx, write_rx) = sync_channel::<ToWriter>(QUEUE);
        let (verdict_tx, verdict_rx) = channel::<Verdict>();
        let (done_tx, done_rx) = channel::<u64>();
        let done_tx = direct.is_some().then_some(done_tx);
        let read_back = s.spawn(move || {
            direct
                .map(|d| d.follow(job.writer, job.image, job.read_back, done_rx))
                .transpose()
        });
        let landed = &landed;
        let budget = &budget;
        let pool = &pool;
        let writer = s.spawn(move || {
            let written = writer_stage(job, write_rx, landed, done_tx);
            budget.close();
            written
        });
        let dict = dictionary.as_deref();
        for _ in 0..workers {
            let (work_rx, write_tx, verdict_tx) =
                (work_rx.clone(), write_tx.clone(), verdict_tx.clone());
            s.spawn(move || worker(job, dict, pool, &work_rx, write_tx, verdict_tx));
        }
        drop((work_rx, write_tx, verdict_tx));
        let mut have = vec![false; map.frames.len()];
        let mut failures: Vec<(usize, String)> = Vec::new();
        let mut plan = || -> Result<(), InstallError> {
            let mut sent = 0usize;
            let mut answered = 0usize;
            let drain = |have: &mut [bool],
                         answered: &mut usize,
                         failures: &mut Vec<(usize, String)>,
                         block: bool|
             -> bool {
                loop {
                    let v = if block {
                        match verdict_rx.recv() {
                            Ok(v) => v,
                            Err(_) => return false,
                        }
                    } else {
                        match verdict_rx.try_recv() {
                            Ok(v) => v,
                            Err(_) => return true,
                        }
                    };
                    *answered += 1;
                    if v.ok {
                        have[v.frame] = true;
                    } else if !v.why.is_empty() {
                        failures.push((v.frame, v.why));
                    }
                    if block {
                        return true;
                    }
                }
            };
            let stopped = || InstallError::Failed("the install stages stopped".into());
            let send = |w| -> Result<(), InstallError> { work_tx.send(w).map_err(|_| stopped()) };
            let take = |bytes: u64| budget.take(bytes).ok_or_else(stopped);
            // 1. Local pass.
            for (i, f) in map.frames.iter().enumerate() {
                check_cancel(job.cancel)?;
                let (at, len) = map.frame_range(f);
                if job.resume {
                    let credit = take(len)?;
                    let mut data = pool.take(len as usize);
                    if job.writer.read_at(at, &mut data).is_ok() {
                        send(Work::Candidate {
                            frame: i,
                            origin: Origin::Target,
                            data,
                            credit,
                        })?;
                        sent += 1;
                        continue;
                    }
                }
                if let Some(running) = job.running {
                    let credit = take(len)?;
                    if let Some(data) = gather(map, f, running, &[], pool)? {
                        send(Work::Candidate {
                            frame: i,
                            origin: Origin::Running,
                            data,
                            credit,
                        })?;
                        sent += 1;
                    }
                }
                drain(&mut have, &mut answered, &mut failures, false);
                reported.catch_up(landed, reporter);
            }
            while answered < sent {
                if !drain(&mut have, &mut answered, &mut failures, true) {
                    break;
                }
            }
            // A target candidate that failed may still be in the running slot.
            if job.resume {
                if let Some(running) = job.running {
                    for (i, f) in map.frames.iter().enumerate() {
                        if have[i] {
                            continue;
                        }
                        let credit = take(map.frame_len(f))?;
                        if let Some(data) = gather(map, f, running, &[], pool)? {
                            send(Work::Candidate {
                                frame: i,
                                origin: Origin::Running,
                                data,
                                credit,
                            })?;
                            sent += 1;
                        }
                    }
                    while answered < sent {
                        if !drain(&mut have, &mut answered, &mut failures, true) {
                            break;
                        }
                    }
                }
            }
            // 2. Fetch pass, in attempts: what a patch or a fetch did not bring is tried once more.
            for attempt in 1..=FETCH_ATTEMPTS {
                failures.clear();
                if let Some(running) = job.running {
                    for (pi, p) in map.patches.iter().enumerate() {
                        if attempt > 1 || p.frames.iter().all(|f| have[*f as usize]) {
                            continue;
                        }
                        check_cancel(job.cancel)?;
                        let todo: Vec<&u32> =
                            p.frames.iter().filter(|f| !have[**f as usize]).collect();
                        let raw: u64 = todo
                            .iter()
                            .map(|f| map.frame_len(&map.frames[**f as usize]))
                            .sum();
                        let credit = take(
                            u64::from(p.csize) + p.ref_blocks() * BLOCK + map.patch_len(p) + raw,
                        )?;
                        let Some(reference) = reference(p, running, pool)? else {
                            continue;
                        };
                        let frames = patch_frames(map, p, running, &have, pool)?;
                        if frames.is_empty() {
                            continue;
                        }
                        let mut data = vec![0u8; p.csize as usize];
                        source
                            .read_exact_at(job.member.offset + p.offset, &mut data)
                            .map_err(|e| {
                                source_failure(e, job.cancel, format!("fetching a patch of {file}"))
                            })?;
                        sent += frames.len();
                        send(Work::Patch {
                            patch: pi,
                            data,
                            reference,
                            frames,
                            credit,
                        })?;
                        drain(&mut have, &mut answered, &mut failures, false);
                        reported.catch_up(landed, reporter);
                    }
                    while answered < sent {
                        if !drain(&mut have, &mut answered, &mut failures, true) {
                            break;
                        }
                    }
                }
                let missing: Vec<usize> = (0..map.frames.len()).filter(|i| !have[*i]).collect();
                if missing.is_empty() {
                    break;
                }
                let mut k = 0;
                while k < missing.len() {
                    // A run of frames that lie back to back in the payload: one ranged read.
                    let mut end = k + 1;
                    let first = &map.frames[missing[k]];
                    let mut bytes = u64::from(first.csize);
                    while end < missing.len()
                        && missing[end] == missing[end - 1] + 1
                        && bytes + u64::from(map.frames[missing[end]].csize) <= MAX_RUN
                    {
                        bytes += u64::from(map.frames[missing[end]].csize);
                        end += 1;
                    }
                    check_cancel(job.cancel)?;
                    let what = || format!("fetching {file} frames at byte {}", first.offset);
                    let mut reader = source
                        .read_range(job.member.offset + first.offset, bytes)
                        .map_err(|e| source_failure(e, job.cancel, what()))?;
                    for &fi in &missing[k..end] {
                        let f = &map.frames[fi];
                        let credit = take(fetch_credit(map, f))?;
                        let mut data = pool.take(f.csize as usize);
                        reader.read_exact(&mut data).map_err(|e| {
                            if check_cancel(job.cancel).is_err() {
                                InstallError::Cancelled
                            } else {
                                InstallError::Failed(format!("{}: {e}", what()))
                            }
                        })?;
                        send(Work::Packed {
                            frame: fi,
                            data,
                            credit,
                        })?;
                        sent += 1;
                        drain(&mut have, &mut answered, &mut failures, false);
                        reported.catch_up(landed, reporter);
                    }
                    k = end;
                }
                while answered < sent {
                    if !drain(&mut have, &mut answered, &mut failures, true) {
                        break;
                    }
                }
            }
            Ok(())
        };
        let planned = plan();
        drop(work_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(InstallError::Failed("the slot writer stopped".into())));
        let hashed = read_back
            .join()
            .unwrap_or_else(|_| Err(InstallError::Failed("the read-back thread panicked".into())));
        // A cancel first, else the writer's own error (the planner only sees that the
        // stages behind it stopped), else the planner's.
        if let Err(InstallError::Cancelled) = planned {
            return Err(InstallError::Cancelled);
        }
        written?;
        planned?;
        if let Some((fi, why)) = failures.first() {
            let (at, len) = map.frame_range(&map.frames[*fi]);
            return Err(InstallError::Failed(format!(
                "image {file}: the frame at bytes {at}..{} came {FETCH_ATTEMPTS} times and was refused every time: {why}",
                at + len
            )));
        }
        if let Some(i) = have.iter().position(|h| !h) {
            let (at, len) = map.frame_range(&map.frames[i]);
            return Err(InstallError::Failed(format!(
                "image {file}: the frame at bytes {at}..{} could not be placed",
                at + len
            )));
        }
        hashed
    });
    reported.catch_up(&landed, reporter);
    let hashed = result?;
    check_cancel(job.cancel)?;
    job.writer.sync()?;
    super::copy::finish_read_back(job.writer, job.image, job.read_back, job.cancel, hashed)
}

/// Fetches and checks the image's shared dictionary, if it has one.
fn fetch_dictionary(
    source: &mut dyn ByteSource,
    job: &BlockJob<'_>,
) -> Result<Option<Vec<u8>>, InstallError> {
    let size = job.map.dictionary_size as usize;
    if size == 0 {
        return Ok(None);
    }
    let mut d = vec![0u8; size];
    source
        .read_exact_at(job.member.offset, &mut d)
        .map_err(|e| source_failure(e, job.cancel, "fetching the dictionary".into()))?;
    if sha256(&d) != job.map.dictionary_sha256 {
        return Err(InstallError::Failed(format!(
            "image {}: the dictionary does not match its signed hash",
            job.image.file
        )));
    }
    Ok(Some(d))
}

/// How many bytes installing `map` will download, given the running slot: the local
/// pass and the patch check run for real (reading, not writing).
pub fn estimate(
    map: &BlockMap,
    running: Option<&Running>,
    cancel: &AtomicBool,
) -> Result<Estimate, InstallError> {
    let mut e = Estimate {
        zero: map.image_size - map.data_bytes(),
        download: u64::from(map.dictionary_size),
        ..Default::default()
    };
    let mut have = vec![false; map.frames.len()];
    let pool = BufferPool::default();
    if let Some(r) = running {
        for (i, f) in map.frames.iter().enumerate() {
            check_cancel(cancel)?;
            if let Some(d) = gather(map, f, r, &[], &pool)? {
                if sha256(&d) == f.sha256 {
                    have[i] = true;
                    e.reuse += d.len() as u64;
                }
                pool.give(d);
            }
        }
        for p in &map.patches {
            if p.frames.iter().all(|f| have[*f as usize]) {
                continue;
            }
            match reference(p, r, &pool)? {
                Some(reference) => pool.give(reference),
                None => continue,
            }
            let frames = patch_frames(map, p, r, &have, &pool)?;
            if frames.is_empty() {
                continue;
            }
            e.download += u64::from(p.csize);
            for (f, buf) in frames {
                pool.give(buf);
                have[f] = true;
                let fr = &map.frames[f];
                let (at, len) = map.frame_range(fr);
                // What the patch supplies of this frame; the rest is reused.
                let supplied: u64 = p
                    .runs
                    .iter()
                    .map(|run| map.run_range(run))
                    .filter(|(ra, _)| *ra >= at && *ra < at + len)
                    .map(|(_, l)| l)
                    .sum();
                e.fetched_raw += supplied;
                e.reuse += len - supplied;
            }
        }
    }
    for (i, f) in map.frames.iter().enumerate() {
        if !have[i] {
            e.download += u64::from(f.csize);
            e.fetched_raw += map.frame_len(f);
        }
    }
    if e.download == u64::from(map.dictionary_size) {
        e.download = 0;
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn in_flight(b: &Budget) -> u64 {
        b.state.lock().map(|s| s.0).unwrap_or(u64::MAX)
    }

    /// The key table of a slot: zero blocks are left out, every other block is found
    /// by its key, and a repeated block is found at its first place, however the slot
    /// fell into stripes (its size is not a multiple of anything the threads use).
    #[test]
    fn the_key_table_finds_every_block_at_its_first_place() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = 1001u64;
        let block = |n: u64| -> Vec<u8> {
            let mut b: Vec<u8> = (0..BLOCK).map(|i| i as u8 | 1).collect();
            b[..8].copy_from_slice(&n.to_le_bytes());
            b
        };
        let mut slot = Vec::new();
        for b in 0..blocks {
            match b {
                b if b % 10 == 0 => slot.extend(vec![0u8; BLOCK as usize]),
                // Block 999 repeats block 3: its key is found at 3.
                999 => slot.extend(block(3)),
                b => slot.extend(block(b)),
            }
        }
        slot.extend(vec![7u8; 100]); // a partial block at the end is not in the table
        let path = dir.path().join("slot");
        std::fs::write(&path, &slot).unwrap();
        let reader = SlotReader::open(&path).unwrap();
        let t = KeyTable::scan(&reader, slot.len() as u64, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            t.len() as u64,
            blocks - 101 - 1,
            "zeros and the repeat left out"
        );
        for b in (0..blocks).filter(|b| b % 10 != 0 && *b != 999) {
            let at = t.find(key_of(&sha256(&block(b)))).unwrap();
            assert_eq!(at, b, "block {b}");
        }
        let cancelled = KeyTable::scan(&reader, slot.len() as u64, &AtomicBool::new(true));
        assert!(cancelled.is_err());
    }

    /// The read-back may follow only a gapless prefix: ranges written out of order
    /// count once the gap before them is filled, and nothing past a gap is given away.
    #[test]
    fn the_written_prefix_grows_only_without_gaps() {
        let mut p = Prefix::default();
        assert_eq!(p.add(8, 12), None, "a gap at 0..8");
        assert_eq!(p.add(20, 30), None);
        assert_eq!(p.add(0, 4), Some(4));
        assert_eq!(p.add(4, 8), Some(12), "fills the gap: 8..12 joins");
        assert_eq!(p.add(12, 20), Some(30), "and 20..30 after it");
        assert_eq!(p.add(30, 30), None, "an empty range adds nothing");
        assert_eq!(p.add(0, 4), None, "nothing new");
        assert_eq!(p.add(30, 40), Some(40));
    }

    #[test]
    fn a_take_over_the_budget_waits_until_credit_comes_back() {
        let budget = Budget::new(IN_FLIGHT_BYTES);
        let first = budget.take(IN_FLIGHT_BYTES - 10).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let c = budget.take(20);
                tx.send(c.map(|c| c.bytes)).unwrap();
            });
            // The second take cannot fit while the first credit is out.
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            assert_eq!(in_flight(&budget), IN_FLIGHT_BYTES - 10);
            drop(first);
            assert_eq!(rx.recv().unwrap(), Some(20));
        });
        assert_eq!(in_flight(&budget), 0, "every credit came back");
    }

    #[test]
    fn an_item_larger_than_the_budget_goes_alone() {
        let budget = Budget::new(IN_FLIGHT_BYTES);
        let big = budget.take(3 * IN_FLIGHT_BYTES).unwrap();
        assert_eq!(in_flight(&budget), 3 * IN_FLIGHT_BYTES);
        drop(big);
        let small = budget.take(1).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(budget.take(2 * IN_FLIGHT_BYTES).is_some()).unwrap());
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            drop(small);
            assert!(rx.recv().unwrap());
        });
    }

    #[test]
    fn a_stopped_writer_wakes_a_waiting_planner() {
        let budget = Budget::new(IN_FLIGHT_BYTES);
        let _held = budget.take(IN_FLIGHT_BYTES).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(budget.take(1).is_none()).unwrap());
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            budget.close();
            assert!(rx.recv().unwrap(), "take gives up once the writer stopped");
        });
        assert!(budget.take(1).is_none());
    }

    /// A worker gives back the compressed part of a frame's credit once it has decoded
    /// it: the planner waiting on that room goes on while the raw bytes wait for the
    /// writer, and the rest comes back when they are written.
    #[test]
    fn a_shrunk_credit_lets_the_planner_go_on() {
        let budget = Budget::new(10);
        let mut first = budget.take(8).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(budget.take(5).map(|c| c.bytes)).unwrap());
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            first.shrink(3);
            assert_eq!(rx.recv().unwrap(), Some(5), "5 + 5 fit in 10");
        });
        first.shrink(100);
        assert_eq!(first.bytes, 0, "never more than it holds");
        drop(first);
        assert_eq!(in_flight(&budget), 0);
    }

    /// Small frames share the fixed budget; an image of 8 MiB frames gets room for three
    /// of them, whatever their codec.
    #[test]
    fn the_budget_holds_three_of_the_largest_frames() {
        let frame = |blocks: u32, codec: Codec, csize: u32| Frame {
            first: 0,
            blocks,
            codec,
            offset: 0,
            csize,
            sha256: [0; 32],
            keys_at: 0,
        };
        let mut map = BlockMap {
            image_size: 1 << 30,
            ..Default::default()
        };
        map.frames = vec![frame(16, Codec::Zstd, 9000); 10];
        assert_eq!(budget_for(&map), IN_FLIGHT_BYTES);
        map.frames.push(frame(2048, Codec::Zstd, 3 << 20));
        assert_eq!(budget_for(&map), 24 << 20);
        map.frames.push(frame(1024, Codec::Stored, 4 << 20));
        assert_eq!(budget_for(&map), 24 << 20);
        map.frames = vec![frame(2048, Codec::Stored, 8 << 20)];
        assert_eq!(budget_for(&map), 24 << 20);
        map.frames.clear();
        assert_eq!(budget_for(&map), IN_FLIGHT_BYTES, "an image of zeros");
    }

    #[test]
    fn frames_of_a_patch_return_its_credit_when_the_last_is_dropped() {
        let budget = Budget::new(IN_FLIGHT_BYTES);
        let pool = BufferPool::default();
        let credit = Arc::new(budget.take(100).unwrap());
        let a = FrameBytes {
            buf: vec![7u8; 40],
            pool: &pool,
            _credit: credit.clone(),
        };
        let b = FrameBytes {
            buf: vec![7u8; 60],
            pool: &pool,
            _credit: credit,
        };
        assert_eq!((a.bytes().len(), b.bytes().len()), (40, 60));
        drop(a);
        assert_eq!(in_flight(&budget), 100);
        drop(b);
        assert_eq!(in_flight(&budget), 0);
    }
}
