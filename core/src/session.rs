//! ONNX Runtime sessions as pg_vision builds and runs them: one options set for every
//! tower, threads started with signals blocked, and runs that a host can stop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};

use crate::error::{Error, Kind, Result};
use crate::manifest::{Origin, Source};
use crate::prepared::{self, Choice, Host};
use crate::runtime;

/// How sessions are built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Path of libonnxruntime.so.
    pub library: PathBuf,
    /// Intra-op threads per session as configured: 0 means one per core, and a session
    /// never gets more than the cores (`intra_threads`).
    pub intra_threads: usize,
    /// Load a tower's prepared files when they match this process (`prepared.rs`).
    pub shared_weights: bool,
}

impl SessionOptions {
    /// The intra-op threads a session gets: one per core for 0, never more than the cores.
    /// Any caller may ask for many; threads beyond the cores only add contention (and,
    /// across many sessions, exhaust the process limit).
    pub fn intra_threads(&self) -> usize {
        let cores = runtime::cores();
        match self.intra_threads {
            0 => cores,
            n => n.min(cores),
        }
    }
}

pub(crate) fn ort_err(kind: Kind, context: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::new(kind, format!("{context}: {e}"))
}

/// The file a tower is loaded from, chosen between its plain ONNX file and its prepared
/// files (`prepared::choose`), and the identity of everything the choice read.
pub struct Resolved {
    pub choice: Choice,
    /// The file ONNX Runtime reads: the prepared graph or the plain file.
    pub load: PathBuf,
    /// The files that decided it: a change to any of them loads the tower again.
    pub origin: Origin,
}

/// Chooses between `plain` (whose manifest declares `declared_sha256`, if anything) and its
/// prepared files. The plain file is checked against the declared SHA-256 when it is the
/// one loaded; the prepared files are used only when their sidecar records that same
/// SHA-256 (or, nothing declared, the plain file's own), so they hold the weights the
/// manifest names and the plain file need not be read at all.
pub fn resolve(
    manifest: Option<Source>,
    plain: Source,
    declared_sha256: Option<&str>,
    opts: &SessionOptions,
    model: &str,
    fetch_hint: &str,
) -> Result<Resolved> {
    let choice = if opts.shared_weights && prepared::sidecar_path(&plain.path).exists() {
        let host = Host { ort_version: runtime::version(&opts.library)?.to_owned(), cpu: prepared::cpu_features() };
        let sha = match declared_sha256 {
            Some(s) => s.to_owned(),
            None => plain.sha256().map_err(|e| {
                Error::new(Kind::FileMissing, format!("model \"{model}\": cannot read {}: {e}", plain.path.display()))
            })?,
        };
        prepared::choose(&plain.path, &sha, &host)
    } else {
        Choice::Plain { why: None }
    };
    Ok(match &choice {
        Choice::Prepared(p) => Resolved {
            load: p.onnx.path.clone(),
            origin: Origin { manifest, onnx: p.onnx.clone(), also: vec![p.data.clone(), p.sidecar.clone(), plain] },
            choice,
        },
        Choice::Plain { why } => {
            plain.check_sha256(declared_sha256, model, fetch_hint)?;
            // A sidecar that did not match is watched too: once models.sh rewrites it, the
            // tower is loaded again and the prepared files chosen.
            let also = if why.is_some() {
                Source::of(prepared::sidecar_path(&plain.path)).into_iter().collect()
            } else {
                Vec::new()
            };
            Resolved { load: plain.path.clone(), origin: Origin { manifest, onnx: plain, also }, choice }
        }
    })
}

/// The data file `resolve` would map for `plain`, found cheaply (a sidecar read, no
/// hashing), for a caller that reserves memory before loading: `None` when it would load
/// the plain file, or cannot tell without hashing it (no SHA-256 declared).
pub fn planned(plain: &Path, declared_sha256: Option<&str>, opts: &SessionOptions) -> Option<Source> {
    if !opts.shared_weights || !prepared::sidecar_path(plain).exists() {
        return None;
    }
    let host = Host { ort_version: runtime::version(&opts.library).ok()?.to_owned(), cpu: prepared::cpu_features() };
    match prepared::choose(plain, declared_sha256?, &host) {
        Choice::Prepared(p) => Some(p.data),
        Choice::Plain { .. } => None,
    }
}

/// A session for one ONNX file, with pg_vision's options: full graph optimisation (lower
/// levels lose ONNX Runtime's blocked-layout convolutions, which the CPU models depend on
/// for speed), the configured intra-op threads, one inter-op thread, no spinning (a
/// spinning pool burns cores that other backends need). Session creation starts the
/// intra-op pool, so it runs with signals blocked: its threads inherit a blocked mask.
///
/// A prepared file (`prepared` true) was optimised at level all when it was written:
/// optimising it again would only spend load time, so it is loaded as it is. Its data
/// file is mapped by ONNX Runtime, prepacked weights included.
pub(crate) fn build(onnx: &Path, prepared: bool, opts: &SessionOptions, context: &str) -> Result<Session> {
    let env = runtime::environment(&opts.library)?;
    let level = if prepared { GraphOptimizationLevel::Disable } else { GraphOptimizationLevel::All };
    runtime::with_signals_blocked(|| -> Result<Session> {
        let err = |e: ort::Error<_>| Error::new(Kind::BadModel, format!("{context}: {e}"));
        Session::builder(env)
            .map_err(ort_err(Kind::BadModel, context))?
            .with_optimization_level(level)
            .map_err(err)?
            .with_intra_threads(opts.intra_threads())
            .map_err(err)?
            .with_inter_threads(1)
            .map_err(err)?
            .with_intra_op_spinning(false)
            .map_err(err)?
            .with_inter_op_spinning(false)
            .map_err(err)?
            .commit_from_file(onnx)
            .map_err(ort_err(Kind::BadModel, context))
    })
}

/// What the activation arena does when a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arena {
    /// Keep its memory for the next run (faster: no fresh mapping and faulting).
    Keep,
    /// Give its unused memory back. ONNX Runtime's arena grows to the largest run and
    /// keeps that size, memory the budget never sees; batch callers shrink it after their
    /// last run.
    Shrink,
}

/// Run options for one run: `arena` says whether the activation arena shrinks after it.
pub(crate) fn run_options(arena: Arena, context: &str) -> Result<RunOptions> {
    let mut options = RunOptions::new().map_err(ort_err(Kind::Inference, context))?;
    if arena == Arena::Shrink {
        options.set("memory.enable_memory_arena_shrinkage", "cpu:0").map_err(ort_err(Kind::Inference, context))?;
    }
    Ok(options)
}

/// How often a running model's watcher polls `stop`.
const STOP_POLL: Duration = Duration::from_millis(5);

/// Runs `f` (a session run under `options`) while a watcher thread polls `stop` and
/// terminates the run when it returns true. The watcher touches nothing but `stop` and
/// `options`, and is joined before this returns. A run that fails once `stop` has fired
/// was terminated, which is `Kind::Interrupted`; any other failure is worded by `fail`.
pub(crate) fn stoppable<T>(
    options: &RunOptions,
    stop: fn() -> bool,
    f: impl FnOnce() -> ort::Result<T>,
    fail: impl FnOnce(ort::Error) -> Error,
) -> Result<T> {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = runtime::with_signals_blocked(|| {
            s.spawn(|| {
                while !done.load(Ordering::Acquire) {
                    if stop() {
                        let _ = options.terminate();
                        return;
                    }
                    std::thread::park_timeout(STOP_POLL);
                }
            })
        });
        let result = f();
        done.store(true, Ordering::Release);
        watcher.thread().unpark();
        result.map_err(|e| if stop() { Error::interrupted() } else { fail(e) })
    })
}

/// Checks that every tensor name in `wanted` is among the graph's `have`; else the error
/// made by `missing(name, "a, b, c")`.
pub(crate) fn check_names<'a>(
    have: &[&str],
    wanted: impl IntoIterator<Item = &'a str>,
    missing: impl Fn(&str, &str) -> Error,
) -> Result<()> {
    for name in wanted {
        if !have.contains(&name) {
            return Err(missing(name, &have.join(", ")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intra_threads_are_bounded_by_the_cores() {
        let opts = |n| SessionOptions { library: PathBuf::new(), intra_threads: n, shared_weights: true };
        let cores = runtime::cores();
        assert_eq!(opts(0).intra_threads(), cores);
        assert_eq!(opts(1).intra_threads(), 1);
        assert_eq!(opts(10_000).intra_threads(), cores);
    }
}
