//! Decode and resize cost of a JPEG, per decoder and DCT scale, single-threaded.
//!
//!     cargo run --release -p pg_vision_core --example decode_bench -- photo.jpg [more.jpg ...]
//!
//! Prints the median of 30 runs for: the `image` crate (zune-jpeg) at full size,
//! libjpeg-turbo at every scale n/8, and the whole decode + resize/crop/normalise that
//! `embed_image` does for EfficientNet-Lite0 with `pg_vision.jpeg_dct_scaling` off and on.

use std::path::Path;
use std::time::Instant;

use pg_vision_core::decode::{self, Options};
use pg_vision_core::manifest::Manifest;
use pg_vision_core::preprocess;
use turbojpeg::{Decompressor, Image, PixelFormat, ScalingFactor};

const RUNS: usize = 30;

fn median_ms(mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let mut t: Vec<f64> = (0..RUNS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[RUNS / 2]
}

fn turbo(bytes: &[u8], n: usize) -> (usize, usize) {
    let mut d = Decompressor::new().unwrap();
    let f = ScalingFactor::new(n, 8);
    d.set_scaling_factor(f).unwrap();
    let h = d.read_header(bytes).unwrap().scaled(f);
    let mut img = Image {
        pixels: vec![0u8; 3 * h.width * h.height],
        width: h.width,
        pitch: 3 * h.width,
        height: h.height,
        format: PixelFormat::RGB,
    };
    d.decompress(bytes, img.as_deref_mut()).unwrap();
    (h.width, h.height)
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/efficientnet.json");
    let m = Manifest::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let min_side = preprocess::min_decode_side(&m);
    for file in std::env::args().skip(1) {
        let bytes = std::fs::read(&file).unwrap();
        let (w, h) = image::image_dimensions(&file).unwrap();
        println!("{file}: {w}x{h}, {} KB; Lite0 needs a short side of {min_side} to scale", bytes.len() / 1024);
        let zune = median_ms(|| {
            image::load_from_memory(&bytes).unwrap();
        });
        println!("  image crate (zune-jpeg), full       {zune:7.2} ms");
        for n in (1..=8).rev() {
            let mut size = (0, 0);
            let ms = median_ms(|| size = turbo(&bytes, n));
            println!("  libjpeg-turbo {n}/8 -> {:>5}x{:<5}     {ms:7.2} ms", size.0, size.1);
        }
        for scaling in [false, true] {
            let opts = Options { jpeg_dct_scaling: scaling, ..Options::default() };
            let mut out = vec![0f32; preprocess::tensor_len(&m)];
            let mut decoded = (0, 0);
            let dec = median_ms(|| {
                let img = decode::decode_rgb8(&bytes, preprocess::transparency(&m), &opts, min_side).unwrap();
                decoded = (img.width, img.height);
            });
            let img = decode::decode_rgb8(&bytes, preprocess::transparency(&m), &opts, min_side).unwrap();
            let pre = median_ms(|| preprocess::preprocess(&img, &m, &mut out).unwrap());
            println!(
                "  embed path, jpeg_dct_scaling {:<3}: decode {dec:6.2} ms ({}x{}) + preprocess {pre:5.2} ms = {:6.2} ms",
                if scaling { "on" } else { "off" },
                decoded.0,
                decoded.1,
                dec + pre
            );
        }
    }
}
