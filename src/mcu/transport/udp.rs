//! SMP over UDP: one SMP packet per datagram, default port 1337.

use super::Transport;
use crate::mcu::smp::{Params, HEADER_LEN};
use crate::mcu::McuError;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// MCUmgr's UDP port when the address names none.
pub const DEFAULT_PORT: u16 = 1337;
/// Largest datagram we send: Ethernet MTU (1500) minus IPv4 (20) and UDP (8)
/// headers, so no packet is ever IP-fragmented.
pub const MAX_DATAGRAM: usize = 1472;
/// Packet limit when the device reports no `buf_size` (Zephyr's default UDP MTU).
pub const DEFAULT_MTU: usize = 1024;
/// IPv4 + UDP header bytes per datagram, for throughput figures.
const IP_UDP_OVERHEAD: usize = 28;
/// Largest datagram we accept (bounded receive buffer).
const RECV_BUF: usize = 65_536;

/// Resolves `host:port`, `host` (port 1337), `a.b.c.d`, `[v6]:port`.
pub fn resolve(address: &str) -> Result<SocketAddr, McuError> {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = address
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let first =
        |r: std::io::Result<std::vec::IntoIter<SocketAddr>>| r.ok().and_then(|mut i| i.next());
    let found = if address.contains(':') {
        first(address.to_socket_addrs())
    } else {
        first((address, DEFAULT_PORT).to_socket_addrs())
    };
    found.ok_or_else(|| {
        McuError::Config(format!(
            "cannot resolve MCU address {address:?} (expected host:port)"
        ))
    })
}

/// A UDP socket connected to one node.
pub struct UdpTransport {
    socket: UdpSocket,
    peer: SocketAddr,
    buf: Vec<u8>,
}

impl UdpTransport {
    pub fn connect(address: &str) -> Result<Self, McuError> {
        let peer = resolve(address)?;
        let local: SocketAddr = if peer.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket =
            UdpSocket::bind(local).map_err(|e| McuError::io("cannot open a UDP socket", e))?;
        socket
            .connect(peer)
            .map_err(|e| McuError::io(format!("cannot connect UDP socket to {peer}"), e))?;
        Ok(Self {
            socket,
            peer,
            buf: vec![0; RECV_BUF],
        })
    }
}

impl Transport for UdpTransport {
    fn send(&mut self, packet: &[u8]) -> Result<(), McuError> {
        match self.socket.send(packet) {
            Ok(_) => Ok(()),
            // An ICMP "port unreachable" from an earlier datagram: the node is not
            // listening (yet, e.g. rebooting). Treat it like a lost datagram.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(McuError::io(format!("send to {}", self.peer), e)),
        }
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, McuError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.socket
                .set_read_timeout(Some(wait))
                .map_err(|e| McuError::io("set UDP receive timeout", e))?;
            match self.socket.recv(&mut self.buf) {
                Ok(n) if n >= HEADER_LEN => return Ok(Some(self.buf[..n].to_vec())),
                Ok(n) => log::debug!("udp {}: dropping {n}-byte datagram", self.peer),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::thread::sleep(wait.min(Duration::from_millis(20)));
                }
                Err(e) => return Err(McuError::io(format!("receive from {}", self.peer), e)),
            }
        }
    }

    fn max_packet(&self, params: Option<Params>) -> usize {
        params
            .map(|p| p.buf_size as usize)
            .unwrap_or(DEFAULT_MTU)
            .min(MAX_DATAGRAM)
    }

    fn wire_len(&self, n: usize) -> usize {
        n + IP_UDP_OVERHEAD
    }

    fn describe(&self) -> String {
        format!("udp {}", self.peer)
    }

    fn discard_input(&mut self) {
        let _ = self.socket.set_nonblocking(true);
        while self.socket.recv(&mut self.buf).is_ok() {}
        let _ = self.socket.set_nonblocking(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_port_1337() {
        assert_eq!(
            resolve("127.0.0.1").unwrap(),
            "127.0.0.1:1337".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(resolve("[::1]:5").unwrap(), "[::1]:5".parse().unwrap());
        assert_eq!(resolve("::1").unwrap(), "[::1]:1337".parse().unwrap());
        assert!(resolve("localhost:notaport").is_err());
        assert_eq!(resolve("localhost").unwrap().port(), 1337);
    }
}
