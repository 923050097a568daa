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
    /// The library's own version string ("1.32.0"): prepared files are tied to it.
    version: String,
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
    let version = library_version(library).unwrap_or_default();
    Ok(Runtime { env, library: library.to_path_buf(), version })
}

/// The version string of the ONNX Runtime library loaded in this process ("1.32.0"),
/// loading it from `library` first if needed.
pub fn version(library: &Path) -> Result<&'static str> {
    environment(library)?;
    Ok(RUNTIME.get().map_or("", |rt| rt.version.as_str()))
}

/// `OrtGetApiBase()->GetVersionString()` of the already loaded `library` (`ort` reads it
/// but does not expose it): a second dlopen of a loaded library returns the same handle.
fn library_version(library: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(library.as_os_str().as_bytes()).ok()?;
    // SAFETY: RTLD_NOLOAD only finds a library this process already loaded (ort did);
    // OrtGetApiBase has this signature in every ONNX Runtime 1.x, and the string it
    // returns is static; the extra handle is closed (the library stays loaded by ort).
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let sym = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let out = if sym.is_null() {
            None
        } else {
            let get: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase = std::mem::transmute(sym);
            let base = get();
            (!base.is_null())
                .then(|| std::ffi::CStr::from_ptr(((*base).GetVersionString)()).to_string_lossy().into_owned())
        };
        libc::dlclose(handle);
        out
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
}
