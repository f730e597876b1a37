//! `rota bundle create|info|verify`: build, inspect and check bundles locally.

use super::{CliResult, Failure};
use crate::bundle::{self, reader, Bundle, Keyring};
use crate::source::file::FileSource;
use std::path::{Path, PathBuf};

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::Failed(e.to_string())
}

pub fn create(
    dir: &Path,
    out: &Path,
    key: &Path,
    opts: &bundle::writer::CreateOptions,
) -> CliResult {
    let key = bundle::keys::load_signing_key(key).map_err(failed)?;
    let m = bundle::writer::create_with(dir, out, &key, opts).map_err(failed)?;
    let bytes: u64 = m.images.iter().map(|i| i.size).sum();
    let stored: u64 = m.images.iter().map(|i| i.stored_size()).sum();
    println!(
        "{}: format {}, version {} for {:?}, {} image(s), {bytes} bytes raw, {stored} bytes stored, signed by key {}",
        out.display(),
        m.format,
        m.update.version,
        m.update.compatible,
        m.images.len(),
        bundle::keys::key_id(&key.verifying_key())
    );
    Ok(())
}

fn open(path: &Path, keyring: &[PathBuf]) -> Result<(FileSource, Bundle), Failure> {
    let mut src = FileSource::open(path).map_err(failed)?;
    let b = if keyring.is_empty() {
        reader::open_unverified(&mut src)
    } else {
        let ring = Keyring::load(keyring).map_err(failed)?;
        reader::open(&mut src, &ring)
    }
    .map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
    Ok((src, b))
}

pub fn info(path: &Path, keyring: &[PathBuf], json: bool) -> CliResult {
    let (_, b) = open(path, keyring)?;
    let signature = if keyring.is_empty() {
        "not checked (no --keyring)".to_owned()
    } else {
        format!("valid, key {}", b.signer)
    };
    let u = &b.manifest.update;
    if json {
        let images: Vec<_> = b
            .manifest
            .images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "target": i.target().to_string(), "slot-class": i.slot_class, "mcu": i.mcu, "file": i.file,
                    "size": i.size, "sha256": i.sha256, "crc32": format!("{:08x}", i.crc32), "chunk-size": i.chunk_size,
                })
            })
            .collect();
        let v = serde_json::json!({
            "compatible": u.compatible, "version": u.version, "description": u.description, "build": u.build,
            "manifest_hash": b.manifest_hash, "signature": signature, "signer": b.signer, "size": b.size, "images": images,
        });
        println!("{v}");
        return Ok(());
    }
    println!("bundle      {} ({} bytes)", path.display(), b.size);
    println!("compatible  {}", u.compatible);
    println!("version     {}", u.version);
    if let Some(d) = &u.description {
        println!("description {d}");
    }
    if let Some(d) = &u.build {
        println!("build       {d}");
    }
    println!("manifest    sha256 {}", b.manifest_hash);
    println!("signature   {signature}");
    for (n, i) in b.manifest.images.iter().enumerate() {
        println!(
            "image {}     {} -> {}: {} bytes, sha256 {}, crc32 {:08x}, {} chunks of {}",
            n + 1,
            i.file,
            i.target(),
            i.size,
            i.sha256,
            i.crc32,
            bundle::ChunkIndex::count_for(i.size, i.chunk_size),
            i.chunk_size
        );
    }
    Ok(())
}

pub fn verify(path: &Path, keyring: &[PathBuf]) -> CliResult {
    let (mut src, b) = open(path, keyring)?;
    reader::verify_payload(&mut src, &b, &mut |_, _| {})
        .map_err(|e| Failure::Failed(format!("{}: {e}", path.display())))?;
    println!(
        "{}: signature valid (key {}), {} image(s) verified: every chunk, SHA-256 and CRC32",
        path.display(),
        b.signer,
        b.manifest.images.len()
    );
    Ok(())
}
