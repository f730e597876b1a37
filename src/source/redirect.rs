//! Redirects, followed by hand for both HTTP clients (the bundle reader and the pollers).
//!
//! Both clients are built with `redirect::Policy::none()`: reqwest's own policy would carry
//! our extra headers (`[http] headers`, an install's `http-headers`, the hawkBit token) to
//! any host a server names, and would follow https → http. Instead each 3xx answer goes
//! through [`Hops::follow`], which decides:
//!
//! - `Location` is resolved against the current URL (relative links work);
//! - https → http is refused, always: the request (and its token) would travel in clear
//!   and the `[http] ca` pinning would no longer apply; http → https is fine;
//! - a hop to another origin (scheme, host or port) drops every extra header, or is
//!   refused with `[http] cross-origin-redirects = "refuse"`; once dropped, the headers
//!   stay dropped for the rest of the chain, even if it comes back;
//! - same-origin hops keep the headers;
//! - at most [`MAX_REDIRECTS`] hops;
//! - 303, and 301/302 after a POST, continue as a GET without a body (as browsers do);
//!   307/308 repeat the method and body.
//!
//! No `Referer` is sent, so the first URL (which may hold a signed query) stays private.
//! Messages name URLs through [`super::redact`].

use super::redact;
use crate::config::CrossOriginRedirects;
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode, Url};

/// Longest redirect chain followed.
pub const MAX_REDIRECTS: u32 = 10;

/// One request on its way through redirects.
#[derive(Debug, Clone)]
pub struct Hops {
    /// Where the request goes next.
    pub url: Url,
    /// With which method.
    pub method: Method,
    first: Url,
    cross_origin: CrossOriginRedirects,
    count: u32,
    extra_headers: bool,
    body: bool,
}

impl Hops {
    pub fn new(url: Url, method: Method, cross_origin: CrossOriginRedirects) -> Hops {
        Hops {
            first: url.clone(),
            url,
            method,
            cross_origin,
            count: 0,
            extra_headers: true,
            body: true,
        }
    }

    /// Whether the next request carries the extra (configured, install, token) headers.
    pub fn extra_headers(&self) -> bool {
        self.extra_headers
    }

    /// Whether the next request carries the body (false after a hop that turned it into a GET).
    pub fn body(&self) -> bool {
        self.body
    }

    /// The redirects so far, for messages: empty, or ` (redirected to <url>)`.
    pub fn note(&self) -> String {
        if self.count == 0 {
            String::new()
        } else {
            format!(" (redirected to {})", redact::url(self.url.as_str()))
        }
    }

    /// Looks at an answer. `Ok(true)`: it is a redirect, [`url`](Self::url) and the rest
    /// now describe the next request. `Ok(false)`: not a redirect to follow (including a
    /// 3xx without `Location`); the caller handles the answer. `Err`: a redirect that must
    /// not be followed, with the reason.
    pub fn follow(
        &mut self,
        status: StatusCode,
        location: Option<&HeaderValue>,
    ) -> Result<bool, String> {
        if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
            return Ok(false);
        }
        let Some(location) = location else {
            return Ok(false);
        };
        let from = redact::url(self.url.as_str());
        let location = location
            .to_str()
            .map_err(|_| format!("{from} answered {status} with a Location that is not text"))?;
        let next = self.url.join(location.trim()).map_err(|e| {
            format!(
                "{from} answered {status} with an unusable Location {:?}: {e}",
                redact::url(location)
            )
        })?;
        let to = redact::url(next.as_str());
        match (self.url.scheme(), next.scheme()) {
            ("https", "http") => {
                return Err(format!(
                    "refusing redirect from {from} to {to} (would send the request in clear)"
                ))
            }
            (_, "http" | "https") => {}
            (_, other) => {
                return Err(format!(
                    "refusing redirect from {from} to {to}: {other:?} is not http(s)"
                ))
            }
        }
        if self.count >= MAX_REDIRECTS {
            return Err(format!(
                "{} redirected more than {MAX_REDIRECTS} times (last from {from} to {to})",
                redact::url(self.first.as_str())
            ));
        }
        if next.origin() != self.url.origin() {
            match self.cross_origin {
                CrossOriginRedirects::Refuse => {
                    return Err(format!(
                        "refusing cross-origin redirect from {from} to {to} ([http] cross-origin-redirects = \"refuse\")"
                    ))
                }
                CrossOriginRedirects::StripHeaders => {
                    if self.extra_headers {
                        log::info!(
                            "redirect from {from} to another origin, {to}: sending it without the extra headers"
                        );
                    }
                    self.extra_headers = false;
                }
            }
        }
        let to_get = status == StatusCode::SEE_OTHER
            || (matches!(status.as_u16(), 301 | 302) && self.method == Method::POST);
        if to_get && self.method != Method::HEAD {
            self.method = Method::GET;
            self.body = false;
        }
        self.count += 1;
        self.url = next;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hops(url: &str) -> Hops {
        Hops::new(
            Url::parse(url).unwrap(),
            Method::GET,
            CrossOriginRedirects::StripHeaders,
        )
    }

    fn loc(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn only_redirect_statuses_with_a_location_are_followed() {
        let mut h = hops("http://a/x");
        assert!(!h.follow(StatusCode::OK, Some(&loc("/y"))).unwrap());
        assert!(!h
            .follow(StatusCode::NOT_MODIFIED, Some(&loc("/y")))
            .unwrap());
        assert!(!h.follow(StatusCode::FOUND, None).unwrap());
        assert_eq!(h.url.as_str(), "http://a/x");
        assert_eq!(h.note(), "");
    }

    #[test]
    fn same_origin_keeps_headers_and_relative_locations_resolve() {
        let mut h = hops("https://a:8443/dir/x?token=T");
        assert!(h.follow(StatusCode::FOUND, Some(&loc("y.rota"))).unwrap());
        assert_eq!(h.url.as_str(), "https://a:8443/dir/y.rota");
        assert!(h.extra_headers());
        assert!(h
            .follow(
                StatusCode::MOVED_PERMANENTLY,
                Some(&loc("https://a:8443/z"))
            )
            .unwrap());
        assert!(h.extra_headers());
        assert_eq!(h.note(), " (redirected to https://a:8443/z)");
    }

    #[test]
    fn another_origin_strips_headers_for_good() {
        // Another host, another port, another scheme (http → https is allowed).
        for target in ["http://b/x", "http://a:81/x", "https://a/x"] {
            let mut h = hops("http://a/x");
            assert!(h.follow(StatusCode::FOUND, Some(&loc(target))).unwrap());
            assert!(!h.extra_headers(), "{target}");
            assert_eq!(h.url.as_str(), target);
        }
        // Coming back to the first origin does not bring them back.
        let mut h = hops("http://a/x");
        assert!(h
            .follow(StatusCode::FOUND, Some(&loc("http://b/x")))
            .unwrap());
        assert!(h
            .follow(StatusCode::FOUND, Some(&loc("http://a/y")))
            .unwrap());
        assert!(!h.extra_headers());
        // The default port written out is the same origin.
        let mut h = hops("https://a/x");
        assert!(h
            .follow(StatusCode::FOUND, Some(&loc("https://a:443/y")))
            .unwrap());
        assert!(h.extra_headers());
    }

    #[test]
    fn downgrades_and_other_schemes_are_refused() {
        let mut h = hops("https://a/x?token=SECRET");
        let e = h
            .follow(StatusCode::FOUND, Some(&loc("http://a/x?token=SECRET")))
            .unwrap_err();
        assert_eq!(
            e,
            "refusing redirect from https://a/x?<redacted> to http://a/x?<redacted> (would send the request in clear)"
        );
        let e = hops("http://a/x")
            .follow(StatusCode::FOUND, Some(&loc("file:///etc/shadow")))
            .unwrap_err();
        assert!(e.contains("\"file\" is not http(s)"), "{e}");
    }

    #[test]
    fn refuse_mode_refuses_other_origins_only() {
        let mut h = Hops::new(
            Url::parse("https://a/x").unwrap(),
            Method::GET,
            CrossOriginRedirects::Refuse,
        );
        assert!(h.follow(StatusCode::FOUND, Some(&loc("/y"))).unwrap());
        let e = h
            .follow(StatusCode::FOUND, Some(&loc("https://cdn/y")))
            .unwrap_err();
        assert!(e.contains("refusing cross-origin redirect"), "{e}");
        assert!(e.contains("cross-origin-redirects = \"refuse\""), "{e}");
    }

    #[test]
    fn chains_are_bounded() {
        let mut h = hops("http://a/0");
        for i in 1..=MAX_REDIRECTS {
            assert!(h
                .follow(StatusCode::FOUND, Some(&loc(&format!("/{i}"))))
                .unwrap());
        }
        let e = h.follow(StatusCode::FOUND, Some(&loc("/x"))).unwrap_err();
        assert!(e.contains("more than 10 times"), "{e}");
    }

    #[test]
    fn methods_follow_the_status() {
        let post = |status| {
            let mut h = Hops::new(
                Url::parse("http://a/x").unwrap(),
                Method::POST,
                CrossOriginRedirects::StripHeaders,
            );
            h.follow(status, Some(&loc("/y"))).unwrap();
            (h.method.clone(), h.body())
        };
        assert_eq!(post(StatusCode::SEE_OTHER), (Method::GET, false));
        assert_eq!(post(StatusCode::FOUND), (Method::GET, false));
        assert_eq!(post(StatusCode::TEMPORARY_REDIRECT), (Method::POST, true));
        assert_eq!(post(StatusCode::PERMANENT_REDIRECT), (Method::POST, true));
    }
}
