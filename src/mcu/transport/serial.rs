//! SMP over a serial line ("SMP over console"): the framing codec and a transport on
//! a tty opened in raw mode at the node's baud rate.
//!
//! Framing of one SMP packet: `len (u16 BE) | packet | CRC16-XMODEM(packet) (u16 BE)`,
//! where `len` counts the packet and the CRC; that is base64-encoded (standard
//! alphabet, padded) and cut into lines of whole 4-character groups. The first line
//! starts with 0x06 0x09, continuation lines with 0x04 0x14; each ends in `\n` and is
//! at most [`LINE_MAX`] bytes. Lines that start with neither are console output from
//! the device and are skipped.

use super::Transport;
use crate::mcu::smp::{Params, HEADER_LEN, MAX_PACKET};
use crate::mcu::McuError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use nix::sys::termios::{self, BaudRate, ControlFlags, FlushArg, SetArg};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Longest line on the wire: start bytes + base64 + `\n` (SMP transport spec).
pub const LINE_MAX: usize = 127;
/// Base64 characters per line: the whole 4-character groups that fit in `LINE_MAX`
/// after the 2 start bytes and the newline.
pub const LINE_B64: usize = (LINE_MAX - 3) / 4 * 4;
/// First-line marker.
pub const START: [u8; 2] = [0x06, 0x09];
/// Continuation-line marker.
pub const CONTINUE: [u8; 2] = [0x04, 0x14];
/// Longest console line we buffer while looking for a newline; longer noise is
/// dropped so a chatty device cannot make us grow without bound.
const MAX_NOISE_LINE: usize = 4096;
/// Reassembly buffer assumed when the device does not report `buf_size`
/// (conservative; Zephyr's default is 384).
pub const DEFAULT_BUF_SIZE: usize = 256;
/// Length prefix and CRC that share the device's reassembly buffer with the packet.
const FRAME_OVERHEAD: usize = 4;

/// CRC-16/XMODEM: poly 0x1021, init 0, no reflection, no final xor.
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Frames one SMP packet as console lines (all lines concatenated).
/// Panics never; packets longer than the u16 length field are cut off by the caller's
/// size checks (the client never builds one).
pub fn encode_frame(packet: &[u8]) -> Vec<u8> {
    let len = u16::try_from(packet.len() + 2).unwrap_or(u16::MAX);
    let mut raw = Vec::with_capacity(packet.len() + 4);
    raw.extend_from_slice(&len.to_be_bytes());
    raw.extend_from_slice(packet);
    raw.extend_from_slice(&crc16_xmodem(packet).to_be_bytes());
    let text = B64.encode(&raw);
    let mut out = Vec::with_capacity(wire_len(packet.len()));
    for (i, part) in text.as_bytes().chunks(LINE_B64).enumerate() {
        out.extend_from_slice(if i == 0 { &START } else { &CONTINUE });
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out
}

/// Bytes on the wire for an SMP packet of `n` bytes.
pub fn wire_len(n: usize) -> usize {
    let b64 = (n + FRAME_OVERHEAD).div_ceil(3) * 4;
    b64 + b64.div_ceil(LINE_B64) * 3
}

/// Reassembles SMP packets from a byte stream of console lines.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    line: Vec<u8>,
    /// The current line overflowed `MAX_NOISE_LINE`; skip to the next newline.
    skipping: bool,
    partial: Option<Partial>,
    /// Frames dropped (bad base64, bad length, bad CRC, missing start line).
    pub bad_frames: u64,
    /// Why the last frame was dropped.
    pub last_error: String,
}

#[derive(Debug)]
struct Partial {
    /// Packet + CRC bytes announced by the length prefix.
    want: usize,
    data: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds received bytes; complete, CRC-checked packets are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut VecDeque<Vec<u8>>) {
        for &b in bytes {
            if b == b'\n' {
                if !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out);
                }
                self.line.clear();
                self.skipping = false;
            } else if !self.skipping {
                self.line.push(b);
                if self.line.len() > MAX_NOISE_LINE {
                    self.line.clear();
                    self.skipping = true;
                }
            }
        }
    }

    /// Forgets any partial line or packet.
    pub fn reset(&mut self) {
        self.line.clear();
        self.skipping = false;
        self.partial = None;
    }

    fn drop_frame(&mut self, why: String) {
        log::debug!("serial: dropping frame: {why}");
        self.bad_frames += 1;
        self.last_error = why;
        self.partial = None;
    }

    fn line_done(&mut self, line: &[u8], out: &mut VecDeque<Vec<u8>>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() < 2 {
            return;
        }
        let (marker, text) = line.split_at(2);
        let first = marker == START;
        if !first && marker != CONTINUE {
            return; // console output, not SMP
        }
        let decoded = match B64.decode(text) {
            Ok(d) => d,
            Err(e) => {
                return self.drop_frame(format!("bad base64 in a {} line: {e}", line_kind(first)))
            }
        };
        if first {
            if self.partial.is_some() {
                self.drop_frame("a new frame started before the previous one was complete".into());
            }
            if decoded.len() < 2 {
                return self.drop_frame("first line shorter than the 2-byte length".into());
            }
            let want = usize::from(u16::from_be_bytes([decoded[0], decoded[1]]));
            if want < HEADER_LEN + 2 {
                return self.drop_frame(format!(
                    "frame length {want} is shorter than an SMP header and CRC"
                ));
            }
            self.partial = Some(Partial {
                want,
                data: decoded[2..].to_vec(),
            });
        } else {
            match self.partial.as_mut() {
                Some(p) => p.data.extend_from_slice(&decoded),
                None => return self.drop_frame("continuation line without a start line".into()),
            }
        }
        let Some(p) = self.partial.as_ref() else {
            return;
        };
        if p.data.len() < p.want {
            return;
        }
        if p.data.len() > p.want {
            let msg = format!(
                "frame carries {} bytes, its length says {}",
                p.data.len(),
                p.want
            );
            return self.drop_frame(msg);
        }
        let Some(p) = self.partial.take() else { return };
        let (packet, crc) = p.data.split_at(p.want - 2);
        let got = u16::from_be_bytes([crc[0], crc[1]]);
        let computed = crc16_xmodem(packet);
        if got != computed {
            return self.drop_frame(format!(
                "CRC mismatch: frame says 0x{got:04x}, computed 0x{computed:04x}"
            ));
        }
        out.push_back(packet.to_vec());
    }
}

fn line_kind(first: bool) -> &'static str {
    if first {
        "start"
    } else {
        "continuation"
    }
}

/// Maps a configured baud rate to a termios speed.
pub fn baud_rate(baud: u32) -> Result<BaudRate, McuError> {
    Ok(match baud {
        1200 => BaudRate::B1200,
        2400 => BaudRate::B2400,
        4800 => BaudRate::B4800,
        9600 => BaudRate::B9600,
        19200 => BaudRate::B19200,
        38400 => BaudRate::B38400,
        57600 => BaudRate::B57600,
        115200 => BaudRate::B115200,
        230400 => BaudRate::B230400,
        460800 => BaudRate::B460800,
        500000 => BaudRate::B500000,
        576000 => BaudRate::B576000,
        921600 => BaudRate::B921600,
        1000000 => BaudRate::B1000000,
        1152000 => BaudRate::B1152000,
        1500000 => BaudRate::B1500000,
        2000000 => BaudRate::B2000000,
        3000000 => BaudRate::B3000000,
        4000000 => BaudRate::B4000000,
        other => {
            return Err(McuError::Config(format!(
                "unsupported baud rate {other}: use a standard rate such as 9600, 115200, 230400, 460800, 921600 or 1000000"
            )))
        }
    })
}

/// Puts a tty into raw 8N1 mode at `baud` (also used by the simulator on its pty).
pub fn make_raw<F: AsFd>(fd: F, baud: u32) -> nix::Result<()> {
    let mut t = termios::tcgetattr(fd.as_fd())?;
    termios::cfmakeraw(&mut t);
    t.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
    t.control_flags &= !(ControlFlags::CSTOPB | ControlFlags::PARENB | ControlFlags::CRTSCTS);
    if let Ok(rate) = baud_rate(baud) {
        termios::cfsetspeed(&mut t, rate)?;
    }
    termios::tcsetattr(fd.as_fd(), SetArg::TCSANOW, &t)
}

/// SMP console framing on a tty.
pub struct SerialTransport {
    file: File,
    path: PathBuf,
    decoder: FrameDecoder,
    ready: VecDeque<Vec<u8>>,
}

impl SerialTransport {
    /// Opens `path` read-write without making it the controlling terminal, sets raw
    /// 8N1 at `baud` and drops whatever was waiting in the input queue.
    pub fn open(path: &Path, baud: u32) -> Result<Self, McuError> {
        let rate = baud_rate(baud)?;
        let what = || format!("serial device {}", path.display());
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| McuError::io(format!("cannot open {}", what()), e.into()))?;
        let setup = || -> nix::Result<()> {
            let mut t = termios::tcgetattr(&fd)?;
            termios::cfmakeraw(&mut t);
            t.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
            t.control_flags &=
                !(ControlFlags::CSTOPB | ControlFlags::PARENB | ControlFlags::CRTSCTS);
            termios::cfsetspeed(&mut t, rate)?;
            termios::tcsetattr(&fd, SetArg::TCSANOW, &t)?;
            termios::tcflush(&fd, FlushArg::TCIFLUSH)?;
            // Blocking from here on: reads only follow a poll, writes may wait for the line.
            let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
            fcntl(&fd, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
            Ok(())
        };
        setup().map_err(|e| {
            McuError::io(
                format!("cannot configure {} as a raw {baud} baud tty", what()),
                e.into(),
            )
        })?;
        Ok(Self {
            file: File::from(fd),
            path: path.to_owned(),
            decoder: FrameDecoder::new(),
            ready: VecDeque::new(),
        })
    }

    /// Frames dropped so far (bad CRC, bad base64...).
    pub fn bad_frames(&self) -> u64 {
        self.decoder.bad_frames
    }
}

impl Transport for SerialTransport {
    fn send(&mut self, packet: &[u8]) -> Result<(), McuError> {
        if packet.len() > MAX_PACKET {
            return Err(McuError::Config(format!(
                "SMP packet of {} bytes exceeds the serial frame limit",
                packet.len()
            )));
        }
        let frame = encode_frame(packet);
        self.file
            .write_all(&frame)
            .and_then(|()| self.file.flush())
            .map_err(|e| McuError::io(format!("write to serial device {}", self.path.display()), e))
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, McuError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Ok(Some(p));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = PollTimeout::try_from((deadline - now).as_millis().max(1))
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(McuError::io(
                        format!("poll serial device {}", self.path.display()),
                        e.into(),
                    ))
                }
            }
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if !revents.contains(PollFlags::POLLIN)
                && revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
            {
                return Err(McuError::Relay(format!(
                    "serial device {} hung up",
                    self.path.display()
                )));
            }
            match self.file.read(&mut buf) {
                Ok(0) => {
                    return Err(McuError::Relay(format!(
                        "serial device {} closed",
                        self.path.display()
                    )))
                }
                Ok(n) => self.decoder.push(&buf[..n], &mut self.ready),
                Err(e)
                    if e.kind() == std::io::ErrorKind::Interrupted
                        || e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(McuError::io(
                        format!("read from serial device {}", self.path.display()),
                        e,
                    ))
                }
            }
        }
    }

    fn max_packet(&self, params: Option<Params>) -> usize {
        let buf = params
            .map(|p| p.buf_size as usize)
            .unwrap_or(DEFAULT_BUF_SIZE);
        buf.saturating_sub(FRAME_OVERHEAD).min(MAX_PACKET)
    }

    fn wire_len(&self, n: usize) -> usize {
        wire_len(n)
    }

    fn describe(&self) -> String {
        format!("serial {}", self.path.display())
    }

    fn discard_input(&mut self) {
        let _ = termios::tcflush(&self.file, FlushArg::TCIFLUSH);
        self.decoder.reset();
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_xmodem_check_value() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
    }

    #[test]
    fn matches_the_python_smp_example() {
        // `smp.packet.encode(b"Hello, world!")` from the PyPI smp documentation.
        assert_eq!(
            encode_frame(b"Hello, world!"),
            b"\x06\tAA9IZWxsbywgd29ybGQhet4=\n"
        );
    }

    #[test]
    fn long_packets_split_into_whole_groups_within_the_line_limit() {
        let pkt: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let frame = encode_frame(&pkt);
        assert_eq!(frame.len(), wire_len(pkt.len()));
        let lines: Vec<&[u8]> = frame.split_inclusive(|&b| b == b'\n').collect();
        assert!(lines.len() > 1);
        for (i, l) in lines.iter().enumerate() {
            assert!(l.len() <= LINE_MAX, "line {i} has {} bytes", l.len());
            assert_eq!(&l[..2], if i == 0 { &START } else { &CONTINUE });
            assert_eq!((l.len() - 3) % 4, 0);
        }
        let mut d = FrameDecoder::new();
        let mut out = VecDeque::new();
        // byte by byte, with console noise in front
        d.push(b"*** Booting Zephyr OS ***\r\n", &mut out);
        for b in &frame {
            d.push(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out.pop_front().unwrap(), pkt);
        assert_eq!(d.bad_frames, 0);
    }

    #[test]
    fn bad_crc_and_garbage_are_dropped_and_the_next_frame_still_decodes() {
        let pkt = vec![0x0b, 0, 0, 1, 0, 1, 3, 0, 0xa0];
        let mut bad = encode_frame(&pkt);
        // Re-encode with a wrong CRC.
        let mut raw = B64.decode(&bad[2..bad.len() - 1]).unwrap();
        let n = raw.len();
        raw[n - 1] ^= 0xff;
        bad = [&START[..], B64.encode(&raw).as_bytes(), b"\n"].concat();
        let mut d = FrameDecoder::new();
        let mut out = VecDeque::new();
        d.push(&bad, &mut out);
        d.push(b"\x04\x14AAAA\n", &mut out); // stray continuation
        d.push(b"\x06\t!!!!\n", &mut out); // bad base64
        d.push(&vec![b'x'; 10_000], &mut out); // endless noise
        d.push(b"\n", &mut out);
        d.push(&encode_frame(&pkt), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0], pkt);
        assert_eq!(d.bad_frames, 3);
    }

    #[test]
    fn unsupported_baud_is_a_clear_error() {
        let e = baud_rate(12345).unwrap_err().to_string();
        assert!(e.contains("unsupported baud rate 12345"), "{e}");
    }
}
