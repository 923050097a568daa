//! Image URLs for the background workers (`indexer::pg_vision_fetch_image`): the core's
//! fetcher (`pg_vision_core::fetch`, which has the rules and the threat model) under the
//! superuser's settings.

use std::time::Duration;

use pg_vision_core::fetch::{fetch, Allowlist, Policy};

use crate::sql_errors::OrRaise;
use crate::{guc, interrupt};

/// The bytes behind `url`, or an ERROR: 22023 for a URL that is malformed or not allowed,
/// F0000 for a malformed `pg_vision.url_allowlist`, 54000 over `max_image_bytes`, 22000 for a lasting HTTP failure (404, TLS), 58030 for
/// one that may pass (timeout, 503), which the workers retry.
pub fn fetch_image(url: &str) -> Vec<u8> {
    let allowlist = Allowlist::parse(&guc::url_allowlist()).or_raise();
    let mut policy = Policy::new(allowlist);
    policy.timeout = Duration::from_millis(guc::url_timeout_ms());
    interrupt::run(|opts| {
        policy.max_bytes = opts.max_bytes as usize;
        fetch(url, &policy, &opts.stop)
    })
    .or_raise()
}
