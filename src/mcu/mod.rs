//! Relaying firmware to microcontrollers attached to the gateway, over MCUmgr/SMP.
//!
//! | module | job |
//! |---|---|
//! | [`smp`] | the SMP wire format: header, CBOR bodies, v1/v2 errors |
//! | [`transport`] | moving SMP packets: serial console framing on a tty, UDP datagrams |
//! | [`client`] | typed SMP requests with sequence matching, timeouts and retries |
//! | [`image`] | MCUboot image and raw `.bin`+CRC32 checks before a byte is sent |
//! | [`record`] | what rota remembers per node in the data dir (relay phase, last state) |
//! | [`relay`] | the per-node flow: state → upload (resumable) → test → reset → confirm |
//! | [`staging`] | MCU images of a bundle kept verified in the data dir until relay time |
//!
//! The per-node D-Bus objects (`io.rota.Mcu1`) drive this module from above and live
//! with the rest of the D-Bus face in `crate::service::mcu`.
//!
//! # When MCUs are updated (ordering decision)
//!
//! The MCU images of a bundle are **verified and staged** in the data dir during the
//! gateway's install (signature of the bundle, then the MCUboot hash/signature or the
//! raw CRC32 of each image, see [`staging::stage_image`]), but **relayed only after the
//! gateway's new rootfs slot has been marked good** — or right away when the bundle
//! carries no rootfs image. Reason: a gateway rollback (the new rootfs fails to come
//! up and the bootloader falls back) must never leave the MCUs on firmware built for
//! the rootfs that was rolled back; relaying after "good" means the gateway software
//! that talks to the MCUs is known to work before their firmware changes, and a
//! gateway that rolls back still runs against the MCU firmware it was shipped with.
//! The cost is that MCUs get their update one gateway boot later. Each node is relayed
//! on its own worker thread ([`relay::relay_many`]) so a slow UART node does not hold
//! up a fast UDP node or the gateway's own service.
//!
//! # Raw images
//!
//! A raw `.bin` ending in its CRC32 has no MCUboot hash TLV. rota identifies it by the
//! SHA-256 of the whole file (the `sha` it sends with the upload); a node that accepts
//! raw images must report that value as the slot hash. A stock MCUboot/Zephyr node
//! refuses such an upload on the first chunk (image group error 23, invalid header
//! magic), which rota reports as such.

pub mod client;
pub mod image;
pub mod record;
pub mod relay;
pub mod smp;
pub mod staging;
pub mod transport;

use std::path::PathBuf;
use std::time::Duration;

pub use relay::{
    node_report, node_state, relay_file, relay_many, RelayOutcome, RelayPhase, RelayProgress,
};

/// Everything that can go wrong talking to or updating an MCU node.
#[derive(Debug, thiserror::Error)]
pub enum McuError {
    /// The image file is not acceptable (bad format, hash, signature, size).
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },
    /// The node's configured verification key cannot be used.
    #[error("key {path}: {message}")]
    Key { path: PathBuf, message: String },
    /// The transport is misconfigured (bad address, unsupported baud rate).
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// No (valid) answer in time, retries included.
    #[error("no answer to {what} within {waited:?}")]
    Timeout { what: String, waited: Duration },
    /// The device broke the protocol (malformed packet or body).
    #[error("protocol error in {what}: {message}")]
    Protocol { what: String, message: String },
    /// The device answered with an error code.
    #[error("device refused {what}: {err}")]
    Device { what: String, err: smp::DeviceError },
    /// The relay flow cannot go on (the device is not in the state it must be in).
    #[error("{0}")]
    Relay(String),
    /// Persistent relay state cannot be read or written.
    #[error("relay state {path}: {message}")]
    State { path: PathBuf, message: String },
    /// Another relay to the same node is running.
    #[error("busy: {0}")]
    Busy(String),
    #[error("cancelled")]
    Cancelled,
}

impl McuError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> McuError {
        McuError::Io {
            what: what.into(),
            source,
        }
    }
}
