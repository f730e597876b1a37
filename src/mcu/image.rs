//! MCU images, checked before a byte goes to a node.
//!
//! Two formats are accepted, anything else is refused with the reason:
//! - **MCUboot images** (little-endian): 32-byte header, body, optional protected TLV
//!   area, unprotected TLV area. The hash TLV (SHA-256, or SHA-384/512) must match
//!   header + body + protected TLVs. When the node has a `key`, the image must carry an
//!   ED25519 signature by that key: over the hash TLV's digest (imgtool's default), or
//!   over the hashed region itself when the image has a SIG_PURE TLV (`imgtool sign
//!   --pure`). A KEYHASH/PUBKEY TLV naming a different key is reported as such.
//! - **Raw `.bin`** whose last 4 bytes are the CRC32 (IEEE, little-endian) of the rest.
//!   It cannot carry a signature, so a node with a `key` refuses it.
//!
//! Every size read from the file is checked against the file before it is used.

use super::McuError;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Largest MCU image rota relays: well above the flash of the microcontrollers it
/// targets, small enough to hold in memory on a gateway.
pub const MAX_IMAGE_SIZE: u64 = 16 * 1024 * 1024;
/// MCUboot header magic (`IMAGE_MAGIC`).
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// Size of the fixed MCUboot header.
pub const HEADER_SIZE: usize = 32;
/// Unprotected TLV area magic.
pub const TLV_INFO_MAGIC: u16 = 0x6907;
/// Protected TLV area magic.
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;

pub const TLV_KEYHASH: u16 = 0x01;
pub const TLV_PUBKEY: u16 = 0x02;
pub const TLV_SHA256: u16 = 0x10;
pub const TLV_SHA384: u16 = 0x11;
pub const TLV_SHA512: u16 = 0x12;
pub const TLV_RSA2048_PSS: u16 = 0x20;
pub const TLV_ECDSA224: u16 = 0x21;
pub const TLV_ECDSA_SIG: u16 = 0x22;
pub const TLV_RSA3072_PSS: u16 = 0x23;
pub const TLV_ED25519: u16 = 0x24;
pub const TLV_SIG_PURE: u16 = 0x25;

/// Header flags that mean the body is encrypted (its hash cannot be checked here).
const FLAGS_ENCRYPTED: u32 = 0x04 | 0x08;
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (followed by the 32-byte key): what
/// imgtool embeds or hashes for KEYHASH/PUBKEY.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A checked image, ready to upload.
#[derive(Debug, Clone)]
pub struct McuImage {
    pub path: PathBuf,
    /// The whole file: exactly what is uploaded.
    pub data: Vec<u8>,
    /// SHA-256 of the whole file: the upload's `sha` (session id for resume).
    pub file_sha256: [u8; 32],
    /// What the node reports for this image once it has it: the MCUboot hash TLV, or
    /// for a raw image the SHA-256 of the whole file.
    pub hash: Vec<u8>,
    /// MCUboot version ("1.2.3", build appended as ".4" when non-zero); empty for raw.
    pub version: String,
    pub kind: ImageKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageKind {
    Mcuboot(McubootInfo),
    /// Raw binary with a CRC32 trailer.
    Raw {
        crc32: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McubootInfo {
    pub load_addr: u32,
    pub hdr_size: u16,
    pub protect_tlv_size: u16,
    pub img_size: u32,
    pub flags: u32,
    /// (type, length) of every TLV, protected ones first.
    pub tlvs: Vec<(u16, u16)>,
    /// The hash TLV type used (0x10, 0x11 or 0x12).
    pub hash_tlv: u16,
    /// Whether an ed25519 signature was verified against a configured key.
    pub signature_checked: bool,
    /// The signature covers the image itself (SIG_PURE) rather than the digest.
    pub pure: bool,
}

impl McuImage {
    pub fn is_mcuboot(&self) -> bool {
        matches!(self.kind, ImageKind::Mcuboot(_))
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(&self.hash)
    }

    /// One line for logs and the CLI.
    pub fn describe(&self) -> String {
        match &self.kind {
            ImageKind::Mcuboot(m) => format!(
                "MCUboot image {} version {}, {} bytes, hash {}{}",
                self.path.display(),
                self.version,
                self.data.len(),
                short_hex(&self.hash),
                if m.signature_checked {
                    ", ed25519 signature verified"
                } else {
                    ""
                }
            ),
            ImageKind::Raw { crc32 } => format!(
                "raw image {}, {} bytes, CRC32 0x{crc32:08x}, sha256 {}",
                self.path.display(),
                self.data.len(),
                short_hex(&self.hash)
            ),
        }
    }
}

/// First 8 bytes of a hash in hex, for messages.
pub fn short_hex(h: &[u8]) -> String {
    hex::encode(&h[..h.len().min(8)])
}

/// Loads an ed25519 public key (PEM, SubjectPublicKeyInfo) that a node's images must
/// be signed with.
pub fn load_key(path: &Path) -> Result<VerifyingKey, McuError> {
    let err = |message: String| McuError::Key {
        path: path.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if meta.len() > 64 * 1024 {
        return Err(err(format!(
            "{} bytes is too large for a PEM public key",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if text.contains("PRIVATE KEY") {
        return Err(err(
            "this is a private key; configure the public key instead (imgtool getpub -k KEY -e pem, or openssl pkey -pubout)"
                .into(),
        ));
    }
    VerifyingKey::from_public_key_pem(&text).map_err(|e| {
        err(format!(
            "not an ed25519 public key in PEM (SubjectPublicKeyInfo): {e}"
        ))
    })
}

/// SubjectPublicKeyInfo DER of an ed25519 key (what imgtool embeds and hashes).
pub fn spki_der(key: &VerifyingKey) -> Vec<u8> {
    let mut v = ED25519_SPKI_PREFIX.to_vec();
    v.extend_from_slice(key.as_bytes());
    v
}

/// Reads and checks an image file; `key` is the node's configured key, if any.
pub fn load(path: &Path, key: Option<&VerifyingKey>) -> Result<McuImage, McuError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| McuError::io(format!("cannot read image {}", path.display()), e))?;
    if meta.len() > MAX_IMAGE_SIZE {
        return Err(McuError::Image {
            path: path.to_owned(),
            message: format!(
                "{} bytes exceeds the MCU image limit of {MAX_IMAGE_SIZE} bytes",
                meta.len()
            ),
        });
    }
    let data = crate::fsutil::read_regular(path, MAX_IMAGE_SIZE)
        .map_err(|e| McuError::io(format!("cannot read image {}", path.display()), e))?;
    parse(path, data, key)
}

/// Checks an image held in memory (`path` names it in messages).
pub fn parse(path: &Path, data: Vec<u8>, key: Option<&VerifyingKey>) -> Result<McuImage, McuError> {
    let fail = |message: String| McuError::Image {
        path: path.to_owned(),
        message,
    };
    if data.len() as u64 > MAX_IMAGE_SIZE {
        return Err(fail(format!(
            "{} bytes exceeds the MCU image limit of {MAX_IMAGE_SIZE} bytes",
            data.len()
        )));
    }
    if data.len() < 5 {
        return Err(fail(format!(
            "{} bytes is too short for an MCUboot image or a raw image with a CRC32 trailer",
            data.len()
        )));
    }
    let file_sha256: [u8; 32] = Sha256::digest(&data).into();
    let magic = le32(&data, 0);
    if magic == IMAGE_MAGIC {
        let (info, hash, version) = parse_mcuboot(&data, key).map_err(fail)?;
        return Ok(McuImage {
            path: path.to_owned(),
            data,
            file_sha256,
            hash,
            version,
            kind: ImageKind::Mcuboot(info),
        });
    }
    if magic.swap_bytes() == IMAGE_MAGIC {
        return Err(fail("big-endian MCUboot images are not supported".into()));
    }
    let (payload, trailer) = data.split_at(data.len() - 4);
    let stored = le32(trailer, 0);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(fail(format!(
            "neither an MCUboot image (no magic 0x{IMAGE_MAGIC:08x} at offset 0, found 0x{magic:08x}) \
             nor a raw image ending in its CRC32 (CRC32 of the first {} bytes is 0x{computed:08x}, \
             the last 4 bytes hold 0x{stored:08x})",
            payload.len()
        )));
    }
    if key.is_some() {
        return Err(fail(
            "a raw image cannot carry a signature, and this node has a key: it accepts signed MCUboot images only".into(),
        ));
    }
    Ok(McuImage {
        path: path.to_owned(),
        hash: file_sha256.to_vec(),
        file_sha256,
        data,
        version: String::new(),
        kind: ImageKind::Raw { crc32: stored },
    })
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Formats a version as Zephyr's image manager does.
pub fn version_string(major: u8, minor: u8, revision: u16, build: u32) -> String {
    let mut s = format!("{major}.{minor}.{revision}");
    if build != 0 {
        let _ = write!(s, ".{build}");
    }
    s
}

struct Tlv {
    kind: u16,
    off: usize,
    len: usize,
}

/// Walks one TLV area starting at `start` with the expected magic; returns the TLVs
/// and the area's end.
fn tlv_area(
    data: &[u8],
    start: usize,
    magic: u16,
    name: &str,
) -> Result<(Vec<Tlv>, usize), String> {
    if start + 4 > data.len() {
        return Err(format!(
            "the {name} TLV area should start at offset {start} but the file ends at {}",
            data.len()
        ));
    }
    let found = le16(data, start);
    if found != magic {
        return Err(format!(
            "expected the {name} TLV area magic 0x{magic:04x} at offset {start}, found 0x{found:04x}"
        ));
    }
    let total = usize::from(le16(data, start + 2));
    let end = start + total;
    if total < 4 || end > data.len() {
        return Err(format!(
            "the {name} TLV area at offset {start} claims {total} bytes, beyond the end of the file at {}",
            data.len()
        ));
    }
    let mut tlvs = Vec::new();
    let mut off = start + 4;
    while off < end {
        if off + 4 > end {
            return Err(format!(
                "truncated TLV header at offset {off} in the {name} TLV area ending at {end}"
            ));
        }
        let kind = le16(data, off);
        let len = usize::from(le16(data, off + 2));
        if off + 4 + len > end {
            return Err(format!(
                "TLV 0x{kind:02x} at offset {off} has length {len}, past the end of the {name} TLV area at {end}"
            ));
        }
        tlvs.push(Tlv {
            kind,
            off: off + 4,
            len,
        });
        off += 4 + len;
    }
    Ok((tlvs, end))
}

fn sig_name(kind: u16) -> &'static str {
    match kind {
        TLV_RSA2048_PSS => "RSA-2048",
        TLV_RSA3072_PSS => "RSA-3072",
        TLV_ECDSA224 => "ECDSA-P224",
        TLV_ECDSA_SIG => "ECDSA",
        TLV_ED25519 => "ed25519",
        _ => "unknown",
    }
}

fn parse_mcuboot(
    data: &[u8],
    key: Option<&VerifyingKey>,
) -> Result<(McubootInfo, Vec<u8>, String), String> {
    if data.len() < HEADER_SIZE {
        return Err(format!(
            "{} bytes is shorter than the {HEADER_SIZE}-byte MCUboot header",
            data.len()
        ));
    }
    let load_addr = le32(data, 4);
    let hdr_size = le16(data, 8);
    let protect_tlv_size = le16(data, 10);
    let img_size = le32(data, 12);
    let flags = le32(data, 16);
    let version = version_string(data[20], data[21], le16(data, 22), le32(data, 24));
    if usize::from(hdr_size) < HEADER_SIZE {
        return Err(format!(
            "header size {hdr_size} is smaller than the {HEADER_SIZE}-byte MCUboot header"
        ));
    }
    let body_end = usize::from(hdr_size) as u64 + u64::from(img_size);
    if body_end > data.len() as u64 {
        return Err(format!(
            "header size {hdr_size} + image size {img_size} = {body_end} bytes, but the file has only {}",
            data.len()
        ));
    }
    let body_end = body_end as usize;
    if flags & FLAGS_ENCRYPTED != 0 {
        return Err(format!(
            "encrypted MCUboot images (flags 0x{flags:x}) are not supported: their hash cannot be checked before upload"
        ));
    }
    let mut tlvs = Vec::new();
    let mut prot_end = body_end;
    if protect_tlv_size > 0 {
        let (t, end) = tlv_area(data, body_end, TLV_PROT_INFO_MAGIC, "protected")?;
        if end - body_end != usize::from(protect_tlv_size) {
            return Err(format!(
                "the header says the protected TLV area has {protect_tlv_size} bytes, the area itself says {}",
                end - body_end
            ));
        }
        tlvs.extend(t);
        prot_end = end;
    } else if body_end + 2 <= data.len() && le16(data, body_end) == TLV_PROT_INFO_MAGIC {
        return Err(
            "a protected TLV area follows the body, but the header's protected TLV size is 0"
                .into(),
        );
    }
    let (t, _end) = tlv_area(data, prot_end, TLV_INFO_MAGIC, "unprotected")?;
    tlvs.extend(t);
    let hashed = &data[..prot_end];

    let hash_tlvs: Vec<&Tlv> = tlvs
        .iter()
        .filter(|t| matches!(t.kind, TLV_SHA256 | TLV_SHA384 | TLV_SHA512))
        .collect();
    let hash_tlv = match hash_tlvs.as_slice() {
        [] => {
            return Err(
                "no hash TLV (SHA256, SHA384 or SHA512): MCUboot cannot validate this image".into(),
            )
        }
        [one] => *one,
        _ => {
            return Err(format!(
                "{} hash TLVs; MCUboot expects exactly one",
                hash_tlvs.len()
            ))
        }
    };
    let (name, computed): (&str, Vec<u8>) = match hash_tlv.kind {
        TLV_SHA256 => ("SHA256", Sha256::digest(hashed).to_vec()),
        TLV_SHA384 => ("SHA384", Sha384::digest(hashed).to_vec()),
        _ => ("SHA512", Sha512::digest(hashed).to_vec()),
    };
    let stored = &data[hash_tlv.off..hash_tlv.off + hash_tlv.len];
    if stored.len() != computed.len() {
        return Err(format!(
            "the {name} TLV has {} bytes, expected {}",
            stored.len(),
            computed.len()
        ));
    }
    if stored != computed.as_slice() {
        return Err(format!(
            "the {name} TLV does not match the image: TLV holds {}, header+body+protected TLVs hash to {} \
             (the image is corrupt or was changed after signing)",
            hex::encode(stored),
            hex::encode(&computed)
        ));
    }
    let pure = tlvs.iter().any(|t| t.kind == TLV_SIG_PURE);
    let mut signature_checked = false;
    if let Some(key) = key {
        let spki = spki_der(key);
        let key_hash = match hash_tlv.kind {
            TLV_SHA256 => Sha256::digest(&spki).to_vec(),
            TLV_SHA384 => Sha384::digest(&spki).to_vec(),
            _ => Sha512::digest(&spki).to_vec(),
        };
        let key_id = short_hex(&Sha256::digest(&spki));
        for t in tlvs.iter().filter(|t| t.kind == TLV_KEYHASH) {
            let v = &data[t.off..t.off + t.len];
            if v != key_hash.as_slice() {
                // Both sides once: the image's KEYHASH names the key it was signed with,
                // against the same hash of the node's configured key.
                return Err(format!(
                    "signed by another key: the image was signed by the key with KEYHASH {}, the node's configured key has KEYHASH {}",
                    short_hex(v),
                    short_hex(&key_hash)
                ));
            }
        }
        for t in tlvs.iter().filter(|t| t.kind == TLV_PUBKEY) {
            let v = &data[t.off..t.off + t.len];
            if v != spki.as_slice() && v != key.as_bytes().as_slice() {
                return Err(format!(
                    "signed by another key: the image's PUBKEY TLV is not the node's key {key_id}"
                ));
            }
        }
        let sigs: Vec<&Tlv> = tlvs.iter().filter(|t| t.kind == TLV_ED25519).collect();
        if sigs.is_empty() {
            if let Some(other) = tlvs
                .iter()
                .find(|t| (TLV_RSA2048_PSS..=TLV_RSA3072_PSS).contains(&t.kind))
            {
                return Err(format!(
                    "signed with {} (TLV 0x{:02x}), but the node's key {key_id} is ed25519",
                    sig_name(other.kind),
                    other.kind
                ));
            }
            return Err(format!(
                "not signed, but the node requires an ed25519 signature by key {key_id}"
            ));
        }
        let message: &[u8] = if pure { hashed } else { stored };
        let mut last = String::new();
        for t in sigs {
            let raw = &data[t.off..t.off + t.len];
            let Ok(bytes) = <[u8; 64]>::try_from(raw) else {
                last = format!("the ED25519 TLV has {} bytes, expected 64", raw.len());
                continue;
            };
            match key.verify_strict(message, &Signature::from_bytes(&bytes)) {
                Ok(()) => {
                    signature_checked = true;
                    break;
                }
                Err(_) => {
                    last = format!(
                        "the ed25519 signature does not verify with the node's key {key_id} \
                         (signed by another key, or changed after signing)"
                    )
                }
            }
        }
        if !signature_checked {
            return Err(last);
        }
    }
    let info = McubootInfo {
        load_addr,
        hdr_size,
        protect_tlv_size,
        img_size,
        flags,
        tlvs: tlvs.iter().map(|t| (t.kind, t.len as u16)).collect(),
        hash_tlv: hash_tlv.kind,
        signature_checked,
        pure,
    };
    Ok((info, stored.to_vec(), version))
}

/// Builds an unsigned MCUboot image (SHA-256 TLV only) around `body` — for tests and
/// the simulator's factory image; real images come from `imgtool sign`.
pub fn build_unsigned(body: &[u8], version: (u8, u8, u16, u32)) -> Vec<u8> {
    let hdr_size: u16 = 0x20;
    let mut out = Vec::with_capacity(body.len() + 80);
    out.extend_from_slice(&IMAGE_MAGIC.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // load_addr
    out.extend_from_slice(&hdr_size.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // protect_tlv_size
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.push(version.0);
    out.push(version.1);
    out.extend_from_slice(&version.2.to_le_bytes());
    out.extend_from_slice(&version.3.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // pad
    out.extend_from_slice(body);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&TLV_INFO_MAGIC.to_le_bytes());
    out.extend_from_slice(&(4u16 + 4 + 32).to_le_bytes());
    out.extend_from_slice(&TLV_SHA256.to_le_bytes());
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(&digest);
    out
}

/// Appends the CRC32 trailer to `payload` (a raw image as the seed's firmware has).
pub fn build_raw(payload: &[u8]) -> Vec<u8> {
    let mut v = payload.to_vec();
    v.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.bin")
    }

    #[test]
    fn unsigned_image_parses_and_any_flipped_byte_is_caught() {
        let img = build_unsigned(&[7u8; 300], (1, 2, 3, 0));
        let ok = parse(p(), img.clone(), None).unwrap();
        assert_eq!(ok.version, "1.2.3");
        assert_eq!(ok.hash.len(), 32);
        for i in [0usize, 9, 20, 40, 331] {
            let mut bad = img.clone();
            bad[i] ^= 1;
            assert!(parse(p(), bad, None).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn version_build_number_is_appended() {
        let img = build_unsigned(b"abc", (2, 0, 7, 42));
        assert_eq!(parse(p(), img, None).unwrap().version, "2.0.7.42");
    }

    #[test]
    fn sizes_outside_the_file_are_refused_without_panicking() {
        let img = build_unsigned(&[1u8; 100], (1, 0, 0, 0));
        // image size beyond the file
        let mut b = img.clone();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = parse(p(), b, None).unwrap_err().to_string();
        assert!(e.contains("but the file has only"), "{e}");
        // header size below 32
        let mut b = img.clone();
        b[8..10].copy_from_slice(&4u16.to_le_bytes());
        assert!(parse(p(), b, None)
            .unwrap_err()
            .to_string()
            .contains("smaller than"));
        // TLV area length beyond the file
        let mut b = img.clone();
        let t = 0x20 + 100;
        b[t + 2..t + 4].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(parse(p(), b, None)
            .unwrap_err()
            .to_string()
            .contains("beyond the end"));
        // one TLV longer than its area
        let mut b = img.clone();
        b[t + 6..t + 8].copy_from_slice(&200u16.to_le_bytes());
        assert!(parse(p(), b, None)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
        // protected size set without an area
        let mut b = img.clone();
        b[10..12].copy_from_slice(&8u16.to_le_bytes());
        assert!(parse(p(), b, None).is_err());
        // truncated anywhere
        for n in [5, 31, 32, 100, img.len() - 1] {
            assert!(
                parse(p(), img[..n].to_vec(), None).is_err(),
                "truncated to {n} accepted"
            );
        }
    }

    #[test]
    fn raw_images_need_a_valid_crc_trailer() {
        let raw = build_raw(b"firmware payload");
        let ok = parse(p(), raw.clone(), None).unwrap();
        assert!(matches!(ok.kind, ImageKind::Raw { .. }));
        assert_eq!(ok.hash, ok.file_sha256.to_vec());
        let mut bad = raw;
        bad[3] ^= 0x80;
        let e = parse(p(), bad, None).unwrap_err().to_string();
        assert!(
            e.contains("neither an MCUboot image") && e.contains("CRC32"),
            "{e}"
        );
        assert!(parse(p(), b"abcd".to_vec(), None)
            .unwrap_err()
            .to_string()
            .contains("too short"));
    }

    #[test]
    fn unsigned_image_is_refused_when_the_node_has_a_key() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]).verifying_key();
        let img = build_unsigned(&[1u8; 64], (1, 0, 0, 0));
        let e = parse(p(), img, Some(&key)).unwrap_err().to_string();
        assert!(e.contains("not signed"), "{e}");
        let e = parse(p(), build_raw(b"payload"), Some(&key))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot carry a signature"), "{e}");
    }
}
