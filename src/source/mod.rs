//! Where bundle bytes come from.
//!
//! A [`ByteSource`] answers ranged reads, so the installer can read the manifest first,
//! then fetch only the chunks it needs, in any order, from a local file or from HTTP(S)
//! without ever holding the whole bundle.

pub mod file;
pub mod http;

use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Io(String),
    /// The source cannot serve this request and retrying will not help (404, 403, 416,
    /// no Range support, TLS failure, file missing).
    #[error("{0}")]
    Fatal(String),
    #[error("read past the end of the source: wanted bytes {offset}..{end}, source has {len}")]
    OutOfRange { offset: u64, end: u64, len: u64 },
    #[error("cancelled")]
    Cancelled,
}

/// Ranged, restartable reads over a bundle.
#[allow(clippy::len_without_is_empty)]
pub trait ByteSource: Send {
    /// Total size of the bundle in bytes.
    fn len(&mut self) -> Result<u64, SourceError>;
    /// Reads exactly `buf.len()` bytes starting at `offset`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError>;
    /// A sequential reader over `offset..offset + len` (one HTTP Range request). A
    /// network implementation reconnects and continues transparently after a dropped
    /// connection, within its retry budget.
    fn read_range(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError>;
    /// Bytes fetched from the underlying medium so far (network traffic for HTTP).
    fn bytes_fetched(&self) -> u64;
    /// For messages: the path or URL.
    fn describe(&self) -> String;
}
