//! ONNX Runtime, loaded from a shared library at first use (`ort`'s `load-dynamic`).
//!
//! One environment per process, created lazily: never in the postmaster, where a
//! runtime inherited across fork() is unsafe. Every thread ONNX Runtime starts is started
//! with all signals blocked, so a host's signal handlers (PostgreSQL's) never run on it.

use std::path::{Path, PathBuf};

use once_cell::sync::OnceCell;
use ort::environment::Environment;

use crate::error::{Error, Fact, Kind, LibraryProblem, Result};

struct Runtime {
    env: Environment,
    library: PathBuf,
}

static RUNTIME: OnceCell<Runtime> = OnceCell::new();

/// The process's ONNX Runtime environment, loading `library` the first time.
/// Once loaded, the library cannot change for the life of the process.
pub fn environment(library: &Path) -> Result<&'static Environment> {
    let rt = RUNTIME.get_or_try_init(|| load(library))?;
    if rt.library != library {
        return Err(Error::new(
            Kind::RuntimeLoad,
            format!(
                "this session already loaded ONNX Runtime from {}; it cannot switch to {}",
                rt.library.display(),
                library.display()
            ),
        )
        .with_fact(Fact::RuntimeLibrary(LibraryProblem::AlreadyLoaded)));
    }
    Ok(&rt.env)
}

fn load(library: &Path) -> Result<Runtime> {
    let problem = |kind, message: String, p| Error::new(kind, message).with_fact(Fact::RuntimeLibrary(p));
    if !library.is_absolute() {
        return Err(problem(
            Kind::FileMissing,
            format!("ONNX Runtime library path \"{}\" is not absolute", library.display()),
            LibraryProblem::NotAbsolute,
        ));
    }
    if !library.is_file() {
        return Err(problem(
            Kind::FileMissing,
            format!("ONNX Runtime library {} does not exist", library.display()),
            LibraryProblem::Missing,
        ));
    }
    let env = with_signals_blocked(|| -> Result<Environment> {
        let builder = ort::init_from(library).map_err(|e| {
            problem(
                Kind::RuntimeLoad,
                format!("cannot load ONNX Runtime from {}: {e}", library.display()),
                LibraryProblem::CannotLoad,
            )
        })?;
        builder
            .with_name("pg_vision")
            .with_telemetry(false)
            .build()
            .map_err(|e| Error::new(Kind::RuntimeLoad, format!("cannot create the ONNX Runtime environment: {e}")))
    })?;
    Ok(Runtime { env, library: library.to_path_buf() })
}

/// The cores this process may use (at least 1): the bound for inference and decoding threads.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f` with every signal blocked in the calling thread, so threads it creates
/// inherit a mask that keeps the host's signal handlers off them; restores the mask after.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain POSIX calls on stack-allocated sigset_t values.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        struct Restore(libc::sigset_t);
        impl Drop for Restore {
            fn drop(&mut self) {
                unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
            }
        }
        let _restore = Restore(old);
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_blocked_inside_and_restored_after() {
        let blocked = |sig| unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            libc::sigismember(&cur, sig) == 1
        };
        assert!(!blocked(libc::SIGINT));
        let in_thread = with_signals_blocked(|| std::thread::spawn(move || blocked(libc::SIGINT)).join().unwrap());
        assert!(in_thread, "a thread started inside must inherit the blocked mask");
        assert!(!blocked(libc::SIGINT));
    }
}
