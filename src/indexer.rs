//! Asynchronous indexing: pg_vision's background workers embed the rows that the trigger's
//! `mode=async` queued (`sql/indexing.sql` has the queue and the batch function).
//!
//! - Workers are registered at server start (`shared_preload_libraries`), so many per
//!   database in `pg_vision.indexer_databases`, and start when recovery has finished: on
//!   a hot standby they never start.
//! - A transaction that queued rows sets the latches of its database's workers when it
//!   commits (`pg_vision_wake_indexer`, a transaction callback): an idle worker starts at
//!   once. Otherwise a worker looks at the queue every `pg_vision.indexer_naptime` (rows
//!   whose retry is due).
//! - A worker connects as the bootstrap superuser, picks the oldest due queue row, and runs
//!   `pg_vision_index_batch` as the owner of that row's table in a security-restricted
//!   context (PostgreSQL's `SECURITY_RESTRICTED_OPERATION`, as autovacuum runs index
//!   expressions): the table's triggers, policies and functions run with the owner's
//!   rights and cannot SET ROLE back. A batch is one transaction; any error aborts it and
//!   leaves the queue rows for a later try, with backoff, while the worker goes on with the
//!   other tables. The worker's own statements run with search_path pinned to pg_catalog.
//! - Only the batch function may fetch image URLs (`pg_vision_fetch_image` wants the
//!   batch's secret), not the owner's code that runs inside the batch.
//! - A batch gets `pg_vision.indexer_batch_timeout`: then it is cancelled (as by
//!   statement_timeout, and postponed). Owner code that swallows the cancel is stopped at
//!   twice the timeout by ending the worker (FATAL, restarted 5 s later), and its table is
//!   passed over by every worker for an hour (`PENALTY`): a table's code never holds a
//!   worker for ever.
//! - Workers count in the memory budget like any backend (they load models the same way).
//! - What they do is in shared memory: `pg_vision_indexer_workers()` (each worker's state)
//!   and `pg_vision_indexer_batches()` (recent batches, for rates).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock, PgTryBuilder};

use crate::{guc, idle};

/// The workers' `backend_type` in pg_stat_activity.
const WORKER_TYPE: &str = "pg_vision indexer";
/// Workers the shared table has rows for (databases x workers per database).
const SLOTS: usize = 64;
/// Recent batches kept for rates (`pg_vision_indexing.rows_per_s`).
const BATCHES: usize = 512;
/// Tables passed over after their batch had to be stopped by ending the worker.
const PENALTIES: usize = 64;
/// How long such a table is passed over, in microseconds (an hour).
const PENALTY: i64 = 3_600_000_000;

#[derive(Copy, Clone, PartialEq, Eq)]
#[repr(u8)]
enum Activity {
    Starting,
    Idle,
    Embedding,
    /// pg_vision 0.7.0 or later is not installed in the worker's database (an older
    /// version needs ALTER EXTENSION pg_vision UPDATE).
    NoExtension,
    /// The last batch failed as a whole (see the server log); retried at the next wake.
    Failing,
}

impl Activity {
    fn name(self) -> &'static str {
        match self {
            Activity::Starting => "starting",
            Activity::Idle => "idle",
            Activity::Embedding => "embedding",
            Activity::NoExtension => "no extension",
            Activity::Failing => "failing",
        }
    }
}

#[derive(Copy, Clone)]
struct Worker {
    /// 0: free.
    pid: i32,
    database: u32,
    /// The worker's `PGPROC` latch (shared memory, same address in every process).
    latch: usize,
    activity: Activity,
    /// The table of the batch in progress, or of the last one.
    relation: u32,
    since: i64,
    batches: u64,
    rows: u64,
    failed: u64,
}

#[derive(Copy, Clone)]
struct Batch {
    pid: i32,
    database: u32,
    relation: u32,
    claimed: u32,
    embedded: u32,
    failed: u32,
    retried: u32,
    started: i64,
    ended: i64,
}

/// A table whose batch ran past twice `pg_vision.indexer_batch_timeout` and was stopped by
/// ending the worker: no worker takes it before `until`.
#[derive(Copy, Clone)]
struct Penalty {
    database: u32,
    relation: u32,
    until: i64,
}

#[derive(Copy, Clone)]
pub struct State {
    workers: [Worker; SLOTS],
    batches: [Batch; BATCHES],
    next_batch: usize,
    penalties: [Penalty; PENALTIES],
}

// SAFETY: plain old data (integers and an address that is the same in every process).
unsafe impl PGRXSharedMemory for State {}

impl State {
    const EMPTY: State = State {
        workers: [Worker {
            pid: 0,
            database: 0,
            latch: 0,
            activity: Activity::Starting,
            relation: 0,
            since: 0,
            batches: 0,
            rows: 0,
            failed: 0,
        }; SLOTS],
        batches: [Batch {
            pid: 0,
            database: 0,
            relation: 0,
            claimed: 0,
            embedded: 0,
            failed: 0,
            retried: 0,
            started: 0,
            ended: 0,
        }; BATCHES],
        next_batch: 0,
        penalties: [Penalty { database: 0, relation: 0, until: 0 }; PENALTIES],
    };
}

static SHARED: PgLwLock<State> = unsafe { PgLwLock::new(c"pg_vision_indexer") };
static SHARED_ON: AtomicBool = AtomicBool::new(false);

/// From `_PG_init` under `shared_preload_libraries`: the shared table, and the workers.
pub fn init_shared() {
    pg_shmem_init!(SHARED = State::EMPTY);
    SHARED_ON.store(true, Ordering::Relaxed);
    let databases = match guc::indexer_databases() {
        Ok(d) => d,
        Err(e) => {
            warning!("{e}: no pg_vision indexer started");
            return;
        }
    };
    let per_database = guc::indexer_workers();
    if databases.len() * per_database > SLOTS {
        warning!(
            "pg_vision.indexer_databases x pg_vision.indexer_workers is {}, over {SLOTS}: no pg_vision indexer started",
            databases.len() * per_database
        );
        return;
    }
    for database in &databases {
        for i in 0..per_database {
            BackgroundWorkerBuilder::new(&format!("pg_vision indexer {} for {database}", i + 1))
                .set_type(WORKER_TYPE)
                .set_library("pg_vision")
                .set_function("pg_vision_indexer_main")
                .set_extra(database)
                .enable_spi_access()
                .set_start_time(BgWorkerStartTime::RecoveryFinished)
                .set_restart_time(Some(std::time::Duration::from_secs(5)))
                .load();
        }
    }
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

// --- waking the workers at commit ---------------------------------------------------------

thread_local! {
    /// This transaction queued rows.
    static WAKE: Cell<bool> = const { Cell::new(false) };
    static CALLBACK: Cell<bool> = const { Cell::new(false) };
    /// `served_here()`, once found.
    static SERVED: Cell<Option<bool>> = const { Cell::new(None) };
    /// This backend said once that no worker serves its database.
    static WARNED: Cell<bool> = const { Cell::new(false) };
    /// The secret `pg_vision_index_batch` passes to `pg_vision_fetch_image` while this
    /// worker runs a batch (0: none).
    static FETCH_TOKEN: Cell<i64> = const { Cell::new(0) };
    /// The table of the batch this worker is running (0: none), for `drain` when it fails.
    static BATCH_RELATION: Cell<u32> = const { Cell::new(0) };
}

/// Whether pg_vision's workers were started for this backend's database. Asked for every
/// queued row, so found once per backend: the database and the setting (read at server
/// start) cannot change under it.
fn served_here() -> bool {
    SERVED.with(|s| match s.get() {
        Some(served) => served,
        None => {
            let served = find_served_here();
            s.set(Some(served));
            served
        }
    })
}

fn find_served_here() -> bool {
    if !SHARED_ON.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: the name of this backend's database, from the catalog.
    let here = unsafe {
        let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if p.is_null() {
            return false;
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    guc::indexer_databases().map(|list| list.contains(&here)).unwrap_or(false)
}

/// Called by the trigger after it queues a row: when this transaction commits, the
/// workers of this database are woken. (Before the commit they could not see the row.)
#[pg_extern(volatile, parallel_restricted)]
fn pg_vision_wake_indexer() {
    if !served_here() {
        if !WARNED.with(|w| w.replace(true)) {
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_WARNING,
                "pg_vision: rows are queued for asynchronous indexing, but no pg_vision background worker serves this database: they stay queued",
                "pg_vision_wake_indexer",
            )
            .set_hint("add this database to pg_vision.indexer_databases (with shared_preload_libraries = 'pg_vision'), then restart the server")
            .report(PgLogLevel::WARNING);
        }
        return;
    }
    WAKE.with(|w| w.set(true));
    if !CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a callback run at every transaction end of this backend.
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::{XACT_EVENT_ABORT, XACT_EVENT_COMMIT, XACT_EVENT_PREPARE};
    if event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT && event != XACT_EVENT_PREPARE {
        return;
    }
    // A prepared transaction's rows are found at the next naptime.
    if WAKE.with(|w| w.replace(false)) && event == XACT_EVENT_COMMIT {
        // SAFETY: reads this backend's database id.
        let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
        let state = SHARED.share();
        for w in state.workers.iter().filter(|w| w.pid != 0 && w.database == database && w.latch != 0) {
            // SAFETY: the latch of a live worker's PGPROC, in shared memory; setting a
            // latch is safe from any process and never raises.
            unsafe { pg_sys::SetLatch(w.latch as *mut pg_sys::Latch) };
        }
    }
}

// --- the worker ---------------------------------------------------------------------------

/// What one call of `pg_vision_index_batch` did.
struct Done {
    relation: u32,
    claimed: i32,
    embedded: i32,
    failed: i32,
    retried: i32,
}

// PostgreSQL's signal handlers themselves (pgrx binds them as Rust wrappers, which cannot
// be installed as handlers).
extern "C-unwind" {
    fn SignalHandlerForConfigReload(signal: std::ffi::c_int);
    fn die(signal: std::ffi::c_int);
}

/// The worker's own timeout that ends it when a batch outlives its cancel (0: none yet).
static HARD_TIMEOUT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// Set when that timeout fired: the worker is ending because of its batch's table.
static HARD_STOPPED: AtomicBool = AtomicBool::new(false);

/// The hard stop, in the signal handler: the worker ends at its next interrupt check, as
/// `die()` (SIGTERM) makes it; the owner's code cannot catch a FATAL.
unsafe extern "C" fn hard_stop() {
    HARD_STOPPED.store(true, Ordering::Relaxed);
    // SAFETY: the flags PostgreSQL's own die() sets, and a latch set from a signal handler.
    unsafe {
        pg_sys::ProcDiePending = 1;
        pg_sys::InterruptPending = 1;
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

/// Arms the batch's timeouts: its cancel at `pg_vision.indexer_batch_timeout`, the hard stop
/// at twice that.
fn arm_batch_timeouts() {
    let ms = guc::indexer_batch_timeout_ms();
    let hard = HARD_TIMEOUT.load(Ordering::Relaxed);
    if ms > 0 && hard != 0 {
        // SAFETY: timeouts registered for this process (STATEMENT_TIMEOUT by InitPostgres).
        unsafe {
            idle::enable_timeout_after(idle::STATEMENT_TIMEOUT, ms);
            idle::enable_timeout_after(hard, ms.saturating_mul(2));
        }
    }
}

fn disarm_batch_timeouts() {
    let hard = HARD_TIMEOUT.load(Ordering::Relaxed);
    if hard != 0 {
        // SAFETY: as above; disabling a timeout that is not active does nothing.
        unsafe {
            idle::disable_timeout(idle::STATEMENT_TIMEOUT, false);
            idle::disable_timeout(hard, false);
        }
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_vision_indexer_main(_arg: pg_sys::Datum) {
    // SIGTERM (shutdown, pg_terminate_backend) ends the worker at its next interrupt check,
    // inside a batch too, as for any backend; SIGHUP rereads the configuration.
    // SAFETY: PostgreSQL's own handlers, installed before signals are unblocked.
    unsafe {
        pg_sys::pqsignal_be(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let database = BackgroundWorker::get_extra().to_owned();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    let slot = claim_slot();
    // SAFETY: frees the slot when the worker exits, however it exits but a crash (which
    // reinitialises shared memory); registers the batches' hard stop.
    unsafe {
        pg_sys::before_shmem_exit(Some(free_slot), pg_sys::Datum::from(slot));
        HARD_TIMEOUT.store(idle::RegisterTimeout(idle::USER_TIMEOUT, hard_stop), Ordering::Relaxed);
    }
    log!("pg_vision indexer started for database \"{database}\"");
    loop {
        drain(slot);
        // SAFETY: waits on this process's latch; WL_EXIT_ON_PM_DEATH exits if the
        // postmaster dies.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                guc::indexer_naptime_ms() as _,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        check_for_interrupts!();
        reload_configuration();
    }
}

fn reload_configuration() {
    // SAFETY: the flag SignalHandlerForConfigReload sets; ProcessConfigFile is what every
    // auxiliary process calls on it.
    unsafe {
        if std::ptr::read_volatile(std::ptr::addr_of!(pg_sys::ConfigReloadPending)) != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

fn claim_slot() -> usize {
    // SAFETY: this process's pid, database and PGPROC.
    let (pid, database, latch) = unsafe {
        (pg_sys::MyProcPid, pg_sys::MyDatabaseId.to_u32(), std::ptr::addr_of_mut!((*pg_sys::MyProc).procLatch) as usize)
    };
    let mut state = SHARED.exclusive();
    // A slot left by a worker that died without cleaning up cannot exist (a crash resets
    // shared memory), so a free slot is one with pid 0.
    let Some(slot) = state.workers.iter().position(|w| w.pid == 0) else {
        drop(state);
        error!("pg_vision indexer: no free slot in the shared table ({SLOTS} workers at most)");
    };
    state.workers[slot] =
        Worker { pid, database, latch, activity: Activity::Starting, since: now(), ..State::EMPTY.workers[0] };
    slot
}

#[pg_guard]
unsafe extern "C-unwind" fn free_slot(_code: i32, arg: pg_sys::Datum) {
    let slot = arg.value();
    let mut state = SHARED.exclusive();
    if slot < SLOTS {
        let w = state.workers[slot];
        if HARD_STOPPED.load(Ordering::Relaxed) && w.relation != 0 {
            // The oldest entry (or a free one) makes room.
            let until = now() + PENALTY;
            let i = (0..PENALTIES).min_by_key(|&i| state.penalties[i].until).unwrap_or(0);
            state.penalties[i] = Penalty { database: w.database, relation: w.relation, until };
            drop(state);
            warning!(
                "pg_vision indexer: the batch of table {} ran past twice pg_vision.indexer_batch_timeout, cancel ignored: the worker ends, and the table is passed over for an hour",
                w.relation
            );
            state = SHARED.exclusive();
        }
        state.workers[slot].pid = 0;
        state.workers[slot].latch = 0;
    }
}

fn set_activity(slot: usize, activity: Activity, relation: Option<u32>) {
    let mut state = SHARED.exclusive();
    let w = &mut state.workers[slot];
    if w.activity != activity {
        w.since = now();
    }
    w.activity = activity;
    if let Some(r) = relation {
        w.relation = r;
    }
}

fn record(slot: usize, d: &Done, started: i64) {
    let mut state = SHARED.exclusive();
    let w = &mut state.workers[slot];
    w.batches += 1;
    w.rows += d.embedded.max(0) as u64;
    w.failed += d.failed.max(0) as u64;
    w.relation = d.relation;
    let b = Batch {
        pid: w.pid,
        database: w.database,
        relation: d.relation,
        claimed: d.claimed.max(0) as u32,
        embedded: d.embedded.max(0) as u32,
        failed: d.failed.max(0) as u32,
        retried: d.retried.max(0) as u32,
        started,
        ended: now(),
    };
    let i = state.next_batch % BATCHES;
    state.batches[i] = b;
    state.next_batch = state.next_batch.wrapping_add(1);
}

/// Batches until the queue has nothing due. A table whose batch cannot run now (its lock is
/// held elsewhere) or fails as a whole is skipped for the rest of the round, and a failed
/// one's due rows are put back with the queue's backoff (`postpone`): whatever is wrong
/// with one tenant's table, the workers go on embedding the others'.
fn drain(slot: usize) {
    let mut skipped: Vec<pg_sys::Oid> = Vec::new();
    loop {
        let started = now();
        BATCH_RELATION.with(|r| r.set(0));
        match in_transaction(|| one_batch(slot, &skipped)) {
            Ok(Some(done)) => {
                record(slot, &done, started);
                if done.relation == 0 {
                    set_activity(slot, Activity::Idle, None);
                    return;
                }
                if done.claimed == 0 {
                    // Locked (a DROP, TRUNCATE or LOCK TABLE in progress) or taken by
                    // another worker: the other tables first, this one at the next round.
                    skipped.push(pg_sys::Oid::from(done.relation));
                }
            }
            Ok(None) => return,
            Err(failure) => {
                warning!(
                    "pg_vision indexer: a batch failed and was rolled back, its rows stay queued: {}",
                    failure.message
                );
                set_activity(slot, Activity::Failing, None);
                let relation = BATCH_RELATION.with(|r| r.replace(0));
                if relation == 0 {
                    return;
                }
                let relation = pg_sys::Oid::from(relation);
                skipped.push(relation);
                let error = format!("{}: the batch failed: {}", failure.sqlstate, failure.message);
                if let Err(e) = in_transaction(|| postpone(relation, &error)) {
                    warning!(
                        "pg_vision indexer: cannot postpone the queued rows of table {}: {}",
                        relation.to_u32(),
                        e.message
                    );
                }
            }
        }
        check_for_interrupts!();
        reload_configuration();
    }
}

/// Why a transaction of the worker failed.
struct Failure {
    sqlstate: String,
    message: String,
}

/// Runs `f` in a transaction of its own; an error rolls it back and is returned. The
/// worker's own statements (run as the superuser it connected as) see only `pg_catalog`:
/// no function or operator of a schema another role can create in (a database's
/// `search_path`, a `public` open to all) is ever called with its rights.
fn in_transaction<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, Failure> {
    // SAFETY: starts a transaction with a snapshot, as PostgreSQL's own workers do; the
    // search_path set at a new GUC nest level is undone when the transaction ends.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::NewGUCNestLevel();
        pg_sys::RestrictSearchPath();
    }
    PgTryBuilder::new(|| {
        let r = f();
        // SAFETY: ends the transaction started above; a failing commit raises, caught below.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(r)
    })
    .catch_others(|e| {
        disarm_batch_timeouts();
        FETCH_TOKEN.with(|t| t.set(0));
        let failure = match &e {
            pg_sys::panic::CaughtError::PostgresError(r)
            | pg_sys::panic::CaughtError::ErrorReport(r)
            | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => Failure {
                // SAFETY: unpack_sql_state returns a static buffer holding the 5 characters.
                sqlstate: unsafe { std::ffi::CStr::from_ptr(pg_sys::unpack_sql_state(r.sql_error_code() as i32)) }
                    .to_string_lossy()
                    .into_owned(),
                message: r.message().to_owned(),
            },
        };
        // SAFETY: the error was caught and flushed; abort undoes the transaction, its
        // snapshots, the settings and the user id set for the batch.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(failure)
    })
    .execute()
}

/// The extension's schema, quoted, if a version with the current batch function (0.7.0 or
/// later) is installed in this database.
fn extension_schema() -> Option<String> {
    Spi::get_one(
        "SELECT (SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e
                   JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                  WHERE e.extname = 'pg_vision'
                    AND pg_catalog.to_regprocedure(pg_catalog.quote_ident(n.nspname)
                          || '.pg_vision_index_batch(pg_catalog.regclass, integer, integer, bigint)') IS NOT NULL)",
    )
    .unwrap_or(None)
}

/// The tables of this database no worker takes now (`Penalty`).
fn penalized() -> Vec<pg_sys::Oid> {
    // SAFETY: reads this backend's database id.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let at = now();
    let state = SHARED.share();
    state
        .penalties
        .iter()
        .filter(|p| p.database == database && p.relation != 0 && p.until > at)
        .map(|p| pg_sys::Oid::from(p.relation))
        .collect()
}

/// After a batch of `relation` failed as a whole: its due rows are tried again later, after
/// `pg_vision_retry_delay` as after a row's passing failure, so a table whose
/// batches keep failing costs a failed batch per backoff, not one per wake. Rows that
/// another transaction holds are left as they are, never waited for.
fn postpone(relation: pg_sys::Oid, error: &str) {
    let Some(schema) = extension_schema() else { return };
    Spi::run_with_args(
        &format!(
            "UPDATE {schema}.pg_vision_queue
                SET attempts = LEAST(GREATEST(attempts, 0), 1000000) + 1,
                    next_try = pg_catalog.now() + {schema}.pg_vision_retry_delay(attempts),
                    last_error = $2
              WHERE id IN (SELECT q.id FROM {schema}.pg_vision_queue q
                            WHERE q.relation::pg_catalog.oid = $1 AND q.next_try <= pg_catalog.now()
                              FOR UPDATE SKIP LOCKED)"
        ),
        &[relation.into(), error.into()],
    )
    .unwrap_or_else(|e| error!("{e}"));
}

/// A secret for one batch: `pg_vision_fetch_image` fetches only with it, so code of the
/// table's owner that runs inside the batch (its triggers, policies, defaults) cannot
/// fetch URLs of its own choosing and read what comes back.
fn new_fetch_token() -> i64 {
    let mut bytes = [0u8; 8];
    // SAFETY: fills the buffer from the operating system's random source.
    if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) } {
        error!("pg_vision indexer: could not generate random bytes");
    }
    match i64::from_ne_bytes(bytes) {
        0 => 1,
        t => t,
    }
}

/// One batch in the current transaction: `None` when there is nothing to do (or no
/// extension to do it with). Tables in `skipped` are not looked at.
fn one_batch(slot: usize, skipped: &[pg_sys::Oid]) -> Option<Done> {
    let Some(schema) = extension_schema() else {
        set_activity(slot, Activity::NoExtension, None);
        return None;
    };
    let mut skipped = skipped.to_vec();
    skipped.extend(penalized());
    // The oldest due row names the table; other workers skip the rows this one locks.
    let relation: Option<pg_sys::Oid> = Spi::get_one_with_args(
        &format!(
            "SELECT (SELECT q.relation::pg_catalog.oid FROM {schema}.pg_vision_queue q
                      WHERE q.next_try <= pg_catalog.now() AND q.relation::pg_catalog.oid <> ALL ($1)
                      ORDER BY q.id LIMIT 1 FOR UPDATE OF q SKIP LOCKED)"
        ),
        &[skipped.into()],
    )
    .unwrap_or(None);
    let Some(relation) = relation else {
        return Some(Done { relation: 0, claimed: 0, embedded: 0, failed: 0, retried: 0 });
    };
    BATCH_RELATION.with(|r| r.set(relation.to_u32()));
    set_activity(slot, Activity::Embedding, Some(relation.to_u32()));
    // The table is locked for the batch, as an INSERT would lock it: a DROP or TRUNCATE
    // waits for the batch, and one in progress makes the worker come back later instead
    // of failing halfway.
    // SAFETY: a lock on an oid, released at the end of the transaction.
    if !unsafe { pg_sys::ConditionalLockRelationOid(relation, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) } {
        return Some(Done { relation: relation.to_u32(), claimed: 0, embedded: 0, failed: 0, retried: 0 });
    }
    let owner: Option<pg_sys::Oid> =
        Spi::get_one_with_args("SELECT (SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1)", &[relation.into()])
            .unwrap_or(None);
    let Some(owner) = owner else {
        // The table was dropped: its queued rows have nothing left to index.
        let claimed: i64 = Spi::get_one_with_args(
            &format!(
                "WITH d AS (DELETE FROM {schema}.pg_vision_queue
                             WHERE id IN (SELECT q.id FROM {schema}.pg_vision_queue q
                                           WHERE q.relation::pg_catalog.oid = $1 FOR UPDATE SKIP LOCKED)
                            RETURNING 1)
                 SELECT count(*) FROM d"
            ),
            &[relation.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(0);
        return Some(Done { relation: relation.to_u32(), claimed: claimed as i32, embedded: 0, failed: 0, retried: 0 });
    };
    let token = new_fetch_token();
    FETCH_TOKEN.with(|t| t.set(token));
    arm_batch_timeouts();
    let counts: Vec<i32> = as_owner(owner, || {
        Spi::get_one_with_args::<Vec<i32>>(
            &format!(
                "SELECT ARRAY[claimed, embedded, failed, retried]
                   FROM {schema}.pg_vision_index_batch($1::pg_catalog.regclass, $2, $3, $4)"
            ),
            &[relation.into(), guc::indexer_batch_size().into(), guc::indexer_max_attempts().into(), token.into()],
        )
        .unwrap_or_else(|e| error!("pg_vision indexer: {e}"))
        .unwrap_or_default()
    });
    disarm_batch_timeouts();
    FETCH_TOKEN.with(|t| t.set(0));
    let count = |i: usize| counts.get(i).copied().unwrap_or(0);
    let (claimed, embedded, failed, retried) = (count(0), count(1), count(2), count(3));
    Some(Done { relation: relation.to_u32(), claimed, embedded, failed, retried })
}

/// Runs `f` as `owner` in a security-restricted operation with a safe search_path, the way
/// PostgreSQL runs a table owner's code for maintenance: `f` cannot SET ROLE back, create
/// temporary objects, or be steered by a search_path. An error aborts the transaction,
/// which restores the user id and the settings.
fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: PostgreSQL's own calls for this (see ExecRefreshMatView, vacuum_rel).
    let nest = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_context | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
        );
        let nest = pg_sys::NewGUCNestLevel();
        pg_sys::RestrictSearchPath();
        nest
    };
    let r = f();
    // SAFETY: undoes the above, in reverse.
    unsafe {
        pg_sys::AtEOXact_GUC(false, nest);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
    }
    r
}

// --- SQL ----------------------------------------------------------------------------------

/// The arguments of a table's trigger, as `TG_ARGV` gives them to the trigger itself (the
/// workers read the trigger's configuration with it).
#[pg_extern(stable, strict, parallel_safe)]
fn pg_vision_trigger_args(rel: pg_sys::Oid, trigger: &str) -> Option<Vec<String>> {
    // Read-only SPI (see `ask`): callable on a hot standby and in a parallel worker.
    let args: Option<Vec<u8>> = Spi::connect(|c| {
        c.select(
            "SELECT tgargs FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2",
            Some(1),
            &[rel.into(), trigger.into()],
        )
        .ok()
        .and_then(|t| t.first().get_one::<Vec<u8>>().ok().flatten())
    });
    // tgargs: each argument followed by a NUL byte.
    let args = args?;
    let mut parts: Vec<String> = args.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    parts.pop(); // after the last NUL
    Some(parts)
}

/// Which tables' indexing the current role may see in the workers' listings: those it owns
/// or may write (directly or through a partitioned parent), as `pg_vision_indexing` and the
/// queue's row-level security show them; every table for `pg_read_all_stats` members.
struct Visible {
    all: bool,
    seen: std::collections::HashMap<u32, bool>,
}

/// A read-only query's one boolean (false for none). Read-only SPI: `Spi::get_one` marks
/// the transaction as writing, which assigns a transaction id, and that fails on a hot
/// standby and in a parallel worker.
fn ask(query: &str, args: &[pgrx::datum::DatumWithOid]) -> bool {
    Spi::connect(|c| c.select(query, Some(1), args).ok().and_then(|t| t.first().get_one::<bool>().ok().flatten()))
        .unwrap_or(false)
}

impl Visible {
    fn new() -> Visible {
        let all = ask("SELECT pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE')", &[]);
        Visible { all, seen: std::collections::HashMap::new() }
    }

    fn relation(&mut self, relation: u32) -> bool {
        if relation == 0 {
            return false;
        }
        if self.all {
            return true;
        }
        *self.seen.entry(relation).or_insert_with(|| {
            ask(
                "SELECT coalesce((SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = $1), false)
                     OR coalesce(pg_catalog.has_any_column_privilege($1, 'INSERT, UPDATE'), false)
                     OR coalesce((SELECT pg_catalog.bool_or(pg_catalog.has_any_column_privilege(a.relid, 'INSERT, UPDATE'))
                                    FROM pg_catalog.pg_partition_ancestors($1::pg_catalog.regclass) a), false)",
                &[pg_sys::Oid::from(relation).into()],
            )
        })
    }
}

/// Each background worker: its state, the table it works on (or last worked on; NULL for a
/// table the caller may not see, see `Visible`), and what it has done since it started.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn pg_vision_indexer_workers() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(database, String),
        name!(state, String),
        name!(relation, Option<pg_sys::Oid>),
        name!(since, Option<TimestampWithTimeZone>),
        name!(batches, i64),
        name!(rows, i64),
        name!(failed, i64),
    ),
> {
    let workers: Vec<Worker> = if SHARED_ON.load(Ordering::Relaxed) {
        SHARED.share().workers.iter().filter(|w| w.pid != 0).copied().collect()
    } else {
        Vec::new()
    };
    let mut visible = Visible::new();
    let rows: Vec<_> = workers
        .into_iter()
        .map(|w| {
            // SAFETY: catalog lookup of a database name by oid; NULL when it is gone.
            let database = unsafe {
                let p = pg_sys::get_database_name(pg_sys::Oid::from(w.database));
                if p.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let relation = visible.relation(w.relation).then(|| pg_sys::Oid::from(w.relation));
            (
                w.pid,
                database,
                w.activity.name().to_owned(),
                relation,
                TimestampWithTimeZone::try_from(w.since).ok(),
                w.batches as i64,
                w.rows as i64,
                w.failed as i64,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// The workers' recent batches (the last 512, this database's, of the tables the caller may
/// see, see `Visible`), newest first: for `pg_vision_indexing`'s rates.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn pg_vision_indexer_batches() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(relation, pg_sys::Oid),
        name!(claimed, i32),
        name!(rows, i32),
        name!(failed, i32),
        name!(retried, i32),
        name!(started, Option<TimestampWithTimeZone>),
        name!(ended, Option<TimestampWithTimeZone>),
    ),
> {
    // SAFETY: reads this backend's database id.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let mut batches: Vec<Batch> = if SHARED_ON.load(Ordering::Relaxed) {
        SHARED
            .share()
            .batches
            .iter()
            .filter(|b| b.pid != 0 && b.database == database && b.relation != 0)
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    let mut visible = Visible::new();
    batches.retain(|b| visible.relation(b.relation));
    batches.sort_by_key(|b| std::cmp::Reverse(b.ended));
    TableIterator::new(batches.into_iter().map(|b| {
        (
            b.pid,
            pg_sys::Oid::from(b.relation),
            b.claimed as i32,
            b.embedded as i32,
            b.failed as i32,
            b.retried as i32,
            TimestampWithTimeZone::try_from(b.started).ok(),
            TimestampWithTimeZone::try_from(b.ended).ok(),
        )
    }))
}

/// Whether this process is one of pg_vision's background workers.
fn is_indexer() -> bool {
    // SAFETY: MyBgworkerEntry is set in background workers and NULL elsewhere; bgw_type is
    // a NUL-terminated fixed-size buffer.
    unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        !entry.is_null() && std::ffi::CStr::from_ptr((*entry).bgw_type.as_ptr()).to_bytes() == WORKER_TYPE.as_bytes()
    }
}

/// The bytes behind an image URL, fetched under `pg_vision.url_allowlist`,
/// `pg_vision.url_timeout` and `pg_vision.max_image_bytes`. Only pg_vision's background
/// workers may call it, and only `pg_vision_index_batch` with the secret the worker gave
/// it for the batch: a fetch never happens inside a user's transaction, and the table
/// owner's code that runs inside a batch (triggers, policies) cannot fetch and read a URL.
/// (Its C symbol is new in 0.7.0: 0.6.0's one-argument `pg_vision_fetch_image` keeps its
/// own symbol, below.)
#[pg_extern(name = "pg_vision_fetch_image", volatile, strict, parallel_unsafe)]
fn pg_vision_fetch_image_for_batch(url: &str, token: i64) -> Vec<u8> {
    if !is_indexer() || token == 0 || FETCH_TOKEN.with(|t| t.get()) != token {
        refuse_fetch();
    }
    crate::fetch::fetch_image(url)
}

/// 0.6.0's `pg_vision_fetch_image(url)`, as a database not yet updated to 0.7.0 declares it:
/// it has no batch secret, so it always refuses (the workers skip such databases until
/// `ALTER EXTENSION pg_vision UPDATE`). Its own symbol, so that the new two-argument
/// function is never called with one argument.
#[pg_extern(sql = false, volatile, strict, parallel_unsafe)]
fn pg_vision_fetch_image(_url: &str) -> Vec<u8> {
    refuse_fetch()
}

fn refuse_fetch() -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        "only pg_vision's background workers fetch image URLs",
        "pg_vision_fetch_image",
    )
    .set_hint("queue the row with the trigger's mode=async; pg_vision.indexer_databases must name this database")
    .report(PgLogLevel::ERROR);
    unreachable!()
}
