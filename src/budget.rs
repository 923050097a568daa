//! The memory budget: a table of what every backend holds, per model tower.
//!
//! With `shared_preload_libraries = 'pg_vision'` the table lives in shared memory under one
//! LWLock, so `pg_vision.memory_budget` bounds the sum over all backends. Without it there
//! is no shared memory to use: the same table lives in the backend and the same GUC bounds
//! that backend alone (and the backend says so once, with a WARNING).
//!
//! A backend reserves a model's bytes here *before* loading it (estimate: the last size
//! measured for that model file, else `ESTIMATE_FACTOR` x the ONNX file), then corrects the
//! row to the measured size.
//!
//! A tower loaded from its prepared files (`pg_vision_core::prepared`) holds two kinds of
//! memory: private bytes (its heap: graph, buffers, small initializers) and the mapped data
//! file, whose pages every backend mapping it shares. A row records both, the shared part
//! with the data file's identity (`shared_key`); the total counts private bytes per row
//! and each shared file once, however many rows map it, so the file's bytes leave the
//! total when the last row holding it is released. Rows are released on eviction, unload, failed load, and when
//! the backend exits: a `before_shmem_exit` callback covers normal exit, FATAL errors and
//! `pg_terminate_backend`. A crashed backend makes the postmaster reinitialise shared
//! memory, which empties the table. Nothing here raises a PostgreSQL error while holding
//! the lock: the functions compute and return, callers report.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};

use pg_vision_core::manifest::Tower;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// Rows in the table: models loaded at once across the cluster (about 100 bytes each).
const SLOTS: usize = 1024;
/// Remembered measured sizes (model files), used as estimates for later loads.
const MEMOS: usize = 128;
const NAME_LEN: usize = 64;

/// Until a model file has been measured once, it is assumed to cost this many times its
/// ONNX file: measured here, ONNX Runtime holds 1.0-1.5x the file (weights, plus planned
/// buffers and the optimised graph); 2x keeps the first reservation on the safe side.
pub const ESTIMATE_FACTOR: u64 = 2;

/// A model name, truncated to 63 bytes (at a character boundary) to fit a fixed-size row.
#[derive(Copy, Clone)]
struct Name {
    len: u8,
    bytes: [u8; NAME_LEN],
}

impl Name {
    const EMPTY: Name = Name { len: 0, bytes: [0; NAME_LEN] };

    fn new(s: &str) -> Name {
        let mut end = s.len().min(NAME_LEN - 1);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut n = Name { len: end as u8, bytes: [0; NAME_LEN] };
        n.bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        n
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

#[derive(Copy, Clone)]
struct Slot {
    /// 0: free.
    pid: i32,
    tower: u8,
    name: Name,
    bytes: u64,
    /// TimestampTz.
    last_used: i64,
    calls: u64,
    /// Another backend asked this one to give its models back (`pg_vision_release_models`).
    release: bool,
    /// The mapped (shared) data file's identity, 0 for none, and its mapped bytes: counted
    /// once across every row with the same key.
    shared_key: u64,
    shared_bytes: u64,
    shared_file: Name,
}

#[derive(Copy, Clone)]
struct Memo {
    tower: u8,
    name: Name,
    /// The ONNX file's size: a replaced file under the same name is measured again.
    file_bytes: u64,
    measured: u64,
}

#[derive(Copy, Clone)]
pub struct Table {
    slots: [Slot; SLOTS],
    memos: [Memo; MEMOS],
    next_memo: usize,
    evictions: u64,
}

// SAFETY: plain old data (integers and byte arrays), no pointers.
unsafe impl PGRXSharedMemory for Table {}

impl Table {
    const EMPTY: Table = Table {
        slots: [Slot {
            pid: 0,
            tower: 0,
            name: Name::EMPTY,
            bytes: 0,
            last_used: 0,
            calls: 0,
            release: false,
            shared_key: 0,
            shared_bytes: 0,
            shared_file: Name::EMPTY,
        }; SLOTS],
        memos: [Memo { tower: 0, name: Name::EMPTY, file_bytes: 0, measured: 0 }; MEMOS],
        next_memo: 0,
        evictions: 0,
    };

    /// Private bytes of every row plus each shared file once.
    fn used(&self) -> u64 {
        self.private() + self.shared().iter().map(|&(_, b, _)| b).sum::<u64>()
    }

    fn private(&self) -> u64 {
        self.slots.iter().filter(|s| s.pid != 0).map(|s| s.bytes).sum()
    }

    /// Each shared file held by some row: (key, bytes, whether only this backend holds it).
    fn shared(&self) -> Vec<(u64, u64, bool)> {
        let pid = my_pid();
        let mut held: Vec<(u64, u64, bool)> = self
            .slots
            .iter()
            .filter(|s| s.pid != 0 && s.shared_key != 0)
            .map(|s| (s.shared_key, s.shared_bytes, s.pid == pid))
            .collect();
        held.sort_unstable_by_key(|h| h.0);
        // One entry per key: the largest mapping seen, "mine alone" only if every row is mine.
        held.dedup_by(|next, kept| {
            if next.0 != kept.0 {
                return false;
            }
            kept.1 = kept.1.max(next.1);
            kept.2 &= next.2;
            true
        });
        held
    }

    fn backends(&self) -> usize {
        let mut pids: Vec<i32> = self.slots.iter().filter(|s| s.pid != 0).map(|s| s.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids.len()
    }

    /// What evicting all of this backend's models would free: its private bytes and the
    /// shared files no other backend maps.
    fn mine(&self) -> u64 {
        let pid = my_pid();
        let private: u64 = self.slots.iter().filter(|s| s.pid == pid).map(|s| s.bytes).sum();
        private + self.shared().iter().filter(|h| h.2).map(|h| h.1).sum::<u64>()
    }

    /// What this backend has in its address space, against `pg_vision.backend_memory_limit`:
    /// its private bytes and every shared file it maps, in full.
    fn mine_mapped(&self) -> u64 {
        let pid = my_pid();
        let mut keys: Vec<(u64, u64)> = self
            .slots
            .iter()
            .filter(|s| s.pid == pid && s.shared_key != 0)
            .map(|s| (s.shared_key, s.shared_bytes))
            .collect();
        keys.sort_unstable();
        keys.dedup_by_key(|k| k.0);
        self.slots.iter().filter(|s| s.pid == pid).map(|s| s.bytes).sum::<u64>() + keys.iter().map(|k| k.1).sum::<u64>()
    }

    fn shortfall(&self, budget: u64, full: bool) -> Shortfall {
        Shortfall {
            budget,
            used: self.used(),
            mine: self.mine(),
            backends: self.backends(),
            full,
            backend_limit: None,
            adds: 0,
        }
    }

    /// Puts `new` in row `i` if what it adds (private bytes, and its shared file unless
    /// another row holds it already) stays within the budget, and within this backend's
    /// own limit when one is set; else leaves the row as it was. Shrinking always fits.
    fn try_set(&mut self, i: usize, new: Slot, budget: u64, limit: Option<u64>) -> Result<(), Shortfall> {
        let old = self.slots[i];
        let (used, mapped) = (self.used(), self.mine_mapped());
        self.slots[i] = new;
        let (used_after, mapped_after) = (self.used(), self.mine_mapped());
        if let Some(limit) = limit.filter(|&l| mapped_after > mapped && mapped_after > l) {
            self.slots[i] = old;
            let adds = mapped_after - mapped;
            return Err(Shortfall { backend_limit: Some(limit), adds, ..self.shortfall(budget, false) });
        }
        if used_after > used && used_after > budget {
            self.slots[i] = old;
            return Err(Shortfall { adds: used_after - used, ..self.shortfall(budget, false) });
        }
        Ok(())
    }
}

static SHARED: PgLwLock<Table> = unsafe { PgLwLock::new(c"pg_vision_memory") };
/// Set in the postmaster by `init_shared` and inherited by every backend it forks.
static SHARED_ON: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The per-backend table when there is no shared memory.
    static LOCAL: RefCell<Option<Box<Table>>> = const { RefCell::new(None) };
    static EXIT_HOOK: Cell<bool> = const { Cell::new(false) };
    static WARNED: Cell<bool> = const { Cell::new(false) };
}

/// Requests the shared table; only from `_PG_init` under `shared_preload_libraries`.
pub fn init_shared() {
    pg_shmem_init!(SHARED = Table::EMPTY);
    SHARED_ON.store(true, Ordering::Relaxed);
}

/// Whether the budget is cluster-wide (shared memory) or per backend.
pub fn is_shared() -> bool {
    SHARED_ON.load(Ordering::Relaxed)
}

fn with_table<T>(f: impl FnOnce(&mut Table) -> T) -> T {
    if is_shared() {
        let mut t = SHARED.exclusive();
        f(&mut t)
    } else {
        LOCAL.with(|l| f(l.borrow_mut().get_or_insert_with(|| Box::new(Table::EMPTY))))
    }
}

fn my_pid() -> i32 {
    // SAFETY: set once at process start.
    unsafe { pg_sys::MyProcPid }
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Why a reservation does not fit.
#[derive(Debug)]
pub struct Shortfall {
    pub budget: u64,
    pub used: u64,
    /// Of `used`, what this backend holds (what evicting its own models could free).
    pub mine: u64,
    pub backends: usize,
    /// The table has no free row (SLOTS models loaded across the cluster).
    pub full: bool,
    /// Set when it is this backend's own limit (`pg_vision.backend_memory_limit`) that
    /// does not fit, not the budget.
    pub backend_limit: Option<u64>,
    /// What the refused change would have added (private bytes, and a shared file no other
    /// backend maps yet); 0 when unknown (the table was full).
    pub adds: u64,
}

/// Bytes to reserve before loading: the last measurement of this model file, else
/// `ESTIMATE_FACTOR` x its size.
pub fn estimate(name: &str, tower: Tower, file_bytes: u64) -> u64 {
    measured(name, tower, file_bytes).unwrap_or(file_bytes * ESTIMATE_FACTOR)
}

/// The last measurement of this model file, if any.
pub fn measured(name: &str, tower: Tower, file_bytes: u64) -> Option<u64> {
    let n = Name::new(name);
    with_table(|t| {
        t.memos
            .iter()
            .find(|m| m.tower == tower as u8 && m.file_bytes == file_bytes && m.name.as_str() == n.as_str())
            .map(|m| m.measured)
    })
}

/// Records a measured size, for the next backend's estimate.
pub fn remember(name: &str, tower: Tower, file_bytes: u64, measured: u64) {
    let memo = Memo { tower: tower as u8, name: Name::new(name), file_bytes, measured };
    with_table(|t| {
        let i = match t.memos.iter().position(|m| m.tower == memo.tower && m.name.as_str() == memo.name.as_str()) {
            Some(i) => i,
            None => {
                let i = t.next_memo % MEMOS;
                t.next_memo = (i + 1) % MEMOS;
                i
            }
        };
        t.memos[i] = memo;
    })
}

/// A tower's mapped, shared data file: its identity (nonzero), bytes and file name.
#[derive(Clone, Copy)]
pub struct SharedFile<'a> {
    pub key: u64,
    pub bytes: u64,
    pub file: &'a str,
}

/// Reserves `bytes` (private) and `shared` for this backend's `name` tower if the total
/// stays within `budget`; returns the row to pass to `resize`, `touch` and `release`.
pub fn reserve(
    name: &str,
    tower: Tower,
    bytes: u64,
    shared: Option<SharedFile<'_>>,
    budget: u64,
    limit: Option<u64>,
) -> Result<usize, Shortfall> {
    if is_shared() {
        register_exit_hook();
    } else {
        warn_once_not_shared();
    }
    let pid = my_pid();
    with_table(|t| {
        let Some(i) = t.slots.iter().position(|s| s.pid == 0) else {
            return Err(t.shortfall(budget, true));
        };
        // A file other backends map already counts as they measured it; the caller's
        // figure is only an expectation.
        let held = |key| t.slots.iter().find(|x| x.pid != 0 && x.shared_key == key).map(|x| x.shared_bytes);
        let new = Slot {
            pid,
            tower: tower as u8,
            name: Name::new(name),
            bytes,
            last_used: now(),
            calls: 0,
            release: false,
            shared_key: shared.map_or(0, |s| s.key),
            shared_bytes: shared.map_or(0, |s| held(s.key).unwrap_or(s.bytes)),
            shared_file: Name::new(shared.map_or("", |s| s.file)),
        };
        t.try_set(i, new, budget, limit)?;
        Ok(i)
    })
}

/// Sets a row to the measured private bytes and shared file; growing the total must still
/// fit in `budget`.
pub fn resize(
    slot: usize,
    bytes: u64,
    shared: Option<SharedFile<'_>>,
    budget: u64,
    limit: Option<u64>,
) -> Result<(), Shortfall> {
    let pid = my_pid();
    with_table(|t| {
        let s = t.slots[slot];
        if s.pid != pid {
            return Ok(());
        }
        let new = Slot {
            bytes,
            shared_key: shared.map_or(0, |s| s.key),
            shared_bytes: shared.map_or(0, |s| s.bytes),
            shared_file: Name::new(shared.map_or("", |s| s.file)),
            ..s
        };
        t.try_set(slot, new, budget, limit)
    })
}

/// Marks a use of the model in this row.
pub fn touch(slot: usize) {
    let (pid, ts) = (my_pid(), now());
    with_table(|t| {
        let s = &mut t.slots[slot];
        if s.pid == pid {
            s.last_used = ts;
            s.calls += 1;
        }
    })
}

/// Frees this backend's row.
pub fn release(slot: usize) {
    let pid = my_pid();
    with_table(|t| {
        if t.slots[slot].pid == pid {
            t.slots[slot].pid = 0;
            t.slots[slot].bytes = 0;
            t.slots[slot].shared_key = 0;
        }
    })
}

/// Flags every row of backend `pid` for release; false if it holds none.
pub fn request_release(pid: i32) -> bool {
    with_table(|t| {
        let mut any = false;
        for s in t.slots.iter_mut().filter(|s| s.pid == pid && pid != 0) {
            s.release = true;
            any = true;
        }
        any
    })
}

/// Whether another backend asked this one to give back the models in `slots` (this
/// backend's rows: only they are read, as this runs at every transaction end).
pub fn release_requested(slots: &[usize]) -> bool {
    if slots.is_empty() {
        return false;
    }
    let pid = my_pid();
    with_table(|t| slots.iter().any(|&i| t.slots[i].pid == pid && t.slots[i].release))
}

pub fn count_eviction() {
    with_table(|t| t.evictions += 1)
}

/// Frees every row of this process: it is exiting.
fn release_all_mine() {
    let pid = my_pid();
    with_table(|t| {
        for s in t.slots.iter_mut().filter(|s| s.pid == pid) {
            s.pid = 0;
            s.bytes = 0;
            s.shared_key = 0;
        }
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    release_all_mine();
}

/// Once per backend, at its first reservation: rows are released however the backend
/// ends. `before_shmem_exit` runs while the backend can still take LWLocks.
fn register_exit_hook() {
    if !EXIT_HOOK.replace(true) {
        // SAFETY: registers a callback in this backend's exit list.
        unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    }
}

fn warn_once_not_shared() {
    if !WARNED.replace(true) {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            "pg_vision: the cluster-wide memory budget is off because pg_vision is not in shared_preload_libraries",
            "pg_vision",
        )
        .set_hint(
            "pg_vision.memory_budget limits each connection alone. To share one budget across all connections, \
             add pg_vision to shared_preload_libraries in postgresql.conf and restart PostgreSQL.",
        )
        .report(PgLogLevel::WARNING);
    }
}

pub struct Row {
    pub pid: i32,
    pub model: String,
    pub tower: &'static str,
    pub bytes: u64,
    pub last_used: i64,
    pub calls: u64,
    /// The shared data file this tower maps ("" for none) and its mapped bytes.
    pub shared_file: String,
    pub shared_bytes: u64,
}

/// Every row: the whole cluster's (shared) or this backend's.
pub fn rows() -> Vec<Row> {
    let mut rows = if is_shared() {
        let t = SHARED.share();
        collect(&t)
    } else {
        with_table(|t| collect(t))
    };
    rows.sort_by(|a, b| (a.pid, &a.model, a.tower).cmp(&(b.pid, &b.model, b.tower)));
    rows
}

fn collect(t: &Table) -> Vec<Row> {
    t.slots
        .iter()
        .filter(|s| s.pid != 0)
        .map(|s| Row {
            pid: s.pid,
            model: s.name.as_str().to_owned(),
            tower: Tower::from_u8(s.tower).map_or("", Tower::as_str),
            bytes: s.bytes,
            last_used: s.last_used,
            calls: s.calls,
            shared_file: s.shared_file.as_str().to_owned(),
            shared_bytes: if s.shared_key == 0 { 0 } else { s.shared_bytes },
        })
        .collect()
}

pub struct Summary {
    pub used: u64,
    /// Of `used`: private bytes of every row, and the shared files, each counted once.
    pub private: u64,
    pub shared: u64,
    pub shared_files: usize,
    pub backends: usize,
    pub models: usize,
    pub evictions: u64,
}

pub fn summary() -> Summary {
    let f = |t: &Table| Summary {
        used: t.used(),
        private: t.private(),
        shared: t.used() - t.private(),
        shared_files: t.shared().len(),
        backends: t.backends(),
        models: t.slots.iter().filter(|s| s.pid != 0).count(),
        evictions: t.evictions,
    };
    if is_shared() {
        let t = SHARED.share();
        f(&t)
    } else {
        with_table(|t| f(t))
    }
}
