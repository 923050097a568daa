//! `decode::from_base64` on arbitrary text (plain base64 with whitespace, optional
//! padding, or a `data:<mime>;base64,` URL). Errors are fine; panics are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_vision_core::decode;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(bytes) = decode::from_base64(&text) {
        // Standard base64 carries 3 bytes in 4 characters; whatever was filtered out
        // (whitespace, a data: prefix) only makes the output shorter.
        assert!(bytes.len() <= text.len() / 4 * 3 + 2, "{} bytes from {} characters", bytes.len(), text.len());
    }
});
