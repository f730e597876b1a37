//! Opening a bundle from any [`ByteSource`]: the manifest and its signature first, then
//! the tar headers only (one small read each — over HTTP one Range request each), so
//! nothing unsigned is trusted and no payload is read before it is needed.

use super::blockmap::BlockMap;
use super::{
    BundleError, ChunkIndex, ImageEntry, KeyId, Keyring, Manifest, MANIFEST_NAME,
    MAX_MANIFEST_SIZE, SIGNATURE_NAME, SIGNATURE_SIZE,
};
use crate::source::ByteSource;
use std::collections::BTreeMap;

const BLOCK: u64 = 512;
/// Largest chunk index accepted: 32 bytes per chunk of a MAX_IMAGE_SIZE image in 4 KiB chunks.
/// (The index must also be exactly 32 bytes per chunk of its image, and an install checks
/// the image fits its slot before the index is read.)
const MAX_CHUNK_INDEX: u64 = (super::manifest::MAX_IMAGE_SIZE / super::MIN_CHUNK_SIZE as u64) * 32;
/// Most bytes accepted after the end-of-archive block, all of them zero: tar tools pad an
/// archive to their record size (GNU tar: 10 KiB by default). Anything else there would be
/// data no signature covers.
pub const MAX_TRAILER: u64 = 1 << 20;
/// Piece size when checking the trailer.
const TRAILER_READ: u64 = 64 * 1024;

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

/// `size` rounded up to whole tar blocks; `None` when that does not fit in a u64.
fn pad(size: u64) -> Option<u64> {
    size.checked_next_multiple_of(BLOCK)
}

/// Why the first block of a file is not a tar header, naming compressed formats.
fn not_tar(block: &[u8]) -> BundleError {
    let compressed = match block {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Some("xz"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        [b'B', b'Z', b'h', ..] => Some("bzip2"),
        _ => None,
    };
    BundleError::Format(match compressed {
        Some(c) => {
            format!("the file is {c}-compressed; a bundle is a plain, uncompressed tar archive")
        }
        None => "the file is not a tar archive (its first 512 bytes are not a tar header)".into(),
    })
}

/// A tar entry type in words, for error messages.
fn kind_words(kind: tar::EntryType, link: Option<&str>) -> String {
    use tar::EntryType as E;
    let to = link.map(|l| format!(" to {l:?}")).unwrap_or_default();
    match kind {
        E::Symlink => format!("a symbolic link{to}"),
        E::Link => format!("a hard link{to}"),
        E::Directory => "a directory".into(),
        E::Char => "a character device".into(),
        E::Block => "a block device".into(),
        E::Fifo => "a FIFO".into(),
        E::Continuous => "a contiguous file".into(),
        E::XHeader => "a PAX extended header".into(),
        E::XGlobalHeader => "a PAX global header".into(),
        E::GNULongName => "a GNU long-name extension".into(),
        E::GNULongLink => "a GNU long-link extension".into(),
        E::GNUSparse => "a GNU sparse file".into(),
        other => format!("an entry of unknown type {:?}", char::from(other.as_byte())),
    }
}

/// Why a member name is not a plain file name, if it is not.
fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.starts_with('/') {
        Some("an absolute path")
    } else if name.split('/').any(|c| c == "..") {
        Some("a path traversal ('..')")
    } else if name.contains('/') {
        Some("a path with directories")
    } else {
        None
    }
}

/// Reads and checks the tar header at `offset`; `None` at the end-of-archive marker.
/// `what` names the member expected there, for messages.
fn read_header(
    source: &mut dyn ByteSource,
    offset: u64,
    total: u64,
    what: &str,
) -> Result<Option<Member>, BundleError> {
    match offset.checked_add(BLOCK) {
        Some(end) if end <= total => {}
        _ => {
            return Err(BundleError::Truncated(format!(
            "the header of {what} would be at bytes {offset}..{}, but the bundle has {total} bytes",
            offset.saturating_add(BLOCK)
        )))
        }
    }
    let mut block = [0u8; BLOCK as usize];
    source.read_exact_at(offset, &mut block)?;
    if block.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let h = tar::Header::from_byte_slice(&block);
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
    let stored = h.cksum().ok();
    if stored != Some(computed) {
        if offset == 0 && &block[257..262] != b"ustar" {
            return Err(not_tar(&block));
        }
        let stored = stored.map_or_else(|| "no number".to_owned(), |s| s.to_string());
        return Err(BundleError::Format(format!(
            "the tar header at byte {offset} (of {what}) is damaged: its checksum field says {stored}, its bytes sum to {computed}"
        )));
    }
    let name_bytes = h.path_bytes();
    let name = std::str::from_utf8(&name_bytes)
        .map_err(|_| {
            BundleError::Format(format!(
                "the member at byte {offset} (where {what} was expected) has a name that is not UTF-8: {:?}",
                String::from_utf8_lossy(&name_bytes)
            ))
        })?
        .to_owned();
    if h.as_ustar()
        .is_some_and(|u| u.prefix.iter().any(|b| *b != 0))
    {
        return Err(BundleError::Format(format!(
            "member {name:?} uses a path prefix; bundle members are plain names"
        )));
    }
    let kind = h.entry_type();
    if !kind.is_file() {
        let link = h
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        return Err(BundleError::Format(format!(
            "member {name:?} is {}; bundles hold regular files only",
            kind_words(kind, link.as_deref())
        )));
    }
    if let Some(why) = unsafe_name(&name) {
        return Err(BundleError::Format(format!(
            "member {name:?} is {why}; bundle members are plain file names"
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

/// Checks that member `m` (the `index`th) lies inside the bundle.
fn check_inside(m: &Member, total: u64) -> Result<(), BundleError> {
    match m.offset.checked_add(m.size) {
        Some(end) if end <= total => Ok(()),
        Some(end) => Err(BundleError::Truncated(format!(
            "member {} needs bytes up to {end}, the bundle has {total} ({} missing)",
            m.name,
            end - total
        ))),
        None => Err(BundleError::Format(format!(
            "member {} declares {} bytes, more than any file can hold",
            m.name, m.size
        ))),
    }
}

/// The data offset after member `m` (its data padded to whole blocks).
fn next_offset(m: &Member) -> Result<u64, BundleError> {
    pad(m.size)
        .and_then(|p| m.offset.checked_add(p))
        .ok_or_else(|| {
            BundleError::Format(format!(
                "member {} declares {} bytes, more than any file can hold",
                m.name, m.size
            ))
        })
}

/// Reads member `index`, which must be `expect` with exactly `size` bytes. `seen` holds
/// the members read so far and `later` the names still to come, to tell a duplicate or a
/// misplaced member from a foreign one.
#[allow(clippy::too_many_arguments)]
fn expect_member(
    source: &mut dyn ByteSource,
    offset: u64,
    total: u64,
    index: usize,
    expect: &str,
    size: u64,
    seen: &BTreeMap<String, Member>,
    later: &[String],
) -> Result<Member, BundleError> {
    let m = read_header(source, offset, total, expect)?.ok_or_else(|| {
        BundleError::Format(format!(
            "the archive ends where member {index} ({expect}) was expected"
        ))
    })?;
    if m.name != expect {
        let why =
            if seen.contains_key(&m.name) || m.name == MANIFEST_NAME || m.name == SIGNATURE_NAME {
                "a duplicate member: each file appears once in a bundle"
            } else if later.contains(&m.name) {
                "out of order"
            } else {
                "not listed in the signed manifest"
            };
        return Err(BundleError::Format(format!(
            "member {index} is {:?} where {expect} was expected ({why})",
            m.name
        )));
    }
    if m.size != size {
        let (diff, how) = if m.size > size {
            (m.size - size, "more")
        } else {
            (size - m.size, "fewer")
        };
        return Err(BundleError::Format(format!(
            "member {expect} has {} bytes, {diff} {how} than the {size} the signed manifest declares",
            m.size
        )));
    }
    check_inside(&m, total)?;
    Ok(m)
}

/// Checks what follows the end-of-archive block at `offset`: at most [`MAX_TRAILER`]
/// bytes, all zero (tar padding), never data or another member.
fn check_trailer(source: &mut dyn ByteSource, offset: u64, total: u64) -> Result<(), BundleError> {
    let start = offset + BLOCK;
    let rest = total - start;
    if rest > MAX_TRAILER {
        return Err(BundleError::Format(format!(
            "{rest} bytes follow the end-of-archive marker at byte {offset}; a bundle ends there (at most {MAX_TRAILER} bytes of zero padding)"
        )));
    }
    let mut buf = vec![0u8; rest.min(TRAILER_READ) as usize];
    let mut at = start;
    while at < total {
        let n = (total - at).min(TRAILER_READ) as usize;
        source.read_exact_at(at, &mut buf[..n])?;
        if let Some(i) = buf[..n].iter().position(|b| *b != 0) {
            return Err(BundleError::Format(format!(
                "data after the end-of-archive marker (byte {}); a bundle ends with its last image, hidden members are refused",
                at + i as u64
            )));
        }
        at += n as u64;
    }
    Ok(())
}

fn read_layout(
    source: &mut dyn ByteSource,
    keyring: Option<&Keyring>,
) -> Result<Bundle, BundleError> {
    let total = source.len()?;
    if total == 0 {
        return Err(BundleError::Format("the file is empty (0 bytes)".into()));
    }
    if total < BLOCK {
        return Err(BundleError::Format(format!(
            "the file is {total} bytes, too short for a tar archive (one header is {BLOCK})"
        )));
    }
    let mm = read_header(source, 0, total, MANIFEST_NAME)?
        .ok_or_else(|| BundleError::Format("the archive is empty".into()))?;
    if mm.name != MANIFEST_NAME {
        return Err(BundleError::Format(format!(
            "first member is {:?}, expected {MANIFEST_NAME}",
            mm.name
        )));
    }
    // Before anything is allocated or read: the header's word alone is not trusted.
    if mm.size > MAX_MANIFEST_SIZE {
        return Err(BundleError::Manifest(format!(
            "{MANIFEST_NAME} is {} bytes, larger than the {MAX_MANIFEST_SIZE}-byte limit (not read)",
            mm.size
        )));
    }
    check_inside(&mm, total)?;
    let mut manifest_bytes = vec![0u8; mm.size as usize];
    source.read_exact_at(mm.offset, &mut manifest_bytes)?;
    let sig_offset = next_offset(&mm)?;
    let sm = match read_header(source, sig_offset, total, SIGNATURE_NAME)? {
        None => {
            return Err(BundleError::Signature(format!(
                "the bundle is not signed: the archive ends after {MANIFEST_NAME}, no {SIGNATURE_NAME}"
            )))
        }
        Some(m) if m.name == SIGNATURE_NAME => m,
        Some(m) if m.name == MANIFEST_NAME => {
            return Err(BundleError::Format(format!(
                "member 2 is {MANIFEST_NAME} again (a duplicate member: each file appears once in a bundle)"
            )))
        }
        Some(m) => {
            return Err(BundleError::Signature(format!(
                "the bundle is not signed: member 2 is {:?} where {SIGNATURE_NAME} must be",
                m.name
            )))
        }
    };
    if sm.size != SIGNATURE_SIZE {
        return Err(BundleError::Signature(format!(
            "{SIGNATURE_NAME} has {} bytes, an ed25519 signature is {SIGNATURE_SIZE}",
            sm.size
        )));
    }
    check_inside(&sm, total)?;
    let mut sig = [0u8; SIGNATURE_SIZE as usize];
    source.read_exact_at(sm.offset, &mut sig)?;
    let signer = match keyring {
        Some(k) => k.verify(&manifest_bytes, &sig)?,
        None => String::new(),
    };
    let manifest = Manifest::parse(&manifest_bytes)?;
    let manifest_hash = super::digest::sha256_hex(&manifest_bytes);

    // Every member the signed manifest implies, in order, with its exact size.
    let mut expected = Vec::new();
    for img in &manifest.images {
        if img.layout() == super::manifest::Layout::Chunks {
            let count = ChunkIndex::count_for(img.size, img.chunk_size);
            let idx_size = count.saturating_mul(32);
            if idx_size > MAX_CHUNK_INDEX {
                return Err(BundleError::Manifest(format!(
                    "image {} would need a {idx_size}-byte chunk index, the limit is {MAX_CHUNK_INDEX}",
                    img.file
                )));
            }
        }
        expected.extend(img.members());
    }
    let names: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    let mut members = BTreeMap::new();
    members.insert(MANIFEST_NAME.to_owned(), mm.clone());
    members.insert(SIGNATURE_NAME.to_owned(), sm.clone());
    let mut offset = next_offset(&sm)?;
    for (i, (name, size)) in expected.iter().enumerate() {
        let m = expect_member(
            source,
            offset,
            total,
            i + 3,
            name,
            *size,
            &members,
            &names[i + 1..],
        )?;
        offset = next_offset(&m)?;
        members.insert(name.clone(), m);
    }
    match read_header(source, offset, total, "the end-of-archive marker")? {
        None => check_trailer(source, offset, total)?,
        Some(extra) => {
            let why = if members.contains_key(&extra.name) {
                "a duplicate member: each file appears once in a bundle"
            } else {
                "bundles carry only what the manifest lists"
            };
            return Err(BundleError::Format(format!(
                "unexpected member {:?} after the last image ({why})",
                extra.name
            )));
        }
    }
    members.remove(MANIFEST_NAME);
    members.remove(SIGNATURE_NAME);
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

    /// Fetches and checks a block image's block map against the signed manifest.
    pub fn block_map(
        &self,
        source: &mut dyn ByteSource,
        img: &ImageEntry,
    ) -> Result<BlockMap, BundleError> {
        let payload = |message: String| BundleError::Payload {
            file: img.file.clone(),
            message,
        };
        let name = img.blocks_file();
        let m = self
            .member(&name)
            .ok_or_else(|| BundleError::Format(format!("bundle has no member {name}")))?;
        let mut bytes = vec![0u8; m.size as usize];
        source.read_exact_at(m.offset, &mut bytes)?;
        let got = super::digest::sha256_hex(&bytes);
        if Some(&got) != img.block_map_sha256.as_ref() {
            return Err(payload(format!(
                "block map SHA-256 is {got}, the signed manifest says {}",
                img.block_map_sha256.as_deref().unwrap_or("nothing")
            )));
        }
        BlockMap::from_bytes(&bytes, img.size, img.payload_size.unwrap_or(0))
            .map_err(|e| payload(format!("block map: {e}")))
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
        let got = super::digest::sha256_hex(&bytes);
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
        if img.layout() == super::manifest::Layout::Blocks {
            verify_blocks(source, bundle, img, &mut |n| {
                done += n;
                progress(done, total)
            })?;
            continue;
        }
        let index = bundle.chunk_index(source, img)?;
        let m = bundle.image_member(img)?.clone();
        let mut reader = source.read_range(m.offset, m.size)?;
        let mut buf = vec![0u8; img.chunk_size as usize];
        let mut hasher = super::digest::ImageHasher::new();
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
            hasher.update(data);
            done += len;
            progress(done, total);
        }
        hasher
            .finish()
            .check(img)
            .map_err(|message| BundleError::Payload {
                file: img.file.clone(),
                message,
            })?;
    }
    Ok(())
}

/// [`verify_payload`] for a block image: reads the payload member once, in order: the
/// dictionary, each frame (decompressed, checked against its SHA-256), the patches (only
/// their bytes: they decode against a previous image this check does not have); then the
/// whole image's SHA-256 and CRC32, zero runs included, and the payload's SHA-256.
fn verify_blocks(
    source: &mut dyn ByteSource,
    bundle: &Bundle,
    img: &ImageEntry,
    progress: &mut dyn FnMut(u64),
) -> Result<(), BundleError> {
    use super::blockmap::{decode, Codec, BLOCK};
    let payload = |message: String| BundleError::Payload {
        file: img.file.clone(),
        message,
    };
    let map = bundle.block_map(source, img)?;
    let m = bundle.image_member(img)?.clone();
    let mut reader = source.read_range(m.offset, m.size)?;
    let mut whole_payload = ring::digest::Context::new(&ring::digest::SHA256);
    let mut read = |buf: &mut Vec<u8>, n: usize, what: &str| -> Result<(), BundleError> {
        buf.clear();
        buf.resize(n, 0);
        std::io::Read::read_exact(&mut reader, buf)
            .map_err(|e| payload(format!("reading {what}: {e}")))?;
        whole_payload.update(buf);
        Ok(())
    };
    let mut dictionary = Vec::new();
    read(
        &mut dictionary,
        map.dictionary_size as usize,
        "the dictionary",
    )?;
    if !dictionary.is_empty() && super::digest::sha256(&dictionary) != map.dictionary_sha256 {
        return Err(payload(
            "the dictionary does not match its signed hash".into(),
        ));
    }
    let dict = (!dictionary.is_empty()).then_some(&dictionary[..]);
    let mut hasher = super::digest::ImageHasher::new();
    let zero = vec![0u8; BLOCK as usize * 256];
    let mut packed = Vec::new();
    let mut raw = Vec::new();
    let mut pos = 0u64;
    let mut zeros = map.zeros.iter().peekable();
    let feed_zeros_upto = |hasher: &mut super::digest::ImageHasher, pos: &mut u64, upto: u64| {
        while *pos < upto {
            let n = (upto - *pos).min(zero.len() as u64);
            hasher.update(&zero[..n as usize]);
            *pos += n;
        }
    };
    for f in &map.frames {
        let (start, len) = map.frame_range(f);
        while let Some(z) = zeros.next_if(|z| z.first * BLOCK < start) {
            let end = ((z.first + z.blocks) * BLOCK).min(map.image_size);
            feed_zeros_upto(&mut hasher, &mut pos, end);
        }
        read(&mut packed, f.csize as usize, "a frame")?;
        let data: &[u8] = match f.codec {
            Codec::Stored => &packed,
            Codec::Zstd => {
                decode(&packed, len as usize, None, dict, &mut raw)
                    .map_err(|e| payload(format!("the frame at byte {start} of the image: {e}")))?;
                &raw
            }
        };
        if data.len() as u64 != len || super::digest::sha256(data) != f.sha256 {
            return Err(payload(format!(
                "the frame at bytes {start}..{} of the image does not match its signed hash",
                start + len
            )));
        }
        hasher.update(data);
        pos = start + len;
        progress(len);
    }
    for z in zeros {
        let end = ((z.first + z.blocks) * BLOCK).min(map.image_size);
        feed_zeros_upto(&mut hasher, &mut pos, end);
    }
    for p in &map.patches {
        read(&mut packed, p.csize as usize, "a patch")?;
    }
    let got = hex::encode(whole_payload.finish());
    if Some(&got) != img.payload_sha256.as_ref() {
        return Err(payload(format!(
            "payload SHA-256 is {got}, the signed manifest says {}",
            img.payload_sha256.as_deref().unwrap_or("nothing")
        )));
    }
    progress(map.image_size - map.data_bytes());
    hasher.finish().check(img).map_err(payload)
}
