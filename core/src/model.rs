//! A loaded model: its manifest and its ONNX Runtime session, checked against each other
//! at load time and at every run.

use std::path::Path;
use std::time::{Duration, Instant};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::TensorRef;

use crate::error::{Error, Kind, Result};
use crate::manifest::Manifest;
use crate::runtime;

/// How sessions are built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Path of libonnxruntime.so.
    pub library: std::path::PathBuf,
    /// Intra-op threads per session (0 lets ONNX Runtime pick: one per core).
    pub intra_threads: usize,
}

pub struct Model {
    pub manifest: Manifest,
    session: Session,
    /// Size of the ONNX file.
    pub file_bytes: u64,
    /// Wall time of `load`.
    pub load_time: Duration,
}

fn ort_err(kind: Kind, context: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::new(kind, format!("{context}: {e}"))
}

/// A session for one ONNX file, with pg_vision's options: full graph optimisation (below
/// that ONNX Runtime loses its blocked-layout convolutions, 2.5x slower), the configured
/// intra-op threads, one inter-op thread, no spinning. Session creation starts the
/// intra-op pool, so it runs with signals blocked: its threads inherit a blocked mask.
pub(crate) fn build_session(onnx: &Path, opts: &SessionOptions, context: &str) -> Result<Session> {
    let env = runtime::environment(&opts.library)?;
    runtime::with_signals_blocked(|| -> Result<Session> {
        let err = |e: ort::Error<_>| Error::new(Kind::BadModel, format!("{context}: {e}"));
        Session::builder(env)
            .map_err(ort_err(Kind::BadModel, context))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(err)?
            .with_intra_threads(opts.intra_threads)
            .map_err(err)?
            .with_inter_threads(1)
            .map_err(err)?
            .with_intra_op_spinning(false)
            .map_err(err)?
            .with_inter_op_spinning(false)
            .map_err(err)?
            .commit_from_file(onnx)
            .map_err(ort_err(Kind::BadModel, context))
    })
}

impl Model {
    /// Reads `<dir>/<name>.json` and its ONNX file and builds a session.
    pub fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<Model> {
        let start = Instant::now();
        let manifest = Manifest::load(dir, name)?;
        let onnx = manifest.onnx_path(dir);
        let file_bytes = match std::fs::metadata(&onnx) {
            Ok(md) => md.len(),
            Err(e) => {
                return Err(Error::new(
                    Kind::FileMissing,
                    format!("model \"{name}\": weights file {} is missing ({e})", onnx.display()),
                )
                .with_hint(format!("create it with: {}", manifest.fetch_hint)));
            }
        };
        let session = build_session(&onnx, opts, &format!("model \"{name}\": cannot load {}", onnx.display()))?;
        let model = Model { manifest, session, file_bytes, load_time: Duration::ZERO };
        model.check_signature()?;
        Ok(Model { load_time: start.elapsed(), ..model })
    }

    /// The input and every declared output must exist in the graph.
    fn check_signature(&self) -> Result<()> {
        let m = &self.manifest;
        let inputs: Vec<&str> = self.session.inputs().iter().map(|i| i.name()).collect();
        if !inputs.contains(&m.input_name.as_str()) {
            return Err(Error::new(
                Kind::BadModel,
                format!(
                    "model \"{}\": the ONNX graph has no input \"{}\" (it has: {})",
                    m.name,
                    m.input_name,
                    inputs.join(", ")
                ),
            )
            .with_hint("fix input_name in the model's manifest"));
        }
        let outputs: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        let declared =
            std::iter::once(m.output_name.as_str()).chain(m.extra_outputs.values().map(|o| o.output_name.as_str()));
        for name in declared {
            if !outputs.contains(&name) {
                return Err(Error::new(
                    Kind::BadModel,
                    format!(
                        "model \"{}\": the ONNX graph has no output \"{name}\" (it has: {})",
                        m.name,
                        outputs.join(", ")
                    ),
                )
                .with_hint("fix output_name / extra_outputs in the model's manifest"));
            }
        }
        Ok(())
    }

    /// Runs the model on `batch` preprocessed images packed in `input` and returns one
    /// vector per image from `how.output` (`None`: the embedding). Checks the output size,
    /// rejects NaN and infinity, and L2-normalises the embedding when the manifest says so.
    /// A run stopped through `how.stop` returns `Kind::Interrupted`.
    pub fn run(&mut self, input: &[f32], batch: usize, how: Run<'_>) -> Result<Vec<Vec<f32>>> {
        let m = &self.manifest;
        let (out_name, dim) = m.output(how.output)?;
        let (out_name, name) = (out_name.to_owned(), m.name.clone());
        let is_embedding = matches!(how.output, None | Some("embedding"));
        let l2 = m.l2_normalize && is_embedding;
        let shape = match m.layout {
            crate::manifest::Layout::NCHW => [batch, 3, m.height as usize, m.width as usize],
            crate::manifest::Layout::NHWC => [batch, m.height as usize, m.width as usize, 3],
        };
        let input_name = m.input_name.clone();
        let tensor = TensorRef::from_array_view((shape, input))
            .map_err(ort_err(Kind::Inference, "cannot build the input tensor"))?;
        let context = format!("model \"{name}\" failed to run");
        let mut options = RunOptions::new().map_err(ort_err(Kind::Inference, &context))?;
        if how.shrink_arena {
            options.set("memory.enable_memory_arena_shrinkage", "cpu:0").map_err(ort_err(Kind::Inference, &context))?;
        }
        let session = &mut self.session;
        let outputs = stoppable(
            &options,
            how.stop,
            || session.run_with_options(ort::inputs![input_name.as_str() => tensor], &options),
            |e| Error::new(Kind::Inference, format!("{context}: {e}")),
        )?;
        let (shape, values) = outputs[out_name.as_str()].try_extract_tensor::<f32>().map_err(|e| {
            Error::new(Kind::BadModel, format!("model \"{name}\": output \"{out_name}\" is not a float32 tensor: {e}"))
        })?;
        split_output(&name, &format!("output \"{out_name}\""), "image", &shape[..], values, batch, dim, l2)
    }
}

/// How `Model::run` runs.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// Which output to return: `None` for the embedding, else an extra output's name.
    pub output: Option<&'a str>,
    /// Give the activation arena's unused memory back when this run ends. ONNX Runtime's
    /// arena grows to the largest run and keeps that size, memory the budget never sees;
    /// batch callers set this on their last run. (Without the arena each run maps and
    /// faults its activations afresh, which is slower.)
    pub shrink_arena: bool,
    /// Polled every few milliseconds while the model runs, from a watcher thread: when it
    /// returns true the run is terminated and `run` returns `Kind::Interrupted`.
    pub stop: fn() -> bool,
}

impl Default for Run<'_> {
    fn default() -> Self {
        Run { output: None, shrink_arena: false, stop: crate::decode::never }
    }
}

/// How often a running model's watcher polls `stop`.
const STOP_POLL: Duration = Duration::from_millis(5);

/// Runs `f` (a session run under `options`) while a watcher thread polls `stop` and
/// terminates the run when it returns true. The watcher touches nothing but `stop` and
/// `options`, and is joined before this returns. A run that fails once `stop` has fired
/// was terminated, which is `Kind::Interrupted`; any other failure is worded by `fail`.
pub(crate) fn stoppable<T>(
    options: &RunOptions,
    stop: fn() -> bool,
    f: impl FnOnce() -> ort::Result<T>,
    fail: impl FnOnce(ort::Error) -> Error,
) -> Result<T> {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = runtime::with_signals_blocked(|| {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    if stop() {
                        let _ = options.terminate();
                        return;
                    }
                    std::thread::park_timeout(STOP_POLL);
                }
            })
        });
        let result = f();
        done.store(true, std::sync::atomic::Ordering::Release);
        watcher.thread().unpark();
        result.map_err(|e| if stop() { crate::decode::interrupted() } else { fail(e) })
    })
}

/// Splits a model's `[batch, dim]` output into one vector per input, after checking its
/// size against the manifest, rejecting NaN and infinity, and L2-normalising if `l2`.
/// `item` names an input ("image", "text") in messages.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_output(
    model: &str,
    output: &str,
    item: &str,
    shape: &[i64],
    values: &[f32],
    batch: usize,
    dim: usize,
    l2: bool,
) -> Result<Vec<Vec<f32>>> {
    if values.len() != batch * dim || shape.first().copied() != Some(batch as i64) {
        return Err(Error::new(
            Kind::BadModel,
            format!("model \"{model}\": {output} has shape {shape:?} for {batch} {item}(s), but the manifest declares {dim} values per {item}"),
        )
        .with_hint("fix the dim in the model's manifest (a text tower's must equal the image dim), or re-export the model"));
    }
    let mut vectors = Vec::with_capacity(batch);
    for (i, v) in values.chunks_exact(dim).enumerate() {
        let mut v = v.to_vec();
        if let Some(pos) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::new(
                Kind::NonFinite,
                format!("model \"{model}\" produced {} at position {pos} of {item} {}", v[pos], i + 1),
            )
            .with_hint("the model or its manifest's normalisation is broken; the vector was not stored"));
        }
        if l2 {
            l2_normalize(&mut v);
        }
        vectors.push(v);
    }
    Ok(vectors)
}

/// Scales to unit length; an all-zero vector stays zero (there is no direction to keep).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / norm) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_normalize_unit_length_and_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }
}
