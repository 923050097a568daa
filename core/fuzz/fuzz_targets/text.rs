//! `tokenize::clean_text` and `tokenize::tokenize` on arbitrary UTF-8 (UTF-8-lossy of the input
//! after its first byte, which picks the context length, 2..=80). Asserts the contract of
//! `tokenize`: `context_length` ids and mask entries, SOT first, the text tokens (none of
//! them a special id) under a mask of ones, exactly one EOT right after them, zero padding;
//! and `Kind::LimitExceeded` exactly for texts over `MAX_TEXT_BYTES` (the input is
//! repeated past the limit when its first byte is 0xff).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_vision_core::error::Kind;
use pg_vision_core::tokenize::{self, END_OF_TEXT, MAX_TEXT_BYTES, START_OF_TEXT};

fn check(text: &str, ctx: usize) {
    match tokenize::tokenize(text, ctx) {
        Err(e) => {
            assert_eq!(e.kind, Kind::LimitExceeded, "{e}");
            assert!(text.len() > MAX_TEXT_BYTES, "{} bytes rejected: {e}", text.len());
        }
        Ok((ids, mask, truncated)) => {
            assert!(text.len() <= MAX_TEXT_BYTES, "{} bytes accepted", text.len());
            assert_eq!((ids.len(), mask.len()), (ctx, ctx));
            let used = mask.iter().take_while(|m| **m == 1).count();
            assert!(used >= 2, "{mask:?}");
            assert!(mask[used..].iter().all(|m| *m == 0), "mask {mask:?}");
            assert_eq!(ids[0], START_OF_TEXT, "{ids:?}");
            assert_eq!(ids[used - 1], END_OF_TEXT, "{ids:?}");
            assert!(
                ids[1..used - 1].iter().all(|i| (0..START_OF_TEXT).contains(i)),
                "special or negative id inside: {ids:?}"
            );
            assert!(ids[used..].iter().all(|i| *i == 0), "padding {ids:?}");
            assert!(!truncated || used == ctx, "truncated but only {used} of {ctx} used");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let ctx = 2 + usize::from(first) % 79;
    let text = String::from_utf8_lossy(rest);
    let cleaned = tokenize::clean_text(&text);
    assert!(!cleaned.starts_with(char::is_whitespace) && !cleaned.ends_with(char::is_whitespace), "{cleaned:?}");
    check(&text, ctx);
    // Over the limit now and then: the input repeated past 1 MiB must be rejected (that
    // is cheap: nothing is done with it). Tokenising 1 MiB takes seconds under ASan, so
    // the at-the-limit case is left to the unit tests (`over_long_text_is_rejected_...`).
    if first == 0xff && !rest.is_empty() {
        let big = text.repeat(MAX_TEXT_BYTES / text.len() + 1);
        check(&big, ctx);
    }
});
