//! The per-backend model cache: a model is loaded at its first use in a connection and
//! kept until `pg_vision_unload()` or the end of the connection. A backend is single-
//! threaded, so a thread-local map is the whole synchronisation story.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use pg_vision_core::model::{Model, SessionOptions};
use pg_vision_core::Result;

use crate::guc;

struct Entry {
    model: Model,
    /// The model directory it was loaded from: a changed `pg_vision.model_dir` reloads it.
    dir: PathBuf,
    hits: u64,
}

thread_local! {
    static MODELS: RefCell<HashMap<String, Entry>> = RefCell::new(HashMap::new());
}

/// Runs `f` with the named model, loading it first if this backend has not.
pub fn with_model<T>(name: &str, f: impl FnOnce(&mut Model) -> Result<T>) -> Result<T> {
    let dir = guc::model_dir();
    MODELS.with(|models| {
        let mut models = models.borrow_mut();
        let stale = models.get(name).is_some_and(|e| e.dir != dir);
        if stale || !models.contains_key(name) {
            models.remove(name);
            let opts = SessionOptions { library: guc::onnxruntime_library(), intra_threads: guc::intra_op_threads() };
            let model = Model::load(&dir, name, &opts)?;
            models.insert(name.to_owned(), Entry { model, dir, hits: 0 });
        }
        let entry = models.get_mut(name).expect("inserted above");
        entry.hits += 1;
        f(&mut entry.model)
    })
}

/// Drops one model (or all with `None`); returns how many were dropped.
pub fn unload(name: Option<&str>) -> usize {
    MODELS.with(|models| {
        let mut models = models.borrow_mut();
        match name {
            Some(n) => models.remove(n).map_or(0, |_| 1),
            None => {
                let n = models.len();
                models.clear();
                n
            }
        }
    })
}

pub struct Loaded {
    pub name: String,
    pub file_bytes: u64,
    pub load_ms: f64,
    pub hits: u64,
}

pub fn loaded() -> Vec<Loaded> {
    MODELS.with(|models| {
        let mut v: Vec<Loaded> = models
            .borrow()
            .iter()
            .map(|(n, e)| Loaded { name: n.clone(), file_bytes: e.model.file_bytes, load_ms: e.model.load_time.as_secs_f64() * 1e3, hits: e.hits })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    })
}
