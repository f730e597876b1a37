//! The install pipeline, run on a worker thread:
//!
//! 1. open the bundle and check its signature ([`crate::bundle::reader::open`]);
//! 2. [`plan`]: compatible, version, target slots, sizes — all before any write; then
//!    the `pre-install` hook ([`hooks`]), which may refuse;
//! 3. journal the install and take each target slot out of the boot selection;
//! 4. [`copy`]: a staged pipeline per image — per chunk, reuse what the device already
//!    has (verified by hash) or fetch it, verify it, write it; read what landed back
//!    from the device as the copy goes and compare the signed CRC32 (`[install] read-back`);
//! 5. the `slot-post-install` hook per written slot (its file system mounted when its
//!    class is in `[hooks] mount-classes`), then the `post-install` hook: a failure
//!    leaves the slots out of the boot selection;
//! 6. record the slot status and its chunk index ([`slot_index`]), then activate the
//!    slot in the bootloader.
//!
//! MCU images of the bundle are checked with the others in step 2 and staged in step 3
//! ([`mcu`]); they are relayed later, once the update is marked good.
//!
//! Progress flows out through a callback; the pipeline never reaches into its caller.

pub mod blocks;
pub mod buffers;
pub mod copy;
pub mod hooks;
pub mod mcu;
pub mod plan;
pub mod progress;
pub mod slot_index;

use crate::boot::{BootError, Bootloader};
use crate::bundle::{self, Keyring};
use crate::config::{Config, SlotConfig};
use crate::model::{InstallRequest, LastInstall, Progress, SlotContent, UpdateResult};
use crate::slot::SlotWriter;
use crate::state::{InstallRecord, SlotStatus, StateStore};
use progress::Reporter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Refused before any byte was written to a slot.
    #[error("{0}")]
    Refused(String),
    /// Failed after writing began; the target slot stays out of the boot selection.
    #[error("{0}")]
    Failed(String),
    #[error("install cancelled")]
    Cancelled,
}

impl From<BootError> for InstallError {
    fn from(e: BootError) -> Self {
        InstallError::Failed(e.to_string())
    }
}

impl From<crate::state::StateError> for InstallError {
    fn from(e: crate::state::StateError) -> Self {
        InstallError::Failed(e.to_string())
    }
}

impl From<crate::slot::SlotError> for InstallError {
    fn from(e: crate::slot::SlotError) -> Self {
        InstallError::Failed(e.to_string())
    }
}

/// Everything the pipeline needs from the device.
pub struct Context<'a> {
    pub config: &'a Config,
    pub keyring: &'a Keyring,
    pub bootloader: &'a dyn Bootloader,
    pub store: &'a StateStore,
    pub booted: Option<SlotConfig>,
}

/// What a successful install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub version: String,
    pub manifest_hash: String,
    /// Slot names written, in manifest order.
    pub slots: Vec<String>,
    /// The bootname now first in the boot order, if a bootable slot was written.
    pub activated: Option<String>,
    /// MCU nodes whose images were staged for relay.
    pub mcu: Vec<String>,
    pub bytes_written: u64,
    pub bytes_downloaded: u64,
    pub bytes_reused: u64,
}

/// The running slot `slot` as a source of chunks, with its recorded chunk index when
/// there is one for what the state file says it holds.
fn active_slot(
    ctx: &Context<'_>,
    state: &crate::state::State,
    slot: &SlotConfig,
) -> Option<copy::ActiveSlot> {
    let reader = match crate::slot::SlotReader::open(&slot.device) {
        Ok(r) => r,
        Err(e) => {
            log::warn!(
                "cannot read running slot {} for reuse ({e}); fetching everything",
                slot.device.display()
            );
            return None;
        }
    };
    let locations = state
        .slots
        .get(&slot.name)
        .filter(|s| s.status == SlotContent::Ok && !s.sha256.is_empty())
        .and_then(|s| {
            slot_index::SlotIndex::load(&ctx.config.system.data_dir, &slot.name, &s.sha256)
        })
        .map(|r| r.locations());
    if locations.is_none() {
        log::info!(
            "no chunk index recorded for running slot {}: probing it at the same offsets",
            slot.name
        );
    }
    Some(copy::ActiveSlot { reader, locations })
}

/// An image's index, as its layout in the bundle has it.
pub enum ImageIndex {
    Chunks(crate::bundle::ChunkIndex),
    Blocks(crate::bundle::blockmap::BlockMap),
}

impl ImageIndex {
    /// Fetches and checks the index of `image` against the signed manifest.
    pub fn fetch(
        bundle: &crate::bundle::Bundle,
        source: &mut dyn crate::source::ByteSource,
        image: &crate::bundle::ImageEntry,
    ) -> Result<ImageIndex, crate::bundle::BundleError> {
        Ok(match image.layout() {
            crate::bundle::manifest::Layout::Chunks => {
                ImageIndex::Chunks(bundle.chunk_index(source, image)?)
            }
            crate::bundle::manifest::Layout::Blocks => {
                ImageIndex::Blocks(bundle.block_map(source, image)?)
            }
        })
    }
}

/// The running slot `slot` as a source of blocks: its key table, built by hashing it
/// once. `None` (everything is fetched) when it cannot be read.
pub fn running_blocks(
    ctx: &Context<'_>,
    state: &crate::state::State,
    slot: &SlotConfig,
    cancel: &AtomicBool,
    reporter: &mut Reporter<'_>,
) -> Option<blocks::Running> {
    let recorded = state
        .slots
        .get(&slot.name)
        .filter(|s| s.status == SlotContent::Ok && !s.sha256.is_empty())
        .and_then(|s| slot_index::load_keys(&ctx.config.system.data_dir, &slot.name, &s.sha256));
    let open = || -> std::io::Result<blocks::Running> {
        let reader = crate::slot::SlotReader::open(&slot.device)?;
        let keys = match recorded {
            Some(entries) => blocks::KeyTable::from_sorted(entries),
            None => {
                let size = crate::slot::device_size(slot).map_err(std::io::Error::other)?;
                blocks::KeyTable::scan(&reader, size, cancel)?
            }
        };
        Ok(blocks::Running { reader, keys })
    };
    reporter.step(2, &format!("Indexing running slot {}", slot.name));
    match open() {
        Ok(r) => {
            log::info!(
                "running slot {}: {} distinct non-zero blocks indexed",
                slot.name,
                r.keys.len()
            );
            Some(r)
        }
        Err(e) => {
            log::warn!(
                "cannot read running slot {} for reuse ({e}); fetching everything",
                slot.device.display()
            );
            None
        }
    }
}

/// Remembers what `slot` now holds. Best effort: without a record the next update probes.
fn record_index(
    data_dir: &std::path::Path,
    slot: &str,
    image: &crate::bundle::ImageEntry,
    index: &crate::bundle::ChunkIndex,
) {
    let mut image_sha256 = [0u8; 32];
    if hex::decode_to_slice(&image.sha256, &mut image_sha256).is_err() {
        return;
    }
    let record = slot_index::SlotIndex {
        image_sha256,
        index: index.clone(),
    };
    if let Err(e) = record.save(data_dir, slot) {
        log::warn!("cannot record the chunk index of {slot}: {e}");
    }
}

/// `slot-post-install` for each written slot (mounted when its class is in
/// `[hooks] mount-classes`), then `post-install`. Any failure fails the install before
/// the activation.
fn run_post_install_hooks(
    ctx: &Context<'_>,
    install: &hooks::Install<'_>,
    plan: &plan::Plan,
    cancel: &AtomicBool,
    reporter: &mut Reporter<'_>,
) -> Result<(), InstallError> {
    let h = &ctx.config.hooks;
    if h.slot_post_install.is_some() {
        for p in &plan.images {
            reporter.step(
                2,
                &format!("Running slot-post-install hook for {}", p.slot.name),
            );
            let mount = if h.mount_classes.contains(&p.slot.class) {
                Some(hooks::Mount::slot(&p.slot, &h.mount_prefix)?)
            } else {
                None
            };
            let target = hooks::SlotImage {
                slot: &p.slot,
                image: &p.image,
            };
            let env = hooks::slot_env(install, &target, mount.as_ref().map(|m| m.point()));
            let ran = hooks::run(hooks::Hook::SlotPostInstall, ctx.config, &env, cancel);
            // Unmounted whatever the hook did; its own failure is the one reported.
            let unmounted = mount.map_or(Ok(()), hooks::Mount::unmount);
            ran?;
            unmounted?;
        }
    }
    if h.post_install.is_some() {
        reporter.step(2, "Running post-install hook");
        let env = hooks::env(hooks::Hook::PostInstall, install);
        hooks::run(hooks::Hook::PostInstall, ctx.config, &env, cancel)?;
    }
    Ok(())
}

/// How many bytes installing `req` would download, with every check the install makes
/// before it writes (signature, compatible, version, slot size), reading but never
/// writing. Slot images in blocks are planned for real against the running slot; chunked
/// images count whole.
pub fn estimate(
    ctx: &Context<'_>,
    req: &InstallRequest,
    cancel: Arc<AtomicBool>,
) -> Result<crate::model::DownloadEstimate, InstallError> {
    let http = crate::source::http::HttpOptions::from_config(&ctx.config.http).with_request(req);
    let mut source = crate::source::open(&req.source, &http, cancel.clone())
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    if ctx.keyring.is_empty() {
        return Err(InstallError::Refused(
            "no trusted keys: [keyring] paths is empty, so no bundle can be verified".into(),
        ));
    }
    let bundle = bundle::reader::open(source.as_mut(), ctx.keyring)
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    let state = ctx.store.load()?;
    let plan = plan::make(ctx, &state, req, &bundle)?;
    let mut est = crate::model::DownloadEstimate::default();
    let mut reporter_sink = |_: Progress| {};
    let mut reporter = Reporter::new(&mut reporter_sink);
    for p in &plan.images {
        est.total += p.image.size;
        match ImageIndex::fetch(&bundle, source.as_mut(), &p.image)
            .map_err(|e| InstallError::Refused(e.to_string()))?
        {
            ImageIndex::Chunks(_) => est.download += p.image.size,
            ImageIndex::Blocks(map) => {
                // As the install: local bundles are read whole, URLs reuse.
                let running = p
                    .active
                    .as_ref()
                    .filter(|_| req.source.is_remote())
                    .and_then(|a| running_blocks(ctx, &state, a, &cancel, &mut reporter));
                let e = blocks::estimate(&map, running.as_ref(), &cancel)?;
                est.download += e.download;
                est.reuse += e.reuse;
                est.zero += e.zero;
            }
        }
    }
    for m in &plan.mcu {
        est.download += m.image.size;
    }
    // What opening the bundle and reading its maps took (an install reads the same).
    est.download += source.bytes_fetched();
    Ok(est)
}

pub(crate) fn check_cancel(cancel: &AtomicBool) -> Result<(), InstallError> {
    if cancel.load(Ordering::Relaxed) {
        Err(InstallError::Cancelled)
    } else {
        Ok(())
    }
}

/// Runs one install to the end. `resuming` is true when a journal from an interrupted
/// run of the same transaction exists: the target slot is then re-checked chunk by chunk
/// and only what is missing or wrong is fetched again. `on_retry` hears why the HTTP
/// source retries a transfer (while it waits, no byte flows and `emit` has nothing new to
/// say): the caller shows it as `retrying: <reason>` until the next progress event.
pub fn run(
    ctx: &Context<'_>,
    transaction: &str,
    req: &InstallRequest,
    resuming: bool,
    cancel: Arc<AtomicBool>,
    emit: &mut dyn FnMut(Progress),
    on_retry: Option<crate::source::http::RetryNotice>,
) -> Result<Summary, InstallError> {
    let mut reporter = Reporter::new(emit);
    reporter.step(1, "Opening bundle");
    let mut http =
        crate::source::http::HttpOptions::from_config(&ctx.config.http).with_request(req);
    http.on_retry = on_retry;
    let mut source = crate::source::open(&req.source, &http, cancel.clone())
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    let remote = req.source.is_remote();

    reporter.step(2, "Verifying signature");
    if ctx.keyring.is_empty() {
        return Err(InstallError::Refused(
            "no trusted keys: [keyring] paths is empty, so no bundle can be verified".into(),
        ));
    }
    let bundle = bundle::reader::open(source.as_mut(), ctx.keyring)
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    check_cancel(&cancel)?;

    reporter.step(2, "Checking bundle");
    let state = ctx.store.load()?;
    let plan = plan::make(ctx, &state, req, &bundle)?;
    let chunk_indexes = plan
        .images
        .iter()
        .map(|p| ImageIndex::fetch(&bundle, source.as_mut(), &p.image))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InstallError::Refused(e.to_string()))?;
    if !plan.mcu.is_empty() {
        reporter.step(2, "Checking MCU images");
        mcu::check(source.as_mut(), &bundle, &plan.mcu)?;
    }
    check_cancel(&cancel)?;
    let hook_install = hooks::Install {
        config: ctx.config,
        transaction,
        compatible: &bundle.manifest.update.compatible,
        version: &bundle.manifest.update.version,
        booted: ctx.booted.as_ref().and_then(|b| b.bootname.as_deref()),
        targets: plan.images.iter().map(|p| &p.slot).collect(),
    };
    if ctx.config.hooks.pre_install.is_some() {
        reporter.step(2, "Running pre-install hook");
        let env = hooks::env(hooks::Hook::PreInstall, &hook_install);
        hooks::run(hooks::Hook::PreInstall, ctx.config, &env, &cancel)?;
    }

    // From here on slots are touched: remember the bundle, take targets out of selection.
    let version = bundle.manifest.update.version.clone();
    let same_bundle = ctx.store.update(|state| {
        let same_bundle = state
            .journal
            .as_ref()
            .is_some_and(|j| j.manifest_hash == bundle.manifest_hash);
        if let Some(j) = state.journal.as_mut() {
            if resuming && !j.manifest_hash.is_empty() && !same_bundle {
                log::warn!(
                "bundle changed since the interrupted attempt (manifest {} -> {}); starting over",
                j.manifest_hash,
                bundle.manifest_hash
            );
            }
            j.manifest_hash = bundle.manifest_hash.clone();
            j.target = plan
                .images
                .iter()
                .find(|p| p.slot.bootname.is_some())
                .or(plan.images.first())
                .map(|p| p.slot.name.clone())
                .unwrap_or_default();
        }
        for p in &plan.images {
            state.slots.insert(
                p.slot.name.clone(),
                SlotStatus {
                    status: SlotContent::Installing,
                    version: version.clone(),
                    compatible: bundle.manifest.update.compatible.clone(),
                    bundle_hash: bundle.manifest_hash.clone(),
                    transaction: transaction.to_owned(),
                    ..Default::default()
                },
            );
        }
        // The record follows the bootable slot (a slot with a parent comes with it).
        let first = plan
            .images
            .iter()
            .find(|p| p.slot.bootname.is_some())
            .or(plan.images.first())
            .map(|p| p.slot.clone());
        // A bundle of MCU images only has no slot; its record names the nodes.
        let first_name = first.as_ref().map(|s| s.name.clone()).unwrap_or_else(|| {
            plan.mcu
                .iter()
                .map(|m| format!("mcu:{}", m.node))
                .collect::<Vec<_>>()
                .join(",")
        });
        state.last_install = Some(InstallRecord {
            install: LastInstall {
                version: version.clone(),
                slot: first_name,
                transaction: transaction.to_owned(),
                result: UpdateResult::Installing,
                error: String::new(),
            },
            bootname: first
                .as_ref()
                .and_then(|s| s.bootname.clone())
                .unwrap_or_default(),
        });
        same_bundle
    })?;
    crate::failpoint::hit("install.after-journal");
    let data_dir = &ctx.config.system.data_dir;
    for p in &plan.images {
        slot_index::SlotIndex::forget(data_dir, &p.slot.name).map_err(|e| {
            InstallError::Failed(format!(
                "forgetting the chunk index of {}: {e}",
                p.slot.name
            ))
        })?;
        if let Some(b) = &p.slot.bootname {
            ctx.bootloader.update(&mut |s| s.disable(b))?;
            log::info!(
                "slot {} ({b}) taken out of the boot selection before writing",
                p.slot.name
            );
        }
    }

    if !plan.mcu.is_empty() {
        reporter.step(2, "Staging MCU images");
        mcu::stage(
            source.as_mut(),
            &bundle,
            &plan.mcu,
            &ctx.config.system.data_dir,
        )?;
    }

    crate::failpoint::hit("install.after-disable");

    // Copy every image, verified chunk by chunk.
    let total: u64 = plan.images.iter().map(|p| p.image.size).sum();
    let in_use = crate::slot::booted_group(ctx.config, ctx.booted.as_ref());
    reporter.set_total(total);
    let mut written = 0;
    for (p, index) in plan.images.iter().zip(&chunk_indexes) {
        reporter.step(2, &format!("Writing {} to {}", p.image.file, p.slot.name));
        let writer = SlotWriter::open_guarded(&p.slot, &in_use, &crate::slot::Host::default())?;
        let member = bundle
            .image_member(&p.image)
            .map_err(|e| InstallError::Failed(e.to_string()))?
            .clone();
        match index {
            ImageIndex::Chunks(index) => {
                let reuse = copy::Reuse {
                    // Only an interrupted attempt left anything worth keeping in the target.
                    target: resuming || same_bundle,
                    // Network installs take unchanged chunks from the running slot.
                    active: if remote {
                        p.active.as_ref().and_then(|a| active_slot(ctx, &state, a))
                    } else {
                        None
                    },
                };
                let job = copy::Job {
                    member: &member,
                    image: &p.image,
                    index,
                    writer: &writer,
                    reuse: &reuse,
                    read_back: ctx.config.install.read_back,
                    cancel: &cancel,
                };
                copy::copy_image(source.as_mut(), &job, &mut reporter)?;
            }
            ImageIndex::Blocks(map) => {
                let running = if remote {
                    p.active
                        .as_ref()
                        .and_then(|a| running_blocks(ctx, &state, a, &cancel, &mut reporter))
                } else {
                    None
                };
                reporter.step(2, &format!("Writing {} to {}", p.image.file, p.slot.name));
                let job = blocks::BlockJob {
                    member: &member,
                    image: &p.image,
                    map,
                    writer: &writer,
                    resume: resuming || same_bundle,
                    running: running.as_ref(),
                    read_back: ctx.config.install.read_back,
                    cancel: &cancel,
                };
                blocks::copy_blocks(source.as_mut(), &job, &mut reporter)?;
            }
        }
        check_cancel(&cancel)?;
        crate::failpoint::hit("install.after-read-back");
        written += p.image.size;
    }

    run_post_install_hooks(ctx, &hook_install, &plan, &cancel, &mut reporter)?;

    // Record what is in the slots, then activate: a crash in between resumes and re-activates.
    let now = crate::state::now_rfc3339();
    ctx.store.update(|state| {
        for p in &plan.images {
            if let Some(s) = state.slots.get_mut(&p.slot.name) {
                s.status = SlotContent::Ok;
                s.sha256 = p.image.sha256.clone();
                s.size = p.image.size;
                s.installed_at = now.clone();
            }
        }
    })?;
    for (p, index) in plan.images.iter().zip(&chunk_indexes) {
        match index {
            ImageIndex::Chunks(index) => record_index(data_dir, &p.slot.name, &p.image, index),
            ImageIndex::Blocks(map) => {
                let mut sha = [0u8; 32];
                if hex::decode_to_slice(&p.image.sha256, &mut sha).is_ok() {
                    if let Err(e) = slot_index::save_keys(data_dir, &p.slot.name, &sha, map) {
                        log::warn!("cannot record the block keys of {}: {e}", p.slot.name);
                    }
                }
            }
        }
    }
    crate::failpoint::hit("install.after-record");
    reporter.step(2, "Activating");
    let attempts = ctx.config.system.boot_attempts;
    let fallback = ctx.booted.as_ref().and_then(|b| b.bootname.clone());
    let activated = plan.images.iter().find_map(|p| p.slot.bootname.clone());
    if let Some(b) = &activated {
        let sel = ctx
            .bootloader
            .update(&mut |s| s.activate(b, attempts, fallback.as_deref()))?;
        log::info!("activated slot {b}: BOOT_ORDER=\"{}\"", sel.order.join(" "));
    }
    crate::failpoint::hit("install.after-activate");
    ctx.store.update(|state| {
        if let Some(li) = state.last_install.as_mut() {
            li.install.result = if activated.is_some() {
                UpdateResult::Activated
            } else {
                UpdateResult::Good
            };
        }
        state.journal = None;
    })?;
    let reused = reporter.reused_bytes();
    reporter.finish("Installing done.");
    Ok(Summary {
        version,
        manifest_hash: bundle.manifest_hash,
        slots: plan.images.iter().map(|p| p.slot.name.clone()).collect(),
        activated,
        mcu: plan.mcu.iter().map(|m| m.node.clone()).collect(),
        bytes_written: written,
        bytes_downloaded: source.bytes_fetched(),
        bytes_reused: reused,
    })
}
