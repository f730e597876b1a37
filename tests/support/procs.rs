//! Stopping what a fixture started, all of it, and finding what is left: every helper that
//! spawns a process (nginx, dbus-daemon, `rota service`, simulators) stops it with
//! [`stop`], which waits for the process *and its descendants* (nginx's workers) to end.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// One process: its pid and its start time (a pid used again later is another process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    start: u64,
}

/// (parent pid, state, start time) from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(i32, char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((ppid, state, start))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        stat(pid).map(|(_, _, start)| Proc { pid, start })
    }

    /// Still running: the same process exists and is not a zombie.
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((_, state, start)) if start == self.start && state != 'Z' && state != 'X')
    }

    pub fn cmdline(&self) -> String {
        cmdline(self.pid)
    }
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// `pid` and all its descendants, as they are now.
pub fn tree(pid: i32) -> Vec<Proc> {
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| stat(p).map(|(pp, _, _)| (p, pp)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.into_iter().filter_map(Proc::of).collect()
}

/// Live processes whose command line or working directory is in or names `dir`:
/// (pid, command line).
pub fn mentioning(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    all_pids()
        .into_iter()
        .filter(|&p| Proc::of(p).is_some_and(|x| x.alive()))
        .filter_map(|p| {
            let cmd = cmdline(p);
            let cwd = std::fs::read_link(format!("/proc/{p}/cwd"))
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            (cmd.contains(&needle) || cwd.starts_with(&needle)).then_some((p, cmd))
        })
        .collect()
}

/// Waits up to `secs` until none of `procs` runs; the ones still running.
pub fn wait_gone(procs: &[Proc], within: Duration) -> Vec<Proc> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<Proc> = procs.iter().copied().filter(Proc::alive).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `child` and everything it started: `sig` to it, then waits up to `grace` for it
/// and its descendants (as they were when signalled) to exit; SIGKILL to whatever is
/// left after that. The child is reaped.
pub fn stop(child: &mut Child, sig: Signal, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let procs = tree(child.id() as i32);
    let _ = kill(Pid::from_raw(child.id() as i32), sig);
    let deadline = Instant::now() + grace;
    loop {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        let left = procs.iter().filter(|p| p.alive()).count();
        if exited && left == 0 {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in procs.iter().filter(|p| p.alive()) {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    let left = wait_gone(&procs, Duration::from_secs(10));
    if !left.is_empty() {
        // Not a panic: this runs in Drop, maybe while a failed test unwinds.
        eprintln!("still running after SIGKILL: {left:?}");
    }
}

/// [`stop`] with SIGTERM and 10 s of grace.
pub fn terminate(child: &mut Child) {
    stop(child, Signal::SIGTERM, Duration::from_secs(10));
}

/// SIGKILL to `child` (as a power cut stops it) and to its descendants at once.
pub fn kill_now(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let procs = tree(child.id() as i32);
    for p in procs.iter().rev() {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    let _ = child.wait();
    wait_gone(&procs, Duration::from_secs(10));
}
