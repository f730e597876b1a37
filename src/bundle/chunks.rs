//! The per-image chunk index: one SHA-256 per `chunk_size` bytes of the image, itself
//! covered by the signed manifest, so each chunk is verified on its own before it is
//! written.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub chunk_size: u32,
    pub image_size: u64,
    pub hashes: Vec<[u8; 32]>,
}

impl ChunkIndex {
    /// Number of chunks an image of `image_size` bytes has.
    pub fn count_for(image_size: u64, chunk_size: u32) -> u64 {
        image_size.div_ceil(u64::from(chunk_size))
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Byte range of chunk `i` inside the image: (offset, length).
    pub fn chunk_range(&self, i: usize) -> (u64, u64) {
        let off = i as u64 * u64::from(self.chunk_size);
        let len = (self.image_size - off).min(u64::from(self.chunk_size));
        (off, len)
    }

    /// True when `data` is exactly chunk `i`.
    pub fn verify(&self, i: usize, data: &[u8]) -> bool {
        let (_, len) = self.chunk_range(i);
        data.len() as u64 == len && super::digest::sha256(data) == self.hashes[i]
    }

    /// Serialized form stored in the bundle: the hashes back to back.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.hashes.iter().flatten().copied().collect()
    }

    /// Parses the stored form for an image of known size and chunk size.
    pub fn from_bytes(bytes: &[u8], image_size: u64, chunk_size: u32) -> Result<Self, String> {
        let want = Self::count_for(image_size, chunk_size);
        if bytes.len() as u64 != want * 32 {
            return Err(format!(
                "chunk index has {} bytes, an image of {image_size} bytes in {chunk_size}-byte chunks needs {}",
                bytes.len(),
                want * 32
            ));
        }
        let hashes = bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Self {
            chunk_size,
            image_size,
            hashes,
        })
    }
}
