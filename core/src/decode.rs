//! Image bytes to an upright 8-bit RGB buffer: format detection, size limits checked
//! before the large allocation, EXIF orientation, and the manifest's transparency rule.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::error::{Error, Kind, Result};
use crate::jpeg;
use crate::manifest::Alpha;

/// The formats pg_vision decodes (the `image` crate features enabled in Cargo.toml).
pub const SUPPORTED: &str = "JPEG, PNG, WebP, GIF (first frame), BMP, TIFF";

/// What the decoder may do: its size limits (`pg_vision.max_image_pixels`,
/// `pg_vision.max_image_bytes`) and whether big JPEGs may be decoded at a reduced DCT
/// scale (`pg_vision.jpeg_dct_scaling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Width x height above which an image is rejected before it is decoded.
    pub max_pixels: u64,
    /// Size of the encoded bytes above which an image is rejected.
    pub max_bytes: u64,
    pub jpeg_dct_scaling: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_pixels: 50_000_000, max_bytes: 64 << 20, jpeg_dct_scaling: true }
    }
}

/// An upright, opaque 8-bit RGB image, rows packed.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// The upright image's size as stored. Differs from `width` x `height` when a JPEG was
    /// decoded at a reduced DCT scale: then `width = ceil(full_width * scale)`.
    pub full_width: u32,
    pub full_height: u32,
    /// Decoded pixels per stored pixel (1, or n/8 for a DCT-scaled JPEG).
    pub scale: f64,
}

impl Rgb8 {
    /// An image decoded at full size.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Self {
        Rgb8 { width, height, data, full_width: width, full_height: height, scale: 1.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: &'static str,
    /// As stored, before orientation is applied.
    pub width: u32,
    pub height: u32,
    /// EXIF orientation, 1 (upright) to 8.
    pub orientation: u8,
    pub has_alpha: bool,
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Hdr => "HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Qoi => "QOI",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Tga => "TGA",
        ImageFormat::Dds => "DDS",
        ImageFormat::Farbfeld => "Farbfeld",
        _ => "an unsupported format",
    }
}

fn is_supported(f: ImageFormat) -> bool {
    matches!(f, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif | ImageFormat::Bmp | ImageFormat::Tiff)
}

/// Detects the format from the leading bytes. HEIC/HEIF (iPhone photos) is named even
/// though the `image` crate does not recognise it, because it is the most common
/// unsupported upload.
pub fn detect_format(bytes: &[u8]) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(Error::new(Kind::InvalidImage, "image is empty (0 bytes)"));
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" && matches!(&bytes[8..12], b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc") {
        return Err(unsupported("HEIC/HEIF"));
    }
    match image::guess_format(bytes) {
        Ok(f) if is_supported(f) => Ok(f),
        Ok(f) => Err(unsupported(format_name(f))),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(Error::new(
                Kind::InvalidImage,
                format!("bytes are not a recognised image ({} bytes, starting {})", bytes.len(), head.join(" ")),
            )
            .with_hint(format!("send the raw file bytes of a {SUPPORTED} image; base64 text must be decoded first: image_from_base64(text)")))
        }
    }
}

fn unsupported(name: &str) -> Error {
    Error::new(Kind::UnsupportedFormat, format!("image format {name} is not supported"))
        .with_hint(format!("convert it to one of: {SUPPORTED}"))
}

fn decode_error(format: ImageFormat, e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::new(Kind::ImageTooLarge, format!("{} image exceeds the decoder's memory limit: {l}", format_name(format)))
            .with_hint("raise pg_vision.max_image_pixels if this image is legitimate"),
        image::ImageError::Unsupported(u) => Error::new(Kind::UnsupportedFormat, format!("{} variant not supported: {u}", format_name(format)))
            .with_hint(format!("re-encode it as a plain {SUPPORTED} image")),
        other => Error::new(Kind::InvalidImage, format!("cannot decode {} image: {other}", format_name(format)))
            .with_hint("the file is truncated or corrupt; re-upload the original"),
    }
}

fn open<'a>(bytes: &'a [u8], limits: &Options) -> Result<(ImageFormat, impl ImageDecoder + 'a)> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(Error::new(
            Kind::ImageTooLarge,
            format!("image is {} bytes, over the limit of {} bytes", bytes.len(), limits.max_bytes),
        )
        .with_hint("raise pg_vision.max_image_bytes, or downscale the image before sending it"));
    }
    let format = detect_format(bytes)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = image::Limits::default();
    // RGBA, 16 bits a channel, is the largest buffer a decoder makes for a pixel.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let decoder = reader.into_decoder().map_err(|e| decode_error(format, e))?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > limits.max_pixels {
        return Err(Error::new(
            Kind::ImageTooLarge,
            format!("image is {w}x{h} = {pixels} pixels, over the limit of {} pixels", limits.max_pixels),
        )
        .with_hint("raise pg_vision.max_image_pixels, or downscale the image before sending it"));
    }
    if pixels == 0 {
        return Err(Error::new(Kind::InvalidImage, format!("{} image has no pixels ({w}x{h})", format_name(format))));
    }
    Ok((format, decoder))
}

/// Decodes base64 text, plain (whitespace and line breaks allowed, padding optional) or
/// a `data:<mime>;base64,` URL, as JSON clients send images. The decoded size is computed
/// from the count of non-whitespace characters and checked against `max_bytes`
/// (`pg_vision.max_image_bytes`) before anything sized by the text is allocated.
pub fn from_base64(text: &str, max_bytes: u64) -> Result<Vec<u8>> {
    use base64::Engine;
    let body = match text.trim_start().strip_prefix("data:") {
        Some(url) => match url.split_once(',') {
            Some((meta, data)) if meta.ends_with(";base64") => data,
            _ => {
                return Err(Error::new(Kind::InvalidArgument, "data: URL is not base64-encoded (expected data:<type>;base64,<data>)"))
            }
        },
        None => text,
    };
    // Every 4 characters carry 3 bytes, so n characters (whitespace and trailing `=`
    // padding excluded) decode to floor(n * 3 / 4) bytes: exact for valid base64, an
    // upper bound otherwise (a stray `=` or a non-ASCII byte counts as a character).
    let significant = || body.bytes().filter(|b| !b.is_ascii_whitespace());
    let chars = significant().count() as u64;
    let padding = body.bytes().rev().filter(|b| !b.is_ascii_whitespace()).take(2).take_while(|b| *b == b'=').count() as u64;
    let decoded = (chars - padding) * 3 / 4;
    if decoded > max_bytes {
        return Err(Error::new(
            Kind::ImageTooLarge,
            format!("base64 image decodes to {decoded} bytes, over the limit of {max_bytes} bytes (pg_vision.max_image_bytes)"),
        )
        .with_hint("raise pg_vision.max_image_bytes, or downscale the image before sending it"));
    }
    let clean: Vec<u8> = significant().collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(&clean).map_err(|e| {
        Error::new(Kind::InvalidArgument, format!("invalid base64 image ({} characters): {e}", clean.len()))
            .with_hint("send standard base64 (A-Z a-z 0-9 + /), optionally as a data:image/...;base64, URL")
    })
}

/// Format, stored size and orientation, without decoding the pixels.
pub fn info(bytes: &[u8], limits: &Options) -> Result<ImageInfo> {
    let (format, mut decoder) = open(bytes, limits)?;
    let (width, height) = decoder.dimensions();
    let orientation = decoder.orientation().map(orientation_code).unwrap_or(1);
    let has_alpha = decoder.color_type().has_alpha();
    Ok(ImageInfo { format: format_name(format), width, height, orientation, has_alpha })
}

fn orientation_code(o: image::metadata::Orientation) -> u8 {
    use image::metadata::Orientation::*;
    match o {
        NoTransforms => 1,
        FlipHorizontal => 2,
        Rotate180 => 3,
        FlipVertical => 4,
        Rotate90FlipH => 5,
        Rotate90 => 6,
        Rotate270FlipH => 7,
        Rotate270 => 8,
    }
}

/// Decodes, applies EXIF orientation and removes transparency as the manifest says.
/// A JPEG may come out smaller than stored, down to a shorter side of `min_short_side`
/// pixels (`jpeg.rs`; only with `opts.jpeg_dct_scaling`, and 0 means full size).
pub fn decode_rgb8(bytes: &[u8], alpha: Alpha, opts: &Options, min_short_side: u32) -> Result<Rgb8> {
    let (format, mut decoder) = open(bytes, opts)?;
    // A missing or unreadable EXIF block means "upright", as every viewer treats it.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    if format == ImageFormat::Jpeg {
        let min = if opts.jpeg_dct_scaling { min_short_side } else { 0 };
        if let Some(j) = jpeg::decode(bytes, min) {
            let (stored_w, stored_h) = decoder.dimensions();
            let rgb = image::RgbImage::from_raw(j.width, j.height, j.data).expect("libjpeg-turbo fills width x height x 3 bytes");
            let mut img = DynamicImage::ImageRgb8(rgb);
            img.apply_orientation(orientation);
            let swaps = orientation_code(orientation) >= 5; // the 90-degree turns
            let (full_width, full_height) = if swaps { (stored_h, stored_w) } else { (stored_w, stored_h) };
            let (width, height) = (img.width(), img.height());
            return Ok(Rgb8 { width, height, data: img.into_rgb8().into_raw(), full_width, full_height, scale: j.scale });
        }
    }
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(format, e))?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let data = if img.color().has_alpha() && alpha == Alpha::White {
        composite_on_white(&img.into_rgba8().into_raw())
    } else {
        img.into_rgb8().into_raw()
    };
    Ok(Rgb8::new(width, height, data))
}

/// `out = c * a + 255 * (1 - a)`, rounded, for 8-bit RGBA.
fn composite_on_white(rgba: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let a = px[3] as u32;
        for &c in &px[..3] {
            out.push(((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgba, RgbImage};

    fn encode(img: DynamicImage, f: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, f).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_and_jpeg() {
        let mut rgb = RgbImage::new(4, 2);
        rgb.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let png = encode(DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Png);
        let d = decode_rgb8(&png, Alpha::White, &Options::default(), 0).unwrap();
        assert_eq!((d.width, d.height), (4, 2));
        assert_eq!(&d.data[..6], &[255, 0, 0, 0, 0, 0]);
        let jpg = encode(DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]))), ImageFormat::Jpeg);
        let d = decode_rgb8(&jpg, Alpha::White, &Options::default(), 0).unwrap();
        assert_eq!((d.width, d.height, d.data.len()), (16, 8, 16 * 8 * 3));
        assert!((d.data[0] as i32 - 200).abs() <= 3, "{}", d.data[0]);
        let i = info(&jpg, &Options::default()).unwrap();
        assert_eq!((i.format, i.width, i.height, i.orientation, i.has_alpha), ("JPEG", 16, 8, 1, false));
    }

    #[test]
    fn alpha_rules() {
        // Transparent red-stored pixel and a half-transparent black one.
        let img = ImageBuffer::from_vec(2, 1, vec![255u8, 0, 0, 0, 0, 0, 0, 128]).unwrap();
        let png = encode(DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let white = decode_rgb8(&png, Alpha::White, &Options::default(), 0).unwrap();
        assert_eq!(white.data, vec![255, 255, 255, 127, 127, 127]);
        let drop = decode_rgb8(&png, Alpha::Drop, &Options::default(), 0).unwrap();
        assert_eq!(drop.data, vec![255, 0, 0, 0, 0, 0]);
        let _: ImageBuffer<Rgba<u8>, _> = ImageBuffer::new(1, 1);
    }

    #[test]
    fn limits_checked_before_decoding() {
        let png = encode(DynamicImage::ImageRgb8(RgbImage::new(300, 200)), ImageFormat::Png);
        let small = Options { max_pixels: 59_999, max_bytes: 1 << 20, ..Options::default() };
        let e = decode_rgb8(&png, Alpha::White, &small, 0).unwrap_err();
        assert_eq!(e.kind, Kind::ImageTooLarge);
        assert!(e.message.contains("300x200 = 60000 pixels, over the limit of 59999"), "{}", e.message);
        let e = decode_rgb8(&png, Alpha::White, &Options { max_pixels: 1 << 30, max_bytes: 10, ..Options::default() }, 0).unwrap_err();
        assert_eq!(e.kind, Kind::ImageTooLarge);
        assert!(decode_rgb8(&png, Alpha::White, &Options { max_pixels: 60_000, max_bytes: 1 << 20, ..Options::default() }, 0).is_ok());
    }

    #[test]
    fn bad_bytes_are_clear_errors() {
        assert_eq!(detect_format(b"").unwrap_err().kind, Kind::InvalidImage);
        let e = detect_format(b"hello world, not an image").unwrap_err();
        assert_eq!(e.kind, Kind::InvalidImage);
        assert!(e.message.contains("68 65 6c 6c"), "{}", e.message);
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0";
        let e = detect_format(heic).unwrap_err();
        assert_eq!(e.kind, Kind::UnsupportedFormat);
        assert!(e.message.contains("HEIC") && e.hint.unwrap().contains("JPEG, PNG"));
        let qoi = b"qoif\0\0\0\x01\0\0\0\x01\x03\0";
        assert_eq!(detect_format(qoi).unwrap_err().kind, Kind::UnsupportedFormat);
        // A PNG cut in half: header parses, pixel data does not.
        let png = encode(DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]))), ImageFormat::Png);
        let e = decode_rgb8(&png[..png.len() / 2], Alpha::White, &Options::default(), 0).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidImage, "{e}");
    }

    #[test]
    fn base64_plain_and_data_url() {
        const M: u64 = 1 << 20;
        assert_eq!(from_base64("aGVsbG8=", M).unwrap(), b"hello");
        assert_eq!(from_base64("aGVs\nbG8", M).unwrap(), b"hello");
        assert_eq!(from_base64("data:image/png;base64,aGVsbG8=", M).unwrap(), b"hello");
        assert_eq!(from_base64("data:image/png,hello", M).unwrap_err().kind, Kind::InvalidArgument);
        let e = from_base64("not base64!", M).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidArgument);
        assert!(e.message.contains("invalid base64"), "{}", e.message);
        // The size limit: "hello" is 5 bytes, with or without padding and whitespace.
        for text in ["aGVsbG8=", "aGVsbG8", " aG Vs\r\n\tbG 8 = \n", "data:image/png;base64,aGVs\nbG8="] {
            assert_eq!(from_base64(text, 5).unwrap(), b"hello", "{text:?}");
            let e = from_base64(text, 4).unwrap_err();
            assert_eq!(e.kind, Kind::ImageTooLarge, "{text:?}");
            assert!(e.message.contains("decodes to 5 bytes, over the limit of 4 bytes"), "{}", e.message);
        }
        assert_eq!(from_base64("", 0).unwrap(), b"");
        assert_eq!(from_base64("AAAA", 3).unwrap(), [0, 0, 0]);
        assert_eq!(from_base64("AAAA", 2).unwrap_err().kind, Kind::ImageTooLarge);
        // Whitespace is not counted: 4 MB of it around one byte.
        let spaced = format!("{}QQ=={}", " \n".repeat(1 << 21), "\t".repeat(1 << 21));
        assert_eq!(from_base64(&spaced, 1).unwrap(), b"A");
        // Checked before decoding: an over-limit text is rejected even when it is invalid.
        assert_eq!(from_base64(&"!".repeat(1000), 100).unwrap_err().kind, Kind::ImageTooLarge);
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 2x1 JPEG with orientation 6 (rotate 90 clockwise) must come out 1x2.
        let jpg = encode(DynamicImage::ImageRgb8(RgbImage::new(32, 16)), ImageFormat::Jpeg);
        let tagged = with_exif_orientation(&jpg, 6);
        assert_eq!(info(&tagged, &Options::default()).unwrap().orientation, 6);
        let d = decode_rgb8(&tagged, Alpha::White, &Options::default(), 0).unwrap();
        assert_eq!((d.width, d.height), (16, 32));
    }

    #[test]
    fn big_jpegs_decode_at_a_reduced_scale_only_when_allowed() {
        let img = RgbImage::from_fn(2048, 1536, |x, y| image::Rgb([(x / 8) as u8, (y / 8) as u8, 128]));
        let jpg = encode(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        let d = decode_rgb8(&jpg, Alpha::White, &Options::default(), 512).unwrap();
        // 1536 / 2 = 768 >= 512; / 4 = 384 is too small.
        assert_eq!((d.width, d.height, d.full_width, d.full_height, d.scale), (1024, 768, 2048, 1536, 0.5));
        assert_eq!(d.data.len(), 1024 * 768 * 3);
        // Same picture: the scaled pixel (100, 50) covers full-size pixels (200..202, 100..102).
        let px = &d.data[(50 * 1024 + 100) * 3..][..3];
        assert!((px[0] as i32 - 25).abs() <= 2 && (px[1] as i32 - 12).abs() <= 2, "{px:?}");
        let off = Options { jpeg_dct_scaling: false, ..Options::default() };
        let d = decode_rgb8(&jpg, Alpha::White, &off, 512).unwrap();
        assert_eq!((d.width, d.height, d.scale), (2048, 1536, 1.0));
        // EXIF orientation 6 turns the reduced image and its full size alike.
        let d = decode_rgb8(&with_exif_orientation(&jpg, 6), Alpha::White, &Options::default(), 512).unwrap();
        assert_eq!((d.width, d.height, d.full_width, d.full_height), (768, 1024, 1536, 2048));
        // CMYK goes through the general decoder, at full size.
        let cmyk = include_bytes!("../fuzz/corpus/decode_preprocess/jpeg_cmyk.jpg");
        let d = decode_rgb8(cmyk, Alpha::White, &Options::default(), 1).unwrap();
        assert_eq!(d.scale, 1.0);
    }

    /// Inserts an APP1 EXIF segment with one Orientation entry right after SOI.
    pub(crate) fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08"); // big-endian TIFF header, IFD at 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }
}
