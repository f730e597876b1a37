//! A fault-injecting TCP proxy on 127.0.0.1 for HTTP/1.1 tests: it sits between a client
//! and a real server and spoils the answer to chosen requests — cut the connection (reset)
//! at a byte offset of the answer, end it early (clean close: a short read), stall it,
//! flip one byte, or answer `500` itself. Each request (a new request head on a kept-alive
//! connection counts too) takes the next fault from a queue, or from a seeded random plan;
//! requests without a fault pass through. Offsets count from the first byte of the answer,
//! status line and headers included.
//!
//! Runs its own tokio runtime on a thread, so synchronous tests can use it. Bounded: at
//! most [`MAX_CONNECTIONS`] connections, stalls end after their hold time, and everything
//! stops when the proxy is dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// More connections than any test makes; a runaway retry loop hits this and fails.
pub const MAX_CONNECTIONS: u64 = 2000;
/// Largest request head the `500` fault reads before answering.
const MAX_REQUEST_HEAD: usize = 16 << 10;

/// What happens to the answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Forward `after` bytes, then reset both sides (RST): a dropped link.
    Cut { after: u64 },
    /// Forward `after` bytes, then close cleanly (FIN): the body ends short.
    Short { after: u64 },
    /// Forward `after` bytes, then send nothing for `hold`, then close.
    Stall { after: u64, hold: Duration },
    /// Forward everything but invert the byte at stream offset `at`.
    Flip { at: u64 },
    /// Do not contact the server: read the request and answer `500 Internal Server Error`.
    Status500,
}

/// Seeded random faults: each request gets a fault with probability `percent`,
/// until `max_faults` were handed out; offsets fall in `min_offset..max_offset`.
#[derive(Debug, Clone, Copy)]
pub struct RandomPlan {
    pub seed: u64,
    pub percent: u64,
    pub max_faults: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    /// Hold time of random stalls (make it longer than the client's stall timeout).
    pub stall: Duration,
    /// Only requests for at least this many bytes (by their `Range`) get random faults,
    /// and offsets stay inside the answer; 0 = any request, offsets as drawn.
    pub min_range: u64,
}

/// The body length a `Range: bytes=a-b` asks for.
fn range_len(range: &str) -> Option<u64> {
    let (a, b) = range.strip_prefix("bytes=")?.split_once('-')?;
    Some(
        b.trim()
            .parse::<u64>()
            .ok()?
            .checked_sub(a.trim().parse().ok()?)?
            + 1,
    )
}

#[derive(Default)]
struct Plan {
    queue: VecDeque<Fault>,
    /// Faults for requests of at least `.0` bytes (by their `Range`), in order.
    large: (u64, VecDeque<Fault>),
    /// The plan, its generator state, and faults it handed out.
    random: Option<(RandomPlan, u64, u64)>,
    handed_out: Vec<Fault>,
    /// The `Range` header of each request (or "-"), in the order faults were handed out.
    ranges: Vec<String>,
}

/// The `Range` header values in a piece of request stream, in order.
fn ranges_in(head: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n\r\n")
        .filter(|req| !req.trim().is_empty())
        .map(|req| {
            req.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("range")
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_else(|| "-".into())
        })
        .collect()
}

impl Plan {
    fn next(&mut self, range: String) -> Fault {
        let len = range_len(&range);
        self.ranges.push(range);
        let large = matches!(len, Some(l) if l >= self.large.0 && !self.large.1.is_empty());
        let queued = if large {
            self.large.1.pop_front()
        } else {
            self.queue.pop_front()
        };
        let f = match queued {
            Some(f) => f,
            None => match &mut self.random {
                Some((p, state, given)) => {
                    let mut rnd = || {
                        *state ^= *state << 13;
                        *state ^= *state >> 7;
                        *state ^= *state << 17;
                        *state
                    };
                    let small = p.min_range > 0 && !matches!(len, Some(l) if l >= p.min_range);
                    if small || *given >= p.max_faults || rnd() % 100 >= p.percent {
                        Fault::Pass
                    } else {
                        *given += 1;
                        // Headers come first: about 250 bytes before the body.
                        let end = match (p.min_range, len) {
                            (0, _) | (_, None) => p.max_offset,
                            (_, Some(l)) => p.max_offset.min(l + 200),
                        };
                        let span = end.saturating_sub(p.min_offset).max(1);
                        let off = p.min_offset + rnd() % span;
                        match rnd() % 5 {
                            0 => Fault::Cut { after: off },
                            1 => Fault::Short { after: off },
                            2 => Fault::Stall {
                                after: off,
                                hold: p.stall,
                            },
                            3 => Fault::Flip { at: off },
                            _ => Fault::Status500,
                        }
                    }
                }
                None => Fault::Pass,
            },
        };
        self.handed_out.push(f);
        f
    }
}

/// Counters of what went through.
#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    to_client: AtomicU64,
    /// Bytes actually inverted (a flip beyond the end of a short answer never happens).
    flipped: AtomicU64,
}

pub struct FaultProxy {
    pub port: u16,
    plan: Arc<Mutex<Plan>>,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let plan = Arc::new(Mutex::new(Plan::default()));
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (p, s) = (plan.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1");
                port_tx
                    .send(listener.local_addr().expect("local addr").port())
                    .expect("port");
                let upstream: SocketAddr = ([127, 0, 0, 1], upstream).into();
                let accept = async {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        let n = s.connections.fetch_add(1, Ordering::SeqCst) + 1;
                        if n > MAX_CONNECTIONS {
                            continue; // dropped: the client sees a closed connection
                        }
                        let (plan, stats) = (p.clone(), s.clone());
                        tokio::spawn(async move {
                            let _ = serve(client, upstream, plan, stats).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime ends every connection task.
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fault proxy started");
        FaultProxy {
            port,
            plan,
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Queues faults for the next new connections, in order.
    pub fn push(&self, faults: impl IntoIterator<Item = Fault>) {
        self.plan.lock().unwrap().queue.extend(faults);
    }

    /// Queues faults for the next requests of at least `min_range` bytes (by their
    /// `Range`), in order; smaller requests pass (or take the other queue).
    pub fn push_large(&self, min_range: u64, faults: impl IntoIterator<Item = Fault>) {
        let mut p = self.plan.lock().unwrap();
        p.large.0 = min_range;
        p.large.1.extend(faults);
    }

    /// Hands out random faults once the queue is empty.
    pub fn random(&self, plan: RandomPlan) {
        self.plan.lock().unwrap().random =
            Some((plan, plan.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, 0));
    }

    /// Stops handing out random faults and drops queued ones.
    pub fn clear(&self) {
        let mut p = self.plan.lock().unwrap();
        p.queue.clear();
        p.large.1.clear();
        p.random = None;
    }

    /// Faults handed to requests so far (`Pass` included), in order.
    pub fn handed_out(&self) -> Vec<Fault> {
        self.plan.lock().unwrap().handed_out.clone()
    }

    /// Each request's `Range` header with the fault it got, in order.
    pub fn requests(&self) -> Vec<(String, Fault)> {
        let p = self.plan.lock().unwrap();
        p.ranges
            .iter()
            .cloned()
            .zip(p.handed_out.iter().copied())
            .collect()
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Bytes inverted so far.
    pub fn flips(&self) -> u64 {
        self.stats.flipped.load(Ordering::SeqCst)
    }

    /// Bytes sent to clients, headers included.
    pub fn bytes_to_clients(&self) -> u64 {
        self.stats.to_client.load(Ordering::SeqCst)
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fault armed for the answer now being sent on one connection.
struct Armed {
    fault: Fault,
    /// Bytes sent to the client on this connection before the answer began.
    base: u64,
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    stats: Arc<Stats>,
) -> std::io::Result<()> {
    // The first request's head, to know its fault before contacting the server.
    let mut head = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(());
        }
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let fault = {
        let range = ranges_in(&head)
            .into_iter()
            .next()
            .unwrap_or_else(|| "-".into());
        plan.lock().unwrap().next(range)
    };
    if fault == Fault::Status500 {
        return answer_500(client, &stats).await;
    }
    // Closing then sends RST instead of FIN: what a dropped mobile link looks like. Set for
    // every connection, since any later request on it may be cut.
    client.set_zero_linger()?;
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&head).await?;
    let armed = Arc::new(Mutex::new(Armed { fault, base: 0 }));
    let sent = Arc::new(AtomicU64::new(0));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Client → server: forward, and arm the next fault at each new request head (HTTP/1.1
    // clients send the next request only after reading the whole previous answer).
    let (a, sn, p) = (armed.clone(), sent.clone(), plan.clone());
    let mut tail = head[head.len().saturating_sub(3)..].to_vec();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut scan = std::mem::take(&mut tail);
            scan.extend_from_slice(&buf[..n]);
            let heads = scan.windows(4).filter(|w| *w == b"\r\n\r\n").count();
            tail = scan[scan.len().saturating_sub(3)..].to_vec();
            let mut close = false;
            let mut ranges = ranges_in(&buf[..n]).into_iter();
            for _ in 0..heads {
                let mut plan = p.lock().unwrap();
                let r = ranges.next().unwrap_or_else(|| "?".into());
                let mut fault = plan.next(r);
                if fault == Fault::Status500 {
                    // Only a fresh connection can answer 500 without the server: close
                    // this one unanswered; the client's retry gets the 500.
                    plan.handed_out.pop();
                    plan.ranges.pop();
                    plan.queue.push_front(fault);
                    fault = Fault::Short { after: 0 };
                    close = true;
                }
                *a.lock().unwrap() = Armed {
                    fault,
                    base: sn.load(Ordering::SeqCst),
                };
            }
            if close {
                break;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    });
    let result = forward_down(&mut sr, &mut cw, &armed, &sent, &stats).await;
    // Dropping both halves closes the socket (with RST after a cut).
    up.abort();
    let _ = up.await;
    result
}

async fn answer_500(mut client: TcpStream, stats: &Stats) -> std::io::Result<()> {
    let answer: &[u8] =
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    client.write_all(answer).await?;
    stats
        .to_client
        .fetch_add(answer.len() as u64, Ordering::SeqCst);
    client.shutdown().await
}

/// Server → client with the armed fault applied; returns when either side is done or
/// the fault ended the connection.
async fn forward_down(
    sr: &mut tokio::net::tcp::OwnedReadHalf,
    cw: &mut tokio::net::tcp::OwnedWriteHalf,
    armed: &Mutex<Armed>,
    sent: &AtomicU64,
    stats: &Stats,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = sr.read(&mut buf).await?;
        if n == 0 {
            let _ = cw.shutdown().await;
            return Ok(());
        }
        let done = sent.load(Ordering::SeqCst);
        let (fault, base) = {
            let a = armed.lock().unwrap();
            (a.fault, a.base)
        };
        let at = done - base; // offset of this chunk in the current answer
        let chunk = &mut buf[..n];
        if let Fault::Flip { at: flip } = fault {
            if flip >= at && flip < at + n as u64 {
                chunk[(flip - at) as usize] ^= 0xFF;
                stats.flipped.fetch_add(1, Ordering::SeqCst);
            }
        }
        let limit = match fault {
            Fault::Cut { after } | Fault::Short { after } | Fault::Stall { after, .. } => {
                Some(after)
            }
            _ => None,
        };
        if let Some(after) = limit {
            let room = after.saturating_sub(at) as usize;
            if room < chunk.len() {
                cw.write_all(&chunk[..room]).await?;
                stats.to_client.fetch_add(room as u64, Ordering::SeqCst);
                match fault {
                    Fault::Short { .. } => {
                        let _ = cw.shutdown().await;
                    }
                    Fault::Stall { hold, .. } => tokio::time::sleep(hold).await,
                    _ => {}
                }
                return Ok(());
            }
        }
        cw.write_all(chunk).await?;
        sent.fetch_add(n as u64, Ordering::SeqCst);
        stats.to_client.fetch_add(n as u64, Ordering::SeqCst);
    }
}
