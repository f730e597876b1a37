//! Version schemes: how a bundle's version is checked and ordered against the running
//! system's (the downgrade check, the feed poller, `rota bundle create`).
//!
//! Two schemes, chosen by `[system] version-scheme`:
//! - `semver` (the default): `MAJOR.MINOR.PATCH[-pre][+build]`, ordered by semver 2.0
//!   (`1.0.0-rc.1 < 1.0.0`; build metadata does not order).
//! - `debian`: the ordering dpkg uses (Debian policy §5.6.12), for the versions boards
//!   carry in `DISTRO_VERSION` or os-release: `1.0`, `2024.04`, `5.2+snapshot-20240101`,
//!   `2:1.0~rc1-3`. `[epoch:]upstream[-revision]`; the epoch is a number, the upstream
//!   part starts with a digit; `~` sorts before everything, even the end of the string,
//!   so `1.0~rc1 < 1.0`; runs of digits compare as numbers, so `1.10 > 1.9`.
//!
//! A bottom-layer module: it imports nothing of rota.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// `[system] version-scheme`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionScheme {
    #[default]
    Semver,
    Debian,
}

impl VersionScheme {
    /// The word used in the config and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VersionScheme::Semver => "semver",
            VersionScheme::Debian => "debian",
        }
    }

    /// Parses `text` as a version of this scheme; the error says what is wrong and
    /// which scheme was asked for.
    pub fn parse(self, text: &str) -> Result<Version, String> {
        let text = text.trim();
        match self {
            VersionScheme::Semver => semver::Version::parse(text)
                .map(Version::Semver)
                .map_err(|e| {
                    format!(
                        "version {text:?} is not semver ({e}); a board with versions like \"1.0\" or \"2024.04\" sets [system] version-scheme = \"debian\""
                    )
                }),
            VersionScheme::Debian => DebianVersion::parse(text)
                .map(Version::Debian)
                .map_err(|e| format!("version {text:?} is not a Debian-style version ({e})")),
        }
    }
}

impl std::str::FromStr for VersionScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "semver" => Ok(VersionScheme::Semver),
            "debian" => Ok(VersionScheme::Debian),
            other => Err(format!(
                "unknown version scheme {other:?} (use \"semver\" or \"debian\")"
            )),
        }
    }
}

impl fmt::Display for VersionScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed version. Versions of one scheme are totally ordered; a semver and a Debian
/// version never meet (both sides of a comparison are parsed with the configured scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    Semver(semver::Version),
    Debian(DebianVersion),
}

impl Version {
    pub fn scheme(&self) -> VersionScheme {
        match self {
            Version::Semver(_) => VersionScheme::Semver,
            Version::Debian(_) => VersionScheme::Debian,
        }
    }

    /// The order of two versions of the same scheme; `None` across schemes.
    pub fn compare(&self, other: &Version) -> Option<Ordering> {
        match (self, other) {
            // Build metadata does not take part in semver precedence.
            (Version::Semver(a), Version::Semver(b)) => Some(a.cmp_precedence(b)),
            (Version::Debian(a), Version::Debian(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Semver(v) => write!(f, "{v}"),
            Version::Debian(v) => write!(f, "{v}"),
        }
    }
}

/// `[epoch:]upstream[-revision]`, kept as written (the order is computed on demand).
#[derive(Debug, Clone)]
pub struct DebianVersion {
    epoch: u64,
    upstream: String,
    revision: String,
    text: String,
}

impl DebianVersion {
    pub fn parse(text: &str) -> Result<DebianVersion, String> {
        if text.is_empty() {
            return Err("it is empty".into());
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace()) {
            return Err(format!("it contains the space character {c:?}"));
        }
        let (epoch, rest) = match text.split_once(':') {
            Some((e, rest)) => {
                if e.is_empty() || !e.chars().all(|c| c.is_ascii_digit()) {
                    return Err(format!("the epoch {e:?} before ':' must be a number"));
                }
                let n = e
                    .parse::<u64>()
                    .map_err(|_| format!("the epoch {e} is too large"))?;
                (n, rest)
            }
            None => (0, text),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() {
            return Err("the version part is empty".into());
        }
        if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("{upstream:?} must start with a digit"));
        }
        if let Some(c) = upstream
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '-')))
        {
            return Err(format!(
                "{c:?} is not allowed (letters, digits and . + ~ - are; ':' only after an epoch)"
            ));
        }
        if rest.contains('-') && revision.is_empty() {
            return Err("the revision after the last '-' is empty".into());
        }
        if let Some(c) = revision
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~')))
        {
            return Err(format!(
                "{c:?} is not allowed in the revision (letters, digits and . + ~ are)"
            ));
        }
        Ok(DebianVersion {
            epoch,
            upstream: upstream.to_owned(),
            revision: revision.to_owned(),
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for DebianVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for DebianVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for DebianVersion {}

impl PartialOrd for DebianVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DebianVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(&self.upstream, &other.upstream))
            .then_with(|| compare_part(&self.revision, &other.revision))
    }
}

/// The weight of one character in a non-digit run: `~` below the end of the string,
/// the end (and a digit, which ends the run) at 0, letters by ASCII, everything else
/// after all letters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// Debian policy's comparison of an upstream version or revision: alternately a run
/// of non-digits (character by character, by [`weight`]) and a run of digits (as a
/// number, without limit on its length), until both strings are used up.
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit run.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let wa = weight(a.get(i).copied());
            let wb = weight(b.get(j).copied());
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        // Digit run: skip leading zeros, then the longer run is the larger number; of
        // equally long runs, the first differing digit decides.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        let sj = j;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        let by_len = da.len().cmp(&db.len());
        if by_len != Ordering::Equal {
            return by_len;
        }
        let by_digits = da.cmp(db);
        if by_digits != Ordering::Equal {
            return by_digits;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(s: &str) -> DebianVersion {
        DebianVersion::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn debian_ordering_of_board_versions() {
        let less = [
            ("1.0~rc1", "1.0"),
            ("1.0~~", "1.0~"),
            ("1.0~rc1", "1.0~rc2"),
            ("2024.04", "2024.10"),
            ("1.9", "1.10"),
            ("1.0", "1.0.1"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0+"),
            ("1.0", "1.0+snapshot"),
            ("5.2", "5.2+snapshot-20240101"),
            ("5.2+snapshot-20240101", "5.2+snapshot-20240102"),
            ("5.2+snapshot-20240101", "5.3"),
            ("1.0-1", "1.0-2"),
            ("1.0-9", "1.0-10"),
            ("1.0", "1.0-1"),
            ("9.9", "1:0.1"),
            ("1:2.0", "2:1.0"),
            ("1.2.3", "1.2.3.0.1"),
            ("2024.04", "2024.04.1"),
            ("0.9", "1.0"),
            ("1.0-rc1", "1.0.0"),
            ("99999999999999999999998", "99999999999999999999999"),
        ];
        for (a, b) in less {
            assert_eq!(deb(a).cmp(&deb(b)), Ordering::Less, "{a} < {b}");
            assert_eq!(deb(b).cmp(&deb(a)), Ordering::Greater, "{b} > {a}");
        }
        let equal = [
            ("1.0", "1.00"),
            ("0:1.0", "1.0"),
            ("1.01", "1.1"),
            ("1.0-0", "1.0"),
        ];
        for (a, b) in equal {
            assert_eq!(deb(a).cmp(&deb(b)), Ordering::Equal, "{a} = {b}");
        }
    }

    #[test]
    fn debian_parse_errors_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("v1.0", "must start with a digit"),
            ("a:1.0", "epoch"),
            ("1.0-", "revision"),
            ("1.0_1", "'_' is not allowed"),
            ("1.0-a_b", "revision"),
            ("1 .0", "space"),
            (":1.0", "epoch"),
        ] {
            let e = DebianVersion::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // Semver versions are Debian versions too (with the Debian order).
        for ok in ["1.0.0", "1.0.0-rc.1", "1.0.0+build.5", "2:1.0", "1.0-rc-1"] {
            deb(ok);
        }
    }

    #[test]
    fn schemes_parse_and_order_their_own_way() {
        let s = VersionScheme::Semver;
        let d = VersionScheme::Debian;
        assert!(s.parse("2024.04").unwrap_err().contains("version-scheme"));
        let lt = |sc: VersionScheme, a: &str, b: &str| {
            sc.parse(a).unwrap().compare(&sc.parse(b).unwrap()) == Some(Ordering::Less)
        };
        // Semver: a pre-release is lower; Debian: a '-' starts the revision (higher).
        assert!(lt(s, "1.0.0-rc.1", "1.0.0"));
        assert!(lt(d, "1.0.0", "1.0.0-rc.1"));
        assert!(lt(d, "1.0.0~rc.1", "1.0.0"));
        // Build metadata does not order in semver.
        assert_eq!(
            s.parse("1.0.0+a")
                .unwrap()
                .compare(&s.parse("1.0.0+b").unwrap()),
            Some(Ordering::Equal)
        );
        assert_eq!(
            s.parse("1.0.0")
                .unwrap()
                .compare(&d.parse("1.0.0").unwrap()),
            None
        );
        assert_eq!("debian".parse::<VersionScheme>(), Ok(d));
        assert!("dpkg".parse::<VersionScheme>().is_err());
    }
}
