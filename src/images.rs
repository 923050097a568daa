//! Image facts without a model: format, size, orientation, checksum, base64 decoding.

use pgrx::prelude::*;

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

// SHA-256 of the bytes, lower-case hex: the checksum stored beside each embedding.
// PostgreSQL computes it; a SQL-standard body is bound to pg_catalog's functions when it is
// created, so no search_path can redirect it, and the planner can inline it.
extension_sql!(
    r#"
CREATE FUNCTION image_checksum(image bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
  SELECT pg_catalog.encode(pg_catalog.sha256(image), 'hex');
END;
COMMENT ON FUNCTION image_checksum(bytea) IS 'SHA-256 of the image bytes, lower-case hex';
"#,
    name = "image_checksum"
);

/// The C entry point that `image_checksum(bytea)` of versions 0.1.0 to 0.3.0 names: a
/// database still at one of those versions keeps working with this library until
/// `ALTER EXTENSION pg_vision UPDATE` replaces it with the SQL function above.
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn image_checksum(image: &[u8]) -> String {
    // SAFETY: sha256_bytea is PostgreSQL's sha256(bytea), called with one non-NULL bytea.
    let digest: Vec<u8> =
        unsafe { pgrx::direct_function_call(pg_sys::sha256_bytea, &[image.into_datum()]) }.unwrap_or_default();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes base64 text (plain, or a `data:image/...;base64,` URL) to bytes, for JSON
/// clients: `embed_efficientnet(image_from_base64($1))`.
#[pg_extern(immutable, strict, parallel_safe)]
fn image_from_base64(image: &str) -> Vec<u8> {
    decode::from_base64(image, crate::guc::decode_options().max_bytes).or_raise()
}
