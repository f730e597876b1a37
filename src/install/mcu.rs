//! The microcontroller images of a bundle: read whole (they are small), checked against
//! the signed manifest (size, SHA-256, CRC32) and then as MCU images (MCUboot hash TLV
//! and the node's key, or the raw CRC32 trailer), then staged in the data dir for the
//! relay that follows "mark good" (see the ordering decision in [`crate::mcu`]).
//!
//! [`check`] runs before any slot is touched, so a bad MCU image refuses the whole
//! bundle with nothing written; [`stage`] runs once the install is committed to go on.

use super::plan::McuPlan;
use super::InstallError;
use crate::bundle::digest::ImageDigest;
use crate::bundle::Bundle;
use crate::source::ByteSource;
use std::io::Read;
use std::path::Path;

/// Reads an MCU image from the bundle and checks it against the signed manifest.
fn read_verified(
    source: &mut dyn ByteSource,
    bundle: &Bundle,
    plan: &McuPlan,
) -> Result<Vec<u8>, InstallError> {
    let img = &plan.image;
    let member = bundle
        .image_member(img)
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    if member.size != img.size {
        return Err(InstallError::Refused(format!(
            "bundle member {} is {} bytes, the manifest says {}",
            img.file, member.size, img.size
        )));
    }
    let len = usize::try_from(img.size)
        .map_err(|_| InstallError::Refused(format!("image {} is too large to hold", img.file)))?;
    let mut data = Vec::with_capacity(len);
    source
        .read_range(member.offset, img.size)
        .map_err(|e| InstallError::Refused(e.to_string()))?
        .take(img.size)
        .read_to_end(&mut data)
        .map_err(|e| InstallError::Refused(format!("cannot read {}: {e}", img.file)))?;
    if data.len() != len {
        return Err(InstallError::Refused(format!(
            "bundle ends inside {} ({} of {} bytes)",
            img.file,
            data.len(),
            img.size
        )));
    }
    ImageDigest::of(&data).check(img).map_err(|m| {
        InstallError::Refused(format!(
            "image {} for MCU node {} does not match the signed manifest: {m}",
            img.file, plan.node
        ))
    })?;
    Ok(data)
}

fn mcu_check(plan: &McuPlan, data: Vec<u8>) -> Result<(), InstallError> {
    let key = plan
        .cfg
        .key
        .as_deref()
        .map(crate::mcu::image::load_key)
        .transpose()
        .map_err(|e| InstallError::Refused(format!("MCU node {}: {e}", plan.node)))?;
    crate::mcu::image::parse(Path::new(&plan.image.file), data, key.as_ref())
        .map(drop)
        .map_err(|e| InstallError::Refused(format!("MCU node {}: {e}", plan.node)))
}

/// Checks every MCU image of the plan; writes nothing.
pub fn check(
    source: &mut dyn ByteSource,
    bundle: &Bundle,
    plans: &[McuPlan],
) -> Result<(), InstallError> {
    for p in plans {
        let data = read_verified(source, bundle, p)?;
        mcu_check(p, data)?;
    }
    Ok(())
}

/// Replaces whatever was staged by an earlier install with this bundle's MCU images.
pub fn stage(
    source: &mut dyn ByteSource,
    bundle: &Bundle,
    plans: &[McuPlan],
    data_dir: &Path,
) -> Result<(), InstallError> {
    let failed = |e: crate::mcu::McuError| InstallError::Failed(e.to_string());
    for node in crate::mcu::staging::staged_nodes(data_dir).map_err(failed)? {
        if !plans.iter().any(|p| p.node == node) {
            log::info!("mcu {node}: dropping the image an earlier install staged");
        }
        crate::mcu::staging::discard(data_dir, &node).map_err(failed)?;
    }
    for p in plans {
        let data = read_verified(source, bundle, p).map_err(|e| match e {
            InstallError::Refused(m) => InstallError::Failed(m),
            other => other,
        })?;
        // stage_bytes checks the image as an MCU image again before it stores it.
        crate::mcu::staging::stage_bytes(&p.node, &p.cfg, Path::new(&p.image.file), data, data_dir)
            .map_err(|e| InstallError::Failed(format!("MCU node {}: {e}", p.node)))?;
        log::info!(
            "mcu {}: staged {} ({} bytes); relayed once the update is marked good",
            p.node,
            p.image.file,
            p.image.size
        );
    }
    Ok(())
}
