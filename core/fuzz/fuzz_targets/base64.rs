//! `decode::from_base64` on arbitrary text (plain base64 with whitespace, optional
//! padding, or a `data:<mime>;base64,` URL), with a size limit taken from the first two
//! bytes (0..=65535). Errors are fine; panics are bugs. Asserts that an over-limit
//! result is never returned and that the size check comes first: a text whose
//! non-whitespace characters decode to more than the limit is `ImageTooLarge`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_vision_core::decode;
use pg_vision_core::error::Kind;

fuzz_target!(|data: &[u8]| {
    let (max_bytes, rest) = match data {
        [a, b, rest @ ..] => (u64::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (u64::MAX, data),
    };
    let text = String::from_utf8_lossy(rest);
    let body = match text.trim_start().strip_prefix("data:").and_then(|url| url.split_once(',')) {
        Some((_, data)) => data,
        None => &text,
    };
    let significant = body.bytes().filter(|b| !b.is_ascii_whitespace()).count() as u64;
    match decode::from_base64(&text, max_bytes) {
        Ok(bytes) => {
            assert!(bytes.len() as u64 <= max_bytes, "{} bytes over the limit {max_bytes}", bytes.len());
            // Standard base64 carries 3 bytes in 4 characters; whatever was filtered out
            // (whitespace, a data: prefix) only makes the output shorter.
            assert!(bytes.len() as u64 <= significant * 3 / 4, "{} bytes from {significant} characters", bytes.len());
        }
        Err(e) if e.kind == Kind::ImageTooLarge => {
            // Only an upper bound over the limit rejects: the bound can't be below 4/3 of it.
            assert!(significant * 3 / 4 > max_bytes, "{e}: {significant} characters, limit {max_bytes}");
            assert!(e.message.contains("over the limit of"), "{e}");
        }
        Err(e) => assert_eq!(e.kind, Kind::InvalidArgument, "{e}"),
    }
});
