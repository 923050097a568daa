//! One error type for the whole core. The extension maps each `Kind` to a SQLSTATE
//! (`src/errors.rs`); the message says what was wrong, the hint what to do.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The bytes are not an image we can decode (truncated, corrupt, not an image at all).
    InvalidImage,
    /// A recognised format that pg_vision does not decode.
    UnsupportedFormat,
    /// The image is larger than the configured limits.
    ImageTooLarge,
    /// No manifest for that model name.
    UnknownModel,
    /// A file that should exist does not (model weights, runtime library).
    FileMissing,
    /// ONNX Runtime could not be loaded.
    RuntimeLoad,
    /// A manifest is malformed, or the model does not match its manifest.
    BadModel,
    /// ONNX Runtime failed while running the model.
    Inference,
    /// The model produced NaN or infinity.
    NonFinite,
    /// A caller-supplied argument is invalid (unknown output name, bad base64, ...).
    InvalidArgument,
    /// Loading the model would exceed the memory budget (`pg_vision.memory_budget`).
    OutOfMemory,
    /// An argument is over a fixed limit (batch size, text length): rejected before any
    /// work or allocation sized by it.
    LimitExceeded,
    /// The work was stopped because the host asked (query cancel, timeout, shutdown):
    /// the host raises its own error once the worker threads have stopped.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), hint: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
