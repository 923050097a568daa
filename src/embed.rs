//! The embedding functions. `embed_image` is the one entry point; the per-model
//! functions (`embed_efficientnet`, `embed_fclip`) are SQL wrappers that fix the
//! dimension in their return type.
//!
//! Volatility: declared IMMUTABLE, so they can feed generated columns and expression
//! indexes. That is a promise the DBA keeps: a model name always means the same weights
//! and the same recipe. Replacing a model's files under the same name requires
//! re-embedding stored rows (and REINDEX of expression indexes). PARALLEL SAFE: each
//! parallel worker loads its own copy of the model.

use pgrx::prelude::*;

use pg_vision_core::embed::{self, Batching};
use pg_vision_core::manifest::{Manifest, Output, Source, Tower};

use crate::cache;
use crate::guc;
use crate::interrupt;
use crate::memo;
use crate::sql_errors::{in_sql_terms, OrRaise};
use crate::vector::{self, Vector};

/// Embeds an image with the named model. The same image again (same model files and
/// settings) comes from this backend's memo (`memo.rs`) without running the model.
#[pg_extern(immutable, strict, parallel_safe, cost = 250000)]
fn embed_image(model: &str, image: &[u8]) -> Vector {
    let v = memo::remembered(Tower::Image, model, image, || {
        cache::with_model(model, |m| interrupt::run(|opts| embed::embed_image(m, image, opts, Output::Embedding)))
            .map(|(v, _)| v)
    })
    .or_raise();
    Vector::checked(v).or_raise()
}

/// Embeds text with a CLIP-style model's text tower, into the same space as its images.
/// Text longer than the model's context (77 tokens for CLIP) is truncated: the first 75
/// tokens are kept (`pg_vision_core::tokenize::tokenize`). Text over 1 MiB is refused (54000).
#[pg_extern(immutable, strict, parallel_safe, cost = 100000)]
fn embed_text(model: &str, input: &str) -> Vector {
    let v = memo::remembered(Tower::Text, model, input.as_bytes(), || {
        let mut v =
            cache::with_text_model(model, |m| interrupt::run(|opts| m.embed_text_checked(&[input], opts.stop)))?;
        Ok(v.pop().expect("one vector per text"))
    })
    .or_raise();
    Vector::checked(v).or_raise()
}

/// Embeds many images in one call, for backfills: decoded in parallel on the cores the
/// model's threads leave free, run through the model in batches of `batch_size` (1 to
/// `MAX_BATCH`, 64), with query cancel honoured within milliseconds. NULL elements give
/// NULL vectors; any other bad image fails the whole call with its position in the array.
/// A NULL argument gives NULL. The result must fit in one PostgreSQL value (1 GB).
///
/// The default batch is small because on CPU a bigger batch does not make the model
/// faster per image; it only multiplies the activations held in memory.
#[pg_extern(immutable, parallel_safe, cost = 1000000)]
fn embed_images(
    model: Option<&str>,
    images: Option<Array<&[u8]>>,
    batch_size: default!(Option<i32>, 4),
) -> Option<Vec<Option<Vector>>> {
    let (model, images, batch_size) = (model?, images?, batch_size?);
    let batching = Batching::new(batch_size.into()).or_raise();
    let present: Vec<&[u8]> = images.iter().flatten().collect();
    let mut vectors = cache::with_model(model, |m| {
        vector::check_array_fits(images.len(), present.len(), m.manifest.dim)?;
        interrupt::run(|opts| embed::embed_images(m, &present, opts, batching))
    })
    .or_raise()
    .into_iter();
    Some(
        images
            .iter()
            .map(|img| img.map(|_| Vector::checked(vectors.next().expect("one vector per image")).or_raise()))
            .collect(),
    )
}

/// Another output of the model than its embedding, as an array (e.g. EfficientNet's
/// ImageNet `logits`).
#[pg_extern(immutable, strict, parallel_safe, cost = 250000)]
fn embed_image_output(model: &str, image: &[u8], output: &str) -> Vec<f32> {
    let output = Output::named(output);
    cache::with_model(model, |m| {
        m.manifest.output(output)?;
        interrupt::run(|opts| embed::embed_image(m, image, opts, output))
    })
    .or_raise()
    .0
}

/// Where the time of one embedding goes, in milliseconds (for benchmarks).
#[pg_extern(volatile, strict, parallel_safe, cost = 250000)]
fn pg_vision_profile(
    model: &str,
    image: &[u8],
) -> TableIterator<
    'static,
    (name!(decode_ms, f64), name!(preprocess_ms, f64), name!(inference_ms, f64), name!(total_ms, f64)),
> {
    let (_, t) =
        cache::with_model(model, |m| interrupt::run(|opts| embed::embed_image(m, image, opts, Output::Embedding)))
            .or_raise();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let row = (ms(t.decode), ms(t.preprocess), ms(t.inference), ms(t.decode + t.preprocess + t.inference));
    TableIterator::once(row)
}

/// The dimension of the named model's embedding, from its manifest alone (one small file,
/// no weights); NULL for a model that does not exist. The trigger checks its target
/// columns with it on every row, so it must stay this cheap.
#[pg_extern(stable, strict, parallel_safe)]
fn pg_vision_model_dim(model: &str) -> Option<i32> {
    match Manifest::load(&guc::model_dir(), model) {
        Ok(m) => Some(m.dim as i32),
        Err(e) if e.kind == pg_vision_core::Kind::UnknownModel => None,
        Err(e) => crate::sql_errors::raise(e),
    }
}

/// The models in `pg_vision.model_dir`: whether they embed text too (a text tower, for
/// `embed_text`), whether their weights are present and whether this connection has them
/// loaded.
// pgrx reads the SQL result columns from this signature, so they cannot move into a type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn pg_vision_models() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(dim, i32),
        name!(input_size, String),
        name!(onnx_file, String),
        name!(available, bool),
        name!(loaded, bool),
        name!(problem, Option<String>),
        name!(description, String),
        // Columns are only ever appended: a database not yet updated to this version
        // declares the older, shorter list, and PostgreSQL reads each row by that list.
        name!(text_tower, bool),
    ),
> {
    let dir = guc::model_dir();
    let loaded: Vec<String> = cache::loaded().into_iter().map(|l| l.name).collect();
    let rows: Vec<_> = Manifest::list(&dir)
        .or_raise()
        .into_iter()
        .map(|(name, m)| {
            let is_loaded = loaded.contains(&name);
            match m {
                Ok(m) => {
                    let problem = files_problem(&dir, &m);
                    let available = problem.is_none();
                    (
                        name,
                        m.dim as i32,
                        format!("{}x{}", m.width, m.height),
                        m.onnx_file,
                        available,
                        is_loaded,
                        problem,
                        m.description,
                        m.text.is_some(),
                    )
                }
                Err(e) => {
                    let problem = Some(in_sql_terms(e).to_string());
                    (name, 0, String::new(), String::new(), false, is_loaded, problem, String::new(), false)
                }
            }
        })
        .collect();
    TableIterator::new(rows)
}

/// What is wrong with a model's ONNX files, if anything: missing, or not matching the
/// sha256 its manifest declares (each file hashed once per identity in this process).
fn files_problem(dir: &std::path::Path, m: &Manifest) -> Option<String> {
    let towers = [(Tower::Image, m.onnx_sha256.as_deref())]
        .into_iter()
        .chain(m.text.as_ref().map(|t| (Tower::Text, t.onnx_sha256.as_deref())));
    for (tower, sha256) in towers {
        let path = m.onnx_path(dir, tower).or_raise();
        let checked = match Source::of(path.clone()) {
            Ok(source) => source.check_sha256(sha256, &m.name, &m.fetch_hint),
            Err(_) => return Some(format!("{} is missing; create it with: {}", path.display(), m.fetch_hint)),
        };
        if let Err(e) = checked {
            return Some(in_sql_terms(e).to_string());
        }
    }
    None
}

/// This connection's loaded models: ONNX file size and measured memory (`bytes`, the heap
/// the load left allocated; see README, "Memory budget").
#[pg_extern(volatile, parallel_safe)]
fn pg_vision_loaded_models() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(tower, String),
        name!(file_bytes, i64),
        name!(bytes, i64),
        name!(load_ms, f64),
        name!(calls, i64),
    ),
> {
    TableIterator::new(
        cache::loaded().into_iter().map(|l| {
            (l.name, l.tower.as_str().to_owned(), l.file_bytes as i64, l.bytes as i64, l.load_ms, l.calls as i64)
        }),
    )
}

/// Frees a model's towers (or every model, with NULL) in this connection and releases
/// their bytes from the memory budget; returns how many.
#[pg_extern(volatile, parallel_unsafe)]
fn pg_vision_unload(model: default!(Option<&str>, "NULL")) -> i32 {
    cache::unload(model) as i32
}

extension_sql!(
    r#"
CREATE FUNCTION embed_efficientnet(image bytea) RETURNS vector(1280)
    IMMUTABLE STRICT PARALLEL SAFE COST 250000 LANGUAGE sql
    RETURN embed_image('efficientnet', image)::vector(1280);
COMMENT ON FUNCTION embed_efficientnet(bytea) IS 'EfficientNet-Lite0 (ImageNet) 1280-d image embedding';

CREATE FUNCTION embed_fclip(image bytea) RETURNS vector(512)
    IMMUTABLE STRICT PARALLEL SAFE COST 250000 LANGUAGE sql
    RETURN embed_image('fclip', image)::vector(512);
COMMENT ON FUNCTION embed_fclip(bytea) IS 'Fashion-CLIP (ViT-B/32) 512-d image embedding, L2-normalised';

CREATE FUNCTION embed_fclip_text(input text) RETURNS vector(512)
    IMMUTABLE STRICT PARALLEL SAFE COST 100000 LANGUAGE sql
    RETURN embed_text('fclip', input)::vector(512);
COMMENT ON FUNCTION embed_fclip_text(text) IS 'Fashion-CLIP 512-d text embedding, L2-normalised, comparable with embed_fclip';
"#,
    name = "model_wrappers",
    requires = [embed_image, embed_text]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A photo-like image made in SQL-free Rust: a gradient, as a 24-bit BMP (the one
    /// format simple enough to write by hand).
    fn gradient_bmp(w: u32, h: u32) -> Vec<u8> {
        let row = (w * 3).next_multiple_of(4);
        let size = 54 + row * h;
        let mut out = Vec::with_capacity(size as usize);
        out.extend_from_slice(b"BM");
        for v in [size, 0, 54, 40, w, h] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&1u16.to_le_bytes()); // planes
        out.extend_from_slice(&24u16.to_le_bytes()); // bits per pixel
        for v in [0, row * h, 2835, 2835, 0, 0] {
            out.extend_from_slice(&v.to_le_bytes()); // no compression, image size, 72 dpi, palette
        }
        for y in (0..h).rev() {
            let start = out.len();
            for x in 0..w {
                out.extend_from_slice(&[128, (y * 255 / h) as u8, (x * 255 / w) as u8]);
                // B, G, R
            }
            out.resize(start + row as usize, 0);
        }
        out
    }

    #[pg_test]
    fn embeds_and_is_deterministic() {
        let bmp = gradient_bmp(320, 200);
        let dims =
            Spi::get_one_with_args::<i32>("SELECT vector_dims(embed_efficientnet($1))", &[bmp.clone().into()]).unwrap();
        assert_eq!(dims, Some(1280));
        let d = Spi::get_one_with_args::<f64>(
            "SELECT embed_efficientnet($1) <=> embed_image('efficientnet', $1)",
            &[bmp.into()],
        )
        .unwrap();
        assert_eq!(d, Some(0.0));
    }

    #[pg_test]
    fn errors_do_not_poison_the_cache() {
        // A failed call must leave the loaded model usable: the error unwinds through the
        // cache's borrow of the model.
        let bad = PgTryBuilder::new(|| Spi::run("SELECT embed_efficientnet('\\x89504e470d0a1a0a0000')").is_ok())
            .catch_others(|_| false)
            .execute();
        assert!(!bad);
        let bmp = gradient_bmp(64, 64);
        let dims = Spi::get_one_with_args::<i32>("SELECT vector_dims(embed_efficientnet($1))", &[bmp.into()]).unwrap();
        assert_eq!(dims, Some(1280));
    }
}
