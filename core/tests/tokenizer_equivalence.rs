//! pg_vision's CLIP tokeniser against Hugging Face's `CLIPTokenizerFast`, the tokeniser that
//! transformers' `CLIPProcessor` gives, on the 2,500 strings of `data/clip_tokens.json`
//! (product titles, punctuation, accents, emoji, many scripts, HTML entities, whitespace
//! oddities, long texts, special-token strings, ...; written by
//! `scripts/tokenizer_fixture.py`, which says how to run it again).
//!
//! For each string the fixture has `hf`, the ids of `CLIPTokenizerFast(text,
//! truncation=True, max_length=77)`, and, where pg_vision must give other ids, `pgv`: the
//! ids of `CLIPTokenizerFast` on the text after pg_vision's clean-up, with special-token
//! strings taken as text, and `why`, the clean-up rules that changed the text. Those rules
//! are pg_vision's only departures from `CLIPTokenizerFast`, listed with their reasons in
//! `DEPARTURES`. Everything else (NFC, whitespace, lower case, the word pattern, BPE,
//! truncation) must give exactly Hugging Face's ids. No ONNX Runtime here.

use pg_vision_core::tokenize::{tokenize, CLIP_CONTEXT_LENGTH};
use serde::Deserialize;

/// The clean-up rules by which pg_vision departs from `CLIPTokenizerFast`, and why. All but
/// `special` come from OpenAI's `basic_clean` (`ftfy.fix_text`, then `html.unescape`
/// twice), which CLIP was trained with and `CLIPTokenizerFast` leaves out; see
/// `core/src/tokenize.rs`, `clean_text`.
const DEPARTURES: &[(&str, &str)] = &[
    ("html", "HTML entities unescaped twice (Python's html.unescape): product text copied from web pages has &amp; and &#39;"),
    ("quotes", "curly quotes made straight (ftfy): \"women’s\" tokenised as \"women's\", as typed on a phone or not"),
    ("ligatures", "Latin ligatures spelled out (ftfy's list, in part): \"ﬁne\" is \"fine\""),
    ("width", "full-width ASCII made ASCII (ftfy): \"ＲＥＤ\" is \"red\""),
    ("controls", "control characters other than whitespace removed (ftfy)"),
    ("invisible", "U+FEFF, U+206A..U+206F and U+FFF9..U+FFFC removed (ftfy)"),
    (
        "special",
        "\"<|startoftext|>\" and \"<|endoftext|>\" in user text are text, never ids 49406/49407: CLIP pools the text at \
         the first EOT, so an injected one would cut the query short",
    ),
];

#[derive(Deserialize)]
struct Fixture {
    strings: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    group: String,
    text: String,
    /// `CLIPTokenizerFast`'s ids: SOT, at most 75 text tokens, EOT; no padding.
    hf: Vec<i64>,
    /// pg_vision's ids where they differ from `hf`.
    pgv: Option<Vec<i64>>,
    /// The `DEPARTURES` that make `pgv` differ from `hf`.
    #[serde(default)]
    why: Vec<String>,
}

impl Case {
    fn expected(&self) -> &[i64] {
        self.pgv.as_deref().unwrap_or(&self.hf)
    }
}

fn fixture() -> Fixture {
    let fixture: Fixture = serde_json::from_str(include_str!("data/clip_tokens.json")).expect("valid fixture");
    assert_eq!(fixture.cases.len(), fixture.strings);
    fixture
}

/// pg_vision's ids without the padding.
fn pg_vision_ids(text: &str) -> Vec<i64> {
    let (ids, mask, _) = tokenize(text, CLIP_CONTEXT_LENGTH).unwrap();
    let used = mask.iter().filter(|m| **m == 1).count();
    ids[..used].to_vec()
}

#[test]
fn every_string_gives_hugging_faces_ids() {
    let fixture = fixture();
    assert!(fixture.cases.len() >= 2000, "{} strings", fixture.cases.len());
    let mismatches: Vec<(&Case, Vec<i64>)> = fixture
        .cases
        .iter()
        .map(|case| (case, pg_vision_ids(&case.text)))
        .filter(|(case, got)| got.as_slice() != case.expected())
        .collect();
    for (case, got) in mismatches.iter().take(20) {
        println!(
            "[{}] {:?}\n  expected {:?} ({})\n  pg_vision {:?}",
            case.group,
            case.text,
            case.expected(),
            if case.pgv.is_some() { format!("after the clean-up: {}", case.why.join(", ")) } else { "hf".into() },
            got
        );
    }
    let identical = fixture.cases.iter().filter(|case| case.pgv.is_none()).count();
    println!(
        "{} strings: {identical} give CLIPTokenizerFast's ids, {} its ids after pg_vision's clean-up; {} mismatches",
        fixture.cases.len(),
        fixture.cases.len() - identical,
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "{} of {} strings differ (first ones above)", mismatches.len(), fixture.cases.len());
}

#[test]
fn departures_are_the_documented_ones() {
    let fixture = fixture();
    for case in &fixture.cases {
        assert_eq!(case.pgv.is_some(), !case.why.is_empty(), "{:?}", case.text);
        for rule in &case.why {
            assert!(DEPARTURES.iter().any(|(name, _)| name == rule), "{rule:?} undocumented: {:?}", case.text);
        }
    }
    for (rule, reason) in DEPARTURES {
        let n = fixture.cases.iter().filter(|case| case.why.iter().any(|r| r == rule)).count();
        println!("{rule:>10}: {n:>4} strings ({reason})");
        assert!(n > 0, "no string shows the departure {rule:?}");
    }
}
