//! This backend's memo of recent embeddings (`pg_vision_core::memo`): `embed_image` and
//! `embed_text` look their input up before running a model, so a generic plan that
//! evaluates the call once per row, or a query that writes it twice, embeds once. It lasts
//! one transaction (`clear`): enough for every evaluation of one statement, and nothing
//! survives into the next client of a pooled connection.
//!
//! The key covers everything that changes the result: the model's tower as loaded (its
//! directory, the identity of its manifest and ONNX files, its threads: `cache::identity`,
//! which reloads a model whose files changed) and, for images, the decoding settings. A
//! changed model or setting therefore never finds an old entry. Bounded by
//! `pg_vision.memo_entries` and `pg_vision.memo_memory`; `pg_vision_memo()` shows it.

use std::cell::RefCell;

use pg_vision_core::manifest::Tower;
use pg_vision_core::memo::Memo;
use pg_vision_core::Result;
use pgrx::prelude::*;

use crate::{cache, guc};

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::default());
}

/// The settings that change what an image embeds to (or whether it embeds at all).
fn image_settings() -> String {
    let o = guc::decode_options();
    format!(
        "max_pixels={} max_bytes={} dct_scaling={} accept_damaged={}",
        o.max_pixels, o.max_bytes, o.jpeg_dct_scaling, o.accept_damaged
    )
}

/// The vector `compute` gives for `input` with the named model's `tower`: from the memo
/// when this backend computed it recently under the same model files and settings, else
/// computed and remembered. Errors are not remembered.
pub fn remembered(
    tower: Tower,
    model: &str,
    input: &[u8],
    compute: impl FnOnce() -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let limits = guc::memo_limits();
    if limits.entries == 0 {
        MEMO.with(|m| m.borrow_mut().clear());
        return compute();
    }
    let settings = match tower {
        Tower::Image => image_settings(),
        Tower::Text => String::new(),
    };
    let context = format!("{}|{settings}", cache::identity(tower, model)?);
    let key = MEMO.with(|m| m.borrow_mut().key(&context, input, limits));
    if let Some(v) = MEMO.with(|m| m.borrow_mut().get(&key, limits)) {
        return Ok(v);
    }
    let v = compute()?;
    MEMO.with(|m| m.borrow_mut().put(model, key, v.clone(), limits));
    Ok(v)
}

/// Empties the memo (entries and the input copy; the counters stay): called at the end of
/// every transaction (`idle.rs`), so a pooled connection passes nothing on to the next
/// client, not even the timing of a hit, and an idle connection holds no memo memory.
pub fn clear() {
    MEMO.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.clear()
        }
    })
}

/// Drops a model's entries (when it is unloaded).
pub fn forget(model: &str) {
    // try_borrow: also called when models are dropped at transaction end.
    MEMO.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.forget(model)
        }
    })
}

/// This connection's memo: entries and the bytes they hold, the copy of the last input
/// (see `pg_vision_core::memo`), the bounds, hits and misses since the connection
/// started, and entries evicted to stay within the bounds.
// pgrx reads the SQL result columns from this signature, so they cannot move into a type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn pg_vision_memo() -> TableIterator<
    'static,
    (
        name!(entries, i64),
        name!(bytes, i64),
        name!(last_input_bytes, i64),
        name!(max_entries, i64),
        name!(max_bytes, i64),
        name!(hits, i64),
        name!(misses, i64),
        name!(evictions, i64),
    ),
> {
    let s = MEMO.with(|m| m.borrow().stats());
    let l = guc::memo_limits();
    TableIterator::once((
        s.entries as i64,
        s.bytes as i64,
        s.last_input_bytes as i64,
        l.entries as i64,
        l.bytes as i64,
        s.hits as i64,
        s.misses as i64,
        s.evictions as i64,
    ))
}
