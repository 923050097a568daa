//! The per-backend model cache: a model (image tower or text tower) is loaded at its
//! first use in a connection and kept until it is evicted, `pg_vision_unload()`, or the
//! end of the connection. A backend is single-threaded, so thread-local maps are the whole
//! synchronisation story.
//!
//! Every load goes through the memory budget (`budget.rs`): read the manifest, reserve an
//! estimate from its ONNX file, load the tower from that manifest while measuring the
//! heap, correct the reservation to the measured size. When a reservation does not fit,
//! this backend's least recently used models are evicted first (it can only free its own
//! memory); when nothing is left to evict, the load fails with 53200.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::thread::LocalKey;
use std::time::Duration;

use pg_vision_core::image_model::ImageModel;
use pg_vision_core::manifest::{Manifest, Origin, Source, Tower};
use pg_vision_core::prepared::{self, Choice};
use pg_vision_core::session::{self, SessionOptions};
use pg_vision_core::text_model::TextModel;
use pg_vision_core::{heap, runtime, Error, Kind, Result};

use crate::budget::{self, Shortfall};
use crate::{guc, idle, memo};

/// A tower the cache holds: image or text, loaded the same way.
pub trait Cached: Sized {
    const TOWER: Tower;
    fn from_manifest(dir: &Path, manifest: Manifest, opts: &SessionOptions) -> Result<Self>;
    fn load_time(&self) -> Duration;
    fn origin(&self) -> &Origin;
    fn intra_threads(&self) -> usize;
    /// Whether it was loaded from its prepared (shared-weights) files, or why not.
    fn choice(&self) -> &Choice;
    /// Size of the files loaded, as they were then: the ONNX file, or the prepared graph
    /// and its data file.
    fn file_bytes(&self) -> u64 {
        match self.choice() {
            Choice::Prepared(p) => p.onnx.id.len + p.data.id.len,
            Choice::Plain { .. } => self.origin().onnx.id.len,
        }
    }
}

impl Cached for ImageModel {
    const TOWER: Tower = Tower::Image;
    fn from_manifest(dir: &Path, manifest: Manifest, opts: &SessionOptions) -> Result<Self> {
        ImageModel::from_manifest(dir, manifest, opts)
    }
    fn load_time(&self) -> Duration {
        self.load_time
    }
    fn origin(&self) -> &Origin {
        &self.origin
    }
    fn intra_threads(&self) -> usize {
        self.intra_threads
    }
    fn choice(&self) -> &Choice {
        &self.choice
    }
}

impl Cached for TextModel {
    const TOWER: Tower = Tower::Text;
    fn from_manifest(dir: &Path, manifest: Manifest, opts: &SessionOptions) -> Result<Self> {
        TextModel::from_manifest(dir, manifest, opts)
    }
    fn load_time(&self) -> Duration {
        self.load_time
    }
    fn origin(&self) -> &Origin {
        &self.origin
    }
    fn intra_threads(&self) -> usize {
        self.intra_threads
    }
    fn choice(&self) -> &Choice {
        &self.choice
    }
}

struct Entry<M> {
    model: M,
    /// The model directory it was loaded from: a changed `pg_vision.model_dir` reloads it.
    dir: PathBuf,
    /// What this tower is, for memo keys: model, tower, directory, the identity of its
    /// files (`Origin`) and its session's threads.
    identity: String,
    /// Calls that ran the model (a batch counts once; memo hits do not run it).
    calls: u64,
    /// Measured private bytes held: heap (`heap::measure` around the load), plus pages of
    /// the mapped data file this process wrote to (copy-on-write), if any.
    bytes: u64,
    /// `pg_vision.shared_weights` when it was loaded: a change loads it again.
    shared_weights: bool,
    /// Its row in the budget table.
    slot: usize,
    /// This backend's use counter at the last use: the smallest is evicted first.
    last_used: u64,
}

/// A tower's mapped data file, as the budget counts it.
struct Shared {
    key: u64,
    bytes: u64,
    file: String,
    /// The data file's size: the key of its remembered private bytes (`budget::remember`).
    file_len: u64,
}

impl Shared {
    /// The data file `data`, of which `mapped` bytes are (or are expected to be) mapped:
    /// from /proc/self/smaps after a load; the file's size if 0.
    fn of(data: &Source, mapped: u64) -> Shared {
        use std::hash::{Hash, Hasher};
        // The file's identity (device, inode, size, times) as a key every backend derives
        // alike: the same file is one key, a replaced one a new key.
        let mut h = std::hash::DefaultHasher::new();
        data.id.hash(&mut h);
        let file = data.path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let file_len = data.id.len;
        Shared { key: h.finish().max(1), bytes: if mapped > 0 { mapped } else { file_len }, file, file_len }
    }

    fn budget(&self) -> budget::SharedFile<'_> {
        budget::SharedFile { key: self.key, bytes: self.bytes, file: &self.file }
    }
}

type Map<M> = RefCell<HashMap<String, Entry<M>>>;

thread_local! {
    static IMAGE: Map<ImageModel> = RefCell::new(HashMap::new());
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

/// Reserves `bytes` in the budget through `attempt`, evicting this backend's least
/// recently used models until it fits or nothing is left to evict. When even evicting all
/// of this backend's models could not make room, it fails at once and keeps them.
fn reserve_evicting_lru<T>(
    name: &str,
    tower: Tower,
    bytes: u64,
    mut attempt: impl FnMut(u64, Option<u64>) -> std::result::Result<T, Shortfall>,
) -> Result<T> {
    loop {
        match attempt(guc::memory_budget_bytes(), guc::backend_memory_limit_bytes()) {
            Ok(v) => return Ok(v),
            Err(short) => {
                // What the tower needs: its private bytes, plus its shared file when no other
                // backend maps it (the budget computed what the refused change added).
                let adds = short.adds.max(bytes);
                let hopeless = match short.backend_limit {
                    Some(limit) => adds > limit,
                    None => !short.full && short.used - short.mine + adds > short.budget,
                };
                if hopeless || !evict_lru() {
                    return Err(does_not_fit(name, tower, adds, &short));
                }
            }
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

fn does_not_fit(name: &str, tower: Tower, bytes: u64, s: &Shortfall) -> Error {
    let model = format!("model \"{name}\" ({} tower, {})", tower.as_str(), mb(bytes));
    if let Some(limit) = s.backend_limit {
        return Error::new(
            Kind::OutOfMemory,
            format!(
                "pg_vision: {model} does not fit in this backend's pg_vision.backend_memory_limit ({}): it holds {}",
                mb(limit),
                mb(s.mine)
            ),
        )
        .with_hint(
            "free this session's models with pg_vision_unload(), or ask a superuser to raise the limit for this role",
        );
    }
    let held = if budget::is_shared() {
        format!("{} in use by {} backend(s)", mb(s.used), s.backends)
    } else {
        format!(
            "{} in use by this connection (per-connection budget: pg_vision is not in shared_preload_libraries)",
            mb(s.used)
        )
    };
    let what = if s.full {
        format!("pg_vision: cannot load {model}: the table of loaded models is full; {held}")
    } else {
        format!("pg_vision: {model} does not fit in pg_vision.memory_budget ({}): {held}", mb(s.budget))
    };
    let idle = match guc::model_idle_timeout_ms() {
        0 => "other sessions keep their models until they end (pg_vision.model_idle_timeout is 0)".to_owned(),
        ms => {
            format!(
                "other sessions give their models back after {} s unused (pg_vision.model_idle_timeout)",
                f64::from(ms) / 1000.0
            )
        }
    };
    Error::new(Kind::OutOfMemory, what).with_hint(format!(
        "{idle}; a superuser or a member of pg_signal_backend can make one give them back now with \
         pg_vision_release_models(pid), and SELECT * FROM pg_vision_memory (pg_monitor) shows who holds what; \
         or raise pg_vision.memory_budget"
    ))
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
    memo::forget(name);
    budget::release(entry.slot);
    let bytes = entry.bytes;
    drop(entry);
    heap::release_free_pages();
    Some(bytes)
}

/// Loads a tower of the model `manifest` describes within the budget.
fn load<M: Cached>(dir: &Path, manifest: Manifest) -> Result<Entry<M>> {
    let name = manifest.name.clone();
    let name = name.as_str();
    let plain = manifest.onnx_path(dir, M::TOWER)?;
    let file_bytes = std::fs::metadata(&plain).map_or(0, |m| m.len());
    let shared_weights = guc::shared_weights();
    let opts =
        SessionOptions { library: guc::onnxruntime_library(), intra_threads: guc::intra_op_threads(), shared_weights };
    if file_bytes > 0 {
        // The process's ONNX Runtime environment is shared by all its models: created
        // before measuring, so the first model loaded is not charged for it.
        runtime::environment(&opts.library)?;
    }
    // The reservation. With prepared files: the shared part as large as the plain file
    // (ONNX Runtime maps about that much of the data file, which also holds the weights as
    // they were before prepacking: 18.8 of 23.7 MB for EfficientNet-Lite0, 351.7 of 692.8
    // for the ViT fixture's image tower, each within 0.1% of the plain file), counted only
    // if no other backend maps the file yet; and the private bytes last measured for such
    // a load, else a quarter of the plain file (measured: 1-10%). Without: as before.
    let declared = match M::TOWER {
        Tower::Image => manifest.onnx_sha256.as_deref(),
        Tower::Text => manifest.text.as_ref().and_then(|t| t.onnx_sha256.as_deref()),
    };
    let planned = if file_bytes > 0 {
        session::planned(&plain, declared, &opts).map(|d| Shared::of(&d, file_bytes))
    } else {
        None
    };
    let estimate = match &planned {
        Some(p) => budget::measured(name, M::TOWER, p.file_len).unwrap_or(file_bytes / 4),
        None => budget::estimate(name, M::TOWER, file_bytes),
    };
    let reservation = reserve_evicting_lru(name, M::TOWER, estimate, |b, limit| {
        budget::reserve(name, M::TOWER, estimate, planned.as_ref().map(Shared::budget), b, limit)
            .map(|s| Reservation(Some(s)))
    })?;
    let (model, heap_bytes, _) = heap::measure(|| M::from_manifest(dir, manifest, &opts));
    let model = model?;
    let (bytes, shared) = match model.choice() {
        Choice::Prepared(p) => {
            let m = prepared::mapped(&p.data);
            (heap_bytes + m.anonymous, Some(Shared::of(&p.data, m.size)))
        }
        Choice::Plain { why } => {
            if let Some(why) = why {
                pgrx::log!(
                    "pg_vision: model \"{name}\" ({} tower): loaded from its plain ONNX file, not its shared-weights files: {why}",
                    M::TOWER.as_str()
                );
            }
            (heap_bytes, None)
        }
    };
    // Remembered under the size of the file whose load was measured (the data file's for
    // prepared files), so a plain load's size never estimates a prepared one's.
    budget::remember(name, M::TOWER, shared.as_ref().map_or(file_bytes, |s| s.file_len), bytes);
    reserve_evicting_lru(name, M::TOWER, bytes, |b, limit| {
        budget::resize(reservation.slot(), bytes, shared.as_ref().map(Shared::budget), b, limit)
    })?;
    let identity = format!(
        "{name}|{}|{}|{:?}|threads={}",
        M::TOWER.as_str(),
        dir.display(),
        model.origin(),
        model.intra_threads()
    );
    Ok(Entry {
        model,
        dir: dir.to_path_buf(),
        identity,
        calls: 0,
        bytes,
        shared_weights,
        slot: reservation.keep(),
        last_used: tick(),
    })
}

/// Makes sure the model's tower is loaded, reading its manifest (unless the caller has
/// `read` it) only when it is not; returns (measured bytes, load time, whether it was
/// loaded now).
fn ensure<M: Cached>(
    map: &'static LocalKey<Map<M>>,
    name: &str,
    read: Option<&Manifest>,
) -> Result<(u64, Duration, bool)> {
    let dir = guc::model_dir();
    // A changed model directory, or new files under the same name (weights or manifest
    // replaced, rewritten or touched: two stat calls), load the model again.
    let shared_weights = guc::shared_weights();
    if map.with(|m| {
        m.borrow()
            .get(name)
            .is_some_and(|e| e.dir != dir || e.shared_weights != shared_weights || !e.model.origin().unchanged())
    }) {
        remove(map, name);
    }
    if let Some(loaded) = map.with(|m| m.borrow().get(name).map(|e| (e.bytes, e.model.load_time(), false))) {
        return Ok(loaded);
    }
    let manifest = match read {
        Some(m) => m.clone(),
        None => Manifest::load(&dir, name)?,
    };
    let entry = load::<M>(&dir, manifest)?;
    let out = (entry.bytes, entry.model.load_time(), true);
    map.with(|m| m.borrow_mut().insert(name.to_owned(), entry));
    Ok(out)
}

fn with<M: Cached, T>(map: &'static LocalKey<Map<M>>, name: &str, f: impl FnOnce(&mut M) -> Result<T>) -> Result<T> {
    ensure(map, name, None)?;
    map.with(|models| {
        let mut models = models.borrow_mut();
        let entry = models.get_mut(name).expect("loaded above");
        entry.calls += 1;
        entry.last_used = tick();
        budget::touch(entry.slot);
        idle::used();
        f(&mut entry.model)
    })
}

/// The identity of the named model's tower as loaded now (loading it first if needed),
/// for memo keys: it changes whenever the loaded files would.
pub fn identity(tower: Tower, name: &str) -> Result<String> {
    fn of<M: Cached>(map: &'static LocalKey<Map<M>>, name: &str) -> Result<String> {
        ensure(map, name, None)?;
        Ok(map.with(|m| m.borrow()[name].identity.clone()))
    }
    match tower {
        Tower::Image => of(&IMAGE, name),
        Tower::Text => of(&TEXT, name),
    }
}

/// Runs `f` with the named image model, loading it first if this backend has not.
pub fn with_model<T>(name: &str, f: impl FnOnce(&mut ImageModel) -> Result<T>) -> Result<T> {
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
    let manifest = Manifest::load(&guc::model_dir(), name)?;
    let row = |tower, (bytes, t, now): (u64, Duration, bool)| Warmed {
        tower,
        bytes,
        load_ms: t.as_secs_f64() * 1e3,
        loaded_now: now,
    };
    let mut out = vec![row(Tower::Image, ensure(&IMAGE, name, Some(&manifest))?)];
    if manifest.text.is_some() {
        out.push(row(Tower::Text, ensure(&TEXT, name, Some(&manifest))?));
    }
    idle::used();
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
    pub calls: u64,
}

fn list<M: Cached>(map: &'static LocalKey<Map<M>>, out: &mut Vec<Loaded>) {
    map.with(|models| {
        out.extend(models.borrow().iter().map(|(n, e)| Loaded {
            name: n.clone(),
            tower: M::TOWER,
            file_bytes: e.model.file_bytes(),
            bytes: e.bytes,
            load_ms: e.model.load_time().as_secs_f64() * 1e3,
            calls: e.calls,
        }))
    })
}

/// The budget rows of this backend's models.
pub fn slots() -> Vec<usize> {
    fn of<M>(map: &'static LocalKey<Map<M>>, out: &mut Vec<usize>) {
        // try_borrow: called at transaction end, where a panic would be a PANIC.
        map.with(|m| out.extend(m.try_borrow().iter().flat_map(|m| m.values().map(|e| e.slot))))
    }
    let mut v = Vec::new();
    of(&IMAGE, &mut v);
    of(&TEXT, &mut v);
    v
}

pub fn loaded() -> Vec<Loaded> {
    let mut v = Vec::new();
    list(&IMAGE, &mut v);
    list(&TEXT, &mut v);
    v.sort_by(|a, b| (&a.name, a.tower.as_str()).cmp(&(&b.name, b.tower.as_str())));
    v
}
