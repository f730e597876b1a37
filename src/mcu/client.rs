//! A blocking SMP client: typed OS and image group requests over any [`Transport`],
//! with per-request timeouts, retries of idempotent requests under fresh sequence
//! numbers, and a fall back from SMP v2 to v1 for devices that only speak v1.

use super::smp::{
    self, Cmd, Params, SlotState, UploadRequest, UploadResponse, Version, HEADER_LEN,
};
use super::transport::Transport;
use super::McuError;
use ciborium::Value;
use std::time::Duration;

/// Attempts for an idempotent request before giving up (first try included).
pub const DEFAULT_ATTEMPTS: u32 = 4;
/// Smallest upload data per request we accept to work with: the first chunk must
/// carry the 32-byte MCUboot header (Zephyr refuses a shorter first chunk).
pub const MIN_CHUNK: usize = 64;

/// Counters for figures and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub requests: u64,
    /// Attempts that timed out and were sent again.
    pub retries: u64,
    /// SMP packet bytes sent (before transport framing).
    pub packet_bytes: u64,
    /// Bytes on the wire, framing included.
    pub wire_bytes: u64,
}

pub struct SmpClient {
    transport: Box<dyn Transport>,
    seq: u8,
    version: Version,
    timeout: Duration,
    params: Option<Params>,
    pub stats: ClientStats,
}

impl SmpClient {
    pub fn new(transport: Box<dyn Transport>, timeout: Duration) -> Self {
        // A varying first sequence number, so late answers to a previous process's
        // requests are unlikely to match ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u8)
            .unwrap_or(0);
        Self {
            transport,
            seq,
            version: Version::V2,
            timeout,
            params: None,
            stats: ClientStats::default(),
        }
    }

    pub fn transport(&mut self) -> &mut dyn Transport {
        self.transport.as_mut()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The SMP version in use (V2 until the device says it is too new).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Forces the protocol version (tests; devices known to be v1-only).
    pub fn set_version(&mut self, v: Version) {
        self.version = v;
    }

    fn next_seq(&mut self) -> u8 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// One request/response exchange; device error codes are returned as errors.
    fn exchange(
        &mut self,
        what: &str,
        cmd: Cmd,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, McuError> {
        loop {
            let seq = self.next_seq();
            let packet =
                smp::encode(cmd.op, self.version, cmd.group, cmd.id, seq, body).map_err(|e| {
                    McuError::Protocol {
                        what: what.into(),
                        message: e.to_string(),
                    }
                })?;
            self.stats.requests += 1;
            self.stats.packet_bytes += packet.len() as u64;
            self.stats.wire_bytes += self.transport.wire_len(packet.len()) as u64;
            let answer = self
                .transport
                .transact(&packet, timeout)
                .map_err(|e| match e {
                    McuError::Timeout { waited, .. } => McuError::Timeout {
                        what: what.into(),
                        waited,
                    },
                    other => other,
                })?;
            let msg = smp::decode(&answer).map_err(|e| McuError::Protocol {
                what: what.into(),
                message: e.0,
            })?;
            match smp::check_error(&msg.body) {
                Ok(()) => return Ok(msg.body),
                Err(err)
                    if err.group.is_none()
                        && err.rc == smp::RC_UNSUPPORTED_TOO_NEW
                        && self.version == Version::V2 =>
                {
                    log::info!(
                        "{}: device speaks SMP v1 only; switching",
                        self.transport.describe()
                    );
                    self.version = Version::V1;
                }
                Err(err) => {
                    return Err(McuError::Device {
                        what: what.into(),
                        err,
                    })
                }
            }
        }
    }

    /// Sends an idempotent request, retrying a lost or garbled answer up to
    /// `attempts` times in all.
    pub fn request(
        &mut self,
        what: &str,
        cmd: Cmd,
        body: &Value,
        attempts: u32,
        timeout: Duration,
    ) -> Result<Value, McuError> {
        let attempts = attempts.max(1);
        for attempt in 1..=attempts {
            match self.exchange(what, cmd, body, timeout) {
                // A garbled answer (UDP has no CRC of its own) is retried like a lost one.
                Err(e @ McuError::Protocol { .. }) if attempt < attempts => {
                    self.stats.retries += 1;
                    log::debug!(
                        "{}: {what}: {e} (attempt {attempt}/{attempts}), retrying",
                        self.transport.describe()
                    );
                }
                Err(McuError::Timeout { .. }) if attempt < attempts => {
                    self.stats.retries += 1;
                    log::debug!(
                        "{}: {what}: no answer (attempt {attempt}/{attempts}), retrying",
                        self.transport.describe()
                    );
                }
                Err(McuError::Timeout { .. }) => {
                    return Err(McuError::Timeout {
                        what: format!(
                            "{what} over {} ({attempts} attempts)",
                            self.transport.describe()
                        ),
                        waited: timeout * attempts,
                    })
                }
                other => return other,
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    fn simple(&mut self, what: &str, cmd: Cmd, body: &Value) -> Result<Value, McuError> {
        let timeout = self.timeout;
        self.request(what, cmd, body, DEFAULT_ATTEMPTS, timeout)
    }

    fn states(what: &str, body: &Value) -> Result<Vec<SlotState>, McuError> {
        smp::parse_image_states(body).map_err(|e| McuError::Protocol {
            what: what.into(),
            message: e.0,
        })
    }

    /// OS echo: the device answers with the same text.
    pub fn echo(&mut self, text: &str) -> Result<String, McuError> {
        let body = self.simple("echo", Cmd::ECHO, &smp::echo_request(text))?;
        smp::echo_response(&body).map_err(|e| McuError::Protocol {
            what: "echo".into(),
            message: e.0,
        })
    }

    /// One echo attempt with a short timeout (to poll a rebooting node).
    pub fn ping(&mut self, timeout: Duration) -> Result<(), McuError> {
        let body = self.request("echo", Cmd::ECHO, &smp::echo_request("rota"), 1, timeout)?;
        match smp::echo_response(&body) {
            Ok(t) if t == "rota" => Ok(()),
            Ok(t) => Err(McuError::Protocol {
                what: "echo".into(),
                message: format!("sent \"rota\", got {t:?} back"),
            }),
            Err(e) => Err(McuError::Protocol {
                what: "echo".into(),
                message: e.0,
            }),
        }
    }

    /// Reads the device's buffer parameters; `None` when the device does not support
    /// the command. The result also sizes later uploads.
    pub fn params(&mut self) -> Result<Option<Params>, McuError> {
        match self.simple("MCUmgr parameters", Cmd::PARAMS, &smp::map(vec![])) {
            Ok(body) => {
                let p = Params::parse(&body).map_err(|e| McuError::Protocol {
                    what: "MCUmgr parameters".into(),
                    message: e.0,
                })?;
                self.params = Some(p);
                Ok(Some(p))
            }
            Err(McuError::Device { err, .. }) if err.is_not_supported() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks the device to reset. Sent once, never retried blindly: a second reset
    /// during a test boot would make MCUboot revert. Returns whether the device
    /// acknowledged (it may reset before its answer leaves).
    pub fn reset(&mut self) -> Result<bool, McuError> {
        let timeout = self.timeout;
        match self.request("reset", Cmd::RESET, &smp::map(vec![]), 1, timeout) {
            Ok(_) => Ok(true),
            Err(McuError::Timeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The image state list (both slots of every image).
    pub fn image_state(&mut self) -> Result<Vec<SlotState>, McuError> {
        let body = self.simple("image state read", Cmd::IMAGE_STATE_READ, &smp::map(vec![]))?;
        Self::states("image state read", &body)
    }

    /// Marks the image with `hash` for a test boot (reverted unless confirmed).
    pub fn image_test(&mut self, hash: &[u8]) -> Result<Vec<SlotState>, McuError> {
        let body = self.simple(
            "image test",
            Cmd::IMAGE_STATE_WRITE,
            &smp::image_state_write(Some(hash), false),
        )?;
        Self::states("image test", &body)
    }

    /// Confirms the running image (`hash` names it explicitly when given).
    pub fn image_confirm(&mut self, hash: Option<&[u8]>) -> Result<Vec<SlotState>, McuError> {
        let body = self.simple(
            "image confirm",
            Cmd::IMAGE_STATE_WRITE,
            &smp::image_state_write(hash, true),
        )?;
        Self::states("image confirm", &body)
    }

    /// Erases the secondary slot (or `slot`).
    pub fn image_erase(&mut self, slot: Option<u32>) -> Result<(), McuError> {
        self.simple("image erase", Cmd::IMAGE_ERASE, &smp::erase_request(slot))
            .map(|_| ())
    }

    /// Sends one upload chunk (retried on timeout: the device answers a repeated or
    /// out-of-order chunk with the offset it expects).
    pub fn upload(
        &mut self,
        req: &UploadRequest,
        timeout: Duration,
    ) -> Result<UploadResponse, McuError> {
        let what = format!("image upload at offset {}", req.off);
        let body = self.request(
            &what,
            Cmd::IMAGE_UPLOAD,
            &req.to_value(),
            DEFAULT_ATTEMPTS,
            timeout,
        )?;
        UploadResponse::parse(&body).map_err(|e| McuError::Protocol { what, message: e.0 })
    }

    /// Largest SMP packet the device and transport accept.
    pub fn max_packet(&self) -> usize {
        self.transport.max_packet(self.params)
    }

    /// How many data bytes fit in `template` (its `data` ignored) within one packet.
    pub fn max_chunk(&self, template: &UploadRequest) -> Result<usize, McuError> {
        let empty = UploadRequest {
            data: Vec::new(),
            ..template.clone()
        };
        // body with an empty byte string: its 1-byte head is replaced by the real one
        let fixed = HEADER_LEN + empty.encoded_len() - 1;
        let max = self.max_packet();
        let mut n = max.saturating_sub(fixed + 1);
        while n > 0 && fixed + smp::bstr_head_len(n) + n > max {
            n -= 1;
        }
        if n < MIN_CHUNK {
            return Err(McuError::Relay(format!(
                "{}: the device accepts packets of at most {max} bytes, too small for upload chunks of {MIN_CHUNK} bytes",
                self.transport.describe()
            )));
        }
        Ok(n)
    }
}
