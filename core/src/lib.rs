//! pg_vision's Postgres-free core: image bytes and texts to embedding vectors through
//! ONNX Runtime. Nothing here knows about PostgreSQL; errors carry facts (`error::Fact`)
//! that the extension words in SQL terms.
//!
//! Modules, lowest first (each uses only modules above it):
//! - `error.rs`: the one error type, its kinds, limits and facts; stop requests
//! - `manifest.rs`: model manifests (image tower, optional text tower), `Tower`, `MAX_DIM`;
//!   `Origin`, the identity of the files a tower was loaded from
//! - `runtime.rs`: the process's ONNX Runtime environment, cores, signal blocking
//! - `fetch.rs`: images by URL over HTTP(S) under an allowlist, for background workers
//!   (uses `error`, and `runtime` only to block signals on its helper thread)
//! - `heap.rs`: heap bytes in use, to measure what a loaded model holds
//! - `jpeg.rs`: JPEG through libjpeg-turbo, at a reduced DCT scale when allowed
//! - `decode.rs`: image bytes to upright 8-bit RGB, with limits and stop polls; base64
//! - `preprocess.rs`: decoded image to a model's input tensor, by its manifest's recipe
//! - `prepared.rs`: prepared (shared-weights) files: the sidecar, the choice, mapped bytes
//! - `session.rs`: ONNX Runtime sessions: options, building, stoppable runs
//! - `output.rs`: output tensors to checked, normalised vectors; `check_vector`
//! - `tokenize.rs`: CLIP's text clean-up and BPE tokeniser (no ONNX Runtime)
//! - `memo.rs`: a bounded memo of recent embeddings, keyed by SHA-256
//! - `image_model.rs`: a loaded image tower (`ImageModel`)
//! - `text_model.rs`: a loaded text tower (`TextModel`)
//! - `embed.rs`: image bytes to vectors, one image or many in overlapped batches
//!
//! Integration tests that need a process of their own (one ONNX Runtime environment per
//! process) are in `tests/`.

pub mod decode;
pub mod embed;
pub mod error;
pub mod fetch;
pub mod heap;
pub mod image_model;
pub mod jpeg;
pub mod manifest;
pub mod memo;
pub mod output;
pub mod prepared;
pub mod preprocess;
pub mod runtime;
pub mod session;
pub mod text_model;
pub mod tokenize;

pub use error::{Error, Fact, Kind, Limit, Result};
