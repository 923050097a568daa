//! What the tests that run real models share: where the models are, and whether the files
//! they need (ONNX files, the ONNX Runtime library) exist, and test images.

// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use pg_vision_core::session::SessionOptions;

/// The repository's `models/` directory (ONNX files appear there after `make models`).
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// Session options with the library `PG_VISION_ORT_LIB` names (scripts/test.sh sets it),
/// if it and every file of `needs` exist; else prints why the test is skipped and
/// returns `None`.
pub fn session_options(needs: &[&Path]) -> Option<SessionOptions> {
    let library = PathBuf::from(std::env::var("PG_VISION_ORT_LIB").unwrap_or_default());
    if let Some(missing) = needs.iter().copied().chain([library.as_path()]).find(|p| !p.is_file()) {
        println!("skipped: needs {} (make models; PG_VISION_ORT_LIB for the library)", missing.display());
        return None;
    }
    Some(SessionOptions { library, intra_threads: 1, shared_weights: true })
}

/// A PNG of a deterministic pattern (`seed` varies it).
pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(seed), (y as u8).wrapping_add(seed), seed])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
