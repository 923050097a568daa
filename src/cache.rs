//! The per-backend model cache: a model (image tower or text tower) is loaded at its
//! first use in a connection and kept until it is evicted, `pg_vision_unload()`, or the
//! end of the connection. A backend is single-threaded, so thread-local maps are the whole
//! synchronisation story.
//!
//! Every load goes through the memory budget (`budget.rs`): reserve an estimate, load while
//! measuring the heap, correct the reservation to the measured size. When a reservation
//! does not fit, this backend's least recently used models are evicted first (it can only
//! free its own memory); when nothing is left to evict, the load fails with 53200.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::thread::LocalKey;
use std::time::Duration;

use pg_vision_core::manifest::Manifest;
use pg_vision_core::model::{Model, SessionOptions};
use pg_vision_core::text::{self, TextModel};
use pg_vision_core::{memory, runtime, Error, Kind, Result};

use crate::budget::{self, Shortfall, Tower};
use crate::guc;

/// What the cache needs to know of a loaded model.
pub trait Cached: Sized {
    const TOWER: Tower;
    fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<Self>;
    /// The ONNX file `load` will read (for the estimate made before loading).
    fn weights(dir: &Path, name: &str) -> Result<PathBuf>;
    fn file_bytes(&self) -> u64;
    fn load_time(&self) -> Duration;
}

impl Cached for Model {
    const TOWER: Tower = Tower::Image;
    fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<Self> {
        Model::load(dir, name, opts)
    }
    fn weights(dir: &Path, name: &str) -> Result<PathBuf> {
        Ok(Manifest::load(dir, name)?.onnx_path(dir))
    }
    fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
    fn load_time(&self) -> Duration {
        self.load_time
    }
}

impl Cached for TextModel {
    const TOWER: Tower = Tower::Text;
    fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<Self> {
        let m = Manifest::load(dir, name)?;
        let t = m.text.clone().ok_or_else(|| text::no_text_tower(name))?;
        TextModel::load(dir, name, &m.fetch_hint, t, opts)
    }
    fn weights(dir: &Path, name: &str) -> Result<PathBuf> {
        let m = Manifest::load(dir, name)?;
        let t = m.text.ok_or_else(|| text::no_text_tower(name))?;
        Ok(dir.join(t.onnx_file))
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
    /// Measured heap bytes held (`memory::measure` around the load).
    bytes: u64,
    /// Its row in the budget table.
    slot: usize,
    /// This backend's use counter at the last use: the smallest is evicted first.
    last_used: u64,
}

type Map<M> = RefCell<HashMap<String, Entry<M>>>;

thread_local! {
    static IMAGE: Map<Model> = RefCell::new(HashMap::new());
    static TEXT: Map<TextModel> = RefCell::new(HashMap::new());
    static CLOCK: Cell<u64> = const { Cell::new(0) };
}

fn tick() -> u64 {
    CLOCK.with(|c| {
        c.set(c.get() + 1);
        c.get()
    })
}

/// A budget row that is released unless the load it covers succeeds (also when the load
/// panics: the unwind drops it).
struct Reservation(Option<usize>);

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            budget::release(slot);
        }
    }
}

impl Reservation {
    fn slot(&self) -> usize {
        self.0.expect("held until kept")
    }
    fn keep(mut self) -> usize {
        self.0.take().expect("held until kept")
    }
}

/// Retries `attempt` after evicting this backend's least recently used model, until it
/// fits or nothing is left to evict. When even evicting all of this backend's models
/// could not make room, it fails at once and keeps them.
fn fitting<T>(
    name: &str,
    tower: Tower,
    bytes: u64,
    mut attempt: impl FnMut(u64) -> std::result::Result<T, Shortfall>,
) -> Result<T> {
    loop {
        let budget = guc::memory_budget_bytes();
        match attempt(budget) {
            Ok(v) => return Ok(v),
            Err(short) => {
                let hopeless = !short.full && short.used - short.mine + bytes > short.budget;
                if hopeless || !evict_lru() {
                    return Err(does_not_fit(name, tower, bytes, &short));
                }
            }
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

fn does_not_fit(name: &str, tower: Tower, bytes: u64, s: &Shortfall) -> Error {
    let held = if budget::is_shared() {
        format!("{} in use by {} backend(s)", mb(s.used), s.backends)
    } else {
        format!(
            "{} in use by this connection (per-connection budget: pg_vision is not in shared_preload_libraries)",
            mb(s.used)
        )
    };
    let what = if s.full {
        format!(
            "pg_vision: cannot load model \"{name}\" ({} tower, {}): the table of loaded models is full; {held}",
            tower.as_str(),
            mb(bytes)
        )
    } else {
        format!(
            "pg_vision: model \"{name}\" ({} tower, {}) does not fit in pg_vision.memory_budget ({}): {held}",
            tower.as_str(),
            mb(bytes),
            mb(s.budget)
        )
    };
    Error::new(Kind::OutOfMemory, what).with_hint(
        "raise pg_vision.memory_budget (ALTER SYSTEM SET pg_vision.memory_budget = '2GB'; SELECT pg_reload_conf();), \
         or free models in other sessions with pg_vision_unload(); SELECT * FROM pg_vision_memory shows who holds what",
    )
}

/// Drops this backend's least recently used model, image or text; false if it has none.
fn evict_lru() -> bool {
    fn oldest<M>(map: &'static LocalKey<Map<M>>) -> Option<(u64, String)> {
        map.with(|m| m.borrow().iter().map(|(n, e)| (e.last_used, n.clone())).min())
    }
    let image = oldest(&IMAGE);
    let text = oldest(&TEXT);
    let (tower, name) = match (image, text) {
        (Some(i), Some(t)) if t < i => (Tower::Text, t.1),
        (Some(i), _) => (Tower::Image, i.1),
        (None, Some(t)) => (Tower::Text, t.1),
        (None, None) => return false,
    };
    let bytes = match tower {
        Tower::Image => remove(&IMAGE, &name),
        Tower::Text => remove(&TEXT, &name),
    };
    budget::count_eviction();
    pgrx::log!(
        "pg_vision: evicted model \"{name}\" ({} tower, {}) to stay within pg_vision.memory_budget",
        tower.as_str(),
        mb(bytes.unwrap_or(0))
    );
    true
}

/// Drops a model and releases its budget row; returns the bytes it held.
fn remove<M>(map: &'static LocalKey<Map<M>>, name: &str) -> Option<u64> {
    let entry = map.with(|m| m.borrow_mut().remove(name))?;
    budget::release(entry.slot);
    let bytes = entry.bytes;
    drop(entry);
    memory::release_free_pages();
    Some(bytes)
}

/// Loads a model within the budget.
fn load<M: Cached>(dir: &Path, name: &str) -> Result<Entry<M>> {
    let file_bytes = std::fs::metadata(M::weights(dir, name)?).map_or(0, |m| m.len());
    let (estimate, _) = budget::estimate(name, M::TOWER, file_bytes);
    let reservation = fitting(name, M::TOWER, estimate, |b| {
        budget::reserve(name, M::TOWER, estimate, b).map(|s| Reservation(Some(s)))
    })?;
    let opts = SessionOptions { library: guc::onnxruntime_library(), intra_threads: guc::intra_op_threads() };
    if file_bytes > 0 {
        // The process's ONNX Runtime environment is shared by all its models: created
        // before measuring, so the first model loaded is not charged for it.
        runtime::environment(&opts.library)?;
    }
    let (model, bytes, _) = memory::measure(|| M::load(dir, name, &opts));
    let model = model?;
    budget::remember(name, M::TOWER, file_bytes, bytes);
    fitting(name, M::TOWER, bytes, |b| budget::resize(reservation.slot(), bytes, b))?;
    Ok(Entry { model, dir: dir.to_path_buf(), hits: 0, bytes, slot: reservation.keep(), last_used: tick() })
}

/// Makes sure the model is loaded; returns (measured bytes, load time, whether it was
/// loaded now).
fn ensure<M: Cached>(map: &'static LocalKey<Map<M>>, name: &str) -> Result<(u64, Duration, bool)> {
    let dir = guc::model_dir();
    if map.with(|m| m.borrow().get(name).is_some_and(|e| e.dir != dir)) {
        remove(map, name);
    }
    if let Some(loaded) = map.with(|m| m.borrow().get(name).map(|e| (e.bytes, e.model.load_time(), false))) {
        return Ok(loaded);
    }
    let entry = load::<M>(&dir, name)?;
    let out = (entry.bytes, entry.model.load_time(), true);
    map.with(|m| m.borrow_mut().insert(name.to_owned(), entry));
    Ok(out)
}

fn with<M: Cached, T>(map: &'static LocalKey<Map<M>>, name: &str, f: impl FnOnce(&mut M) -> Result<T>) -> Result<T> {
    ensure(map, name)?;
    map.with(|models| {
        let mut models = models.borrow_mut();
        let entry = models.get_mut(name).expect("loaded above");
        entry.hits += 1;
        entry.last_used = tick();
        budget::touch(entry.slot);
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

pub struct Warmed {
    pub tower: Tower,
    pub bytes: u64,
    pub load_ms: f64,
    pub loaded_now: bool,
}

/// Loads every tower of a model now (the image tower, and the text tower if the manifest
/// declares one), without counting a use.
pub fn warm(name: &str) -> Result<Vec<Warmed>> {
    let has_text = Manifest::load(&guc::model_dir(), name)?.text.is_some();
    let row = |tower, (bytes, t, now): (u64, Duration, bool)| Warmed {
        tower,
        bytes,
        load_ms: t.as_secs_f64() * 1e3,
        loaded_now: now,
    };
    let mut out = vec![row(Tower::Image, ensure(&IMAGE, name)?)];
    if has_text {
        out.push(row(Tower::Text, ensure(&TEXT, name)?));
    }
    Ok(out)
}

/// Drops one model's towers (or everything with `None`) and releases their budget rows;
/// returns how many were dropped.
pub fn unload(name: Option<&str>) -> usize {
    fn drop_from<M>(map: &'static LocalKey<Map<M>>, name: Option<&str>) -> usize {
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_owned()],
            None => map.with(|m| m.borrow().keys().cloned().collect()),
        };
        names.iter().filter(|n| remove(map, n).is_some()).count()
    }
    drop_from(&IMAGE, name) + drop_from(&TEXT, name)
}

pub struct Loaded {
    pub name: String,
    pub tower: Tower,
    pub file_bytes: u64,
    pub bytes: u64,
    pub load_ms: f64,
    pub hits: u64,
}

fn list<M: Cached>(map: &'static LocalKey<Map<M>>, out: &mut Vec<Loaded>) {
    map.with(|models| {
        out.extend(models.borrow().iter().map(|(n, e)| Loaded {
            name: n.clone(),
            tower: M::TOWER,
            file_bytes: e.model.file_bytes(),
            bytes: e.bytes,
            load_ms: e.model.load_time().as_secs_f64() * 1e3,
            hits: e.hits,
        }))
    })
}

pub fn loaded() -> Vec<Loaded> {
    let mut v = Vec::new();
    list(&IMAGE, &mut v);
    list(&TEXT, &mut v);
    v.sort_by(|a, b| (&a.name, a.tower.as_str()).cmp(&(&b.name, b.tower.as_str())));
    v
}
