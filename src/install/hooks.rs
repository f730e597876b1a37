//! Install hooks: the integrator's programs, named in `[hooks]` of the root-owned
//! `system.toml` (never taken from a bundle), run at three points of an install:
//!
//! - `pre-install`: after the signature, compatible and version checks, before any slot
//!   is touched. A non-zero exit refuses the install; nothing has been written.
//! - `slot-post-install`: once per written slot, after its read-back. For the classes in
//!   `mount-classes` the slot's file system is mounted read-write at
//!   `<mount-prefix>/<slot>` (a loop mount for a slot file) and always unmounted after.
//! - `post-install`: after every slot hook, before the activation.
//!
//! A failing, killed or timed-out hook after writing began fails the install and the new
//! slot stays out of the boot selection: it is never activated. A resumed install runs
//! the hooks again, so they must tolerate a second run.
//!
//! Before a hook runs its file must be a regular, executable file owned by root and not
//! writable by group or others. It runs in `/` with a clean environment (RAUC's variable
//! names where RAUC has one, [`Env`]) in its own process group, which is killed when the
//! hook exits, times out (`[hooks] timeout`) or the install is cancelled. Its output
//! lines go to the log, bounded; the exit status and the last line it wrote to stderr go
//! into the error.

use super::InstallError;
use crate::config::{Config, SlotConfig};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The one `PATH` a hook sees.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest output line logged (and quoted in an error); the rest of the line is dropped.
const MAX_LINE: usize = 1024;

/// How long the output of an exited hook is still read (a child it left behind in
/// another session may hold the pipes open).
const DRAIN: Duration = Duration::from_secs(2);

/// Which hook runs; its `[hooks]` key and the value of `ROTA_HOOK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PreInstall,
    SlotPostInstall,
    PostInstall,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::PreInstall => "pre-install",
            Hook::SlotPostInstall => "slot-post-install",
            Hook::PostInstall => "post-install",
        }
    }

    /// The program configured for this hook, if any.
    pub fn program(self, config: &Config) -> Option<&Path> {
        let h = &config.hooks;
        match self {
            Hook::PreInstall => h.pre_install.as_deref(),
            Hook::SlotPostInstall => h.slot_post_install.as_deref(),
            Hook::PostInstall => h.post_install.as_deref(),
        }
    }

    /// Before writing began a failing hook refuses the install; after, it fails it.
    fn error(self, message: String) -> InstallError {
        match self {
            Hook::PreInstall => InstallError::Refused(message),
            _ => InstallError::Failed(message),
        }
    }
}

/// What one install tells its hooks.
pub struct Install<'a> {
    pub config: &'a Config,
    pub transaction: &'a str,
    pub compatible: &'a str,
    pub version: &'a str,
    /// The bootname of the running slot, if known.
    pub booted: Option<&'a str>,
    /// The slots this install writes.
    pub targets: Vec<&'a SlotConfig>,
}

/// One image written to one slot, for `slot-post-install`.
pub struct SlotImage<'a> {
    pub slot: &'a SlotConfig,
    pub image: &'a crate::bundle::ImageEntry,
}

/// The environment of a hook: exactly these variables.
pub type Env = BTreeMap<String, String>;

/// The variables every hook gets. RAUC's handler names: `RAUC_SYSTEM_*`,
/// `RAUC_CURRENT_BOOTNAME`, `RAUC_TRANSACTION_ID`, the manifest's `RAUC_MF_*`, the
/// numbered slot list `RAUC_SLOTS` / `RAUC_TARGET_SLOTS` / `RAUC_SLOT_<KEY>_<N>` (N from
/// 1 over all configured slots), and rota's `ROTA_HOOK`.
pub fn env(hook: Hook, install: &Install<'_>) -> Env {
    let config = install.config;
    let mut env = Env::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_owned(), v.to_owned());
    };
    set("PATH", PATH);
    set("ROTA_HOOK", hook.name());
    set("RAUC_SYSTEM_CONFIG", &config.path.to_string_lossy());
    set("RAUC_SYSTEM_COMPATIBLE", &config.system.compatible);
    set("RAUC_MF_COMPATIBLE", install.compatible);
    set("RAUC_MF_VERSION", install.version);
    set("RAUC_TRANSACTION_ID", install.transaction);
    if let Some(b) = install.booted {
        set("RAUC_CURRENT_BOOTNAME", b);
    }
    let slots = config.slots();
    let mut all = Vec::new();
    let mut targets = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        let n = i + 1;
        all.push(n.to_string());
        if install.targets.iter().any(|t| t.name == s.name) {
            targets.push(n.to_string());
        }
        set(&format!("RAUC_SLOT_NAME_{n}"), &s.name);
        set(&format!("RAUC_SLOT_CLASS_{n}"), &s.class);
        set(&format!("RAUC_SLOT_TYPE_{n}"), "raw");
        set(
            &format!("RAUC_SLOT_DEVICE_{n}"),
            &s.device.to_string_lossy(),
        );
        set(
            &format!("RAUC_SLOT_BOOTNAME_{n}"),
            s.bootname.as_deref().unwrap_or(""),
        );
        set(
            &format!("RAUC_SLOT_PARENT_{n}"),
            s.parent.as_deref().unwrap_or(""),
        );
    }
    set("RAUC_SLOTS", &all.join(" "));
    set("RAUC_TARGET_SLOTS", &targets.join(" "));
    env
}

/// [`env`] plus RAUC's slot hook variables for one written slot.
pub fn slot_env(install: &Install<'_>, target: &SlotImage<'_>, mount: Option<&Path>) -> Env {
    let mut env = env(Hook::SlotPostInstall, install);
    let s = target.slot;
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_owned(), v.to_owned());
    };
    set("RAUC_SLOT_NAME", &s.name);
    set("RAUC_SLOT_CLASS", &s.class);
    set("RAUC_SLOT_TYPE", "raw");
    set("RAUC_SLOT_DEVICE", &s.device.to_string_lossy());
    set("RAUC_SLOT_BOOTNAME", s.bootname.as_deref().unwrap_or(""));
    set("RAUC_SLOT_PARENT", s.parent.as_deref().unwrap_or(""));
    if let Some(m) = mount {
        set("RAUC_SLOT_MOUNT_POINT", &m.to_string_lossy());
    }
    set("RAUC_IMAGE_NAME", &target.image.file);
    set("RAUC_IMAGE_CLASS", &s.class);
    set("RAUC_IMAGE_DIGEST", &target.image.sha256);
    set("RAUC_IMAGE_SIZE", &target.image.size.to_string());
    env
}

/// Refuses a hook program anyone but root could have changed: it must be a regular,
/// executable file owned by root and not writable by group or others.
pub fn check_program(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot use it: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.uid() != 0 {
        return Err(format!(
            "it is owned by uid {}, not root (chown root it)",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "it is writable by group or others (mode {mode:04o}; chmod go-w it)"
        ));
    }
    if mode & 0o100 == 0 {
        return Err(format!("it is not executable (mode {mode:04o})"));
    }
    Ok(())
}

/// Runs the hook `hook` (a no-op when it is not configured) with `env`.
pub fn run(
    hook: Hook,
    config: &Config,
    env: &Env,
    cancel: &AtomicBool,
) -> Result<(), InstallError> {
    let Some(program) = hook.program(config) else {
        return Ok(());
    };
    run_program(hook, program, env, config.hooks.timeout, cancel)
}

fn run_program(
    hook: Hook,
    program: &Path,
    env: &Env,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<(), InstallError> {
    let what = format!("{} hook {}", hook.name(), program.display());
    check_program(program).map_err(|m| hook.error(format!("{what} not run: {m}")))?;
    log::info!("running {what}");
    let mut child = Command::new(program)
        .env_clear()
        .envs(env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| hook.error(format!("{what} could not start: {e}")))?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let last_err = Arc::new(Mutex::new(String::new()));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    if let Some(out) = child.stdout.take() {
        let name = hook.name();
        let tx = done_tx.clone();
        std::thread::spawn(move || {
            for_each_line(out, |l| log::info!("{name} hook: {l}"));
            drop(tx);
        });
    }
    if let Some(err) = child.stderr.take() {
        let name = hook.name();
        let last = last_err.clone();
        let tx = done_tx.clone();
        std::thread::spawn(move || {
            for_each_line(err, |l| {
                log::warn!("{name} hook: {l}");
                if !l.trim().is_empty() {
                    if let Ok(mut g) = last.lock() {
                        *g = l.trim().to_owned();
                    }
                }
            });
            drop(tx);
        });
    }
    drop(done_tx);
    let kill_group = || {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    };
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => {
                kill_group();
                let _ = child.wait();
                return Err(hook.error(format!("{what}: waiting for it failed: {e}")));
            }
        }
        if cancel.load(Ordering::Relaxed) {
            kill_group();
            let _ = child.wait();
            log::warn!("{what} killed: the install was cancelled");
            return Err(InstallError::Cancelled);
        }
        if started.elapsed() >= timeout {
            kill_group();
            let _ = child.wait();
            drain(&done_rx);
            return Err(hook.error(with_stderr(
                format!(
                    "{what} timed out after {}",
                    humantime::format_duration(timeout)
                ),
                &last_err,
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    // Whatever it left running in its group goes with it.
    kill_group();
    drain(&done_rx);
    if status.success() {
        log::info!("{what} succeeded in {} ms", started.elapsed().as_millis());
        return Ok(());
    }
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    };
    let verb = match hook {
        Hook::PreInstall => "refused the install",
        _ => "failed",
    };
    Err(hook.error(with_stderr(format!("{what} {verb} ({how})"), &last_err)))
}

fn with_stderr(message: String, last: &Mutex<String>) -> String {
    match last.lock().map(|g| g.clone()) {
        Ok(l) if !l.is_empty() => format!("{message}: {l}"),
        _ => message,
    }
}

/// Waits until both output readers reached the end of their pipe, at most [`DRAIN`].
fn drain(done: &mpsc::Receiver<()>) {
    let deadline = Instant::now() + DRAIN;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match done.recv_timeout(left) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    log::warn!("hook output still open after it exited; no longer read");
}

/// Calls `f` with each line read from `r` (lossy UTF-8, at most [`MAX_LINE`] bytes kept
/// per line, control characters replaced), in constant memory whatever the input.
fn for_each_line(mut r: impl Read, mut f: impl FnMut(&str)) {
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut buf = [0u8; 4096];
    let mut emit = |line: &mut Vec<u8>| {
        let text: String = String::from_utf8_lossy(line)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        f(&text);
        line.clear();
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line);
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// A slot's file system mounted for its `slot-post-install` hook.
pub struct Mount {
    point: PathBuf,
    device: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Mounts `slot` read-write at `<prefix>/<slot name>`: a slot file through a loop
    /// device (released at unmount), a block device directly. A mount point left mounted
    /// by an earlier, interrupted run is unmounted first.
    pub fn slot(slot: &SlotConfig, prefix: &Path) -> Result<Mount, InstallError> {
        let point = prefix.join(&slot.name);
        let fail = |m: String| {
            InstallError::Failed(format!(
                "cannot mount slot {} ({}) at {} for the slot-post-install hook: {m}",
                slot.name,
                slot.device.display(),
                point.display()
            ))
        };
        std::fs::create_dir_all(&point).map_err(|e| fail(e.to_string()))?;
        if is_mount_point(&point) {
            log::warn!(
                "{} is still mounted (an interrupted install?): unmounting it",
                point.display()
            );
            umount(&point).map_err(fail)?;
        }
        let meta = std::fs::metadata(&slot.device).map_err(|e| fail(e.to_string()))?;
        let options = if meta.is_file() { "loop,rw" } else { "rw" };
        let out = Command::new("mount")
            .args(["-o", options, "--"])
            .arg(&slot.device)
            .arg(&point)
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("mount could not start: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&point);
            return Err(fail(last_line(&out.stderr, &out.status.to_string())));
        }
        log::info!(
            "mounted slot {} ({}) at {}",
            slot.name,
            slot.device.display(),
            point.display()
        );
        Ok(Mount {
            point,
            device: slot.device.clone(),
            mounted: true,
        })
    }

    pub fn point(&self) -> &Path {
        &self.point
    }

    /// Unmounts, flushes the slot to its storage and removes the mount point.
    pub fn unmount(mut self) -> Result<(), InstallError> {
        self.mounted = false;
        umount(&self.point).map_err(|m| {
            InstallError::Failed(format!(
                "cannot unmount {} after the slot-post-install hook: {m}",
                self.point.display()
            ))
        })?;
        let _ = std::fs::remove_dir(&self.point);
        // What the loop device or the file system wrote back is on its way to the slot
        // storage; it must be there before the slot can be activated.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.device)
            .and_then(|f| f.sync_all())
            .map_err(|e| {
                InstallError::Failed(format!(
                    "cannot flush {} after the slot-post-install hook: {e}",
                    self.device.display()
                ))
            })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(m) = umount(&self.point) {
                log::error!("cannot unmount {}: {m}", self.point.display());
            } else {
                let _ = std::fs::remove_dir(&self.point);
            }
        }
    }
}

fn umount(point: &Path) -> Result<(), String> {
    let out = Command::new("umount")
        .arg("--")
        .arg(point)
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("umount could not start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(last_line(&out.stderr, &out.status.to_string()))
    }
}

/// True when `dir` is the root of a mounted file system (another device than its parent).
fn is_mount_point(dir: &Path) -> bool {
    let (Ok(d), Some(Ok(p))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else {
        return false;
    };
    d.dev() != p.dev() || d.ino() == p.ino()
}

fn last_line(stderr: &[u8], fallback: &str) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().chars().take(MAX_LINE).collect())
        .unwrap_or_else(|| fallback.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn run_it(p: &Path, timeout: Duration) -> Result<(), InstallError> {
        let env = Env::from([("PATH".to_owned(), PATH.to_owned())]);
        run_program(Hook::PostInstall, p, &env, timeout, &AtomicBool::new(false))
    }

    #[test]
    fn lines_are_bounded_and_split() {
        let mut input = b"one\ntwo\x1b[0m\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.extend(b"\nlast");
        let mut lines = Vec::new();
        for_each_line(&input[..], |l| lines.push(l.to_owned()));
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two?[0m");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "last");
    }

    #[test]
    fn exit_status_and_last_stderr_line_make_the_error() {
        if !nix::unistd::geteuid().is_root() {
            return; // the program check wants root-owned files
        }
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "h",
            "echo out; echo first >&2; echo 'the last words' >&2; exit 3",
            0o755,
        );
        let err = run_it(&p, Duration::from_secs(20)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "post-install hook {} failed (exit status 3): the last words",
                p.display()
            )
        );
        let ok = script(dir.path(), "ok", "exit 0", 0o700);
        run_it(&ok, Duration::from_secs(20)).unwrap();
    }

    #[test]
    fn programs_others_could_change_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = script(d, "gw", "exit 0", 0o775);
        let err = check_program(&p).unwrap_err();
        assert!(
            err.contains("writable by group or others (mode 0775"),
            "{err}"
        );
        let p = script(d, "noexec", "exit 0", 0o644);
        assert!(check_program(&p).unwrap_err().contains("not executable"));
        let p = script(d, "nobody", "exit 0", 0o755);
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = check_program(&p).unwrap_err();
        assert!(err.contains("owned by uid 65534, not root"), "{err}");
        assert!(check_program(d).unwrap_err().contains("not a regular file"));
        let err = check_program(&d.join("missing")).unwrap_err();
        assert!(err.contains("cannot use it"), "{err}");
        // Refused before it runs: the error says so.
        let err = run_it(&d.join("gw"), Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("post-install hook") && err.contains("not run:"),
            "{err}"
        );
    }
}
