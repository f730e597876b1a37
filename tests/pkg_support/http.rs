//! A small HTTP/1.1 file server for the D-Bus tests, on 127.0.0.1: it serves one
//! directory with `Range` support, records every request head (so a test can see which
//! headers reached it), and can hold answers behind a gate (an install then stays
//! "installing" for as long as the test wants, with no timing involved). One connection
//! per request (`Connection: close`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct Shared {
    heads: Vec<String>,
    open: bool,
    stopped: bool,
}

pub struct FileServer {
    pub port: u16,
    root: PathBuf,
    shared: Arc<(Mutex<Shared>, Condvar)>,
}

impl FileServer {
    /// Serves `root`; the gate starts `open` or closed.
    pub fn start(root: &Path, open: bool) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new((
            Mutex::new(Shared {
                open,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let (s, dir) = (shared.clone(), root.to_owned());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if s.0.lock().unwrap_or_else(|e| e.into_inner()).stopped {
                    return;
                }
                let (s, dir) = (s.clone(), dir.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &dir, &s);
                });
            }
        });
        FileServer {
            port,
            root: root.to_owned(),
            shared,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Every request head received so far (request line and headers, lower-cased names).
    pub fn heads(&self) -> Vec<String> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .heads
            .clone()
    }

    /// How many requests have arrived (held ones count).
    pub fn requests(&self) -> usize {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .heads
            .len()
    }

    /// Waits until at least `n` requests have arrived (held ones count).
    pub fn wait_requests(&self, n: usize, secs: u64) {
        let (lock, cv) = &*self.shared;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (g, timeout) = cv
            .wait_timeout_while(guard, std::time::Duration::from_secs(secs), |s| {
                s.heads.len() < n
            })
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !timeout.timed_out(),
            "only {} requests reached {} within {secs} s",
            g.heads.len(),
            self.root.display()
        );
    }

    /// Lets held and later requests be answered.
    pub fn open(&self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).open = true;
        cv.notify_all();
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        {
            let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
            s.stopped = true;
            s.open = true;
        }
        cv.notify_all();
        // Wakes the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, dir: &Path, s: &(Mutex<Shared>, Condvar)) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    {
        let (lock, cv) = s;
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        g.heads.push(head.clone());
        cv.notify_all();
        while !g.open {
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if g.stopped {
            return Ok(());
        }
    }
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let mut out = conn;
    let data = match std::fs::read(dir.join(&path)) {
        Ok(d) if !path.is_empty() && !path.contains("..") => d,
        _ => {
            return out.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
        }
    };
    let range = head.lines().find_map(|l| l.strip_prefix("range: bytes="));
    let (start, end) = match range.and_then(|r| r.trim().split_once('-')) {
        Some((a, b)) => {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(data.len());
            (a.min(data.len()), b.min(data.len()))
        }
        None => (0, data.len()),
    };
    let status = if range.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{}\r\n",
            end.saturating_sub(1),
            data.len()
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    out.write_all(
        format!(
            "{status}content-length: {}\r\naccept-ranges: bytes\r\netag: \"fixed\"\r\nconnection: close\r\n\r\n",
            end - start
        )
        .as_bytes(),
    )?;
    out.write_all(&data[start..end])
}
