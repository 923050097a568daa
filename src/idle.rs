//! Giving models back: after `pg_vision.model_idle_timeout` without a use, and when an
//! administrator asks (`pg_vision_release_models(pid)`). Both must work while the session
//! sits idle, waiting for its client, when no code of ours runs.
//!
//! How an idle backend is made to run our code: PostgreSQL processes a "sinval catchup"
//! interrupt while it waits for the client, by starting and committing an empty
//! transaction; our transaction callback runs at that commit and drops the models. The
//! idle timer (a PostgreSQL timeout, whose handler runs in signal context) raises that
//! interrupt in its own process the way PostgreSQL's signal handler does; another backend
//! raises it with `SendProcSignal(PROCSIG_CATCHUP_INTERRUPT)`, after setting the release
//! flag in the budget table. A busy backend drops its models at the end of its current
//! transaction. Nothing here raises an error at commit (that would be a PANIC).

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::prelude::*;

use crate::{budget, cache, guc, memo};

// utils/timeout.h, which pgrx does not bind (the indexer's batch timeouts use it too).
// USER_TIMEOUT is the first id extensions may register: it moved when PostgreSQL 17 added
// TRANSACTION_TIMEOUT. STATEMENT_TIMEOUT has not moved.
#[cfg(feature = "pg16")]
pub(crate) const USER_TIMEOUT: c_int = 12;
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub(crate) const USER_TIMEOUT: c_int = 13;
pub(crate) const STATEMENT_TIMEOUT: c_int = 3;

extern "C-unwind" {
    pub(crate) fn RegisterTimeout(id: c_int, handler: unsafe extern "C" fn()) -> c_int;
    pub(crate) fn enable_timeout_after(id: c_int, delay_ms: c_int);
    pub(crate) fn disable_timeout(id: c_int, keep_indicator: bool);
}

/// Set by the timer (signal context), read at the end of a transaction.
static IDLE_EXPIRED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The timeout id PostgreSQL gave us, once registered.
    static TIMER: Cell<Option<c_int>> = const { Cell::new(None) };
}

unsafe extern "C" fn on_idle_timer() {
    IDLE_EXPIRED.store(true, Ordering::Relaxed);
    // SAFETY: sets a sig_atomic_t flag and this process's latch, as PostgreSQL's own
    // SIGUSR1 handler does for this interrupt; safe in a signal handler.
    unsafe { pg_sys::HandleCatchupInterrupt() };
}

/// Called after every use of a model: the first time, registers the transaction callback
/// and the timer; then (re)starts the idle timer, when one is set.
pub fn used() {
    let id = TIMER.with(|t| match t.get() {
        Some(id) => id,
        None => {
            // SAFETY: registers a callback run at every transaction end, and a handler in
            // this backend's timeout table (a free user slot).
            let id = unsafe {
                pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
                RegisterTimeout(USER_TIMEOUT, on_idle_timer)
            };
            t.set(Some(id));
            id
        }
    });
    let ms = guc::model_idle_timeout_ms();
    if ms > 0 {
        // SAFETY: arms our registered timeout.
        unsafe { enable_timeout_after(id, ms) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::{XACT_EVENT_ABORT, XACT_EVENT_COMMIT, XACT_EVENT_PREPARE};
    if event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT && event != XACT_EVENT_PREPARE {
        return;
    }
    memo::clear();
    if event == XACT_EVENT_PREPARE {
        return;
    }
    let expired = IDLE_EXPIRED.swap(false, Ordering::Relaxed);
    // Cheap when nothing is held: this runs at the end of every transaction.
    let asked = std::panic::catch_unwind(|| budget::release_requested(&cache::slots())).unwrap_or(false);
    if !expired && !asked {
        return;
    }
    // Never unwind out of a commit: a panic here is logged and the models stay.
    let dropped = std::panic::catch_unwind(|| cache::unload(None)).unwrap_or(0);
    if dropped > 0 {
        let why =
            if asked { "an administrator asked (pg_vision_release_models)" } else { "pg_vision.model_idle_timeout" };
        pgrx::log!("pg_vision: released {dropped} model tower(s): {why}");
    }
}

/// Asks backend `pid` to release its models at its next interrupt check (at once when
/// idle, at the end of its transaction when busy). Who may: superusers, and members of
/// `pg_signal_backend` for backends that are not a superuser's (PostgreSQL's rule for
/// `pg_cancel_backend`).
#[pg_extern(volatile, strict, parallel_restricted)]
fn pg_vision_release_models(pid: i32) -> bool {
    // SAFETY: looks a backend up in the proc array; reads its role.
    let proc = unsafe { pg_sys::BackendPidGetProc(pid) };
    if proc.is_null() {
        return false;
    }
    let target_role = unsafe { (*proc).roleId };
    let me = unsafe { pg_sys::GetUserId() };
    let allowed = unsafe {
        pg_sys::superuser()
            || (!pg_sys::superuser_arg(target_role)
                && pg_sys::has_privs_of_role(me, pg_sys::Oid::from(pg_sys::ROLE_PG_SIGNAL_BACKEND)))
    };
    if !allowed {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to make backend {pid} release its models"),
            "pg_vision_release_models",
        )
        .set_detail(
            "Only superusers, and roles with the privileges of pg_signal_backend for backends of non-superusers, may.",
        )
        .report(PgLogLevel::ERROR);
    }
    if !budget::request_release(pid) {
        return false; // it holds no models
    }
    // SAFETY: the same signal PostgreSQL sends a backend that lags behind on cache
    // invalidations; harmless, and it wakes an idle backend.
    unsafe {
        pg_sys::SendProcSignal(pid, pg_sys::ProcSignalReason::PROCSIG_CATCHUP_INTERRUPT, pg_sys::INVALID_PROC_NUMBER)
            == 0
    }
}
