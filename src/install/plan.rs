//! Deciding what an install will do, before it does anything: the bundle must be meant
//! for this device (compatible), not a downgrade (unless forced), and every image must
//! have an inactive target slot large enough to hold it. A class whose slots have a
//! `parent` follows it (RAUC's slot groups): its target is the slot whose parent is the
//! bootable class's target, and it is installed together with that parent.

use super::{Context, InstallError};
use crate::agent::InstallRequest;
use crate::bundle::{Bundle, ImageEntry, ImageTarget};
use crate::config::{McuSection, SlotConfig};
use crate::state::State;
use std::path::PathBuf;

/// One image and where it goes.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub image: ImageEntry,
    pub slot: SlotConfig,
    /// The running slot of the same class, a source of unchanged chunks.
    pub active_device: Option<PathBuf>,
}

/// One microcontroller image and the `[mcu.<node>]` it is relayed to.
#[derive(Debug, Clone)]
pub struct McuPlan {
    pub image: ImageEntry,
    pub node: String,
    pub cfg: McuSection,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub images: Vec<ImagePlan>,
    pub mcu: Vec<McuPlan>,
}

/// MCU images are read whole into memory to be checked and staged; anything larger
/// than the MCU module's limit is refused before a byte of it is read.
pub const MAX_MCU_IMAGE: u64 = crate::mcu::image::MAX_IMAGE_SIZE;

pub fn make(
    ctx: &Context<'_>,
    state: &State,
    req: &InstallRequest,
    bundle: &Bundle,
) -> Result<Plan, InstallError> {
    let refuse = |m: String| Err(InstallError::Refused(m));
    let update = &bundle.manifest.update;
    if let Some(want) = &req.require_manifest_hash {
        if !want.eq_ignore_ascii_case(&bundle.manifest_hash) {
            return refuse(format!(
                "manifest hash is {}, but {want} was required",
                bundle.manifest_hash
            ));
        }
    }
    let compatible = &ctx.config.system.compatible;
    if !req.ignore_compatible && &update.compatible != compatible {
        return refuse(format!(
            "bundle is for {:?}, this device is {:?} (use --ignore-compatible to override)",
            update.compatible, compatible
        ));
    }
    let new_version = bundle
        .manifest
        .version()
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    if let Some(booted) = &ctx.booted {
        let running = state
            .slots
            .get(&booted.name)
            .filter(|s| s.status == "ok" && !s.version.is_empty());
        if let Some(running) = running {
            match semver::Version::parse(&running.version) {
                Ok(v) if new_version < v && !req.force_version => {
                    return refuse(format!(
                        "bundle version {new_version} is lower than the booted slot's {v} (use --force-version to downgrade)"
                    ))
                }
                Ok(_) => {}
                Err(e) => log::warn!("booted slot's recorded version {:?} is not semver ({e}); not comparing", running.version),
            }
        }
    }

    let mut images = Vec::new();
    let mut mcu: Vec<McuPlan> = Vec::new();
    for img in &bundle.manifest.images {
        let class = match img.target() {
            ImageTarget::SlotClass(c) => c,
            ImageTarget::Mcu(node) => {
                let Some(cfg) = ctx.config.mcu.get(&node) else {
                    return refuse(format!(
                        "image {} is for MCU node {node:?}, which is not configured here (no [mcu.{node}] in the config)",
                        img.file
                    ));
                };
                if mcu.iter().any(|m| m.node == node) {
                    return refuse(format!("two images of the bundle target MCU node {node}"));
                }
                if img.size > MAX_MCU_IMAGE {
                    return refuse(format!(
                        "image {} for MCU node {node} is {} bytes; MCU images are limited to {MAX_MCU_IMAGE} bytes",
                        img.file, img.size
                    ));
                }
                if img.size == 0 {
                    return refuse(format!("image {} for MCU node {node} is empty", img.file));
                }
                mcu.push(McuPlan {
                    image: img.clone(),
                    node,
                    cfg: cfg.clone(),
                });
                continue;
            }
        };
        let slot = pick_target(ctx, state, &class, &img.file)?;
        if images.iter().any(|p: &ImagePlan| p.slot.name == slot.name) {
            return refuse(format!(
                "two images of the bundle target slot {}",
                slot.name
            ));
        }
        let capacity =
            crate::slot::device_size(&slot).map_err(|e| InstallError::Refused(e.to_string()))?;
        if img.size > capacity {
            return refuse(format!(
                "image {} is {} bytes, larger than slot {} ({}) which holds {capacity} bytes",
                img.file,
                img.size,
                slot.name,
                slot.device.display()
            ));
        }
        let active_device = crate::slot::booted_group(ctx.config, ctx.booted.as_ref())
            .into_iter()
            .find(|b| b.class == class)
            .map(|b| b.device);
        images.push(ImagePlan {
            image: img.clone(),
            slot,
            active_device,
        });
    }
    if images.is_empty() && mcu.is_empty() {
        return refuse("bundle has no images".into());
    }
    // A slot with a parent boots with it: written alone, the parent's old content would
    // boot with the new child (or the child would wait, written, for an unknown boot).
    for p in &images {
        if let Some(parent) = &p.slot.parent {
            if !images.iter().any(|q| &q.slot.name == parent) {
                return refuse(format!(
                    "image {} goes to slot {}, whose parent {parent} gets no image from this bundle; a slot with a parent is installed together with its parent",
                    p.image.file, p.slot.name
                ));
            }
        }
    }
    Ok(Plan { images, mcu })
}

/// The inactive slot of `class`: never one the running system uses (the booted slot
/// group), nor a mounted one. With more than one candidate (A/B/C), prefer a failed
/// slot, then a never-written one, then the oldest install. A class whose slots have
/// parents takes the slot whose parent is the parent class's target.
fn pick_target(
    ctx: &Context<'_>,
    state: &State,
    class: &str,
    file: &str,
) -> Result<SlotConfig, InstallError> {
    let booted = ctx.booted.as_ref();
    let in_use = crate::slot::booted_group(ctx.config, booted);
    let all: Vec<SlotConfig> = ctx
        .config
        .slots()
        .into_iter()
        .filter(|s| s.class == class)
        .collect();
    if all.is_empty() {
        return Err(InstallError::Refused(format!(
            "image {file} is for slot class {class:?}, which is not configured"
        )));
    }
    let target = if let Some(parent) = all.iter().find_map(|s| s.parent.clone()) {
        let parent_class = crate::slot::find_slot(ctx.config, &parent)
            .map(|p| p.class)
            .ok_or_else(|| {
                InstallError::Refused(format!("slot parent {parent:?} is not configured"))
            })?;
        if parent_class == class {
            return Err(InstallError::Refused(format!(
                "slot class {class:?} is its own parent"
            )));
        }
        let parent_target = pick_target(ctx, state, &parent_class, file)?;
        all.into_iter()
            .find(|s| s.parent.as_deref() == Some(parent_target.name.as_str()))
            .ok_or_else(|| {
                InstallError::Refused(format!(
                    "image {file} is for slot class {class:?}, but none of its slots has parent {} (the target of class {parent_class:?})",
                    parent_target.name
                ))
            })?
    } else {
        if all.len() > 1 && all.iter().all(|s| s.bootname.is_none()) {
            return Err(InstallError::Refused(format!(
                "image {file} is for slot class {class:?}, whose {} slots have neither a bootname nor a parent: rota cannot tell which copy the running system uses (give each one parent = \"<bootable slot>\", e.g. \"rootfs.0\")",
                all.len()
            )));
        }
        if booted.is_none() && all.iter().any(|s| s.bootname.is_some()) {
            return Err(InstallError::Refused(format!(
                "cannot tell which slot is booted: no rota.slot= or rauc.slot= naming a configured slot in {}",
                ctx.config.system.kernel_cmdline.display()
            )));
        }
        let several = all.len() > 1;
        let mut candidates: Vec<SlotConfig> = all
            .into_iter()
            // In a class of several, only bootable slots are A/B copies.
            .filter(|s| !several || s.bootname.is_some())
            .filter(|s| !in_use.iter().any(|u| u.name == s.name))
            .collect();
        candidates.sort_by_key(|s| {
            let st = state.slots.get(&s.name);
            let rank = match st.map(|x| x.status.as_str()) {
                Some("failed") | Some("cancelled") | Some("installing") => 0,
                None => 1,
                Some(_) => 2,
            };
            (
                rank,
                st.map(|x| x.installed_at.clone()).unwrap_or_default(),
                s.index,
            )
        });
        candidates.into_iter().next().ok_or_else(|| {
            InstallError::Refused(format!(
                "slot class {class:?} has no inactive slot to install {file} into"
            ))
        })?
    };
    crate::slot::check_writable(&target, &in_use, &crate::slot::Host::default())
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    Ok(target)
}
