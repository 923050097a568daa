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

use crate::error::{Error, Kind};

/// The reduced scales tried, in eighths. libjpeg-turbo has SIMD inverse DCTs for these;
/// its other n/8 sizes run in plain C and are no faster than a full decode here
/// (`cargo run --release -p pg_vision_core --example decode_bench`).
const EIGHTHS: [u32; 3] = [1, 2, 4];

/// Progressive JPEGs can carry thousands of tiny scans that make decoding take minutes
/// (a known JPEG denial of service); real encoders write at most a few dozen. Each scan
/// costs a pass over the image's blocks, and libjpeg-turbo cannot be interrupted inside
/// one decode, so the limit shrinks with the image: at most `SCAN_BUDGET` scans x pixels,
/// between `MIN_SCANS` and `MAX_SCANS`. Measured (2 cores): a 49-megapixel progressive
/// JPEG decodes in 0.60 s with 97 scans and 0.54 s with 10, about 1.4 ms a scan.
const MAX_SCANS: u64 = 500;
const MIN_SCANS: u64 = 100;
const SCAN_BUDGET: u64 = 5_000_000_000;

/// The most progressive scans allowed for a `w` x `h` JPEG.
pub fn scan_limit(w: u32, h: u32) -> u32 {
    (SCAN_BUDGET / (w as u64 * h as u64).max(1)).clamp(MIN_SCANS, MAX_SCANS) as u32
}

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

/// What libjpeg-turbo made of a JPEG.
pub enum Outcome {
    Decoded(Decoded),
    /// Not a JPEG it takes: unreadable header, CMYK/YCCK, lossless. The caller tries its
    /// general decoder, whose verdict stands.
    Declined,
    /// It failed or warned while decoding (a truncated file, corrupt entropy-coded data),
    /// with libjpeg-turbo's message.
    Damaged(String),
    /// Refused outright: too many progressive scans, or no memory for the pixels.
    Refused(Error),
}

/// Decodes a YCbCr, greyscale or RGB JPEG to RGB, at the scale `pick_eighths` gives for
/// `min_short_side` (0: full size). Anything libjpeg-turbo reports while decoding, even a
/// warning, makes the file `Damaged`: its warnings are all about damaged data ("Premature
/// end of JPEG file", "Corrupt JPEG data: ...").
pub fn decode(bytes: &[u8], min_short_side: u32) -> Outcome {
    let Ok(mut d) = Decompressor::new() else { return Outcome::Declined };
    let Ok(header) = d.read_header(bytes) else { return Outcome::Declined };
    if !matches!(header.colorspace, Colorspace::YCbCr | Colorspace::Gray | Colorspace::RGB) || header.is_lossless {
        return Outcome::Declined;
    }
    let (Ok(w), Ok(h)) = (u32::try_from(header.width), u32::try_from(header.height)) else { return Outcome::Declined };
    let n = if min_short_side == 0 { 8 } else { pick_eighths(w, h, min_short_side) };
    let factor = ScalingFactor::new(n as usize, 8);
    let scans = scan_limit(w, h);
    if d.set_scaling_factor(factor).is_err() || d.set_scan_limit(scans).is_err() {
        return Outcome::Declined;
    }
    let scaled = header.scaled(factor);
    // The caller checked width x height against its pixel limit; the allocation is still
    // made fallible, so memory pressure is an error and not an abort.
    let len = 3 * scaled.width * scaled.height;
    let mut pixels = Vec::new();
    if pixels.try_reserve_exact(len).is_err() {
        return Outcome::Refused(Error::new(
            Kind::OutOfMemory,
            format!("out of memory for a {}x{} JPEG ({len} bytes)", scaled.width, scaled.height),
        ));
    }
    pixels.resize(len, 0u8);
    let mut image =
        Image { pixels, width: scaled.width, pitch: 3 * scaled.width, height: scaled.height, format: PixelFormat::RGB };
    match d.decompress(bytes, image.as_deref_mut()) {
        Ok(()) => Outcome::Decoded(Decoded {
            width: scaled.width as u32,
            height: scaled.height as u32,
            data: image.pixels,
            scale: n as f64 / 8.0,
        }),
        Err(turbojpeg::Error::TurboJpegError(message))
            if message.contains("more than") && message.contains("scans") =>
        {
            Outcome::Refused(too_many_scans(scans, w, h))
        }
        Err(turbojpeg::Error::TurboJpegError(message)) => Outcome::Damaged(message),
        Err(other) => Outcome::Damaged(other.to_string()),
    }
}

fn too_many_scans(limit: u32, w: u32, h: u32) -> Error {
    Error::new(
        Kind::LimitExceeded,
        format!("progressive JPEG has more than {limit} scans, the limit for a {w}x{h} image"),
    )
    .with_hint(
        "re-encode it: real encoders write at most a few dozen scans, and many thousands make decoding take minutes",
    )
}

/// Start-of-scan markers (FF DA) in the file: its scans (and an EXIF thumbnail's).
pub fn count_scans(bytes: &[u8]) -> u64 {
    bytes.windows(2).filter(|p| *p == [0xFF, 0xDA]).count() as u64
}

/// The scan limit (`scan_limit`) for a JPEG that goes to the general decoder, which has
/// none of its own (what libjpeg-turbo declines), counted from its markers.
pub fn check_scans(bytes: &[u8], w: u32, h: u32) -> Result<(), Error> {
    let limit = scan_limit(w, h);
    if count_scans(bytes) > limit as u64 {
        return Err(too_many_scans(limit, w, h));
    }
    Ok(())
}

/// Whether the JPEG has an end-of-image marker (FF D9) after the start of its last scan
/// (FF DA). Inside entropy-coded data every FF byte is followed by 00 (or a restart
/// marker), so these byte pairs are real markers; an EXIF thumbnail's own markers come
/// before the main image's scans. A file cut off in transit has none.
pub fn has_end_marker(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|p| p == [0xFF, 0xDA]);
    let last_end = bytes.windows(2).rposition(|p| p == [0xFF, 0xD9]);
    matches!((last_scan, last_end), (Some(s), Some(e)) if e > s)
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

    #[test]
    fn scan_limit_shrinks_with_the_image() {
        assert_eq!(scan_limit(1000, 1000), 500);
        assert_eq!(scan_limit(4000, 3000), 416);
        assert_eq!(scan_limit(7000, 7000), 102);
        assert_eq!(scan_limit(50_000, 50_000), 100);
        assert_eq!(scan_limit(0, 0), 500);
    }

    #[test]
    fn end_marker_after_the_last_scan() {
        // SOI, a thumbnail's SOS + EOI, the main SOS, data, EOI.
        let whole = [0xFF, 0xD8, 0xFF, 0xDA, 1, 0xFF, 0xD9, 0xFF, 0xDA, 7, 0xFF, 0x00, 9, 0xFF, 0xD9];
        assert!(has_end_marker(&whole));
        assert!(has_end_marker(&[&whole[..], b"trailing junk"].concat()));
        // Cut inside the main scan: the thumbnail's EOI does not count.
        assert!(!has_end_marker(&whole[..12]));
        assert!(!has_end_marker(&[0xFF, 0xD8]));
        assert_eq!(count_scans(&whole), 2);
        assert!(check_scans(&whole, 1000, 1000).is_ok());
        let many = [0xFF, 0xDA].repeat(101);
        assert_eq!(check_scans(&many, 50_000, 50_000).unwrap_err().kind, Kind::LimitExceeded);
        assert!(check_scans(&many, 1000, 1000).is_ok());
    }
}
