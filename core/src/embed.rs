//! Image bytes to vectors: decode, preprocess, run. Times each phase so the benchmark
//! can report where the time goes.

use std::time::{Duration, Instant};

use crate::decode::{self, Limits};
use crate::error::Result;
use crate::manifest::Manifest;
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

/// Decodes and preprocesses `images` on up to `threads` threads into `out` (one tensor
/// per image, packed). Pure Rust work: the threads never call back into the host, and
/// they start with every signal blocked (`runtime::with_signals_blocked`).
/// `first` is the 1-based position of `images[0]` in the caller's input, for error messages.
pub fn prepare_parallel(m: &Manifest, images: &[&[u8]], first: usize, limits: &Limits, threads: usize, out: &mut [f32]) -> Result<()> {
    let len = preprocess::tensor_len(m);
    let prepare = |bytes: &[u8], slot: &mut [f32]| -> Result<()> {
        let img = decode::decode_rgb8(bytes, m.alpha, limits)?;
        preprocess::preprocess(&img, m, slot)
    };
    let threads = threads.clamp(1, images.len().max(1));
    let per_thread = images.len().div_ceil(threads);
    let results: Vec<Result<()>> = crate::runtime::with_signals_blocked(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = images
                .chunks(per_thread)
                .zip(out.chunks_mut(per_thread * len))
                .enumerate()
                .map(|(t, (imgs, slots))| {
                    s.spawn(move || {
                        for (i, (bytes, slot)) in imgs.iter().zip(slots.chunks_mut(len)).enumerate() {
                            prepare(bytes, slot).map_err(|e| at_position(e, first + t * per_thread + i))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(crate::Error::new(crate::Kind::InvalidImage, "image decoding panicked")))).collect()
        })
    });
    // The first failing image in input order, so the error is deterministic.
    results.into_iter().collect()
}

fn at_position(mut e: crate::Error, position: usize) -> crate::Error {
    e.message = format!("image {position} (1-based): {}", e.message);
    e
}

/// Embeds many images: `batch` at a time, each batch decoded in parallel on `threads`
/// threads, then run through the model in one call. `between_batches` runs on the
/// calling thread before each batch (the extension checks for query cancel there); an
/// error from it stops the work.
pub fn embed_images(
    model: &mut Model,
    images: &[&[u8]],
    limits: &Limits,
    batch: usize,
    threads: usize,
    mut between_batches: impl FnMut() -> Result<()>,
) -> Result<Vec<Vec<f32>>> {
    let len = preprocess::tensor_len(&model.manifest);
    let batch = batch.max(1);
    let mut input = vec![0f32; len * batch.min(images.len())];
    let mut vectors = Vec::with_capacity(images.len());
    for (b, chunk) in images.chunks(batch).enumerate() {
        between_batches()?;
        let input = &mut input[..chunk.len() * len];
        prepare_parallel(&model.manifest, chunk, 1 + b * batch, limits, threads, input)?;
        vectors.extend(model.run(input, chunk.len(), None)?);
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x as u8).wrapping_mul(seed), (y as u8).wrapping_add(seed), seed]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn manifest() -> Manifest {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/efficientnet.json");
        Manifest::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
    }

    #[test]
    fn parallel_preparation_equals_serial_in_order() {
        let m = manifest();
        let len = preprocess::tensor_len(&m);
        let files: Vec<Vec<u8>> = (1..=7).map(|i| png(300 + i * 10, 250, (i as u8).wrapping_mul(37))).collect();
        let refs: Vec<&[u8]> = files.iter().map(|f| f.as_slice()).collect();
        let mut parallel = vec![0f32; len * refs.len()];
        prepare_parallel(&m, &refs, 1, &Limits::default(), 3, &mut parallel).unwrap();
        for (i, f) in refs.iter().enumerate() {
            let mut one = vec![0f32; len];
            preprocess::preprocess(&decode::decode_rgb8(f, m.alpha, &Limits::default()).unwrap(), &m, &mut one).unwrap();
            assert_eq!(&parallel[i * len..(i + 1) * len], &one[..], "image {i}");
        }
    }

    #[test]
    fn a_bad_image_is_named_by_its_position() {
        let m = manifest();
        let good = png(64, 64, 3);
        let images: Vec<&[u8]> = vec![&good, &good, b"junk", &good, b"more junk"];
        let mut out = vec![0f32; preprocess::tensor_len(&m) * images.len()];
        let e = prepare_parallel(&m, &images, 11, &Limits::default(), 2, &mut out).unwrap_err();
        // The first bad one in input order, counted from `first`.
        assert!(e.message.starts_with("image 13 (1-based): bytes are not a recognised image"), "{}", e.message);
    }
}
