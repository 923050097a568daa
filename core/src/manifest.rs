//! Model manifests: one JSON file per model in the model directory (`models/README.md`
//! documents every field). A manifest is the single source of truth for how a model's
//! input is prepared, which output is the embedding, and, for a CLIP-style model, how its
//! text tower is fed (`TextManifest`). Each tower (`Tower`) has its own ONNX file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use crate::error::{Error, Fact, Kind, Result};

/// pgvector's largest dimension (VECTOR_MAX_DIM): no embedding may be longer.
pub const MAX_DIM: usize = 16000;
/// Longest text `context_length` a manifest may declare.
pub const MAX_CONTEXT_LENGTH: usize = 4096;

/// The two halves of a CLIP-style model, each its own ONNX file and session; an
/// image-only model has just the image tower.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tower {
    Image = 1,
    Text = 2,
}

impl Tower {
    pub fn as_str(self) -> &'static str {
        match self {
            Tower::Image => "image",
            Tower::Text => "text",
        }
    }

    /// The tower whose `as u8` is `v`.
    pub fn from_u8(v: u8) -> Option<Tower> {
        match v {
            1 => Some(Tower::Image),
            2 => Some(Tower::Text),
            _ => None,
        }
    }
}

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
    /// SHA-256 of `onnx_file`, lower-case hex: a file that does not match is refused.
    #[serde(default)]
    pub onnx_sha256: Option<String>,
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
    /// The text tower of a CLIP-style model; absent for image-only models.
    #[serde(default)]
    pub text: Option<TextManifest>,
    /// The file it was read from, when read by `Manifest::load`.
    #[serde(skip)]
    pub source: Option<Source>,
}

/// What identifies a file's contents without reading it: device, inode, size, and the
/// modification and status-change times. Replacing a file (a new inode), rewriting it in
/// place or touching it all change it; the status-change time cannot be set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A model file and its identity when it was read. Taken before reading: a file replaced
/// between the two then looks changed at the next check, never the other way round.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub path: PathBuf,
    pub id: FileId,
}

impl Source {
    pub fn of(path: PathBuf) -> std::io::Result<Source> {
        let id = FileId::of(&path)?;
        Ok(Source { path, id })
    }

    /// Whether the file at `path` is still the one read (a missing file is not).
    pub fn unchanged(&self) -> bool {
        FileId::of(&self.path).is_ok_and(|id| id == self.id)
    }

    /// The file's SHA-256, lower-case hex. Computed once per file identity in this process
    /// (a 20 MB model: about 12 ms), so listing models repeatedly does not read them again.
    pub fn sha256(&self) -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        static DIGESTS: Mutex<BTreeMap<PathBuf, (FileId, String)>> = Mutex::new(BTreeMap::new());
        let known = |d: &BTreeMap<PathBuf, (FileId, String)>| {
            d.get(&self.path).filter(|(id, _)| *id == self.id).map(|(_, hex)| hex.clone())
        };
        if let Some(hex) = known(&DIGESTS.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(hex);
        }
        let mut file = std::fs::File::open(&self.path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        loop {
            match file.read(&mut buf)? {
                0 => break,
                n => hasher.update(&buf[..n]),
            }
        }
        let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let mut digests = DIGESTS.lock().unwrap_or_else(|e| e.into_inner());
        digests.insert(self.path.clone(), (self.id, hex.clone()));
        Ok(hex)
    }

    /// Checks the file against the SHA-256 its manifest declares for it (`None`: nothing
    /// declared, nothing to check), so a half-copied or swapped file is refused before
    /// ONNX Runtime reads it.
    pub fn check_sha256(&self, expected: Option<&str>, model: &str, fetch_hint: &str) -> Result<()> {
        let Some(expected) = expected else { return Ok(()) };
        let path = self.path.display();
        let found = self.sha256().map_err(|e| {
            Error::new(Kind::FileMissing, format!("model \"{model}\": cannot read weights file {path}: {e}"))
        })?;
        if found == expected {
            return Ok(());
        }
        Err(Error::new(
            Kind::BadModel,
            format!(
                "model \"{model}\": weights file {path} does not match the sha256 in its manifest (file {}..., manifest {}...)",
                &found[..12],
                &expected[..12]
            ),
        )
        .with_hint(format!("the file is incomplete or another model's; create it again with: {fetch_hint}")))
    }
}

/// The files a loaded tower was built from: its manifest (when read from a file) and its
/// ONNX file. A backend checks them before each use, so new weights or a new recipe under
/// the same model name take effect at its next call, not at its next connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub manifest: Option<Source>,
    /// The ONNX file ONNX Runtime read: the plain file or the prepared graph (`prepared.rs`).
    pub onnx: Source,
    /// The other files the choice of `onnx` read: a prepared graph's data file, its sidecar
    /// and the plain file; a sidecar that did not match.
    pub also: Vec<Source>,
}

impl Origin {
    pub fn unchanged(&self) -> bool {
        self.manifest.as_ref().is_none_or(Source::unchanged)
            && self.onnx.unchanged()
            && self.also.iter().all(Source::unchanged)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// OpenAI CLIP's byte-level BPE (49408 ids), as `clip.tokenize` (`tokenize.rs`).
    ClipBpe,
}

/// The manifest's optional `"text"` section: the text tower of a CLIP-style model. A CLIP
/// model embeds images and texts into one space, so the text tower's `dim` must equal the
/// image tower's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextManifest {
    /// File name of the text tower, relative to the model directory.
    pub onnx_file: String,
    /// SHA-256 of the text tower's `onnx_file`, lower-case hex.
    #[serde(default)]
    pub onnx_sha256: Option<String>,
    /// int64 [N, context_length] token ids.
    pub input_name: String,
    /// int64 [N, context_length] attention mask (1 on tokens, 0 on padding), when the graph
    /// has one; `null` or absent when it does not (HF CLIP's text tower works without).
    #[serde(default)]
    pub attention_mask_name: Option<String>,
    /// float32 [N, dim] output returned as the text embedding.
    pub output_name: String,
    /// Tokens per text, SOT and EOT included (77 for CLIP).
    pub context_length: usize,
    /// Must equal the image tower's `dim`.
    pub dim: usize,
    pub l2_normalize: bool,
    pub tokenizer: TokenizerKind,
}

/// Which output of the image tower a run returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output<'a> {
    /// The embedding (`output_name`, `dim`), L2-normalised if the manifest says so.
    Embedding,
    /// A named extra output (`extra_outputs`), as the graph produces it.
    Extra(&'a str),
}

impl<'a> Output<'a> {
    /// The output a caller names: "embedding" is the embedding, anything else an extra.
    pub fn named(name: &'a str) -> Output<'a> {
        if name == "embedding" {
            Output::Embedding
        } else {
            Output::Extra(name)
        }
    }
}

/// An ONNX file named in a manifest must be a plain file name inside the model directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains("..")
}

/// "`<what>` "x" must be a plain file name inside the model directory", if it is not.
fn check_onnx_file(what: &str, name: &str) -> std::result::Result<(), String> {
    if is_plain_file_name(name) {
        Ok(())
    } else {
        Err(format!("{what} \"{name}\" must be a plain file name inside the model directory"))
    }
}

/// The error for a text embedding asked of a model without a `"text"` section.
pub fn no_text_tower(model: &str) -> Error {
    Error::new(Kind::InvalidArgument, format!("model \"{model}\" has no text tower"))
        .with_hint("text embeddings need a CLIP-style model whose manifest has a \"text\" section")
        .with_fact(Fact::NoTextTower)
}

/// A declared SHA-256 is 64 lower-case hex digits (what `sha256sum` prints).
fn check_sha256_syntax(hex: Option<&str>) -> std::result::Result<(), String> {
    match hex {
        Some(h) if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Err(format!("onnx_sha256 \"{h}\" is not 64 lower-case hex digits"))
        }
        _ => Ok(()),
    }
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
        Err(Error::new(Kind::UnknownModel, format!("invalid model name \"{name}\""))
            .with_hint("model names use lower-case letters, digits, '_' and '-'")
            .with_fact(Fact::InvalidModelName))
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
        let unreadable = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(Kind::UnknownModel, format!("unknown model \"{name}\": no manifest {}", path.display()))
                    .with_fact(Fact::UnknownModel)
            } else {
                Error::new(Kind::FileMissing, format!("cannot read model manifest {}: {e}", path.display()))
            }
        };
        let source = Source::of(path.clone()).map_err(unreadable)?;
        let json = std::fs::read_to_string(&path).map_err(unreadable)?;
        let mut m = Manifest::parse(&json, &path)?;
        m.source = Some(source);
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
                .with_fact(Fact::ModelDirUnreadable)
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

    /// The text tower's section; `no_text_tower` for an image-only model.
    pub fn text_tower(&self) -> Result<&TextManifest> {
        self.text.as_ref().ok_or_else(|| no_text_tower(&self.name))
    }

    /// The ONNX file of a tower in the model directory `dir`; `no_text_tower` for the text
    /// tower of an image-only model.
    pub fn onnx_path(&self, dir: &Path, tower: Tower) -> Result<PathBuf> {
        Ok(dir.join(match tower {
            Tower::Image => &self.onnx_file,
            Tower::Text => &self.text_tower()?.onnx_file,
        }))
    }

    /// The tensor name and dimension of an output of the image tower.
    pub fn output(&self, which: Output<'_>) -> Result<(&str, usize)> {
        match which {
            Output::Embedding => Ok((&self.output_name, self.dim)),
            Output::Extra(extra) => {
                self.extra_outputs.get(extra).map(|o| (o.output_name.as_str(), o.dim)).ok_or_else(|| {
                    let known: Vec<&str> =
                        std::iter::once("embedding").chain(self.extra_outputs.keys().map(String::as_str)).collect();
                    Error::new(Kind::InvalidArgument, format!("model \"{}\" has no output \"{extra}\"", self.name))
                        .with_hint(format!("its outputs are: {}", known.join(", ")))
                })
            }
        }
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let bad =
            |what: String| Err(Error::new(Kind::BadModel, format!("model manifest {}: {what}", origin.display())));
        check_model_name(&self.name)?;
        check_onnx_file("onnx_file", &self.onnx_file).or_else(bad)?;
        check_sha256_syntax(self.onnx_sha256.as_deref()).or_else(bad)?;
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
        if self.dim == 0 || self.dim > MAX_DIM {
            return bad(format!("dim {} must be between 1 and {MAX_DIM} (pgvector's limit)", self.dim));
        }
        if let Some(text) = &self.text {
            text.validate(self.dim, origin)?;
        }
        Ok(())
    }
}

impl TextManifest {
    /// Checks the section; `image_dim` is the manifest's (image) `dim`.
    pub fn validate(&self, image_dim: usize, origin: &Path) -> Result<()> {
        let bad =
            |what: String| Err(Error::new(Kind::BadModel, format!("model manifest {}: text.{what}", origin.display())));
        check_onnx_file("onnx_file", &self.onnx_file).or_else(bad)?;
        check_sha256_syntax(self.onnx_sha256.as_deref()).or_else(bad)?;
        if self.input_name.is_empty() || self.output_name.is_empty() {
            return bad("input_name and output_name must not be empty".into());
        }
        if let Some(mask) = &self.attention_mask_name {
            if mask.is_empty() || *mask == self.input_name {
                return bad(format!(
                    "attention_mask_name \"{mask}\" must be null or a tensor name other than input_name"
                ));
            }
        }
        if !(2..=MAX_CONTEXT_LENGTH).contains(&self.context_length) {
            return bad(format!(
                "context_length {} must be between 2 and {MAX_CONTEXT_LENGTH} (CLIP uses 77)",
                self.context_length
            ));
        }
        if self.dim != image_dim {
            return bad(format!(
                "dim {} must equal the image dim {image_dim}: text and image vectors live in one space to be compared",
                self.dim
            ));
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
    fn a_source_notices_a_rewritten_replaced_or_removed_file() {
        let dir = std::env::temp_dir().join(format!("pgv-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.onnx");
        std::fs::write(&path, b"weights").unwrap();
        let read = Source::of(path.clone()).unwrap();
        assert!(read.unchanged());
        // Same bytes written again in place: the change time moves.
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(&path, b"weights").unwrap();
        assert!(!read.unchanged());
        // Replaced by a rename (a new inode), as deployments do.
        let read = Source::of(path.clone()).unwrap();
        std::fs::write(dir.join("new"), b"weights").unwrap();
        std::fs::rename(dir.join("new"), &path).unwrap();
        assert!(!read.unchanged());
        let read = Source::of(path.clone()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!read.unchanged());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_does_not_match_its_declared_sha256_is_refused() {
        let dir = std::env::temp_dir().join(format!("pgv-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.onnx");
        std::fs::write(&path, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; // sha256sum of "abc"
        let source = Source::of(path.clone()).unwrap();
        assert_eq!(source.sha256().unwrap(), abc);
        source.check_sha256(Some(abc), "m", "make models").unwrap();
        source.check_sha256(None, "m", "make models").unwrap();
        // Half copied: a new identity, hashed again, refused with what to do.
        std::fs::write(&path, b"ab").unwrap();
        let e = Source::of(path.clone()).unwrap().check_sha256(Some(abc), "m", "make models").unwrap_err();
        assert_eq!(e.kind, Kind::BadModel);
        assert!(
            e.message
                .contains("does not match the sha256 in its manifest (file fb8e20fc2e4c..., manifest ba7816bf8f01...)"),
            "{}",
            e.message
        );
        assert!(e.hint.as_deref().unwrap().contains("make models"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_declared_sha256_must_be_lower_case_hex() {
        assert!(check_sha256_syntax(None).is_ok());
        assert!(check_sha256_syntax(Some(&"a".repeat(64))).is_ok());
        assert!(check_sha256_syntax(Some(&"A".repeat(64))).is_err());
        assert!(check_sha256_syntax(Some("abc")).is_err());
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
        assert_eq!(e.output(Output::Extra("logits")).unwrap(), ("logits", 1000));
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
        let err = e.output(Output::named("nope")).unwrap_err();
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

    fn section(json: &str) -> TextManifest {
        serde_json::from_str(json).unwrap()
    }

    const GOOD: &str = r#"{ "onnx_file": "x-text.onnx", "input_name": "input_ids", "attention_mask_name": null,
        "output_name": "text_embeds", "context_length": 77, "dim": 512, "l2_normalize": true, "tokenizer": "clip_bpe" }"#;

    #[test]
    fn text_section_parses_and_validates() {
        let p = Path::new("m.json");
        let t = section(GOOD);
        assert_eq!(
            (t.context_length, t.dim, t.tokenizer, t.attention_mask_name.as_deref()),
            (77, 512, TokenizerKind::ClipBpe, None)
        );
        t.validate(512, p).unwrap();
        assert!(t.validate(768, p).unwrap_err().message.contains("must equal the image dim 768"));
        assert!(section(&GOOD.replace("\"attention_mask_name\": null,", "")).attention_mask_name.is_none());
        for (from, to) in [
            ("\"x-text.onnx\"", "\"../x.onnx\""),
            ("\"context_length\": 77", "\"context_length\": 1"),
            ("\"attention_mask_name\": null", "\"attention_mask_name\": \"input_ids\""),
            ("\"input_ids\",", "\"\","),
        ] {
            let bad = GOOD.replace(from, to);
            assert_ne!(bad, GOOD);
            assert_eq!(section(&bad).validate(512, p).unwrap_err().kind, Kind::BadModel, "{to}");
        }
        for (from, to) in [("\"clip_bpe\"", "\"sentencepiece\""), ("\"dim\"", "\"dims\"")] {
            assert!(serde_json::from_str::<TextManifest>(&GOOD.replace(from, to)).is_err(), "{to}");
        }
        assert_eq!(no_text_tower("efficientnet").kind, Kind::InvalidArgument);
    }

    #[test]
    fn shipped_fixture_manifest_has_a_valid_text_section() {
        let json = std::fs::read_to_string(repo_models().join("clip_fixture.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let t: TextManifest = serde_json::from_value(v["text"].clone()).unwrap();
        t.validate(v["dim"].as_u64().unwrap() as usize, Path::new("clip_fixture.json")).unwrap();
        assert_eq!((t.onnx_file.as_str(), t.context_length, t.dim), ("clip-fixture-text.onnx", 77, 512));
        assert!(v["description"].as_str().unwrap().contains("RANDOM WEIGHTS"));
    }

    #[test]
    fn one_onnx_path_per_tower() {
        let dir = repo_models();
        let f = Manifest::load(&dir, "clip_fixture").unwrap();
        assert_eq!(f.onnx_path(&dir, Tower::Image).unwrap(), dir.join("clip-fixture-image.onnx"));
        assert_eq!(f.onnx_path(&dir, Tower::Text).unwrap(), dir.join("clip-fixture-text.onnx"));
        let e = Manifest::load(&dir, "efficientnet").unwrap();
        assert_eq!(e.onnx_path(&dir, Tower::Text).unwrap_err().fact, Some(Fact::NoTextTower));
        for t in [Tower::Image, Tower::Text] {
            assert_eq!(Tower::from_u8(t as u8), Some(t));
        }
        assert_eq!(Tower::from_u8(0), None);
        assert!(!is_plain_file_name("") && !is_plain_file_name("a/b") && !is_plain_file_name("..x"));
    }
}
