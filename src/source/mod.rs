//! Where bundle bytes come from.
//!
//! A [`ByteSource`] answers ranged reads, so the installer can read the manifest first,
//! then fetch only the chunks it needs, in any order, from a local file or from HTTP(S)
//! without ever holding the whole bundle.

pub mod file;
pub mod http;
pub mod memory;
pub mod redact;
pub mod redirect;
pub mod tls;

use crate::model::Location;
use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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

/// Opens a bundle where `location` says: an http(s) URL becomes an [`http::HttpSource`]
/// using `http`, a file a [`file::FileSource`]. (Schemes were checked when the location
/// was parsed: [`Location::parse`].)
pub fn open(
    location: &Location,
    http: &http::HttpOptions,
    cancel: Arc<AtomicBool>,
) -> Result<Box<dyn ByteSource>, SourceError> {
    match location {
        Location::Http(url) => Ok(Box::new(http::HttpSource::new(url, http, cancel)?)),
        Location::File(path) => Ok(Box::new(file::FileSource::open(path)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_err(s: &str) -> String {
        let loc = match Location::parse(s) {
            Ok(l) => l,
            Err(e) => return e,
        };
        match open(
            &loc,
            &http::HttpOptions::default(),
            Arc::new(AtomicBool::new(false)),
        ) {
            Ok(_) => panic!("{s} opened"),
            Err(e) => e.to_string(),
        }
    }

    fn open_ok(s: &str) -> Box<dyn ByteSource> {
        let loc = Location::parse(s).unwrap();
        open(
            &loc,
            &http::HttpOptions::default(),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap()
    }

    #[test]
    fn chooses_the_source_by_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.rota");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut f = open_ok(p.to_str().unwrap());
        assert_eq!(f.len().unwrap(), 10);
        let mut f = open_ok(&format!("file://{}", p.display()));
        assert_eq!(f.len().unwrap(), 10);
        let f = open_ok(&format!("FILE://localhost{}", p.display()));
        assert_eq!(f.describe(), p.display().to_string());
        let h = open_ok("https://127.0.0.1:1/x.rota");
        assert_eq!(h.describe(), "https://127.0.0.1:1/x.rota");
        assert!(open_err("ftp://host/x.rota").contains("unsupported URL scheme \"ftp\""));
        // The refusal names the scheme only: nothing of the URL (tokens) is echoed.
        assert_eq!(
            open_err("ftp://u:pw@host/x.rota?t=SECRET"),
            "unsupported URL scheme \"ftp\"; use a path, file://, http:// or https://"
        );
        assert!(open_err("file://host/x.rota").contains("absolute path"));
        assert!(open_err("/nonexistent/x.rota").contains("/nonexistent/x.rota"));
    }
}
