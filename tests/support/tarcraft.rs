//! Building broken bundles byte by byte: split a real bundle into its tar members, change
//! names, types, declared sizes or data, re-sign a manifest, and assemble a ustar archive
//! again without any of the checks a tar library would make. Also an in-memory
//! [`ByteSource`] that records every read, to prove what the reader allocates.

use ed25519_dalek::{Signer, SigningKey};
use rota::source::{ByteSource, SourceError};
use std::io::Read;
use std::path::Path;

/// One tar member as [`assemble`] writes it.
#[derive(Clone, Debug)]
pub struct Raw {
    pub name: Vec<u8>,
    pub data: Vec<u8>,
    pub kind: tar::EntryType,
    /// Size written into the header when it should differ from `data.len()`.
    pub declared: Option<u64>,
    /// Link target for link entries.
    pub link: Vec<u8>,
}

impl Raw {
    pub fn file(name: &str, data: &[u8]) -> Raw {
        Raw {
            name: name.as_bytes().to_vec(),
            data: data.to_vec(),
            kind: tar::EntryType::Regular,
            declared: None,
            link: Vec::new(),
        }
    }
}

/// The members' names, in archive order.
pub fn member_names(ms: &[Raw]) -> Vec<String> {
    ms.iter()
        .map(|m| String::from_utf8_lossy(&m.name).into_owned())
        .collect()
}

/// The members of a tar archive, read with the `tar` crate (independently of rota).
pub fn members(bundle: &[u8]) -> Vec<Raw> {
    let mut ar = tar::Archive::new(bundle);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path_bytes().into_owned();
            let kind = e.header().entry_type();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Raw {
                name,
                data,
                kind,
                declared: None,
                link: Vec::new(),
            }
        })
        .collect()
}

/// One ustar header block for `m` with its raw name bytes (no validation at all).
pub fn header(m: &Raw) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    let n = m.name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&m.name[..n]);
    h.set_entry_type(m.kind);
    // Sizes beyond the octal field are written base-256, as GNU tar does.
    h.set_size(m.declared.unwrap_or(m.data.len() as u64));
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    if !m.link.is_empty() {
        h.set_link_name_literal(&m.link).unwrap();
    }
    h.set_cksum();
    *h.as_bytes()
}

/// `ms` as a ustar archive without the end-of-archive marker.
pub fn assemble_open(ms: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in ms {
        out.extend_from_slice(&header(m));
        out.extend_from_slice(&m.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out
}

/// `ms` as a ustar archive with the two-block end-of-archive marker.
pub fn assemble(ms: &[Raw]) -> Vec<u8> {
    let mut out = assemble_open(ms);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Replaces the manifest (member 1) with `manifest` and signs it with `key`.
pub fn resign(ms: &mut [Raw], manifest: &[u8], key: &SigningKey) {
    ms[0].data = manifest.to_vec();
    ms[1].data = key.sign(manifest).to_bytes().to_vec();
}

/// Byte offset of member `name`'s data in an archive made by [`assemble`] or rota.
pub fn data_offset(ms: &[Raw], name: &str) -> usize {
    let mut off = 0;
    for m in ms {
        off += 512;
        if m.name == name.as_bytes() {
            return off;
        }
        off += m.data.len().div_ceil(512) * 512;
    }
    panic!("no member {name}");
}

/// The line `key = ...` of a TOML text replaced by `key = value` (first occurrence).
pub fn set_line(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key} = ");
    let mut done = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if !done && l.starts_with(&prefix) {
                done = true;
                format!("{key} = {value}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(done, "no line {key:?} in\n{text}");
    out.join("\n") + "\n"
}

pub fn signing_key(path: &Path) -> SigningKey {
    rota::bundle::keys::load_signing_key(path).unwrap()
}

/// A bundle in memory, claiming `len` bytes (zeros past `data`), recording every read.
pub struct MemSource {
    pub data: Vec<u8>,
    pub len: u64,
    /// (offset, length) of every read.
    pub reads: Vec<(u64, u64)>,
}

impl MemSource {
    pub fn new(data: Vec<u8>) -> MemSource {
        let len = data.len() as u64;
        MemSource {
            data,
            len,
            reads: Vec::new(),
        }
    }

    /// The largest single read so far.
    pub fn largest_read(&self) -> u64 {
        self.reads.iter().map(|r| r.1).max().unwrap_or(0)
    }

    fn fill(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self
                .data
                .get((offset as usize).wrapping_add(i))
                .copied()
                .unwrap_or(0);
        }
    }
}

impl ByteSource for MemSource {
    fn len(&mut self) -> Result<u64, SourceError> {
        Ok(self.len)
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.len {
            return Err(SourceError::OutOfRange {
                offset,
                end,
                len: self.len,
            });
        }
        self.reads.push((offset, buf.len() as u64));
        self.fill(offset, buf);
        Ok(())
    }

    fn read_range(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let end = offset.saturating_add(len);
        if end > self.len {
            return Err(SourceError::OutOfRange {
                offset,
                end,
                len: self.len,
            });
        }
        self.reads.push((offset, len));
        let mut buf = vec![0u8; len as usize];
        self.fill(offset, &mut buf);
        Ok(Box::new(std::io::Cursor::new(buf)))
    }

    fn bytes_fetched(&self) -> u64 {
        self.reads.iter().map(|r| r.1).sum()
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
