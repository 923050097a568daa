//! Core errors become PostgreSQL ERRORs with a SQLSTATE chosen per kind of failure.

use pg_vision_core::{Error, Kind};
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
    }
}

/// Raises `e` as an ERROR. Does not return.
pub fn raise(e: Error) -> ! {
    let mut report = ErrorReport::new(sqlstate(e.kind), e.message, "pg_vision");
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
