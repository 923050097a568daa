//! One error type for the whole core. An error says what was wrong (`message`) and what to
//! do about it in terms that hold for any host (`hint`). Where a host would say more in
//! its own terms (its settings, its functions, its set-up commands), the error also
//! carries the fact behind it (`fact`): the extension maps each `Kind` to a SQLSTATE and
//! each `Fact` to its SQL wording (`src/sql_errors.rs`).

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
    /// Loading the model would exceed the memory budget, or an allocation failed.
    OutOfMemory,
    /// An argument is over a fixed limit (batch size, text length): rejected before any
    /// work or allocation sized by it.
    LimitExceeded,
    /// The work was stopped because the host asked (query cancel, timeout, shutdown):
    /// the host raises its own error once the worker threads have stopped.
    Interrupted,
    /// Fetching an image by URL failed on the way: name resolution, connection, TLS, the
    /// deadline, or the server's answer (an error status, a malformed response, too many
    /// redirects). `fetch::retryable` tells passing failures from lasting ones.
    Fetch,
}

/// A limit that an input went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Encoded bytes of one image (`decode::Options::max_bytes`).
    ImageBytes,
    /// Bytes that one base64 text decodes to (also `decode::Options::max_bytes`).
    Base64Bytes,
    /// Width x height of one image (`decode::Options::max_pixels`).
    ImagePixels,
    /// Images per model run (`embed::MAX_BATCH`).
    BatchSize,
    /// Bytes of one text (`tokenize::MAX_TEXT_BYTES`).
    TextBytes,
}

/// Why the ONNX Runtime library could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryProblem {
    /// Its path is relative.
    NotAbsolute,
    /// No file at its path.
    Missing,
    /// The file is not an ONNX Runtime this build can use.
    CannotLoad,
    /// The process already loaded another one.
    AlreadyLoaded,
}

/// The fact behind an error, for a host that words it in its own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// `value` is over the limit `max`.
    OverLimit { limit: Limit, value: u64, max: u64 },
    /// A model name outside the alphabet model names use.
    InvalidModelName,
    /// No manifest for the model name in the model directory.
    UnknownModel,
    /// The model directory cannot be read.
    ModelDirUnreadable,
    /// A text embedding asked of a model without a text tower.
    NoTextTower,
    /// Bytes that are not an image in any format (base64 text sent as bytes, say).
    NotAnImage,
    /// The ONNX Runtime library cannot be used.
    RuntimeLibrary(LibraryProblem),
    /// Fetching an image by URL failed (`fetch.rs`), or the URL or allowlist is unusable.
    Fetch(FetchProblem),
}

/// What went wrong fetching an image by URL (`fetch.rs`). `fetch::retryable` sorts these
/// into failures worth another try later and lasting ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchProblem {
    /// The allowlist text is malformed (`fetch::Allowlist::parse`).
    BadAllowlist,
    /// The URL is malformed, or not http:// or https://.
    BadUrl,
    /// The URL's host and port are on no allowlist entry (for a redirect: its target's).
    NotAllowed,
    /// The host resolves to an address that only an entry naming that host or address
    /// may reach (loopback, private, link-local, ...), or to one never reachable
    /// (unspecified, multicast, broadcast).
    AddressRefused,
    /// The host name could not be resolved.
    Resolve,
    /// No connection to any of the host's addresses (refused, unreachable).
    Connect,
    /// The deadline passed (connecting, sending, waiting, or reading).
    Timeout,
    /// TLS failed: handshake, or a certificate that does not verify.
    Tls,
    /// The connection failed after it was made (reset, closed early).
    Io,
    /// The server's answer is not HTTP/1.x as pg_vision reads it (malformed, compressed).
    Protocol,
    /// More redirects than allowed, a redirect without a usable target, or one from
    /// https to http.
    Redirect,
    /// The server answered with this HTTP status (not 2xx and not a followed redirect).
    Status(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
    pub fact: Option<Fact>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), hint: None, fact: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_fact(mut self, fact: Fact) -> Self {
        self.fact = Some(fact);
        self
    }

    /// The error for work stopped because the host asked (a `stop` poll returned true).
    pub fn interrupted() -> Self {
        Error::new(Kind::Interrupted, "stopped on request")
    }
}

/// A `stop` poll that never asks to stop.
pub fn never() -> bool {
    false
}

/// `Err(Error::interrupted())` when `stop()` asks to stop.
pub fn check_stop(stop: &dyn Fn() -> bool) -> Result<()> {
    if stop() {
        Err(Error::interrupted())
    } else {
        Ok(())
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
