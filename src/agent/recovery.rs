//! After a restart: decide what becomes of an install the journal says was running
//! ([`settle_journal`]), and follow the last install through the reboot into its slot —
//! booted, or rolled back by the bootloader ([`follow_up`]). Both are pure decisions on
//! the state, the boot selection and the booted slot; the caller records them.

use super::Device;
use crate::boot::BootState;
use crate::model::{LastInstall, SlotContent, UpdateResult};
use crate::state::{InstallRecord, State};

/// How many times in a row an interrupted install is resumed before it is given up.
pub const MAX_RESUMES: u32 = 10;

/// Decides at start whether the journal of an interrupted install is resumed. It is not
/// (and is closed) when
/// - the device now runs another slot than the install started on: a power cut after
///   activation rebooted it into the new slot, whose content was verified before it was
///   activated — the update is then `activated` (and [`follow_up`] sees it booted);
///   anything else is reported failed. Resuming would write the *other* slot — the old,
///   known-good fallback — and activate it;
/// - its target was verified and activated, and the bootloader has since spent its
///   attempts and fallen back: the update is `activated` and [`follow_up`] reports the
///   rollback — resuming would activate it again and undo the bootloader's decision;
/// - it was already resumed [`MAX_RESUMES`] times and died every time: the service would
///   otherwise crash at every start and the journal would block every other install.
///
/// Returns the failure message, if the install is reported failed.
pub(super) fn settle_journal(
    device: &Device,
    state: &mut State,
    boot: Option<&BootState>,
) -> Option<String> {
    let j = state.journal.clone()?;
    let booted = device
        .booted
        .as_ref()
        .map(|b| b.name.as_str())
        .unwrap_or("");
    // The target holds this install's verified image (recorded before activation).
    let verified = !j.target.is_empty()
        && state
            .slots
            .get(&j.target)
            .is_some_and(|s| s.status == SlotContent::Ok && s.transaction == j.transaction);
    // Activated (back in BOOT_ORDER: disabling takes a slot out) and then spent by the
    // bootloader: it fell back from the new slot.
    let target_boot = crate::slot::find_slot(&device.config, &j.target).and_then(|s| s.bootname);
    let spent = verified
        && target_boot.as_deref().is_some_and(|b| {
            boot.is_some_and(|st| st.order.iter().any(|o| o == b) && st.attempts_left(b) == 0)
        });
    let (result, msg) = if !j.booted.is_empty() && j.booted != booted {
        if verified && j.target == booted {
            log::info!(
                "install {} was interrupted after activating slot {booted}, which is now running; not resuming it",
                j.transaction
            );
            (UpdateResult::Activated, None)
        } else {
            (
                UpdateResult::Failed,
                Some(format!(
                    "install {} was interrupted: it started on slot {} and the device now runs {}",
                    j.transaction,
                    j.booted,
                    if booted.is_empty() {
                        "an unknown slot"
                    } else {
                        booted
                    }
                )),
            )
        }
    } else if spent {
        // Resuming would activate it again with full attempts: the bootloader's fallback
        // would be undone and the device would spend them all over again.
        log::warn!(
            "install {} was interrupted after activating slot {}, which the bootloader has since given up on; not resuming it",
            j.transaction,
            j.target
        );
        (UpdateResult::Activated, None)
    } else if j.resumed >= MAX_RESUMES {
        (
            UpdateResult::Failed,
            Some(format!(
                "install {} was interrupted {} times in a row and is given up; its target slot stays out of the boot selection",
                j.transaction,
                j.resumed + 1
            )),
        )
    } else {
        return None;
    };
    state.journal = None;
    match state
        .last_install
        .as_mut()
        .filter(|l| l.install.transaction == j.transaction)
    {
        Some(li) => {
            li.install.result = result;
            if let Some(m) = &msg {
                li.install.error = m.clone();
            }
        }
        None => {
            if let Some(m) = &msg {
                state.last_install = Some(InstallRecord {
                    install: LastInstall {
                        transaction: j.transaction.clone(),
                        result,
                        error: m.clone(),
                        ..Default::default()
                    },
                    ..Default::default()
                });
            }
        }
    }
    for s in state.slots.values_mut() {
        if s.transaction == j.transaction && s.status == SlotContent::Installing {
            s.status = SlotContent::Failed;
        }
    }
    if let Some(m) = &msg {
        log::error!("{m}");
    }
    msg
}

/// Follows the last install through reboot: returns a message when the bootloader fell back.
pub(super) fn follow_up(device: &Device, state: &mut State, boot: &BootState) -> Option<String> {
    let booted = device.booted.as_ref()?;
    let li = state.last_install.as_mut()?;
    if li.install.result == UpdateResult::RolledBack && booted.name == li.install.slot {
        // The bootloader fell back, then tried the new slot again (its counters all ran
        // out and were reset, or someone made it first again) and now it runs.
        log::info!(
            "running the new slot {} ({}) with version {} after an earlier rollback; not yet marked good",
            li.install.slot,
            li.bootname,
            li.install.version
        );
        li.install.result = UpdateResult::Booted;
        li.install.error.clear();
        return None;
    }
    if li.install.result != UpdateResult::Activated && li.install.result != UpdateResult::Booted {
        return None;
    }
    if booted.name == li.install.slot {
        if li.install.result == UpdateResult::Activated {
            log::info!(
                "running the new slot {} ({}) with version {}; not yet marked good",
                li.install.slot,
                li.bootname,
                li.install.version
            );
            li.install.result = UpdateResult::Booted;
        }
        return None;
    }
    // Booted the other slot. Still waiting for the reboot if the new slot is untouched:
    // first in the order with a full counter.
    let untouched = boot.primary() == Some(li.bootname.as_str())
        && boot.attempts_left(&li.bootname) >= device.config.system.boot_attempts;
    if li.install.result == UpdateResult::Activated && untouched {
        return None;
    }
    li.install.result = UpdateResult::RolledBack;
    let msg = format!(
        "update to {} in slot {} was rolled back: the bootloader booted {} ({} attempts left on {})",
        li.install.version,
        li.install.slot,
        booted.name,
        boot.attempts_left(&li.bootname),
        li.bootname
    );
    li.install.error = msg.clone();
    log::warn!("{msg}");
    Some(msg)
}
