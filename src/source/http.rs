//! Bundles over HTTP(S): ranged reads that survive bad links.
//!
//! Every read is a `Range` request. The first one learns the bundle's size (from
//! `Content-Range`) and its validator (ETag, else Last-Modified); every later answer must
//! carry the same size and validator, so a bundle replaced on the server mid-install is
//! noticed ("bundle changed on the server") instead of mixed. A transfer that drops or
//! stalls (no byte for `stall-timeout`) reconnects from the byte it reached, with
//! exponential backoff and jitter, up to `retries` failed attempts in a row; any byte
//! received resets that count, so a slow but moving link is never given up on. Answers
//! that retrying cannot fix — 404, 401/403, 416, a server that ignores Range, a TLS
//! failure — end the read at once with a clear message.
//!
//! TLS is built in [`super::tls`]: the built-in web roots or, with `ca`, only the CAs in
//! that file (pinning), and an optional client certificate (mutual TLS).
//!
//! Redirects are followed by [`super::redirect`] (never https → http; the extra headers
//! only to the first origin). Each Range request starts at the configured URL again, so a
//! server that hands out short-lived signed links keeps working; the validator check
//! applies to whatever answers at the end of the chain. Messages show URLs and headers
//! through [`super::redact`], never whole.

use super::redirect::Hops;
use super::{redact, tls, ByteSource, SourceError};
use crate::config::{CrossOriginRedirects, HttpSection};
use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_RANGE, ETAG, LAST_MODIFIED, LOCATION, RANGE,
};
use reqwest::{Method, StatusCode, Url};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// First retry delay; doubles per failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two attempts: long enough to ride out a cell handover, short
/// enough that a link coming back is used soon.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a backoff wait looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);
/// Bytes of an error answer's body quoted in the message (servers explain 400/403 there).
const MAX_ERROR_BODY: usize = 512;
/// Largest number of extra headers accepted (config plus install request).
const MAX_HEADERS: usize = 64;
/// Bytes the first request fetches by default: the manifest, signature and chunk index of
/// a bundle whose first image is up to ~200 MiB (64 KiB chunks), in one round trip. What of
/// it is image data is served from memory later, not fetched again.
pub const HEAD_BYTES: u64 = 128 << 10;
/// A read of at most this many bytes past the head is a metadata read (a tar header, the
/// archive's end) ...
const SMALL_READ: u64 = 4096;
/// ... and fetches this much, so the reads after it (the end-of-archive trailer, at most
/// a tar record) come from memory.
const READ_AHEAD: u64 = 16 << 10;

/// How to reach the server: `[http]` from the config, overridden per install.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra headers, `"Name: value"`, sent with every request.
    pub headers: Vec<String>,
    pub connect_timeout: Duration,
    /// A transfer with no byte for this long is dropped and resumed.
    pub stall_timeout: Duration,
    /// Failed attempts in a row (no byte in between) before a read gives up.
    pub retries: u32,
    /// Accept any server certificate (RAUC's `tls-no-verify`).
    pub no_verify: bool,
    /// A redirect to another origin: follow it without the extra headers, or refuse it.
    pub cross_origin_redirects: CrossOriginRedirects,
    /// Bytes the first request fetches and keeps (at least 1): the bundle's metadata.
    pub prefetch: u64,
    /// Told each time a transfer is retried, before the backoff wait (the install shows
    /// it as its progress message).
    pub on_retry: Option<RetryNotice>,
}

/// A hook the source calls with the reason of each retry, e.g. `"server answered 500
/// Internal Server Error (retry 1 of 8)"`. Set by the caller (the install) and called on
/// the reading thread; it must not block.
#[derive(Clone)]
pub struct RetryNotice(Arc<dyn Fn(&str) + Send + Sync>);

impl RetryNotice {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        RetryNotice(Arc::new(f))
    }

    fn tell(&self, why: &str) {
        (self.0)(why)
    }
}

impl std::fmt::Debug for RetryNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryNotice(..)")
    }
}

/// A client's TLS configuration, see [`HttpOptions::client_tls`].
pub(crate) enum ClientTls {
    Ready(Box<rustls::ClientConfig>),
    /// Could not be built (the reason); fatal only if a redirect leads to https.
    Unavailable(String),
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self::from_config(&HttpSection::default())
    }
}

impl HttpOptions {
    pub fn from_config(c: &HttpSection) -> Self {
        HttpOptions {
            ca: c.ca.clone(),
            cert: c.cert.clone(),
            key: c.key.clone(),
            headers: c.headers.clone(),
            connect_timeout: c.connect_timeout,
            stall_timeout: c.stall_timeout,
            retries: c.retries,
            no_verify: false,
            cross_origin_redirects: c.cross_origin_redirects,
            prefetch: HEAD_BYTES,
            on_retry: None,
        }
    }

    /// Applies an install request's RAUC-style overrides (`tls-ca`, `tls-cert`, `tls-key`,
    /// `tls-no-verify`, `http-headers`): a given path replaces the configured one; headers
    /// are added after the configured ones (a later header of the same name wins).
    pub fn with_request(self, req: &crate::model::InstallRequest) -> Self {
        self.merge(
            req.tls_ca.as_deref(),
            req.tls_cert.as_deref(),
            req.tls_key.as_deref(),
            req.tls_no_verify,
            &req.http_headers,
        )
    }

    /// [`with_request`](Self::with_request) from loose values.
    pub fn merge(
        mut self,
        ca: Option<&str>,
        cert: Option<&str>,
        key: Option<&str>,
        no_verify: bool,
        headers: &[String],
    ) -> Self {
        if let Some(p) = ca {
            self.ca = Some(PathBuf::from(p));
        }
        if let Some(p) = cert {
            self.cert = Some(PathBuf::from(p));
        }
        if let Some(p) = key {
            self.key = Some(PathBuf::from(p));
        }
        self.headers.extend(headers.iter().cloned());
        self.no_verify |= no_verify;
        self
    }

    /// The TLS part of these options.
    pub fn tls(&self) -> tls::TlsSettings<'_> {
        tls::TlsSettings {
            ca: self.ca.as_deref(),
            cert: self.cert.as_deref(),
            key: self.key.as_deref(),
            no_verify: self.no_verify,
        }
    }

    /// The TLS configuration for a client whose first URL is `https` or not. An https
    /// client needs it (an error otherwise); an http client needs it only should a redirect
    /// lead to https, and then it must be this one, so the `ca` pinning still holds.
    pub(crate) fn client_tls(&self, https: bool) -> Result<ClientTls, SourceError> {
        match tls::client_config(&self.tls()) {
            Ok(c) => Ok(ClientTls::Ready(Box::new(c))),
            Err(e) if !https => Ok(ClientTls::Unavailable(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// The extra headers as a header map; a malformed one is an error naming it (never
    /// quoting its value).
    pub fn header_map(&self) -> Result<HeaderMap, SourceError> {
        if self.headers.len() > MAX_HEADERS {
            return Err(fatal(format!(
                "{} extra HTTP headers given; at most {MAX_HEADERS} are accepted",
                self.headers.len()
            )));
        }
        let mut headers = HeaderMap::new();
        for (i, h) in self.headers.iter().enumerate() {
            let (name, value) = h.split_once(':').ok_or_else(|| {
                fatal(format!(
                    "extra HTTP header {} of {} ({} bytes, not shown) is not \"Name: value\"",
                    i + 1,
                    self.headers.len(),
                    h.len()
                ))
            })?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| fatal(format!("HTTP header {:?}: {e}", name.trim())))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|e| fatal(format!("HTTP header {name}: {e}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(headers)
    }
}

fn fatal(m: impl Into<String>) -> SourceError {
    SourceError::Fatal(m.into())
}

/// A bundle at an http(s) URL.
pub struct HttpSource {
    client: Client,
    url: Url,
    /// The URL as messages show it ([`redact::url`]).
    shown: String,
    /// Extra headers, sent until a redirect leaves the first origin.
    headers: HeaderMap,
    cross_origin: CrossOriginRedirects,
    /// Why no TLS client could be set up (an http URL with a bad `ca`): refuses https hops.
    tls_error: Option<String>,
    retries: u32,
    on_retry: Option<RetryNotice>,
    len: Option<u64>,
    validator: Option<String>,
    prefetch: u64,
    /// The read-ahead of the last small read past the head: (offset, bytes).
    near: (u64, Vec<u8>),
    /// The bundle's first bytes, fetched by the first request: the manifest, signature
    /// and (for a typical image) its chunk index are read from here, so opening a bundle
    /// costs one round trip instead of one per metadata read.
    head: Vec<u8>,
    fetched: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
}

/// One outcome of a ranged request that did not end the read.
enum Attempt {
    Ok(Response),
    /// Worth another try after a pause: the reason.
    Retry(String),
}

/// `Content-Range: bytes first-last/total` (total `None` for `*`).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total))
}

/// An error answer's body as one short line of text.
fn error_body(resp: Response) -> String {
    let mut raw = Vec::with_capacity(MAX_ERROR_BODY);
    let _ = resp.take(MAX_ERROR_BODY as u64).read_to_end(&mut raw);
    redact::text(&one_line(&raw))
}

/// Text with HTML tags and control characters dropped and whitespace collapsed.
fn one_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(if c.is_control() { ' ' } else { c }),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every message in an error chain, joined, with any URL in it redacted.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    redact::text(&s)
}

/// Why a request that never got an answer cannot have reached the server: the host name
/// does not resolve ("dns error") or the connection was refused. `None` for everything
/// else (timeouts, resets), which may heal.
pub(crate) fn unreachable(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let chain = error_chain(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Some("connection refused (no server listens on that port)".into());
            }
        }
        cur = err.source();
    }
    chain
        .to_ascii_lowercase()
        .contains("dns error")
        .then(|| format!("dns error: the host name does not resolve ({chain})"))
}

impl HttpSource {
    pub fn new(
        url: &str,
        opts: &HttpOptions,
        cancel: Arc<AtomicBool>,
    ) -> Result<Self, SourceError> {
        tls::install_ring_provider();
        let shown = redact::url(url);
        let parsed = Url::parse(url).map_err(|e| fatal(format!("bad URL {shown:?}: {e}")))?;
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(fatal(format!("{shown}: unsupported URL scheme {other:?}"))),
        };
        let headers = opts.header_map()?;
        let mut b = Client::builder()
            .user_agent(concat!("rota/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.connect_timeout)
            // The blocking client applies this to sending the request and to each read of
            // the body: a stall detector, not a limit on the whole transfer.
            .timeout(opts.stall_timeout);
        let mut tls_error = None;
        match opts.client_tls(https)? {
            ClientTls::Ready(c) => b = b.tls_backend_preconfigured(*c),
            ClientTls::Unavailable(e) => {
                tls_error = Some(e);
                b = b.tls_backend_preconfigured(tls::trust_nothing_config()?);
            }
        }
        let client = b
            .build()
            .map_err(|e| fatal(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(HttpSource {
            client,
            url: parsed,
            shown,
            headers,
            cross_origin: opts.cross_origin_redirects,
            prefetch: opts.prefetch,
            tls_error,
            retries: opts.retries,
            on_retry: opts.on_retry.clone(),
            len: None,
            validator: None,
            head: Vec::new(),
            near: (0, Vec::new()),
            fetched: Arc::new(AtomicU64::new(0)),
            cancel,
        })
    }

    fn cancelled(&self) -> Result<(), SourceError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(SourceError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// One `Range: bytes=first-last` request, following redirects; classifies the answer.
    fn request(&self, first: u64, last: u64) -> Result<Attempt, SourceError> {
        let mut hops = Hops::new(self.url.clone(), Method::GET, self.cross_origin);
        let resp = loop {
            let mut req = self.client.get(hops.url.clone());
            if hops.extra_headers() {
                req = req.headers(self.headers.clone());
            }
            let sent = req.header(RANGE, format!("bytes={first}-{last}")).send();
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let e = e.without_url();
                    let at = format!("{}{}", self.shown, hops.note());
                    if let Some(why) = tls::tls_failure(&e) {
                        return Err(fatal(format!("TLS failure talking to {at}: {why}")));
                    }
                    if e.is_builder() {
                        return Err(fatal(format!("{at}: {}", error_chain(&e))));
                    }
                    // Before the source ever answered, a name that does not resolve or
                    // a port nobody listens on is a wrong URL or a server that is down:
                    // said at once, not after the whole retry budget. Once the bundle
                    // was reached, the same errors are a link that dropped, and retried.
                    if self.len.is_none() {
                        if let Some(why) = unreachable(&e) {
                            return Err(fatal(format!("cannot reach {at}: {why}")));
                        }
                    }
                    return Ok(Attempt::Retry(error_chain(&e)));
                }
            };
            if !hops
                .follow(resp.status(), resp.headers().get(LOCATION))
                .map_err(fatal)?
            {
                break resp;
            }
            if let (Some(why), "https") = (&self.tls_error, hops.url.scheme()) {
                return Err(fatal(format!(
                    "cannot follow the redirect from {} to {}: TLS setup failed: {why}",
                    self.shown,
                    redact::url(hops.url.as_str())
                )));
            }
        };
        let status = resp.status();
        let url = &format!("{}{}", self.shown, hops.note());
        match status {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => {
                return Err(fatal(format!(
                    "{url} answered a Range request with the whole file (200): the server does not support Range requests, which rota needs to stream and resume"
                )))
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Err(fatal(format!("{url} not found ({status})")))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(fatal(format!(
                    "access to {url} denied ({status}): check the credentials, client certificate or headers"
                )))
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let cr = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                return Err(fatal(format!(
                    "{url} cannot serve bytes {first}-{last} (416, Content-Range {cr:?}): the bundle on the server is shorter than expected"
                )));
            }
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                return Ok(Attempt::Retry(format!("server answered {s}")))
            }
            s => {
                let body = error_body(resp);
                let said = if body.is_empty() { String::new() } else { format!(": {body}") };
                return Err(fatal(format!("{url} answered {s}{said}")));
            }
        }
        let validator = resp
            .headers()
            .get(ETAG)
            .or_else(|| resp.headers().get(LAST_MODIFIED))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let (Some(known), Some(now)) = (&self.validator, &validator) {
            if known != now {
                return Err(fatal(format!(
                    "the bundle at {url} changed on the server during the install ({known} → {now}); start the install again"
                )));
            }
        }
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match parse_content_range(cr) {
            Some((a, b, total)) if a == first && b <= last => {
                if let (Some(len), Some(total)) = (self.len, total) {
                    if len != total {
                        return Err(fatal(format!(
                            "the bundle at {url} changed on the server during the install (size {len} → {total} bytes); start the install again"
                        )));
                    }
                }
                Ok(Attempt::Ok(resp))
            }
            _ => Err(fatal(format!(
                "{url} answered bytes {cr:?} to a request for bytes {first}-{last}"
            ))),
        }
    }

    /// Sleeps the backoff for the `failures`-th failure in a row: 200 ms doubling up to
    /// 30 s, each wait drawn from 50..100 % so a fleet does not retry in lockstep.
    fn backoff(&self, failures: u32) -> Result<(), SourceError> {
        let exp = FIRST_BACKOFF
            .saturating_mul(1 << failures.saturating_sub(1).min(10))
            .min(MAX_BACKOFF);
        let mut b = [0u8; 1];
        let _ = getrandom::fill(&mut b);
        let delay = exp.mul_f64(0.5 + f64::from(b[0]) / 510.0);
        let deadline = std::time::Instant::now() + delay;
        loop {
            self.cancelled()?;
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            std::thread::sleep((deadline - now).min(CANCEL_POLL));
        }
    }

    /// Counts a failed attempt; errors once `retries` have failed in a row.
    fn failed(&self, failures: &mut u32, at: u64, why: &str) -> Result<(), SourceError> {
        *failures += 1;
        if *failures > self.retries {
            return Err(SourceError::Io(format!(
                "{}: giving up at byte {at} after {} failed attempts in a row: {why}",
                self.shown, *failures
            )));
        }
        log::warn!(
            "{}: at byte {at}: {why}; retry {}/{}",
            self.shown,
            *failures,
            self.retries
        );
        if let Some(hook) = &self.on_retry {
            hook.tell(&format!(
                "{} (retry {} of {})",
                redact::text(why),
                *failures,
                self.retries
            ));
        }
        self.backoff(*failures)
    }

    /// Learns the size and validator with the first request, which also fetches the
    /// first [`HEAD_BYTES`] of the bundle (its metadata).
    fn probe(&mut self) -> Result<u64, SourceError> {
        let mut failures = 0;
        let mut resp = loop {
            self.cancelled()?;
            match self.request(0, self.prefetch.max(1) - 1)? {
                Attempt::Ok(r) => break r,
                Attempt::Retry(why) => self.failed(&mut failures, 0, &why)?,
            }
        };
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let total = parse_content_range(cr)
            .and_then(|(_, _, t)| t)
            .ok_or_else(|| {
                fatal(format!(
                    "{} sent no usable Content-Range ({cr:?}); cannot learn the bundle size",
                    self.shown
                ))
            })?;
        self.validator = resp
            .headers()
            .get(ETAG)
            .or_else(|| resp.headers().get(LAST_MODIFIED))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Best effort: whatever of the head arrives is kept; the rest is read on demand.
        let want = total.min(self.prefetch.max(1)) as usize;
        let mut head = Vec::with_capacity(want);
        let _ = (&mut resp).take(want as u64).read_to_end(&mut head);
        self.fetched.fetch_add(head.len() as u64, Ordering::Relaxed);
        // A one-byte probe is only a probe: nothing is held.
        if self.prefetch > 1 {
            self.head = head;
        }
        self.len = Some(total);
        Ok(total)
    }

    /// `offset..offset + len` from memory if it is all there: the head fetched by the first
    /// request, or the last small read's read-ahead.
    fn cached(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end <= self.head.len() as u64 {
            return Some(&self.head[offset as usize..end as usize]);
        }
        let (at, block) = (&self.near.0, &self.near.1);
        (offset >= *at && end <= at + block.len() as u64)
            .then(|| &block[(offset - at) as usize..(end - at) as usize])
    }

    fn read_exact_at_uncached(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let cancel = self.cancel.clone();
        let mut r = self.read_range(offset, buf.len() as u64)?;
        r.read_exact(buf).map_err(|e| {
            if cancel.load(Ordering::Relaxed) {
                SourceError::Cancelled
            } else {
                SourceError::Io(e.to_string())
            }
        })
    }

    /// The validator (ETag or Last-Modified) learned by the first request, if the server sent one.
    pub fn validator(&self) -> Option<&str> {
        self.validator.as_deref()
    }
}

impl ByteSource for HttpSource {
    fn len(&mut self) -> Result<u64, SourceError> {
        match self.len {
            Some(n) => Ok(n),
            None => self.probe(),
        }
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let total = self.len()?;
        if let Some(bytes) = self.cached(offset, buf.len() as u64) {
            buf.copy_from_slice(bytes);
            return Ok(());
        }
        // A small read past the head (a tar header, the end of the archive): read ahead a
        // little, so the next ones (the end-of-archive trailer) need no request.
        let ahead = READ_AHEAD.min(total.saturating_sub(offset));
        if self.prefetch > 1 && (buf.len() as u64) <= SMALL_READ && ahead >= buf.len() as u64 {
            let mut block = vec![0u8; ahead as usize];
            self.read_exact_at_uncached(offset, &mut block)?;
            buf.copy_from_slice(&block[..buf.len()]);
            self.near = (offset, block);
            return Ok(());
        }
        self.read_exact_at_uncached(offset, buf)
    }

    fn read_range(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let total = self.len()?;
        let end = offset.saturating_add(len);
        if end > total {
            return Err(SourceError::OutOfRange {
                offset,
                end,
                len: total,
            });
        }
        if let Some(bytes) = self.cached(offset, len) {
            return Ok(Box::new(std::io::Cursor::new(bytes)));
        }
        // A range that starts in the head: its first part from memory, the rest fetched.
        let held = self.head.len() as u64;
        if offset < held {
            let from_head = std::io::Cursor::new(&self.head[offset as usize..]);
            return Ok(Box::new(from_head.chain(RangeReader {
                src: self,
                pos: held,
                end,
                resp: None,
                failures: 0,
            })));
        }
        Ok(Box::new(RangeReader {
            src: self,
            pos: offset,
            end,
            resp: None,
            failures: 0,
        }))
    }

    fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

/// A byte range that reconnects where it stopped.
struct RangeReader<'a> {
    src: &'a HttpSource,
    pos: u64,
    end: u64,
    resp: Option<Response>,
    /// Failed attempts since the last byte arrived.
    failures: u32,
}

/// A read error for callers of [`Read`]. Not `Interrupted`: `read_exact` would retry that
/// forever.
fn io_error(e: SourceError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl RangeReader<'_> {
    fn fail(&mut self, why: &str) -> std::io::Result<()> {
        self.resp = None;
        self.src
            .failed(&mut self.failures, self.pos, why)
            .map_err(io_error)
    }

    /// Lets the finished response reach its end, so the connection can be reused.
    fn finish(&mut self) {
        if let Some(mut r) = self.resp.take() {
            let mut tail = [0u8; 1];
            if let Ok(n) = r.read(&mut tail) {
                self.src.fetched.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos >= self.end || buf.is_empty() {
                return Ok(0);
            }
            self.src.cancelled().map_err(io_error)?;
            let Some(resp) = self.resp.as_mut() else {
                match self.src.request(self.pos, self.end - 1).map_err(io_error)? {
                    Attempt::Ok(r) => self.resp = Some(r),
                    Attempt::Retry(why) => self.fail(&why)?,
                }
                continue;
            };
            let want = buf
                .len()
                .min((self.end - self.pos).min(usize::MAX as u64) as usize);
            match resp.read(&mut buf[..want]) {
                Ok(0) => {
                    let why = format!(
                        "connection closed {} bytes before the end of the range",
                        self.end - self.pos
                    );
                    self.fail(&why)?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    self.src.fetched.fetch_add(n as u64, Ordering::Relaxed);
                    if self.pos >= self.end {
                        self.finish();
                    }
                    return Ok(n);
                }
                Err(e) => {
                    if let Some(why) = tls::tls_failure(&e) {
                        return Err(io_error(fatal(format!(
                            "TLS failure talking to {}: {why}",
                            self.src.shown
                        ))));
                    }
                    let why = error_chain(&e);
                    self.fail(&why)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(
            parse_content_range("bytes 0-0/1048576"),
            Some((0, 0, Some(1048576)))
        );
        assert_eq!(
            parse_content_range("bytes 100-199/*"),
            Some((100, 199, None))
        );
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range(""), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn headers_are_checked_and_merged() {
        let o = HttpOptions::default().merge(
            None,
            None,
            None,
            false,
            &["Authorization: TargetToken x".into()],
        );
        let m = o.header_map().unwrap();
        assert_eq!(m.get("authorization").unwrap(), "TargetToken x");
        let bad = HttpOptions::default().merge(None, None, None, false, &["no colon".into()]);
        let e = bad.header_map().unwrap_err().to_string();
        assert!(e.contains("header 1 of 1 (8 bytes, not shown)"), "{e}");
        assert!(!e.contains("no colon"), "{e}");
        let bad = HttpOptions::default().merge(None, None, None, false, &["X-T: a\nSECRET".into()]);
        let e = bad.header_map().unwrap_err().to_string();
        assert!(e.contains("x-t") && !e.contains("SECRET"), "{e}");
    }

    #[test]
    fn install_request_overrides_config() {
        let req = crate::model::InstallRequest {
            tls_ca: Some("/ca.pem".into()),
            tls_no_verify: true,
            http_headers: vec!["X-A: 1".into()],
            ..Default::default()
        };
        let cfg = HttpSection {
            headers: vec!["X-B: 2".into()],
            ..Default::default()
        };
        let o = HttpOptions::from_config(&cfg).with_request(&req);
        assert_eq!(o.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert!(o.no_verify);
        assert_eq!(o.headers, vec!["X-B: 2".to_string(), "X-A: 1".to_string()]);
    }

    #[test]
    fn error_bodies_become_one_line() {
        let html = b"<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n</body></html>";
        assert_eq!(
            one_line(html),
            "400 No required SSL certificate was sent 400 Bad Request"
        );
    }
}
