//! The signed manifest (`manifest.toml` inside a bundle) and the hand-written input
//! manifest that `rota bundle create` reads.

use super::BundleError;
use serde::{Deserialize, Serialize};

/// Manifest format version written by this rota: 2, slot images stored as compressed
/// 4 KiB blocks ([`super::blockmap`]). Format 1 (every image raw, in chunks) still reads.
pub const FORMAT: u32 = 2;
/// The first format, every image stored raw with its chunk index.
pub const FORMAT_CHUNKS: u32 = 1;

/// The manifest inside a bundle, exactly as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub update: UpdateInfo,
    #[serde(rename = "image", default)]
    pub images: Vec<ImageEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpdateInfo {
    pub compatible: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When and how the bundle was built (free text, e.g. an RFC 3339 time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// Where an image goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageTarget {
    /// The inactive slot of this class.
    SlotClass(String),
    /// The MCU node of this name.
    Mcu(String),
}

impl std::fmt::Display for ImageTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageTarget::SlotClass(c) => write!(f, "slot class {c}"),
            ImageTarget::Mcu(m) => write!(f, "MCU {m}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcu: Option<String>,
    /// Tar member holding the image.
    pub file: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the whole image.
    pub sha256: String,
    /// CRC-32 (IEEE) of the whole image.
    pub crc32: u32,
    /// Chunked images (format 1, and MCU images): the chunk size.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_size: u32,
    /// Chunked images: lower-case hex SHA-256 of the `<file>.chunks` member.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunks_sha256: String,
    /// Block images (format 2 slot images): size of the `<file>.blocks` member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_map_size: Option<u64>,
    /// Block images: lower-case hex SHA-256 of the `<file>.blocks` member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_map_sha256: Option<String>,
    /// Block images: size of the `<file>` member (dictionary, frames, patches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
    /// Block images: lower-case hex SHA-256 of the `<file>` member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// How an image's bytes are stored in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Raw, with one SHA-256 per chunk (`<file>.chunks`, then `<file>`).
    Chunks,
    /// 4 KiB blocks in compressed frames (`<file>.blocks`, then `<file>`).
    Blocks,
}

impl ImageEntry {
    /// The target, once the manifest has been validated (exactly one of slot-class / mcu).
    pub fn target(&self) -> ImageTarget {
        match (&self.slot_class, &self.mcu) {
            (Some(c), _) => ImageTarget::SlotClass(c.clone()),
            (None, Some(m)) => ImageTarget::Mcu(m.clone()),
            (None, None) => ImageTarget::SlotClass(String::new()),
        }
    }

    /// Size in bytes of this image's chunk index member.
    pub fn chunks_size(&self) -> u64 {
        super::ChunkIndex::count_for(self.size, self.chunk_size) * 32
    }

    /// Tar member name of this image's chunk index.
    pub fn chunks_file(&self) -> String {
        format!("{}{}", self.file, super::CHUNKS_SUFFIX)
    }

    /// Tar member name of this image's block map.
    pub fn blocks_file(&self) -> String {
        format!("{}{}", self.file, super::BLOCKS_SUFFIX)
    }

    pub fn layout(&self) -> Layout {
        if self.block_map_sha256.is_some() {
            Layout::Blocks
        } else {
            Layout::Chunks
        }
    }

    /// The image's two members in bundle order, with their sizes: its index (chunk index
    /// or block map), then its payload.
    pub fn members(&self) -> [(String, u64); 2] {
        match self.layout() {
            Layout::Chunks => [
                (self.chunks_file(), self.chunks_size()),
                (self.file.clone(), self.size),
            ],
            Layout::Blocks => [
                (self.blocks_file(), self.block_map_size.unwrap_or(0)),
                (self.file.clone(), self.payload_size.unwrap_or(0)),
            ],
        }
    }

    /// Bytes this image takes in the bundle (index and payload).
    pub fn stored_size(&self) -> u64 {
        self.members().iter().map(|(_, s)| s).sum()
    }
}

/// Limits that keep a hostile manifest from asking for absurd work or memory.
/// Largest image: 64 GiB (eMMC sizes of the devices we target).
pub const MAX_IMAGE_SIZE: u64 = 64 << 30;
/// Longest `[update] compatible` and `version`: they are compared, stored in the state
/// and shown in messages.
pub const MAX_FIELD_LEN: usize = 256;
/// Longest tar member name (ustar `name` field, no prefix).
pub const MAX_NAME_LEN: usize = 99 - super::CHUNKS_SUFFIX.len();

impl Manifest {
    /// Parses and validates the signed manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            BundleError::Manifest(format!("not UTF-8 (at byte {})", e.valid_up_to()))
        })?;
        let m: Manifest =
            toml::from_str(text).map_err(|e| BundleError::Manifest(one_line(&e.to_string())))?;
        m.validate()?;
        Ok(m)
    }

    pub fn to_toml(&self) -> Result<String, BundleError> {
        toml::to_string(self).map_err(|e| BundleError::Manifest(format!("cannot serialize: {e}")))
    }

    /// The version, parsed with the device's `[system] version-scheme`.
    pub fn version(
        &self,
        scheme: crate::version::VersionScheme,
    ) -> Result<crate::version::Version, BundleError> {
        scheme
            .parse(&self.update.version)
            .map_err(BundleError::Manifest)
    }

    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |m: String| Err(BundleError::Manifest(m));
        if self.format != FORMAT && self.format != FORMAT_CHUNKS {
            return bad(format!(
                "format {} is not supported (this rota reads formats {FORMAT_CHUNKS} and {FORMAT})",
                self.format
            ));
        }
        if self.update.compatible.trim().is_empty() {
            return bad("[update] compatible is empty".into());
        }
        for (what, v) in [
            ("compatible", &self.update.compatible),
            ("version", &self.update.version),
        ] {
            if v.len() > MAX_FIELD_LEN {
                return bad(format!(
                    "[update] {what} is {} bytes, at most {MAX_FIELD_LEN} are allowed",
                    v.len()
                ));
            }
        }
        // The scheme is the device's choice: here the version need only be one of them
        // (the Debian syntax takes every semver version); the install parses it with
        // the configured scheme.
        crate::version::VersionScheme::Debian
            .parse(&self.update.version)
            .map_err(BundleError::Manifest)?;
        if self.images.is_empty() {
            return bad("no [[image]]".into());
        }
        if self.images.len() > super::MAX_IMAGES {
            return bad(format!(
                "{} images, at most {} are allowed",
                self.images.len(),
                super::MAX_IMAGES
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, img) in self.images.iter().enumerate() {
            let n = i + 1;
            match (&img.slot_class, &img.mcu) {
                (Some(_), Some(_)) | (None, None) => {
                    return bad(format!(
                        "image {n} ({}) must have exactly one of slot-class or mcu",
                        img.file
                    ))
                }
                _ => {}
            }
            check_member_name(&img.file)
                .map_err(|m| BundleError::Manifest(format!("image {n}: {m}")))?;
            if !names.insert(img.file.clone()) {
                return bad(format!("image file {:?} appears twice", img.file));
            }
            if img.size == 0 {
                return bad(format!("image {} is empty (size 0)", img.file));
            }
            if img.size > MAX_IMAGE_SIZE {
                return bad(format!(
                    "image {} declares {} bytes, the limit is {MAX_IMAGE_SIZE}",
                    img.file, img.size
                ));
            }
            let mut hashes = vec![("sha256", &img.sha256)];
            match (img.layout(), &img.block_map_size, &img.payload_size, &img.payload_sha256) {
                (Layout::Chunks, None, None, None) => {
                    check_chunk_size(img.chunk_size)
                        .map_err(|m| BundleError::Manifest(format!("image {}: {m}", img.file)))?;
                    hashes.push(("chunks-sha256", &img.chunks_sha256));
                }
                (Layout::Blocks, Some(map_size), Some(_), Some(payload_sha256))
                    if img.chunk_size == 0 && img.chunks_sha256.is_empty() =>
                {
                    if self.format < FORMAT {
                        return bad(format!(
                            "image {}: block images need format {FORMAT}",
                            img.file
                        ));
                    }
                    if img.slot_class.is_none() {
                        return bad(format!(
                            "image {}: MCU images are stored in chunks, not blocks",
                            img.file
                        ));
                    }
                    let max = super::blockmap::max_serialized(img.size);
                    if *map_size > max {
                        return bad(format!(
                            "image {}: a {map_size}-byte block map, at most {max} for its size",
                            img.file
                        ));
                    }
                    hashes.push(("payload-sha256", payload_sha256));
                    if let Some(h) = &img.block_map_sha256 {
                        hashes.push(("block-map-sha256", h));
                    }
                }
                _ => {
                    return bad(format!(
                        "image {} must have either chunk-size and chunks-sha256, or block-map-size, block-map-sha256, payload-size and payload-sha256",
                        img.file
                    ))
                }
            }
            for (what, h) in hashes {
                if h.len() != 64
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return bad(format!(
                        "image {}: {what} must be 64 lower-case hex digits",
                        img.file
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A tar member name rota writes and accepts: a plain file name.
pub fn check_member_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "file name {name:?} must be 1 to {MAX_NAME_LEN} bytes"
        ));
    }
    if name.contains('/') || name == "." || name == ".." || name.starts_with('-') {
        return Err(format!(
            "file name {name:?} must be a plain name (no '/', not '.' or '..')"
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Err(format!(
            "file name {name:?} may only use printable ASCII without spaces"
        ));
    }
    if name == super::MANIFEST_NAME
        || name == super::SIGNATURE_NAME
        || name.ends_with(super::CHUNKS_SUFFIX)
        || name.ends_with(super::BLOCKS_SUFFIX)
    {
        return Err(format!("file name {name:?} is reserved"));
    }
    Ok(())
}

pub fn check_chunk_size(size: u32) -> Result<(), String> {
    if !size.is_power_of_two() || !(super::MIN_CHUNK_SIZE..=super::MAX_CHUNK_SIZE).contains(&size) {
        return Err(format!(
            "chunk size {size} must be a power of two from {} to {}",
            super::MIN_CHUNK_SIZE,
            super::MAX_CHUNK_SIZE
        ));
    }
    Ok(())
}

/// Longest line of a parser message kept in an error: the parser quotes the offending
/// manifest line, which a hostile manifest can make 1 MiB long.
pub const MAX_ERROR_LINE: usize = 160;
/// Longest folded parser message (it ends up in LastError, status.json and the journal).
pub const MAX_ERROR_LEN: usize = 1024;

/// `s` cut to at most `max` bytes on a character boundary, marked with "…" when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The TOML parser's multi-line messages, folded into one bounded line for logs and
/// D-Bus errors.
pub fn one_line(s: &str) -> String {
    let folded = s
        .split('\n')
        // Whitespace runs (the parser's column markers) fold to one space.
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && l != "|")
        .map(|l| clip(&l, MAX_ERROR_LINE))
        .collect::<Vec<_>>()
        .join(" ");
    clip(&folded, MAX_ERROR_LEN)
}

/// The hand-written `manifest.toml` that `rota bundle create DIR` reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputManifest {
    pub update: InputUpdate,
    #[serde(rename = "image", default)]
    pub images: Vec<InputImage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputUpdate {
    pub compatible: String,
    pub version: String,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InputImage {
    pub slot_class: Option<String>,
    pub mcu: Option<String>,
    pub file: String,
}

impl InputManifest {
    pub fn parse(text: &str, path: &std::path::Path) -> Result<InputManifest, BundleError> {
        toml::from_str(text).map_err(|e| {
            BundleError::Manifest(format!("{}: {}", path.display(), one_line(&e.to_string())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_messages_stay_short_whatever_the_manifest() {
        let text = format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let e = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(e.len() <= MAX_ERROR_LEN + 64, "{} bytes", e.len());
        assert!(e.contains("recursion"), "{e}");
        assert_eq!(clip("aé", 2), "a…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn compatible_and_version_are_bounded() {
        let long = "v".repeat(MAX_FIELD_LEN + 1);
        let text = format!(
            "format = 1\n[update]\ncompatible = \"{long}\"\nversion = \"1.0.0\"\n[[image]]\nslot-class = \"rootfs\"\nfile = \"r\"\nsize = 1\nsha256 = \"{h}\"\ncrc32 = 0\nchunk-size = 4096\nchunks-sha256 = \"{h}\"\n",
            h = "0".repeat(64)
        );
        let e = Manifest::parse(text.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid manifest: [update] compatible is 257 bytes, at most 256 are allowed"
        );
        let ok = text.replace(&long, "acme");
        Manifest::parse(ok.as_bytes()).unwrap();
    }
}
