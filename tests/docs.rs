//! The reference docs match the code:
//! - every key `system.toml` accepts is documented in `docs/config.md`, and nothing else
//!   is; the key list is walked out of the parser itself ([`config_keys`] drives the
//!   `Deserialize` impl of `Config`), so a new field cannot be forgotten; the complete
//!   example at the end of the page parses and names every key;
//! - every D-Bus member the running service serves (on a private dbus-daemon) is in the
//!   shipped `dbus/*.xml` with the same signature and a `DocString` annotation, and is
//!   documented in `docs/dbus.md` with its signature.
//!
//! Regenerate the XML files from the service with `ROTA_REGEN_XML=1`.

mod support;
use std::collections::BTreeSet;
use std::path::Path;
use support::gateway::Gateway;

fn repo(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

// ---------------------------------------------------------------------------------------
// system.toml keys

/// Every key the parser accepts, as `section.key`; map levels (`[slot.<class>.<index>]`,
/// `[mcu.<name>]`) are `*`: `slot.*.*.device`.
fn config_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    <rota::config::Config as serde::Deserialize>::deserialize(walk::Walker {
        path: String::new(),
        keys: &mut keys,
    })
    .unwrap_or_else(|e| panic!("cannot walk the config's keys: {e}"));
    keys
}

/// A `Deserializer` that answers every struct with all its fields, every map with one
/// entry `*`, every option with `Some`, and records the path of each value that is not a
/// table (a key). Values are the simplest the type takes (`"1s"` for strings, so
/// durations parse; an enum's first variant).
mod walk {
    use serde::de::{self, IntoDeserializer, Visitor};
    use std::collections::BTreeSet;

    #[derive(Debug)]
    pub struct Error(String);
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Error {}
    impl de::Error for Error {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Error(msg.to_string())
        }
    }

    pub struct Walker<'k> {
        pub path: String,
        pub keys: &'k mut BTreeSet<String>,
    }

    impl Walker<'_> {
        fn leaf(self) {
            self.keys.insert(self.path.clone());
        }
        fn child(&mut self, name: &str) -> Walker<'_> {
            let path = if self.path.is_empty() {
                name.to_owned()
            } else {
                format!("{}.{name}", self.path)
            };
            Walker {
                path,
                keys: self.keys,
            }
        }
    }

    macro_rules! numbers {
        ($($m:ident)*) => {$(
            fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
                self.leaf();
                v.visit_u64(1)
            }
        )*};
    }

    impl<'de> de::Deserializer<'de> for Walker<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error(format!(
                "{}: an untyped value (flatten, untagged?): the walker cannot follow it",
                self.path
            )))
        }
        numbers!(deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
                 deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64);
        fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_f64(1.0)
        }
        fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_f64(1.0)
        }
        fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_bool(true)
        }
        fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_char('x')
        }
        fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            let path = self.path.clone();
            self.leaf();
            v.visit_str::<Error>("1s")
                .map_err(|e| Error(format!("{path}: no value for it: {e}")))
        }
        fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_str(v)
        }
        fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_bytes(b"x")
        }
        fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_bytes(v)
        }
        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_some(self)
        }
        fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_unit()
        }
        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            v: V,
        ) -> Result<V::Value, Error> {
            self.deserialize_unit(v)
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            v: V,
        ) -> Result<V::Value, Error> {
            v.visit_newtype_struct(self)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_seq(de::value::SeqDeserializer::<_, Error>::new(
                std::iter::empty::<()>(),
            ))
        }
        fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Error> {
            self.deserialize_seq(v)
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: usize,
            v: V,
        ) -> Result<V::Value, Error> {
            self.deserialize_seq(v)
        }
        fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_map(Entries {
                walker: self,
                names: &["*"],
                at: 0,
            })
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            v.visit_map(Entries {
                walker: self,
                names: fields,
                at: 0,
            })
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            let first = variants.first().copied().unwrap_or("");
            self.leaf();
            v.visit_enum(IntoDeserializer::<Error>::into_deserializer(first))
        }
        fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.deserialize_any(v)
        }
        fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_unit()
        }
    }

    /// A struct's fields or a map's one `*` entry, each value walked under its name.
    struct Entries<'k> {
        walker: Walker<'k>,
        names: &'static [&'static str],
        at: usize,
    }

    impl<'de> de::MapAccess<'de> for Entries<'_> {
        type Error = Error;
        fn next_key_seed<K: de::DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            let Some(name) = self.names.get(self.at) else {
                return Ok(None);
            };
            seed.deserialize(IntoDeserializer::<Error>::into_deserializer(*name))
                .map(Some)
        }
        fn next_value_seed<V: de::DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Error> {
            let name = self.names[self.at];
            self.at += 1;
            seed.deserialize(self.walker.child(name))
        }
    }
}

/// `section.key` of each `### \`key\`` under a `## \`[section]\`` heading of config.md;
/// placeholders (`<class>`) become `*`.
fn documented_keys(md: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut section: Option<String> = None;
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = backticked(h)
                .and_then(|t| t.strip_prefix('[')?.strip_suffix(']').map(str::to_owned))
                .map(|s| {
                    s.split('.')
                        .map(|p| if p.starts_with('<') { "*" } else { p })
                        .collect::<Vec<_>>()
                        .join(".")
                });
        } else if let (Some(h), Some(s)) = (line.strip_prefix("### "), &section) {
            if let Some(key) = backticked(h) {
                out.insert(format!("{s}.{key}"));
            }
        }
    }
    out
}

/// The first `` `...` `` span of a line.
fn backticked(line: &str) -> Option<&str> {
    let start = line.find('`')? + 1;
    let len = line[start..].find('`')?;
    Some(&line[start..start + len])
}

/// The last ```toml block of config.md: the complete example.
fn example_file(md: &str) -> String {
    let start = md
        .rfind("```toml\n")
        .expect("config.md has a ```toml example")
        + 8;
    let len = md[start..].find("```").expect("the example block ends");
    md[start..start + len].to_owned()
}

#[test]
fn the_key_walk_finds_the_parser_s_keys() {
    let keys = config_keys();
    // Spot checks of each kind of value: nested map, option of a table, renamed field,
    // enum, duration, list.
    for k in [
        "system.compatible",
        "system.version-scheme",
        "bootloader.type",
        "slot.*.*.device",
        "slot.*.*.parent",
        "mcu.*.timeout",
        "http.cross-origin-redirects",
        "http.headers",
        "install.read-back",
        "update.poll",
        "update.target-token",
    ] {
        assert!(keys.contains(k), "{k} not in {keys:?}");
    }
    // And they are what the parser takes: each one, set alone in its section, is
    // accepted or refused for its value, never as an unknown key.
    let base = "[system]\ncompatible = \"x\"\n";
    for k in &keys {
        let parts: Vec<&str> = k.split('.').collect();
        let (table, key) = parts.split_at(parts.len() - 1);
        let table = table
            .iter()
            .map(|p| if *p == "*" { "n0" } else { p })
            .collect::<Vec<_>>()
            .join(".");
        let text = if table == "system" {
            format!("{base}{} = 1\n", key[0])
        } else {
            format!("{base}[{table}]\n{} = 1\n", key[0])
        };
        let err = match rota::config::Config::parse(&text, Path::new("x.toml")) {
            Ok(_) => continue,
            Err(e) => e.to_string(),
        };
        assert!(!err.contains("unknown field"), "{k}: {err}");
    }
    // A key the parser does not know is refused.
    let err = rota::config::Config::parse(&format!("{base}[http]\nretry = 1\n"), Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn every_config_key_is_documented() {
    let md = read("docs/config.md");
    let keys = config_keys();
    let documented = documented_keys(&md);
    let missing: Vec<_> = keys.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not document {missing:?} (a `### \\`key\\`` under the section's `## \\`[section]\\`` heading)"
    );
    let stale: Vec<_> = documented.difference(&keys).collect();
    assert!(
        stale.is_empty(),
        "docs/config.md documents keys the parser does not take: {stale:?}"
    );
}

#[test]
fn the_complete_example_parses_and_names_every_key() {
    let md = read("docs/config.md");
    let example = example_file(&md);
    let dir = tempfile::tempdir().unwrap();
    let cfg = rota::config::Config::parse(&example, &dir.path().join("system.toml"))
        .unwrap_or_else(|e| panic!("the example in docs/config.md does not parse: {e}"));
    assert!(cfg.update.is_some() && !cfg.mcu.is_empty() && cfg.slots().len() >= 4);
    // Each key appears in it, set or commented out (`# key = ...`).
    let mut section = String::new();
    let mut seen = BTreeSet::new();
    for line in example.lines() {
        let l = line.trim_start_matches('#').trim();
        if let Some(t) = l.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = t
                .split('.')
                .enumerate()
                .map(|(i, p)| match (t.split('.').next(), i) {
                    (Some("slot"), 1 | 2) | (Some("mcu"), 1) => "*",
                    _ => p,
                })
                .collect::<Vec<_>>()
                .join(".");
        } else if let Some((k, _)) = l.split_once(" = ") {
            if !k.contains(' ') {
                seen.insert(format!("{section}.{k}"));
            }
        }
    }
    let missing: Vec<_> = config_keys().difference(&seen).cloned().collect();
    assert!(
        missing.is_empty(),
        "the example in docs/config.md lacks {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------
// D-Bus

/// One method, signal or property.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    kind: &'static str,
    name: String,
    /// (name, type, direction) of each argument.
    args: Vec<(String, String, String)>,
    /// Property: type and access.
    ty: String,
    access: String,
    /// Annotations other than the doc string.
    annotations: Vec<(String, String)>,
    doc: String,
}

impl Member {
    /// How docs/dbus.md writes it: `Install(s source, a{sv} options) → s transaction`,
    /// `Completed(s transaction, i result, s message)`.
    fn signature(&self) -> String {
        if self.kind == "signal" {
            let args: Vec<String> = self
                .args
                .iter()
                .map(|(n, t, _)| format!("{t} {n}"))
                .collect();
            return format!("{}({})", self.name, args.join(", "));
        }
        let list = |dir: &str| {
            self.args
                .iter()
                .filter(|a| a.2 == dir)
                .map(|(n, t, _)| format!("{t} {n}"))
                .collect::<Vec<_>>()
        };
        let ins = list("in").join(", ");
        let outs = list("out");
        match outs.len() {
            0 => format!("{}({ins})", self.name),
            1 => format!("{}({ins}) → {}", self.name, outs[0]),
            _ => format!("{}({ins}) → ({})", self.name, outs.join(", ")),
        }
    }
}

/// A tag or comment of an introspection document.
enum Token {
    Open(String, Vec<(String, String)>, bool),
    Close(String),
    Comment(String),
}

fn tokens(xml: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        rest = &rest[i..];
        if let Some(c) = rest.strip_prefix("<!--") {
            let end = c.find("-->").expect("comment ends");
            out.push(Token::Comment(c[..end].to_owned()));
            rest = &c[end + 3..];
            continue;
        }
        let end = rest.find('>').expect("tag ends");
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            out.push(Token::Close(name.trim().to_owned()));
            continue;
        }
        let empty = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, mut attrs_text) = tag.split_once(char::is_whitespace).unwrap_or((tag, ""));
        let mut attrs = Vec::new();
        while let Some(eq) = attrs_text.find("=\"") {
            let key = attrs_text[..eq].trim().to_owned();
            let v = &attrs_text[eq + 2..];
            let close = v.find('"').expect("attribute ends");
            attrs.push((key, unescape(&v[..close])));
            attrs_text = &v[close + 1..];
        }
        out.push(Token::Open(name.to_owned(), attrs, empty));
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Comment text as one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

const DOC_STRING: &str = "org.freedesktop.DBus.DocString";

/// The members of `iface` in an introspection document. A member's doc is its
/// `DocString` annotation, or the comment right before it (how zbus serves doc comments).
fn members(xml: &str, iface: &str) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::new();
    let mut inside = false;
    let mut comment = String::new();
    let mut open: Option<Member> = None;
    let attr = |a: &[(String, String)], k: &str| {
        a.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for t in tokens(xml) {
        match t {
            Token::Open(name, a, empty) if name == "interface" => {
                inside = attr(&a, "name") == iface;
                assert!(!empty);
            }
            Token::Close(name) if name == "interface" => inside = false,
            _ if !inside => {}
            Token::Comment(c) => comment = one_line(&c),
            Token::Open(kind, a, empty)
                if matches!(kind.as_str(), "method" | "signal" | "property") =>
            {
                let m = Member {
                    kind: match kind.as_str() {
                        "method" => "method",
                        "signal" => "signal",
                        _ => "property",
                    },
                    name: attr(&a, "name"),
                    args: Vec::new(),
                    ty: attr(&a, "type"),
                    access: attr(&a, "access"),
                    annotations: Vec::new(),
                    doc: std::mem::take(&mut comment),
                };
                if empty {
                    out.push(m);
                } else {
                    open = Some(m);
                }
            }
            Token::Open(tag, a, _) => {
                let m = open
                    .as_mut()
                    .unwrap_or_else(|| panic!("<{tag}> outside a member"));
                match tag.as_str() {
                    "arg" => {
                        let dir = match (attr(&a, "direction"), m.kind) {
                            (d, _) if !d.is_empty() => d,
                            (_, "method") => "in".to_owned(),
                            _ => "out".to_owned(),
                        };
                        m.args.push((attr(&a, "name"), attr(&a, "type"), dir));
                    }
                    "annotation" if attr(&a, "name") == DOC_STRING => {
                        m.doc = one_line(&attr(&a, "value"))
                    }
                    "annotation" => m.annotations.push((attr(&a, "name"), attr(&a, "value"))),
                    other => panic!("unexpected <{other}> in {}", m.name),
                }
            }
            Token::Close(tag) if matches!(tag.as_str(), "method" | "signal" | "property") => {
                out.extend(open.take());
            }
            Token::Close(_) => {}
        }
    }
    out
}

/// The shipped file for `iface`: its members, each with a DocString annotation.
fn render(iface: &str, dest: &str, path: &str, members: &[Member]) -> String {
    let mut x = format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n\
         <!-- {iface} at {path} on {dest}, as served by `rota service`\n     \
         (busctl introspect --xml-interface {dest} {path}); generated by tests/docs.rs\n     \
         (ROTA_REGEN_XML=1) from the doc comments of src/service. See docs/dbus.md. -->\n\
         <node>\n  <interface name=\"{iface}\">\n"
    );
    for m in members {
        let mut head = format!("    <{} name=\"{}\"", m.kind, m.name);
        if m.kind == "property" {
            head.push_str(&format!(" type=\"{}\" access=\"{}\"", m.ty, m.access));
        }
        x.push_str(&head);
        x.push_str(">\n");
        x.push_str(&format!(
            "      <annotation name=\"{DOC_STRING}\" value=\"{}\"/>\n",
            escape(&m.doc)
        ));
        for (n, v) in &m.annotations {
            x.push_str(&format!(
                "      <annotation name=\"{n}\" value=\"{}\"/>\n",
                escape(v)
            ));
        }
        for (n, t, d) in &m.args {
            let dir = if m.kind == "method" {
                format!(" direction=\"{d}\"")
            } else {
                String::new()
            };
            x.push_str(&format!("      <arg name=\"{n}\" type=\"{t}\"{dir}/>\n"));
        }
        x.push_str(&format!("    </{}>\n", m.kind));
    }
    x.push_str("  </interface>\n</node>\n");
    x
}

/// The lines of docs/dbus.md under `## \`iface\``, up to the next `## `.
fn section<'a>(md: &'a str, iface: &str) -> Option<&'a str> {
    let head = format!("## `{iface}`");
    let start = md.find(&head)?;
    let body = &md[start + head.len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    Some(&body[..end])
}

/// What a member's entry in docs/dbus.md must contain: methods and signals a `### `
/// heading with the signature in backticks, properties a table row `| \`Name\` | \`type\` |`.
fn documented(sec: &str, m: &Member) -> bool {
    match m.kind {
        "property" => sec
            .lines()
            .any(|l| l.starts_with(&format!("| `{}` | `{}` |", m.name, m.ty))),
        _ => sec
            .lines()
            .filter(|l| l.starts_with("### "))
            .any(|l| l.contains(&format!("`{}`", m.signature()))),
    }
}

#[test]
fn every_dbus_member_is_shipped_annotated_and_documented() {
    let mut gw = Gateway::new(true);
    let cfg = std::fs::read_to_string(gw.path("system.toml")).unwrap();
    std::fs::write(
        gw.path("system.toml"),
        format!("{cfg}[mcu.sensor]\ntransport = \"udp\"\naddress = \"127.0.0.1:9\"\n"),
    )
    .unwrap();
    gw.start_service();
    let md = read("docs/dbus.md");
    let mut problems = Vec::new();
    for (dest, path, iface, shown_path) in [
        ("io.rota", "/io/rota", "io.rota.Agent1", "/io/rota"),
        (
            "io.rota",
            "/io/rota/mcu/sensor",
            "io.rota.Mcu1",
            "/io/rota/mcu/<name>",
        ),
        (
            "de.pengutronix.rauc",
            "/",
            "de.pengutronix.rauc.Installer",
            "/",
        ),
    ] {
        let xml = gw
            .busctl(&["introspect", "--xml-interface", dest, path])
            .success();
        let served = members(&xml, iface);
        assert!(!served.is_empty(), "{iface} serves no member: {xml}");
        let file = format!("dbus/{iface}.xml");
        if std::env::var_os("ROTA_REGEN_XML").is_some() {
            std::fs::write(repo(&file), render(iface, dest, shown_path, &served)).unwrap();
        }
        let shipped = members(&read(&file), iface);
        let sec = section(&md, iface).unwrap_or_else(|| {
            problems.push(format!("docs/dbus.md has no section ## `{iface}`"));
            ""
        });
        for m in &served {
            let what = format!("{iface} {} {}", m.kind, m.name);
            if m.doc.is_empty() {
                problems.push(format!("{what}: no doc comment in src/service"));
            }
            match shipped
                .iter()
                .find(|s| s.kind == m.kind && s.name == m.name)
            {
                None => problems.push(format!("{what}: not in {file}")),
                Some(s) if s != m => problems.push(format!(
                    "{what}: {file} differs from the service:\n  shipped {s:?}\n  served  {m:?}"
                )),
                Some(_) => {}
            }
            if !documented(sec, m) {
                problems.push(format!(
                    "{what}: not documented in docs/dbus.md (want {})",
                    if m.kind == "property" {
                        format!("a row | `{}` | `{}` |", m.name, m.ty)
                    } else {
                        format!("a ### heading with `{}`", m.signature())
                    }
                ));
            }
        }
        for s in &shipped {
            if !served.iter().any(|m| m.kind == s.kind && m.name == s.name) {
                problems.push(format!(
                    "{iface} {} {}: in {file} but not served",
                    s.kind, s.name
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n(regenerate dbus/*.xml with ROTA_REGEN_XML=1 after changing doc comments)",
        problems.join("\n")
    );
}
