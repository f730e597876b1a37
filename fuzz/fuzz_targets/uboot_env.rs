//! The U-Boot env reader on a file of arbitrary bytes, as a single env and as the two
//! copies of a redundant one. Whatever it accepts must survive a write: the update
//! rewrites the env and reading it back gives the same variables plus the change.
//!
//! Random bytes almost never carry a valid CRC32, which would keep the fuzzer in front
//! of the variable parser. So the first input byte picks which copies get their CRC
//! fixed up (bit 0: the first, bit 1: the second); the rest is the env image.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rota::boot::uboot_env::{FwEnvConfig, UbootEnv};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SIZE: usize = 0x400;

/// Stores the CRC32 of each chosen copy's data in front of it (header: CRC, plus the
/// flag byte when redundant).
fn fix_crcs(image: &mut [u8], copies: u8, redundant: bool) {
    let header = if redundant { 5 } else { 4 };
    for (i, copy) in image.chunks_mut(SIZE).enumerate().take(2) {
        if copies & (1 << i) != 0 {
            let crc = crc32fast::hash(&copy[header..]);
            copy[..4].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// This process's env file, in a directory made once: on tmpfs when there is one, since
/// the env is fsynced on every write.
fn env_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("rota-fuzz-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the env file");
        dir.join("env.bin")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&copies, data)) = data.split_first() else {
        return;
    };
    let file = env_file();
    let mut raw = data.to_vec();
    raw.resize(2 * SIZE, 0xff);
    for redundant in [false, true] {
        let mut image = raw.clone();
        fix_crcs(&mut image, copies, redundant);
        std::fs::write(file, &image).expect("write the env file");
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
            Err(_) => assert_eq!(std::fs::read(file).expect("read back"), image),
        }
    }
});
