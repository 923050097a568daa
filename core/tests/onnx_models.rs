//! Real models through ONNX Runtime: the batch path against single images, and the CLIP
//! fixture's text tower. Skipped, with the reason printed, when the ONNX files
//! (`make models`) or the library (`PG_VISION_ORT_LIB`) are missing.

mod common;

use pg_vision_core::decode::Options;
use pg_vision_core::embed::{embed_image, embed_images, Batching, MAX_BATCH};
use pg_vision_core::image_model::ImageModel;
use pg_vision_core::manifest::{Manifest, Output, TextManifest};
use pg_vision_core::text_model::TextModel;
use pg_vision_core::Kind;

/// The pipelined batch path against one-at-a-time embedding, with a cancel and a bad
/// image; runs EfficientNet-Lite0.
#[test]
fn embed_images_equals_single_and_stops_if_available() {
    let dir = common::models_dir();
    let Some(opts) = common::session_options(&[&dir.join("efficientnet-lite0.onnx")]) else {
        return;
    };
    let mut model = ImageModel::load(&dir, "efficientnet", &opts).unwrap();
    let files: Vec<Vec<u8>> =
        (1..=7).map(|i| common::png(200 + i * 30, 180 + i * 7, (i as u8).wrapping_mul(53))).collect();
    let refs: Vec<&[u8]> = files.iter().map(|f| f.as_slice()).collect();
    let three = Batching::new(3).unwrap().with_decode_threads(2);
    let batched = embed_images(&mut model, &refs, &Options::default(), three).unwrap();
    assert_eq!(batched.len(), 7);
    for (i, f) in refs.iter().enumerate() {
        let (one, _) = embed_image(&mut model, f, &Options::default(), Output::Embedding).unwrap();
        let worst = one.iter().zip(&batched[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-3, "image {i}: batched differs from single by {worst}");
    }
    assert_ne!(batched[0], batched[1]);

    // A stop request ends the call with Interrupted, whether it arrives before a
    // batch, while decoding or while the model runs.
    static POLLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    fn stop_after_a_few() -> bool {
        POLLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 3
    }
    let two = Batching::new(2).unwrap().with_decode_threads(2);
    let stopping = Options { stop: stop_after_a_few, ..Options::default() };
    let e = embed_images(&mut model, &refs, &stopping, two).unwrap_err();
    assert_eq!(e.kind, Kind::Interrupted, "{e}");
    fn always() -> bool {
        true
    }
    let e = embed_image(&mut model, refs[0], &Options { stop: always, ..Options::default() }, Output::Embedding)
        .unwrap_err();
    assert_eq!(e.kind, Kind::Interrupted, "{e}");
    // Batch limits are checked before any work.
    assert_eq!(Batching::new(0).unwrap_err().kind, Kind::InvalidArgument);
    assert_eq!(Batching::new(MAX_BATCH as i64 + 1).unwrap_err().kind, Kind::LimitExceeded);

    // A bad image fails the call with its position, whichever batch it is in.
    let mut bad = refs.clone();
    bad[4] = b"not an image";
    let e = embed_images(&mut model, &bad, &Options::default(), two).unwrap_err();
    assert!(e.message.starts_with("image 5 (1-based)"), "{e}");
    // Another output than the embedding, by name.
    let (logits, _) = embed_image(&mut model, refs[0], &Options::default(), Output::named("logits")).unwrap();
    assert_eq!(logits.len(), 1000);
    println!("embed_images ok: 7 images, batches of 3, max difference from single below 1e-3");
}

/// The fixture text tower (scripts/build_clip_fixture.py, random weights).
#[test]
fn fixture_text_contract_if_available() {
    let dir = common::models_dir();
    let Some(opts) = common::session_options(&[&dir.join("clip-fixture-text.onnx")]) else {
        return;
    };
    let manifest = Manifest::load(&dir, "clip_fixture").unwrap();
    let text = manifest.text.clone().unwrap();
    let with_text = |text: TextManifest| Manifest { text: Some(text), ..manifest.clone() };
    let mut model = TextModel::load(&dir, "clip_fixture", &opts).unwrap();
    assert!(model.origin.onnx.id.len > 0);

    let long = vec!["dress"; 300].join(" ");
    let texts = [
        "a photo of a cat",
        "a photo of a dog",
        "a photo of a cat",
        "",
        "Red Summer Dress!",
        "red summer dress!",
        &long,
    ];
    let v = model.embed_text(&texts).unwrap();
    assert_eq!(v.len(), texts.len());
    for (t, e) in texts.iter().zip(&v) {
        assert_eq!(e.len(), 512, "{t}");
        let norm: f64 = e.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{t}: norm {norm}");
    }
    assert_eq!(v[0], v[2], "identical strings, identical vectors");
    assert_ne!(v[0], v[1], "different strings, different vectors");
    assert_ne!(v[0], v[3]);
    assert_eq!(v[4], v[5], "lower-cased before tokenising");
    // The graph takes any length, so texts are cut after the batch's longest: the batch
    // above ran 77 positions (`long`), this call 6 (SOT, 4 words, EOT); the same vector.
    assert!(model.dynamic_length, "clip-fixture-text.onnx has a dynamic length axis");
    let one = model.embed_text(&["a photo of a dog"]).unwrap();
    assert!(one[0].iter().zip(&v[1]).all(|(a, b)| (a - b).abs() < 1e-6));
    assert!(model.embed_text(&[]).unwrap().is_empty());

    // The manifest's dim is checked against what the graph produces.
    let mut wrong =
        TextModel::from_manifest(&dir, with_text(TextManifest { dim: 256, ..text.clone() }), &opts).unwrap();
    let e = wrong.embed_text(&["x"]).unwrap_err();
    assert_eq!(e.kind, Kind::BadModel, "{e}");
    assert!(e.message.contains("declares 256"), "{e}");
    // Signature mismatches fail at load time, with the names the graph has.
    let load = |t: TextManifest| TextModel::from_manifest(&dir, with_text(t), &opts).err().unwrap();
    let e = load(TextManifest { input_name: "ids".into(), ..text.clone() });
    assert!(e.kind == Kind::BadModel && e.message.contains("it has: input_ids"), "{e}");
    let e = load(TextManifest { output_name: "pooled".into(), ..text.clone() });
    assert!(e.kind == Kind::BadModel && e.message.contains("text_embeds"), "{e}");
    let e = load(TextManifest { attention_mask_name: Some("attention_mask".into()), ..text.clone() });
    assert!(e.kind == Kind::BadModel && e.message.contains("attention_mask"), "{e}");
    let e = load(TextManifest { onnx_file: "nope.onnx".into(), ..text });
    assert!(e.kind == Kind::FileMissing && e.hint.as_deref().unwrap_or("").contains("make models"), "{e}");
    // An image-only model has no text tower.
    let e = TextModel::load(&dir, "efficientnet", &opts).err().unwrap();
    assert_eq!(e.kind, Kind::InvalidArgument, "{e}");
    println!("fixture text contract ok: {} texts, dim 512, load {:?}", texts.len(), model.load_time);
}
