//! Moving one image into its slot, chunk by chunk, never writing an unverified byte.
//!
//! The image is walked in windows of chunks. For each chunk the device first looks at
//! what it already has — the same chunk in the target slot (an interrupted earlier
//! attempt) or at the same offset in the running slot (unchanged data) — and keeps it
//! when its SHA-256 matches the signed chunk index. Runs of the remaining chunks are
//! fetched with one ranged read each, verified, and written. A chunk that fails
//! verification is fetched again on its own, never written.

use super::progress::Reporter;
use super::{check_cancel, InstallError};
use crate::bundle::{ChunkIndex, ImageEntry, Member};
use crate::slot::{SlotReader, SlotWriter};
use crate::source::{ByteSource, SourceError};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// Bytes of chunks classified (and fetched with one request at most) at a time. Bounds
/// memory and the size of one HTTP range.
const WINDOW_BYTES: u64 = 32 << 20;
/// A chunk that arrives corrupted this many times in a row fails the install.
const CHUNK_RETRIES: u32 = 3;
/// Read-back block size.
const READ_BACK_BLOCK: usize = 1 << 20;

/// Where already-present chunks may come from.
#[derive(Debug, Clone, Default)]
pub struct Reuse {
    /// Check the target slot's current content first.
    pub target: bool,
    /// The running slot of the same class.
    pub active: Option<PathBuf>,
}

#[allow(clippy::too_many_arguments)]
pub fn copy_image(
    source: &mut dyn ByteSource,
    member: &Member,
    image: &ImageEntry,
    index: &ChunkIndex,
    writer: &SlotWriter,
    reuse: &Reuse,
    cancel: &AtomicBool,
    reporter: &mut Reporter<'_>,
) -> Result<(), InstallError> {
    let chunk_size = index.chunk_size as usize;
    let mut buf = vec![0u8; chunk_size];
    let active = match &reuse.active {
        Some(p) => match SlotReader::open(p) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!(
                    "cannot read running slot {} for reuse ({e}); fetching everything",
                    p.display()
                );
                None
            }
        },
        None => None,
    };
    let n = index.len();
    let per_window = ((WINDOW_BYTES / index.chunk_size as u64) as usize).max(1);
    let mut needed = Vec::with_capacity(per_window.min(n));
    let mut start = 0;
    while start < n {
        let end = n.min(start + per_window);
        needed.clear();
        for c in start..end {
            check_cancel(cancel)?;
            let (off, len) = index.chunk_range(c);
            let data = &mut buf[..len as usize];
            let mut have = false;
            if reuse.target {
                writer.read_at(off, data)?;
                have = index.verify(c, data);
            }
            if !have {
                if let Some(a) = &active {
                    let read = a
                        .read_at(off, data)
                        .map_err(|e| InstallError::Failed(format!("reading running slot: {e}")))?;
                    if read && index.verify(c, data) {
                        writer.write_at(off, data)?;
                        have = true;
                    }
                }
            }
            if have {
                reporter.reused(len);
            }
            needed.push(!have);
        }
        let mut c = start;
        while c < end {
            if !needed[c - start] {
                c += 1;
                continue;
            }
            let mut run_end = c;
            while run_end < end && needed[run_end - start] {
                run_end += 1;
            }
            fetch_run(
                source, member, image, index, c, run_end, writer, &mut buf, cancel, reporter,
            )?;
            c = run_end;
        }
        start = end;
    }
    Ok(())
}

fn source_failure(e: SourceError, cancel: &AtomicBool, what: String) -> InstallError {
    if matches!(e, SourceError::Cancelled) || check_cancel(cancel).is_err() {
        InstallError::Cancelled
    } else {
        InstallError::Failed(format!("{what}: {e}"))
    }
}

/// Fetches chunks `first..last` with one ranged read, verifying and writing each.
#[allow(clippy::too_many_arguments)]
fn fetch_run(
    source: &mut dyn ByteSource,
    member: &Member,
    image: &ImageEntry,
    index: &ChunkIndex,
    first: usize,
    last: usize,
    writer: &SlotWriter,
    buf: &mut [u8],
    cancel: &AtomicBool,
    reporter: &mut Reporter<'_>,
) -> Result<(), InstallError> {
    let (run_off, _) = index.chunk_range(first);
    let (last_off, last_len) = index.chunk_range(last - 1);
    let run_len = last_off + last_len - run_off;
    let mut corrupted = Vec::new();
    {
        let what = || format!("fetching {} (chunks {first}..{last})", image.file);
        let mut reader = source
            .read_range(member.offset + run_off, run_len)
            .map_err(|e| source_failure(e, cancel, what()))?;
        for c in first..last {
            check_cancel(cancel)?;
            let (off, len) = index.chunk_range(c);
            let data = &mut buf[..len as usize];
            reader.read_exact(data).map_err(|e| {
                if check_cancel(cancel).is_err() {
                    InstallError::Cancelled
                } else {
                    InstallError::Failed(format!("reading chunk {c} of {}: {e}", image.file))
                }
            })?;
            if index.verify(c, data) {
                writer.write_at(off, data)?;
                reporter.fetched(len);
            } else {
                log::warn!(
                    "chunk {c} of {} failed its hash check; fetching it again",
                    image.file
                );
                corrupted.push(c);
            }
        }
    }
    for c in corrupted {
        refetch_chunk(
            source, member, image, index, c, writer, buf, cancel, reporter,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn refetch_chunk(
    source: &mut dyn ByteSource,
    member: &Member,
    image: &ImageEntry,
    index: &ChunkIndex,
    c: usize,
    writer: &SlotWriter,
    buf: &mut [u8],
    cancel: &AtomicBool,
    reporter: &mut Reporter<'_>,
) -> Result<(), InstallError> {
    let (off, len) = index.chunk_range(c);
    let data = &mut buf[..len as usize];
    for _ in 0..CHUNK_RETRIES {
        check_cancel(cancel)?;
        source
            .read_exact_at(member.offset + off, data)
            .map_err(|e| {
                source_failure(e, cancel, format!("fetching chunk {c} of {}", image.file))
            })?;
        if index.verify(c, data) {
            writer.write_at(off, data)?;
            reporter.fetched(len);
            return Ok(());
        }
    }
    Err(InstallError::Failed(format!(
        "chunk {c} of {} (bytes {off}..{}) does not match its signed hash after {} attempts; nothing of it was written",
        image.file,
        off + len,
        CHUNK_RETRIES + 1
    )))
}

/// Syncs the slot and reads the image back from the device: its SHA-256 and CRC32 must
/// equal the manifest's.
pub fn read_back(
    writer: &SlotWriter,
    image: &ImageEntry,
    cancel: &AtomicBool,
) -> Result<(), InstallError> {
    writer.sync_and_drop_cache()?;
    let mut hasher = crate::bundle::digest::ImageHasher::new();
    let mut buf = vec![0u8; READ_BACK_BLOCK];
    let mut off = 0u64;
    while off < image.size {
        check_cancel(cancel)?;
        let len = (image.size - off).min(READ_BACK_BLOCK as u64) as usize;
        writer.read_at(off, &mut buf[..len])?;
        hasher.update(&buf[..len]);
        off += len as u64;
    }
    let digest = hasher.finish();
    let slot = &writer.slot().name;
    digest.check(image).map_err(|m| {
        InstallError::Failed(format!("read-back of {} from slot {slot}: {m}", image.file))
    })?;
    log::info!(
        "{} verified in slot {slot}: sha256 {}, crc32 {:08x}",
        image.file,
        digest.sha256,
        digest.crc32
    );
    Ok(())
}
