//! A model's output tensor to one vector per input: its size checked against the manifest,
//! NaN and infinity rejected, L2-normalised when the manifest says so. Also the check any
//! finished vector passes before it is stored (`check_vector`).

use crate::error::{Error, Kind, Result};
use crate::manifest::MAX_DIM;

/// What a model's inputs are, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Image,
    Text,
}

impl Item {
    fn as_str(self) -> &'static str {
        match self {
            Item::Image => "image",
            Item::Text => "text",
        }
    }
}

/// What an output tensor should hold: `batch` rows of `dim` values.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    /// The model's name, for messages.
    pub model: &'a str,
    /// The output, for messages: `output "logits"`, `text output "text_embeds"`.
    pub output: &'a str,
    pub item: Item,
    pub batch: usize,
    pub dim: usize,
    /// Scale each row to unit length.
    pub l2_normalize: bool,
}

/// The position and value of the first NaN or infinity in `values`.
pub fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    values.iter().position(|x| !x.is_finite()).map(|i| (i, values[i]))
}

/// Splits a model's `[batch, dim]` output (`shape`, `values`) into one vector per input,
/// after checking its size, rejecting NaN and infinity, and L2-normalising if asked.
pub fn split(rows: &Rows<'_>, shape: &[i64], values: &[f32]) -> Result<Vec<Vec<f32>>> {
    let Rows { model, output, item, batch, dim, l2_normalize: l2 } = *rows;
    let item = item.as_str();
    if values.len() != batch * dim || shape.first().copied() != Some(batch as i64) {
        return Err(Error::new(
            Kind::BadModel,
            format!("model \"{model}\": {output} has shape {shape:?} for {batch} {item}(s), but the manifest declares {dim} values per {item}"),
        )
        .with_hint("fix the dim in the model's manifest (a text tower's must equal the image dim), or re-export the model"));
    }
    let mut vectors = Vec::with_capacity(batch);
    for (i, v) in values.chunks_exact(dim).enumerate() {
        if let Some((pos, value)) = first_non_finite(v) {
            return Err(Error::new(
                Kind::NonFinite,
                format!("model \"{model}\" produced {value} at position {pos} of {item} {}", i + 1),
            )
            .with_hint("the model or its manifest's normalisation is broken; the vector was not stored"));
        }
        let mut v = v.to_vec();
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

/// What pgvector accepts as a vector: 1 to `MAX_DIM` values, none NaN or infinite.
pub fn check_vector(values: &[f32]) -> Result<()> {
    if values.is_empty() || values.len() > MAX_DIM {
        return Err(Error::new(
            Kind::BadModel,
            format!("a vector must have 1 to {MAX_DIM} dimensions, got {}", values.len()),
        ));
    }
    if let Some((i, value)) = first_non_finite(values) {
        return Err(Error::new(Kind::NonFinite, format!("vector value {value} at position {i} is not finite")));
    }
    Ok(())
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

    #[test]
    fn split_checks_size_and_values() {
        let rows = Rows { model: "m", output: "output \"o\"", item: Item::Image, batch: 2, dim: 2, l2_normalize: true };
        assert_eq!(split(&rows, &[2, 2], &[3.0, 4.0, 0.0, 0.0]).unwrap(), vec![vec![0.6, 0.8], vec![0.0, 0.0]]);
        let e = split(&rows, &[2, 3], &[0.0; 6]).unwrap_err();
        assert_eq!(e.kind, Kind::BadModel);
        assert!(e.message.contains("declares 2 values per image"), "{e}");
        let e = split(&rows, &[2, 2], &[1.0, 1.0, 1.0, f32::NAN]).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (Kind::NonFinite, "model \"m\" produced NaN at position 1 of image 2")
        );
    }

    #[test]
    fn vectors_pgvector_would_refuse() {
        assert!(check_vector(&[1.0]).is_ok());
        assert_eq!(check_vector(&[]).unwrap_err().message, "a vector must have 1 to 16000 dimensions, got 0");
        assert_eq!(check_vector(&vec![0.0; MAX_DIM + 1]).unwrap_err().kind, Kind::BadModel);
        let e = check_vector(&[1.0, f32::INFINITY]).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (Kind::NonFinite, "vector value inf at position 1 is not finite"));
    }
}
