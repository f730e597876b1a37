//! A simulated MCUboot/Zephyr microcontroller that speaks MCUmgr SMP, for tests, the
//! benchmark and the README's simulated gateway (`cargo run --example mcu_sim`).
//!
//! Written from the published protocol (Zephyr SMP protocol, transport and image
//! management documentation, MCUboot design notes), not from rota's relay: it shares
//! only the serial framing codec with rota, and the PyPI `smpclient` test keeps both
//! honest. It models:
//! - OS group: echo, reset (answer, then reboot after a short delay, deaf meanwhile),
//!   MCUmgr parameters; image group: state read/write, upload, erase;
//! - upload semantics of Zephyr's image manager: first chunk with `len` (and `sha`),
//!   header magic check, resume of a session with the same `sha`, answers with the
//!   expected offset to out-of-order chunks, `match` on the last chunk, no free slot
//!   while an image is pending or a test boot runs; sessions are lost on reset;
//! - MCUboot swap with revert: a pending (test) image is validated (hash TLV) and
//!   swapped in at reset; unless confirmed, the next reset swaps back;
//! - SMP v1 and v2 error forms (answers use the request's version), or v1 only;
//! - faults: drop requests, corrupt answers (bad CRC on serial, truncated datagram on
//!   UDP), reset in the middle of an upload, refuse uploads or confirms, a test image
//!   that "crashes" (reverted at once), a node that stays silent;
//! - optional pacing of the pty at a baud rate (8N1: baud/10 bytes per second each way).
#![allow(dead_code)]

pub mod tools;

use ciborium::Value;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rota::mcu::smp::{
    self, Header, Message, Op, Params, SlotState, UploadRequest, UploadResponse, Version,
};
use rota::mcu::transport::serial::{encode_frame, make_raw, FrameDecoder};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Fault switches; tests flip them through [`Sim::faults`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Ignore the next N requests (as if the frame was lost on the line).
    pub drop_next: u32,
    /// Ignore every Nth request (0: off).
    pub drop_every: u32,
    /// Process the next N requests but corrupt their answers.
    pub corrupt_next: u32,
    /// Corrupt every Nth answer (0: off).
    pub corrupt_every: u32,
    /// Reboot (dropping the upload session) when an upload chunk covers this offset.
    pub reset_at_offset: Option<u64>,
    /// Answer every upload request with this image-group error code.
    pub refuse_upload: Option<i64>,
    /// Refuse confirm requests (image group error 32).
    pub refuse_confirm: bool,
    /// A test-booted image never confirms itself and crashes: MCUboot reverts at once.
    pub boot_fail: bool,
    /// The application confirms itself on a test boot (as many Zephyr apps do).
    pub self_confirm: bool,
    /// Answer nothing at all.
    pub silent: bool,
    /// Answer with the other response op (a read response to a write and back).
    pub wrong_op: bool,
}

/// Fixed properties of the simulated device.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Reassembly buffer reported by the params command and enforced on input.
    pub buf_size: u32,
    /// Secondary slot size.
    pub slot_size: usize,
    /// Accept images without the MCUboot magic (identified by the file's SHA-256).
    pub accept_raw: bool,
    /// Delay between answering a reset and going down.
    pub reset_delay: Duration,
    /// How long the device is deaf while it reboots.
    pub reboot_time: Duration,
    /// Answer v2 requests with "protocol too new" (a v1-only device).
    pub v1_only: bool,
    /// Pace the pty at this baud rate (8N1) in both directions.
    pub baud: Option<u32>,
    /// The factory image in the primary slot.
    pub initial: Vec<u8>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            buf_size: 1024,
            slot_size: 1024 * 1024,
            accept_raw: false,
            reset_delay: Duration::from_millis(20),
            reboot_time: Duration::from_millis(100),
            v1_only: false,
            baud: None,
            initial: rota::mcu::image::build_unsigned(b"factory firmware", (1, 0, 0, 0)),
        }
    }
}

/// What the device has in a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub data: Vec<u8>,
    pub hash: Vec<u8>,
    pub version: String,
    /// MCUboot would accept it (hash TLV matches, or a raw image on a raw device).
    pub valid: bool,
}

#[derive(Debug, Clone)]
struct Upload {
    len: u64,
    sha: Option<Vec<u8>>,
    buf: Vec<u8>,
}

/// Counters the tests assert on.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests: u64,
    pub dropped: u64,
    pub corrupted: u64,
    pub resets: u64,
    pub reverts: u64,
    pub swaps: u64,
    pub confirms: u64,
    /// Upload data bytes written to the secondary slot.
    pub bytes_written: u64,
    /// Upload sessions resumed by `sha`.
    pub resumed_sessions: u64,
    pub uploads_completed: u64,
    /// The last complete upload, byte for byte.
    pub last_upload: Option<Vec<u8>>,
    /// Frames that failed the serial CRC/base64 checks on input.
    pub bad_frames_in: u64,
    /// Requests larger than the buffer (dropped).
    pub oversize: u64,
    /// Bytes received / sent on the wire (serial: framed bytes; UDP: datagrams plus
    /// 28 bytes of IPv4 and UDP headers each).
    pub wire_rx: u64,
    pub wire_tx: u64,
}

/// The simulated device: flash slots, boot state, upload session, faults.
#[derive(Debug)]
pub struct Device {
    pub cfg: SimConfig,
    pub faults: Faults,
    pub stats: Stats,
    pub primary: Slot,
    pub secondary: Option<Slot>,
    pub primary_confirmed: bool,
    /// `Some(permanent)` when the secondary slot is marked for the next reset.
    pub pending: Option<bool>,
    /// Running a test image that reverts unless confirmed.
    pub test_boot: bool,
    upload: Option<Upload>,
    reset_at: Option<Instant>,
    down_until: Option<Instant>,
}

impl Device {
    pub fn new(cfg: SimConfig) -> Self {
        let primary = slot_from(cfg.initial.clone(), cfg.accept_raw);
        Self {
            cfg,
            faults: Faults::default(),
            stats: Stats::default(),
            primary,
            secondary: None,
            primary_confirmed: true,
            pending: None,
            test_boot: false,
            upload: None,
            reset_at: None,
            down_until: None,
        }
    }

    /// Whether the device is rebooting (deaf).
    pub fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|t| now < t)
    }

    /// Runs timers (a delayed reset).
    pub fn tick(&mut self, now: Instant) {
        if self.reset_at.is_some_and(|t| now >= t) {
            self.reset_at = None;
            self.reboot(now);
        }
    }

    /// A reset: the upload session is lost, MCUboot swaps or reverts.
    pub fn reboot(&mut self, now: Instant) {
        self.stats.resets += 1;
        self.upload = None;
        self.down_until = Some(now + self.cfg.reboot_time);
        if self.test_boot && !self.primary_confirmed {
            self.revert();
            return;
        }
        if let Some(permanent) = self.pending.take() {
            let Some(new) = self.secondary.take() else {
                return;
            };
            if !new.valid {
                // MCUboot refuses an image whose hash TLV does not match: it erases it.
                return;
            }
            let old = std::mem::replace(&mut self.primary, new);
            self.secondary = Some(old);
            self.stats.swaps += 1;
            if permanent {
                self.primary_confirmed = true;
                self.test_boot = false;
            } else {
                self.primary_confirmed = false;
                self.test_boot = true;
                if self.faults.boot_fail {
                    // The new application crashes before confirming; the watchdog
                    // resets and MCUboot reverts.
                    self.stats.resets += 1;
                    self.down_until = Some(now + self.cfg.reboot_time * 2);
                    self.revert();
                } else if self.faults.self_confirm {
                    self.primary_confirmed = true;
                    self.test_boot = false;
                }
            }
        }
    }

    fn revert(&mut self) {
        if let Some(old) = self.secondary.take() {
            let failed = std::mem::replace(&mut self.primary, old);
            self.secondary = Some(failed);
        }
        self.primary_confirmed = true;
        self.test_boot = false;
        self.stats.reverts += 1;
    }

    /// The state list as the image manager reports it.
    pub fn states(&self) -> Vec<SlotState> {
        let mut v = vec![SlotState {
            image: 0,
            slot: 0,
            version: self.primary.version.clone(),
            hash: self.primary.hash.clone(),
            bootable: true,
            pending: false,
            confirmed: self.primary_confirmed,
            active: true,
            permanent: false,
        }];
        if let Some(s) = &self.secondary {
            v.push(SlotState {
                image: 0,
                slot: 1,
                version: s.version.clone(),
                hash: s.hash.clone(),
                bootable: s.valid,
                pending: self.pending.is_some(),
                confirmed: self.test_boot,
                active: false,
                permanent: self.pending == Some(true),
            });
        }
        v
    }

    /// Handles one request packet; `None` means no answer goes out.
    pub fn handle(&mut self, packet: &[u8], now: Instant) -> Option<Vec<u8>> {
        if self.is_down(now) || self.faults.silent {
            return None;
        }
        self.stats.requests += 1;
        if self.faults.drop_next > 0 {
            self.faults.drop_next -= 1;
            self.stats.dropped += 1;
            return None;
        }
        if self.faults.drop_every > 0
            && self
                .stats
                .requests
                .is_multiple_of(u64::from(self.faults.drop_every))
        {
            self.stats.dropped += 1;
            return None;
        }
        let msg = smp::decode(packet).ok()?;
        if msg.header.op.is_response() {
            return None;
        }
        let h = msg.header;
        let body = if self.cfg.v1_only && h.version == Version::V2 {
            smp::map(vec![("rc", Value::from(smp::RC_UNSUPPORTED_TOO_NEW))])
        } else {
            match self.dispatch(&msg, now) {
                Dispatch::Answer(b) => b,
                Dispatch::Err(group, rc) => error_for(h.version, group, rc),
                Dispatch::Silent => return None,
            }
        };
        let version = if self.cfg.v1_only {
            Version::V1
        } else {
            h.version
        };
        let op = match (self.faults.wrong_op, h.op.response()) {
            (true, Op::ReadResponse) => Op::WriteResponse,
            (true, Op::WriteResponse) => Op::ReadResponse,
            (_, op) => op,
        };
        smp::encode(op, version, h.group, h.cmd, h.seq, &body).ok()
    }

    /// Whether the next answer must be corrupted (counts it).
    pub fn take_corrupt(&mut self) -> bool {
        if self.faults.corrupt_next > 0 {
            self.faults.corrupt_next -= 1;
            self.stats.corrupted += 1;
            return true;
        }
        if self.faults.corrupt_every > 0
            && self
                .stats
                .requests
                .is_multiple_of(u64::from(self.faults.corrupt_every))
        {
            self.stats.corrupted += 1;
            return true;
        }
        false
    }

    fn dispatch(&mut self, msg: &Message, now: Instant) -> Dispatch {
        let h: Header = msg.header;
        let b = &msg.body;
        let read = matches!(h.op, Op::Read);
        match (h.group, h.cmd, read) {
            (smp::GROUP_OS, smp::OS_ECHO, false) => match smp::Map::of(b).text("d") {
                Some(t) => Dispatch::Answer(smp::map(vec![("r", Value::Text(t.to_owned()))])),
                None => Dispatch::Err(None, smp::RC_EINVAL),
            },
            (smp::GROUP_OS, smp::OS_RESET, false) => {
                self.reset_at = Some(now + self.cfg.reset_delay);
                Dispatch::Answer(smp::map(vec![]))
            }
            (smp::GROUP_OS, smp::OS_PARAMS, true) => Dispatch::Answer(
                Params {
                    buf_size: self.cfg.buf_size,
                    buf_count: 4,
                }
                .to_value(),
            ),
            (smp::GROUP_IMAGE, smp::IMG_STATE, true) => {
                Dispatch::Answer(smp::image_states_body(&self.states()))
            }
            (smp::GROUP_IMAGE, smp::IMG_STATE, false) => self.state_write(b),
            (smp::GROUP_IMAGE, smp::IMG_UPLOAD, false) => self.upload(b, now),
            (smp::GROUP_IMAGE, smp::IMG_ERASE, false) => {
                if self.pending.is_some() || self.test_boot {
                    return Dispatch::Err(None, smp::RC_EBADSTATE);
                }
                self.secondary = None;
                self.upload = None;
                Dispatch::Answer(smp::map(vec![]))
            }
            _ => Dispatch::Err(None, smp::RC_ENOTSUP),
        }
    }

    fn state_write(&mut self, b: &Value) -> Dispatch {
        let m = smp::Map::of(b);
        let confirm = m.bool("confirm").unwrap_or(false);
        let hash = m.bytes("hash");
        let in_secondary = |d: &Device, h: &[u8]| d.secondary.as_ref().is_some_and(|s| s.hash == h);
        if confirm {
            if self.faults.refuse_confirm {
                return Dispatch::Err(Some(smp::GROUP_IMAGE), 32);
            }
            match hash {
                None => self.confirm_running(),
                Some(h) if h == self.primary.hash.as_slice() => self.confirm_running(),
                // Confirming the secondary image: a permanent upgrade at the next reset.
                Some(h) if in_secondary(self, h) => self.pending = Some(true),
                Some(_) => {
                    return Dispatch::Err(Some(smp::GROUP_IMAGE), smp::IMG_ERR_HASH_NOT_FOUND)
                }
            }
        } else {
            match hash {
                None => return Dispatch::Err(None, smp::RC_EINVAL),
                Some(h) if h == self.primary.hash.as_slice() => {
                    return Dispatch::Err(Some(smp::GROUP_IMAGE), 33)
                }
                Some(h) if in_secondary(self, h) => {
                    if self.test_boot {
                        return Dispatch::Err(None, smp::RC_EBADSTATE);
                    }
                    self.pending = Some(false);
                }
                Some(_) => {
                    return Dispatch::Err(Some(smp::GROUP_IMAGE), smp::IMG_ERR_HASH_NOT_FOUND)
                }
            }
        }
        Dispatch::Answer(smp::image_states_body(&self.states()))
    }

    fn confirm_running(&mut self) {
        self.primary_confirmed = true;
        self.test_boot = false;
        self.stats.confirms += 1;
    }

    fn upload(&mut self, b: &Value, now: Instant) -> Dispatch {
        if let Some(rc) = self.faults.refuse_upload {
            return Dispatch::Err(Some(smp::GROUP_IMAGE), rc);
        }
        let req = match UploadRequest::parse(b) {
            Ok(r) => r,
            Err(_) if smp::Map::of(b).get("off").is_none() => {
                return Dispatch::Err(Some(smp::GROUP_IMAGE), smp::IMG_ERR_INVALID_OFFSET)
            }
            Err(_) => return Dispatch::Err(None, smp::RC_EINVAL),
        };
        if let Some(x) = self.faults.reset_at_offset {
            if req.off <= x && x < req.off + req.data.len() as u64 {
                self.faults.reset_at_offset = None;
                self.reboot(now);
                return Dispatch::Silent;
            }
        }
        let expected = |d: &Device| d.upload.as_ref().map(|u| u.buf.len() as u64).unwrap_or(0);
        if req.off == 0 {
            if req.data.len() < 32 {
                return Dispatch::Err(Some(smp::GROUP_IMAGE), smp::IMG_ERR_INVALID_IMAGE_HEADER);
            }
            let Some(len) = req.len else {
                return Dispatch::Err(Some(smp::GROUP_IMAGE), smp::IMG_ERR_INVALID_LENGTH);
            };
            let magic = u32::from_le_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]);
            if magic != rota::mcu::image::IMAGE_MAGIC && !self.cfg.accept_raw {
                return Dispatch::Err(
                    Some(smp::GROUP_IMAGE),
                    smp::IMG_ERR_INVALID_IMAGE_HEADER_MAGIC,
                );
            }
            if let (Some(sha), Some(u)) = (&req.sha, &self.upload) {
                if u.sha.as_ref() == Some(sha) && u.len == len {
                    self.stats.resumed_sessions += 1;
                    return Dispatch::Answer(
                        UploadResponse {
                            off: u.buf.len() as u64,
                            matched: None,
                        }
                        .to_value(),
                    );
                }
            }
            if self.pending.is_some() || self.test_boot {
                return Dispatch::Err(Some(smp::GROUP_IMAGE), smp::IMG_ERR_NO_FREE_SLOT);
            }
            if len as usize > self.cfg.slot_size {
                return Dispatch::Err(Some(smp::GROUP_IMAGE), smp::IMG_ERR_IMAGE_TOO_LARGE);
            }
            // New session: the secondary slot is erased.
            self.secondary = None;
            self.upload = Some(Upload {
                len,
                sha: req.sha.clone(),
                buf: Vec::with_capacity(len as usize),
            });
        } else {
            let want = expected(self);
            if self.upload.is_none() || req.off != want {
                return Dispatch::Answer(
                    UploadResponse {
                        off: want,
                        matched: None,
                    }
                    .to_value(),
                );
            }
        }
        let Some(u) = self.upload.as_mut() else {
            return Dispatch::Err(None, smp::RC_EBADSTATE);
        };
        if req.off + req.data.len() as u64 > u.len {
            return Dispatch::Err(Some(smp::GROUP_IMAGE), smp::IMG_ERR_DATA_OVERRUN);
        }
        u.buf.extend_from_slice(&req.data);
        self.stats.bytes_written += req.data.len() as u64;
        let off = u.buf.len() as u64;
        if off < u.len {
            return Dispatch::Answer(UploadResponse { off, matched: None }.to_value());
        }
        let Some(done) = self.upload.take() else {
            return Dispatch::Err(None, smp::RC_EBADSTATE);
        };
        let matched = done
            .sha
            .as_ref()
            .map(|s| Sha256::digest(&done.buf).as_slice() == s.as_slice());
        self.stats.uploads_completed += 1;
        self.stats.last_upload = Some(done.buf.clone());
        self.secondary = Some(slot_from(done.buf, self.cfg.accept_raw));
        Dispatch::Answer(UploadResponse { off, matched }.to_value())
    }
}

enum Dispatch {
    Answer(Value),
    /// (Some(group) for a group error, None for a generic MGMT_ERR code, rc)
    Err(Option<u16>, i64),
    Silent,
}

/// Error body in the request's version; v1 gets Zephyr-like generic codes.
fn error_for(version: Version, group: Option<u16>, rc: i64) -> Value {
    match (version, group) {
        (Version::V2, Some(g)) => smp::error_body(Version::V2, g, rc),
        (Version::V1, Some(_)) => {
            let generic = match rc {
                9 | 15 => 2,    // no free slot / memory -> ENOMEM
                3 | 4 | 8 => 5, // no image / TLVs / hash -> ENOENT
                32 | 33 => 6,   // denied -> EBADSTATE
                _ => 3,         // EINVAL
            };
            smp::map(vec![("rc", Value::from(generic))])
        }
        (_, None) => smp::map(vec![("rc", Value::from(rc))]),
    }
}

/// What a slot reports for an image: MCUboot hash TLV (checked here, independently of
/// rota) and version, or the file's SHA-256 for raw images.
pub fn slot_from(data: Vec<u8>, accept_raw: bool) -> Slot {
    match mcuboot_check(&data) {
        Some((hash, version, valid)) => Slot {
            data,
            hash,
            version,
            valid,
        },
        None => Slot {
            hash: Sha256::digest(&data).to_vec(),
            version: String::new(),
            valid: accept_raw,
            data,
        },
    }
}

fn rd16(b: &[u8], o: usize) -> Option<usize> {
    Some(u16::from_le_bytes([*b.get(o)?, *b.get(o + 1)?]) as usize)
}

fn rd32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(o)?,
        *b.get(o + 1)?,
        *b.get(o + 2)?,
        *b.get(o + 3)?,
    ]))
}

/// MCUboot-style validation: (hash TLV value, version, hash matches).
fn mcuboot_check(d: &[u8]) -> Option<(Vec<u8>, String, bool)> {
    if rd32(d, 0)? != 0x96f3_b83d {
        return None;
    }
    let hdr = rd16(d, 8)?;
    let prot = rd16(d, 10)?;
    let size = rd32(d, 12)? as usize;
    let build = rd32(d, 24)?;
    let mut version = format!("{}.{}.{}", d.get(20)?, d.get(21)?, rd16(d, 22)?);
    if build != 0 {
        version.push_str(&format!(".{build}"));
    }
    let start = hdr.checked_add(size)?.checked_add(prot)?;
    if rd16(d, start)? != 0x6907 {
        return Some((Vec::new(), version, false));
    }
    let end = start + rd16(d, start + 2)?;
    let mut o = start + 4;
    while o + 4 <= end.min(d.len()) {
        let (t, l) = (rd16(d, o)?, rd16(d, o + 2)?);
        let v = d.get(o + 4..o + 4 + l)?;
        let region = d.get(..start)?;
        let computed: Option<Vec<u8>> = match (t, l) {
            (0x10, 32) => Some(Sha256::digest(region).to_vec()),
            (0x11, 48) => Some(Sha384::digest(region).to_vec()),
            (0x12, 64) => Some(Sha512::digest(region).to_vec()),
            _ => None,
        };
        if let Some(c) = computed {
            return Some((v.to_vec(), version, c == v));
        }
        o += 4 + l;
    }
    Some((Vec::new(), version, false))
}

/// A running simulator: one device, served on a pty and/or UDP.
pub struct Sim {
    pub device: Arc<Mutex<Device>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The pty slave path clients open (`/dev/pts/N`).
    pub pty: Option<PathBuf>,
    /// The UDP address clients send to.
    pub udp: Option<SocketAddr>,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        Sim {
            device: Arc::new(Mutex::new(Device::new(cfg))),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            pty: None,
            udp: None,
        }
    }

    /// Locks the device (faults, stats, slots).
    pub fn dev(&self) -> MutexGuard<'_, Device> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, f: Faults) {
        self.dev().faults = f;
    }

    /// Serves SMP over a new pty; returns its slave path.
    pub fn serve_pty(&mut self) -> std::io::Result<PathBuf> {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        let path = nix::unistd::ttyname(&pty.slave).map_err(std::io::Error::from)?;
        let baud = self.dev().cfg.baud;
        make_raw(&pty.slave, baud.unwrap_or(115_200)).map_err(std::io::Error::from)?;
        let (dev, stop) = (self.device.clone(), self.stop.clone());
        self.threads.push(std::thread::spawn(move || {
            pty_loop(pty.master, pty.slave, dev, stop, baud)
        }));
        self.pty = Some(path.clone());
        Ok(path)
    }

    /// Serves SMP over UDP on `addr` (port 0 picks one); returns the bound address.
    pub fn serve_udp(&mut self, addr: &str) -> std::io::Result<SocketAddr> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_read_timeout(Some(Duration::from_millis(10)))?;
        let local = sock.local_addr()?;
        let (dev, stop) = (self.device.clone(), self.stop.clone());
        self.threads
            .push(std::thread::spawn(move || udp_loop(sock, dev, stop)));
        self.udp = Some(local);
        Ok(local)
    }

    /// Reboots the device now (power cycle).
    pub fn power_cycle(&self) {
        self.dev().reboot(Instant::now());
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Paces one direction of a serial line.
struct Pace {
    bytes_per_sec: Option<f64>,
    clock: Instant,
}

impl Pace {
    fn new(baud: Option<u32>) -> Self {
        Self {
            bytes_per_sec: baud.map(|b| f64::from(b) / 10.0),
            clock: Instant::now(),
        }
    }

    /// Waits until `n` more bytes would have crossed the line.
    fn account(&mut self, n: usize) {
        let Some(rate) = self.bytes_per_sec else {
            return;
        };
        let now = Instant::now();
        if self.clock < now {
            self.clock = now;
        }
        self.clock += Duration::from_secs_f64(n as f64 / rate);
        let now = Instant::now();
        if self.clock > now {
            std::thread::sleep(self.clock - now);
        }
    }
}

fn pty_loop(
    master: OwnedFd,
    _slave: OwnedFd,
    dev: Arc<Mutex<Device>>,
    stop: Arc<AtomicBool>,
    baud: Option<u32>,
) {
    // `_slave` stays open so the master never sees a hang-up between clients.
    let mut file = File::from(master);
    let mut decoder = FrameDecoder::new();
    let mut packets = VecDeque::new();
    let (mut rx, mut tx) = (Pace::new(baud), Pace::new(baud));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        dev.lock()
            .unwrap_or_else(|e| e.into_inner())
            .tick(Instant::now());
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(10u8)) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let n = match file.read(&mut buf) {
            Ok(n) if n > 0 => n,
            _ => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        rx.account(n);
        dev.lock().unwrap_or_else(|e| e.into_inner()).stats.wire_rx += n as u64;
        let before = decoder.bad_frames;
        decoder.push(&buf[..n], &mut packets);
        let bad = decoder.bad_frames - before;
        while let Some(p) = packets.pop_front() {
            let (answer, corrupt) = {
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                d.stats.bad_frames_in += bad;
                if p.len() + 4 > d.cfg.buf_size as usize {
                    d.stats.oversize += 1;
                    continue;
                }
                let a = d.handle(&p, Instant::now());
                let c = a.is_some() && d.take_corrupt();
                (a, c)
            };
            let Some(answer) = answer else { continue };
            let mut frame = encode_frame(&answer);
            if corrupt {
                // Re-frame with a wrong CRC: decodes as base64, fails the CRC check.
                frame = bad_crc_frame(&answer);
            }
            tx.account(frame.len());
            dev.lock().unwrap_or_else(|e| e.into_inner()).stats.wire_tx += frame.len() as u64;
            let _ = file.write_all(&frame);
        }
    }
}

/// Frames `packet` like `encode_frame` but with a wrong CRC: the lines decode as
/// base64, the CRC check fails.
fn bad_crc_frame(packet: &[u8]) -> Vec<u8> {
    let crc = rota::mcu::transport::serial::crc16_xmodem(packet) ^ 0x5a5a;
    let mut raw = ((packet.len() + 2) as u16).to_be_bytes().to_vec();
    raw.extend_from_slice(packet);
    raw.extend_from_slice(&crc.to_be_bytes());
    let text = base64_encode(&raw);
    let mut out = Vec::new();
    for (i, part) in text
        .as_bytes()
        .chunks(rota::mcu::transport::serial::LINE_B64)
        .enumerate()
    {
        out.extend_from_slice(if i == 0 { &[0x06, 0x09] } else { &[0x04, 0x14] });
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn udp_loop(sock: UdpSocket, dev: Arc<Mutex<Device>>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::SeqCst) {
        dev.lock()
            .unwrap_or_else(|e| e.into_inner())
            .tick(Instant::now());
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        let (answer, corrupt) = {
            let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
            d.stats.wire_rx += n as u64 + 28;
            if n > d.cfg.buf_size as usize {
                d.stats.oversize += 1;
                continue;
            }
            let a = d.handle(&buf[..n], Instant::now());
            let c = a.is_some() && d.take_corrupt();
            (a, c)
        };
        if let Some(mut a) = answer {
            if corrupt {
                // A datagram whose header length no longer matches: the client drops it.
                a.truncate(a.len() - 1);
            }
            dev.lock().unwrap_or_else(|e| e.into_inner()).stats.wire_tx += a.len() as u64 + 28;
            let _ = sock.send_to(&a, from);
        }
    }
}
