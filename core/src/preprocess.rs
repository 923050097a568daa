//! A decoded image to the model's input tensor, following the manifest's recipe:
//! resize (shortest side or exact, antialiased bicubic/bilinear as Pillow does it),
//! centre crop, colour order, `(pixel * scale - mean) / std`, NCHW or NHWC.
//!
//! The resize and the crop are one step: only the pixels that survive the crop are
//! computed. The filter is placed exactly where a full resize followed by a crop would
//! place it (same scale, same centres, kernel clipped at the image's own edges), so the
//! result matches the two-step Pillow pipeline of `scripts/reference_embed.py`.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::decode::{Rgb8, Transparency};
use crate::error::{Error, Kind, Result};
use crate::manifest::{Alpha, ColorOrder, Crop, Interpolation, Layout, Manifest, ResizeMode};

/// How the decoder treats transparent pixels for this model (`decode::decode_rgb8`).
pub fn transparency(m: &Manifest) -> Transparency {
    match m.alpha {
        Alpha::White => Transparency::OntoWhite,
        Alpha::Drop => Transparency::Ignore,
    }
}

/// Where the model's input window lies in the (virtually) resized image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Size of the whole resized image (u64: a 20,000,000 x 1 strip resized to a
    /// short side of 256 is 5.1e9 pixels long).
    pub resized_w: u64,
    pub resized_h: u64,
    /// Top-left corner of the crop in the resized image.
    pub left: u64,
    pub top: u64,
}

/// Resized size and crop offset for an image of `w` x `h`. The long side is truncated
/// (`int(long * size / short)`) as torchvision's and CLIP's `Resize(size)` do; the crop
/// offset is `round((resized - crop) / 2)` with ties to even, as Python's `round`.
pub fn geometry(m: &Manifest, w: u32, h: u32) -> Geometry {
    let (rw, rh) = match m.resize.mode {
        ResizeMode::Exact if m.resize.size > 0 => (m.resize.size as u64, m.resize.size as u64),
        ResizeMode::Exact => (m.width as u64, m.height as u64),
        ResizeMode::ShortestSide => {
            let size = m.resize.size as u64;
            if w <= h {
                (size, ((h as u64 * size) / w as u64).max(size))
            } else {
                (((w as u64 * size) / h as u64).max(size), size)
            }
        }
    };
    let offset =
        |resized: u64, crop: u32| ((resized.saturating_sub(crop as u64)) as f64 / 2.0).round_ties_even() as u64;
    match m.crop {
        Crop::Center => Geometry { resized_w: rw, resized_h: rh, left: offset(rw, m.width), top: offset(rh, m.height) },
        Crop::None => Geometry { resized_w: rw, resized_h: rh, left: 0, top: 0 },
    }
}

/// How small a JPEG may be decoded (`decode::decode_rgb8`'s `min_short_side`): four
/// times the resized size, so the antialiased resize still does most of the filtering.
/// Measured on the parity corpus's 2048-4096 px JPEGs (scripts/parity.py; Pillow's own
/// `draft` mode scores the same): the worst cosine to a full decode is 0.9960 with a
/// margin of 1, 0.9993 with 2 and 0.9998 with 4. The speed given up from 2 to 4 is small:
/// entropy decoding, which no scale avoids, dominates a big JPEG's decode.
pub fn min_decode_side(m: &Manifest) -> u32 {
    const MARGIN: u32 = 4;
    let needed = match m.resize.mode {
        ResizeMode::ShortestSide => m.resize.size,
        ResizeMode::Exact if m.resize.size > 0 => m.resize.size,
        ResizeMode::Exact => m.width.max(m.height),
    };
    needed.saturating_mul(MARGIN)
}

/// Number of f32 values in one image's input tensor.
pub fn tensor_len(m: &Manifest) -> usize {
    3 * m.width as usize * m.height as usize
}

/// Resizes and crops to the model's `width` x `height`, 8-bit RGB.
///
/// Two separable passes, horizontal first, as Pillow does them (both round to 8 bits
/// between passes, so the order shows in the result; `fast_image_resize` on its own runs
/// the vertical pass first). The horizontal pass only covers the source rows the
/// vertical filter will read.
pub fn resize_crop(img: &Rgb8, m: &Manifest) -> Result<Vec<u8>> {
    // The geometry of the image as stored; a DCT-scaled decode covers the same picture
    // with `scale` times the pixels, so the source step is scaled, not re-derived from
    // the (rounded-up) decoded size.
    let g = geometry(m, img.full_width, img.full_height);
    let sx = img.full_width as f64 * img.scale / g.resized_w as f64;
    let sy = img.full_height as f64 * img.scale / g.resized_h as f64;
    let (filter, support) = match m.resize.interpolation {
        Interpolation::Bicubic => (FilterType::CatmullRom, 2.0), // Pillow's BICUBIC is Keys a = -0.5
        Interpolation::Bilinear => (FilterType::Bilinear, 1.0),
    };
    let alg = ResizeAlg::Convolution(filter);
    // Source rows within the vertical filter's reach of the crop window (+1 for rounding).
    let reach = support * sy.max(1.0) + 1.0;
    let row0 = ((g.top as f64 * sy - reach).floor().max(0.0)) as u32;
    let row1 = (((g.top + m.height as u64) as f64 * sy + reach).ceil().min(img.height as f64)) as u32;
    let rows = row1 - row0;

    // Pass 1, horizontal: rows row0..row1, every column, to the crop's width.
    let band = &img.data[row0 as usize * img.width as usize * 3..row1 as usize * img.width as usize * 3];
    let src = ImageRef::new(img.width, rows, band, PixelType::U8x3).map_err(internal)?;
    let mut wide = Image::new(m.width, rows, PixelType::U8x3);
    let h_opts = ResizeOptions::new().resize_alg(alg).crop(g.left as f64 * sx, 0.0, m.width as f64 * sx, rows as f64);
    Resizer::new().resize(&src, &mut wide, &h_opts).map_err(internal)?;

    // Pass 2, vertical: to the crop's height, rows counted from row0.
    let mut dst = Image::new(m.width, m.height, PixelType::U8x3);
    let v_opts = ResizeOptions::new().resize_alg(alg).crop(
        0.0,
        g.top as f64 * sy - row0 as f64,
        m.width as f64,
        m.height as f64 * sy,
    );
    Resizer::new().resize(&wide, &mut dst, &v_opts).map_err(internal)?;
    Ok(dst.into_vec())
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::new(Kind::InvalidImage, format!("cannot resize image: {e}"))
}

/// Writes the normalised tensor of one image into `out` (`tensor_len(m)` values).
pub fn to_tensor(rgb: &[u8], m: &Manifest, out: &mut [f32]) {
    let hw = m.width as usize * m.height as usize;
    debug_assert_eq!(rgb.len(), hw * 3);
    debug_assert_eq!(out.len(), hw * 3);
    // Channel c of the tensor reads source channel src[c].
    let src: [usize; 3] = match m.color_order {
        ColorOrder::RGB => [0, 1, 2],
        ColorOrder::BGR => [2, 1, 0],
    };
    // (p * scale - mean) / std == p * a + b, precomputed per channel and per byte value.
    let lut: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|p| (p as f32 * m.scale - m.mean[c]) / m.std[c]));
    match m.layout {
        Layout::NCHW => {
            for c in 0..3 {
                let plane = &mut out[c * hw..(c + 1) * hw];
                for (i, px) in rgb.chunks_exact(3).enumerate() {
                    plane[i] = lut[c][px[src[c]] as usize];
                }
            }
        }
        Layout::NHWC => {
            for (o, px) in out.chunks_exact_mut(3).zip(rgb.chunks_exact(3)) {
                for (c, value) in o.iter_mut().enumerate() {
                    *value = lut[c][px[src[c]] as usize];
                }
            }
        }
    }
}

/// Resize, crop and normalise one decoded image into `out`.
pub fn preprocess(img: &Rgb8, m: &Manifest, out: &mut [f32]) -> Result<()> {
    let rgb = resize_crop(img, m)?;
    to_tensor(&rgb, m, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Resize;
    use std::collections::BTreeMap;

    fn manifest(layout: Layout, order: ColorOrder, mode: ResizeMode, size: u32, crop: Crop) -> Manifest {
        Manifest {
            name: "t".into(),
            description: String::new(),
            onnx_file: "t.onnx".into(),
            onnx_sha256: None,
            fetch_hint: String::new(),
            input_name: "input".into(),
            layout,
            width: 4,
            height: 4,
            color_order: order,
            alpha: Alpha::White,
            resize: Resize { mode, size, interpolation: Interpolation::Bicubic },
            crop,
            scale: 1.0,
            mean: [127.0, 127.0, 127.0],
            std: [128.0, 128.0, 128.0],
            output_name: "out".into(),
            dim: 8,
            l2_normalize: false,
            extra_outputs: BTreeMap::new(),
            text: None,
            source: None,
        }
    }

    #[test]
    fn geometry_truncates_long_side_and_centres_crop() {
        let mut m = manifest(Layout::NCHW, ColorOrder::RGB, ResizeMode::ShortestSide, 256, Crop::Center);
        m.width = 224;
        m.height = 224;
        // 1000x750: short side 750 -> 256, long 1000*256/750 = 341.33 -> 341; (341-224)/2 = 58.5 -> 58 (ties to even)
        assert_eq!(geometry(&m, 1000, 750), Geometry { resized_w: 341, resized_h: 256, left: 58, top: 16 });
        assert_eq!(geometry(&m, 750, 1000), Geometry { resized_w: 256, resized_h: 341, left: 16, top: 58 });
        assert_eq!(geometry(&m, 1, 1), Geometry { resized_w: 256, resized_h: 256, left: 16, top: 16 });
        assert_eq!(geometry(&m, 10000, 1).resized_w, 2_560_000);
        // Past u32: a 16,777,217 x 1 strip is 4,294,967,552 pixels long once resized.
        let g = geometry(&m, 16_777_217, 1);
        assert_eq!((g.resized_w, g.left), (4_294_967_552, 2_147_483_664));
        m.resize.mode = ResizeMode::Exact;
        // exact to a square `size`, then the centre crop (OpenNSFW's 256 -> 224)
        assert_eq!(geometry(&m, 1000, 750), Geometry { resized_w: 256, resized_h: 256, left: 16, top: 16 });
        m.resize.size = 0;
        m.crop = Crop::None;
        assert_eq!(geometry(&m, 1000, 750), Geometry { resized_w: 224, resized_h: 224, left: 0, top: 0 });
    }

    #[test]
    fn jpegs_may_shrink_to_four_times_the_resized_size() {
        let mut m = manifest(Layout::NCHW, ColorOrder::RGB, ResizeMode::ShortestSide, 256, Crop::Center);
        assert_eq!(min_decode_side(&m), 1024);
        m.resize.mode = ResizeMode::Exact;
        m.resize.size = 0;
        m.width = 300;
        m.height = 200;
        assert_eq!(min_decode_side(&m), 1200);
    }

    #[test]
    fn a_reduced_decode_lands_on_the_same_pixels() {
        // The same picture decoded at full size and at 1/2 (simulated by averaging 2x2
        // blocks) must resize to nearly the same window: the geometry follows the stored
        // size, and the step is scaled by exactly 1/2.
        let (w, h) = (801u32, 601u32);
        let f = |x: u32, y: u32| [((x / 40 + y / 40) % 2 * 200) as u8, (x % 256) as u8, (y % 256) as u8];
        let full = Rgb8::new(w, h, (0..w * h).flat_map(|i| f(i % w, i / w)).collect());
        let (hw, hh) = (w.div_ceil(2), h.div_ceil(2));
        let half_data: Vec<u8> = (0..hw * hh)
            .flat_map(|i| {
                let (x, y) = (i % hw * 2, i / hw * 2);
                let mut acc = [0u32; 3];
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = f((x + dx).min(w - 1), (y + dy).min(h - 1));
                    (0..3).for_each(|c| acc[c] += p[c] as u32);
                }
                acc.map(|v| ((v + 2) / 4) as u8)
            })
            .collect();
        let half = Rgb8 { width: hw, height: hh, data: half_data, full_width: w, full_height: h, scale: 0.5 };
        let mut m = manifest(Layout::NCHW, ColorOrder::RGB, ResizeMode::ShortestSide, 64, Crop::Center);
        m.width = 56;
        m.height = 56;
        let (a, b) = (resize_crop(&full, &m).unwrap(), resize_crop(&half, &m).unwrap());
        let mean_diff = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / a.len() as f64;
        assert!(mean_diff < 2.0, "mean difference {mean_diff} levels");
    }

    #[test]
    fn constant_image_stays_constant() {
        let m = manifest(Layout::NCHW, ColorOrder::RGB, ResizeMode::ShortestSide, 6, Crop::Center);
        let img = Rgb8::new(37, 11, [10u8, 127, 255].repeat(37 * 11));
        let mut t = vec![0f32; tensor_len(&m)];
        preprocess(&img, &m, &mut t).unwrap();
        assert!(t[..16].iter().all(|v| (*v - (10.0 - 127.0) / 128.0).abs() < 1e-6));
        assert!(t[16..32].iter().all(|v| v.abs() < 1e-6));
        assert!(t[32..].iter().all(|v| (*v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn layout_and_colour_order() {
        // 4x4 input, exact resize to 4x4 is the identity; pixel i has R=i, G=100+i, B=200+i.
        let data: Vec<u8> = (0..16u8).flat_map(|i| [i, 100 + i, 200 + i]).collect();
        let img = Rgb8::new(4, 4, data);
        let mut m = manifest(Layout::NCHW, ColorOrder::RGB, ResizeMode::Exact, 0, Crop::None);
        m.mean = [0.0; 3];
        m.std = [1.0; 3];
        let mut t = vec![0f32; 48];
        preprocess(&img, &m, &mut t).unwrap();
        assert_eq!((t[0], t[5], t[16], t[32 + 15]), (0.0, 5.0, 100.0, 215.0));
        m.layout = Layout::NHWC;
        m.color_order = ColorOrder::BGR;
        preprocess(&img, &m, &mut t).unwrap();
        assert_eq!(&t[..6], &[200.0, 100.0, 0.0, 201.0, 101.0, 1.0]);
    }

    #[test]
    fn crop_matches_full_resize_then_crop() {
        // Resizing only the crop window must equal resizing everything and cutting it out.
        let (w, h) = (97u32, 61u32);
        let data: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let x = i % w;
                let y = i / w;
                [(x * 2) as u8, (y * 4) as u8, ((x * y) % 251) as u8]
            })
            .collect();
        let img = Rgb8::new(w, h, data);
        let mut m = manifest(Layout::NCHW, ColorOrder::RGB, ResizeMode::ShortestSide, 40, Crop::Center);
        m.width = 32;
        m.height = 32;
        let window = resize_crop(&img, &m).unwrap();
        let g = geometry(&m, w, h);
        // Reference: the whole image, horizontal pass then vertical pass, then the cut.
        let alg = ResizeAlg::Convolution(FilterType::CatmullRom);
        let src = ImageRef::new(w, h, &img.data, PixelType::U8x3).unwrap();
        let mut wide = Image::new(g.resized_w as u32, h, PixelType::U8x3);
        Resizer::new().resize(&src, &mut wide, &ResizeOptions::new().resize_alg(alg)).unwrap();
        let mut full = Image::new(g.resized_w as u32, g.resized_h as u32, PixelType::U8x3);
        Resizer::new().resize(&wide, &mut full, &ResizeOptions::new().resize_alg(alg)).unwrap();
        let full = full.into_vec();
        let mut max_diff = 0;
        for y in 0..32usize {
            for x in 0..32usize * 3 {
                let a = window[y * 96 + x] as i32;
                let b = full[(y + g.top as usize) * g.resized_w as usize * 3 + g.left as usize * 3 + x] as i32;
                max_diff = max_diff.max((a - b).abs());
            }
        }
        assert_eq!(max_diff, 0, "resizing the window must equal resizing everything, then cutting");
    }

    #[test]
    fn tiny_and_extreme_images_do_not_panic() {
        let mut m = manifest(Layout::NCHW, ColorOrder::RGB, ResizeMode::ShortestSide, 256, Crop::Center);
        m.width = 224;
        m.height = 224;
        let mut t = vec![0f32; tensor_len(&m)];
        for (w, h) in [(1, 1), (10000, 1), (1, 10000), (2, 3)] {
            let img = Rgb8::new(w, h, vec![200; (w * h * 3) as usize]);
            preprocess(&img, &m, &mut t).unwrap();
            assert!(t.iter().all(|v| (*v - 73.0 / 128.0).abs() < 1e-6), "{w}x{h}");
        }
    }
}
