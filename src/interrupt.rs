//! PostgreSQL's interrupts (query cancel, statement_timeout, pg_terminate_backend,
//! transaction_timeout) and pg_vision's threads.
//!
//! A backend must never process an interrupt while threads of ours may still run: a FATAL
//! goes straight to proc_exit, and an ERROR frees the memory those threads read. So the
//! core never calls back into PostgreSQL. It polls `pending`, a plain read of PostgreSQL's
//! interrupt flags that is safe from any thread, stops, joins its threads and returns
//! `Kind::Interrupted`. Only then does `run` let PostgreSQL process the interrupt, on the
//! backend's own thread.

use pg_vision_core::decode::Options;
use pg_vision_core::error::never;
use pg_vision_core::{Kind, Result};
use pgrx::pg_sys;

use crate::guc;

/// Whether PostgreSQL has an interrupt that it would process now: the signal handlers
/// set `InterruptPending`; while interrupts are held off, `ProcessInterrupts` would not
/// act on it, so neither do we.
pub fn pending() -> bool {
    // SAFETY: plain reads of process-global integers that signal handlers and the backend
    // thread write; a stale value only delays the stop by one poll.
    unsafe {
        std::ptr::read_volatile(std::ptr::addr_of!(pg_sys::InterruptPending)) != 0
            && std::ptr::read_volatile(std::ptr::addr_of!(pg_sys::InterruptHoldoffCount)) == 0
            && std::ptr::read_volatile(std::ptr::addr_of!(pg_sys::QueryCancelHoldoffCount)) == 0
            && std::ptr::read_volatile(std::ptr::addr_of!(pg_sys::CritSectionCount)) == 0
    }
}

/// Interrupts in a row after which `run` finishes the work without stopping again (each
/// was one that PostgreSQL handled without raising, such as a memory-context dump).
const RETRIES: usize = 3;

/// Runs `work` with the session's decoding options, whose `stop` is `pending`. When the
/// work stops for an interrupt, PostgreSQL processes it here (a cancel raises its ERROR,
/// a termination exits); if it was an interrupt that raises nothing, the work runs again.
pub fn run<T>(mut work: impl FnMut(&Options) -> Result<T>) -> Result<T> {
    let mut opts = guc::decode_options();
    for attempt in 1.. {
        match work(&opts) {
            Err(e) if e.kind == Kind::Interrupted => {
                pgrx::check_for_interrupts!();
                if attempt >= RETRIES {
                    opts.stop = never;
                }
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}
