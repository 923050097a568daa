//! pg_vision's Postgres-free core: image decoding (`decode`), preprocessing by a model's
//! recipe (`preprocess`), model manifests (`manifest`), ONNX Runtime (`runtime`, `model`),
//! what a loaded model costs in memory (`memory`) and the whole image-to-vector path
//! (`embed`). Nothing here knows about PostgreSQL.

pub mod decode;
pub mod embed;
pub mod error;
pub mod jpeg;
pub mod manifest;
pub mod memory;
pub mod model;
pub mod preprocess;
pub mod runtime;
#[cfg(test)]
mod testing;
pub mod text;

pub use error::{Error, Kind, Result};
pub use image;
