//! Crash points for the crash-safety tests: `crash_point!("render.after_rename")` kills the
//! process on the spot, as SIGKILL would (no destructor, no flush, no drain), when the
//! `FAILPOINTS` environment variable names that point with the action `return`
//! (`FAILPOINTS=render.after_rename=return`). Unset, each point costs one lookup in an empty
//! table. The points are listed in ARCHITECTURE.md.

/// Kills this process with SIGKILL. Never returns.
pub fn die(point: &str) -> ! {
    eprintln!("bender: crash point {point}: killing the process");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; this is only for the type checker.
    std::process::abort()
}

/// Kills the process here when `FAILPOINTS` names this point with `return`.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| { $crate::failpoint::die($name) })
    };
}
