//! The system config (TOML) parser: arbitrary text gives a config or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rota::config::Config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = Config::parse(text, Path::new("/etc/rota/system.toml")) {
            let _ = c.slots();
        }
    }
});
