//! What each slot holds, chunk by chunk, remembered in the data directory.
//!
//! When an install completes, the image's signed chunk index is recorded as
//! `<data-dir>/slot-index/<slot>`, next to the image's SHA-256. The next network install
//! then knows which chunks the running slot has — and where, at any offset — without
//! reading the slot first: it reads only the chunks it reuses, and verifies each against
//! the new bundle's signed index before writing it. A record only says where to look;
//! it is never trusted for content, so a stale or damaged one costs a download, never a
//! bad write.

use crate::bundle::ChunkIndex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"ROTAIDX1";
const HEADER: usize = 8 + 4 + 8 + 32;
/// A 4 GiB image in 4 KiB chunks: 32 MiB of hashes.
const MAX_RECORD: u64 = HEADER as u64 + (32 << 20);

/// The chunk index of the image a slot holds, with that image's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotIndex {
    pub image_sha256: [u8; 32],
    pub index: ChunkIndex,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("slot-index")
}

fn path(data_dir: &Path, slot: &str) -> PathBuf {
    dir(data_dir).join(slot)
}

impl SlotIndex {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.index.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.index.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.index.image_size.to_le_bytes());
        out.extend_from_slice(&self.image_sha256);
        out.extend_from_slice(&self.index.to_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("not a slot index record".into());
        }
        let word = |r: std::ops::Range<usize>| bytes[r].to_vec();
        let chunk_size = u32::from_le_bytes(word(8..12).try_into().map_err(|_| "header")?);
        let image_size = u64::from_le_bytes(word(12..20).try_into().map_err(|_| "header")?);
        if !chunk_size.is_power_of_two()
            || !(crate::bundle::MIN_CHUNK_SIZE..=crate::bundle::MAX_CHUNK_SIZE)
                .contains(&chunk_size)
        {
            return Err(format!("chunk size {chunk_size} is not allowed"));
        }
        let mut image_sha256 = [0u8; 32];
        image_sha256.copy_from_slice(&bytes[20..HEADER]);
        let index = ChunkIndex::from_bytes(&bytes[HEADER..], image_size, chunk_size)?;
        Ok(Self {
            image_sha256,
            index,
        })
    }

    /// Records what `slot` now holds (atomically, like every state file).
    pub fn save(&self, data_dir: &Path, slot: &str) -> std::io::Result<()> {
        crate::fsutil::create_private_dir(&dir(data_dir))?;
        crate::fsutil::write_atomic(&path(data_dir, slot), &self.to_bytes())
    }

    /// Forgets what `slot` held (it is about to be overwritten): both kinds of record.
    pub fn forget(data_dir: &Path, slot: &str) -> std::io::Result<()> {
        for p in [path(data_dir, slot), keys_path(data_dir, slot)] {
            match std::fs::remove_file(&p) {
                Ok(()) => crate::fsutil::sync_dir(&dir(data_dir))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The record of `slot`, if there is one and it describes the image whose SHA-256 the
    /// state file has for that slot (`expect_sha256`, hex). Anything else — no record, a
    /// damaged one, one of another image — is `None`: the caller falls back to probing.
    pub fn load(data_dir: &Path, slot: &str, expect_sha256: &str) -> Option<Self> {
        let p = path(data_dir, slot);
        let bytes = match crate::fsutil::read_regular(&p, MAX_RECORD) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warn!("ignoring slot index {}: {e}", p.display());
                return None;
            }
        };
        match Self::from_bytes(&bytes) {
            Ok(r) if hex::encode(r.image_sha256).eq_ignore_ascii_case(expect_sha256) => Some(r),
            Ok(_) => {
                log::info!(
                    "slot index {} describes another image than the slot's record; not used",
                    p.display()
                );
                None
            }
            Err(e) => {
                log::warn!("ignoring slot index {}: {e}", p.display());
                None
            }
        }
    }

    /// Where each distinct chunk hash first occurs in the slot: (offset, length).
    pub fn locations(&self) -> HashMap<[u8; 32], (u64, u64)> {
        let mut map = HashMap::with_capacity(self.index.len());
        for (i, h) in self.index.hashes.iter().enumerate() {
            map.entry(*h).or_insert_with(|| self.index.chunk_range(i));
        }
        map
    }
}

const KEYS_MAGIC: &[u8; 8] = b"ROTAKEY1";
/// A full 4 GiB slot: 8 bytes per 4 KiB block.
const MAX_KEYS_RECORD: u64 = 40 + (8 << 20);

fn keys_path(data_dir: &Path, slot: &str) -> PathBuf {
    dir(data_dir).join(format!("{slot}.keys"))
}

/// Records where each block of a block image (bundle format 2) lies in `slot`, by key, so
/// the next network install finds the running slot's blocks without hashing the slot:
/// `<data-dir>/slot-index/<slot>.keys`, with the image's SHA-256.
pub fn save_keys(
    data_dir: &Path,
    slot: &str,
    image_sha256: &[u8; 32],
    map: &crate::bundle::blockmap::BlockMap,
) -> std::io::Result<()> {
    let mut entries: Vec<(u32, u32)> = Vec::with_capacity(map.keys.len());
    for f in &map.frames {
        for (i, k) in map.frame_keys(f).iter().enumerate() {
            if let Ok(b) = u32::try_from(f.first + i as u64) {
                entries.push((*k, b));
            }
        }
    }
    entries.sort_unstable();
    entries.dedup_by_key(|e| e.0);
    let mut out = Vec::with_capacity(40 + entries.len() * 8);
    out.extend_from_slice(KEYS_MAGIC);
    out.extend_from_slice(image_sha256);
    for (k, b) in entries {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
    crate::fsutil::create_private_dir(&dir(data_dir))?;
    crate::fsutil::write_atomic(&keys_path(data_dir, slot), &out)
}

/// The key table recorded for `slot`, if it describes the image whose SHA-256 (hex) the
/// state file has for it; sorted by key. Never trusted for content: every block found
/// through it is checked against the new bundle's frame hashes.
pub fn load_keys(data_dir: &Path, slot: &str, expect_sha256: &str) -> Option<Vec<(u32, u32)>> {
    let p = keys_path(data_dir, slot);
    let bytes = crate::fsutil::read_regular(&p, MAX_KEYS_RECORD).ok()?;
    if bytes.len() < 40 || &bytes[..8] != KEYS_MAGIC || (bytes.len() - 40) % 8 != 0 {
        log::warn!("ignoring damaged key record {}", p.display());
        return None;
    }
    if !hex::encode(&bytes[8..40]).eq_ignore_ascii_case(expect_sha256) {
        return None;
    }
    let entries: Vec<(u32, u32)> = bytes[40..]
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect();
    entries
        .windows(2)
        .all(|w| w[0].0 < w[1].0)
        .then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SlotIndex {
        SlotIndex {
            image_sha256: [7; 32],
            index: ChunkIndex {
                chunk_size: 4096,
                image_size: 10_000,
                hashes: vec![[1; 32], [2; 32], [1; 32]],
            },
        }
    }

    #[test]
    fn a_record_round_trips_and_is_found_only_for_its_image() {
        let d = tempfile::tempdir().unwrap();
        let r = sample();
        r.save(d.path(), "rootfs.0").unwrap();
        assert_eq!(
            SlotIndex::load(d.path(), "rootfs.0", &hex::encode([7u8; 32])),
            Some(r.clone())
        );
        assert_eq!(
            SlotIndex::load(d.path(), "rootfs.0", &"00".repeat(32)),
            None
        );
        assert_eq!(
            SlotIndex::load(d.path(), "rootfs.1", &hex::encode([7u8; 32])),
            None
        );
        SlotIndex::forget(d.path(), "rootfs.0").unwrap();
        SlotIndex::forget(d.path(), "rootfs.0").unwrap();
        assert_eq!(
            SlotIndex::load(d.path(), "rootfs.0", &hex::encode([7u8; 32])),
            None
        );
    }

    #[test]
    fn damaged_records_are_refused() {
        let good = sample().to_bytes();
        for bad in [
            good[..good.len() - 1].to_vec(),
            good[..10].to_vec(),
            [b"ROTAIDX2".as_slice(), &good[8..]].concat(),
            {
                let mut b = good.clone();
                b[8..12].copy_from_slice(&3000u32.to_le_bytes());
                b
            },
        ] {
            assert!(SlotIndex::from_bytes(&bad).is_err());
        }
    }

    #[test]
    fn locations_name_the_first_place_of_each_chunk() {
        let m = sample().locations();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&[1; 32]], (0, 4096));
        assert_eq!(m[&[2; 32]], (4096, 4096));
    }
}
