//! Helpers for unit tests that run real models through ONNX Runtime.
//!
//! A process has one ONNX Runtime environment, for good, and
//! `runtime::tests::missing_library_is_a_clear_error` needs a process without one. So
//! each such test re-runs itself in a child process of the test binary.

use std::path::{Path, PathBuf};

/// The repository's `models/` directory (ONNX files appear there after `make models`).
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// Set in the child process.
const CHILD: &str = "PG_VISION_ORT_TEST_CHILD";

/// For the test named `test` (its full path, e.g. `embed::tests::x`), which needs the
/// files `needs` and ONNX Runtime (`PG_VISION_ORT_LIB`, set by scripts/test.sh):
/// - files missing: prints "skipped" and returns `None`;
/// - in the parent: runs the test alone in a child process, asserts it passed, echoes
///   its lines containing " ok", and returns `None`;
/// - in the child: returns the library path; the caller runs the real test.
pub fn ort_child(test: &str, needs: &[&Path]) -> Option<PathBuf> {
    let library = PathBuf::from(std::env::var("PG_VISION_ORT_LIB").unwrap_or_default());
    if let Some(missing) = needs.iter().copied().chain([library.as_path()]).find(|p| !p.is_file()) {
        println!("skipped: needs {} (make models; PG_VISION_ORT_LIB for the library)", missing.display());
        return None;
    }
    if std::env::var_os(CHILD).is_some() {
        return Some(library);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && log.contains("1 passed"), "child test {test} failed:\n{log}");
    for line in log.lines().filter(|l| l.contains(" ok") && !l.contains("test result")) {
        println!("{line}");
    }
    None
}
