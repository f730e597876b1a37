//! Bundles over HTTP(S): ranged reads that survive bad links.
//!
//! Every read is a `Range` request. The first one learns the bundle's size and its
//! validator (ETag, else Last-Modified); every later answer must carry the same one, so a
//! bundle replaced on the server mid-install is noticed instead of mixed. A transfer that
//! drops or stalls (no byte for `stall-timeout`) reconnects from the byte it reached, with
//! exponential backoff and jitter, up to `retries` attempts in a row. Answers that retrying
//! cannot fix — 404, 401/403, 416, a server that ignores Range, a TLS failure — end the
//! install at once with a clear message.
//!
//! TLS is rustls with the ring provider: the built-in web roots or, with `ca`, only the
//! CAs in that file (pinning), and an optional client certificate (mutual TLS).

use super::{ByteSource, SourceError};
use crate::config::HttpSection;
use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_RANGE, ETAG, LAST_MODIFIED, RANGE,
};
use reqwest::StatusCode;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest PEM file (CA bundle, certificate, key) read.
const MAX_PEM_FILE: u64 = 4 << 20;

/// How to reach the server: `[http]` from the config, overridden per install.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub headers: Vec<String>,
    pub connect_timeout: Duration,
    pub stall_timeout: Duration,
    pub retries: u32,
    pub no_verify: bool,
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
        }
    }

    /// Applies an install request's RAUC-style overrides (`tls-*`, `http-headers`).
    pub fn with_request(mut self, req: &crate::agent::InstallRequest) -> Self {
        if let Some(p) = &req.tls_ca {
            self.ca = Some(PathBuf::from(p));
        }
        if let Some(p) = &req.tls_cert {
            self.cert = Some(PathBuf::from(p));
        }
        if let Some(p) = &req.tls_key {
            self.key = Some(PathBuf::from(p));
        }
        self.headers.extend(req.http_headers.iter().cloned());
        self.no_verify |= req.tls_no_verify;
        self
    }
}

fn fatal(m: impl Into<String>) -> SourceError {
    SourceError::Fatal(m.into())
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, SourceError> {
    let meta =
        std::fs::metadata(path).map_err(|e| fatal(format!("{what} {}: {e}", path.display())))?;
    if meta.len() > MAX_PEM_FILE {
        return Err(fatal(format!(
            "{what} {}: {} bytes is too large",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| fatal(format!("{what} {}: {e}", path.display())))
}

/// Accepts any server certificate (`tls-no-verify`); signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(o: &HttpOptions) -> Result<rustls::ClientConfig, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fatal(format!("TLS setup: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    match &o.ca {
        Some(ca) => {
            let pem = read_pem(ca, "CA bundle")?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| fatal(format!("CA bundle {}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| fatal(format!("CA bundle {}: {e}", ca.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(fatal(format!(
                    "CA bundle {} holds no certificate",
                    ca.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = builder.with_root_certificates(roots);
    let mut config = match (&o.cert, &o.key) {
        (Some(cert), Some(key)) => {
            let pem = read_pem(cert, "client certificate")?;
            let chain = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fatal(format!("client certificate {}: {e}", cert.display())))?;
            let kpem = read_pem(key, "client key")?;
            let key_der = rustls_pemfile::private_key(&mut &kpem[..])
                .map_err(|e| fatal(format!("client key {}: {e}", key.display())))?
                .ok_or_else(|| {
                    fatal(format!("client key {} holds no private key", key.display()))
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| fatal(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(fatal(
                "mutual TLS needs both a client certificate and its key",
            ))
        }
    };
    if o.no_verify {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(NoVerify(provider)));
    }
    Ok(config)
}

/// A bundle at an http(s) URL.
pub struct HttpSource {
    client: Client,
    url: String,
    retries: u32,
    len: Option<u64>,
    validator: Option<String>,
    fetched: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
}

/// One outcome of a ranged request.
enum Attempt {
    Ok(Response),
    Retry(String),
}

/// reqwest built without a default provider needs one installed process-wide, even for
/// plain HTTP: ring, as for every TLS connection rota makes.
fn install_ring_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl HttpSource {
    pub fn new(
        url: &str,
        opts: &HttpOptions,
        cancel: Arc<AtomicBool>,
    ) -> Result<Self, SourceError> {
        install_ring_provider();
        let mut headers = HeaderMap::new();
        for h in &opts.headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| fatal(format!("HTTP header {h:?} is not \"Name: value\"")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| fatal(format!("HTTP header {h:?}: {e}")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|e| fatal(format!("HTTP header {h:?}: {e}")))?;
            headers.insert(name, value);
        }
        let mut b = Client::builder()
            .user_agent(concat!("rota/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.stall_timeout);
        if url.starts_with("https://") {
            b = b.tls_backend_preconfigured(tls_config(opts)?);
        }
        let client = b.build().map_err(|e| fatal(format!("HTTP client: {e}")))?;
        Ok(HttpSource {
            client,
            url: url.to_owned(),
            retries: opts.retries,
            len: None,
            validator: None,
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

    /// One `Range: bytes=first-last` request; classifies the answer.
    fn request(&self, first: u64, last: u64) -> Result<Attempt, SourceError> {
        let resp = match self
            .client
            .get(&self.url)
            .header(RANGE, format!("bytes={first}-{last}"))
            .send()
        {
            Ok(r) => r,
            Err(e) => {
                let msg = error_chain(&e);
                // A certificate problem does not heal by retrying.
                if msg.contains("certificate")
                    || msg.contains("UnknownIssuer")
                    || msg.contains("CertificateRequired")
                    || msg.contains("HandshakeFailure")
                    || msg.contains("InvalidCertificate")
                {
                    return Err(fatal(format!("TLS failure talking to {}: {msg}", self.url)));
                }
                if e.is_builder() {
                    return Err(fatal(format!("{}: {msg}", self.url)));
                }
                return Ok(Attempt::Retry(msg));
            }
        };
        let status = resp.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => {
                return Err(fatal(format!(
                    "{} answered a Range request with the whole file (200): the server does not support Range requests, which rota needs to stream and resume",
                    self.url
                )))
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => return Err(fatal(format!("{} not found ({status})", self.url))),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(fatal(format!("access to {} denied ({status}): check credentials or headers", self.url)))
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(fatal(format!("{} cannot serve bytes {first}-{last} (416): the bundle on the server is shorter than expected", self.url)))
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
                return Ok(Attempt::Retry(format!("server answered {s}")))
            }
            s => return Err(fatal(format!("{} answered {s}", self.url))),
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
                    "the bundle at {} changed on the server during the install ({known} → {now})",
                    self.url
                )));
            }
        }
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let start = cr
            .strip_prefix("bytes ")
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<u64>().ok());
        if start != Some(first) {
            return Err(fatal(format!(
                "{} answered bytes {cr:?} to a request for {first}-{last}",
                self.url
            )));
        }
        Ok(Attempt::Ok(resp))
    }

    /// `request` with backoff; gives up after `retries` failures in a row.
    fn request_retrying(&self, first: u64, last: u64) -> Result<Response, SourceError> {
        let mut failures = 0;
        loop {
            self.cancelled()?;
            match self.request(first, last)? {
                Attempt::Ok(r) => return Ok(r),
                Attempt::Retry(why) => {
                    failures += 1;
                    if failures > self.retries {
                        return Err(SourceError::Io(format!(
                            "{}: giving up after {failures} attempts: {why}",
                            self.url
                        )));
                    }
                    log::warn!(
                        "{}: bytes {first}-{last}: {why}; retry {failures}/{}",
                        self.url,
                        self.retries
                    );
                    self.backoff(failures)?;
                }
            }
        }
    }

    fn backoff(&self, failures: u32) -> Result<(), SourceError> {
        let exp = FIRST_BACKOFF
            .saturating_mul(1 << failures.min(8))
            .min(MAX_BACKOFF);
        // Jitter: 50..100 % of the delay, so a fleet does not retry in lockstep.
        let mut b = [0u8; 1];
        let _ = getrandom::fill(&mut b);
        let delay = exp.mul_f64(0.5 + f64::from(b[0]) / 510.0);
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        while waited < delay {
            self.cancelled()?;
            std::thread::sleep(step);
            waited += step;
        }
        Ok(())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl ByteSource for HttpSource {
    fn len(&mut self) -> Result<u64, SourceError> {
        if let Some(n) = self.len {
            return Ok(n);
        }
        let resp = self.request_retrying(0, 0)?;
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let total = cr
            .rsplit('/')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                fatal(format!(
                    "{} sent no usable Content-Range ({cr:?}); cannot learn the bundle size",
                    self.url
                ))
            })?;
        self.validator = resp
            .headers()
            .get(ETAG)
            .or_else(|| resp.headers().get(LAST_MODIFIED))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.len = Some(total);
        Ok(total)
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let mut r = self.read_range(offset, buf.len() as u64)?;
        r.read_exact(buf)
            .map_err(|e| SourceError::Io(format!("{e}")))
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
        self.url.clone()
    }
}

/// A byte range that reconnects where it stopped.
struct RangeReader<'a> {
    src: &'a HttpSource,
    pos: u64,
    end: u64,
    resp: Option<Response>,
    failures: u32,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let io = |e: SourceError| match e {
            SourceError::Cancelled => {
                std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled")
            }
            other => std::io::Error::other(other.to_string()),
        };
        loop {
            if self.pos >= self.end || buf.is_empty() {
                return Ok(0);
            }
            if self.resp.is_none() {
                self.resp = Some(
                    self.src
                        .request_retrying(self.pos, self.end - 1)
                        .map_err(io)?,
                );
            }
            let want = buf.len().min((self.end - self.pos) as usize);
            let got = self.resp.as_mut().map(|r| r.read(&mut buf[..want]));
            let why = match got {
                Some(Ok(0)) => "connection closed early".to_owned(),
                Some(Ok(n)) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    self.src.fetched.fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Some(Err(e)) => error_chain(&e),
                None => "no response".to_owned(),
            };
            self.resp = None;
            self.failures += 1;
            if self.failures > self.src.retries {
                return Err(std::io::Error::other(format!(
                    "{}: transfer failed at byte {} after {} attempts: {why}",
                    self.src.url, self.pos, self.failures
                )));
            }
            log::warn!(
                "{}: transfer broke at byte {} ({why}); resuming, retry {}/{}",
                self.src.url,
                self.pos,
                self.failures,
                self.src.retries
            );
            self.src.backoff(self.failures).map_err(io)?;
        }
    }
}
