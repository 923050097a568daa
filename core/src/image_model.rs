//! A loaded image tower: its manifest and its ONNX Runtime session, checked against each
//! other at load time and at every run.

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::ArrayView4;
use ort::session::Session;
use ort::value::TensorRef;

use crate::error::{never, Error, Kind, Result};
use crate::manifest::{Layout, Manifest, Origin, Output, Source, Tower};
use crate::output::{self, Item, Rows};
use crate::prepared::Choice;
use crate::session::{self, Arena, SessionOptions};

pub struct ImageModel {
    pub manifest: Manifest,
    session: Session,
    /// Wall time of `load`.
    pub load_time: Duration,
    /// The session's intra-op threads (`SessionOptions::intra_threads`).
    pub intra_threads: usize,
    /// The manifest and ONNX files it was built from.
    pub origin: Origin,
    /// Whether it was loaded from its prepared (shared-weights) files, or why not.
    pub choice: Choice,
}

/// How `ImageModel::run` runs.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// Which output to return.
    pub output: Output<'a>,
    /// What the activation arena does after this run.
    pub arena: Arena,
    /// Polled every few milliseconds while the model runs, from a watcher thread: when it
    /// returns true the run is terminated and `run` returns `Kind::Interrupted`.
    pub stop: fn() -> bool,
}

impl Default for Run<'_> {
    fn default() -> Self {
        Run { output: Output::Embedding, arena: Arena::Keep, stop: never }
    }
}

impl ImageModel {
    /// Reads `<dir>/<name>.json`, then its ONNX file, and builds a session.
    pub fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<ImageModel> {
        ImageModel::from_manifest(dir, Manifest::load(dir, name)?, opts)
    }

    /// Builds a session for the image tower of a manifest already read, from its ONNX
    /// file in `dir`.
    pub fn from_manifest(dir: &Path, manifest: Manifest, opts: &SessionOptions) -> Result<ImageModel> {
        let start = Instant::now();
        let name = &manifest.name;
        let onnx = manifest.onnx_path(dir, Tower::Image)?;
        let onnx_source = Source::of(onnx.clone()).map_err(|e| {
            Error::new(Kind::FileMissing, format!("model \"{name}\": weights file {} is missing ({e})", onnx.display()))
                .with_hint(format!("create it with: {}", manifest.fetch_hint))
        })?;
        let resolved = session::resolve(
            manifest.source.clone(),
            onnx_source,
            manifest.onnx_sha256.as_deref(),
            opts,
            name,
            &manifest.fetch_hint,
        )?;
        let prepared = matches!(resolved.choice, Choice::Prepared(_));
        let context = format!("model \"{name}\": cannot load {}", resolved.load.display());
        let session = session::build(&resolved.load, prepared, opts, &context)?;
        let (origin, choice) = (resolved.origin, resolved.choice);
        let intra_threads = opts.intra_threads();
        let model = ImageModel { manifest, session, load_time: Duration::ZERO, intra_threads, origin, choice };
        model.check_signature()?;
        Ok(ImageModel { load_time: start.elapsed(), ..model })
    }

    /// The input and every declared output must exist in the graph.
    fn check_signature(&self) -> Result<()> {
        let m = &self.manifest;
        let inputs: Vec<&str> = self.session.inputs().iter().map(|i| i.name()).collect();
        session::check_names(&inputs, [m.input_name.as_str()], |wanted, have| {
            Error::new(
                Kind::BadModel,
                format!("model \"{}\": the ONNX graph has no input \"{wanted}\" (it has: {have})", m.name),
            )
            .with_hint("fix input_name in the model's manifest")
        })?;
        let outputs: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        let declared =
            std::iter::once(m.output_name.as_str()).chain(m.extra_outputs.values().map(|o| o.output_name.as_str()));
        session::check_names(&outputs, declared, |wanted, have| {
            Error::new(
                Kind::BadModel,
                format!("model \"{}\": the ONNX graph has no output \"{wanted}\" (it has: {have})", m.name),
            )
            .with_hint("fix output_name / extra_outputs in the model's manifest")
        })
    }

    /// Runs the model on `batch` preprocessed images packed in `input` and returns one
    /// vector per image from `how.output`. Checks the output size, rejects NaN and
    /// infinity, and L2-normalises the embedding when the manifest says so. A run stopped
    /// through `how.stop` returns `Kind::Interrupted`.
    pub fn run(&mut self, input: &[f32], batch: usize, how: Run<'_>) -> Result<Vec<Vec<f32>>> {
        let m = &self.manifest;
        let (out_name, dim) = m.output(how.output)?;
        let (h, w) = (m.height as usize, m.width as usize);
        let shape = match m.layout {
            Layout::NCHW => [batch, 3, h, w],
            Layout::NHWC => [batch, h, w, 3],
        };
        let view = ArrayView4::from_shape(shape, input).map_err(|e| {
            Error::new(Kind::Inference, format!("cannot build the input tensor: {e} ({} values)", input.len()))
        })?;
        let tensor = TensorRef::from_array_view(view)
            .map_err(session::ort_err(Kind::Inference, "cannot build the input tensor"))?;
        let context = format!("model \"{}\" failed to run", m.name);
        let options = session::run_options(how.arena, &context)?;
        let session = &mut self.session;
        let outputs = session::stoppable(
            &options,
            how.stop,
            || session.run_with_options(ort::inputs![m.input_name.as_str() => tensor], &options),
            |e| Error::new(Kind::Inference, format!("{context}: {e}")),
        )?;
        let (shape, values) = outputs[out_name].try_extract_tensor::<f32>().map_err(|e| {
            Error::new(
                Kind::BadModel,
                format!("model \"{}\": output \"{out_name}\" is not a float32 tensor: {e}", m.name),
            )
        })?;
        let rows = Rows {
            model: &m.name,
            output: &format!("output \"{out_name}\""),
            item: Item::Image,
            batch,
            dim,
            l2_normalize: m.l2_normalize && how.output == Output::Embedding,
        };
        output::split(&rows, &shape[..], values)
    }
}
