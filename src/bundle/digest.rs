//! Hashing, in one place: the one SHA-256 engine every check uses, and the whole-image
//! check — SHA-256 and CRC32 of an image's bytes taken in one pass and compared with
//! what the signed manifest says. The bundle writer, the bundle verifier, the slot
//! read-back and the MCU staging all use it.
//!
//! SHA-256 is ring's: it picks the CPU's SHA instructions at run time (SHA-NI on x86,
//! the ARMv8 cryptography extensions on a Cortex-A53/A72 that has them, as an i.MX8M
//! does), with no build feature to forget. CRC32 is crc32fast's (PCLMULQDQ on x86,
//! the ARMv8 CRC instructions on aarch64).

use super::ImageEntry;
use crate::config::ReadBack;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 of `data`, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// SHA-256 (unless only the CRC is wanted) and CRC32 of bytes fed in order.
#[derive(Clone)]
pub struct ImageHasher {
    sha: Option<ring::digest::Context>,
    crc: crc32fast::Hasher,
    size: u64,
}

impl Default for ImageHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// What an image's bytes hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDigest {
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub crc32: u32,
}

impl ImageHasher {
    /// Both hashes.
    pub fn new() -> Self {
        Self::for_mode(ReadBack::Sha256)
    }

    /// What a slot read-back in `mode` needs: the CRC32 alone for [`ReadBack::Crc`].
    pub fn for_mode(mode: ReadBack) -> Self {
        Self {
            sha: (mode == ReadBack::Sha256)
                .then(|| ring::digest::Context::new(&ring::digest::SHA256)),
            crc: crc32fast::Hasher::new(),
            size: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some(sha) = &mut self.sha {
            sha.update(data);
        }
        self.crc.update(data);
        self.size += data.len() as u64;
    }

    /// The digest; `sha256` is empty when it was not computed.
    pub fn finish(self) -> ImageDigest {
        ImageDigest {
            size: self.size,
            sha256: self
                .sha
                .map(|s| hex::encode(s.finish()))
                .unwrap_or_default(),
            crc32: self.crc.finalize(),
        }
    }
}

impl ImageDigest {
    /// The digest of bytes held in memory.
    pub fn of(data: &[u8]) -> ImageDigest {
        let mut h = ImageHasher::new();
        h.update(data);
        h.finish()
    }

    /// [`Self::check`] for a read-back in `mode`: the CRC32 alone for `crc`.
    pub fn check_mode(&self, image: &ImageEntry, mode: ReadBack) -> Result<(), String> {
        if mode == ReadBack::Sha256 {
            return self.check(image);
        }
        self.check_size(image)?;
        if self.crc32 != image.crc32 {
            return Err(format!(
                "CRC32 is {:08x}, expected {:08x}",
                self.crc32, image.crc32
            ));
        }
        Ok(())
    }

    /// For the log: what was compared.
    pub fn describe(&self, mode: ReadBack) -> String {
        match mode {
            ReadBack::Sha256 => format!("sha256 {}, crc32 {:08x}", self.sha256, self.crc32),
            _ => format!("crc32 {:08x}", self.crc32),
        }
    }

    fn check_size(&self, image: &ImageEntry) -> Result<(), String> {
        if self.size != image.size {
            return Err(format!(
                "{} bytes were read, the image has {}",
                self.size, image.size
            ));
        }
        Ok(())
    }

    /// Whether these bytes are the image the manifest signed; the error says which hash
    /// differs ("SHA-256 is …, expected …").
    pub fn check(&self, image: &ImageEntry) -> Result<(), String> {
        if !self.sha256.eq_ignore_ascii_case(&image.sha256) {
            return Err(format!(
                "SHA-256 is {}, expected {}",
                self.sha256, image.sha256
            ));
        }
        if self.crc32 != image.crc32 {
            return Err(format!(
                "CRC32 is {:08x}, expected {:08x}",
                self.crc32, image.crc32
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_gives_both_hashes_and_names_the_one_that_differs() {
        let data = b"rota image bytes";
        let mut h = ImageHasher::new();
        h.update(&data[..5]);
        h.update(&data[5..]);
        let d = h.finish();
        assert_eq!(d, ImageDigest::of(data));
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.crc32, crc32fast::hash(data));
        // ring's engine agrees with an independent implementation (RustCrypto's).
        assert_eq!(
            d.sha256,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
        );
        let mut img = ImageEntry {
            slot_class: Some("rootfs".into()),
            mcu: None,
            file: "img".into(),
            size: d.size,
            sha256: d.sha256.to_uppercase(),
            crc32: d.crc32,
            chunk_size: 4096,
            chunks_sha256: String::new(),
            block_map_size: None,
            block_map_sha256: None,
            payload_size: None,
            payload_sha256: None,
        };
        d.check(&img).unwrap();
        let crc_only = {
            let mut h = ImageHasher::for_mode(ReadBack::Crc);
            h.update(data);
            h.finish()
        };
        assert_eq!(crc_only.sha256, "");
        crc_only.check_mode(&img, ReadBack::Crc).unwrap();
        assert!(crc_only.check_mode(&img, ReadBack::Sha256).is_err());
        let mut short = crc_only.clone();
        short.size -= 1;
        assert!(short
            .check_mode(&img, ReadBack::Crc)
            .unwrap_err()
            .contains("bytes were read"));
        img.crc32 ^= 1;
        assert!(crc_only
            .check_mode(&img, ReadBack::Crc)
            .unwrap_err()
            .starts_with("CRC32 is"));
        assert!(d.check(&img).unwrap_err().starts_with("CRC32 is"));
        img.sha256 = "00".repeat(32);
        assert!(d.check(&img).unwrap_err().starts_with("SHA-256 is"));
    }
}
