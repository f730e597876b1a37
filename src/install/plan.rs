//! Deciding what an install will do, before it does anything: the bundle must be meant
//! for this device (compatible), not a downgrade (unless forced), and every image must
//! have an inactive target slot large enough to hold it. A class whose slots have a
//! `parent` follows it (RAUC's slot groups): its target is the slot whose parent is the
//! bootable class's target, and it is installed together with that parent.

use super::{Context, InstallError};
use crate::bundle::{Bundle, ImageEntry, ImageTarget};
use crate::config::{McuSection, SlotConfig};
use crate::model::{InstallRequest, SlotContent};
use crate::state::State;
use crate::version::Version;

/// One image and where it goes.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    pub image: ImageEntry,
    pub slot: SlotConfig,
    /// The running slot of the same class, a source of unchanged chunks.
    pub active: Option<SlotConfig>,
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
        .version(ctx.config.system.version_scheme)
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    if !req.force_version {
        check_downgrade(ctx, state, &new_version)?;
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
        let active = crate::slot::booted_group(ctx.config, ctx.booted.as_ref())
            .into_iter()
            .find(|b| b.class == class);
        images.push(ImagePlan {
            image: img.clone(),
            slot,
            active,
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
            let rank = match st.map(|x| x.status) {
                Some(SlotContent::Failed | SlotContent::Cancelled | SlotContent::Installing) => 0,
                None => 1,
                Some(SlotContent::Ok) => 2,
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

/// What the booted system runs, and where that was learned.
fn running_version(ctx: &Context<'_>, state: &State) -> Option<(String, &'static str)> {
    let booted = ctx.booted.as_ref()?;
    let recorded = state
        .slots
        .get(&booted.name)
        .filter(|s| s.status == SlotContent::Ok && !s.version.is_empty());
    if let Some(r) = recorded {
        return Some((r.version.clone(), "recorded"));
    }
    let file = ctx.config.system.version_file.as_deref()?;
    match read_version_file(file) {
        Ok(v) => Some((v, "version-file")),
        Err(e) => {
            log::warn!("version-file {}: {e}", file.display());
            None
        }
    }
}

/// Largest version file read (an os-release file is well under 1 KiB).
const MAX_VERSION_FILE: u64 = 64 << 10;

/// The version in an os-release file (`VERSION_ID=`, quotes removed), or the first line of
/// a file that holds only a version.
pub fn read_version_file(path: &std::path::Path) -> Result<String, String> {
    let text =
        crate::fsutil::read_regular_text(path, MAX_VERSION_FILE).map_err(|e| e.to_string())?;
    let version = if text.lines().any(|l| l.contains('=')) {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("VERSION_ID="))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
            .ok_or("no VERSION_ID= line")?
    } else {
        text.lines().next().unwrap_or("").trim().to_owned()
    };
    if version.is_empty() {
        return Err("no version in it".into());
    }
    Ok(version)
}

/// Refuses a bundle older than the running system. Fails closed when rota lost its state
/// and cannot learn the running version otherwise: a torn `status.json` must not open the
/// door to an old, signed but vulnerable release.
fn check_downgrade(
    ctx: &Context<'_>,
    state: &State,
    new_version: &Version,
) -> Result<(), InstallError> {
    let refuse = |m: String| Err(InstallError::Refused(m));
    let scheme = ctx.config.system.version_scheme;
    match running_version(ctx, state) {
        Some((running, from)) => match scheme.parse(&running) {
            Ok(v) if new_version.compare(&v) == Some(std::cmp::Ordering::Less) => refuse(format!(
                "bundle version {new_version} is lower than the booted slot's {v} ({scheme} order; use --force-version to downgrade)"
            )),
            Ok(_) => Ok(()),
            Err(e) if state.lost.is_some() => refuse(format!(
                "the running version ({from}): {e}; rota's state was lost, so the downgrade check cannot be made (use --force-version if {new_version} is meant)"
            )),
            Err(e) => {
                log::warn!("booted slot's version ({from}): {e}; not comparing");
                Ok(())
            }
        },
        None => match &state.lost {
            Some(lost) => refuse(format!(
                "the running version is unknown, so the downgrade check cannot be made: {lost} (set [system] version-file, or use --force-version if {new_version} is meant)"
            )),
            None => Ok(()),
        },
    }
}
