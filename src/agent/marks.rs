//! `mark good`, `mark bad` and `mark active` (RAUC's words): resolved to slots, checked
//! against what rota recorded, then applied to the boot selection in one env write each.

use super::recovery::follow_up;
use super::{primary_slot_name, Agent, AgentEvent};
use crate::config::SlotConfig;
use crate::model::{AgentError, MarkState, SlotContent, UpdateResult};

impl Agent {
    fn resolve(&self, id: &str) -> Result<Vec<SlotConfig>, AgentError> {
        let cfg = &self.device.config;
        let booted = self.device.booted.as_ref();
        let none_booted = || {
            AgentError::Failed(
                "the booted slot is unknown (no rota.slot= on the kernel command line)".into(),
            )
        };
        match id {
            "booted" => Ok(vec![booted.cloned().ok_or_else(none_booted)?]),
            "other" => {
                let b = booted.ok_or_else(none_booted)?;
                let others: Vec<_> = cfg
                    .slots()
                    .into_iter()
                    .filter(|s| s.class == b.class && s.name != b.name && s.bootname.is_some())
                    .collect();
                if others.is_empty() {
                    return Err(AgentError::Failed(format!(
                        "slot class {} has no other bootable slot",
                        b.class
                    )));
                }
                Ok(others)
            }
            _ => crate::slot::find_slot(cfg, id)
                .map(|s| vec![s])
                .ok_or_else(|| {
                    AgentError::InvalidArgument(format!(
                        "no slot named {id:?} (use booted, other, a slot name or a bootname)"
                    ))
                }),
        }
    }

    /// What rota knows refuses two marks: a slot made active must not hold an install that
    /// did not finish (it must be the running slot, a slot rota installed and verified, or
    /// the factory image), and marking bad must leave a slot to boot.
    fn check_mark(&self, how: MarkState, slots: &[SlotConfig]) -> Result<(), AgentError> {
        let invalid = |m: String| Err(AgentError::InvalidArgument(m));
        match how {
            MarkState::Good => Ok(()),
            MarkState::Active => {
                let state = self
                    .device
                    .store
                    .load()
                    .map_err(|e| AgentError::Failed(e.to_string()))?;
                let boot = self
                    .device
                    .bootloader
                    .read()
                    .map_err(|e| AgentError::Failed(e.to_string()))?;
                for slot in slots {
                    let booted = self
                        .device
                        .booted
                        .as_ref()
                        .is_some_and(|b| b.name == slot.name);
                    let status = state.slots.get(&slot.name).map(|s| s.status);
                    // No record is the factory image — unless the records were lost, when
                    // the env decides: a slot an install was writing had been taken out of
                    // the boot selection, one the bootloader may still boot had not.
                    let in_selection = slot.bootname.as_deref().is_some_and(|b| boot.is_good(b));
                    let known_good = match status {
                        Some(s) => s == SlotContent::Ok,
                        None => state.lost.is_none() || in_selection,
                    };
                    if !booted && !known_good {
                        let what = match status {
                            Some(s) => format!("its last install is {s}"),
                            None => "rota's records were lost and the bootloader has it out of the boot selection".to_owned(),
                        };
                        return invalid(format!(
                            "slot {} holds no complete, verified image ({what}); refusing to make it active",
                            slot.name
                        ));
                    }
                }
                Ok(())
            }
            MarkState::Bad => {
                let mut boot = self
                    .device
                    .bootloader
                    .read()
                    .map_err(|e| AgentError::Failed(e.to_string()))?;
                for b in slots.iter().filter_map(|s| s.bootname.as_deref()) {
                    boot.disable(b);
                }
                if boot.order.is_empty() {
                    let names: Vec<&str> = slots.iter().map(|s| s.name.as_str()).collect();
                    return invalid(format!(
                        "marking {} bad would leave no slot to boot (BOOT_ORDER would be empty); refused",
                        names.join(", ")
                    ));
                }
                Ok(())
            }
        }
    }

    pub(super) fn mark(
        &mut self,
        how: MarkState,
        id: &str,
    ) -> Result<(String, String), AgentError> {
        self.busy()?;
        let slots = self.resolve(id)?;
        if slots.len() > 1 && how != MarkState::Bad {
            return Err(AgentError::InvalidArgument(format!(
                "{id:?} names {} slots; mark {} takes one",
                slots.len(),
                serde_json::to_string(&how).unwrap_or_default()
            )));
        }
        let attempts = self.device.config.system.boot_attempts;
        self.check_mark(how, &slots)?;
        let mut names = Vec::new();
        for slot in &slots {
            let b = slot.bootname.clone().ok_or_else(|| {
                AgentError::InvalidArgument(format!(
                    "slot {} is not bootable (no bootname)",
                    slot.name
                ))
            })?;
            self.device
                .bootloader
                .update(&mut |s| match how {
                    MarkState::Good => s.mark_good(&b, attempts),
                    MarkState::Bad => s.disable(&b),
                    MarkState::Active => s.activate(&b, attempts, None),
                })
                .map_err(|e| AgentError::Failed(e.to_string()))?;
            names.push(slot.name.clone());
        }
        let word = match how {
            MarkState::Good => "good",
            MarkState::Bad => "bad",
            MarkState::Active => "active",
        };
        if let (MarkState::Good, Some(booted)) = (how, self.device.booted.as_ref()) {
            let marked = self.device.store.update(|state| {
                let li = state.last_install.as_mut().filter(|l| {
                    l.install.slot == booted.name
                        && slots[0].name == booted.name
                        && l.install.result == UpdateResult::Booted
                })?;
                li.install.result = UpdateResult::Good;
                Some(format!(
                    "update to {} in slot {} marked good",
                    li.install.version, li.install.slot
                ))
            });
            match marked {
                Ok(Some(m)) => {
                    log::info!("{m}");
                    let _ = self.events.send(AgentEvent::McuRelayDue);
                }
                Ok(None) => {}
                Err(e) => log::error!("cannot record mark good: {e}"),
            }
        }
        let boot = self.device.bootloader.read().ok();
        // A mark can decide the last install (marking the new slot bad is a rollback):
        // recorded now, so status queries only read.
        if let Some(b) = &boot {
            let device = &self.device;
            if let Err(e) = device.store.update(|state| follow_up(device, state, b)) {
                log::error!("cannot record the follow-up of the mark: {e}");
            }
        }
        let primary = boot
            .map(|b| primary_slot_name(&self.device, &b))
            .unwrap_or_default();
        self.update_snapshot(|s| s.primary = primary);
        let message = format!("marked slot {} as {word}", names.join(", "));
        log::info!("{message}");
        Ok((names.join(","), message))
    }
}
