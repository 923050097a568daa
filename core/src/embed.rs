//! Image bytes to vectors: decode, preprocess, run. Times each phase so the benchmark
//! can report where the time goes.

use std::time::{Duration, Instant};

use crate::decode::{self, Options};
use crate::error::Result;
use crate::error::{Error, Kind};
use crate::manifest::Manifest;
use crate::model::{Model, Run};
use crate::preprocess;

#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub decode: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
}

/// Embeds one image; `output` selects an extra output instead of the embedding.
pub fn embed_image(
    model: &mut Model,
    bytes: &[u8],
    opts: &Options,
    output: Option<&str>,
) -> Result<(Vec<f32>, Timings)> {
    let mut t = Timings::default();
    let start = Instant::now();
    let img = decode::decode_rgb8(bytes, model.manifest.alpha, opts, preprocess::min_decode_side(&model.manifest))?;
    t.decode = start.elapsed();
    opts.check_stop()?;
    let start = Instant::now();
    let mut input = vec![0f32; preprocess::tensor_len(&model.manifest)];
    preprocess::preprocess(&img, &model.manifest, &mut input)?;
    t.preprocess = start.elapsed();
    opts.check_stop()?;
    let start = Instant::now();
    let mut out = model.run(&input, 1, Run { output, stop: opts.stop, ..Run::default() })?;
    t.inference = start.elapsed();
    Ok((out.pop().expect("run returns one vector per image"), t))
}

/// Decodes and preprocesses `images` on up to `threads` threads into `out` (one tensor
/// per image, packed). Pure Rust work: the threads never call back into the host, and
/// they start with every signal blocked (`runtime::with_signals_blocked`).
/// `first` is the 1-based position of `images[0]` in the caller's input, for error messages.
pub fn prepare_parallel(
    m: &Manifest,
    images: &[&[u8]],
    first: usize,
    opts: &Options,
    threads: usize,
    out: &mut [f32],
) -> Result<()> {
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
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::new(Kind::InvalidImage, "image decoding panicked"))))
                .collect()
        })
    });
    // An interrupt wins over image errors (the host raises its own error); otherwise the
    // first failing image in input order, so the error is deterministic.
    if results.iter().any(|r| matches!(r, Err(e) if e.kind == Kind::Interrupted)) {
        return Err(crate::decode::interrupted());
    }
    results.into_iter().collect()
}

fn at_position(mut e: Error, position: usize) -> Error {
    if e.kind == Kind::Interrupted {
        return e;
    }
    e.message = format!("image {position} (1-based): {}", e.message);
    e
}

/// Most images `embed_images` runs through the model at once. On CPU a bigger batch is
/// not faster per image; it only multiplies the activations held in memory.
pub const MAX_BATCH: usize = 64;

/// Most threads that decode at once for one `embed_images` call: with the pixel limit,
/// this bounds the call's peak decoding memory (each decode holds up to about 12 bytes a
/// pixel, `decode::decode_rgb8`).
pub const MAX_DECODE_THREADS: usize = 4;

/// Decode threads for a batch: the cores the model's own `model_threads` intra-op threads
/// leave free (at least one, at most `MAX_DECODE_THREADS`), so decoding does not preempt
/// inference. `model_threads` 0 means one per core, as in ONNX Runtime.
pub fn decode_threads(model_threads: usize) -> usize {
    let cores = crate::runtime::cores();
    let model_threads = if model_threads == 0 { cores } else { model_threads.min(cores) };
    cores.saturating_sub(model_threads).clamp(1, MAX_DECODE_THREADS)
}

/// Embeds many images, `batch` at a time (1 to `MAX_BATCH`). A producer thread decodes
/// and preprocesses batch b+1 (on `threads` threads, `prepare_parallel`) while the calling
/// thread runs batch b through the model, so decoding and inference overlap instead of
/// taking turns. `opts.stop` is polled before each batch, by the decoders and by the model
/// run; when it fires, the producer is stopped and joined before this returns
/// `Kind::Interrupted`, so no thread outlives the call. An unwinding panic stops the
/// producer the same way: it is blocked sending into a channel whose receiver is gone.
pub fn embed_images(
    model: &mut Model,
    images: &[&[u8]],
    opts: &Options,
    batch: usize,
    threads: usize,
) -> Result<Vec<Vec<f32>>> {
    check_batch(batch)?;
    let manifest = model.manifest.clone();
    let len = preprocess::tensor_len(&manifest);
    let batches = images.len().div_ceil(batch);
    let mut vectors = Vec::new();
    vectors.try_reserve_exact(images.len()).map_err(|_| out_of_memory(images.len()))?;
    let threads = threads.clamp(1, MAX_DECODE_THREADS);
    std::thread::scope(|s| -> Result<()> {
        // Declared inside the scope: dropping `ready` on any early exit is what releases
        // the producer, and the scope waits for it.
        let (tx, ready) = std::sync::mpsc::sync_channel::<Result<Vec<f32>>>(1);
        let manifest = &manifest;
        crate::runtime::with_signals_blocked(|| {
            s.spawn(move || {
                for (b, chunk) in images.chunks(batch).enumerate() {
                    let prepared = batch_tensor(chunk.len() * len).and_then(|mut input| {
                        prepare_parallel(manifest, chunk, 1 + b * batch, opts, threads, &mut input).map(|()| input)
                    });
                    let failed = prepared.is_err();
                    if tx.send(prepared).is_err() || failed {
                        break;
                    }
                }
            })
        });
        for b in 0..batches {
            opts.check_stop()?;
            let input =
                ready.recv().map_err(|_| Error::new(Kind::InvalidImage, "image decoding stopped unexpectedly"))??;
            let last = b + 1 == batches;
            vectors.extend(model.run(
                &input,
                input.len() / len,
                Run { shrink_arena: last, stop: opts.stop, ..Run::default() },
            )?);
        }
        Ok(())
    })?;
    // The batch's decoded images and the arena's released activations are far bigger
    // than a single call's; give the freed pages back rather than leave them resident.
    crate::memory::release_free_pages();
    Ok(vectors)
}

/// `batch` must be 1 to `MAX_BATCH`.
pub fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 {
        return Err(Error::new(Kind::InvalidArgument, "batch size must be at least 1"));
    }
    if batch > MAX_BATCH {
        return Err(Error::new(Kind::LimitExceeded, format!("batch size {batch} is over the limit of {MAX_BATCH}"))
            .with_hint(format!(
                "use a batch size of 1 to {MAX_BATCH}: larger batches are not faster on CPU, only bigger in memory"
            )));
    }
    Ok(())
}

/// A zeroed tensor of `len` floats, allocated fallibly.
fn batch_tensor(len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| out_of_memory(len))?;
    v.resize(len, 0f32);
    Ok(v)
}

fn out_of_memory(items: usize) -> Error {
    Error::new(Kind::OutOfMemory, format!("out of memory for a batch buffer of {items} items"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x as u8).wrapping_mul(seed), (y as u8).wrapping_add(seed), seed])
        });
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
            preprocess::preprocess(
                &decode::decode_rgb8(f, m.alpha, &Options::default(), preprocess::min_decode_side(&m)).unwrap(),
                &m,
                &mut one,
            )
            .unwrap();
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
        let Some(library) = crate::testing::ort_child(
            "embed::tests::embed_images_equals_single_and_stops_if_available",
            &[&dir.join("efficientnet-lite0.onnx")],
        ) else {
            return;
        };
        let opts = crate::model::SessionOptions { library, intra_threads: 1 };
        let mut model = Model::load(&dir, "efficientnet", &opts).unwrap();
        let files: Vec<Vec<u8>> = (1..=7).map(|i| png(200 + i * 30, 180 + i * 7, (i as u8).wrapping_mul(53))).collect();
        let refs: Vec<&[u8]> = files.iter().map(|f| f.as_slice()).collect();
        let batched = embed_images(&mut model, &refs, &Options::default(), 3, 2).unwrap();
        assert_eq!(batched.len(), 7);
        for (i, f) in refs.iter().enumerate() {
            let (one, _) = embed_image(&mut model, f, &Options::default(), None).unwrap();
            let worst = one.iter().zip(&batched[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-3, "image {i}: batched differs from single by {worst}");
        }
        assert_ne!(batched[0], batched[1]);

        // A stop request ends the call with Interrupted, whether it arrives before a
        // batch, while decoding or while the model runs.
        static POLLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        fn stop_after_a_few() -> bool {
            POLLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 3
        }
        let stopping = Options { stop: stop_after_a_few, ..Options::default() };
        let e = embed_images(&mut model, &refs, &stopping, 2, 2).unwrap_err();
        assert_eq!(e.kind, Kind::Interrupted, "{e}");
        fn always() -> bool {
            true
        }
        let e = embed_image(&mut model, refs[0], &Options { stop: always, ..Options::default() }, None).unwrap_err();
        assert_eq!(e.kind, Kind::Interrupted, "{e}");
        // Batch limits are checked before any work.
        assert_eq!(embed_images(&mut model, &refs, &Options::default(), 0, 2).unwrap_err().kind, Kind::InvalidArgument);
        assert_eq!(
            embed_images(&mut model, &refs, &Options::default(), MAX_BATCH + 1, 2).unwrap_err().kind,
            Kind::LimitExceeded
        );

        // A bad image fails the call with its position, whichever batch it is in.
        let mut bad = refs.clone();
        bad[4] = b"not an image";
        let e = embed_images(&mut model, &bad, &Options::default(), 2, 2).unwrap_err();
        assert!(e.message.starts_with("image 5 (1-based)"), "{e}");
        println!("embed_images ok: 7 images, batches of 3, max difference from single below 1e-3");
    }
}
