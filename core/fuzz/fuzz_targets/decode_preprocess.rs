//! Untrusted image bytes through the whole path an uploaded image takes before the model:
//! `decode::info`, `decode::decode_rgb8` (both transparency rules, full size and JPEG DCT-reduced)
//! and `preprocess::preprocess`
//! (the shipped EfficientNet manifest and a small NHWC / BGR / exact-resize variant).
//!
//! Errors are expected and fine. A panic, an abort, a sanitizer report, running out of
//! memory (`-rss_limit_mb`) or time (`-timeout`), or a non-finite tensor value is a bug.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pg_vision_core::decode::{self, Options, Transparency};
use pg_vision_core::error::never;
use pg_vision_core::manifest::{Alpha, ColorOrder, Crop, Interpolation, Layout, Manifest, ResizeMode};
use pg_vision_core::preprocess;

/// Small enough to keep one run well under a second: 4 Mpx decodes to at most 12 MB of
/// RGB (the decoders' own buffers are capped at 8 bytes a pixel + 64 MiB by `decode`).
const LIMITS: Options = Options {
    max_pixels: 4_000_000,
    max_bytes: 1 << 20,
    jpeg_dct_scaling: true,
    accept_damaged: false,
    stop: never,
};

fn manifests() -> &'static [Manifest; 2] {
    static M: OnceLock<[Manifest; 2]> = OnceLock::new();
    M.get_or_init(|| {
        let eff =
            Manifest::parse(include_str!("../../../models/efficientnet.json"), Path::new("models/efficientnet.json"))
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
    // Full size under both transparency rules, then a JPEG-reducing decode (a 32 px short side
    // allows 1/8 on anything from 256 px): every path `decode_rgb8` has.
    for (alpha, min_short_side) in [(Transparency::OntoWhite, 0), (Transparency::Ignore, 0), (Transparency::OntoWhite, 32)] {
        let img = match decode::decode_rgb8(data, alpha, &LIMITS, min_short_side) {
            Ok(img) => img,
            Err(_) => continue,
        };
        // What `info` promised must hold for what `decode_rgb8` delivered.
        let info = info.as_ref().expect("decode_rgb8 succeeded where info failed");
        let (w, h) = if info.orientation >= 5 { (info.height, info.width) } else { (info.width, info.height) };
        assert_eq!((img.full_width, img.full_height), (w, h), "decoded full size disagrees with info {info:?}");
        let scaled = |full: u32| (full as f64 * img.scale).ceil() as u32;
        assert_eq!(
            (img.width, img.height),
            (scaled(w), scaled(h)),
            "decoded size is not the full size at scale {}",
            img.scale
        );
        assert!(
            img.scale == 1.0 || (min_short_side > 0 && img.width.min(img.height) >= min_short_side),
            "reduced below the minimum"
        );
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
