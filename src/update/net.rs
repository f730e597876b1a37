//! The pollers' HTTP client: small JSON requests with the `[http]` TLS settings, bounded
//! answer sizes and time, and errors sorted into "try again later" and "will not heal".
//! Redirects go through [`crate::source::redirect`] like the bundle reader's; messages
//! show URLs through [`crate::source::redact`].

use crate::config::CrossOriginRedirects;
use crate::source::http::{error_chain, ClientTls, HttpOptions};
use crate::source::redirect::Hops;
use crate::source::{redact, tls};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Largest JSON answer read (a feed or a hawkBit resource is a few KiB).
pub const MAX_JSON: usize = 1 << 20;
/// Longest time one API request may take from connect to the last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// Network trouble or a server-side error: worth another try later.
    #[error("{0}")]
    Transient(String),
    /// The server refused the request (4xx other than 408/409/429): retrying the same
    /// request will not help.
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// A certificate or handshake problem.
    #[error("{0}")]
    Tls(String),
    /// The answer is not what the protocol says.
    #[error("{0}")]
    Invalid(String),
}

impl NetError {
    pub fn status(&self) -> Option<u16> {
        match self {
            NetError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    /// Extra headers (`[http] headers`, the hawkBit token): sent until a redirect leaves
    /// the first origin.
    headers: HeaderMap,
    cross_origin: CrossOriginRedirects,
    /// Why no TLS client could be set up (an http server with a bad `ca`): refuses https hops.
    tls_error: Option<String>,
}

impl Api {
    /// A client with the `[http]` TLS settings and `headers` on every request. `https`:
    /// the server is reached over TLS (a plain-HTTP server needs no trust anchors).
    pub fn new(opts: &HttpOptions, https: bool) -> Result<Api, String> {
        tls::install_ring_provider();
        let headers = opts.header_map().map_err(|e| e.to_string())?;
        let mut defaults = HeaderMap::new();
        defaults.insert(
            ACCEPT,
            HeaderValue::from_static("application/hal+json, application/json"),
        );
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("rota/", env!("CARGO_PKG_VERSION")))
            .default_headers(defaults)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.stall_timeout)
            .timeout(REQUEST_TIMEOUT);
        let mut tls_error = None;
        match opts.client_tls(https).map_err(|e| e.to_string())? {
            ClientTls::Ready(c) => builder = builder.tls_backend_preconfigured(*c),
            ClientTls::Unavailable(e) => {
                tls_error = Some(e);
                // Else reqwest refuses to build a client on a system without CA store.
                let c = tls::trust_nothing_config().map_err(|e| e.to_string())?;
                builder = builder.tls_backend_preconfigured(c);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("HTTP client: {}", error_chain(&e)))?;
        Ok(Api {
            client,
            headers,
            cross_origin: opts.cross_origin_redirects,
            tls_error,
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, NetError> {
        let shown = redact::url(url);
        let first = Url::parse(url)
            .map_err(|e| NetError::Invalid(format!("{method} {shown}: bad URL: {e}")))?;
        let mut hops = Hops::new(first, method.clone(), self.cross_origin);
        let resp = loop {
            let mut req = self.client.request(hops.method.clone(), hops.url.clone());
            if hops.extra_headers() {
                req = req.headers(self.headers.clone());
            }
            req = req.headers(headers.clone());
            if let (Some(b), true) = (body, hops.body()) {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(serde_json::to_vec(b).unwrap_or_default());
            }
            let resp = req.send().await.map_err(|e| {
                let e = e.without_url();
                let at = format!("{shown}{}", hops.note());
                if let Some(why) = tls::tls_failure(&e) {
                    NetError::Tls(format!("TLS failure talking to {at}: {why}"))
                } else {
                    NetError::Transient(format!("{method} {at}: {}", error_chain(&e)))
                }
            })?;
            let redirected = hops
                .follow(resp.status(), resp.headers().get(LOCATION))
                .map_err(|m| NetError::Refused {
                    status: resp.status().as_u16(),
                    message: format!("{method} {m}"),
                })?;
            if !redirected {
                break resp;
            }
            if let (Some(why), "https") = (&self.tls_error, hops.url.scheme()) {
                return Err(NetError::Tls(format!(
                    "{method} {shown}: cannot follow the redirect to {}: TLS setup failed: {why}",
                    redact::url(hops.url.as_str())
                )));
            }
        };
        let url = format!("{shown}{}", hops.note());
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_limited(resp, 512).await.unwrap_or_default();
        let said = redact::text(
            &String::from_utf8_lossy(&body)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        );
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        };
        let message = format!("{method} {url} answered {status}{said}");
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::CONFLICT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Err(NetError::Transient(message))
        } else {
            Err(NetError::Refused {
                status: status.as_u16(),
                message,
            })
        }
    }

    /// GET and parse a JSON answer of at most [`MAX_JSON`] bytes.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, NetError> {
        let resp = self.send(Method::GET, url, HeaderMap::new(), None).await?;
        let body = read_limited(resp, MAX_JSON)
            .await
            .map_err(|e| NetError::Transient(format!("GET {}: {e}", redact::url(url))))?;
        if body.len() >= MAX_JSON {
            return Err(NetError::Invalid(format!(
                "GET {}: the answer is larger than {MAX_JSON} bytes",
                redact::url(url)
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            NetError::Invalid(format!(
                "GET {}: not the expected JSON: {e}",
                redact::url(url)
            ))
        })
    }

    /// POST or PUT a JSON body; the answer's body is not needed.
    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<(), NetError> {
        let resp = self.send(method, url, HeaderMap::new(), Some(body)).await?;
        let _ = read_limited(resp, 4096).await;
        Ok(())
    }

    /// The size of the file at `url`, from a one-byte Range request (as the bundle source does).
    pub async fn size_of(&self, url: &str, headers: HeaderMap) -> Result<u64, NetError> {
        let mut h = headers;
        h.insert(RANGE, HeaderValue::from_static("bytes=0-0"));
        let resp = self.send(Method::GET, url, h, None).await?;
        let status = resp.status();
        let cr = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let _ = read_limited(resp, 16).await;
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(NetError::Invalid(format!(
                "{} answered a Range request with {status}: the server does not support Range requests",
                redact::url(url)
            )));
        }
        cr.rsplit('/')
            .next()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| {
                NetError::Invalid(format!(
                    "{} sent no usable Content-Range ({cr:?})",
                    redact::url(url)
                ))
            })
    }
}

/// Reads at most `limit` bytes of a body (a longer one is cut at `limit`).
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(resp.content_length().unwrap_or(0).min(limit as u64) as usize);
    while let Some(c) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        let room = limit - out.len();
        out.extend_from_slice(&c[..c.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
