//! Model manifests: one JSON file per model in the model directory (`models/README.md`
//! documents every field). A manifest is the single source of truth for how a model's
//! input is prepared and which output is the embedding.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Kind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    NCHW,
    NHWC,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ColorOrder {
    RGB,
    BGR,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alpha {
    /// Composite transparent pixels onto white (product photos on transparent backgrounds).
    White,
    /// Ignore the alpha channel, keeping the stored colour (Pillow's `convert("RGB")`).
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Scale so the short side equals `size`, keeping the aspect ratio.
    ShortestSide,
    /// Scale to exactly `size` x `size` (or `width` x `height` when `size` is 0),
    /// ignoring the aspect ratio.
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Bicubic,
    Bilinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crop {
    Center,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    pub mode: ResizeMode,
    #[serde(default)]
    pub size: u32,
    pub interpolation: Interpolation,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraOutput {
    pub output_name: String,
    pub dim: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub onnx_file: String,
    pub fetch_hint: String,
    pub input_name: String,
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    pub color_order: ColorOrder,
    pub alpha: Alpha,
    pub resize: Resize,
    pub crop: Crop,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub output_name: String,
    pub dim: usize,
    pub l2_normalize: bool,
    #[serde(default)]
    pub extra_outputs: BTreeMap<String, ExtraOutput>,
    /// The text tower of a CLIP-style model (`text.rs`); absent for image-only models.
    #[serde(default)]
    pub text: Option<crate::text::TextManifest>,
}

/// Model names are file names too: keep them to a safe alphabet so a name can never
/// reach outside the model directory.
pub fn check_model_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(Kind::UnknownModel, format!("invalid model name \"{name}\"")).with_hint(
            "model names use lower-case letters, digits, '_' and '-'; SELECT * FROM pg_vision_models() lists them",
        ))
    }
}

impl Manifest {
    pub fn parse(json: &str, origin: &Path) -> Result<Manifest> {
        let m: Manifest = serde_json::from_str(json).map_err(|e| {
            Error::new(Kind::BadModel, format!("model manifest {} is not valid: {e}", origin.display()))
                .with_hint("see models/README.md for the manifest fields")
        })?;
        m.validate(origin)?;
        Ok(m)
    }

    /// Reads `<dir>/<name>.json`.
    pub fn load(dir: &Path, name: &str) -> Result<Manifest> {
        check_model_name(name)?;
        let path = dir.join(format!("{name}.json"));
        let json = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(Kind::UnknownModel, format!("unknown model \"{name}\": no manifest {}", path.display()))
                    .with_hint("SELECT * FROM pg_vision_models() lists the installed models; pg_vision.model_dir sets where they are")
            } else {
                Error::new(Kind::FileMissing, format!("cannot read model manifest {}: {e}", path.display()))
            }
        })?;
        let m = Manifest::parse(&json, &path)?;
        if m.name != name {
            return Err(Error::new(
                Kind::BadModel,
                format!("model manifest {} declares name \"{}\", expected \"{name}\"", path.display(), m.name),
            ));
        }
        Ok(m)
    }

    /// All manifests in a directory, sorted by name. Unreadable ones are returned as errors
    /// so a listing can show them instead of hiding them.
    pub fn list(dir: &Path) -> Result<Vec<(String, Result<Manifest>)>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::new(Kind::FileMissing, format!("cannot read model directory {}: {e}", dir.display()))
                .with_hint("set pg_vision.model_dir to the directory holding the model manifests")
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_owned))
            .filter(|n| check_model_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|n| {
                let m = Manifest::load(dir, &n);
                (n, m)
            })
            .collect())
    }

    pub fn onnx_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.onnx_file)
    }

    /// The tensor name and dimension of an output: the embedding (`None`) or a named extra.
    pub fn output(&self, which: Option<&str>) -> Result<(&str, usize)> {
        match which {
            None | Some("embedding") => Ok((&self.output_name, self.dim)),
            Some(extra) => self.extra_outputs.get(extra).map(|o| (o.output_name.as_str(), o.dim)).ok_or_else(|| {
                let known: Vec<&str> =
                    std::iter::once("embedding").chain(self.extra_outputs.keys().map(String::as_str)).collect();
                Error::new(Kind::InvalidArgument, format!("model \"{}\" has no output \"{extra}\"", self.name))
                    .with_hint(format!("its outputs are: {}", known.join(", ")))
            }),
        }
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let bad =
            |what: String| Err(Error::new(Kind::BadModel, format!("model manifest {}: {what}", origin.display())));
        check_model_name(&self.name)?;
        if self.onnx_file.contains('/') || self.onnx_file.contains("..") {
            return bad(format!(
                "onnx_file \"{}\" must be a plain file name inside the model directory",
                self.onnx_file
            ));
        }
        if self.width == 0 || self.height == 0 || self.width > 4096 || self.height > 4096 {
            return bad(format!("input size {}x{} must be between 1 and 4096", self.width, self.height));
        }
        if self.resize.size > 0 && self.resize.size < self.width.max(self.height) && self.crop == Crop::Center {
            return bad(format!(
                "resize.size {} is smaller than the {}x{} crop",
                self.resize.size, self.width, self.height
            ));
        }
        if self.resize.mode == ResizeMode::ShortestSide && self.resize.size == 0 {
            return bad("resize.size must be set for mode shortest_side".into());
        }
        if self.resize.size > 0 && self.crop == Crop::None {
            return bad("resize.size needs crop \"center\" to reach the fixed input size".into());
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
            || !self.scale.is_finite()
        {
            return bad("scale, mean and std must be finite and std non-zero".into());
        }
        if self.dim == 0 || self.dim > 16000 {
            return bad(format!("dim {} must be between 1 and 16000 (pgvector's limit)", self.dim));
        }
        if let Some(text) = &self.text {
            text.validate(self.dim, origin)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    #[test]
    fn shipped_manifests_parse() {
        let all = Manifest::list(&repo_models()).unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"efficientnet") && names.contains(&"fclip"), "{names:?}");
        for (name, m) in all {
            let m = m.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.name, name);
        }
        let e = Manifest::load(&repo_models(), "efficientnet").unwrap();
        assert_eq!((e.dim, e.width, e.layout), (1280, 224, Layout::NCHW));
        assert_eq!(e.output(Some("logits")).unwrap(), ("logits", 1000));
        let f = Manifest::load(&repo_models(), "fclip").unwrap();
        assert_eq!((f.dim, f.l2_normalize, f.mean[0]), (512, true, 0.48145466));
    }

    #[test]
    fn unknown_model_and_bad_names() {
        assert_eq!(Manifest::load(&repo_models(), "nope").unwrap_err().kind, Kind::UnknownModel);
        for bad in ["../etc/passwd", "", "A", "x/y"] {
            assert_eq!(check_model_name(bad).unwrap_err().kind, Kind::UnknownModel, "{bad}");
        }
        let e = Manifest::load(&repo_models(), "efficientnet").unwrap();
        let err = e.output(Some("nope")).unwrap_err();
        assert!(err.hint.unwrap().contains("embedding, logits"));
    }

    #[test]
    fn rejects_bad_manifests() {
        let good = std::fs::read_to_string(repo_models().join("efficientnet.json")).unwrap();
        let p = Path::new("x.json");
        assert!(Manifest::parse(&good, p).is_ok());
        for (from, to) in [
            ("\"dim\": 1280", "\"dim\": 0"),
            ("\"NCHW\"", "\"NCWH\""),
            ("[128.0, 128.0, 128.0]", "[128.0, 0.0, 128.0]"),
            ("\"size\": 256", "\"size\": 100"),
            ("\"efficientnet-lite0.onnx\"", "\"../x.onnx\""),
            ("\"l2_normalize\"", "\"l2_normalise\""),
        ] {
            let bad = good.replace(from, to);
            assert_ne!(bad, good, "{from}");
            let err = Manifest::parse(&bad, p).unwrap_err();
            assert_eq!(err.kind, Kind::BadModel, "{from} -> {to}: {err}");
        }
    }
}
