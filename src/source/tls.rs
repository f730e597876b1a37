//! TLS for every HTTPS connection rota makes (bundle downloads and update pollers):
//! rustls with the ring provider, no OpenSSL.
//!
//! Trust is either the built-in web roots or, when a CA file is configured, only the
//! certificates in that file (pinning). A client certificate and key give the device a
//! mutual-TLS identity. `tls-no-verify` accepts any server certificate but still checks
//! handshake signatures. [`is_tls_failure`] tells certificate and handshake errors, which
//! retrying cannot fix, from ordinary network trouble.

use super::SourceError;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;

/// Largest PEM file (CA bundle, certificate, key) read; a CA bundle of all web roots is
/// about 250 KiB, so this leaves ample room while refusing a wrong multi-GiB file.
const MAX_PEM_FILE: u64 = 4 << 20;

/// What the TLS side needs to know; a view of [`super::http::HttpOptions`].
#[derive(Debug, Clone, Copy)]
pub struct TlsSettings<'a> {
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub no_verify: bool,
}

fn fatal(m: impl Into<String>) -> SourceError {
    SourceError::Fatal(m.into())
}

/// Reads a PEM file: a regular file of at most [`MAX_PEM_FILE`] bytes, never blocking
/// (these paths may come from an install request, see [`crate::fsutil::read_regular`]).
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, SourceError> {
    crate::fsutil::read_regular(path, MAX_PEM_FILE)
        .map_err(|e| fatal(format!("{what} {}: {e}", path.display())))
}

/// Accepts any server certificate (`tls-no-verify`); handshake signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The trust anchors: the CA file's certificates only (pinning), or the system store
/// (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the distribution's bundle, e.g.
/// `/etc/ssl/certs/ca-certificates.crt`), so the CAs are updated with the OS image.
fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, SourceError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(ca) = ca else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(fatal(format!(
                "no trusted CA certificates in the system store{why}; install ca-certificates or set [http] ca / tls-ca"
            )));
        }
        return Ok(roots);
    };
    let pem = read_pem(ca, "CA bundle")?;
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.map_err(|e| fatal(format!("CA bundle {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| fatal(format!("CA bundle {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(fatal(format!(
            "CA bundle {} holds no PEM certificate",
            ca.display()
        )));
    }
    Ok(roots)
}

/// A client configuration for `s`, offering HTTP/1.1 by ALPN.
pub fn client_config(s: &TlsSettings<'_>) -> Result<rustls::ClientConfig, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fatal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots(s.ca)?);
    let mut config = match (s.cert, s.key) {
        (Some(cert), Some(key)) => {
            let pem = read_pem(cert, "client certificate")?;
            let chain = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fatal(format!("client certificate {}: {e}", cert.display())))?;
            if chain.is_empty() {
                return Err(fatal(format!(
                    "client certificate {} holds no PEM certificate",
                    cert.display()
                )));
            }
            let kpem = read_pem(key, "client key")?;
            let key_der = rustls_pemfile::private_key(&mut &kpem[..])
                .map_err(|e| fatal(format!("client key {}: {e}", key.display())))?
                .ok_or_else(|| {
                    fatal(format!("client key {} holds no private key", key.display()))
                })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                fatal(format!(
                    "client certificate {} and key {} do not go together: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(fatal(
                "a client certificate is configured without its key (tls-key / [http] key)",
            ))
        }
        (None, Some(_)) => {
            return Err(fatal(
                "a client key is configured without its certificate (tls-cert / [http] cert)",
            ))
        }
    };
    if s.no_verify {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(NoVerify(provider)));
    }
    // rota speaks HTTP/1.1 only (reqwest is built without h2; see Cargo.toml).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// reqwest built without a default provider needs one installed process-wide, even for
/// plain HTTP: ring, as for every TLS connection rota makes.
pub fn install_ring_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS error inside an error chain, if any: a certificate the trust anchors do not
/// cover, a client certificate the server refused, a failed handshake. These do not heal
/// by retrying.
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(t));
        }
        // io::Error hides a custom inner error from source(); step into it directly.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Whether `e` is a TLS failure (see [`tls_failure`]).
pub fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    tls_failure(e).is_some()
}

fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the server certificate is not signed by a trusted CA (check [http] ca / tls-ca)".into()
        }
        E::InvalidCertificate(C::NotValidForName)
        | E::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            "the server certificate is not valid for this host name".into()
        }
        E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => {
            "the server certificate has expired".into()
        }
        E::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate (set [http] cert and key / tls-cert and tls-key)".into()
        }
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::AccessDenied),
        ) => format!("the server refused the client certificate ({a:?})"),
        other => other.to_string(),
    }
}
