//! Image URLs for the background workers (`indexer::pg_vision_fetch_image`): the core's
//! fetcher (`pg_vision_core::fetch`, which has the rules and the threat model) under the
//! superuser's settings.

use std::time::Duration;

use pg_vision_core::fetch::{fetch, Allowlist, Policy};

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::sql_errors::OrRaise;
use crate::{guc, interrupt};

/// The bytes behind `url`, or an ERROR: 22023 for a URL that is malformed or not allowed,
/// 54000 over `max_image_bytes`, 22000 for a lasting HTTP failure (404, TLS), 58030 for
/// one that may pass (timeout, 503), which the workers retry.
pub fn fetch_image(url: &str) -> Vec<u8> {
    // A malformed allowlist is the configuration's fault, not the row's: F0000, which the
    // workers retry (with backoff) until a superuser fixes it.
    let allowlist = Allowlist::parse(&guc::url_allowlist()).unwrap_or_else(|e| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("pg_vision.url_allowlist: {}", e.message),
            "pg_vision",
        )
        .set_hint("fix pg_vision.url_allowlist (postgresql.conf or ALTER SYSTEM), then SELECT pg_reload_conf()")
        .report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    });
    let mut policy = Policy::new(allowlist);
    policy.timeout = Duration::from_millis(guc::url_timeout_ms());
    interrupt::run(|opts| {
        policy.max_bytes = opts.max_bytes as usize;
        fetch(url, &policy, &opts.stop)
    })
    .or_raise()
}
