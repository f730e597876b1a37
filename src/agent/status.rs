//! `rota status --json` and `GetStatus`: the report assembled from the state file, the
//! boot selection, the config and the MCU records. It only reads: what the follow-up of
//! the last install would record is shown, and recorded by start-up and marks.

use super::recovery::follow_up;
use super::{Agent, Device};
use crate::boot::BootState;
use crate::model::{AgentError, BootHealth, McuState, SlotReport, SlotRole, StatusReport};

pub(super) fn primary_slot_name(device: &Device, boot: &BootState) -> String {
    boot.primary()
        .and_then(|b| crate::slot::find_slot(&device.config, b))
        .map(|s| s.name)
        .unwrap_or_default()
}

impl Agent {
    pub(super) fn status(&self) -> Result<StatusReport, AgentError> {
        let device = &self.device;
        let mut state = device
            .store
            .load()
            .map_err(|e| AgentError::Failed(e.to_string()))?;
        let boot = device.bootloader.read();
        let mut last_error = self.snapshot.borrow().last_error.clone();
        if let Ok(b) = &boot {
            // A view only: what the follow-up would record, without writing it (the
            // start-up and the marks record it).
            if self.running.is_none() {
                follow_up(device, &mut state, b);
            }
        }
        if let Err(e) = &boot {
            if last_error.is_empty() {
                last_error = e.to_string();
            }
        }
        let booted = device.booted.as_ref();
        let primary_boot = boot
            .as_ref()
            .ok()
            .and_then(|b| b.primary().map(str::to_owned));
        // The booted slot with no record (the factory image, a lost state file) runs the
        // version its os-release or `[system] version-file` names.
        let running_version = device
            .config
            .system
            .version_file
            .as_deref()
            .and_then(|f| crate::install::plan::read_version_file(f).ok());
        let slots = device
            .config
            .slots()
            .into_iter()
            .map(|s| {
                let st = state.slots.get(&s.name);
                // A slot with a parent is booted or active with it (RAUC's slot groups).
                let leader = s.parent.as_ref().map_or(s.name.as_str(), String::as_str);
                let leader_bootname =
                    crate::slot::find_slot(&device.config, leader).and_then(|l| l.bootname);
                let is_booted = booted.is_some_and(|b| b.name == leader);
                let (boot_status, left) = match (&s.bootname, &boot) {
                    (Some(b), Ok(bs)) => (
                        if bs.is_good(b) {
                            BootHealth::Good
                        } else {
                            BootHealth::Bad
                        },
                        Some(bs.attempts_left(b)),
                    ),
                    _ => (BootHealth::Unknown, None),
                };
                let role = if is_booted {
                    SlotRole::Booted
                } else if leader_bootname.is_some() && leader_bootname == primary_boot {
                    SlotRole::Active
                } else {
                    SlotRole::Inactive
                };
                SlotReport {
                    name: s.name.clone(),
                    class: s.class.clone(),
                    bootname: s.bootname.clone(),
                    parent: s.parent.clone(),
                    device: s.device.display().to_string(),
                    state: role,
                    boot_status,
                    boot_attempts_left: left,
                    version: st
                        .filter(|x| !x.version.is_empty())
                        .map(|x| x.version.clone())
                        .or_else(|| {
                            if is_booted {
                                running_version.clone()
                            } else {
                                None
                            }
                        }),
                    sha256: st.map(|x| x.sha256.clone()).filter(|v| !v.is_empty()),
                    size: st.map(|x| x.size).filter(|n| *n > 0),
                    installed_at: st.map(|x| x.installed_at.clone()).filter(|v| !v.is_empty()),
                    transaction: st.map(|x| x.transaction.clone()).filter(|v| !v.is_empty()),
                    bundle_hash: st.map(|x| x.bundle_hash.clone()).filter(|v| !v.is_empty()),
                    status: st.map(|x| x.status),
                }
            })
            .collect();
        let snap = self.snapshot.borrow();
        Ok(StatusReport {
            compatible: device.config.system.compatible.clone(),
            booted: booted.and_then(|b| b.bootname.clone()).unwrap_or_default(),
            primary: boot
                .as_ref()
                .ok()
                .map(|b| primary_slot_name(device, b))
                .unwrap_or_default(),
            operation: snap.operation,
            last_error,
            slots,
            last_install: state.last_install.map(|l| l.install),
            mcu: device
                .config
                .mcu
                .iter()
                .map(|(name, cfg)| {
                    let mut r = crate::mcu::relay::node_report(
                        name,
                        cfg,
                        &device.config.system.data_dir,
                        false,
                    );
                    let staged = crate::mcu::staging::path(&device.config.system.data_dir, name);
                    // An image waits in the data dir for the update to be marked good
                    // (or for a relay that failed to be retried).
                    if r.state.is_settled() && staged.exists() {
                        r.state = McuState::Staged;
                    }
                    r
                })
                .collect(),
        })
    }
}
