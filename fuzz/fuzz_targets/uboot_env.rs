//! The U-Boot env reader on a file of arbitrary bytes, as a single env and as the two
//! copies of a redundant one. Whatever it accepts must survive a write: the update
//! rewrites the env and reading it back gives the same variables plus the change.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rota::boot::uboot_env::{FwEnvConfig, UbootEnv};
use std::path::Path;

const SIZE: usize = 0x400;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("rota-fuzz-env-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("env.bin");
    let mut image = data.to_vec();
    image.resize(2 * SIZE, 0xff);
    for redundant in [false, true] {
        std::fs::write(&file, &image).expect("write the env file");
        let mut text = format!("{} 0x0 {SIZE:#x}\n", file.display());
        if redundant {
            text.push_str(&format!("{} {SIZE:#x} {SIZE:#x}\n", file.display()));
        }
        let config = FwEnvConfig::parse(&text, Path::new("fuzz.config")).expect("config");
        let env = UbootEnv::new(config);
        let Ok(vars) = env.read() else { continue };
        let mut expected = vars.clone();
        expected.insert("BOOT_ORDER".into(), "B A".into());
        let written = env.update(|v| {
            v.insert("BOOT_ORDER".into(), "B A".into());
            Ok(())
        });
        match written {
            Ok(_) => assert_eq!(env.read().expect("read after write"), expected),
            // Variables that cannot be stored (e.g. '=' in a name read from garbage) or
            // that no longer fit are refused, never written half.
            Err(_) => assert_eq!(std::fs::read(&file).expect("read back"), image),
        }
    }
});
