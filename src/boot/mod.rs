//! Boot selection: which slot the bootloader tries next and how many attempts each has.
//!
//! The selection itself ([`BootState`] and its operations) is bootloader-neutral and
//! follows RAUC's semantics, so existing boot scripts keep working:
//! `BOOT_ORDER` lists bootnames, first tried first; `BOOT_<name>_LEFT` counts the
//! attempts left (hex, as RAUC writes it). A [`Bootloader`] backend stores it; every
//! change is one atomic backend write.

pub mod uboot_env;

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("bootloader environment: {0}")]
    Env(#[from] uboot_env::EnvError),
    #[error("bootloader environment: {0}")]
    Invalid(String),
}

/// The boot selection as the bootloader sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootState {
    /// Bootnames in try order.
    pub order: Vec<String>,
    /// Attempts left per bootname (absent = 0).
    pub left: BTreeMap<String, u32>,
}

impl BootState {
    pub fn attempts_left(&self, bootname: &str) -> u32 {
        self.left.get(bootname).copied().unwrap_or(0)
    }

    /// Good = listed in the order with attempts left (RAUC's rule).
    pub fn is_good(&self, bootname: &str) -> bool {
        self.order.iter().any(|b| b == bootname) && self.attempts_left(bootname) > 0
    }

    /// The bootname the bootloader will try next.
    pub fn primary(&self) -> Option<&str> {
        self.order
            .iter()
            .find(|b| self.attempts_left(b) > 0)
            .map(String::as_str)
    }

    /// Takes a slot out of the selection: removed from the order, no attempts left.
    pub fn disable(&mut self, bootname: &str) {
        self.order.retain(|b| b != bootname);
        self.left.insert(bootname.to_owned(), 0);
    }

    /// A successful boot of `bootname`: full attempts again; the order is untouched.
    pub fn mark_good(&mut self, bootname: &str, attempts: u32) {
        self.left.insert(bootname.to_owned(), attempts);
    }

    /// Puts `bootname` first with full attempts. `fallback` (the running slot) stays in
    /// the order behind it with at least full attempts, so a new slot that never comes up
    /// falls back to it — also when the running slot had spent attempts of its own (booted
    /// but not yet marked good): it runs well enough to install an update, and power lost
    /// in the first boots of the new slot must not leave it fewer tries than the new one.
    pub fn activate(&mut self, bootname: &str, attempts: u32, fallback: Option<&str>) {
        self.order.retain(|b| b != bootname);
        self.order.insert(0, bootname.to_owned());
        self.left.insert(bootname.to_owned(), attempts);
        if let Some(fb) = fallback.filter(|fb| *fb != bootname) {
            if !self.order.iter().any(|b| b == fb) {
                self.order.push(fb.to_owned());
            }
            if self.attempts_left(fb) < attempts {
                self.left.insert(fb.to_owned(), attempts);
            }
        }
    }
}

/// The bootloader backend `[bootloader] type` names, over the configured env and the
/// bootable slots' bootnames.
pub fn open(config: &crate::config::Config) -> Result<Box<dyn Bootloader>, BootError> {
    let bootnames = config
        .slots()
        .into_iter()
        .filter_map(|s| s.bootname)
        .collect();
    match config.bootloader.kind {
        crate::config::BootloaderKind::Uboot => Ok(Box::new(UbootBackend::open(
            &config.bootloader.fw_env_config,
            bootnames,
            config.system.boot_attempts,
        )?)),
    }
}

/// Where the boot selection lives.
pub trait Bootloader: Send + Sync {
    fn read(&self) -> Result<BootState, BootError>;
    /// Applies `f` and stores the result in one atomic write that keeps everything else.
    fn update(&self, f: &mut dyn FnMut(&mut BootState)) -> Result<BootState, BootError>;
}

/// U-Boot: `BOOT_ORDER` and `BOOT_<name>_LEFT` in the environment described by fw_env.config.
pub struct UbootBackend {
    env: uboot_env::UbootEnv,
    bootnames: Vec<String>,
    /// What the boot script assumes for a counter that is not set.
    default_attempts: u32,
}

const ORDER_VAR: &str = "BOOT_ORDER";

fn left_var(bootname: &str) -> String {
    format!("BOOT_{bootname}_LEFT")
}

impl UbootBackend {
    /// `bootnames` are every configured bootable slot's bootname; `default_attempts` is
    /// what the boot script sets an unset counter to (`boot-attempts`).
    pub fn open(
        fw_env_config: &Path,
        bootnames: Vec<String>,
        default_attempts: u32,
    ) -> Result<Self, BootError> {
        Ok(Self {
            env: uboot_env::UbootEnv::open(fw_env_config)?,
            bootnames,
            default_attempts,
        })
    }

    fn decode(&self, vars: &uboot_env::EnvVars) -> BootState {
        let order = match vars.get(ORDER_VAR) {
            Some(v) => v.split_whitespace().map(str::to_owned).collect(),
            // The boot script's default when BOOT_ORDER is unset.
            None => self.bootnames.clone(),
        };
        let left = self
            .bootnames
            .iter()
            .map(|b| {
                // Unset means the script's default; set but unreadable counts as exhausted.
                let n = match vars.get(&left_var(b)) {
                    None => self.default_attempts,
                    Some(v) => parse_counter(v).unwrap_or(0),
                };
                (b.clone(), n)
            })
            .collect();
        BootState { order, left }
    }

    fn encode(state: &BootState, vars: &mut uboot_env::EnvVars) {
        vars.insert(ORDER_VAR.to_owned(), state.order.join(" "));
        for (b, n) in &state.left {
            vars.insert(left_var(b), format!("{n:x}"));
        }
    }
}

/// Counters are hex (U-Boot's `setexpr` writes hex; RAUC writes `%x`); `0x` is accepted.
pub fn parse_counter(v: &str) -> Option<u32> {
    let v = v.trim();
    let digits = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    u32::from_str_radix(digits, 16).ok()
}

impl Bootloader for UbootBackend {
    fn read(&self) -> Result<BootState, BootError> {
        Ok(self.decode(&self.env.read()?))
    }

    fn update(&self, f: &mut dyn FnMut(&mut BootState)) -> Result<BootState, BootError> {
        let mut result = BootState::default();
        self.env.update(|vars| {
            let mut state = self.decode(vars);
            f(&mut state);
            // An empty BOOT_ORDER reads as unset in the boot script, which then tries every
            // slot again — including ones just marked bad. It is never written.
            if state.order.is_empty() {
                return Err(uboot_env::EnvError::Invalid(
                    "refusing to write an empty BOOT_ORDER: no slot would be left to boot".into(),
                ));
            }
            Self::encode(&state, vars);
            result = state;
            Ok(())
        })?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ab() -> BootState {
        BootState {
            order: vec!["A".into(), "B".into()],
            left: [("A".to_string(), 3), ("B".to_string(), 3)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn activate_puts_new_slot_first_and_keeps_fallback() {
        let mut s = ab();
        s.disable("B");
        assert_eq!(s.order, vec!["A"]);
        assert_eq!(s.primary(), Some("A"));
        s.activate("B", 3, Some("A"));
        assert_eq!(s.order, vec!["B", "A"]);
        assert_eq!(s.attempts_left("B"), 3);
        assert_eq!(s.primary(), Some("B"));
    }

    #[test]
    fn exhausted_slot_is_skipped_and_bad() {
        let mut s = ab();
        s.activate("B", 3, Some("A"));
        s.left.insert("B".into(), 0);
        assert_eq!(s.primary(), Some("A"));
        assert!(!s.is_good("B"));
        s.mark_good("B", 3);
        assert!(s.is_good("B"));
    }

    #[test]
    fn activate_restores_a_fallback_that_was_missing() {
        let mut s = BootState {
            order: vec!["A".into()],
            left: [("A".to_string(), 0)].into_iter().collect(),
        };
        s.activate("B", 3, Some("A"));
        assert_eq!(s.order, vec!["B", "A"]);
        assert_eq!(s.attempts_left("A"), 3);
    }

    #[test]
    fn activate_tops_up_a_fallback_that_spent_attempts() {
        let mut s = ab();
        s.left.insert("A".into(), 1);
        s.activate("B", 3, Some("A"));
        assert_eq!(s.attempts_left("A"), 3);
        // More than full (a larger boot-attempts before) is left alone.
        s.left.insert("A".into(), 5);
        s.activate("B", 3, Some("A"));
        assert_eq!(s.attempts_left("A"), 5);
    }

    #[test]
    fn counters_parse_as_hex() {
        assert_eq!(parse_counter("3"), Some(3));
        assert_eq!(parse_counter("a"), Some(10));
        assert_eq!(parse_counter("0x10"), Some(16));
        assert_eq!(parse_counter("x"), None);
    }
}
