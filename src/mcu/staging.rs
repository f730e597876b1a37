//! MCU images waiting for their relay: checked and copied into
//! `<data-dir>/mcu/staged/<node>.img` during the gateway's install, relayed once the
//! new rootfs is marked good (see the ordering decision in [`super`]).
//!
//! A staged image is checked again when it is relayed (it sits on disk in between).
//! It is removed once its relay has a definite outcome (confirmed, already running,
//! reverted); a relay that fails (node unreachable, cancelled) leaves it for the next
//! attempt.

use super::image::{self, McuImage};
use super::record;
use super::relay::{self, RelayOutcome, RelayProgress};
use super::McuError;
use crate::config::McuSection;
use crate::fsutil::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// `<data-dir>/mcu/staged`
pub fn dir(data_dir: &Path) -> PathBuf {
    record::dir(data_dir).join("staged")
}

/// Where a node's staged image lives.
pub fn path(data_dir: &Path, node: &str) -> PathBuf {
    dir(data_dir).join(format!("{node}.img"))
}

/// Checks an image file for `node` (with the node's key) and stages a copy.
pub fn stage_image(
    node: &str,
    cfg: &McuSection,
    src: &Path,
    data_dir: &Path,
) -> Result<McuImage, McuError> {
    let img = relay::load_for(cfg, src)?;
    store(node, &img, data_dir)?;
    Ok(img)
}

/// Checks image bytes (e.g. read from a bundle member; `name` is used in messages)
/// and stages them.
pub fn stage_bytes(
    node: &str,
    cfg: &McuSection,
    name: &Path,
    data: Vec<u8>,
    data_dir: &Path,
) -> Result<McuImage, McuError> {
    let key = cfg.key.as_deref().map(image::load_key).transpose()?;
    let img = image::parse(name, data, key.as_ref())?;
    store(node, &img, data_dir)?;
    Ok(img)
}

fn store(node: &str, img: &McuImage, data_dir: &Path) -> Result<(), McuError> {
    let d = dir(data_dir);
    // Both levels private (mcu/, then mcu/staged/), whatever the umask.
    crate::fsutil::create_private_dir(&record::dir(data_dir))
        .and_then(|()| crate::fsutil::create_private_dir(&d))
        .map_err(|e| McuError::io(format!("cannot create {}", d.display()), e))?;
    let p = path(data_dir, node);
    write_atomic(&p, &img.data)
        .map_err(|e| McuError::io(format!("cannot stage {}", p.display()), e))
}

/// Nodes that have a staged image, sorted.
pub fn staged_nodes(data_dir: &Path) -> Result<Vec<String>, McuError> {
    let d = dir(data_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(McuError::io(format!("cannot list {}", d.display()), e)),
    };
    let mut nodes: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".img"))
                .map(str::to_owned)
        })
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// Drops a node's staged image (e.g. the install that staged it failed).
pub fn discard(data_dir: &Path, node: &str) -> Result<(), McuError> {
    let p = path(data_dir, node);
    match std::fs::remove_file(&p) {
        Ok(()) => crate::fsutil::sync_dir(&dir(data_dir))
            .map_err(|e| McuError::io(format!("sync {}", p.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(McuError::io(format!("cannot remove {}", p.display()), e)),
    }
}

/// Relays a node's staged image; removes it once the outcome is definite.
pub fn relay_staged(
    node: &str,
    cfg: &McuSection,
    data_dir: &Path,
    progress: &mut dyn FnMut(RelayProgress),
    cancel: &AtomicBool,
) -> Result<RelayOutcome, McuError> {
    let p = path(data_dir, node);
    match relay::relay_file(node, cfg, &p, data_dir, progress, cancel) {
        Ok(outcome) => {
            discard(data_dir, node)?;
            Ok(outcome)
        }
        // Damaged on disk since it was staged: retrying cannot help.
        Err(e @ McuError::Image { .. }) => {
            discard(data_dir, node)?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}
