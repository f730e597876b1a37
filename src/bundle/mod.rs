//! The update artifact.
//!
//! A bundle is a plain tar archive: `manifest.toml`, `manifest.toml.sig` (raw 64-byte
//! ed25519 signature over the manifest bytes), then for every image its chunk index
//! (`<file>.chunks`, one SHA-256 per chunk) followed by the image itself. The manifest
//! carries each image's size, SHA-256, CRC32, chunk size and the SHA-256 of its chunk
//! index, so the one signature covers every byte and every chunk can be checked on its
//! own before it is written.

pub mod blockmap;
pub mod chunks;
pub mod digest;
pub mod keys;
pub mod manifest;
pub mod pack;
pub mod reader;
pub mod writer;

pub use chunks::ChunkIndex;
pub use keys::{KeyId, Keyring};
pub use manifest::{ImageEntry, ImageTarget, Manifest, UpdateInfo};
pub use reader::{Bundle, Member};

/// Name of the first tar member.
pub const MANIFEST_NAME: &str = "manifest.toml";
/// Name of the second tar member.
pub const SIGNATURE_NAME: &str = "manifest.toml.sig";
/// Suffix of an image's chunk index member.
pub const CHUNKS_SUFFIX: &str = ".chunks";
/// Suffix of an image's block map member (format 2).
pub const BLOCKS_SUFFIX: &str = ".blocks";
/// Largest manifest accepted; checked against the tar header before anything is
/// allocated or read.
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;
/// The only size `manifest.toml.sig` may have: one raw ed25519 signature.
pub const SIGNATURE_SIZE: u64 = 64;
/// Most images one bundle may carry.
pub const MAX_IMAGES: usize = 64;
/// Default chunk size: small enough for adaptive reuse, large enough that the chunk index
/// is 0.05 % of the payload.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Allowed chunk sizes: powers of two in this range (4 KiB keeps the index at 0.78 %).
pub const MIN_CHUNK_SIZE: u32 = 4 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Source(#[from] crate::source::SourceError),
    #[error("{0}")]
    Io(String),
    #[error("not a rota bundle: {0}")]
    Format(String),
    #[error("bundle is truncated: {0}")]
    Truncated(String),
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error("key error: {0}")]
    Key(String),
    #[error("image {file}: {message}")]
    Payload { file: String, message: String },
}
