//! The parallel decode of a batch (`embed::prepare_parallel`), on encoded images.

mod common;

use pg_vision_core::decode::{self, Options};
use pg_vision_core::embed::prepare_parallel;
use pg_vision_core::manifest::Manifest;
use pg_vision_core::preprocess;

fn manifest() -> Manifest {
    let path = common::models_dir().join("efficientnet.json");
    Manifest::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

#[test]
fn parallel_preparation_equals_serial_in_order() {
    let m = manifest();
    let len = preprocess::tensor_len(&m);
    let files: Vec<Vec<u8>> = (1..=7).map(|i| common::png(300 + i * 10, 250, (i as u8).wrapping_mul(37))).collect();
    let refs: Vec<&[u8]> = files.iter().map(|f| f.as_slice()).collect();
    let mut parallel = vec![0f32; len * refs.len()];
    prepare_parallel(&m, &refs, 1, &Options::default(), 3, &mut parallel).unwrap();
    for (i, f) in refs.iter().enumerate() {
        let img =
            decode::decode_rgb8(f, preprocess::transparency(&m), &Options::default(), preprocess::min_decode_side(&m))
                .unwrap();
        let mut one = vec![0f32; len];
        preprocess::preprocess(&img, &m, &mut one).unwrap();
        assert_eq!(&parallel[i * len..(i + 1) * len], &one[..], "image {i}");
    }
}

#[test]
fn a_bad_image_is_named_by_its_position() {
    let m = manifest();
    let good = common::png(64, 64, 3);
    let images: Vec<&[u8]> = vec![&good, &good, b"junk", &good, b"more junk"];
    let mut out = vec![0f32; preprocess::tensor_len(&m) * images.len()];
    let e = prepare_parallel(&m, &images, 11, &Options::default(), 2, &mut out).unwrap_err();
    // The first bad one in input order, counted from `first`.
    assert!(e.message.starts_with("image 13 (1-based): bytes are not a recognised image"), "{}", e.message);
}
