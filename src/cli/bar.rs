//! The install progress line drawn on a terminal: `[=====>    ]  42% message`, redrawn in
//! place at most ten times a second and cut to the terminal's width. (Hand-written: the
//! one line rota needs does not justify a progress-bar crate in a 5 MiB binary budget.)

use std::io::Write;
use std::time::{Duration, Instant};

const WIDTH: usize = 30;
const REDRAW: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Bar {
    percent: u32,
    message: String,
    drawn: Option<Instant>,
}

impl Bar {
    /// Sets the position (0–100) and message; redraws if the last draw is old enough.
    pub fn set(&mut self, percent: u32, message: String) {
        let changed_percent = percent != self.percent;
        self.percent = percent.min(100);
        self.message = message;
        let due = self.drawn.is_none_or(|t| t.elapsed() >= REDRAW);
        if due || (changed_percent && self.percent == 100) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        let line = render(self.percent, &self.message, columns());
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
        self.drawn = Some(Instant::now());
    }

    /// Removes the line (the caller prints the outcome).
    pub fn clear(&mut self) {
        if self.drawn.is_some() {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }

    /// Leaves the line as it is and moves to the next one.
    pub fn abandon(&mut self) {
        if self.drawn.is_some() {
            println!();
        }
    }
}

/// One line: the bar, the percentage and as much of the message as fits in `columns`.
pub fn render(percent: u32, message: &str, columns: usize) -> String {
    let percent = percent.min(100);
    let filled = (percent as usize * WIDTH) / 100;
    let mut bar = "=".repeat(filled);
    if filled < WIDTH {
        bar.push('>');
        bar.push_str(&" ".repeat(WIDTH - filled - 1));
    }
    let line = format!("[{bar}] {percent:>3}% {message}");
    line.chars().take(columns.max(WIDTH + 7)).collect()
}

/// The terminal's width, 80 when it cannot be read.
fn columns() -> usize {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let ok = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col).saturating_sub(1)
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn bar_fills_with_the_percentage_and_fits_the_width() {
        assert_eq!(render(0, "x", 80), format!("[>{}]   0% x", " ".repeat(29)));
        assert_eq!(
            render(50, "half", 80),
            format!("[{}>{}]  50% half", "=".repeat(15), " ".repeat(14))
        );
        assert_eq!(
            render(100, "done", 80),
            format!("[{}] 100% done", "=".repeat(30))
        );
        assert_eq!(render(250, "", 80), format!("[{}] 100% ", "=".repeat(30)));
        let long = "m".repeat(200);
        assert_eq!(render(10, &long, 60).chars().count(), 60);
    }
}
