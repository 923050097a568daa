//! Image bytes to vectors: decode, preprocess, run. Times each phase so the benchmark
//! can report where the time goes.

use std::time::{Duration, Instant};

use crate::decode::{self, Limits};
use crate::error::Result;
use crate::model::Model;
use crate::preprocess;

#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub decode: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
}

/// Embeds one image; `output` selects an extra output instead of the embedding.
pub fn embed_image(model: &mut Model, bytes: &[u8], limits: &Limits, output: Option<&str>) -> Result<(Vec<f32>, Timings)> {
    let mut t = Timings::default();
    let start = Instant::now();
    let img = decode::decode_rgb8(bytes, model.manifest.alpha, limits)?;
    t.decode = start.elapsed();
    let start = Instant::now();
    let mut input = vec![0f32; preprocess::tensor_len(&model.manifest)];
    preprocess::preprocess(&img, &model.manifest, &mut input)?;
    t.preprocess = start.elapsed();
    let start = Instant::now();
    let mut out = model.run(&input, 1, output)?;
    t.inference = start.elapsed();
    Ok((out.pop().expect("run returns one vector per image"), t))
}
