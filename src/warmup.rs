//! Loading models before the first query needs them: `pg_vision_warmup(models)` now, and
//! `pg_vision.preload_models` when a session starts.
//!
//! Session start, two cases:
//! - With `shared_preload_libraries`, `_PG_init` runs once, in the postmaster, where ONNX
//!   Runtime must never be touched. It installs a `ClientAuthentication_hook`, which runs
//!   in each new client backend right after authentication succeeds and loads the models
//!   there, so the session's first query finds them loaded. Settings there come from
//!   postgresql.conf (ALTER ROLE/DATABASE settings are applied later), which is why
//!   preload_models is a SIGHUP setting. Messages below ERROR never reach the client
//!   during authentication, so a model that cannot be loaded is logged then and reported
//!   to the client as a WARNING when it parses its first statement
//!   (`post_parse_analyze_hook`).
//! - Without it, list pg_vision in `session_preload_libraries`: `_PG_init` then runs in
//!   each new backend, after authentication, and loads the models itself.
//!
//! Either way a model that cannot be loaded (missing file, corrupt ONNX, over the budget,
//! even a panic) is a WARNING that names it: never an error, never a refused connection.

use std::cell::RefCell;
use std::ffi::c_int;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::cache;
use crate::guc;
use crate::sql_errors::{in_sql_terms, OrRaise};

/// Loads every tower of the given models in this connection now; returns what is loaded,
/// its measured memory and its load time (`loaded_now` false: it already was).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn pg_vision_warmup(
    models: Vec<String>,
) -> TableIterator<
    'static,
    (name!(model, String), name!(tower, String), name!(bytes, i64), name!(load_ms, f64), name!(loaded_now, bool)),
> {
    let mut rows = Vec::new();
    for name in models {
        for w in cache::warm(&name).or_raise() {
            rows.push((name.clone(), w.tower.as_str().to_owned(), w.bytes as i64, w.load_ms, w.loaded_now));
        }
    }
    TableIterator::new(rows)
}

/// Loads `pg_vision.preload_models` and returns a message for each model that could not
/// be loaded; any failure, error or panic, ends up there.
fn preload() -> Vec<String> {
    let names = match guc::preload_models() {
        Ok(names) => names,
        Err(malformed) => return vec![malformed],
    };
    let mut failures = Vec::new();
    for name in names {
        let outcome = PgTryBuilder::new(|| cache::warm(&name).map_err(|e| in_sql_terms(e).to_string()))
            .catch_others(|caught| {
                Err(match caught {
                    CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_owned(),
                    CaughtError::RustPanic { ereport, .. } => ereport.message().to_owned(),
                })
            })
            .execute();
        match outcome {
            Ok(towers) => {
                for w in towers.iter().filter(|w| w.loaded_now) {
                    pgrx::debug1!(
                        "pg_vision: preloaded model \"{name}\" ({} tower) in {:.0} ms",
                        w.tower.as_str(),
                        w.load_ms
                    );
                }
            }
            Err(e) => failures.push(format!("pg_vision.preload_models: cannot load model \"{name}\": {e}")),
        }
    }
    failures
}

/// Preloads now and warns at once (a session that is already running).
pub fn preload_session() {
    for message in preload() {
        pgrx::warning!("{message}");
    }
}

/// Whether this process is a regular client backend (not a parallel or background worker).
fn is_client_backend() -> bool {
    // SAFETY: process-global variables set at process start.
    unsafe { pg_sys::MyBackendType == pg_sys::BackendType::B_BACKEND && pg_sys::ParallelWorkerNumber < 0 }
}

type ClientAuthenticationHook = Option<unsafe extern "C-unwind" fn(*mut pg_sys::Port, c_int)>;

extern "C-unwind" {
    // libpq/auth.h; not in pgrx's bindings.
    static mut ClientAuthentication_hook: ClientAuthenticationHook;
}

static mut PREV_CLIENT_AUTHENTICATION_HOOK: ClientAuthenticationHook = None;
static mut PREV_POST_PARSE_ANALYZE_HOOK: pg_sys::post_parse_analyze_hook_type = None;

thread_local! {
    /// Preload failures at authentication, for the client's first statement.
    static UNREPORTED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_client_authentication(port: *mut pg_sys::Port, status: c_int) {
    // SAFETY: the previous hook, called as PostgreSQL would have.
    unsafe {
        if let Some(prev) = PREV_CLIENT_AUTHENTICATION_HOOK {
            prev(port, status);
        }
    }
    if status == pg_sys::STATUS_OK as c_int && is_client_backend() {
        let failures = preload();
        for message in &failures {
            pgrx::log!("{message}");
        }
        UNREPORTED.with(|u| *u.borrow_mut() = failures);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_post_parse_analyze(
    pstate: *mut pg_sys::ParseState,
    query: *mut pg_sys::Query,
    jstate: *mut pg_sys::JumbleState,
) {
    // SAFETY: the previous hook, called as PostgreSQL would have.
    unsafe {
        if let Some(prev) = PREV_POST_PARSE_ANALYZE_HOOK {
            prev(pstate, query, jstate);
        }
    }
    let unreported = UNREPORTED.with(|u| std::mem::take(&mut *u.borrow_mut()));
    for message in unreported {
        pgrx::warning!("{message}");
    }
}

/// Called from `_PG_init`: in the postmaster (shared_preload_libraries) hook session start;
/// in a backend, preload now.
pub fn install() {
    // SAFETY: _PG_init runs single-threaded; hooks are chained as PostgreSQL expects.
    unsafe {
        if pg_sys::process_shared_preload_libraries_in_progress {
            PREV_CLIENT_AUTHENTICATION_HOOK = ClientAuthentication_hook;
            ClientAuthentication_hook = Some(on_client_authentication);
            PREV_POST_PARSE_ANALYZE_HOOK = pg_sys::post_parse_analyze_hook;
            pg_sys::post_parse_analyze_hook = Some(on_post_parse_analyze);
        } else if pg_sys::IsUnderPostmaster && is_client_backend() {
            preload_session();
        }
    }
}
