//! Secrets out of messages.
//!
//! Error texts end up in D-Bus `LastError`, `status.json`, the poller status and the
//! journal, which other users of the device can read; URLs and extra headers, on the other
//! hand, often carry credentials (`https://user:pw@host/…`, `…?token=…`, signed CDN links,
//! `Authorization: …`). Every message that names a URL or a header goes through this
//! module, which keeps what a reader needs to recognise the request (scheme, host, port,
//! path; the header's name) and drops the rest:
//!
//! - [`url`]: `https://user:pw@host:8443/b.rota?token=x#f` → `https://host:8443/b.rota?<redacted>#<redacted>`
//! - [`header`]: `Authorization: Bearer x` → `Authorization: <redacted>`
//! - [`text`]: every `http://` / `https://` URL inside a longer message, as [`url`] does.
//!
//! The URL itself is kept intact where it is stored to resume an install; only what is
//! shown is redacted.

/// What replaces a hidden part.
pub const REDACTED: &str = "<redacted>";

/// `scheme://host[:port]/path`, with userinfo removed and any query or fragment replaced
/// by `?<redacted>` / `#<redacted>`. Text that is not `scheme://…` (a plain path) is
/// returned unchanged. Works on the text as given, so an unparsable URL is still redacted.
pub fn url(s: &str) -> String {
    let Some(i) = s.find("://") else {
        return s.to_owned();
    };
    let scheme = &s[..i];
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return s.to_owned();
    }
    let rest = &s[i + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let tail = &rest[authority_end..];
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let mut out = format!("{scheme}://{host}{}", &tail[..path_end]);
    let hidden = &tail[path_end..];
    if hidden.starts_with('?') {
        out.push('?');
        out.push_str(REDACTED);
    }
    if hidden.contains('#') {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

/// `"Name: value"` → `"Name: <redacted>"`; text without a colon (a malformed header, which
/// may be a bare secret) becomes `<redacted>`.
pub fn header(h: &str) -> String {
    match h.split_once(':') {
        Some((name, _)) => format!("{}: {REDACTED}", name.trim()),
        None => REDACTED.to_owned(),
    }
}

/// `msg` with every `http://` and `https://` URL in it redacted as [`url`] does. A URL
/// ends at whitespace, a quote or a closing parenthesis; punctuation that ends a sentence
/// right after it (`.`, `,`, `:`, `;`) stays outside.
pub fn text(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(start) = find_url(rest) {
        out.push_str(&rest[..start]);
        let from = &rest[start..];
        let len = from
            .find(|c: char| c.is_whitespace() || "\"'`)".contains(c))
            .unwrap_or(from.len());
        let token = from[..len].trim_end_matches(['.', ',', ':', ';']);
        out.push_str(&url(token));
        rest = &from[token.len()..];
    }
    out.push_str(rest);
    out
}

/// Where the next `http://` or `https://` (any case) starts.
fn find_url(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    [lower.find("http://"), lower.find("https://")]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_scheme_host_port_and_path() {
        assert_eq!(
            url("https://updates.example.com/acme/b.rota"),
            "https://updates.example.com/acme/b.rota"
        );
        assert_eq!(url("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }

    #[test]
    fn userinfo_query_and_fragment_are_dropped() {
        assert_eq!(
            url("https://device:s3cret@host:8443/b.rota"),
            "https://host:8443/b.rota"
        );
        assert_eq!(
            url("https://host/b.rota?token=SECRET123"),
            "https://host/b.rota?<redacted>"
        );
        assert_eq!(
            url("https://host/b.rota#SECRET"),
            "https://host/b.rota#<redacted>"
        );
        assert_eq!(
            url("https://u:p@host/b.rota?token=S#frag"),
            "https://host/b.rota?<redacted>#<redacted>"
        );
        // A query straight after the host, and an '@' inside the query.
        assert_eq!(url("https://host?k=a@b"), "https://host?<redacted>");
        // Already redacted text stays as it is.
        assert_eq!(
            url("https://host/b.rota?<redacted>"),
            "https://host/b.rota?<redacted>"
        );
    }

    #[test]
    fn ipv6_hosts_survive() {
        assert_eq!(
            url("https://user:pw@[2001:db8::1]:8443/b.rota?sig=abc"),
            "https://[2001:db8::1]:8443/b.rota?<redacted>"
        );
        assert_eq!(url("http://[::1]/x"), "http://[::1]/x");
    }

    #[test]
    fn non_urls_are_left_alone() {
        for s in [
            "/var/lib/rota/b.rota",
            "b.rota?x=1",
            "",
            "not a url: ://x?y",
            "1 2://x",
        ] {
            assert_eq!(url(s), s);
        }
    }

    #[test]
    fn unparsable_urls_are_still_redacted() {
        assert_eq!(
            url("https://u:pw@host:notaport/x?token=T"),
            "https://host:notaport/x?<redacted>"
        );
    }

    #[test]
    fn headers_keep_only_their_name() {
        assert_eq!(
            header("Authorization: TargetToken abc"),
            "Authorization: <redacted>"
        );
        assert_eq!(header("X-Fleet-Token:abc:def"), "X-Fleet-Token: <redacted>");
        assert_eq!(header("Bearer SECRET"), "<redacted>");
    }

    #[test]
    fn urls_inside_messages_are_redacted() {
        assert_eq!(
            text("error sending request for url (https://h/b.rota?token=SECRET): timed out"),
            "error sending request for url (https://h/b.rota?<redacted>): timed out"
        );
        assert_eq!(
            text("GET http://u:p@h:1/x?t=1: answered 404. See HTTPS://h/y#z."),
            "GET http://h:1/x?<redacted>: answered 404. See HTTPS://h/y#<redacted>."
        );
        assert_eq!(text("no url here"), "no url here");
        let once = text("\"https://h/b?x=1\" and https://h/c");
        assert_eq!(once, "\"https://h/b?<redacted>\" and https://h/c");
        assert_eq!(text(&once), once);
    }
}
