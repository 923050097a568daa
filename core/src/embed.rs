//! Image bytes to vectors: decode, preprocess, run. Times each phase so the benchmark
//! can report where the time goes.

use std::time::{Duration, Instant};

use crate::decode::{self, Options, Rgb8};
use crate::error::{Error, Fact, Kind, Limit, Result};
use crate::image_model::{ImageModel, Run};
use crate::manifest::{Manifest, Output};
use crate::session::Arena;
use crate::{heap, preprocess, runtime};

#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub decode: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
}

/// Decodes an image as the model's manifest wants it: its transparency rule, and no
/// smaller than its resize needs (`preprocess::min_decode_side`).
fn decode_for(m: &Manifest, bytes: &[u8], opts: &Options) -> Result<Rgb8> {
    decode::decode_rgb8(bytes, preprocess::transparency(m), opts, preprocess::min_decode_side(m))
}

/// Embeds one image, or returns another of the model's outputs.
pub fn embed_image(
    model: &mut ImageModel,
    bytes: &[u8],
    opts: &Options,
    output: Output<'_>,
) -> Result<(Vec<f32>, Timings)> {
    let mut t = Timings::default();
    let start = Instant::now();
    let img = decode_for(&model.manifest, bytes, opts)?;
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
        preprocess::preprocess(&decode_for(m, bytes, opts)?, m, slot)
    };
    let threads = threads.clamp(1, images.len().max(1));
    let per_thread = images.len().div_ceil(threads);
    let results: Vec<Result<()>> = runtime::with_signals_blocked(|| {
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
        return Err(Error::interrupted());
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
    let cores = runtime::cores();
    let model_threads = if model_threads == 0 { cores } else { model_threads.min(cores) };
    cores.saturating_sub(model_threads).clamp(1, MAX_DECODE_THREADS)
}

/// How `embed_images` splits its work: images per model run, and threads that decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    size: usize,
    decode_threads: Option<usize>,
}

impl Batching {
    /// `size` images per model run: 1 to `MAX_BATCH`, checked here before any work.
    /// Decoding gets the cores the model leaves free (`decode_threads`).
    pub fn new(size: i64) -> Result<Batching> {
        if size < 1 {
            return Err(Error::new(Kind::InvalidArgument, "batch size must be at least 1"));
        }
        if size > MAX_BATCH as i64 {
            return Err(Error::new(Kind::LimitExceeded, format!("batch size {size} is over the limit of {MAX_BATCH}"))
                .with_hint(format!(
                    "use a batch size of 1 to {MAX_BATCH}: larger batches are not faster on CPU, only bigger in memory"
                ))
                .with_fact(Fact::OverLimit { limit: Limit::BatchSize, value: size as u64, max: MAX_BATCH as u64 }));
        }
        Ok(Batching { size: size as usize, decode_threads: None })
    }

    /// Decodes on `threads` threads (1 to `MAX_DECODE_THREADS`) whatever the model uses.
    pub fn with_decode_threads(self, threads: usize) -> Batching {
        Batching { decode_threads: Some(threads.clamp(1, MAX_DECODE_THREADS)), ..self }
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

/// Embeds many images, `batching.size()` at a time. A producer thread decodes and
/// preprocesses batch b+1 (on several threads, `prepare_parallel`) while the calling
/// thread runs batch b through the model, so decoding and inference overlap instead of
/// taking turns. `opts.stop` is polled before each batch, by the decoders and by the model
/// run; when it fires, the producer is stopped and joined before this returns
/// `Kind::Interrupted`, so no thread outlives the call. An unwinding panic stops the
/// producer the same way: it is blocked sending into a channel whose receiver is gone.
pub fn embed_images(
    model: &mut ImageModel,
    images: &[&[u8]],
    opts: &Options,
    batching: Batching,
) -> Result<Vec<Vec<f32>>> {
    let batch = batching.size;
    let threads = batching.decode_threads.unwrap_or_else(|| decode_threads(model.intra_threads));
    let manifest = model.manifest.clone();
    let len = preprocess::tensor_len(&manifest);
    let batches = images.len().div_ceil(batch);
    let mut vectors = Vec::new();
    vectors.try_reserve_exact(images.len()).map_err(|_| out_of_memory(images.len()))?;
    std::thread::scope(|s| -> Result<()> {
        // Declared inside the scope: dropping `ready` on any early exit is what releases
        // the producer, and the scope waits for it.
        let (tx, ready) = std::sync::mpsc::sync_channel::<Result<Vec<f32>>>(1);
        let manifest = &manifest;
        runtime::with_signals_blocked(|| {
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
            let arena = if b + 1 == batches { Arena::Shrink } else { Arena::Keep };
            vectors.extend(model.run(&input, input.len() / len, Run { arena, stop: opts.stop, ..Run::default() })?);
        }
        Ok(())
    })?;
    // The batch's decoded images and the arena's released activations are far bigger
    // than a single call's; give the freed pages back rather than leave them resident.
    heap::release_free_pages();
    Ok(vectors)
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

    #[test]
    fn batch_sizes_are_checked() {
        assert_eq!(Batching::new(3).unwrap().size(), 3);
        assert_eq!(Batching::new(MAX_BATCH as i64).unwrap().size(), MAX_BATCH);
        for bad in [0, -1, i64::MIN] {
            let e = Batching::new(bad).unwrap_err();
            assert_eq!((e.kind, e.message.as_str()), (Kind::InvalidArgument, "batch size must be at least 1"));
        }
        let e = Batching::new(MAX_BATCH as i64 + 1).unwrap_err();
        assert_eq!(e.kind, Kind::LimitExceeded);
        assert_eq!(e.message, "batch size 65 is over the limit of 64");
        assert_eq!(e.fact, Some(Fact::OverLimit { limit: Limit::BatchSize, value: 65, max: 64 }));
        let two = Batching::new(2).unwrap().with_decode_threads(100);
        assert_eq!(two.decode_threads, Some(MAX_DECODE_THREADS));
    }

    #[test]
    fn decode_threads_use_the_cores_inference_leaves() {
        let cores = runtime::cores();
        assert_eq!(decode_threads(0), 1);
        assert_eq!(decode_threads(cores), 1);
        assert_eq!(decode_threads(1), (cores - 1).clamp(1, MAX_DECODE_THREADS));
    }
}
