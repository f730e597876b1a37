//! Moving SMP packets to and from a node: the [`Transport`] trait and its two
//! implementations, [`serial`] (console framing on a tty) and [`udp`].
//!
//! A transport only moves whole SMP packets (8-byte header + CBOR body). Matching an
//! answer to its request by sequence number is the trait's provided
//! [`Transport::transact`]; retries and typed bodies live in [`super::client`].

pub mod serial;
pub mod udp;

use super::smp::{self, Header, Params};
use super::McuError;
use crate::config::{McuSection, McuTransportKind};
use std::time::{Duration, Instant};

/// A blocking packet pipe to one node.
pub trait Transport: Send {
    /// Sends one SMP packet.
    fn send(&mut self, packet: &[u8]) -> Result<(), McuError>;

    /// Returns the next well-formed SMP packet, or `Ok(None)` once `deadline` passes.
    /// Frames that fail their transport check (bad CRC, bad base64) are dropped here.
    fn recv(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, McuError>;

    /// The largest SMP packet (header + body) this transport may send to a device
    /// with these parameters (`None`: the device did not report any).
    fn max_packet(&self, params: Option<Params>) -> usize;

    /// Bytes on the wire for an SMP packet of `n` bytes (framing included), for
    /// throughput figures.
    fn wire_len(&self, n: usize) -> usize;

    /// Where the packets go, for messages ("serial /dev/ttyUSB0", "udp 10.0.0.2:1337").
    fn describe(&self) -> String;

    /// Drops anything already received (stale answers, boot noise after a reset).
    fn discard_input(&mut self) {}

    /// Sends `request` and waits up to `timeout` for the response with the same
    /// sequence number, group and command; other packets (late answers to earlier
    /// attempts, unsolicited traffic) are skipped.
    fn transact(&mut self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, McuError> {
        let req = Header::parse(request).map_err(|e| McuError::Protocol {
            what: "outgoing request".into(),
            message: e.to_string(),
        })?;
        self.send(request)?;
        // The request, as errors name it (made only for an error).
        let what = |t: &Self| {
            format!(
                "{} group command {} (sequence {}) over {}",
                smp::group_name(req.group),
                req.cmd,
                req.seq,
                t.describe()
            )
        };
        let deadline = Instant::now() + timeout;
        loop {
            let Some(packet) = self.recv(deadline)? else {
                return Err(McuError::Timeout {
                    what: what(self),
                    waited: timeout,
                });
            };
            match Header::parse(&packet) {
                Ok(h) if usize::from(h.len) + smp::HEADER_LEN != packet.len() => log::debug!(
                    "{}: skipping packet whose header announces {} body bytes but carries {}",
                    self.describe(),
                    h.len,
                    packet.len() - smp::HEADER_LEN
                ),
                Ok(h)
                    if h.seq == req.seq
                        && h.group == req.group
                        && h.cmd == req.cmd
                        && h.op == req.op.response() =>
                {
                    return Ok(packet)
                }
                // A response with this request's sequence number is its answer, whatever
                // else it says: report what arrived at once instead of waiting out the
                // timeout as if nothing had. (A request op, e.g. an echo of ours on a
                // serial console, is not an answer and is skipped.)
                Ok(h) if h.seq == req.seq && h.op.is_response() => {
                    return Err(McuError::Protocol {
                        what: what(self),
                        message: format!(
                            "the answer does not fit the request: op {:?} group {} command {} arrived, op {:?} group {} command {} expected",
                            h.op,
                            h.group,
                            h.cmd,
                            req.op.response(),
                            req.group,
                            req.cmd
                        ),
                    })
                }
                Ok(h) => log::debug!(
                    "{}: skipping packet op {:?} group {} cmd {} seq {} while waiting for seq {}",
                    self.describe(),
                    h.op,
                    h.group,
                    h.cmd,
                    h.seq,
                    req.seq
                ),
                Err(e) => log::debug!("{}: skipping malformed packet: {e}", self.describe()),
            }
        }
    }
}

/// Opens the transport a node's `[mcu.NAME]` section describes.
pub fn open(node: &str, cfg: &McuSection) -> Result<Box<dyn Transport>, McuError> {
    match cfg.transport {
        McuTransportKind::Serial => {
            let dev = cfg.device.as_ref().ok_or_else(|| {
                McuError::Config(format!("[mcu.{node}] transport = \"serial\" needs device"))
            })?;
            Ok(Box::new(serial::SerialTransport::open(dev, cfg.baud)?))
        }
        McuTransportKind::Udp => {
            let addr = cfg.address.as_deref().ok_or_else(|| {
                McuError::Config(format!("[mcu.{node}] transport = \"udp\" needs address"))
            })?;
            Ok(Box::new(udp::UdpTransport::connect(addr)?))
        }
    }
}
