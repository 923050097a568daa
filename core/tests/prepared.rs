//! Prepared (shared-weights) files with the real ONNX Runtime and EfficientNet-Lite0: the
//! prepared graph is chosen when its sidecar matches, ONNX Runtime maps its data file, the
//! vectors equal the plain file's, and a sidecar that does not match (or the setting off)
//! loads the plain file. The files are prepared here the way
//! `scripts/prepare_shared_weights.py` does, through the same ONNX Runtime session options.
//! Skipped, with the reason printed, when the model or the library is missing.

mod common;

use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use pg_vision_core::decode::Options;
use pg_vision_core::embed::embed_image;
use pg_vision_core::image_model::ImageModel;
use pg_vision_core::manifest::{Manifest, Output};
use pg_vision_core::prepared::{self, Choice, Sidecar, FORMAT};
use pg_vision_core::runtime;
use pg_vision_core::session::SessionOptions;

fn prepare(dir: &Path, library: &Path) {
    let env = runtime::environment(library).unwrap();
    let graph = dir.join("efficientnet-lite0.shared.onnx");
    Session::builder(env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .with_optimized_model_path(&graph)
        .unwrap()
        .with_config_entry(
            "session.optimized_model_external_initializers_file_name",
            "efficientnet-lite0.shared.onnx.data",
        )
        .unwrap()
        .with_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        .unwrap()
        .with_config_entry("session.save_external_prepacked_constant_initializers", "1")
        .unwrap()
        .commit_from_file(dir.join("efficientnet-lite0.onnx"))
        .unwrap();
}

fn sidecar(dir: &Path, library: &Path, edit: impl FnOnce(&mut Sidecar)) {
    let len = |name: &str| std::fs::metadata(dir.join(name)).unwrap().len();
    let mut s = Sidecar {
        format: FORMAT,
        ort_version: runtime::version(library).unwrap().to_owned(),
        cpu: prepared::cpu_features(),
        source_onnx: "efficientnet-lite0.onnx".into(),
        source_sha256: Manifest::load(dir, "efficientnet").unwrap().onnx_sha256.unwrap(),
        onnx_file: "efficientnet-lite0.shared.onnx".into(),
        onnx_bytes: len("efficientnet-lite0.shared.onnx"),
        data_file: "efficientnet-lite0.shared.onnx.data".into(),
        data_bytes: len("efficientnet-lite0.shared.onnx.data"),
    };
    edit(&mut s);
    // Replaced by rename, as models.sh does: a new file, never one rewritten in place.
    let tmp = dir.join("efficientnet-lite0.shared.json.tmp");
    std::fs::write(&tmp, serde_json::to_string(&s).unwrap()).unwrap();
    std::fs::rename(tmp, dir.join("efficientnet-lite0.shared.json")).unwrap();
}

fn vector(model: &mut ImageModel) -> Vec<f32> {
    embed_image(model, &common::png(300, 240, 7), &Options::default(), Output::Embedding).unwrap().0
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn prepared_files_are_mapped_give_the_same_vectors_and_fall_back_when_they_do_not_match() {
    let models = common::models_dir();
    let Some(opts) = common::session_options(&[&models.join("efficientnet-lite0.onnx")]) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("pgv-prepared-ort-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["efficientnet.json", "efficientnet-lite0.onnx"] {
        std::fs::copy(models.join(f), dir.join(f)).unwrap();
    }

    // No sidecar: the plain file, nothing to report.
    let mut plain = ImageModel::load(&dir, "efficientnet", &opts).unwrap();
    assert_eq!(plain.choice, Choice::Plain { why: None });
    let want = vector(&mut plain);
    drop(plain);

    prepare(&dir, &opts.library);
    sidecar(&dir, &opts.library, |_| {});
    let mut shared = ImageModel::load(&dir, "efficientnet", &opts).unwrap();
    let Choice::Prepared(p) = shared.choice.clone() else { panic!("not prepared: {:?}", shared.choice) };
    assert_eq!(shared.origin.onnx.path, dir.join("efficientnet-lite0.shared.onnx"));
    let got = vector(&mut shared);
    assert!(max_diff(&want, &got) < 1e-4, "prepared differs by {}", max_diff(&want, &got));
    // ONNX Runtime maps the data file (most of the weights), and writes none of it (its
    // pages, just written by `prepare`, are dirty in the page cache all the same).
    let mapped = prepared::mapped(&p.data);
    assert!(mapped.size > 10_000_000 && mapped.size <= p.data.id.len, "{mapped:?} of {}", p.data.id.len);
    assert_eq!(mapped.anonymous, 0, "{mapped:?}");
    // A new sidecar is a changed origin: the cache loads the tower again.
    assert!(shared.origin.unchanged());
    sidecar(&dir, &opts.library, |s| s.cpu = "x86_64:avx512f".into());
    assert!(!shared.origin.unchanged());
    drop(shared);
    // Once the tower is gone, nothing maps the file any more.
    assert_eq!(prepared::mapped(&p.data).size, 0);

    // A sidecar for another CPU: the plain file, saying why, and the same vectors.
    let mut fallback = ImageModel::load(&dir, "efficientnet", &opts).unwrap();
    match &fallback.choice {
        Choice::Plain { why: Some(why) } => assert!(why.contains("prepared on a CPU with \"x86_64:avx512f\""), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fallback.origin.onnx.path, dir.join("efficientnet-lite0.onnx"));
    assert!(max_diff(&want, &vector(&mut fallback)) < 1e-6);
    drop(fallback);

    // The setting off: the plain file even with a matching sidecar.
    sidecar(&dir, &opts.library, |_| {});
    let off = SessionOptions { shared_weights: false, ..opts.clone() };
    assert_eq!(ImageModel::load(&dir, "efficientnet", &off).unwrap().choice, Choice::Plain { why: None });
    std::fs::remove_dir_all(&dir).unwrap();
}
