//! Turning pipeline steps and byte counts into [`Progress`] events: percent, bytes,
//! downloaded vs. reused, rate and ETA, throttled so a fast local copy does not flood
//! the bus.

use crate::model::Progress;
use std::time::{Duration, Instant};

/// At most this many byte-progress events per second.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Percent reserved for checks before and after the copy.
const COPY_START: u64 = 5;
const COPY_END: u64 = 90;

pub struct Reporter<'a> {
    emit: &'a mut dyn FnMut(Progress),
    current: Progress,
    total: u64,
    last_emit: Instant,
    started: Instant,
}

impl<'a> Reporter<'a> {
    pub fn new(emit: &'a mut dyn FnMut(Progress)) -> Self {
        let now = Instant::now();
        Self {
            emit,
            current: Progress::default(),
            total: 0,
            last_emit: now,
            started: now,
        }
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        self.current.bytes_total = total;
        self.started = Instant::now();
    }

    /// A new step: always reported.
    pub fn step(&mut self, depth: i32, message: &str) {
        self.current.message = message.to_owned();
        self.current.depth = depth;
        self.current.percent = self.percent();
        self.flush();
    }

    pub fn fetched(&mut self, bytes: u64) {
        self.current.bytes_downloaded += bytes;
        self.advance(bytes);
    }

    pub fn reused(&mut self, bytes: u64) {
        self.current.bytes_reused += bytes;
        self.advance(bytes);
    }

    /// Bytes that landed in the slot (`done`), and where they came from: `downloaded`
    /// bundle bytes (compressed), `reused` raw bytes the device had, `zero` raw bytes of
    /// zero runs.
    pub fn landed(&mut self, done: u64, downloaded: u64, reused: u64, zero: u64) {
        self.current.bytes_downloaded += downloaded;
        self.current.bytes_reused += reused;
        self.current.bytes_zero += zero;
        if done > 0 {
            self.advance(done);
        }
    }

    pub fn downloaded(&self) -> u64 {
        self.current.bytes_downloaded
    }

    pub fn reused_bytes(&self) -> u64 {
        self.current.bytes_reused
    }

    pub fn finish(&mut self, message: &str) {
        self.current.percent = 100;
        self.current.message = message.to_owned();
        self.current.depth = 1;
        self.current.eta_secs = 0;
        self.flush();
    }

    fn advance(&mut self, bytes: u64) {
        self.current.bytes_done += bytes;
        if self.last_emit.elapsed() >= MIN_INTERVAL {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let rate = self.current.bytes_done as f64 / secs;
            self.current.rate = rate as u64;
            let left = self.total.saturating_sub(self.current.bytes_done) as f64;
            self.current.eta_secs = if rate > 0.0 {
                (left / rate).ceil() as u64
            } else {
                0
            };
            self.current.percent = self.percent();
            self.flush();
        }
    }

    fn percent(&self) -> u8 {
        if self.total == 0 {
            return self.current.percent;
        }
        let span = COPY_END - COPY_START;
        let p = COPY_START + span * self.current.bytes_done.min(self.total) / self.total;
        p.max(self.current.percent as u64).min(99) as u8
    }

    fn flush(&mut self) {
        self.last_emit = Instant::now();
        (self.emit)(self.current.clone());
    }
}
