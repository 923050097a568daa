//! Untrusted image bytes through the whole path an uploaded image takes before the model:
//! `decode::info`, `decode::decode_rgb8` (both alpha rules) and `preprocess::preprocess`
//! (the shipped EfficientNet manifest and a small NHWC / BGR / exact-resize variant).
//!
//! Errors are expected and fine. A panic, an abort, a sanitizer report, running out of
//! memory (`-rss_limit_mb`) or time (`-timeout`), or a non-finite tensor value is a bug.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pg_vision_core::decode::{self, Options};
use pg_vision_core::manifest::{Alpha, ColorOrder, Crop, Interpolation, Layout, Manifest, ResizeMode};
use pg_vision_core::preprocess;

/// Small enough to keep one run well under a second: 4 Mpx decodes to at most 12 MB of
/// RGB (the decoders' own buffers are capped at 8 bytes a pixel + 64 MiB by `decode`).
const LIMITS: Options = Options { max_pixels: 4_000_000, max_bytes: 1 << 20, jpeg_dct_scaling: true };

fn manifests() -> &'static [Manifest; 2] {
    static M: OnceLock<[Manifest; 2]> = OnceLock::new();
    M.get_or_init(|| {
        let eff = Manifest::parse(include_str!("../../../models/efficientnet.json"), Path::new("models/efficientnet.json"))
            .expect("shipped efficientnet manifest parses");
        // The other branches of the recipe: channels-last, BGR, exact (aspect-ignoring)
        // bilinear resize, no crop, a non-unit scale; kept small so runs stay fast.
        let mut small = eff.clone();
        small.name = "fuzz_small".into();
        small.layout = Layout::NHWC;
        small.color_order = ColorOrder::BGR;
        small.width = 48;
        small.height = 32;
        small.resize.mode = ResizeMode::Exact;
        small.resize.size = 0;
        small.resize.interpolation = Interpolation::Bilinear;
        small.crop = Crop::None;
        small.alpha = Alpha::Drop;
        small.scale = 1.0 / 255.0;
        small.mean = [0.485, 0.456, 0.406];
        small.std = [0.229, 0.224, 0.225];
        [eff, small]
    })
}

fuzz_target!(|data: &[u8]| {
    let ms = manifests();
    let info = decode::info(data, &LIMITS);
    for alpha in [Alpha::White, Alpha::Drop] {
        let img = match decode::decode_rgb8(data, alpha, &LIMITS) {
            Ok(img) => img,
            Err(_) => continue,
        };
        // What `info` promised must hold for what `decode_rgb8` delivered.
        let info = info.as_ref().expect("decode_rgb8 succeeded where info failed");
        let (w, h) = if info.orientation >= 5 { (info.height, info.width) } else { (info.width, info.height) };
        assert_eq!((img.width, img.height), (w, h), "decoded size disagrees with info {info:?}");
        assert_eq!(img.data.len(), img.width as usize * img.height as usize * 3, "RGB buffer size");
        assert!(img.width as u64 * img.height as u64 <= LIMITS.max_pixels);
        for m in ms {
            let mut t = vec![f32::NAN; preprocess::tensor_len(m)];
            match preprocess::preprocess(&img, m, &mut t) {
                Ok(()) => {
                    if let Some(i) = t.iter().position(|v| !v.is_finite()) {
                        panic!("{}: tensor[{i}] = {} for a {}x{} image", m.name, t[i], img.width, img.height);
                    }
                }
                // A decoded image the preprocessing refuses is a bug too: every image
                // that passed the decoder's limits must yield an input tensor.
                Err(e) => panic!("{}: preprocess failed for a {}x{} image: {e}", m.name, img.width, img.height),
            }
        }
    }
});
