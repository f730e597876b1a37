//! TLS for every HTTPS connection rota makes (bundle downloads and update pollers):
//! rustls with the ring provider, no OpenSSL.
//!
//! Trust is either the built-in web roots or, when a CA file is configured, only the
//! certificates in that file (pinning). A client certificate and key give the device a
//! mutual-TLS identity. `tls-no-verify` accepts any server certificate but still checks
//! handshake signatures. [`is_tls_failure`] tells certificate and handshake errors, which
//! retrying cannot fix, from ordinary network trouble.
//!
//! A self-signed server certificate pinned in the CA file is accepted as curl (and so
//! RAUC) accepts it, even when it says `CA:TRUE` (what `openssl req -x509` makes by
//! default), which the WebPKI rules refuse as `CaUsedAsEndEntity`: the server's
//! certificate must then be byte-equal to one in the file, valid now, and valid for the
//! host name; the handshake signature is checked with its key as always.

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

/// WebPKI verification, plus the pinned self-signed case (see the module comment).
#[derive(Debug)]
struct PinnedVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let refused =
            match self
                .webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
        let ca_as_server = matches!(
            &refused,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))
                if o.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity)
        );
        if !ca_as_server
            || !self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Err(refused);
        }
        check_pinned(end_entity, server_name, now)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A pinned certificate presented by the server: trusted by being in the CA file, it
/// must still be for this host and within its validity period.
fn check_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    use rustls::CertificateError as C;
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    rustls::client::verify_server_name(&parsed, server_name)?;
    let (not_before, not_after) =
        der::validity(cert.as_ref()).ok_or(rustls::Error::InvalidCertificate(C::BadEncoding))?;
    let now = now.as_secs();
    if now < not_before {
        return Err(rustls::Error::InvalidCertificate(C::NotValidYet));
    }
    if now > not_after {
        return Err(rustls::Error::InvalidCertificate(C::Expired));
    }
    Ok(())
}

/// Just enough DER to read a certificate's validity period (RFC 5280 §4.1):
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter } … } … }`.
mod der {
    /// One tag-length-value: (tag, content, what follows).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;

    /// (notBefore, notAfter) in seconds since the Unix epoch.
    pub fn validity(cert: &[u8]) -> Option<(u64, u64)> {
        let (SEQUENCE, cert, _) = tlv(cert)? else {
            return None;
        };
        let (SEQUENCE, tbs, _) = tlv(cert)? else {
            return None;
        };
        let mut rest = tbs;
        if let (VERSION, _, after) = tlv(rest)? {
            rest = after;
        }
        // serialNumber, signature, issuer
        for _ in 0..3 {
            rest = tlv(rest)?.2;
        }
        let (SEQUENCE, validity, _) = tlv(rest)? else {
            return None;
        };
        let (t1, not_before, rest) = tlv(validity)?;
        let (t2, not_after, _) = tlv(rest)?;
        Some((time(t1, not_before)?, time(t2, not_after)?))
    }

    /// UTCTime `YYMMDDHHMMSSZ` (years 1950–2049) or GeneralizedTime `YYYYMMDDHHMMSSZ`.
    fn time(tag: u8, text: &[u8]) -> Option<u64> {
        let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
        let (year, rest) = match tag {
            UTC_TIME if text.len() == 12 => {
                let yy: u64 = text[..2].parse().ok()?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
            }
            GENERALIZED_TIME if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
            _ => return None,
        };
        if !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = |i: usize| rest[i..i + 2].parse::<u64>().ok();
        let (month, day, h, m, s) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
            return None;
        }
        Some(days_since_epoch(year, month, day)? * 86_400 + h * 3600 + m * 60 + s)
    }

    /// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
    fn days_since_epoch(year: u64, month: u64, day: u64) -> Option<u64> {
        if year < 1970 {
            return None;
        }
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let mut days: u64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum();
        const BEFORE: [u64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        days += BEFORE[(month - 1) as usize] + day - 1;
        if month > 2 && leap(year) {
            days += 1;
        }
        Some(days)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn times_convert_to_unix_seconds() {
            assert_eq!(super::time(super::UTC_TIME, b"700101000000Z"), Some(0));
            assert_eq!(
                super::time(super::UTC_TIME, b"240229120000Z"),
                Some(1_709_208_000)
            );
            assert_eq!(
                super::time(super::GENERALIZED_TIME, b"20500101000000Z"),
                Some(2_524_608_000)
            );
            assert_eq!(super::time(super::UTC_TIME, b"241301000000Z"), None);
            assert_eq!(super::time(super::UTC_TIME, b"2401010000Z"), None);
            assert_eq!(super::validity(b"\x30\x03\x30\x01"), None);
        }
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

/// The certificates of the CA file, as given (for the pinned self-signed case).
fn pinned_certs(ca: &Path) -> Result<Vec<CertificateDer<'static>>, SourceError> {
    let pem = read_pem(ca, "CA bundle")?;
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fatal(format!("CA bundle {}: {e}", ca.display())))
}

/// A client configuration for `s`, offering HTTP/1.1 by ALPN.
pub fn client_config(s: &TlsSettings<'_>) -> Result<rustls::ClientConfig, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots(s.ca)?);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fatal(format!("TLS setup: {e}")))?;
    let builder = match s.ca {
        // Pinning: a self-signed server certificate in the file is trusted as it is.
        Some(ca) if !s.no_verify => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                provider.clone(),
            )
            .build()
            .map_err(|e| fatal(format!("CA bundle {}: {e}", ca.display())))?;
            let pinned = pinned_certs(ca)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    webpki,
                    pinned,
                    provider: provider.clone(),
                }))
        }
        _ => builder.with_root_certificates(roots),
    };
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

/// A configuration that trusts no certificate, for a plain-HTTP client on a system whose
/// CA store is missing or unreadable: without a configuration of its own, reqwest builds
/// one from the system store and refuses to make the client at all ("No CA certificates
/// were loaded from the system"), so a device without ca-certificates could not install
/// from an http:// URL. No TLS connection can succeed with it: a redirect to https fails
/// with the reason the real configuration could not be made.
pub fn trust_nothing_config() -> Result<rustls::ClientConfig, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fatal(format!("TLS setup: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
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
        E::InvalidCertificate(C::NotValidYet) | E::InvalidCertificate(C::NotValidYetContext { .. }) => {
            "the server certificate is not valid yet (check the device's clock)".into()
        }
        E::InvalidCertificate(C::Other(o))
            if o.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity) =>
        {
            "the server presents a CA certificate (basicConstraints CA:TRUE) as its own and it is not pinned: put exactly that certificate into [http] ca / tls-ca, or give the server a certificate signed by a CA in that file".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pinned certificate is still held to its validity period and host name.
    #[test]
    fn a_pinned_certificate_is_checked_for_time_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem"])
            .args(["-out", "c.pem", "-days", "30", "-subj", "/CN=x"])
            .args(["-addext", "subjectAltName=DNS:localhost"])
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success());
        let cert = pinned_certs(&dir.path().join("c.pem")).unwrap().remove(0);
        let (nb, na) = der::validity(cert.as_ref()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(nb <= now + 5 && now < na, "{nb} {now} {na}");
        assert!((29 * 86_400..=31 * 86_400).contains(&(na - nb)));
        let name = ServerName::try_from("localhost").unwrap();
        let at = |s: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s));
        check_pinned(&cert, &name, at(now)).unwrap();
        assert_eq!(
            check_pinned(&cert, &name, at(na + 1)),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
            ))
        );
        assert_eq!(
            check_pinned(&cert, &name, at(nb - 1)),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYet
            ))
        );
        let other = ServerName::try_from("other.example").unwrap();
        assert!(check_pinned(&cert, &other, at(now)).is_err());
    }
}
