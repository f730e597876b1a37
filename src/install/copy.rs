//! Moving one image into its slot through a staged pipeline, never writing an unverified
//! byte, hashing each byte once.
//!
//! ```text
//!  reader (this thread) ──chunks──▶ verify workers ──verified──▶ writer ──done up to──▶ read-back
//!   target / running slot / bundle     SHA-256 vs the           1 MiB aligned           O_DIRECT, in order,
//!                                      signed chunk index       batches, 1 fdatasync    CRC32 (or SHA-256)
//! ```
//!
//! - The **reader** walks the image in windows. For each chunk it decides where the bytes
//!   come from: the target slot itself (only when resuming an interrupted install), the
//!   running slot (at the offset its recorded chunk index names, anywhere in the slot; at
//!   the same offset when nothing is recorded), or the bundle. Reuse candidates are
//!   verified first; runs of what is still missing are fetched with one ranged read each.
//! - **Verify workers** (`min(cores − 1, 3)`, at least one) hash whole chunks against the
//!   signed chunk index. A chunk that does not match is never written: it is fetched again.
//! - The **writer** coalesces verified chunks into 1 MiB-aligned batches, writes each
//!   with one positional write, and syncs once at the end.
//! - The **read-back** follows the writer: it reads what landed straight from the device
//!   (`O_DIRECT`, no page-cache round trip) in image order and compares the image's
//!   CRC32 (`read-back = crc`) or also its SHA-256 (`sha256`) with the signed manifest.
//!
//! Queues between the stages are bounded in bytes, so memory stays flat whatever the
//! image size.

use super::progress::Reporter;
use super::{check_cancel, InstallError};
use crate::bundle::digest::ImageHasher;
use crate::bundle::{ChunkIndex, ImageEntry, Member};
use crate::config::ReadBack;
use crate::slot::{SlotReader, SlotWriter};
use crate::source::{ByteSource, SourceError};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

/// Bytes of chunks classified (and fetched with one request at most) at a time.
const WINDOW_BYTES: u64 = 8 << 20;
/// A chunk that arrives corrupted this many times in a row fails the install.
const CHUNK_RETRIES: u32 = 3;
/// Write batch and read-back block: aligned to this many bytes.
pub const BATCH_BYTES: u64 = 1 << 20;
/// Chunk buffers in the pipeline, in bytes: every chunk read, in a queue, being hashed or
/// waiting for its batch lives in one of them, and the reader waits for a free one. This
/// is what keeps memory flat.
const POOL_BYTES: u64 = 4 << 20;
/// Verified chunks the writer may hold back waiting for a batch to fill (half the pool,
/// so a hole in a batch can never starve the reader of buffers).
const MAX_PENDING_BYTES: u64 = 2 << 20;
/// How far the read-back stays behind the writer while the copy runs: far enough that the
/// writeback the writer started has reached the device.
const READ_BACK_LAG: u64 = 4 << 20;
/// Alignment of `O_DIRECT` reads: a multiple of any block device's logical block size.
const DIRECT_ALIGN: usize = 4096;

/// Where already-present chunks may come from.
pub struct Reuse {
    /// Check the target slot's current content first (resuming an interrupted install).
    pub target: bool,
    /// The running slot of the same class.
    pub active: Option<ActiveSlot>,
}

/// The running slot, and what is known of its content.
pub struct ActiveSlot {
    pub reader: SlotReader,
    /// Where each chunk hash lies in the slot, from its recorded index
    /// ([`super::slot_index`]). `None`: nothing recorded, probe the same offset.
    pub locations: Option<HashMap<[u8; 32], (u64, u64)>>,
}

/// The stages' view of one image.
pub struct Job<'a> {
    pub member: &'a Member,
    pub image: &'a ImageEntry,
    pub index: &'a ChunkIndex,
    pub writer: &'a SlotWriter,
    pub reuse: &'a Reuse,
    pub read_back: ReadBack,
    pub cancel: &'a AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Already in the target slot: verified, not written again.
    Target,
    /// From the running slot.
    Active,
    /// From the bundle.
    Fetched,
}

struct Work {
    chunk: usize,
    origin: Origin,
    data: Vec<u8>,
}

/// A worker's answer to the reader, for every chunk it checked.
struct Verdict {
    chunk: usize,
    origin: Origin,
    ok: bool,
}

enum ToWriter {
    Write {
        chunk: usize,
        data: Vec<u8>,
        origin: Origin,
    },
    Present {
        chunk: usize,
    },
}

/// Bytes that are in the slot, by where they came from: counted by the writer when they
/// landed (so progress never counts what a crash would lose), read by the reader for
/// progress reports.
#[derive(Default)]
struct Landed {
    fetched: AtomicU64,
    reused: AtomicU64,
}

/// What of [`Landed`] was reported already.
#[derive(Default)]
struct Reported {
    fetched: u64,
    reused: u64,
}

impl Reported {
    fn catch_up(&mut self, landed: &Landed, reporter: &mut Reporter<'_>) {
        let fetched = landed.fetched.load(Ordering::Relaxed);
        let reused = landed.reused.load(Ordering::Relaxed);
        if fetched > self.fetched {
            reporter.fetched(fetched - self.fetched);
            self.fetched = fetched;
        }
        if reused > self.reused {
            reporter.reused(reused - self.reused);
            self.reused = reused;
        }
    }
}

/// Cores this machine gives the install, at most 4: the threads of a CPU-bound stage.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
}

/// Number of verify workers for this machine (the reader keeps a core busy too).
pub fn worker_count() -> usize {
    cores().saturating_sub(1).clamp(1, 3)
}

/// Copies one image into its slot and checks what landed; see the module docs.
pub fn copy_image(
    source: &mut dyn ByteSource,
    job: &Job<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<(), InstallError> {
    let index = job.index;
    let buffers = (POOL_BYTES / u64::from(index.chunk_size)).max(4) as usize;
    let workers = worker_count();
    let direct = DirectReader::open(job.writer);
    let landed = Landed::default();
    let mut reported = Reported::default();
    let result = std::thread::scope(|s| {
        // Only the workers hold the receiving end: when they are gone, the reader's next
        // send fails instead of blocking.
        let (work_tx, work_rx) = sync_channel::<Work>(buffers);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (write_tx, write_rx) = sync_channel::<ToWriter>(buffers);
        let (verdict_tx, verdict_rx) = channel::<Verdict>();
        let (pool_tx, pool_rx) = channel::<Vec<u8>>();
        for _ in 0..buffers {
            let _ = pool_tx.send(Vec::with_capacity(index.chunk_size as usize));
        }
        let (done_tx, done_rx) = channel::<u64>();
        let overlapped = job.read_back != ReadBack::Off && direct.is_some();
        let read_back = s.spawn(move || -> Result<Option<ImageHasher>, InstallError> {
            match direct {
                Some(d) if overlapped => d
                    .follow(job.writer, job.image, job.read_back, done_rx)
                    .map(Some),
                _ => Ok(None),
            }
        });
        let landed = &landed;
        let writer_pool = pool_tx.clone();
        let writer = s.spawn(move || {
            write_stage(
                job,
                write_rx,
                overlapped.then_some(done_tx),
                landed,
                writer_pool,
            )
        });
        for _ in 0..workers {
            let (work_rx, write_tx, verdict_tx, pool_tx) = (
                work_rx.clone(),
                write_tx.clone(),
                verdict_tx.clone(),
                pool_tx.clone(),
            );
            s.spawn(move || verify_stage(index, &work_rx, write_tx, verdict_tx, pool_tx));
        }
        drop((work_rx, write_tx, verdict_tx, pool_tx));
        let read = Reader {
            job,
            work: work_tx,
            verdicts: verdict_rx,
            pool: pool_rx,
            spare: Vec::new(),
            in_flight: 0,
            corrupt: Vec::new(),
            probed: Vec::new(),
            landed,
            reported: &mut reported,
        }
        .run(source, reporter);
        // The reader's end closed the work queue: workers, then the writer, finish.
        let written = writer.join().unwrap_or_else(|_| {
            Err(InstallError::Failed(
                "the slot writer thread panicked".into(),
            ))
        });
        let hashed = read_back
            .join()
            .unwrap_or_else(|_| Err(InstallError::Failed("the read-back thread panicked".into())));
        // The first cause wins: a cancel, else the writer's own error (the reader only sees
        // that the stages behind it stopped), else the reader's.
        if let Err(InstallError::Cancelled) = read {
            return Err(InstallError::Cancelled);
        }
        written?;
        read?;
        finish_read_back(job.writer, job.image, job.read_back, job.cancel, hashed?)
    });
    reported.catch_up(&landed, reporter);
    result
}

/// The reader stage: classifies, reads and fetches chunks, hands them to the workers,
/// and reports progress from their verdicts.
struct Reader<'a, 'j> {
    job: &'a Job<'j>,
    work: SyncSender<Work>,
    verdicts: Receiver<Verdict>,
    /// Free chunk buffers (see [`POOL_BYTES`]).
    pool: Receiver<Vec<u8>>,
    /// Buffers taken from the pool and not passed on (a reuse candidate that was not
    /// there): used before the pool.
    spare: Vec<Vec<u8>>,
    /// Chunks sent to the workers whose verdict has not come back.
    in_flight: usize,
    /// Fetched chunks that failed their hash, to fetch again.
    corrupt: Vec<usize>,
    /// Verdicts on the chunks offered by the running [`Reader::probe`]: (chunk, found).
    probed: Vec<(usize, bool)>,
    landed: &'a Landed,
    reported: &'a mut Reported,
}

impl Reader<'_, '_> {
    fn run(
        mut self,
        source: &mut dyn ByteSource,
        reporter: &mut Reporter<'_>,
    ) -> Result<(), InstallError> {
        let index = self.job.index;
        let n = index.len();
        let per_window = ((WINDOW_BYTES / u64::from(index.chunk_size)) as usize).max(1);
        let mut start = 0;
        while start < n {
            let end = n.min(start + per_window);
            let mut missing: Vec<usize> = (start..end).collect();
            if self.job.reuse.target {
                missing = self.probe(&missing, Origin::Target, reporter)?;
            }
            if self.job.reuse.active.is_some() {
                missing = self.probe(&missing, Origin::Active, reporter)?;
            }
            for run in runs(&missing) {
                self.fetch_run(source, run, reporter)?;
            }
            start = end;
        }
        self.settle(reporter)?;
        for _ in 0..CHUNK_RETRIES {
            if self.corrupt.is_empty() {
                break;
            }
            let again = std::mem::take(&mut self.corrupt);
            for &c in &again {
                log::warn!(
                    "chunk {c} of {} failed its hash check; fetching it again",
                    self.job.image.file
                );
                self.fetch_run(source, c..c + 1, reporter)?;
            }
            self.settle(reporter)?;
        }
        if let Some(&c) = self.corrupt.first() {
            let (off, len) = index.chunk_range(c);
            return Err(InstallError::Failed(format!(
                "chunk {c} of {} (bytes {off}..{}) does not match its signed hash after {} attempts; nothing of it was written",
                self.job.image.file,
                off + len,
                CHUNK_RETRIES + 1
            )));
        }
        Ok(())
    }

    fn send(&mut self, work: Work) -> Result<(), InstallError> {
        self.in_flight += 1;
        self.work
            .send(work)
            .map_err(|_| InstallError::Failed("the verify workers stopped".into()))
    }

    fn take_verdict(&mut self, v: Verdict, reporter: &mut Reporter<'_>) {
        self.in_flight -= 1;
        self.reported.catch_up(self.landed, reporter);
        if !v.ok && v.origin == Origin::Fetched {
            self.corrupt.push(v.chunk);
        }
        if v.origin != Origin::Fetched {
            self.probed.push((v.chunk, v.ok));
        }
    }

    /// A free buffer of `len` bytes, waiting for one if all are in the pipeline (taking
    /// verdicts meanwhile).
    fn buffer(&mut self, len: u64, reporter: &mut Reporter<'_>) -> Result<Vec<u8>, InstallError> {
        if let Some(mut b) = self.spare.pop() {
            b.resize(len as usize, 0);
            return Ok(b);
        }
        loop {
            check_cancel(self.job.cancel)?;
            match self.pool.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(mut b) => {
                    b.resize(len as usize, 0);
                    return Ok(b);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => self.poll(reporter),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(self.stopped()),
            }
        }
    }

    /// Takes the verdicts that are already there, without waiting.
    fn poll(&mut self, reporter: &mut Reporter<'_>) {
        while let Ok(v) = self.verdicts.try_recv() {
            self.take_verdict(v, reporter);
        }
    }

    /// Waits for the verdict of every chunk in flight.
    fn settle(&mut self, reporter: &mut Reporter<'_>) -> Result<(), InstallError> {
        while self.in_flight > 0 {
            check_cancel(self.job.cancel)?;
            let v = self.verdicts.recv().map_err(|_| self.stopped())?;
            self.take_verdict(v, reporter);
        }
        Ok(())
    }

    /// The error when a stage behind the reader went away: the writer's own error is
    /// reported when it is joined.
    fn stopped(&self) -> InstallError {
        InstallError::Failed("the install pipeline stopped".into())
    }

    /// Offers the chunks `candidates` from `origin` to the workers; returns those that
    /// are not there (in chunk order).
    fn probe(
        &mut self,
        candidates: &[usize],
        origin: Origin,
        reporter: &mut Reporter<'_>,
    ) -> Result<Vec<usize>, InstallError> {
        let index = self.job.index;
        let mut missing = Vec::new();
        let mut offered = 0usize;
        self.probed.clear();
        for &c in candidates {
            check_cancel(self.job.cancel)?;
            let (off, len) = index.chunk_range(c);
            let mut data = self.buffer(len, reporter)?;
            let found = match origin {
                Origin::Target => {
                    self.job.writer.read_at(off, &mut data)?;
                    true
                }
                Origin::Active => {
                    let Some(active) = &self.job.reuse.active else {
                        return Ok(candidates.to_vec());
                    };
                    let at = match &active.locations {
                        Some(map) => map
                            .get(&index.hashes[c])
                            .filter(|(_, l)| *l == len)
                            .map(|(o, _)| *o),
                        None => Some(off),
                    };
                    match at {
                        Some(at) => active.reader.read_at(at, &mut data).map_err(|e| {
                            InstallError::Failed(format!("reading the running slot: {e}"))
                        })?,
                        None => false,
                    }
                }
                Origin::Fetched => false,
            };
            if found {
                offered += 1;
                self.send(Work {
                    chunk: c,
                    origin,
                    data,
                })?;
            } else {
                self.spare.push(data);
                missing.push(c);
            }
            self.poll(reporter);
        }
        // Wait for this window's answers; fetched chunks of earlier windows may answer too.
        while self.probed.len() < offered {
            check_cancel(self.job.cancel)?;
            let v = self.verdicts.recv().map_err(|_| self.stopped())?;
            self.take_verdict(v, reporter);
        }
        missing.extend(
            std::mem::take(&mut self.probed)
                .into_iter()
                .filter_map(|(c, ok)| (!ok).then_some(c)),
        );
        missing.sort_unstable();
        Ok(missing)
    }

    /// Fetches chunks `run` with one ranged read and hands them to the workers.
    fn fetch_run(
        &mut self,
        source: &mut dyn ByteSource,
        run: std::ops::Range<usize>,
        reporter: &mut Reporter<'_>,
    ) -> Result<(), InstallError> {
        let job = self.job;
        let index = job.index;
        let (first, last) = (run.start, run.end);
        let (run_off, _) = index.chunk_range(first);
        let (last_off, last_len) = index.chunk_range(last - 1);
        let what = || format!("fetching {} (chunks {first}..{last})", job.image.file);
        let mut reader = source
            .read_range(job.member.offset + run_off, last_off + last_len - run_off)
            .map_err(|e| source_failure(e, job.cancel, what()))?;
        for c in run {
            check_cancel(job.cancel)?;
            let (_, len) = index.chunk_range(c);
            let mut data = self.buffer(len, reporter)?;
            reader.read_exact(&mut data).map_err(|e| {
                if check_cancel(job.cancel).is_err() {
                    InstallError::Cancelled
                } else {
                    InstallError::Failed(format!("reading chunk {c} of {}: {e}", job.image.file))
                }
            })?;
            self.send(Work {
                chunk: c,
                origin: Origin::Fetched,
                data,
            })?;
            self.poll(reporter);
        }
        Ok(())
    }
}

/// Consecutive runs of sorted chunk numbers.
fn runs(chunks: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for &c in chunks {
        match out.last_mut() {
            Some(r) if r.end == c => r.end = c + 1,
            _ => out.push(c..c + 1),
        }
    }
    out
}

fn source_failure(e: SourceError, cancel: &AtomicBool, what: String) -> InstallError {
    if matches!(e, SourceError::Cancelled) || check_cancel(cancel).is_err() {
        InstallError::Cancelled
    } else {
        InstallError::Failed(format!("{what}: {e}"))
    }
}

/// A verify worker: hashes chunks against the signed index; a good one goes on to the
/// writer, every one gets a verdict back to the reader.
fn verify_stage(
    index: &ChunkIndex,
    work: &Mutex<Receiver<Work>>,
    to_writer: SyncSender<ToWriter>,
    verdicts: Sender<Verdict>,
    pool: Sender<Vec<u8>>,
) {
    loop {
        let next = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(mut w) = next else { return };
        let ok = index.verify(w.chunk, &w.data);
        // The verdict first: the reader counts on one for every chunk it handed out.
        let verdict = Verdict {
            chunk: w.chunk,
            origin: w.origin,
            ok,
        };
        if verdicts.send(verdict).is_err() {
            return;
        }
        let msg = match (ok, w.origin) {
            (false, _) => None,
            (true, Origin::Target) => Some(ToWriter::Present { chunk: w.chunk }),
            (true, origin) => {
                let data = std::mem::take(&mut w.data);
                Some(ToWriter::Write {
                    chunk: w.chunk,
                    data,
                    origin,
                })
            }
        };
        // A buffer not passed on goes back to the pool.
        if w.data.capacity() > 0 {
            let _ = pool.send(w.data);
        }
        if let Some(msg) = msg {
            if to_writer.send(msg).is_err() {
                return;
            }
        }
    }
}

/// The writer stage: holds verified chunks until their 1 MiB-aligned batch is complete
/// (or too much is held), writes each run of them with one positional write, and tells
/// the read-back how far the image is complete. Ends with one sync.
fn write_stage(
    job: &Job<'_>,
    incoming: Receiver<ToWriter>,
    done_to: Option<Sender<u64>>,
    landed: &Landed,
    pool: Sender<Vec<u8>>,
) -> Result<(), InstallError> {
    let index = job.index;
    let per_batch = ((BATCH_BYTES / u64::from(index.chunk_size)) as usize).max(1);
    let n = index.len();
    let mut open_in_batch: Vec<usize> = (0..n.div_ceil(per_batch))
        .map(|b| per_batch.min(n - b * per_batch))
        .collect();
    let mut done = vec![false; n];
    let mut watermark = 0usize;
    let mut pending: BTreeMap<usize, (Vec<u8>, Origin)> = BTreeMap::new();
    let mut pending_bytes = 0u64;
    // Writes the pending chunks of `range`, a run of consecutive chunks per system call
    // straight from their buffers, and gives the buffers back to the pool.
    let flush = |pending: &mut BTreeMap<usize, (Vec<u8>, Origin)>,
                 done: &mut [bool],
                 range: std::ops::Range<usize>|
     -> Result<u64, InstallError> {
        let chunks: Vec<usize> = pending.range(range).map(|(c, _)| *c).collect();
        let mut freed = 0;
        let (mut fetched, mut reused) = (0, 0);
        let mut run: Vec<(Vec<u8>, Origin)> = Vec::new();
        let mut run_start = 0;
        for (i, c) in chunks.iter().enumerate() {
            let Some(entry) = pending.remove(c) else {
                continue;
            };
            if run.is_empty() {
                run_start = *c;
            }
            run.push(entry);
            done[*c] = true;
            let run_ends = chunks.get(i + 1) != Some(&(c + 1));
            if run_ends {
                let at = index.chunk_range(run_start).0;
                let slices: Vec<&[u8]> = run.iter().map(|(d, _)| d.as_slice()).collect();
                let len: u64 = slices.iter().map(|d| d.len() as u64).sum();
                job.writer.write_vectored_at(at, &slices)?;
                job.writer.start_writeback(at, len);
                for (data, origin) in run.drain(..) {
                    freed += data.len() as u64;
                    match origin {
                        Origin::Fetched => fetched += data.len() as u64,
                        _ => reused += data.len() as u64,
                    }
                    let _ = pool.send(data);
                }
            }
        }
        landed.fetched.fetch_add(fetched, Ordering::Relaxed);
        landed.reused.fetch_add(reused, Ordering::Relaxed);
        Ok(freed)
    };
    for msg in incoming {
        let chunk = match msg {
            ToWriter::Present { chunk } => {
                done[chunk] = true;
                let (_, len) = index.chunk_range(chunk);
                landed.reused.fetch_add(len, Ordering::Relaxed);
                chunk
            }
            ToWriter::Write {
                chunk,
                data,
                origin,
            } => {
                pending_bytes += data.len() as u64;
                pending.insert(chunk, (data, origin));
                chunk
            }
        };
        let b = chunk / per_batch;
        open_in_batch[b] = open_in_batch[b].saturating_sub(1);
        if open_in_batch[b] == 0 {
            let range = b * per_batch..((b + 1) * per_batch).min(n);
            pending_bytes -= flush(&mut pending, &mut done, range)?;
        }
        if pending_bytes > MAX_PENDING_BYTES {
            pending_bytes -= flush(&mut pending, &mut done, 0..n)?;
        }
        let before = watermark;
        while watermark < n && done[watermark] {
            watermark += 1;
        }
        if watermark != before {
            if let Some(tx) = &done_to {
                let (off, len) = index.chunk_range(watermark - 1);
                let _ = tx.send(off + len);
            }
        }
    }
    flush(&mut pending, &mut done, 0..n)?;
    // The reader stopped early (error or cancel): what was written stays unactivated.
    if done.iter().any(|d| !d) {
        return Ok(());
    }
    job.writer.sync()?;
    if let Some(tx) = &done_to {
        let _ = tx.send(job.image.size);
    }
    Ok(())
}

/// Reads the slot around the page cache (`O_DIRECT`), into an aligned buffer.
pub(super) struct DirectReader {
    file: std::fs::File,
    buf: Vec<u8>,
    /// Where the aligned part of `buf` starts.
    at: usize,
}

impl DirectReader {
    /// `None` when the device or file system does not take `O_DIRECT` (tmpfs): the
    /// read-back then runs after the copy, through the page cache after dropping it.
    pub(super) fn open(writer: &SlotWriter) -> Option<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(&writer.slot().device)
            .ok()?;
        let buf = vec![0u8; BATCH_BYTES as usize + DIRECT_ALIGN];
        let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let mut me = Self { file, buf, at };
        // Some file systems accept the flag and refuse the read.
        me.read(0, DIRECT_ALIGN).ok()?;
        Some(me)
    }

    /// Reads `want` bytes at the aligned `offset` (the request is rounded up to the
    /// alignment; a short read at the end of a device is fine if `want` bytes came).
    fn read(&mut self, offset: u64, want: usize) -> std::io::Result<&[u8]> {
        let asked = want.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let buf = &mut self.buf[self.at..self.at + asked];
        let mut got = 0;
        while got < want {
            let n = self.file.read_at(&mut buf[got..], offset + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got < want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the device ended {got} bytes after offset {offset}"),
            ));
        }
        Ok(&self.buf[self.at..self.at + want])
    }

    /// Follows the writer: reads every byte of `image` up to the offset it reports as
    /// complete, in image order, and hashes what the device returns.
    pub(super) fn follow(
        mut self,
        writer: &SlotWriter,
        image: &ImageEntry,
        mode: ReadBack,
        done: Receiver<u64>,
    ) -> Result<ImageHasher, InstallError> {
        let mut hasher = ImageHasher::for_mode(mode);
        let size = image.size;
        let mut pos = 0u64;
        let slot = &writer.slot().name;
        for complete in done {
            // Whole batches while the copy runs; the tail once everything is written.
            let upto = if complete >= size {
                size
            } else {
                complete.saturating_sub(READ_BACK_LAG) / BATCH_BYTES * BATCH_BYTES
            };
            while pos < upto {
                let len = (upto - pos).min(BATCH_BYTES) as usize;
                let data = self.read(pos, len).map_err(|e| {
                    InstallError::Failed(format!(
                        "read-back of {} from slot {slot} at byte {pos}: {e}",
                        image.file
                    ))
                })?;
                hasher.update(data);
                pos += len as u64;
            }
        }
        if pos < size {
            // The copy stopped early; its own error is what the caller reports.
            return Err(InstallError::Failed(format!(
                "read-back of {} stopped at byte {pos}",
                image.file
            )));
        }
        Ok(hasher)
    }
}

/// The read-back's verdict once every byte of `image` is written: the hash of the
/// overlapped read-back when there was one (`hashed`), else a read-back now, through a
/// dropped page cache, unless `[install] read-back` is off.
pub(super) fn finish_read_back(
    writer: &SlotWriter,
    image: &ImageEntry,
    mode: ReadBack,
    cancel: &AtomicBool,
    hashed: Option<ImageHasher>,
) -> Result<(), InstallError> {
    match hashed {
        Some(h) => check_read_back(writer, image, mode, h),
        None if mode == ReadBack::Off => {
            log::info!("{}: read-back is off ([install] read-back)", image.file);
            Ok(())
        }
        None => read_back_buffered(writer, image, mode, cancel),
    }
}

/// Compares a read-back of `image` from the slot `writer` wrote with the signed manifest.
fn check_read_back(
    writer: &SlotWriter,
    image: &ImageEntry,
    mode: ReadBack,
    hasher: ImageHasher,
) -> Result<(), InstallError> {
    let digest = hasher.finish();
    let slot = &writer.slot().name;
    digest.check_mode(image, mode).map_err(|m| {
        InstallError::Failed(format!("read-back of {} from slot {slot}: {m}", image.file))
    })?;
    log::info!(
        "{} read back from slot {slot}: {}",
        image.file,
        digest.describe(mode)
    );
    Ok(())
}

/// The read-back where `O_DIRECT` is not available: reads `image` back from the slot
/// through the page cache, after dropping the slot's pages from it, and checks it
/// against the manifest.
fn read_back_buffered(
    writer: &SlotWriter,
    image: &ImageEntry,
    mode: ReadBack,
    cancel: &AtomicBool,
) -> Result<(), InstallError> {
    writer.drop_cache();
    let mut hasher = ImageHasher::for_mode(mode);
    let mut buf = vec![0u8; BATCH_BYTES as usize];
    let mut off = 0u64;
    while off < image.size {
        check_cancel(cancel)?;
        let len = (image.size - off).min(BATCH_BYTES) as usize;
        writer.read_at(off, &mut buf[..len])?;
        hasher.update(&buf[..len]);
        off += len as u64;
    }
    check_read_back(writer, image, mode, hasher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::digest::{sha256, ImageDigest};
    use crate::config::SlotConfig;
    use crate::source::memory::MemorySource;

    const CHUNK: u32 = 64 << 10;

    struct Setup {
        _dir: tempfile::TempDir,
        slot: SlotConfig,
        image: Vec<u8>,
        entry: ImageEntry,
        index: ChunkIndex,
        member: Member,
    }

    fn setup(size: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("b.img");
        std::fs::write(&device, vec![0u8; size + (1 << 20)]).unwrap();
        let mut x = 0x1234_5678_9abc_def1u64;
        let image: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let index = ChunkIndex {
            chunk_size: CHUNK,
            image_size: size as u64,
            hashes: image.chunks(CHUNK as usize).map(sha256).collect(),
        };
        let d = ImageDigest::of(&image);
        let entry = ImageEntry {
            slot_class: Some("rootfs".into()),
            mcu: None,
            file: "rootfs.img".into(),
            size: size as u64,
            sha256: d.sha256,
            crc32: d.crc32,
            chunk_size: CHUNK,
            chunks_sha256: String::new(),
            block_map_size: None,
            block_map_sha256: None,
            payload_size: None,
            payload_sha256: None,
        };
        Setup {
            _dir: dir,
            slot: SlotConfig {
                name: "rootfs.1".into(),
                class: "rootfs".into(),
                index: 1,
                device,
                bootname: Some("B".into()),
                parent: None,
            },
            image,
            entry,
            index,
            member: Member {
                name: "rootfs.img".into(),
                offset: 0,
                size: size as u64,
            },
        }
    }

    fn copy(
        t: &Setup,
        bundle: Vec<u8>,
        entry: &ImageEntry,
        mode: ReadBack,
    ) -> Result<(), InstallError> {
        copy_reusing(t, bundle, entry, mode, None).map(|_| ())
    }

    /// Copies with `active` as the running slot; returns (fetched, reused) bytes.
    fn copy_reusing(
        t: &Setup,
        bundle: Vec<u8>,
        entry: &ImageEntry,
        mode: ReadBack,
        active: Option<ActiveSlot>,
    ) -> Result<(u64, u64), InstallError> {
        let writer = SlotWriter::open(&t.slot, None).unwrap();
        let cancel = AtomicBool::new(false);
        let reuse = Reuse {
            target: false,
            active,
        };
        let job = Job {
            member: &t.member,
            image: entry,
            index: &t.index,
            writer: &writer,
            reuse: &reuse,
            read_back: mode,
            cancel: &cancel,
        };
        let mut last = crate::model::Progress::default();
        let mut emit = |p: crate::model::Progress| last = p;
        let mut reporter = Reporter::new(&mut emit);
        copy_image(&mut MemorySource::new(bundle), &job, &mut reporter)?;
        reporter.finish("done");
        drop(reporter);
        Ok((last.bytes_downloaded, last.bytes_reused))
    }

    #[test]
    fn reuse_candidates_that_are_not_there_give_their_buffers_back() {
        // More misses than the pool has buffers: each must go back, or the reader starves.
        let t = setup(12 << 20);
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("a.img");
        let mut running = vec![0xA5u8; t.image.len()];
        // Two chunks of the new image sit elsewhere in the running slot.
        let c = CHUNK as usize;
        running[7 * c..8 * c].copy_from_slice(&t.image[..c]);
        running[..c].copy_from_slice(&t.image[100 * c..101 * c]);
        std::fs::write(&old, &running).unwrap();
        let record = ChunkIndex {
            chunk_size: CHUNK,
            image_size: running.len() as u64,
            hashes: running.chunks(c).map(sha256).collect(),
        };
        let locations = crate::install::slot_index::SlotIndex {
            image_sha256: [0; 32],
            index: record,
        }
        .locations();
        let active = ActiveSlot {
            reader: SlotReader::open(&old).unwrap(),
            locations: Some(locations),
        };
        let (fetched, reused) =
            copy_reusing(&t, t.image.clone(), &t.entry, ReadBack::Crc, Some(active)).unwrap();
        assert_eq!(reused, 2 * CHUNK as u64, "the two moved chunks are found");
        assert_eq!(fetched, t.image.len() as u64 - reused);
        let got = std::fs::read(&t.slot.device).unwrap();
        assert_eq!(&got[..t.image.len()], &t.image[..]);
    }

    #[test]
    fn an_image_lands_bit_exact_in_every_read_back_mode() {
        // Not a whole number of chunks nor of batches: the tails take the odd paths.
        let t = setup((3 << 20) + 12345);
        for mode in [ReadBack::Crc, ReadBack::Sha256, ReadBack::Off] {
            std::fs::write(&t.slot.device, vec![0u8; t.image.len() + (1 << 20)]).unwrap();
            copy(&t, t.image.clone(), &t.entry, mode).unwrap();
            let got = std::fs::read(&t.slot.device).unwrap();
            assert_eq!(&got[..t.image.len()], &t.image[..], "{mode:?}");
        }
    }

    #[test]
    fn a_chunk_corrupted_at_every_fetch_is_never_written() {
        let t = setup(1 << 20);
        let mut bad = t.image.clone();
        bad[5 * CHUNK as usize + 17] ^= 1;
        let e = copy(&t, bad, &t.entry, ReadBack::Crc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chunk 5 of rootfs.img") && e.contains("after 4 attempts"),
            "{e}"
        );
        let got = std::fs::read(&t.slot.device).unwrap();
        let c5 = 5 * CHUNK as usize..6 * CHUNK as usize;
        assert!(
            got[c5].iter().all(|b| *b == 0),
            "nothing of the bad chunk was written"
        );
    }

    #[test]
    fn a_read_back_that_differs_from_the_manifest_fails_the_copy() {
        // The chunks are right but the whole-image CRC32 the manifest signed is not what
        // the device returns: what a lost or misplaced write looks like to the read-back.
        let t = setup(2 << 20);
        let mut entry = t.entry.clone();
        entry.crc32 ^= 0x8000_0000;
        let e = copy(&t, t.image.clone(), &entry, ReadBack::Crc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("read-back of rootfs.img from slot rootfs.1: CRC32 is"),
            "{e}"
        );
        let mut entry = t.entry.clone();
        entry.sha256 = "00".repeat(32);
        copy(&t, t.image.clone(), &entry, ReadBack::Crc).unwrap();
        let e = copy(&t, t.image.clone(), &entry, ReadBack::Sha256)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SHA-256 is"), "{e}");
        copy(&t, t.image.clone(), &entry, ReadBack::Off).unwrap();
    }

    #[test]
    fn runs_group_consecutive_chunks() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[0, 1, 2, 5, 7, 8]), vec![0..3, 5..6, 7..9]);
    }

    #[test]
    fn workers_leave_a_core_to_the_reader_and_writer() {
        let n = worker_count();
        assert!((1..=3).contains(&n));
    }
}
