//! Every pg_vision setting. `$libdir` and `$sharedir` in paths are expanded the way
//! PostgreSQL expands them for `dynamic_library_path`.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

pub static ONNXRUNTIME_LIBRARY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"$libdir/libonnxruntime.so"));
pub static MODEL_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"$sharedir/pg_vision"));
pub static INTRA_OP_THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static MAX_IMAGE_PIXELS: GucSetting<i32> = GucSetting::<i32>::new(50_000_000);
pub static MAX_IMAGE_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);
pub static MAX_IMAGE_PIXELS_CEILING: GucSetting<i32> = GucSetting::<i32>::new(50_000_000);
pub static MAX_IMAGE_BYTES_CEILING: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);
pub static ACCEPT_DAMAGED_IMAGES: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static JPEG_DCT_SCALING: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static SHARED_WEIGHTS: GucSetting<bool> = GucSetting::<bool>::new(true);
/// In MB. Bounds what loaded models hold across all backends, so a burst of connections
/// cannot multiply a model's memory by max_connections. The 1 GB default holds one CLIP
/// ViT-B/32 with both towers (about 600 MB of float32 weights) or dozens of small CNNs.
pub static MEMORY_BUDGET: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static PRELOAD_MODELS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// In MB; 0: no limit beyond the budget. Set per role (ALTER ROLE ... SET) so one role's
/// sessions cannot take the whole budget.
pub static BACKEND_MEMORY_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(0);
/// In ms; 0: never. Models are given back after this long without a use, so idle sessions
/// do not keep the budget from the sessions that work.
pub static MODEL_IDLE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5 * 60 * 1000);
/// Entries in each backend's memo of recent embeddings (0: off).
pub static MEMO_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(128);
/// Bytes, in kB, that each backend's memo may hold.
pub static MEMO_MEMORY: GucSetting<i32> = GucSetting::<i32>::new(2048);
// Asynchronous indexing (src/indexer.rs).
pub static INDEXER_DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static INDEXER_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static INDEXER_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(32);
pub static INDEXER_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static INDEXER_NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static INDEXER_BATCH_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(300_000);
/// Defined with a check hook (`check_url_allowlist`), which pgrx's registry cannot add: so
/// the value is a plain `char *` that PostgreSQL's GUC code owns.
static URL_ALLOWLIST: RawString = RawString(UnsafeCell::new(std::ptr::null_mut()));
pub static URL_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn register() {
    GucRegistry::define_string_guc(
        c"pg_vision.onnxruntime_library",
        c"Path of the ONNX Runtime shared library (libonnxruntime.so).",
        c"Loaded at a backend's first inference; a change takes effect in new connections.",
        &ONNXRUNTIME_LIBRARY,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pg_vision.model_dir",
        c"Directory holding the model manifests (<name>.json) and their ONNX files.",
        c"Models already loaded by a backend stay loaded until pg_vision_unload() or the end of the connection.",
        &MODEL_DIR,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"pg_vision.intra_op_threads",
        c"ONNX Runtime intra-op threads per model session in each backend (0: one per core).",
        c"Never more than the machine's cores, whatever the setting. Every connection has its own sessions: keep this small when many connections embed at once. Applies to models loaded after the change.",
        &INTRA_OP_THREADS,
        0,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_vision.max_image_pixels",
        c"Largest image (width x height) that is decoded; larger ones are rejected before decoding.",
        c"Any role may lower it; the effective limit never exceeds pg_vision.max_image_pixels_ceiling.",
        &MAX_IMAGE_PIXELS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_vision.jpeg_dct_scaling",
        c"Decode large JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) when the model needs far fewer pixels.",
        c"Only while the shorter side stays at least four times the model's resize size. Off: every JPEG is decoded at full size (slower; vectors differ from 'on' by a cosine distance of at most about 0.0002).",
        &JPEG_DCT_SCALING,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_vision.max_image_bytes",
        c"Largest encoded image accepted, in bytes.",
        c"Any role may lower it; the effective limit never exceeds pg_vision.max_image_bytes_ceiling.",
        &MAX_IMAGE_BYTES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"pg_vision.max_image_pixels_ceiling",
        c"Upper bound of pg_vision.max_image_pixels, set by a superuser.",
        c"Bounds the memory one decode may take: up to about 12 bytes a pixel (RGBA 16-bit decode plus its 8-bit copy).",
        &MAX_IMAGE_PIXELS_CEILING,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_vision.max_image_bytes_ceiling",
        c"Upper bound of pg_vision.max_image_bytes, set by a superuser.",
        c"",
        &MAX_IMAGE_BYTES_CEILING,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_bool_guc(
        c"pg_vision.accept_damaged_images",
        c"Embed truncated or corrupt images as far as they decode, instead of refusing them (SQLSTATE 22P03).",
        c"For legacy catalogues only: the missing part of such an image comes out grey, and its vector describes that.",
        &ACCEPT_DAMAGED_IMAGES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_vision.shared_weights",
        c"Load a model's prepared files (one copy of the weights, mapped by every backend) when they match this ONNX Runtime and CPU.",
        c"scripts/models.sh prepares them (<file>.shared.onnx, .shared.onnx.data, .shared.json). Off: every backend reads its own copy of the plain ONNX file. Applies to models loaded after the change.",
        &SHARED_WEIGHTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_vision.memory_budget",
        c"Memory that loaded models may hold, across all backends (per backend without shared_preload_libraries).",
        c"A load that would exceed it first evicts the loading backend's least recently used models, then fails with SQLSTATE 53200.",
        &MEMORY_BUDGET,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"pg_vision.backend_memory_limit",
        c"Memory that one backend's loaded models may hold (0: only pg_vision.memory_budget bounds it).",
        c"Superuser-set, per role with ALTER ROLE ... SET. A load over it evicts the backend's own least recently used models, then fails with SQLSTATE 53200.",
        &BACKEND_MEMORY_LIMIT,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"pg_vision.model_idle_timeout",
        c"A backend gives its models back after this long without using them (0: never).",
        c"Also while the session sits idle. Superuser-set, so a role cannot keep models it does not use.",
        &MODEL_IDLE_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_vision.memo_entries",
        c"Recent embeddings each backend remembers, so a query that evaluates the same call again does not run the model again (0: off).",
        c"Keyed by the SHA-256 of the input with the model's files and settings; see pg_vision_memo().",
        &MEMO_ENTRIES,
        0,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_vision.memo_memory",
        c"Memory that each backend's memo of recent embeddings may hold.",
        c"Superuser-set: it is per connection and outside pg_vision.memory_budget.",
        &MEMO_MEMORY,
        0,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_string_guc(
        c"pg_vision.preload_models",
        c"Comma-separated models loaded when a session starts (every tower each declares).",
        c"With shared_preload_libraries: loaded right after authentication. Without: when the library loads (session_preload_libraries).",
        &PRELOAD_MODELS,
        GucContext::Sighup,
        // A list: SET accepts `a, b` unquoted, as for shared_preload_libraries.
        GucFlags::from_bits_retain(pg_sys::GUC_LIST_INPUT as i32),
    );
    // Read at server start only, so defined only then: PostgreSQL refuses a PGC_POSTMASTER
    // setting defined later (a library loaded by a backend, without shared_preload_libraries,
    // which starts no workers anyway).
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_string_guc(
            c"pg_vision.indexer_databases",
            c"Comma-separated databases whose asynchronous indexing queue pg_vision's background workers serve (empty: no workers).",
            c"Needs shared_preload_libraries = 'pg_vision'; read at server start. Workers never run on a hot standby.",
            &INDEXER_DATABASES,
            GucContext::Postmaster,
            GucFlags::from_bits_retain(pg_sys::GUC_LIST_INPUT as i32),
        );
        GucRegistry::define_int_guc(
            c"pg_vision.indexer_workers",
            c"Background workers per database in pg_vision.indexer_databases.",
            c"Each takes its own batches; about one per core that indexing may use. Read at server start.",
            &INDEXER_WORKERS,
            1,
            MAX_INDEXER_WORKERS,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"pg_vision.indexer_batch_size",
        c"Queued rows a background worker embeds per transaction (through embed_images).",
        c"",
        &INDEXER_BATCH_SIZE,
        1,
        256,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_vision.indexer_max_attempts",
        c"Tries of a queued row whose failure may be passing (out of memory, a model missing, a network error) before it is given up and recorded in pg_vision_errors.",
        c"Tries are 2, 4, 8 ... seconds apart, at most an hour. Bad images are recorded at once.",
        &INDEXER_MAX_ATTEMPTS,
        1,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_vision.indexer_naptime",
        c"How often an idle background worker looks at the queue without being woken (rows to retry).",
        c"New rows wake the workers at COMMIT; this only bounds the wait for retries.",
        &INDEXER_NAPTIME,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_vision.indexer_batch_timeout",
        c"Time a background worker's batch may take before it is cancelled and its rows postponed (0: no limit).",
        c"Table owners' code runs inside the batch; if it ignores the cancel, the worker ends at twice this time and the table is passed over for an hour.",
        &INDEXER_BATCH_TIMEOUT,
        0,
        86_400_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    // SAFETY: the name, descriptions and storage are 'static; the hook never unwinds.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"pg_vision.url_allowlist".as_ptr(),
            c"Hosts the background workers may fetch image URLs from: host, *.domain, host:port, IP literals (empty: none).".as_ptr(),
            c"Loopback, private and link-local addresses only when an entry names them. Set in postgresql.conf or with ALTER SYSTEM.".as_ptr(),
            URL_ALLOWLIST.0.get(),
            c"".as_ptr(),
            GucContext::Sighup as isize as _,
            pg_sys::GUC_LIST_INPUT as i32,
            Some(check_url_allowlist),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"pg_vision.url_timeout",
        c"Time a background worker allows one image URL fetch (connect, redirects, body).",
        c"",
        &URL_TIMEOUT,
        100,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    // A misspelt pg_vision.* setting is an error instead of a silently unused placeholder.
    // SAFETY: called once from _PG_init, after every pg_vision setting is defined.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"pg_vision".as_ptr()) };
}

fn setting(guc: &GucSetting<Option<CString>>) -> String {
    guc.get().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Expands a leading `$libdir` or `$sharedir`.
fn expand(path: &str) -> PathBuf {
    if let Some(rest) = path.strip_prefix("$libdir") {
        // SAFETY: pkglib_path is a NUL-terminated buffer set at postmaster start.
        let lib = unsafe { CStr::from_ptr(std::ptr::addr_of!(pg_sys::pkglib_path).cast()) };
        return PathBuf::from(format!("{}{rest}", lib.to_string_lossy()));
    }
    if let Some(rest) = path.strip_prefix("$sharedir") {
        let mut buf = vec![0 as std::ffi::c_char; pg_sys::MAXPGPATH as usize];
        // SAFETY: get_share_path writes at most MAXPGPATH bytes into buf.
        let share = unsafe {
            pg_sys::get_share_path(std::ptr::addr_of!(pg_sys::my_exec_path).cast(), buf.as_mut_ptr());
            CStr::from_ptr(buf.as_ptr())
        };
        return PathBuf::from(format!("{}{rest}", share.to_string_lossy()));
    }
    PathBuf::from(path)
}

pub fn onnxruntime_library() -> PathBuf {
    expand(&setting(&ONNXRUNTIME_LIBRARY))
}

pub fn model_dir() -> PathBuf {
    expand(&setting(&MODEL_DIR))
}

/// The memo's bounds (`pg_vision.memo_entries`, `pg_vision.memo_memory`).
pub fn memo_limits() -> pg_vision_core::memo::Limits {
    pg_vision_core::memo::Limits {
        entries: MEMO_ENTRIES.get().max(0) as usize,
        bytes: MEMO_MEMORY.get().max(0) as usize * 1024,
    }
}

/// `pg_vision.intra_op_threads` as set (0: one per core); the core bounds it by the cores
/// (`SessionOptions::intra_threads`).
pub fn intra_op_threads() -> usize {
    INTRA_OP_THREADS.get().max(0) as usize
}

pub fn shared_weights() -> bool {
    SHARED_WEIGHTS.get()
}

pub fn memory_budget_bytes() -> u64 {
    MEMORY_BUDGET.get().max(1) as u64 * 1024 * 1024
}

/// `pg_vision.backend_memory_limit` in bytes; `None` when it is 0 (off).
pub fn backend_memory_limit_bytes() -> Option<u64> {
    let mb = BACKEND_MEMORY_LIMIT.get();
    (mb > 0).then(|| mb as u64 * 1024 * 1024)
}

pub fn model_idle_timeout_ms() -> i32 {
    MODEL_IDLE_TIMEOUT.get()
}

/// `pg_vision.preload_models`, split as PostgreSQL splits list settings (`SplitGUCList`:
/// commas, optional whitespace, double-quoted names); `Err` with a message when the list
/// is malformed.
pub fn preload_models() -> Result<Vec<String>, String> {
    list(&PRELOAD_MODELS, "pg_vision.preload_models")
}

/// `pg_vision.indexer_databases`, split like `preload_models`.
pub fn indexer_databases() -> Result<Vec<String>, String> {
    list(&INDEXER_DATABASES, "pg_vision.indexer_databases")
}

/// The most background workers per database.
pub const MAX_INDEXER_WORKERS: i32 = 16;

pub fn indexer_workers() -> usize {
    INDEXER_WORKERS.get().clamp(1, MAX_INDEXER_WORKERS) as usize
}

pub fn indexer_batch_size() -> i32 {
    INDEXER_BATCH_SIZE.get()
}

pub fn indexer_max_attempts() -> i32 {
    INDEXER_MAX_ATTEMPTS.get()
}

pub fn indexer_naptime_ms() -> i64 {
    INDEXER_NAPTIME.get().into()
}

pub fn indexer_batch_timeout_ms() -> i32 {
    INDEXER_BATCH_TIMEOUT.get()
}

pub fn url_allowlist() -> String {
    // SAFETY: PostgreSQL sets the pointer (to a NUL-terminated string the GUC code keeps
    // until the next assignment, or NULL) only in this backend's main thread, between
    // statements; we read it on the same thread.
    unsafe { owned(*URL_ALLOWLIST.0.get()) }
}

/// A string setting's value (NULL: empty) as an owned `String`.
///
/// # Safety
/// `value` is NULL or points to a NUL-terminated string.
unsafe fn owned(value: *const c_char) -> String {
    if value.is_null() {
        return String::new();
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned()
}

/// A string setting's storage for `DefineCustomStringVariable`.
struct RawString(UnsafeCell<*mut c_char>);
// SAFETY: only PostgreSQL's GUC code writes it, and every access is on the backend's main thread.
unsafe impl Sync for RawString {}

/// Refuses a malformed `pg_vision.url_allowlist` where it is set (ALTER SYSTEM, a reload of
/// postgresql.conf), with the entry and what is wrong with it, instead of letting every URL
/// fetch fail later. Runs in the postmaster too at reload, so it must never panic.
unsafe extern "C-unwind" fn check_url_allowlist(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value (a string or NULL).
    let text = unsafe { owned(*newval) };
    let problem = match std::panic::catch_unwind(|| pg_vision_core::fetch::Allowlist::parse(&text).err()) {
        Ok(None) => return true,
        Ok(Some(e)) => (e.message, e.hint),
        Err(_) => ("the allowlist could not be checked".to_string(), None),
    };
    // What guc.c shows with its "invalid value for parameter" error; kept in ErrorContext,
    // as GUC_check_errdetail() keeps it. Messages hold no NUL (they quote entries through
    // `shown`), but one would only shorten the text.
    let keep = |s: String| {
        let c = CString::new(s.replace('\0', " ")).unwrap_or_default();
        // SAFETY: copies a NUL-terminated string into a live memory context.
        unsafe { pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, c.as_ptr()) }
    };
    // SAFETY: guc.c resets these before calling the hook and reads them after it.
    unsafe {
        pg_sys::GUC_check_errdetail_string = keep(problem.0);
        if let Some(hint) = problem.1 {
            pg_sys::GUC_check_errhint_string = keep(hint);
        }
    }
    false
}

pub fn url_timeout_ms() -> u64 {
    URL_TIMEOUT.get().max(1) as u64
}

fn list(guc: &GucSetting<Option<CString>>, name: &str) -> Result<Vec<String>, String> {
    let Some(value) = guc.get() else { return Ok(Vec::new()) };
    // SAFETY: SplitGUCList writes into its argument, so it gets a palloc'd copy; the list's
    // elements point into that copy and are copied out before both are freed.
    unsafe {
        let raw = pg_sys::pstrdup(value.as_ptr());
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        let ok = pg_sys::SplitGUCList(raw, b',' as std::ffi::c_char, &mut list);
        let names: Vec<String> = pgrx::PgList::<std::ffi::c_char>::from_pg(list)
            .iter_ptr()
            .map(|n| CStr::from_ptr(n).to_string_lossy().into_owned())
            .collect();
        pg_sys::list_free(list);
        pg_sys::pfree(raw.cast());
        if ok {
            Ok(names)
        } else {
            Err(format!("{name}: invalid list syntax in \"{}\"", value.to_string_lossy()))
        }
    }
}

/// The decoder's options: each limit is the smaller of the session's setting and the
/// superuser's ceiling; stop requests are PostgreSQL's pending interrupts.
pub fn decode_options() -> pg_vision_core::decode::Options {
    pg_vision_core::decode::Options {
        max_pixels: MAX_IMAGE_PIXELS.get().min(MAX_IMAGE_PIXELS_CEILING.get()).max(1) as u64,
        max_bytes: MAX_IMAGE_BYTES.get().min(MAX_IMAGE_BYTES_CEILING.get()).max(1) as u64,
        jpeg_dct_scaling: JPEG_DCT_SCALING.get(),
        accept_damaged: ACCEPT_DAMAGED_IMAGES.get(),
        stop: crate::interrupt::pending,
    }
}
