//! CLIP's tokeniser: text clean-up, lower-casing and byte-level BPE to the token ids and
//! attention mask a CLIP text tower takes (`text_model.rs` runs the tower). No ONNX
//! Runtime here.
//!
//! # Tokenisation: Hugging Face's `CLIPTokenizerFast`, after OpenAI's clean-up
//!
//! The ids are those of Hugging Face's `CLIPTokenizerFast` (what transformers'
//! `CLIPProcessor` gives), `truncation=True, max_length=77`, on the text after a clean-up
//! taken from OpenAI's `clip.tokenize`:
//!
//! 1. Clean-up (OpenAI's `basic_clean` + `whitespace_clean`, which `CLIPTokenizerFast`
//!    leaves out): an ftfy-like repair (`clean_text` lists exactly what is and is not
//!    done), HTML entities unescaped twice (`html.unescape(html.unescape(text))`), every run
//!    of whitespace collapsed to one space, leading and trailing whitespace removed.
//! 2. `CLIPTokenizerFast`'s normaliser: NFC, lower case one character at a time
//!    (`normalize_like_hf`).
//! 3. Splitting into words with CLIP's pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` and byte-level BPE on each
//!    word with OpenAI's vocabulary (`bpe_simple_vocab_16e6.txt`, 49408 ids), through the
//!    `instant-clip-tokenizer` crate, which bundles that vocabulary.
//! 4. `<|startoftext|>` (49406) + tokens + `<|endoftext|>` (49407), zero padded to
//!    `context_length`; the attention mask is 1 on those tokens and 0 on the padding.
//!
//! `core/tests/tokenizer_equivalence.rs` checks this on 3,093 strings against ids printed by
//! `CLIPTokenizerFast` (`scripts/tokenizer_fixture.py`): 2,317 give exactly its ids; the
//! others change under the clean-up (HTML entities, curly quotes, ligatures, full-width
//! ASCII, control and invisible characters) or hold a special-token string (below), and
//! give its ids on the cleaned text. OpenAI's tokeniser differs in two more ways, where this
//! follows Hugging Face: it lower-cases with Python's `str.lower` (a final `Σ` is `ς`, here
//! `σ`), and it runs the whole of `ftfy.fix_text` (mojibake repair, more ligatures,
//! half-width katakana, entities ftfy unescapes itself, U+000B removed), not done here.
//!
//! **Truncation rule.** When SOT + tokens + EOT is longer than `context_length`, the
//! sequence is cut to its first `context_length` ids and the last one is replaced by EOT:
//! SOT, the first `context_length - 2` text tokens, EOT (OpenAI's `truncate=True`:
//! `tokens = tokens[:context_length]; tokens[-1] = eot_token`; Hugging Face's
//! `CLIPTokenizerFast(truncation=True, max_length=77)` gives the same ids, checked by the
//! fixture's generator). A word can be cut in the middle of its BPE pieces. `tokenize`
//! reports it (`truncated`), so a caller can warn; a text is rejected for its length only
//! over `MAX_TEXT_BYTES` (1 MiB, see below).
//!
//! **Special tokens:** user text never produces the special ids. Hugging Face's and OpenAI's
//! tokenisers turn the literal string `<|endoftext|>` inside the text into 49407 (Hugging
//! Face also `<|ENDOFTEXT|>`; the crate its own spelling `<end_of_text>`); here they are
//! ordinary text, split and encoded like any other characters (`CLIPTokenizerFast` with
//! `split_special_tokens=True`, transformers 4.46). Hugging Face CLIP models pool the text
//! at the first argmax of the ids, so an injected EOT would silently cut the query short.
//!
//! Hugging Face CLIP text graphs find the EOT position with `argmax(input_ids)` inside the
//! graph: that only needs the ids to be the real CLIP ids, as int64, which they are.
//!
//! # HTML entities: Python's `html.unescape`, through `htmlize`
//!
//! The unescaping is the `htmlize` crate (1.1.0, feature `unescape`: the full WHATWG
//! HTML5 entity table, `Context::General` rules), which follows the same rules as Python's
//! `html.unescape`: every named entity with its `;`, the legacy ones also without it
//! (`&amp`, `&eacute`, `&copy 2024`), the longest legacy prefix of an unknown name
//! (`&notit;` is `¬it;`), numeric references with or without `;`, NUL, surrogates and
//! values past U+10FFFF as U+FFFD, 0x80..0x9F as Windows-1252 (`&#128;` is `€`). Python
//! departs from WHATWG in one rule, which `html_unescape` adds after the crate: a
//! reference to a control character (U+0001..U+0008, U+000B, U+000E..U+001F, U+007F) or
//! to a noncharacter (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF) gives nothing (WHATWG and
//! `htmlize` give the character). With that, `html_unescape` equals Python 3.11's
//! `html.unescape` on the test vectors (`PYTHON_UNESCAPE`, 100+ tricky strings) and on
//! 300,000 random strings of entity fragments, multi-byte characters and noncharacters
//! (compared once, offline). The `html-escape` crate (0.3.1) was also compared: it
//! disagreed on 38 of the vectors (no legacy entities without `;`, no U+FFFD or
//! Windows-1252 rules, no longest-prefix rule).
//!
//! # Cost: bounded input, linear time
//!
//! Any role can send any text, so a call must cost time linear in the text and never
//! panic:
//! - **Size limit.** A text over `MAX_TEXT_BYTES` (1 MiB of UTF-8) is rejected with
//!   `Kind::LimitExceeded` (SQLSTATE 54000) before any work. It is rejected, not
//!   truncated: CLIP reads only the first `context_length - 2` tokens (75, about 300
//!   characters), so a megabyte of text is a mistake (a whole document, a base64 image in
//!   the wrong column) that the caller should hear about, and truncating would first need
//!   the whole clean-up anyway. The clean-up, lower-casing and word split are linear.
//! - **Stop at `room` tokens.** `room = context_length - 2` tokens are used; words are
//!   encoded one at a time until more than `room` tokens exist.
//! - **Word cap.** BPE over one word is superlinear in the crate (each merge rescans the
//!   word: one word of `"th"` repeated 2,000,000 times was reported to take about 80 s).
//!   Only the first `word_cap(room) = (room + 2) * LONGEST_TOKEN_BYTES` bytes of a word
//!   (2,464 for CLIP) go into BPE. No token is longer than `LONGEST_TOKEN_BYTES` = 32 bytes (`😂` eight
//!   times; test `longest_token_bytes_is_the_vocabulary_s`), so those bytes give at least
//!   `room + 2` tokens. Cutting a word changes its end (the last piece becomes an
//!   end-of-word `</w>` token and merges across the cut are lost), which can change the
//!   last token or so before the cut: with a cap of `room * 32` bytes, a run of `😂` gets
//!   a different 75th token. The 2 tokens of margin keep the first `room` tokens exactly
//!   the crate's encoding of the whole word: test `word_cap_changes_no_output` (words of
//!   500..5,000 characters of letters, `th`, emoji, CJK, punctuation, Devanagari, random
//!   and periodic, at 5 context lengths), and, offline, 20,000 random words of up to
//!   1,550 units at 10 values of `room` found no difference with a margin of 1 token.
//! - **Interrupts.** `tokenize_checked` (and `TextModel::embed_text_checked`) poll a
//!   `stop` closure between the phases of the work, every 64 Ki characters of the
//!   clean-up and every 32 words, and return `Kind::Interrupted` when it says so.
//!
//! The worst case, one call on 1 MiB of adversarial text (a single word of random
//! letters, `&amp;` repeated, decomposed accents, ...), is tens of milliseconds in a
//! release build: `tokenize::tests::worst_case_timing` (`#[ignore]`d; run it with
//! `cargo test --release -p pg_vision_core --lib tokenize::tests::worst_case_timing -- --ignored --nocapture`).
//! Most of the time is the linear clean-up of the whole text; BPE of one capped word is
//! a few milliseconds (2,464 bytes of random letters). The cap grows with the manifest's `context_length`,
//! and the crate's BPE is quadratic in it: measured on random letters, 8,256 bytes
//! (context length 256) take 33 ms, 32,832 bytes (1,024) 450 ms, so the largest allowed
//! context length (4,096, 131,008 bytes) would take seconds for one such word. CLIP
//! models use 77; a model with a much longer context would need a BPE that is not
//! quadratic.

use std::borrow::Cow;

use instant_clip_tokenizer::{Token, Tokenizer};
use once_cell::sync::Lazy;
use regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::error::{check_stop, Error, Fact, Kind, Limit, Result};
use crate::manifest::MAX_CONTEXT_LENGTH;

/// `<|startoftext|>` in OpenAI CLIP's vocabulary.
pub const START_OF_TEXT: i64 = 49406;
/// `<|endoftext|>` in OpenAI CLIP's vocabulary (also the largest id: HF graphs argmax it).
pub const END_OF_TEXT: i64 = 49407;
/// CLIP's context length.
pub const CLIP_CONTEXT_LENGTH: usize = 77;
/// Longest text `tokenize` accepts, in bytes of UTF-8, checked before any work: longer
/// texts are rejected (`Kind::LimitExceeded`), not truncated (module docs).
pub const MAX_TEXT_BYTES: usize = 1 << 20;

static TOKENIZER: Lazy<Tokenizer> = Lazy::new(Tokenizer::new);

/// CLIP's word pattern without its two special-token alternatives (see the module docs).
static WORDS: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+").expect("valid pattern"));

/// CLIP's text clean-up before lower-casing: OpenAI's `whitespace_clean(basic_clean(text))`.
///
/// `basic_clean` is `ftfy.fix_text`, then `html.unescape` twice, then `strip`. The
/// ftfy-like part here covers what matters for typed search text, as ftfy's defaults do it:
/// - NFC normalisation;
/// - curly quotes to straight ones (`‘ ’ ‚ ‛ ʼ` to `'`, `“ ” „ ‟` to `"`), so "women’s"
///   tokenises as "women's";
/// - Latin ligatures (`ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ Ĳ ĳ`) spelled out;
/// - full-width ASCII (U+FF01..U+FF5E) and the ideographic space to plain ASCII;
/// - control and invisible formatting characters removed (C0/C1 controls other than
///   whitespace, U+FEFF, U+206A..U+206F, U+FFF9..U+FFFC).
///
/// Not done: ftfy's mojibake repair (text decoded with the wrong codec), which needs
/// ftfy's tables and heuristics; such text is tokenised as it is.
///
/// HTML unescaping is Python's `html.unescape` (see the module docs): all HTML5 named
/// entities, with or without `;` where HTML allows it, and numeric references.
///
/// No input size limit here (`tokenize` has one); the time is linear in the input.
pub fn clean_text(text: &str) -> String {
    // Never stopped, so never an error.
    clean_text_checked(text, &|| false).unwrap_or_default()
}

/// `clean_text`, polling `stop` between its phases and every `POLL_CHARS` characters.
fn clean_text_checked(text: &str, stop: &dyn Fn() -> bool) -> Result<String> {
    let mut fixed = String::with_capacity(text.len());
    // Most text is NFC already, and the quick check costs far less than the normaliser.
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        fix_chars(text.chars(), &mut fixed, stop)?;
    } else {
        fix_chars(text.nfc(), &mut fixed, stop)?;
    }
    check_stop(stop)?;
    let once = html_unescape(&fixed);
    check_stop(stop)?;
    let unescaped = html_unescape(&once);
    check_stop(stop)?;
    let mut out = String::with_capacity(unescaped.len());
    for word in unescaped.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    Ok(out)
}

/// The ftfy-like character fixes of `clean_text` on NFC characters, appended to `fixed`.
fn fix_chars(chars: impl Iterator<Item = char>, fixed: &mut String, stop: &dyn Fn() -> bool) -> Result<()> {
    const POLL_CHARS: usize = 1 << 16;
    for (n, c) in chars.enumerate() {
        if n % POLL_CHARS == POLL_CHARS - 1 {
            check_stop(stop)?;
        }
        match c {
            '\u{2018}'..='\u{201b}' | '\u{02bc}' => fixed.push('\''),
            '\u{201c}'..='\u{201f}' => fixed.push('"'),
            '\u{fb00}' => fixed.push_str("ff"),
            '\u{fb01}' => fixed.push_str("fi"),
            '\u{fb02}' => fixed.push_str("fl"),
            '\u{fb03}' => fixed.push_str("ffi"),
            '\u{fb04}' => fixed.push_str("ffl"),
            '\u{fb05}' => fixed.push_str("\u{17f}t"),
            '\u{fb06}' => fixed.push_str("st"),
            '\u{0132}' => fixed.push_str("IJ"),
            '\u{0133}' => fixed.push_str("ij"),
            '\u{ff01}'..='\u{ff5e}' => fixed.push(char::from_u32(c as u32 - 0xff01 + 0x21).unwrap_or(c)),
            // Whitespace like the others, but as a space: then a U+000B after unescaping
            // can only come from `&#11;`, which Python drops (`html_unescape`).
            '\u{3000}' | '\u{b}' => fixed.push(' '),
            '\u{feff}' | '\u{206a}'..='\u{206f}' | '\u{fff9}'..='\u{fffc}' => {}
            c if c.is_control() && !c.is_whitespace() => {}
            c => fixed.push(c),
        }
    }
    Ok(())
}

/// Unicode noncharacters: U+FDD0..U+FDEF and the last two code points of every plane.
fn is_noncharacter(c: char) -> bool {
    matches!(c, '\u{fdd0}'..='\u{fdef}') || (c as u32) & 0xfffe == 0xfffe
}

/// What Python's `html.unescape` turns a numeric reference to into nothing:
/// `html._invalid_codepoints` less the keys of `html._invalid_charrefs` (NUL, CR and
/// 0x80..0x9F, which it maps to U+FFFD, CR and Windows-1252 instead, as `htmlize` does).
fn python_drops(c: char) -> bool {
    matches!(c, '\u{1}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}') || is_noncharacter(c)
}

/// Python's `html.unescape`, for text that went through `clean_text`'s first phase (so
/// has no control characters other than whitespace, and no U+000B): `htmlize::unescape`
/// (WHATWG rules, as Python's) and then the one rule where Python departs from WHATWG:
/// a numeric reference to a control character or a noncharacter (`python_drops`) gives
/// nothing. The characters dropped after `htmlize` can only come from references, except
/// noncharacters, which the text may contain as typed: the text is unescaped between
/// them, and they are kept (a reference cannot span one: entity names and numbers are
/// ASCII).
fn html_unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for piece in s.split_inclusive(is_noncharacter) {
        let (body, typed) = match piece.char_indices().next_back() {
            Some((i, c)) if is_noncharacter(c) => piece.split_at(i),
            _ => (piece, ""),
        };
        match htmlize::unescape(body) {
            Cow::Borrowed(same) => out.push_str(same),
            Cow::Owned(changed) => out.extend(changed.chars().filter(|c| !python_drops(*c))),
        }
        out.push_str(typed);
    }
    Cow::Owned(out)
}

/// CLIPTokenizerFast's normaliser on the cleaned text: NFC, then lower case (its whitespace
/// rule, runs of `\s` to one space, `clean_text` has applied already).
///
/// NFC again because the clean-up can leave text that is not NFC: an unescaped `&#x301;`
/// after a letter, a control character removed from between a letter and a combining
/// mark; Hugging Face composes them (`cafe&#x301;` is `café`).
///
/// Lower case one character at a time (`char::to_lowercase`), as the `tokenizers`
/// library's `Lowercase` does: a final capital sigma becomes `σ`, where Python's
/// `str.lower` (OpenAI's tokeniser) and Rust's `str::to_lowercase` give `ς` by context
/// ("ΟΔΟΣ" is "οδοσ", two different tokens).
fn normalize_like_hf(cleaned: &str) -> String {
    let composed: Cow<'_, str> = if is_nfc_quick(cleaned.chars()) == IsNormalized::Yes {
        Cow::Borrowed(cleaned)
    } else {
        Cow::Owned(cleaned.nfc().collect())
    };
    composed.chars().flat_map(char::to_lowercase).collect()
}

/// Longest token of the CLIP vocabulary, in bytes of text: `😂` eight times (4 x 8 bytes).
/// Measured over all 49406 ids with the crate's own decoder (test
/// `longest_token_bytes_is_the_vocabulary_s`).
const LONGEST_TOKEN_BYTES: usize = 32;

/// How many bytes of one word go into BPE, when `room` text tokens are wanted:
/// `(room + 2) * LONGEST_TOKEN_BYTES` (see the module docs).
fn word_cap(room: usize) -> usize {
    (room + 2) * LONGEST_TOKEN_BYTES
}

/// Words encoded between two polls of `stop`.
const POLL_WORDS: usize = 32;

/// CLIP token ids for `text`: `(ids, attention_mask, truncated)`, each of `context_length`
/// ids. See the module docs for the clean-up, the truncation rule and the size limit
/// (`MAX_TEXT_BYTES`, `Kind::LimitExceeded`). The empty string gives `[SOT, EOT, 0, ...]`.
pub fn tokenize(text: &str, context_length: usize) -> Result<(Vec<i64>, Vec<i64>, bool)> {
    tokenize_checked(text, context_length, &|| false)
}

/// `tokenize`, giving up with `Kind::Interrupted` as soon as `stop()` returns true; it is
/// polled between the phases of the work and every `POLL_WORDS` words (and every 64 Ki
/// characters of the clean-up), so a call returns within a few milliseconds of the
/// request (release build; module docs).
pub fn tokenize_checked(
    text: &str,
    context_length: usize,
    stop: &dyn Fn() -> bool,
) -> Result<(Vec<i64>, Vec<i64>, bool)> {
    if !(2..=MAX_CONTEXT_LENGTH).contains(&context_length) {
        return Err(Error::new(
            Kind::InvalidArgument,
            format!("context length {context_length} must be between 2 and {MAX_CONTEXT_LENGTH}"),
        ));
    }
    let room = context_length - 2;
    if text.len() > MAX_TEXT_BYTES {
        return Err(Error::new(
            Kind::LimitExceeded,
            format!("text is {} bytes, over the limit of {MAX_TEXT_BYTES} bytes for one text", text.len()),
        )
        .with_hint(format!(
            "the model reads only the first {room} tokens (about {} characters); send a shorter text",
            room * 4
        ))
        .with_fact(Fact::OverLimit {
            limit: Limit::TextBytes,
            value: text.len() as u64,
            max: MAX_TEXT_BYTES as u64,
        }));
    }
    check_stop(stop)?;
    let cleaned = clean_text_checked(text, stop)?;
    check_stop(stop)?;
    let text = normalize_like_hf(&cleaned);
    check_stop(stop)?;
    let tokenizer = &*TOKENIZER;
    let cap = word_cap(room);
    let mut tokens: Vec<Token> = Vec::with_capacity(context_length);
    for (n, word) in WORDS.find_iter(&text).enumerate() {
        if n % POLL_WORDS == POLL_WORDS - 1 {
            check_stop(stop)?;
        }
        // Each word on its own: the crate's pattern finds exactly this one word in it (the
        // patterns are the same but for the special tokens, which contain letters and so
        // never fit inside one of these words). BPE never crosses words, so stopping as
        // soon as the text overflows gives the same first tokens as encoding it all.
        // Only the first `cap` bytes of a word are encoded: they give more than `room`
        // tokens, the same first `room` as the whole word (module docs).
        let word = word.as_str();
        tokenizer.encode(&word[..word.floor_char_boundary(cap)], &mut tokens);
        if tokens.len() > room {
            break;
        }
    }
    let truncated = tokens.len() > room;
    tokens.truncate(room);
    let mut ids = Vec::with_capacity(context_length);
    ids.push(START_OF_TEXT);
    ids.extend(tokens.iter().map(|t| i64::from(t.to_u16())));
    ids.push(END_OF_TEXT);
    let used = ids.len();
    ids.resize(context_length, 0);
    let mut mask = vec![1i64; used];
    mask.resize(context_length, 0);
    Ok((ids, mask, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const CTX: usize = CLIP_CONTEXT_LENGTH;

    /// The ids before the padding.
    fn ids(text: &str) -> Vec<i64> {
        let (ids, mask, _) = tokenize(text, CTX).unwrap();
        assert_eq!((ids.len(), mask.len()), (CTX, CTX));
        let used = mask.iter().filter(|m| **m == 1).count();
        assert!(mask[..used].iter().all(|m| *m == 1) && ids[used..].iter().all(|i| *i == 0), "{ids:?} {mask:?}");
        ids[..used].to_vec()
    }

    #[test]
    fn known_clip_ids() {
        // OpenAI clip.tokenize("a photo of a cat")
        let (all, mask, truncated) = tokenize("a photo of a cat", CTX).unwrap();
        let mut expected = vec![49406, 320, 1125, 539, 320, 2368, 49407];
        expected.resize(CTX, 0);
        assert_eq!(all, expected);
        assert_eq!(mask.iter().sum::<i64>(), 7);
        assert!(!truncated);
        assert_eq!(ids("a photo of a dog"), [49406, 320, 1125, 539, 320, 1929, 49407]);
        // The crate's own reference values (checked against the Python original).
        assert_eq!(ids("Hi there"), [49406, 1883, 997, 49407]);
        assert_eq!(ids("How are you?"), [49406, 829, 631, 592, 286, 49407]);
        assert_eq!(&ids("I'm fine, thanks!")[..5], &[49406, 328, 880, 3797, 267]);
        assert_eq!(ids("hello world!!!"), [49406, 3306, 1002, 995, 49407]);
        assert_eq!(ids("A person riding a motorcycle"), [49406, 320, 2533, 6765, 320, 10297, 49407]);
    }

    /// Two rules of Hugging Face's CLIPTokenizerFast normaliser that the clean-up alone missed
    /// (found by `core/tests/tokenizer_equivalence.rs`; ids printed by CLIPTokenizerFast).
    #[test]
    fn normalised_as_hugging_face() {
        // Lower case per character: a final capital sigma is σ (139, 481), not ς (139, 480).
        assert_eq!(ids("ΟΔΟΣ"), [49406, 138, 123, 138, 112, 138, 123, 139, 481, 49407]);
        assert_eq!(ids("ΟΔΟΣ"), ids("οδοσ"));
        assert_ne!(ids("ΟΔΟΣ"), ids("οδος"));
        // NFC after the clean-up: composed across an unescaped mark or a removed control.
        assert_eq!(ids("cafe&#x301;"), ids("café"));
        assert_eq!(ids("cafe\u{7}\u{301}"), ids("café"));
        assert_eq!(ids("Ａ\u{30a}"), ids("å"), "full-width A made ASCII, then composed");
    }

    #[test]
    fn lower_cased_and_punctuation() {
        let red = ids("Red Summer Dress!");
        assert_eq!(red, ids("red summer dress!"));
        assert_eq!(red, ids("RED SUMMER DRESS!"));
        assert_eq!(red.len(), 6, "{red:?}");
        assert_eq!((red[0], red[4], red[5]), (START_OF_TEXT, 256, END_OF_TEXT), "\"!\" alone is 256 (\"!</w>\")");
        assert_ne!(red, ids("red summer dress"));
    }

    #[test]
    fn whitespace_is_collapsed_and_stripped() {
        let want = ids("red summer dress");
        for text in [
            "  red summer dress  ",
            "red\tsummer\n\ndress",
            "red \u{a0} summer\u{3000}dress",
            "\r\nred   summer dress\u{2003}",
        ] {
            assert_eq!(ids(text), want, "{text:?}");
        }
        assert_eq!(clean_text("  a \t b\n"), "a b");
    }

    #[test]
    fn ftfy_like_cleanup() {
        assert_eq!(ids("women’s dress"), ids("women's dress"));
        assert_eq!(ids("“red” dress"), ids("\"red\" dress"));
        assert_eq!(ids("ＲＥＤ ｄｒｅｓｓ"), ids("red dress"));
        assert_eq!(ids("ﬁne"), ids("fine"));
        assert_eq!(ids("red\u{feff} dr\u{7}ess"), ids("red dress"));
        assert_eq!(ids("cafe\u{301}"), ids("café"), "NFC");
        // html.unescape twice, as OpenAI's basic_clean
        assert_eq!(ids("black &amp; white"), ids("black & white"));
        assert_eq!(ids("black &amp;amp; white"), ids("black & white"));
        assert_eq!(ids("women&#39;s &#x22;dress&quot;"), ids("women's \"dress\""));
        assert_eq!(clean_text("a &bogus; b &#xZZ; &"), "a &bogus; b &#xZZ; &");
        assert_eq!(clean_text("&#0;&#xD800;"), "\u{fffd}\u{fffd}");
    }

    /// `(text, html.unescape(text), html.unescape(html.unescape(text)))`, printed by Python
    /// 3.11's `html` module (a list of tricky strings run through `html.unescape` and
    /// printed as Rust literals).
    const PYTHON_UNESCAPE: &[(&str, &str, &str)] = &[
        ("H&M hoodie – black", "H&M hoodie – black", "H&M hoodie – black"),
        ("H&amp;M hoodie &ndash; black", "H&M hoodie – black", "H&M hoodie – black"),
        ("&amp;", "&", "&"),
        ("&amp", "&", "&"),
        ("&AMP", "&", "&"),
        ("&AMP;", "&", "&"),
        ("&Amp;", "&Amp;", "&Amp;"),
        ("&eacute", "é", "é"),
        ("&eacute;", "é", "é"),
        ("caf&eacute; &copy 2024", "café © 2024", "café © 2024"),
        ("&lt", "<", "<"),
        ("x &gt", "x >", "x >"),
        ("&lt&gt", "<>", "<>"),
        ("&nbsp&nbsp;", "\u{a0}\u{a0}", "\u{a0}\u{a0}"),
        ("&sup2", "²", "²"),
        ("&frac12x", "½x", "½x"),
        ("&pound10", "£10", "£10"),
        ("&amp=", "&=", "&="),
        ("&ampx;", "&x;", "&x;"),
        ("&ampé", "&é", "&é"),
        ("&notit;", "¬it;", "¬it;"),
        ("&notin;", "∉", "∉"),
        ("&notin", "¬in", "¬in"),
        ("&not;it", "¬it", "¬it"),
        ("&NotEqualTilde;", "≂\u{338}", "≂\u{338}"),
        ("&nGg;", "⋙\u{338}", "⋙\u{338}"),
        ("&fjlig;", "fj", "fj"),
        ("&acE;", "∾\u{333}", "∾\u{333}"),
        ("&ThickSpace;", "\u{205f}\u{200a}", "\u{205f}\u{200a}"),
        ("&CounterClockwiseContourIntegral;", "∳", "∳"),
        ("&CounterClockwiseContourIntegral", "&CounterClockwiseContourIntegral", "&CounterClockwiseContourIntegral"),
        ("&timesbar;", "⨱", "⨱"),
        ("&times", "×", "×"),
        ("&timesb", "×b", "×b"),
        ("&bogus;", "&bogus;", "&bogus;"),
        ("&;", "&;", "&;"),
        ("&", "&", "&"),
        ("&&", "&&", "&&"),
        ("a & b", "a & b", "a & b"),
        ("&#;", "&#;", "&#;"),
        ("&#x;", "&#x;", "&#x;"),
        ("&#", "&#", "&#"),
        ("&#x", "&#x", "&#x"),
        ("a&#xZZ;b", "a&#xZZ;b", "a&#xZZ;b"),
        ("&#-1;", "&#-1;", "&#-1;"),
        ("&#0;", "\u{fffd}", "\u{fffd}"),
        ("&#x0;", "\u{fffd}", "\u{fffd}"),
        ("&#xD800;", "\u{fffd}", "\u{fffd}"),
        ("&#xdfff;", "\u{fffd}", "\u{fffd}"),
        ("&#x110000;", "\u{fffd}", "\u{fffd}"),
        ("&#99999999999999999999;", "\u{fffd}", "\u{fffd}"),
        ("&#00000065;", "A", "A"),
        ("&#X41;", "A", "A"),
        ("&#x00000000041", "A", "A"),
        ("&#128;", "€", "€"),
        ("&#x80;", "€", "€"),
        ("&#x81;", "\u{81}", "\u{81}"),
        ("&#x8d;", "\u{8d}", "\u{8d}"),
        ("&#133;", "…", "…"),
        ("&#150;", "–", "–"),
        ("&#x9f;", "Ÿ", "Ÿ"),
        ("&#13;", "\u{d}", "\u{d}"),
        ("&#9;", "\u{9}", "\u{9}"),
        ("&#10;", "\u{a}", "\u{a}"),
        ("&#32;", " ", " "),
        ("&#1;", "", ""),
        ("&#x8;", "", ""),
        ("&#11;", "", ""),
        ("&#x1f;", "", ""),
        ("&#x7f;", "", ""),
        ("&#xfdd0;", "", ""),
        ("&#xfffe;", "", ""),
        ("&#x1ffff;", "", ""),
        ("&#x10ffff;", "", ""),
        ("&#xFEFF;", "\u{feff}", "\u{feff}"),
        ("&#12a", "\u{c}a", "\u{c}a"),
        ("&#39", "'", "'"),
        ("&#x27", "'", "'"),
        ("&#x1F600;", "😀", "😀"),
        ("&#128512;", "😀", "😀"),
        ("&#x2028;", "\u{2028}", "\u{2028}"),
        ("&amp;amp;", "&amp;", "&"),
        ("&amp;lt;", "&lt;", "<"),
        ("&amp;#38;", "&#38;", "&"),
        ("&#38;amp;", "&amp;", "&"),
        ("&#38;#38;", "&#38;", "&"),
        ("&amp;amp;amp;", "&amp;amp;", "&amp;"),
        ("&&amp;&", "&&&", "&&&"),
        ("&am&#1;p;", "&amp;", "&"),
        ("&am&#xfdd0;p;", "&amp;", "&"),
        ("black &amp;amp; white", "black &amp; white", "black & white"),
        ("women&#39;s &#x22;dress&quot;", "women's \"dress\"", "women's \"dress\""),
        ("a &bogus; b &#xZZ; &", "a &bogus; b &#xZZ; &", "a &bogus; b &#xZZ; &"),
        ("–&amp;–", "–&–", "–&–"),
        ("é&eacuteé", "ééé", "ééé"),
        ("日本&amp;中文", "日本&中文", "日本&中文"),
        ("😀&amp😀", "😀&😀", "😀&😀"),
        ("&#x1F600;&#x1F600", "😀😀", "😀😀"),
        ("x&lt", "x<", "x<"),
        ("&gt;", ">", ">"),
        ("&eacute;&Eacute;&eacute", "éÉé", "éÉé"),
        ("\u{fdd0}&amp;\u{fdd0}", "\u{fdd0}&\u{fdd0}", "\u{fdd0}&\u{fdd0}"),
        ("&amp\u{fdd0};", "&\u{fdd0};", "&\u{fdd0};"),
        ("&#x31\u{ffff};", "1\u{ffff};", "1\u{ffff};"),
    ];

    #[test]
    fn html_unescape_is_pythons() {
        for (text, once, twice) in PYTHON_UNESCAPE {
            let got = html_unescape(text);
            assert_eq!(got, *once, "html.unescape({text:?})");
            assert_eq!(html_unescape(&got), *twice, "html.unescape twice ({text:?})");
        }
        // clean_text: unescaped twice, then whitespace collapsed.
        assert_eq!(clean_text("H&M hoodie – black"), "H&M hoodie – black");
        assert_eq!(clean_text("H&amp;amp;M &ndash; caf&eacute &#x1F600;"), "H&M – café 😀");
        assert_eq!(clean_text("a&#11;b &#9; c&#1;d"), "ab cd", "&#11; and &#1; give nothing, &#9; is whitespace");
        assert_eq!(clean_text("a\u{b}b"), "a b", "a typed U+000B is whitespace");
        assert_eq!(clean_text("&#xFDD0;x\u{fdd0}"), "x\u{fdd0}", "a typed noncharacter stays");
    }

    #[test]
    fn no_panic_on_multibyte_text_near_ampersands() {
        // An unescaper that slices `&...` at a fixed byte offset lands inside multi-byte characters.
        let tails = ["–", "😀", "é", "日本語", "\u{301}", "\u{fdd0}", ";", "#", "#x", "#1", "amp", "eacute", "x"];
        for lead in ["&", "&#", "&#x", "&am", "&amp", "&eacute", "&#12345", "&#x1F60", "&CounterClockwise"] {
            for pad in 0..14 {
                for tail in tails {
                    let text = format!("H{lead}{}{tail}{tail} black", "a".repeat(pad));
                    clean_text(&text);
                    tokenize(&text, CTX).unwrap();
                }
            }
        }
        let (ids, _, _) = tokenize("H&M hoodie – black", CTX).unwrap();
        assert_eq!(ids[0], START_OF_TEXT);
    }

    #[test]
    fn special_tokens_never_come_from_user_text() {
        for text in
            ["<|endoftext|> dress", "<|startoftext|>", "<end_of_text>", "red <start_of_text> dress", "<END_OF_TEXT>"]
        {
            let got = ids(text);
            let inner = &got[1..got.len() - 1];
            assert!(!inner.is_empty() && inner.iter().all(|i| *i < START_OF_TEXT), "{text:?}: {got:?}");
        }
    }

    #[test]
    fn empty_text_is_sot_eot() {
        let (all, mask, truncated) = tokenize("", CTX).unwrap();
        assert_eq!(&all[..3], &[START_OF_TEXT, END_OF_TEXT, 0]);
        assert_eq!(mask.iter().sum::<i64>(), 2);
        assert!(!truncated);
        assert_eq!(ids("   \n "), [START_OF_TEXT, END_OF_TEXT]);
        assert_eq!(tokenize("x", 2).unwrap().0, [START_OF_TEXT, END_OF_TEXT]);
        assert_eq!(tokenize("x", 1).unwrap_err().kind, Kind::InvalidArgument);
        assert_eq!(tokenize("x", MAX_CONTEXT_LENGTH + 1).unwrap_err().kind, Kind::InvalidArgument);
    }

    #[test]
    fn truncation_keeps_sot_first_tokens_and_eot() {
        let long: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
        let long = long.join(" ");
        let (all, mask, truncated) = tokenize(&long, CTX).unwrap();
        assert!(truncated);
        assert_eq!(all.len(), CTX);
        assert_eq!((all[0], all[CTX - 1]), (START_OF_TEXT, END_OF_TEXT));
        assert!(mask.iter().all(|m| *m == 1));
        assert!(all[1..CTX - 1].iter().all(|i| *i != END_OF_TEXT && *i != 0));
        // the first 75 text tokens of the full encoding
        let mut full = Vec::new();
        TOKENIZER.encode(&long, &mut full);
        let full: Vec<i64> = full.iter().map(|t| i64::from(t.to_u16())).collect();
        assert_eq!(&all[1..CTX - 1], &full[..CTX - 2]);
        // the boundary: 75 text tokens fit exactly, 76 do not
        let fits = vec!["a"; CTX - 2].join(" ");
        let (all, _, truncated) = tokenize(&fits, CTX).unwrap();
        assert!(!truncated);
        assert_eq!((all[CTX - 2], all[CTX - 1]), (320, END_OF_TEXT));
        let over = vec!["a"; CTX - 1].join(" ");
        let (over_ids, _, truncated) = tokenize(&over, CTX).unwrap();
        assert!(truncated);
        assert_eq!(over_ids, all);
    }

    #[test]
    fn longest_token_bytes_is_the_vocabulary_s() {
        // decode() is lossy: invalid UTF-8 (a token that is part of a character) becomes
        // U+FFFD, 3 bytes for 1 to 3 bytes, so the decoded length is an upper bound.
        let tokenizer = &*TOKENIZER;
        let mut longest = 0;
        for id in 0..START_OF_TEXT as u16 {
            let token = Token::from_u16(id, tokenizer).unwrap();
            let text = tokenizer.decode([token]);
            let len = text.strip_suffix(' ').unwrap_or(&text).len();
            assert!(len <= LONGEST_TOKEN_BYTES, "token {id} ({text:?}) is {len} bytes");
            longest = longest.max(len);
        }
        assert_eq!(longest, LONGEST_TOKEN_BYTES);
        let mut tokens = Vec::new();
        tokenizer.encode(&"😂".repeat(17), &mut tokens);
        assert_eq!(tokenizer.decode([tokens[0]]), "😂".repeat(8), "{tokens:?}");
    }

    /// Words of many shapes and lengths: the first `room` tokens with the word cap are the
    /// crate's own encoding of the whole word, for several context lengths. Without the
    /// 2-token margin (a cap of `room * 32` bytes) the 😂 runs fail.
    #[test]
    fn word_cap_changes_no_output() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabets: [&[&str]; 9] = [
            &[
                "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t",
                "u", "v", "w", "x", "y", "z",
            ],
            &["th", "e", "in", "the", "ing", "an", "er"],
            &["😂", "😍", "❤\u{fe0f}", "🇺🇸"],
            &["的", "一", "是", "不", "了", "人", "我", "在", "有", "他", "这", "中", "大", "国"],
            &["!", "?", ".", ",", "(", ")", "-", "_", "*", "#", "@", "—", "…"],
            &["é", "ü", "ß", "ø", "a", "n"],
            &["ह", "ि", "न", "्", "द"],
            &["a", "b"],
            &["😂", "a", "的", "—", "!", "th", "é"],
        ];
        let mut words: Vec<String> = Vec::new();
        for unit in ["th", "abc", "a", "😂", "😍😂", "—", "的", "!?", "ab", "ha"] {
            for n in [500, 1000, 2000, 2600, 5000] {
                words.push(unit.repeat(n / unit.chars().count()));
            }
        }
        for (i, alphabet) in alphabets.iter().enumerate() {
            for n in [500, 1200, 2000] {
                words.push((0..n).map(|_| alphabet[random(alphabet.len())]).collect());
                // periodic with a random period
                let period: Vec<&str> = (0..1 + random(5)).map(|_| alphabet[random(alphabet.len())]).collect();
                words.push((0..n).map(|k| period[(k + i) % period.len()]).collect());
            }
        }
        let tokenizer = &*TOKENIZER;
        for word in &words {
            let mut full = Vec::new();
            tokenizer.encode(word, &mut full);
            let full: Vec<i64> = full.iter().map(|t| i64::from(t.to_u16())).collect();
            for ctx in [2, 3, 5, 20, CTX] {
                let room = ctx - 2;
                let (ids, _, truncated) = tokenize(word, ctx).unwrap();
                let n = room.min(full.len());
                assert_eq!(
                    &ids[1..1 + n],
                    &full[..n],
                    "ctx {ctx}, word {:?}... ({} bytes)",
                    word.chars().take(12).collect::<String>(),
                    word.len()
                );
                assert_eq!(truncated, full.len() > room, "ctx {ctx}");
                // and the cap made a difference
                if word.len() > word_cap(room) {
                    let mut capped = Vec::new();
                    tokenizer.encode(&word[..word.floor_char_boundary(word_cap(room))], &mut capped);
                    assert!(capped.len() > room);
                }
            }
        }
    }

    #[test]
    fn over_long_text_is_rejected_before_any_work() {
        let stop_called = std::cell::Cell::new(false);
        let stop = || {
            stop_called.set(true);
            false
        };
        let at_limit = "a ".repeat(MAX_TEXT_BYTES / 2);
        assert_eq!(at_limit.len(), MAX_TEXT_BYTES);
        let (_, _, truncated) = tokenize_checked(&at_limit, CTX, &stop).unwrap();
        assert!(truncated && stop_called.get());
        stop_called.set(false);
        for over in [format!("{at_limit}b"), "th".repeat(2_000_000), "é".repeat(MAX_TEXT_BYTES / 2 + 1)] {
            let e = tokenize_checked(&over, CTX, &stop).unwrap_err();
            assert_eq!(e.kind, Kind::LimitExceeded, "{e}");
            assert!(
                e.message.contains(&format!("text is {} bytes, over the limit of 1048576 bytes", over.len())),
                "{e}"
            );
            assert!(e.hint.as_deref().unwrap_or("").contains("first 75 tokens"), "{e}");
            assert!(!stop_called.get(), "rejected before the work starts");
        }
    }

    #[test]
    fn tokenising_stops_when_asked() {
        let e = tokenize_checked("a photo of a cat", CTX, &|| true).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (Kind::Interrupted, "stopped on request"));
        // Stop after n polls, for every n up to the number of polls of a whole run: each
        // poll can end the call, and the call ends at the first true.
        let text = format!("{} {}", "&amp; caf&eacute; ".repeat(40_000), "word ".repeat(200));
        for n in 0..200 {
            let polls = std::cell::Cell::new(0);
            let stop = || {
                polls.set(polls.get() + 1);
                polls.get() > n
            };
            match tokenize_checked(&text, CTX, &stop) {
                Err(e) => {
                    assert_eq!(e.kind, Kind::Interrupted);
                    assert_eq!(polls.get(), n + 1, "stopped at the first true");
                }
                Ok(_) => {
                    assert_eq!(polls.get(), n, "ran to the end");
                    assert!(n > 5, "polled between the phases and the words: {n}");
                    return;
                }
            }
        }
        panic!("more than 200 polls");
    }

    /// Worst-case time of one call on 1 MiB of adversarial shapes, release build:
    /// `cargo test --release -p pg_vision_core --lib tokenize::tests::worst_case_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn worst_case_timing() {
        let mib = MAX_TEXT_BYTES;
        let fill = |unit: &str| unit.repeat(mib / unit.len());
        let mut random = 0x9e37_79b9_7f4a_7c15u64;
        let letters: String = (0..mib)
            .map(|_| {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                char::from(b'a' + (random % 26) as u8)
            })
            .collect();
        let shapes = [
            ("one word of random letters", letters),
            ("\"th\" repeated", fill("th")),
            ("all whitespace", fill(" \t\n")),
            ("all &amp;", fill("&amp;")),
            ("all &amp;amp;", fill("&amp;amp;")),
            ("all CJK", fill("的")),
            ("all emoji", fill("😂")),
            ("all punctuation", fill("!?.,;:")),
            ("\"a \" pairs", fill("a ")),
            ("all &#x1F600;", fill("&#x1F600;")),
            ("decomposed accents", fill("e\u{301}")),
        ];
        let start = Instant::now();
        tokenize("warm up", CTX).unwrap();
        println!("first call (tokeniser vocabulary load) {:?}", start.elapsed());
        for (name, text) in &shapes {
            assert!(text.len() <= mib);
            let mut best = Duration::MAX;
            let mut worst = Duration::ZERO;
            for _ in 0..5 {
                let start = Instant::now();
                tokenize(text, CTX).unwrap();
                let t = start.elapsed();
                best = best.min(t);
                worst = worst.max(t);
            }
            println!(
                "{name:>28}: {} bytes, best {:.1} ms, worst {:.1} ms",
                text.len(),
                best.as_secs_f64() * 1e3,
                worst.as_secs_f64() * 1e3
            );
        }
    }
}
