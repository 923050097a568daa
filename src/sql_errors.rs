//! Core errors become PostgreSQL ERRORs: a SQLSTATE per kind of failure, and the SQL
//! wording of the facts the core reports (`pg_vision_core::Fact`): the settings, functions
//! and set-up commands a user of the extension can act on.

use pg_vision_core::error::{FetchProblem, LibraryProblem};
use pg_vision_core::{Error, Fact, Kind, Limit};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub fn sqlstate(kind: Kind) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match kind {
        Kind::InvalidImage => ERRCODE_INVALID_BINARY_REPRESENTATION, // 22P03
        Kind::UnsupportedFormat => ERRCODE_FEATURE_NOT_SUPPORTED,    // 0A000
        Kind::ImageTooLarge => ERRCODE_PROGRAM_LIMIT_EXCEEDED,       // 54000
        Kind::UnknownModel => ERRCODE_UNDEFINED_OBJECT,              // 42704
        Kind::FileMissing => ERRCODE_UNDEFINED_FILE,                 // 58P01
        Kind::RuntimeLoad => ERRCODE_SYSTEM_ERROR,                   // 58000
        Kind::BadModel => ERRCODE_CONFIG_FILE_ERROR,                 // F0000
        Kind::Inference => ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,       // 38000
        Kind::NonFinite => ERRCODE_DATA_EXCEPTION,                   // 22000
        Kind::InvalidArgument => ERRCODE_INVALID_PARAMETER_VALUE,    // 22023
        Kind::OutOfMemory => ERRCODE_OUT_OF_MEMORY,                  // 53200
        Kind::LimitExceeded => ERRCODE_PROGRAM_LIMIT_EXCEEDED,       // 54000
        Kind::Interrupted => ERRCODE_QUERY_CANCELED,                 // 57014
        Kind::Fetch => ERRCODE_IO_ERROR,                             // 58030
    }
}

/// The SQLSTATE of `e`: its kind's, except for a malformed URL allowlist (F0000), and a fetch
/// that failed for good (an HTTP error
/// status like 404, a certificate refused, a broken response) is a data exception (22000),
/// so that the background workers record it at once instead of retrying it
/// (`pg_vision_permanent_failure` in sql/indexing.sql); a fetch that may succeed later
/// (timeout, refused connection, 503) stays 58030.
fn code(e: &Error) -> PgSqlErrorCode {
    // A malformed allowlist is the configuration's fault, not the row's: F0000, which the
    // workers retry (with backoff) until a superuser fixes it.
    if e.fact == Some(Fact::Fetch(FetchProblem::BadAllowlist)) {
        return PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR;
    }
    if e.kind == Kind::Fetch && !pg_vision_core::fetch::retryable(e) {
        return PgSqlErrorCode::ERRCODE_DATA_EXCEPTION;
    }
    sqlstate(e.kind)
}

/// Where to look for models, in SQL terms.
const LIST_MODELS: &str = "SELECT * FROM pg_vision_models()";

/// The error as a SQL user reads it: the core's message and hint, with the settings,
/// functions and commands behind its fact named.
pub fn in_sql_terms(mut e: Error) -> Error {
    let Some(fact) = e.fact else { return e };
    let hint = |e: &Error| e.hint.clone().unwrap_or_default();
    match fact {
        Fact::OverLimit { limit: Limit::Base64Bytes, .. } => {
            e.message.push_str(" (pg_vision.max_image_bytes)");
            e.hint = Some("raise pg_vision.max_image_bytes, or downscale the image before sending it".into());
        }
        Fact::OverLimit { .. } => {}
        Fact::Fetch(FetchProblem::BadAllowlist) => {
            e.message.push_str(" (pg_vision.url_allowlist)");
            e.hint = Some("fix pg_vision.url_allowlist (postgresql.conf or ALTER SYSTEM), then SELECT pg_reload_conf()".into());
        }
        Fact::Fetch(FetchProblem::NotAllowed | FetchProblem::AddressRefused) => {
            e.message.push_str(" (pg_vision.url_allowlist)");
            e.hint = Some("a superuser adds the host to pg_vision.url_allowlist (postgresql.conf or ALTER SYSTEM, then pg_reload_conf())".into());
        }
        Fact::Fetch(FetchProblem::Timeout) => e.message.push_str(" (pg_vision.url_timeout)"),
        Fact::Fetch(_) => {}
        Fact::NotAnImage => e.hint = Some(format!("{}: image_from_base64(text)", hint(&e))),
        Fact::InvalidModelName => e.hint = Some(format!("{}; {LIST_MODELS} lists them", hint(&e))),
        Fact::NoTextTower => e.hint = Some(format!("{}; {LIST_MODELS} lists the models", hint(&e))),
        Fact::UnknownModel => {
            e.hint = Some(format!(
                "{LIST_MODELS} lists the installed models; pg_vision.model_dir sets where they are"
            ))
        }
        Fact::ModelDirUnreadable => {
            e.hint = Some("set pg_vision.model_dir to the directory holding the model manifests".into())
        }
        Fact::RuntimeLibrary(problem) => {
            e.hint = Some(
                match problem {
                    LibraryProblem::NotAbsolute => "set pg_vision.onnxruntime_library to an absolute path",
                    LibraryProblem::Missing => {
                        "run `make setup` (it installs onnxruntime), or set pg_vision.onnxruntime_library to libonnxruntime.so's path"
                    }
                    LibraryProblem::CannotLoad => {
                        "pg_vision needs onnxruntime 1.17 or newer (tested with 1.32.0); run `make setup` or point pg_vision.onnxruntime_library at a matching libonnxruntime.so"
                    }
                    LibraryProblem::AlreadyLoaded => {
                        "open a new connection for the new pg_vision.onnxruntime_library to take effect"
                    }
                }
                .into(),
            )
        }
    }
    e
}

/// Raises `e` as an ERROR, in SQL terms. Does not return.
pub fn raise(e: Error) -> ! {
    let e = in_sql_terms(e);
    let mut report = ErrorReport::new(code(&e), e.message, "pg_vision");
    if let Some(hint) = e.hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Unwraps a core result or raises its error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for pg_vision_core::Result<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}
