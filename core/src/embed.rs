//! Image bytes to vectors: decode, preprocess, run. Times each phase so the benchmark
//! can report where the time goes.

use std::time::{Duration, Instant};

use crate::decode::{self, Options};
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
pub fn embed_image(model: &mut Model, bytes: &[u8], opts: &Options, output: Option<&str>) -> Result<(Vec<f32>, Timings)> {
    let mut t = Timings::default();
    let start = Instant::now();
    let img = decode::decode_rgb8(bytes, model.manifest.alpha, opts, preprocess::min_decode_side(&model.manifest))?;
    t.decode = start.elapsed();
    let start = Instant::now();
    let mut input = vec![0f32; preprocess::tensor_len(&model.manifest)];
    preprocess::preprocess(&img, &model.manifest, &mut input)?;
    t.preprocess = start.elapsed();
    let start = Instant::now();
    let mut out = model.run(&input, 1, output, false)?;
    t.inference = start.elapsed();
    Ok((out.pop().expect("run returns one vector per image"), t))
}

/// Decodes and preprocesses `images` on up to `threads` threads into `out` (one tensor
/// per image, packed). Pure Rust work: the threads never call back into the host, and
/// they start with every signal blocked (`runtime::with_signals_blocked`).
/// `first` is the 1-based position of `images[0]` in the caller's input, for error messages.
pub fn prepare_parallel(m: &Manifest, images: &[&[u8]], first: usize, opts: &Options, threads: usize, out: &mut [f32]) -> Result<()> {
    let len = preprocess::tensor_len(m);
    let prepare = |bytes: &[u8], slot: &mut [f32]| -> Result<()> {
        let img = decode::decode_rgb8(bytes, m.alpha, opts, preprocess::min_decode_side(m))?;
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

/// Embeds many images, `batch` at a time. A producer thread decodes and preprocesses
/// batch b+1 (on `threads` threads, `prepare_parallel`) while the calling thread runs
/// batch b through the model, so decoding and inference overlap instead of taking turns.
/// `between_batches` runs on the calling thread before each batch (the extension checks
/// for query cancel there); an error from it, or an unwinding panic, stops the producer
/// at its next batch: it is blocked sending into a channel whose receiver is gone.
pub fn embed_images(
    model: &mut Model,
    images: &[&[u8]],
    opts: &Options,
    batch: usize,
    threads: usize,
    mut between_batches: impl FnMut() -> Result<()>,
) -> Result<Vec<Vec<f32>>> {
    let manifest = model.manifest.clone();
    let len = preprocess::tensor_len(&manifest);
    let batch = batch.max(1);
    let batches = images.len().div_ceil(batch);
    let mut vectors = Vec::with_capacity(images.len());
    std::thread::scope(|s| -> Result<()> {
        // Declared inside the scope: dropping `ready` on any early exit is what releases
        // the producer, and the scope waits for it.
        let (tx, ready) = std::sync::mpsc::sync_channel::<Result<Vec<f32>>>(1);
        let manifest = &manifest;
        crate::runtime::with_signals_blocked(|| {
            s.spawn(move || {
                for (b, chunk) in images.chunks(batch).enumerate() {
                    let mut input = vec![0f32; chunk.len() * len];
                    let prepared = prepare_parallel(manifest, chunk, 1 + b * batch, opts, threads, &mut input).map(|()| input);
                    let failed = prepared.is_err();
                    if tx.send(prepared).is_err() || failed {
                        break;
                    }
                }
            })
        });
        for b in 0..batches {
            between_batches()?;
            let input = ready.recv().map_err(|_| crate::Error::new(crate::Kind::InvalidImage, "image decoding stopped unexpectedly"))??;
            // The last run gives the batch-sized activations back (Model::run).
            vectors.extend(model.run(&input, input.len() / len, None, b + 1 == batches)?);
        }
        Ok(())
    })?;
    // The batch's decoded images and the arena's released activations are far bigger
    // than a single call's; give the freed pages back rather than leave them resident.
    crate::memory::release_free_pages();
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
        prepare_parallel(&m, &refs, 1, &Options::default(), 3, &mut parallel).unwrap();
        for (i, f) in refs.iter().enumerate() {
            let mut one = vec![0f32; len];
            preprocess::preprocess(&decode::decode_rgb8(f, m.alpha, &Options::default(), preprocess::min_decode_side(&m)).unwrap(), &m, &mut one).unwrap();
            assert_eq!(&parallel[i * len..(i + 1) * len], &one[..], "image {i}");
        }
    }

    #[test]
    fn a_bad_image_is_named_by_its_position() {
        let m = manifest();
        let good = png(64, 64, 3);
        let images: Vec<&[u8]> = vec![&good, &good, b"junk", &good, b"more junk"];
        let mut out = vec![0f32; preprocess::tensor_len(&m) * images.len()];
        let e = prepare_parallel(&m, &images, 11, &Options::default(), 2, &mut out).unwrap_err();
        // The first bad one in input order, counted from `first`.
        assert!(e.message.starts_with("image 13 (1-based): bytes are not a recognised image"), "{}", e.message);
    }

    /// The pipelined batch path against one-at-a-time embedding, with a cancel and a bad
    /// image; runs EfficientNet-Lite0 (make models) in a child process.
    #[test]
    fn embed_images_equals_single_and_stops_if_available() {
        let dir = crate::testing::models_dir();
        let Some(library) = crate::testing::ort_child("embed::tests::embed_images_equals_single_and_stops_if_available", &[&dir.join("efficientnet-lite0.onnx")]) else {
            return;
        };
        let opts = crate::model::SessionOptions { library, intra_threads: 1 };
        let mut model = Model::load(&dir, "efficientnet", &opts).unwrap();
        let files: Vec<Vec<u8>> = (1..=7).map(|i| png(200 + i * 30, 180 + i * 7, (i as u8).wrapping_mul(53))).collect();
        let refs: Vec<&[u8]> = files.iter().map(|f| f.as_slice()).collect();
        let mut calls = 0;
        let batched = embed_images(&mut model, &refs, &Options::default(), 3, 2, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((batched.len(), calls), (7, 3), "7 images in batches of 3: 3 batches");
        for (i, f) in refs.iter().enumerate() {
            let (one, _) = embed_image(&mut model, f, &Options::default(), None).unwrap();
            let worst = one.iter().zip(&batched[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-3, "image {i}: batched differs from single by {worst}");
        }
        assert_ne!(batched[0], batched[1]);

        // A cancel before the second batch stops the work with the callback's error.
        let mut calls = 0;
        let e = embed_images(&mut model, &refs, &Options::default(), 2, 2, || {
            calls += 1;
            if calls == 2 { Err(crate::Error::new(crate::Kind::InvalidArgument, "canceled")) } else { Ok(()) }
        })
        .unwrap_err();
        assert_eq!((e.message.as_str(), calls), ("canceled", 2));

        // A bad image fails the call with its position, whichever batch it is in.
        let mut bad = refs.clone();
        bad[4] = b"not an image";
        let e = embed_images(&mut model, &bad, &Options::default(), 2, 2, || Ok(())).unwrap_err();
        assert!(e.message.starts_with("image 5 (1-based)"), "{e}");
        println!("embed_images ok: 7 images, batches of 3, max difference from single below 1e-3");
    }
}
