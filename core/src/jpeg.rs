//! JPEG through libjpeg-turbo, the decoder Pillow (and so the reference pipeline and most
//! training pipelines) uses, optionally at a reduced DCT scale.
//!
//! A JPEG stores 8x8 blocks of DCT coefficients. Decoding at scale n/8 runs an n-point
//! inverse DCT on the lowest frequencies of each block: the image comes out n/8 the size,
//! already low-pass filtered, for a fraction of the work of a full decode plus a resize.
//! `decode::decode_rgb8` uses it only while the shorter side stays at least four times
//! what the model's resize needs (`preprocess::min_decode_side`), so the antialiased
//! resize that follows still does most of the filtering and the embedding matches a full
//! decode (measured by `scripts/parity.py`, which runs both ways).

use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};

/// The reduced scales tried, in eighths. libjpeg-turbo has SIMD inverse DCTs for these;
/// its other n/8 sizes run in plain C and are no faster than a full decode here
/// (`cargo run --release -p pg_vision_core --example decode_bench`).
const EIGHTHS: [u32; 3] = [1, 2, 4];

/// Progressive JPEGs can carry thousands of tiny scans that make decoding take minutes
/// (a known JPEG denial of service). Real encoders write at most a few dozen.
const MAX_SCANS: u32 = 500;

/// A decoded JPEG, RGB, as stored (EXIF orientation not applied).
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// Decoded pixels per stored pixel: n/8, or 1.
    pub scale: f64,
}

/// The smallest scale n/8 at which the shorter side of a `w` x `h` image still has at
/// least `min_short_side` pixels; 8 (full size) if none.
pub fn pick_eighths(w: u32, h: u32, min_short_side: u32) -> u32 {
    let short = w.min(h) as u64;
    EIGHTHS.into_iter().find(|&n| (short * n as u64).div_ceil(8) >= min_short_side as u64).unwrap_or(8)
}

/// Decodes a YCbCr, greyscale or RGB JPEG to RGB, at the scale `pick_eighths` gives for
/// `min_short_side` (0: full size). `None` when libjpeg-turbo declines the file or
/// reports anything, even a warning (CMYK/YCCK, lossless, truncated or corrupt data): the
/// caller then takes its general decoder, whose verdict (and error message) stands.
pub fn decode(bytes: &[u8], min_short_side: u32) -> Option<Decoded> {
    let mut d = Decompressor::new().ok()?;
    let header = d.read_header(bytes).ok()?;
    if !matches!(header.colorspace, Colorspace::YCbCr | Colorspace::Gray | Colorspace::RGB) || header.is_lossless {
        return None;
    }
    let (w, h) = (u32::try_from(header.width).ok()?, u32::try_from(header.height).ok()?);
    let n = if min_short_side == 0 { 8 } else { pick_eighths(w, h, min_short_side) };
    let factor = ScalingFactor::new(n as usize, 8);
    d.set_scaling_factor(factor).ok()?;
    d.set_scan_limit(MAX_SCANS).ok()?;
    let scaled = header.scaled(factor);
    let mut image = Image {
        pixels: vec![0u8; 3 * scaled.width * scaled.height],
        width: scaled.width,
        pitch: 3 * scaled.width,
        height: scaled.height,
        format: PixelFormat::RGB,
    };
    d.decompress(bytes, image.as_deref_mut()).ok()?;
    Some(Decoded { width: scaled.width as u32, height: scaled.height as u32, data: image.pixels, scale: n as f64 / 8.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_smallest_scale_that_keeps_enough_pixels() {
        // 4000x3000 phone photo, 512 px needed: 3000/4 = 750 >= 512.
        assert_eq!(pick_eighths(4000, 3000, 512), 2);
        assert_eq!(pick_eighths(3000, 4000, 512), 2);
        // 4096 short side: 4096/8 = 512 is exactly enough.
        assert_eq!(pick_eighths(4096, 5000, 512), 1);
        // 1000 px: half is 500 < 512, so full size.
        assert_eq!(pick_eighths(1000, 1000, 512), 8);
        assert_eq!(pick_eighths(1024, 1000, 500), 4);
        // ceil: 1023 / 2 rounds up to 512.
        assert_eq!(pick_eighths(1023, 2000, 512), 4);
        assert_eq!(pick_eighths(1, 1, 512), 8);
    }
}
