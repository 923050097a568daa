//! ONNX Runtime that cannot be loaded: clear errors carrying the fact behind them. Its own
//! test binary, so its own process: a process has one ONNX Runtime environment, for good,
//! and this test needs a process that has none.

use std::path::Path;

use pg_vision_core::error::{Fact, LibraryProblem};
use pg_vision_core::runtime::environment;
use pg_vision_core::Kind;

#[test]
fn missing_library_is_a_clear_error() {
    let e = environment(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
    assert_eq!(e.kind, Kind::FileMissing);
    assert_eq!(e.message, "ONNX Runtime library /nonexistent/libonnxruntime.so does not exist");
    // The host words the remedy (the extension: `make setup`, its library setting).
    assert_eq!(e.fact, Some(Fact::RuntimeLibrary(LibraryProblem::Missing)));
    let e = environment(Path::new("relative.so")).unwrap_err();
    assert_eq!(e.kind, Kind::FileMissing);
    assert_eq!(e.fact, Some(Fact::RuntimeLibrary(LibraryProblem::NotAbsolute)));
}
