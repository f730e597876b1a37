//! The fw_env.config parser: arbitrary text gives copies with sane sizes, or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rota::boot::uboot_env::FwEnvConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = FwEnvConfig::parse(&text, Path::new("fw_env.config")) {
        assert!(!c.copies.is_empty() && c.copies.len() <= 2);
        for copy in &c.copies {
            assert!(copy.size > 0);
        }
    }
});
