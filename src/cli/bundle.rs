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

/// What a block image is made of, from its block map.
struct BlockStats {
    frames: usize,
    frame_bytes: u64,
    patches: usize,
    patch_bytes: u64,
    zero: u64,
    map_bytes: u64,
}

fn block_stats(
    src: &mut FileSource,
    b: &Bundle,
    img: &bundle::ImageEntry,
) -> Result<Option<BlockStats>, Failure> {
    if img.layout() != bundle::manifest::Layout::Blocks {
        return Ok(None);
    }
    let map = b.block_map(src, img).map_err(failed)?;
    Ok(Some(BlockStats {
        frames: map.frames.len(),
        frame_bytes: map.frame_bytes() + u64::from(map.dictionary_size),
        patches: map.patches.len(),
        patch_bytes: map.patches.iter().map(|p| u64::from(p.csize)).sum(),
        zero: map.image_size - map.data_bytes(),
        map_bytes: img.block_map_size.unwrap_or(0),
    }))
}

pub fn info(path: &Path, keyring: &[PathBuf], json: bool) -> CliResult {
    let (mut src, b) = open(path, keyring)?;
    let stats = b
        .manifest
        .images
        .iter()
        .map(|i| block_stats(&mut src, &b, i))
        .collect::<Result<Vec<_>, _>>()?;
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
            .zip(&stats)
            .map(|(i, st)| {
                let mut v = serde_json::json!({
                    "target": i.target().to_string(), "slot-class": i.slot_class, "mcu": i.mcu, "file": i.file,
                    "size": i.size, "stored": i.stored_size(), "sha256": i.sha256, "crc32": format!("{:08x}", i.crc32),
                });
                match st {
                    Some(st) => {
                        v["layout"] = "blocks".into();
                        v["block-map"] = st.map_bytes.into();
                        v["frames"] = st.frames.into();
                        v["frame-bytes"] = st.frame_bytes.into();
                        v["patches"] = st.patches.into();
                        v["patch-bytes"] = st.patch_bytes.into();
                        v["zero"] = st.zero.into();
                    }
                    None => {
                        v["layout"] = "chunks".into();
                        v["chunk-size"] = i.chunk_size.into();
                    }
                }
                v
            })
            .collect();
        let v = serde_json::json!({
            "compatible": u.compatible, "version": u.version, "description": u.description, "build": u.build,
            "format": b.manifest.format, "manifest_hash": b.manifest_hash, "signature": signature, "signer": b.signer, "size": b.size, "images": images,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "bundle      {} ({} bytes, format {})",
        path.display(),
        b.size,
        b.manifest.format
    );
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
    let mib = |b: u64| b as f64 / 1048576.0;
    for (n, (i, st)) in b.manifest.images.iter().zip(&stats).enumerate() {
        println!(
            "image {}     {} -> {}: {} bytes, sha256 {}, crc32 {:08x}",
            n + 1,
            i.file,
            i.target(),
            i.size,
            i.sha256,
            i.crc32,
        );
        match st {
            Some(st) => println!(
                "            {:.1} MiB raw, {:.1} MiB stored ({:.1} %): {} frames {:.1} MiB, {} patches {:.1} MiB, block map {:.2} MiB; {:.1} MiB zero (stored as nothing)",
                mib(i.size),
                mib(i.stored_size()),
                100.0 * i.stored_size() as f64 / i.size.max(1) as f64,
                st.frames,
                mib(st.frame_bytes),
                st.patches,
                mib(st.patch_bytes),
                mib(st.map_bytes),
                mib(st.zero)
            ),
            None => println!(
                "            stored raw: {} chunks of {}",
                bundle::ChunkIndex::count_for(i.size, i.chunk_size),
                i.chunk_size
            ),
        }
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
