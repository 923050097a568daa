//! A loaded text tower of a CLIP-style model: its manifest section and its ONNX Runtime
//! session. Texts are tokenised (`tokenize.rs`) into int64 ids and attention masks and
//! embedded in one batch, into the space of the model's image vectors ("red summer
//! dress" against product photos).

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::Array2;
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::error::{check_stop, never, Error, Kind, Result};
use crate::manifest::{Manifest, Origin, Source, TextManifest, Tower};
use crate::output::{self, Item, Rows};
use crate::prepared::Choice;
use crate::session::{self, Arena, SessionOptions};
use crate::tokenize::tokenize_checked;

/// A loaded text tower.
pub struct TextModel {
    /// The model's name, for messages.
    pub name: String,
    pub manifest: TextManifest,
    session: Session,
    /// Wall time of `load`.
    pub load_time: Duration,
    /// The session's intra-op threads (`SessionOptions::intra_threads`).
    pub intra_threads: usize,
    /// The manifest and ONNX files it was built from.
    pub origin: Origin,
    /// Whether it was loaded from its prepared (shared-weights) files, or why not.
    pub choice: Choice,
    /// Whether the graph takes any sequence length (its ids input's second axis is
    /// dynamic): then a batch is cut after its longest text instead of running all
    /// `context_length` positions.
    pub dynamic_length: bool,
}

impl TextModel {
    /// Reads `<dir>/<name>.json`, then its text tower's ONNX file, and builds a session;
    /// `manifest::no_text_tower` when the manifest has no `"text"` section.
    pub fn load(dir: &Path, name: &str, opts: &SessionOptions) -> Result<TextModel> {
        TextModel::from_manifest(dir, Manifest::load(dir, name)?, opts)
    }

    /// Builds a session for the text tower of a manifest already read, from its ONNX file
    /// in `dir`, with the same options and signal blocking as the image tower.
    pub fn from_manifest(dir: &Path, manifest: Manifest, opts: &SessionOptions) -> Result<TextModel> {
        let start = Instant::now();
        let onnx = manifest.onnx_path(dir, Tower::Text)?;
        let Manifest { name, fetch_hint, text, source, .. } = manifest;
        let text = text.expect("onnx_path checked the text section");
        let onnx_source = Source::of(onnx.clone()).map_err(|e| {
            Error::new(
                Kind::FileMissing,
                format!("model \"{name}\": text weights file {} is missing ({e})", onnx.display()),
            )
            .with_hint(format!("create it with: {fetch_hint}"))
        })?;
        let resolved = session::resolve(source, onnx_source, text.onnx_sha256.as_deref(), opts, &name, &fetch_hint)?;
        let prepared = matches!(resolved.choice, Choice::Prepared(_));
        let context = format!("model \"{name}\": cannot load the text tower {}", resolved.load.display());
        let session = session::build(&resolved.load, prepared, opts, &context)?;
        let (origin, choice) = (resolved.origin, resolved.choice);
        let intra_threads = opts.intra_threads();
        let dynamic_length = takes_any_length(&session, &text.input_name);
        let model = TextModel {
            name,
            manifest: text,
            session,
            load_time: Duration::ZERO,
            intra_threads,
            origin,
            choice,
            dynamic_length,
        };
        model.check_signature()?;
        Ok(TextModel { load_time: start.elapsed(), ..model })
    }

    /// The ids input (and the mask, if declared) must exist and take int64; the output must exist.
    fn check_signature(&self) -> Result<()> {
        let (m, name) = (&self.manifest, &self.name);
        let inputs = self.session.inputs();
        let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
        for wanted in std::iter::once(m.input_name.as_str()).chain(m.attention_mask_name.as_deref()) {
            session::check_names(&names, [wanted], |wanted, have| {
                Error::new(
                    Kind::BadModel,
                    format!("model \"{name}\": the text graph has no input \"{wanted}\" (it has: {have})"),
                )
                .with_hint("fix text.input_name / text.attention_mask_name in the model's manifest")
            })?;
            let input = inputs.iter().find(|i| i.name() == wanted).expect("checked above");
            if input.dtype().tensor_type() != Some(TensorElementType::Int64) {
                return Err(Error::new(
                    Kind::BadModel,
                    format!("model \"{name}\": text input \"{wanted}\" is {:?}, not an int64 tensor", input.dtype()),
                )
                .with_hint("CLIP text towers take int64 token ids; re-export the model"));
            }
        }
        if names.len() > 1 + usize::from(m.attention_mask_name.is_some()) {
            return Err(Error::new(
                Kind::BadModel,
                format!(
                    "model \"{name}\": the text graph has inputs ({}) that the manifest does not feed",
                    names.join(", ")
                ),
            )
            .with_hint(
                "declare the attention mask in text.attention_mask_name, or re-export the model with input_ids only",
            ));
        }
        let outputs: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        session::check_names(&outputs, [m.output_name.as_str()], |wanted, have| {
            Error::new(
                Kind::BadModel,
                format!("model \"{name}\": the text graph has no output \"{wanted}\" (it has: {have})"),
            )
            .with_hint("fix text.output_name in the model's manifest")
        })
    }

    /// One vector per text, in order, in one batch. Checks the output size, rejects NaN and
    /// infinity, and L2-normalises when `text.l2_normalize` says so. Over-long texts are
    /// truncated (`tokenize.rs`); call `tokenize` to learn whether one was. A text over
    /// `MAX_TEXT_BYTES` is an error (`Kind::LimitExceeded`).
    ///
    /// A graph that takes any length gets the ids up to the batch's longest text (its EOT)
    /// instead of all `context_length` positions: the same vectors, since what follows a
    /// text's EOT is padding, which a CLIP text tower cannot see (its attention is causal,
    /// or masked by the attention mask), for a fraction of the work (a caption of 10 tokens
    /// runs 10 positions, not 77).
    pub fn embed_text(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_text_checked(texts, never)
    }

    /// `embed_text`, giving up with `Kind::Interrupted` when `stop()` returns true while the
    /// texts are tokenised (`tokenize_checked`) or the model runs (`session::stoppable`).
    pub fn embed_text_checked(&mut self, texts: &[&str], stop: fn() -> bool) -> Result<Vec<Vec<f32>>> {
        let batch = texts.len();
        if batch == 0 {
            return Ok(Vec::new());
        }
        let (m, name) = (&self.manifest, &self.name);
        let ctx = m.context_length;
        let mut tokens = Vec::with_capacity(batch);
        for text in texts {
            let (i, k, _) = tokenize_checked(text, ctx, &stop)?;
            tokens.push((i, k));
        }
        check_stop(&stop)?;
        let len = if self.dynamic_length { longest(&tokens) } else { ctx };
        let (mut ids, mut mask) = (Vec::with_capacity(batch * len), Vec::with_capacity(batch * len));
        for (i, k) in &tokens {
            ids.extend_from_slice(&i[..len]);
            mask.extend_from_slice(&k[..len]);
        }
        let as_matrix = |v: Vec<i64>| Array2::from_shape_vec((batch, len), v).expect("len ids per text");
        let (ids, mask) = (as_matrix(ids), as_matrix(mask));
        let tensor_err =
            |e: ort::Error| Error::new(Kind::Inference, format!("cannot build the text input tensor: {e}"));
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            ort::inputs![m.input_name.as_str() => TensorRef::from_array_view(ids.view()).map_err(tensor_err)?];
        if let Some(mask_name) = &m.attention_mask_name {
            let t = TensorRef::from_array_view(mask.view()).map_err(tensor_err)?;
            inputs.push((Cow::from(mask_name.as_str()), SessionInputValue::from(t)));
        }
        let options = session::run_options(Arena::Keep, &format!("model \"{name}\""))?;
        let session = &mut self.session;
        let outputs = session::stoppable(
            &options,
            stop,
            || session.run_with_options(inputs, &options),
            |e| Error::new(Kind::Inference, format!("model \"{name}\": the text tower failed to run: {e}")),
        )?;
        let out_name = &m.output_name;
        let (shape, values) = outputs[out_name.as_str()].try_extract_tensor::<f32>().map_err(|e| {
            Error::new(
                Kind::BadModel,
                format!("model \"{name}\": text output \"{out_name}\" is not a float32 tensor: {e}"),
            )
        })?;
        let rows = Rows {
            model: name,
            output: &format!("text output \"{out_name}\""),
            item: Item::Text,
            batch,
            dim: m.dim,
            l2_normalize: m.l2_normalize,
        };
        output::split(&rows, &shape[..], values)
    }
}

/// Whether the graph's ids input `input_name` has a dynamic sequence axis (-1 in ONNX
/// Runtime's shape); false if there is no such input (`check_signature` says so).
fn takes_any_length(session: &Session, input_name: &str) -> bool {
    let input = session.inputs().iter().find(|i| i.name() == input_name);
    matches!(input.map(|i| i.dtype()), Some(ValueType::Tensor { shape, .. }) if shape.len() == 2 && shape[1] < 0)
}

/// The most tokens (SOT .. EOT: the attention mask's ones) of any text in the batch, at
/// least 1: where a batch of tokenised texts can be cut.
fn longest(tokens: &[(Vec<i64>, Vec<i64>)]) -> usize {
    tokens.iter().map(|(_, mask)| mask.iter().filter(|&&m| m != 0).count()).max().unwrap_or(0).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_after_its_longest_text() {
        let text = |n: usize| (vec![7i64; 77], (0..77).map(|p| i64::from(p < n)).collect::<Vec<_>>());
        assert_eq!(longest(&[text(2), text(12), text(5)]), 12);
        assert_eq!(longest(&[text(77)]), 77);
        assert_eq!(longest(&[text(0)]), 1);
    }
}
