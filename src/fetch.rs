//! Image URLs for the background workers (`indexer::pg_vision_fetch_image`): the core's
//! fetcher under the superuser's settings.

pub fn fetch_image(url: &str) -> Vec<u8> {
    let _ = (url, crate::guc::url_allowlist(), crate::guc::url_timeout_ms());
    pgrx::error!("pg_vision: fetching image URLs is not built yet")
}
