//! Opening a bundle from any [`ByteSource`]: the manifest and its signature first, then
//! the tar headers only (one small read each — over HTTP one Range request each), so
//! nothing unsigned is trusted and no payload is read before it is needed.

use super::{
    BundleError, ChunkIndex, ImageEntry, KeyId, Keyring, Manifest, MANIFEST_NAME,
    MAX_MANIFEST_SIZE, SIGNATURE_NAME,
};
use crate::source::ByteSource;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const BLOCK: u64 = 512;
/// Largest chunk index accepted: 32 bytes per chunk of a MAX_IMAGE_SIZE image in 4 KiB chunks.
const MAX_CHUNK_INDEX: u64 = (super::manifest::MAX_IMAGE_SIZE / super::MIN_CHUNK_SIZE as u64) * 32;

/// A tar member's data location inside the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Offset of the member's first data byte in the bundle.
    pub offset: u64,
    pub size: u64,
}

/// A bundle whose manifest has been read (and, from [`open`], its signature verified).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Lower-case hex SHA-256 of the manifest bytes: the bundle's identity.
    pub manifest_hash: String,
    /// Id of the keyring key that verified the signature ("" when not checked).
    pub signer: KeyId,
    pub members: BTreeMap<String, Member>,
    /// Total bundle size in bytes.
    pub size: u64,
}

fn pad(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// Reads and checks the tar header at `offset`; `None` at the end-of-archive marker.
fn read_header(
    source: &mut dyn ByteSource,
    offset: u64,
    total: u64,
    expect: &str,
) -> Result<Option<Member>, BundleError> {
    if offset + BLOCK > total {
        return Err(BundleError::Truncated(format!(
            "the header of {expect} would be at bytes {offset}..{}, but the bundle has {total} bytes",
            offset + BLOCK
        )));
    }
    let mut block = [0u8; BLOCK as usize];
    source.read_exact_at(offset, &mut block)?;
    if block.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let h = tar::Header::from_byte_slice(&block);
    let stored = h
        .cksum()
        .map_err(|_| BundleError::Format(format!("tar header at byte {offset} is damaged")))?;
    let computed: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    if stored != computed {
        return Err(BundleError::Format(format!(
            "tar header at byte {offset} has checksum {stored}, its bytes sum to {computed}: damaged"
        )));
    }
    let name_bytes = h.path_bytes();
    let name = String::from_utf8_lossy(&name_bytes).into_owned();
    if h.as_ustar()
        .is_some_and(|u| u.prefix.iter().any(|b| *b != 0))
    {
        return Err(BundleError::Format(format!(
            "member {name:?} uses a path prefix; bundle members are plain names"
        )));
    }
    let kind = h.entry_type();
    if !kind.is_file() {
        return Err(BundleError::Format(format!(
            "member {name:?} is a {kind:?} entry; bundles hold regular files only (no links, directories or extensions)"
        )));
    }
    let size = h
        .entry_size()
        .map_err(|_| BundleError::Format(format!("member {name:?} has an unreadable size")))?;
    Ok(Some(Member {
        name,
        offset: offset + BLOCK,
        size,
    }))
}

/// Reads the next member and checks it is `expect` with (optionally) `size` bytes.
fn expect_member(
    source: &mut dyn ByteSource,
    offset: u64,
    total: u64,
    index: usize,
    expect: &str,
    size: Option<u64>,
) -> Result<Member, BundleError> {
    let m = read_header(source, offset, total, expect)?.ok_or_else(|| {
        BundleError::Format(format!(
            "the archive ends where member {index} ({expect}) was expected"
        ))
    })?;
    if m.name != expect {
        return Err(BundleError::Format(format!(
            "member {index} is {:?} but {expect} was expected",
            m.name
        )));
    }
    if let Some(want) = size {
        if m.size != want {
            return Err(BundleError::Format(format!(
                "member {expect} has {} bytes, the manifest says {want}",
                m.size
            )));
        }
    }
    let end = m.offset + m.size;
    if end > total {
        return Err(BundleError::Truncated(format!(
            "member {expect} needs bytes up to {end}, the bundle has {total} ({} missing)",
            end - total
        )));
    }
    Ok(m)
}

fn read_layout(
    source: &mut dyn ByteSource,
    keyring: Option<&Keyring>,
) -> Result<Bundle, BundleError> {
    let total = source.len()?;
    let mm = read_header(source, 0, total, MANIFEST_NAME)?
        .ok_or_else(|| BundleError::Format("the archive is empty".into()))?;
    if mm.name != MANIFEST_NAME {
        return Err(BundleError::Format(format!(
            "first member is {:?}, expected {MANIFEST_NAME}",
            mm.name
        )));
    }
    if mm.size > MAX_MANIFEST_SIZE {
        return Err(BundleError::Manifest(format!(
            "manifest is {} bytes, the limit is {MAX_MANIFEST_SIZE}",
            mm.size
        )));
    }
    if mm.offset + mm.size > total {
        return Err(BundleError::Truncated(format!(
            "the manifest needs bytes up to {}, the bundle has {total}",
            mm.offset + mm.size
        )));
    }
    let mut manifest_bytes = vec![0u8; mm.size as usize];
    source.read_exact_at(mm.offset, &mut manifest_bytes)?;
    let sm = expect_member(
        source,
        mm.offset + pad(mm.size),
        total,
        2,
        SIGNATURE_NAME,
        None,
    )?;
    if sm.size != 64 {
        return Err(BundleError::Signature(format!(
            "{SIGNATURE_NAME} has {} bytes, an ed25519 signature is 64",
            sm.size
        )));
    }
    let mut sig = [0u8; 64];
    source.read_exact_at(sm.offset, &mut sig)?;
    let signer = match keyring {
        Some(k) => k.verify(&manifest_bytes, &sig)?,
        None => String::new(),
    };
    let manifest = Manifest::parse(&manifest_bytes)?;
    let manifest_hash = hex::encode(Sha256::digest(&manifest_bytes));

    let mut members = BTreeMap::new();
    let mut offset = sm.offset + pad(sm.size);
    let mut index = 3;
    for img in &manifest.images {
        let count = ChunkIndex::count_for(img.size, img.chunk_size);
        let idx_size = count * 32;
        if idx_size > MAX_CHUNK_INDEX {
            return Err(BundleError::Manifest(format!(
                "image {} would need a {idx_size}-byte chunk index",
                img.file
            )));
        }
        for (name, size) in [(img.chunks_file(), idx_size), (img.file.clone(), img.size)] {
            let m = expect_member(source, offset, total, index, &name, Some(size))?;
            offset = m.offset + pad(m.size);
            index += 1;
            members.insert(name, m);
        }
    }
    match read_header(source, offset, total, "the end-of-archive marker")? {
        None => {}
        Some(extra) => {
            return Err(BundleError::Format(format!(
                "unexpected member {:?} after the last image: bundles carry only what the manifest lists",
                extra.name
            )))
        }
    }
    Ok(Bundle {
        manifest,
        manifest_hash,
        signer,
        members,
        size: total,
    })
}

/// Opens a bundle and verifies its manifest signature against `keyring`.
pub fn open(source: &mut dyn ByteSource, keyring: &Keyring) -> Result<Bundle, BundleError> {
    read_layout(source, Some(keyring))
}

/// Reads a bundle's manifest and layout without checking the signature (`bundle info`).
pub fn open_unverified(source: &mut dyn ByteSource) -> Result<Bundle, BundleError> {
    read_layout(source, None)
}

impl Bundle {
    /// True when the manifest signature was checked against a keyring.
    pub fn is_verified(&self) -> bool {
        !self.signer.is_empty()
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    pub fn image_member(&self, img: &ImageEntry) -> Result<&Member, BundleError> {
        self.member(&img.file)
            .ok_or_else(|| BundleError::Format(format!("bundle has no member {}", img.file)))
    }

    /// Fetches and checks an image's chunk index against the signed manifest.
    pub fn chunk_index(
        &self,
        source: &mut dyn ByteSource,
        img: &ImageEntry,
    ) -> Result<ChunkIndex, BundleError> {
        let name = img.chunks_file();
        let m = self
            .member(&name)
            .ok_or_else(|| BundleError::Format(format!("bundle has no member {name}")))?;
        let mut bytes = vec![0u8; m.size as usize];
        source.read_exact_at(m.offset, &mut bytes)?;
        let got = hex::encode(Sha256::digest(&bytes));
        if got != img.chunks_sha256 {
            return Err(BundleError::Payload {
                file: img.file.clone(),
                message: format!(
                    "chunk index SHA-256 is {got}, the signed manifest says {}",
                    img.chunks_sha256
                ),
            });
        }
        ChunkIndex::from_bytes(&bytes, img.size, img.chunk_size).map_err(|message| {
            BundleError::Payload {
                file: img.file.clone(),
                message,
            }
        })
    }
}

/// Checks every chunk, the SHA-256 and the CRC32 of every image, streaming.
/// `progress(done, total)` is called after every chunk.
pub fn verify_payload(
    source: &mut dyn ByteSource,
    bundle: &Bundle,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), BundleError> {
    let total: u64 = bundle.manifest.images.iter().map(|i| i.size).sum();
    let mut done = 0;
    for img in &bundle.manifest.images {
        let index = bundle.chunk_index(source, img)?;
        let m = bundle.image_member(img)?.clone();
        let mut reader = source.read_range(m.offset, m.size)?;
        let mut buf = vec![0u8; img.chunk_size as usize];
        let mut sha = Sha256::new();
        let mut crc = crc32fast::Hasher::new();
        for c in 0..index.len() {
            let (_, len) = index.chunk_range(c);
            let data = &mut buf[..len as usize];
            std::io::Read::read_exact(&mut reader, data).map_err(|e| BundleError::Payload {
                file: img.file.clone(),
                message: format!("reading chunk {c}: {e}"),
            })?;
            if !index.verify(c, data) {
                return Err(BundleError::Payload {
                    file: img.file.clone(),
                    message: format!(
                        "chunk {c} (bytes {}..{}) does not match its signed hash",
                        c as u64 * img.chunk_size as u64,
                        c as u64 * img.chunk_size as u64 + len
                    ),
                });
            }
            sha.update(&*data);
            crc.update(data);
            done += len;
            progress(done, total);
        }
        let sha = hex::encode(sha.finalize());
        if sha != img.sha256 {
            return Err(BundleError::Payload {
                file: img.file.clone(),
                message: format!("SHA-256 is {sha}, expected {}", img.sha256),
            });
        }
        let crc = crc.finalize();
        if crc != img.crc32 {
            return Err(BundleError::Payload {
                file: img.file.clone(),
                message: format!("CRC32 is {crc:08x}, expected {:08x}", img.crc32),
            });
        }
    }
    Ok(())
}
