//! The whole-image check, in one place: SHA-256 and CRC32 of an image's bytes taken in
//! one pass, and compared with what the signed manifest says. The bundle writer, the
//! bundle verifier, the slot read-back and the MCU staging all use it.

use super::ImageEntry;
use sha2::{Digest as _, Sha256};

/// SHA-256 and CRC32 of bytes fed in order.
#[derive(Clone, Default)]
pub struct ImageHasher {
    sha: Sha256,
    crc: crc32fast::Hasher,
    size: u64,
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
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.crc.update(data);
        self.size += data.len() as u64;
    }

    pub fn finish(self) -> ImageDigest {
        ImageDigest {
            size: self.size,
            sha256: hex::encode(self.sha.finalize()),
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
        assert_eq!(d.sha256, hex::encode(Sha256::digest(data)));
        let mut img = ImageEntry {
            slot_class: Some("rootfs".into()),
            mcu: None,
            file: "img".into(),
            size: d.size,
            sha256: d.sha256.to_uppercase(),
            crc32: d.crc32,
            chunk_size: 4096,
            chunks_sha256: String::new(),
        };
        d.check(&img).unwrap();
        img.crc32 ^= 1;
        assert!(d.check(&img).unwrap_err().starts_with("CRC32 is"));
        img.sha256 = "00".repeat(32);
        assert!(d.check(&img).unwrap_err().starts_with("SHA-256 is"));
    }
}
