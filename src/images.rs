//! Image facts without a model: format, size, orientation, checksum.

use pgrx::prelude::*;
use sha2::{Digest, Sha256};

use pg_vision_core::decode;

use crate::guc;
use crate::sql_errors::OrRaise;

/// Format, stored width and height, EXIF orientation (1-8) and transparency, read from
/// the header without decoding the pixels.
#[pg_extern(immutable, strict, parallel_safe)]
fn image_info(
    image: &[u8],
) -> TableIterator<
    'static,
    (name!(format, String), name!(width, i32), name!(height, i32), name!(orientation, i32), name!(has_alpha, bool)),
> {
    let i = decode::info(image, &guc::decode_options()).or_raise();
    TableIterator::once((i.format.to_owned(), i.width as i32, i.height as i32, i.orientation as i32, i.has_alpha))
}

/// SHA-256 of the bytes, lower-case hex: the checksum stored beside each embedding.
#[pg_extern(immutable, strict, parallel_safe)]
fn image_checksum(image: &[u8]) -> String {
    Sha256::digest(image).iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes base64 text (plain, or a `data:image/...;base64,` URL) to bytes, for JSON
/// clients: `embed_efficientnet(image_from_base64($1))`.
#[pg_extern(immutable, strict, parallel_safe)]
fn image_from_base64(image: &str) -> Vec<u8> {
    decode::from_base64(image, crate::guc::decode_options().max_bytes).or_raise()
}
