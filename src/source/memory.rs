//! A bundle held in memory: for tools that already have the bytes (fuzzing, tests). The
//! installer itself never reads a whole bundle into memory.

use super::{ByteSource, SourceError};
use std::io::Read;

pub struct MemorySource {
    data: Vec<u8>,
    fetched: u64,
}

impl MemorySource {
    pub fn new(data: Vec<u8>) -> Self {
        Self { data, fetched: 0 }
    }

    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, SourceError> {
        let size = self.data.len() as u64;
        let end = offset.checked_add(len).filter(|e| *e <= size);
        match end {
            // Both fit in usize: they are at most the length of a Vec.
            Some(end) => Ok(offset as usize..end as usize),
            None => Err(SourceError::OutOfRange {
                offset,
                end: offset.saturating_add(len),
                len: size,
            }),
        }
    }
}

impl ByteSource for MemorySource {
    fn len(&mut self) -> Result<u64, SourceError> {
        Ok(self.data.len() as u64)
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data[r]);
        self.fetched += buf.len() as u64;
        Ok(())
    }

    fn read_range(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let r = self.range(offset, len)?;
        self.fetched += len;
        Ok(Box::new(&self.data[r]))
    }

    fn bytes_fetched(&self) -> u64 {
        self.fetched
    }

    fn describe(&self) -> String {
        format!("<{} bytes in memory>", self.data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_inside_are_served_and_outside_refused() {
        let mut s = MemorySource::new((0..100u8).collect());
        let mut buf = [0u8; 4];
        s.read_exact_at(96, &mut buf).unwrap();
        assert_eq!(buf, [96, 97, 98, 99]);
        assert!(s.read_exact_at(97, &mut buf).is_err());
        assert!(s.read_range(u64::MAX, 2).is_err());
        let mut v = Vec::new();
        s.read_range(10, 3).unwrap().read_to_end(&mut v).unwrap();
        assert_eq!(v, [10, 11, 12]);
        assert_eq!(s.bytes_fetched(), 7);
    }
}
