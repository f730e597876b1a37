//! MCUboot header and TLV parsing (and the raw-image CRC32 trailer check) on arbitrary
//! bytes, without and with a node key: an accepted image is at most the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rota::mcu::image;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
    for k in [None, Some(&key)] {
        if let Ok(img) = image::parse(Path::new("fuzz.bin"), data.to_vec(), k) {
            assert_eq!(img.data, data);
        }
    }
});
