//! The bundle reader over arbitrary bytes: the tar layout walk (unverified, to reach past
//! the signature check), every image's chunk index, and the verified open with a fixed
//! key. Errors are fine; panics, overflows and huge allocations are not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rota::bundle::{reader, Keyring};
use rota::source::memory::MemorySource;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    let keyring = Keyring::from_keys(vec![key]);
    let mut src = MemorySource::new(data.to_vec());
    let _ = reader::open(&mut src, &keyring);
    let mut src = MemorySource::new(data.to_vec());
    if let Ok(bundle) = reader::open_unverified(&mut src) {
        assert!(!bundle.is_verified());
        for img in &bundle.manifest.images {
            if let Ok(index) = bundle.chunk_index(&mut src, img) {
                let _ = index;
            }
            let _ = bundle.image_member(img);
        }
    }
});
