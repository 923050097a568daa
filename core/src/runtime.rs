//! ONNX Runtime, loaded from a shared library at first use (`ort`'s `load-dynamic`).
//!
//! One environment per process, created lazily: never in the postmaster, where a
//! runtime inherited across fork() is unsafe. Every thread ONNX Runtime starts is started
//! with all signals blocked, so a host's signal handlers (PostgreSQL's) never run on it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use once_cell::sync::OnceCell;
use ort::environment::Environment;

use crate::error::{Error, Kind, Result};

struct Runtime {
    env: Environment,
    library: PathBuf,
}

static RUNTIME: OnceCell<Runtime> = OnceCell::new();
static INIT: Mutex<()> = Mutex::new(());

/// The process's ONNX Runtime environment, loading `library` the first time.
/// Once loaded, the library cannot change for the life of the process.
pub fn environment(library: &Path) -> Result<&'static Environment> {
    if let Some(rt) = RUNTIME.get() {
        return check_same(rt, library).map(|_| &rt.env);
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return check_same(rt, library).map(|_| &rt.env);
    }
    if !library.is_absolute() {
        return Err(Error::new(
            Kind::FileMissing,
            format!("ONNX Runtime library path \"{}\" is not absolute", library.display()),
        )
        .with_hint("set pg_vision.onnxruntime_library to an absolute path"));
    }
    if !library.is_file() {
        return Err(Error::new(Kind::FileMissing, format!("ONNX Runtime library {} does not exist", library.display()))
            .with_hint("run `make setup` (it installs onnxruntime), or set pg_vision.onnxruntime_library to libonnxruntime.so's path"));
    }
    let env = with_signals_blocked(|| -> Result<Environment> {
        let builder = ort::init_from(library).map_err(|e| {
            Error::new(Kind::RuntimeLoad, format!("cannot load ONNX Runtime from {}: {e}", library.display()))
                .with_hint("pg_vision needs onnxruntime 1.17 or newer (tested with 1.32.0); run `make setup` or point pg_vision.onnxruntime_library at a matching libonnxruntime.so")
        })?;
        builder
            .with_name("pg_vision")
            .with_telemetry(false)
            .build()
            .map_err(|e| Error::new(Kind::RuntimeLoad, format!("cannot create the ONNX Runtime environment: {e}")))
    })?;
    let rt = RUNTIME.get_or_init(|| Runtime { env, library: library.to_path_buf() });
    Ok(&rt.env)
}

/// The library this process loaded, if any.
pub fn loaded_library() -> Option<&'static Path> {
    RUNTIME.get().map(|rt| rt.library.as_path())
}

fn check_same(rt: &Runtime, library: &Path) -> Result<()> {
    if rt.library == library {
        Ok(())
    } else {
        Err(Error::new(
            Kind::RuntimeLoad,
            format!(
                "this session already loaded ONNX Runtime from {}; it cannot switch to {}",
                rt.library.display(),
                library.display()
            ),
        )
        .with_hint("open a new connection for the new pg_vision.onnxruntime_library to take effect"))
    }
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

    #[test]
    fn missing_library_is_a_clear_error() {
        let e = environment(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        assert_eq!(e.kind, Kind::FileMissing);
        assert!(e.hint.unwrap().contains("make setup"));
        assert_eq!(environment(Path::new("relative.so")).unwrap_err().kind, Kind::FileMissing);
    }
}
