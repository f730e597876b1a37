//! rota — an over-the-air update agent for embedded Linux gateways.
//!
//! The crate reads like the journey of an update:
//!
//! | module | job |
//! |---|---|
//! | [`config`] | `system.toml` → typed, strictly checked configuration |
//! | [`bundle`] | the artifact: keys, signed manifest, chunk index, tar writer and reader |
//! | [`source`] | where bundle bytes come from: ranged reads from a file or HTTP(S) |
//! | [`slot`] | slots, which one is booted, the block writer |
//! | [`boot`] | boot selection (`BOOT_ORDER`, `BOOT_<x>_LEFT`) over a bootloader backend; the U-Boot env codec |
//! | [`install`] | the pipeline: check → plan → fetch verified chunks → write → read back → activate |
//! | [`state`] | what rota remembers across reboots: per-slot status, last install, resume journal |
//! | [`agent`] | the single owner of mutable state; every front end talks to it by message |
//! | [`service`] | the D-Bus face: `io.rota.Agent1` and the RAUC-compatible `Installer` |
//! | [`mcu`] | relaying MCUboot images to microcontrollers over MCUmgr/SMP |
//! | [`update`] | discovery: JSON feed and hawkBit DDI pollers |
//! | [`cli`] | the `rota` command line |
//! | [`version`] | version schemes (semver, Debian-like) and their ordering |
//!
//! [`fsutil`] holds the one atomic-write helper every persistent file goes through.

pub mod agent;
pub mod boot;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod device;
pub mod failpoint;
pub mod fsutil;
pub mod install;
pub mod mcu;
pub mod memory;
pub mod model;
pub mod panics;
pub mod service;
pub mod slot;
pub mod source;
pub mod state;
pub mod update;
pub mod version;
