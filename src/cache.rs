//! The per-backend model cache: a model (image tower or text tower) is loaded at its
//! first use in a connection and kept until `pg_vision_unload()` or the end of the
//! connection. A backend is single-threaded, so thread-local maps are the whole
//! synchronisation story.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pg_vision_core::manifest::Manifest;
use pg_vision_core::model::{Model, SessionOptions};
use pg_vision_core::text::{self, TextModel};
use pg_vision_core::Result;

use crate::guc;

/// What the cache needs to know of a loaded model.
pub trait Cached: Sized {
    const KIND: &'static str;
    fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<Self>;
    fn file_bytes(&self) -> u64;
    fn load_time(&self) -> Duration;
}

impl Cached for Model {
    const KIND: &'static str = "image";
    fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<Self> {
        Model::load(dir, name, opts)
    }
    fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
    fn load_time(&self) -> Duration {
        self.load_time
    }
}

impl Cached for TextModel {
    const KIND: &'static str = "text";
    fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<Self> {
        let m = Manifest::load(dir, name)?;
        let t = m.text.clone().ok_or_else(|| text::no_text_tower(name))?;
        TextModel::load(dir, name, &m.fetch_hint, t, opts)
    }
    fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
    fn load_time(&self) -> Duration {
        self.load_time
    }
}

struct Entry<M> {
    model: M,
    /// The model directory it was loaded from: a changed `pg_vision.model_dir` reloads it.
    dir: PathBuf,
    hits: u64,
}

type Map<M> = RefCell<HashMap<String, Entry<M>>>;

thread_local! {
    static IMAGE: Map<Model> = RefCell::new(HashMap::new());
    static TEXT: Map<TextModel> = RefCell::new(HashMap::new());
}

fn with<M: Cached, T>(map: &'static std::thread::LocalKey<Map<M>>, name: &str, f: impl FnOnce(&mut M) -> Result<T>) -> Result<T> {
    let dir = guc::model_dir();
    map.with(|models| {
        let mut models = models.borrow_mut();
        if models.get(name).is_some_and(|e| e.dir != dir) {
            models.remove(name);
        }
        if !models.contains_key(name) {
            let opts = SessionOptions { library: guc::onnxruntime_library(), intra_threads: guc::intra_op_threads() };
            let model = M::load(&dir, name, &opts)?;
            models.insert(name.to_owned(), Entry { model, dir, hits: 0 });
        }
        let entry = models.get_mut(name).expect("inserted above");
        entry.hits += 1;
        f(&mut entry.model)
    })
}

/// Runs `f` with the named image model, loading it first if this backend has not.
pub fn with_model<T>(name: &str, f: impl FnOnce(&mut Model) -> Result<T>) -> Result<T> {
    with(&IMAGE, name, f)
}

/// Runs `f` with the named model's text tower, loading it first if needed.
pub fn with_text_model<T>(name: &str, f: impl FnOnce(&mut TextModel) -> Result<T>) -> Result<T> {
    with(&TEXT, name, f)
}

/// Drops one model's towers (or everything with `None`); returns how many were dropped.
pub fn unload(name: Option<&str>) -> usize {
    fn drop_from<M>(map: &'static std::thread::LocalKey<Map<M>>, name: Option<&str>) -> usize {
        map.with(|models| {
            let mut models = models.borrow_mut();
            match name {
                Some(n) => models.remove(n).map_or(0, |_| 1),
                None => models.drain().count(),
            }
        })
    }
    drop_from(&IMAGE, name) + drop_from(&TEXT, name)
}

pub struct Loaded {
    pub name: String,
    pub kind: &'static str,
    pub file_bytes: u64,
    pub load_ms: f64,
    pub hits: u64,
}

fn list<M: Cached>(map: &'static std::thread::LocalKey<Map<M>>, out: &mut Vec<Loaded>) {
    map.with(|models| {
        out.extend(models.borrow().iter().map(|(n, e)| Loaded {
            name: n.clone(),
            kind: M::KIND,
            file_bytes: e.model.file_bytes(),
            load_ms: e.model.load_time().as_secs_f64() * 1e3,
            hits: e.hits,
        }))
    })
}

pub fn loaded() -> Vec<Loaded> {
    let mut v = Vec::new();
    list(&IMAGE, &mut v);
    list(&TEXT, &mut v);
    v.sort_by(|a, b| (&a.name, a.kind).cmp(&(&b.name, b.kind)));
    v
}
