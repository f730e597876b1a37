//! Crash points for the power-cut campaign (`tests/powercut.rs`): with
//! `ROTA_FAILPOINT=<name>[:<n>]` in the environment, the process kills itself with SIGKILL
//! the n-th time (default the first) it reaches the point `name` — no destructor, no
//! flush, as close to pulling the plug as a process can get. `<name>:<n>:panic` panics
//! there instead (a bug in the install: see [`crate::panics`]). Without the variable
//! every point is one relaxed atomic load. The names are listed in [`POINTS`].
//!
//! Only with the cargo feature `failpoints` (the tests turn it on): in any other build
//! [`hit`] is an empty inline function and the variable is never read, so nobody can
//! arm a crash point on a device.

#[cfg(feature = "failpoints")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "failpoints")]
use std::sync::OnceLock;

/// Every crash point, in the order an install reaches them.
pub const POINTS: &[&str] = &[
    "install.after-journal",
    "install.after-disable",
    "copy.mid-chunk",
    "copy.after-write",
    "install.after-read-back",
    "install.after-record",
    "env.mid-write",
    "env.after-write",
    "install.after-activate",
    "state.before-rename",
];

#[cfg(feature = "failpoints")]
struct Armed {
    name: String,
    nth: u64,
    panic: bool,
    seen: AtomicU64,
}

#[cfg(feature = "failpoints")]
fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("ROTA_FAILPOINT").ok()?;
            let mut parts = spec.split(':');
            let name = parts.next().unwrap_or_default().to_owned();
            let nth = parts.next().and_then(|k| k.parse().ok()).unwrap_or(1);
            let panic = parts.next() == Some("panic");
            Some(Armed {
                name,
                nth: u64::max(nth, 1),
                panic,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Dies here if this point is armed and its count is reached.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    let Some(a) = armed() else { return };
    if a.name == name && a.seen.fetch_add(1, Ordering::SeqCst) + 1 == a.nth {
        if a.panic {
            panic!("failpoint {name} armed to panic");
        }
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Without the `failpoints` feature there is nothing to arm.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
