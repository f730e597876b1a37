//! What a panic does: it is logged (to the journal when running as a service) and the
//! process aborts, in every build. The release profile compiles with `panic = "abort"`
//! (smaller, no unwinding tables); this hook makes debug and test builds behave the same,
//! so what the tests see is what a device does.
//!
//! Why abort is safe for an updater: every state file is written atomically and the
//! install journal is resumed when the service comes back (systemd restarts it), so a
//! panic costs a restart, never a half-written slot in the boot selection. A bug that
//! panics every time does not loop forever: an install resumed
//! `agent::recovery::MAX_RESUMES` times and dying each time is given up and reported as
//! failed.

/// Installs the hook. Call once, first thing in `main`.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        log::error!("internal error (panic) in thread {name}: {info}; aborting");
        default(info);
        std::process::abort();
    }));
}
