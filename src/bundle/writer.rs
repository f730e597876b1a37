//! Building and signing bundles (`rota bundle create`).
//!
//! Each image is read twice, streaming: once to compute its SHA-256, CRC32 and chunk
//! index (the manifest must come first in the tar), once to copy it into the archive.
//! Memory stays constant in the image size; the output appears atomically.

use super::manifest::{
    check_chunk_size, check_member_name, ImageEntry, InputManifest, Manifest, UpdateInfo, FORMAT,
    FORMAT_CHUNKS,
};
use super::pack::PackOptions;
use super::{BundleError, ChunkIndex, MANIFEST_NAME, SIGNATURE_NAME};
use ed25519_dalek::{Signer, SigningKey};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

fn io_err(path: &Path, e: impl std::fmt::Display) -> BundleError {
    BundleError::Io(format!("{}: {e}", path.display()))
}

struct Hashed {
    size: u64,
    sha256: String,
    crc32: u32,
    chunks: ChunkIndex,
}

/// Reads the file at `path` in whole pieces of `piece` bytes (the last may be short)
/// and hands each to `each`, in order; returns the file's size.
pub(super) fn for_each_piece(
    path: &Path,
    piece: usize,
    mut each: impl FnMut(&[u8]),
) -> Result<u64, BundleError> {
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut buf = vec![0u8; piece];
    let mut size = 0u64;
    loop {
        // Fill a whole piece (short reads are allowed by Read).
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..]).map_err(|e| io_err(path, e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        each(&buf[..filled]);
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok(size)
}

fn hash_image(path: &Path, chunk_size: u32) -> Result<Hashed, BundleError> {
    let mut whole = super::digest::ImageHasher::new();
    let mut hashes = Vec::new();
    let size = for_each_piece(path, chunk_size as usize, |data| {
        whole.update(data);
        hashes.push(super::digest::sha256(data));
    })?;
    let digest = whole.finish();
    Ok(Hashed {
        size,
        sha256: digest.sha256,
        crc32: digest.crc32,
        chunks: ChunkIndex {
            chunk_size,
            image_size: size,
            hashes,
        },
    })
}

fn header(name: &str, size: u64, mtime: u64) -> Result<tar::Header, BundleError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .map_err(|e| BundleError::Format(format!("member name {name:?}: {e}")))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// How `rota bundle create` builds a bundle.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Chunk size of chunked images (MCU images, and every image in format 1).
    pub chunk_size: u32,
    /// The devices' `[system] version-scheme`: the version must be one of it.
    pub scheme: crate::version::VersionScheme,
    /// `SOURCE_DATE_EPOCH`, seconds since 1970: the manifest's `build` and every tar
    /// member's mtime are that time instead of now and 0, so the same inputs give a
    /// byte-identical bundle (ed25519 signatures are deterministic).
    pub source_date_epoch: Option<u64>,
    /// Slot images as compressed blocks (format 2, the default); `None` writes format 1.
    pub pack: Option<PackOptions>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            chunk_size: super::DEFAULT_CHUNK_SIZE,
            scheme: crate::version::VersionScheme::Semver,
            source_date_epoch: None,
            pack: Some(PackOptions::default()),
        }
    }
}

/// Builds `out` from `dir/manifest.toml` and the images it names, signed with `key`, in
/// format 2 with the default packing.
pub fn create(
    dir: &Path,
    out: &Path,
    key: &SigningKey,
    chunk_size: u32,
    scheme: crate::version::VersionScheme,
) -> Result<Manifest, BundleError> {
    create_with(
        dir,
        out,
        key,
        &CreateOptions {
            chunk_size,
            scheme,
            ..Default::default()
        },
    )
}

/// Temporary files of a bundle being made: removed however `create_with` ends.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Where an image's members come from when the tar is written.
enum Source {
    Chunks(PathBuf, ChunkIndex),
    Blocks(Vec<u8>, PathBuf),
}

/// Builds `out` as `opts` say; see [`create`].
pub fn create_with(
    dir: &Path,
    out: &Path,
    key: &SigningKey,
    opts: &CreateOptions,
) -> Result<Manifest, BundleError> {
    let (chunk_size, scheme, source_date_epoch) =
        (opts.chunk_size, opts.scheme, opts.source_date_epoch);
    let build_time = match source_date_epoch {
        Some(secs) => std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(secs))
            .filter(|_| secs <= 253_402_300_799) // 9999-12-31T23:59:59Z, RFC 3339's last
            .ok_or_else(|| {
                BundleError::Manifest(format!("SOURCE_DATE_EPOCH {secs} is past the year 9999"))
            })?,
        None => std::time::SystemTime::now(),
    };
    let mtime = source_date_epoch.unwrap_or(0);
    check_chunk_size(chunk_size).map_err(BundleError::Manifest)?;
    let input_path = dir.join(MANIFEST_NAME);
    // Read generously: the limit that matters is checked on the manifest as signed.
    let text = crate::fsutil::read_regular_text(&input_path, 4 * super::MAX_MANIFEST_SIZE)
        .map_err(|e| io_err(&input_path, e))?;
    let input = InputManifest::parse(&text, &input_path)?;
    scheme
        .parse(&input.update.version)
        .map_err(|e| BundleError::Manifest(format!("{}: {e}", input_path.display())))?;
    let mut images = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    let mut temps = TempFiles(Vec::new());
    for (i, img) in input.images.iter().enumerate() {
        check_member_name(&img.file)
            .map_err(|m| BundleError::Manifest(format!("image {}: {m}", i + 1)))?;
        let path = dir.join(&img.file);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
        if !meta.is_file() {
            return Err(BundleError::Manifest(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        if let (Some(pack), Some(_)) = (&opts.pack, &img.slot_class) {
            let payload = out.with_extension(format!("rota.{}.tmp", images.len()));
            temps.0.push(payload.clone());
            let packed = super::pack::pack(&path, &payload, pack)?;
            let map = packed.map.to_bytes();
            images.push(ImageEntry {
                slot_class: img.slot_class.clone(),
                mcu: None,
                file: img.file.clone(),
                size: packed.digest.size,
                sha256: packed.digest.sha256,
                crc32: packed.digest.crc32,
                chunk_size: 0,
                chunks_sha256: String::new(),
                block_map_size: Some(map.len() as u64),
                block_map_sha256: Some(super::digest::sha256_hex(&map)),
                payload_size: Some(packed.map.payload_size()),
                payload_sha256: Some(packed.payload_sha256),
            });
            sources.push(Source::Blocks(map, payload));
            continue;
        }
        let h = hash_image(&path, chunk_size)?;
        let chunks_sha256 = super::digest::sha256_hex(&h.chunks.to_bytes());
        images.push(ImageEntry {
            slot_class: img.slot_class.clone(),
            mcu: img.mcu.clone(),
            file: img.file.clone(),
            size: h.size,
            sha256: h.sha256,
            crc32: h.crc32,
            chunk_size,
            chunks_sha256,
            block_map_size: None,
            block_map_sha256: None,
            payload_size: None,
            payload_sha256: None,
        });
        sources.push(Source::Chunks(path, h.chunks));
    }
    let manifest = Manifest {
        format: if opts.pack.is_some() {
            FORMAT
        } else {
            FORMAT_CHUNKS
        },
        update: UpdateInfo {
            compatible: input.update.compatible,
            version: input.update.version,
            description: input.update.description,
            build: Some(humantime::format_rfc3339_seconds(build_time).to_string()),
        },
        images,
    };
    manifest.validate()?;
    let manifest_bytes = manifest.to_toml()?.into_bytes();
    // The writer keeps the reader's limits: a signed bundle that every device refuses is
    // worse than no bundle.
    if manifest_bytes.len() as u64 > super::MAX_MANIFEST_SIZE {
        return Err(BundleError::Manifest(format!(
            "the manifest would be {} bytes; readers accept at most {} (shorten the description)",
            manifest_bytes.len(),
            super::MAX_MANIFEST_SIZE
        )));
    }
    let signature = key.sign(&manifest_bytes).to_bytes();

    let tmp = out.with_extension("rota.tmp");
    temps.0.push(tmp.clone());
    let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    let mut append = |name: &str, size: u64, data: &mut dyn Read| -> Result<(), BundleError> {
        tar.append(&header(name, size, mtime)?, data)
            .map_err(|e| io_err(&tmp, e))
    };
    append(
        MANIFEST_NAME,
        manifest_bytes.len() as u64,
        &mut &manifest_bytes[..],
    )?;
    append(SIGNATURE_NAME, signature.len() as u64, &mut &signature[..])?;
    for (img, source) in manifest.images.iter().zip(&sources) {
        match source {
            Source::Chunks(path, chunks) => {
                let index = chunks.to_bytes();
                append(&img.chunks_file(), index.len() as u64, &mut &index[..])?;
                let f = File::open(path).map_err(|e| io_err(path, e))?;
                // Exactly the hashed size, even if the file grew meanwhile.
                let mut reader = BufReader::with_capacity(1 << 20, f).take(img.size);
                append(&img.file, img.size, &mut reader)?;
            }
            Source::Blocks(map, payload) => {
                append(&img.blocks_file(), map.len() as u64, &mut &map[..])?;
                let f = File::open(payload).map_err(|e| io_err(payload, e))?;
                let size = img.payload_size.unwrap_or(0);
                let mut reader = BufReader::with_capacity(1 << 20, f).take(size);
                append(&img.file, size, &mut reader)?;
            }
        }
    }
    let writer = tar.into_inner().map_err(|e| io_err(&tmp, e))?;
    let file = writer.into_inner().map_err(|e| io_err(&tmp, e.error()))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| io_err(out, e))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::fsutil::sync_dir(parent).map_err(|e| io_err(parent, e))?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, description_len: usize) {
        std::fs::write(dir.join("img"), vec![5u8; 10_000]).unwrap();
        let manifest = format!(
            "[update]\ncompatible = \"x\"\nversion = \"1.0.0\"\ndescription = \"{}\"\n[[image]]\nslot-class = \"rootfs\"\nfile = \"img\"\n",
            "d".repeat(description_len)
        );
        std::fs::write(dir.join(MANIFEST_NAME), manifest).unwrap();
    }

    /// What the writer signs, the reader accepts: a manifest over the reader's 1 MiB limit
    /// is refused when the bundle is made, not on every device later.
    #[test]
    fn the_writer_keeps_the_readers_manifest_limit() {
        let t = tempfile::tempdir().unwrap();
        let key = super::super::keys::generate().unwrap();
        let ring = super::super::Keyring::from_keys(vec![key.verifying_key()]);
        let out = t.path().join("b.rota");

        source(t.path(), 1 << 20);
        let e = create(
            t.path(),
            &out,
            &key,
            4096,
            crate::version::VersionScheme::Semver,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("readers accept at most 1048576"), "{e}");
        assert!(!out.exists());

        source(t.path(), 900 << 10);
        create(
            t.path(),
            &out,
            &key,
            4096,
            crate::version::VersionScheme::Semver,
        )
        .unwrap();
        let mut src = crate::source::file::FileSource::open(&out).unwrap();
        let b = super::super::reader::open(&mut src, &ring).unwrap();
        assert_eq!(
            b.manifest.update.description.map(|d| d.len()),
            Some(900 << 10)
        );
    }

    /// A failed build leaves neither a bundle nor its temporary files behind.
    #[test]
    fn a_failed_build_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        let key = super::super::keys::generate().unwrap();
        source(t.path(), 10);
        let out = t.path().join("b.rota");
        let opts = CreateOptions {
            pack: Some(PackOptions {
                delta_from: Some(t.path().join("no-such-base.img")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = create_with(t.path(), &out, &key, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-base.img"), "{e}");
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("rota"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
