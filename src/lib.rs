//! pg_vision: image-embedding models inside PostgreSQL.
//!
//! This crate is the thin SQL layer; the work happens in `pg_vision_core` (`core/`).
//! - `guc.rs`: every setting
//! - `interrupt.rs`: query cancel and termination, with worker threads running
//! - `vector.rs`: pgvector `vector` datums
//! - `sql_errors.rs`: core errors to SQLSTATEs, their facts to SQL wording (settings, functions)
//! - `cache.rs`: the per-backend model cache, loading within the memory budget
//! - `memo.rs`: the per-backend memo of recent embeddings, pg_vision_memo
//! - `idle.rs`: giving models back after `pg_vision.model_idle_timeout`, or when asked
//! - `budget.rs`: the memory budget's table (shared memory, or per backend)
//! - `memory_views.rs`: pg_vision_memory and pg_vision_memory_summary
//! - `warmup.rs`: pg_vision_warmup and pg_vision.preload_models
//! - `embed.rs`: the embedding functions and the model listings
//! - `images.rs`: image_info, image_checksum, image_from_base64
//! - `indexer.rs`: the background workers of asynchronous indexing, and their state
//! - `../sql/trigger.sql`, `../sql/backfill.sql`: the indexing trigger and the backfill procedure
//! - `../sql/indexing.sql`: the queue of asynchronous indexing, the workers' batch, the status view
//! - `../sql/privileges.sql`: what PUBLIC may call, what needs a grant

use pgrx::prelude::*;

mod budget;
mod cache;
mod embed;
mod fetch;
mod guc;
mod idle;
mod images;
mod indexer;
mod interrupt;
mod memo;
mod memory_views;
mod sql_errors;
mod vector;
mod warmup;

pgrx::pg_module_magic!();

extension_sql!(
    r#"
COMMENT ON EXTENSION pg_vision IS 'image-embedding models (ONNX) inside PostgreSQL, returning pgvector vectors';
"#,
    name = "comment",
    bootstrap
);

// The trigger and the backfill are SQL over the functions above: plain PL/pgSQL is the
// clearest way to say "for each target column, embed, handle the failure policy".
extension_sql_file!(
    "../sql/trigger.sql",
    name = "trigger",
    requires = [embed::embed_image, "image_checksum", embed::pg_vision_models]
);
extension_sql_file!("../sql/backfill.sql", name = "backfill", requires = ["trigger", embed::embed_images]);
extension_sql_file!(
    "../sql/indexing.sql",
    name = "indexing",
    requires = ["trigger", embed::embed_images, indexer::pg_vision_indexer_batches, indexer::pg_vision_trigger_args]
);
// Grants and revokes, after every object exists.
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // ONNX Runtime and models are loaded in backends, never here in the postmaster (a
    // runtime inherited across fork() is unsafe): only settings, the shared table, hooks.
    guc::register();
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        budget::init_shared();
        indexer::init_shared();
    }
    warmup::install();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
