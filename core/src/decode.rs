//! Image bytes to an upright 8-bit RGB buffer: format detection, size limits checked
//! before the large allocation, EXIF orientation, and a transparency rule (a model's
//! manifest picks it: `preprocess::transparency`).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::error::{check_stop, never, Error, Fact, Kind, Limit, Result};
use crate::jpeg;

/// The formats pg_vision decodes (the `image` crate features enabled in Cargo.toml).
pub const SUPPORTED: &str = "JPEG, PNG, WebP, GIF (first frame), BMP, TIFF";

/// What the decoder may do: its size limits, whether big JPEGs may be decoded at a
/// reduced DCT scale, whether damaged files are accepted, and how to learn that the host
/// wants the work stopped. (The extension sets each from a setting: `src/guc.rs`.)
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Width x height above which an image is rejected before it is decoded.
    pub max_pixels: u64,
    /// Size of the encoded bytes above which an image is rejected.
    pub max_bytes: u64,
    pub jpeg_dct_scaling: bool,
    /// Decode truncated or corrupt files as far as the decoder can (the missing part comes
    /// out grey), instead of refusing them. Off by default, as in Pillow.
    pub accept_damaged: bool,
    /// Polled while decoding (between input chunks, between phases): when it returns
    /// true the work stops with `Kind::Interrupted`. Must be cheap and callable from any
    /// thread.
    pub stop: fn() -> bool,
}

/// What becomes of transparent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transparency {
    /// Composite them onto white (product photos on transparent backgrounds).
    OntoWhite,
    /// Ignore the alpha channel, keeping the stored colour (Pillow's `convert("RGB")`).
    Ignore,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_pixels: 50_000_000,
            max_bytes: 64 << 20,
            jpeg_dct_scaling: true,
            accept_damaged: false,
            stop: never,
        }
    }
}

impl Options {
    /// `Err(Interrupted)` if the host asked to stop.
    pub fn check_stop(&self) -> Result<()> {
        check_stop(&self.stop)
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
    matches!(
        f,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    )
}

/// Detects the format from the leading bytes. HEIC/HEIF (iPhone photos) is named even
/// though the `image` crate does not recognise it, because it is the most common
/// unsupported upload.
pub fn detect_format(bytes: &[u8]) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(Error::new(Kind::InvalidImage, "image is empty (0 bytes)"));
    }
    if bytes.len() >= 12
        && &bytes[4..8] == b"ftyp"
        && matches!(&bytes[8..12], b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc")
    {
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
            .with_hint(format!("send the raw file bytes of a {SUPPORTED} image; base64 text must be decoded first"))
            .with_fact(Fact::NotAnImage))
        }
    }
}

fn unsupported(name: &str) -> Error {
    Error::new(Kind::UnsupportedFormat, format!("image format {name} is not supported"))
        .with_hint(format!("convert it to one of: {SUPPORTED}"))
}

fn decode_error(format: ImageFormat, e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::new(
            Kind::ImageTooLarge,
            format!("{} image exceeds the decoder's memory limit: {l}", format_name(format)),
        )
        .with_hint("lower the image's resolution before sending it"),
        image::ImageError::Unsupported(u) => {
            Error::new(Kind::UnsupportedFormat, format!("{} variant not supported: {u}", format_name(format)))
                .with_hint(format!("re-encode it as a plain {SUPPORTED} image"))
        }
        image::ImageError::IoError(io) if io.get_ref().is_some_and(|e| e.is::<Stopped>()) => Error::interrupted(),
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => Error::new(
            Kind::InvalidImage,
            format!("{} image is truncated: its data ends before the picture does", format_name(format)),
        )
        .with_hint(DAMAGED_HINT),
        other => Error::new(
            Kind::InvalidImage,
            format!("cannot decode {} image (truncated or corrupt): {other}", format_name(format)),
        )
        .with_hint(DAMAGED_HINT),
    }
}

const DAMAGED_HINT: &str = "re-upload the original file; an upload cut off in transit is the usual cause";

/// The encoded bytes as the decoders read them: in chunks of at most `CHUNK` bytes, with
/// `stop` polled before each, so a long decode (a big PNG, a TIFF) can be interrupted.
/// Stopping surfaces as an I/O error carrying `Stopped`, which `decode_error` maps back.
/// (Not `ErrorKind::Interrupted`: readers such as `read_to_end` retry those forever.)
struct StopReader<'a> {
    inner: Cursor<&'a [u8]>,
    stop: fn() -> bool,
}

/// The marker of a read stopped by `Options::stop`.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped on request")
    }
}

impl std::error::Error for Stopped {}

/// About 1 ms of PNG inflate per chunk: a fine enough grain to stop within milliseconds.
const CHUNK: usize = 64 << 10;

impl std::io::Read for StopReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = std::io::BufRead::fill_buf(self)?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl std::io::BufRead for StopReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if (self.stop)() {
            return Err(std::io::Error::other(Stopped));
        }
        let rest = self.inner.fill_buf()?;
        Ok(&rest[..rest.len().min(CHUNK)])
    }
    fn consume(&mut self, n: usize) {
        self.inner.consume(n)
    }
}

impl std::io::Seek for StopReader<'_> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

fn open<'a>(bytes: &'a [u8], limits: &Options) -> Result<(ImageFormat, impl ImageDecoder + 'a)> {
    limits.check_stop()?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(Error::new(
            Kind::ImageTooLarge,
            format!("image is {} bytes, over the limit of {} bytes", bytes.len(), limits.max_bytes),
        )
        .with_hint("downscale or recompress the image before sending it")
        .with_fact(Fact::OverLimit {
            limit: Limit::ImageBytes,
            value: bytes.len() as u64,
            max: limits.max_bytes,
        }));
    }
    let format = detect_format(bytes)?;
    if format == ImageFormat::WebP {
        check_webp_chunks(bytes)?;
    }
    let mut reader = ImageReader::with_format(StopReader { inner: Cursor::new(bytes), stop: limits.stop }, format);
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
        .with_hint("downscale the image before sending it")
        .with_fact(Fact::OverLimit { limit: Limit::ImagePixels, value: pixels, max: limits.max_pixels }));
    }
    if pixels == 0 {
        return Err(Error::new(Kind::InvalidImage, format!("{} image has no pixels ({w}x{h})", format_name(format))));
    }
    Ok((format, decoder))
}

/// Checks that every RIFF chunk of a WebP fits in the bytes given. The WebP decoder
/// allocates a chunk's declared size before reading it (image-webp 0.2, and `image` does
/// not pass its memory limits on), so a 600-byte file whose EXIF chunk declares 3 GB
/// would make it ask for 3 GB, and a failed allocation aborts the process.
fn check_webp_chunks(bytes: &[u8]) -> Result<()> {
    let corrupt = |what: String| {
        Error::new(Kind::InvalidImage, format!("WebP image is truncated or corrupt: {what}")).with_hint(DAMAGED_HINT)
    };
    let u32_at = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
    let riff = u32_at(4).ok_or_else(|| corrupt("no RIFF header".into()))?;
    if riff + 8 > bytes.len() as u64 {
        return Err(corrupt(format!(
            "its RIFF header declares {} bytes, but only {} were given",
            riff + 8,
            bytes.len()
        )));
    }
    let end = (riff + 8) as usize;
    let mut at = 12;
    while at + 8 <= end {
        let size = u32_at(at + 4).expect("checked above");
        let left = (end - at - 8) as u64;
        if size > left {
            let name = String::from_utf8_lossy(&bytes[at..at + 4]).into_owned();
            return Err(corrupt(format!("its {name:?} chunk declares {size} bytes, but only {left} follow")));
        }
        at += 8 + size as usize + (size as usize & 1);
    }
    Ok(())
}

/// Decodes base64 text, plain (whitespace and line breaks allowed, padding optional) or
/// a `data:<mime>;base64,` URL, as JSON clients send images. The decoded size is computed
/// from the count of non-whitespace characters and checked against `max_bytes` before
/// anything sized by the text is allocated.
pub fn from_base64(text: &str, max_bytes: u64) -> Result<Vec<u8>> {
    use base64::Engine;
    let body = match text.trim_start().strip_prefix("data:") {
        Some(url) => match url.split_once(',') {
            Some((meta, data)) if meta.ends_with(";base64") => data,
            _ => {
                return Err(Error::new(
                    Kind::InvalidArgument,
                    "data: URL is not base64-encoded (expected data:<type>;base64,<data>)",
                ))
            }
        },
        None => text,
    };
    // Every 4 characters carry 3 bytes, so n characters (whitespace and trailing `=`
    // padding excluded) decode to floor(n * 3 / 4) bytes: exact for valid base64, an
    // upper bound otherwise (a stray `=` or a non-ASCII byte counts as a character).
    let significant = || body.bytes().filter(|b| !b.is_ascii_whitespace());
    let chars = significant().count() as u64;
    let padding =
        body.bytes().rev().filter(|b| !b.is_ascii_whitespace()).take(2).take_while(|b| *b == b'=').count() as u64;
    let decoded = (chars - padding) * 3 / 4;
    if decoded > max_bytes {
        return Err(Error::new(
            Kind::ImageTooLarge,
            format!("base64 image decodes to {decoded} bytes, over the limit of {max_bytes} bytes"),
        )
        .with_hint("downscale the image before sending it")
        .with_fact(Fact::OverLimit { limit: Limit::Base64Bytes, value: decoded, max: max_bytes }));
    }
    let clean: Vec<u8> = significant().collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
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

/// Decodes, applies EXIF orientation and removes transparency as `alpha` says.
/// A JPEG may come out smaller than stored, down to a shorter side of `min_short_side`
/// pixels (`jpeg.rs`; only with `opts.jpeg_dct_scaling`, and 0 means full size).
///
/// Peak memory: the decoder's own buffer (up to 8 bytes a pixel, RGBA 16-bit), plus the
/// 8-bit RGB(A) copy made from it; the orientation is applied after the reduction to
/// 8-bit RGB, so a 90-degree turn copies 3 bytes a pixel, not 8.
pub fn decode_rgb8(bytes: &[u8], alpha: Transparency, opts: &Options, min_short_side: u32) -> Result<Rgb8> {
    let (format, mut decoder) = open(bytes, opts)?;
    // A missing or unreadable EXIF block means "upright", as every viewer treats it.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let (stored_w, stored_h) = decoder.dimensions();
    let swaps = orientation_code(orientation) >= 5; // the 90-degree turns
    let (full_width, full_height) = if swaps { (stored_h, stored_w) } else { (stored_w, stored_h) };
    if format == ImageFormat::Jpeg {
        let min = if opts.jpeg_dct_scaling { min_short_side } else { 0 };
        match jpeg::decode(bytes, min) {
            jpeg::Outcome::Decoded(j) => {
                opts.check_stop()?;
                let rgb = image::RgbImage::from_raw(j.width, j.height, j.data)
                    .expect("libjpeg-turbo fills width x height x 3 bytes");
                let img = oriented(rgb, orientation);
                let (width, height) = (img.width(), img.height());
                return Ok(Rgb8 { width, height, data: img.into_raw(), full_width, full_height, scale: j.scale });
            }
            jpeg::Outcome::Refused(e) => return Err(e),
            jpeg::Outcome::Damaged(message) if !opts.accept_damaged => {
                let what =
                    if message.contains("Premature end") { "truncated" } else { "corrupt (truncated or damaged data)" };
                return Err(Error::new(
                    Kind::InvalidImage,
                    format!("JPEG image is {what}: libjpeg-turbo reports \"{message}\""),
                )
                .with_hint(DAMAGED_HINT));
            }
            // Damaged but accepted, or a JPEG libjpeg-turbo does not take (CMYK/YCCK,
            // lossless): the general decoder, which fills what it cannot read.
            jpeg::Outcome::Damaged(_) | jpeg::Outcome::Declined => {
                jpeg::check_scans(bytes, stored_w, stored_h)?;
                if !opts.accept_damaged && !jpeg::has_end_marker(bytes) {
                    return Err(Error::new(
                        Kind::InvalidImage,
                        "JPEG image is truncated: no end-of-image marker after its last scan",
                    )
                    .with_hint(DAMAGED_HINT));
                }
            }
        }
    }
    let img = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(format, e))?;
    opts.check_stop()?;
    let rgb = if img.color().has_alpha() && alpha == Transparency::OntoWhite {
        let rgba = img.into_rgba8();
        let (w, h) = rgba.dimensions();
        image::RgbImage::from_raw(w, h, composite_on_white(rgba.as_raw())).expect("3 bytes a pixel")
    } else {
        img.into_rgb8()
    };
    opts.check_stop()?;
    let img = oriented(rgb, orientation);
    let (width, height) = (img.width(), img.height());
    Ok(Rgb8::new(width, height, img.into_raw()))
}

/// Applies an EXIF orientation to an 8-bit RGB image.
fn oriented(rgb: image::RgbImage, orientation: image::metadata::Orientation) -> image::RgbImage {
    if orientation == image::metadata::Orientation::NoTransforms {
        return rgb;
    }
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    img.into_rgb8()
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
    use image::RgbImage;

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
        let d = decode_rgb8(&png, Transparency::OntoWhite, &Options::default(), 0).unwrap();
        assert_eq!((d.width, d.height), (4, 2));
        assert_eq!(&d.data[..6], &[255, 0, 0, 0, 0, 0]);
        let jpg =
            encode(DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]))), ImageFormat::Jpeg);
        let d = decode_rgb8(&jpg, Transparency::OntoWhite, &Options::default(), 0).unwrap();
        assert_eq!((d.width, d.height, d.data.len()), (16, 8, 16 * 8 * 3));
        assert!((d.data[0] as i32 - 200).abs() <= 3, "{}", d.data[0]);
        let i = info(&jpg, &Options::default()).unwrap();
        assert_eq!((i.format, i.width, i.height, i.orientation, i.has_alpha), ("JPEG", 16, 8, 1, false));
    }

    #[test]
    fn alpha_rules() {
        // Transparent red-stored pixel and a half-transparent black one.
        let img = image::RgbaImage::from_raw(2, 1, vec![255u8, 0, 0, 0, 0, 0, 0, 128]).unwrap();
        let png = encode(DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let white = decode_rgb8(&png, Transparency::OntoWhite, &Options::default(), 0).unwrap();
        assert_eq!(white.data, vec![255, 255, 255, 127, 127, 127]);
        let drop = decode_rgb8(&png, Transparency::Ignore, &Options::default(), 0).unwrap();
        assert_eq!(drop.data, vec![255, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn limits_checked_before_decoding() {
        let png = encode(DynamicImage::ImageRgb8(RgbImage::new(300, 200)), ImageFormat::Png);
        let small = Options { max_pixels: 59_999, max_bytes: 1 << 20, ..Options::default() };
        let e = decode_rgb8(&png, Transparency::OntoWhite, &small, 0).unwrap_err();
        assert_eq!(e.kind, Kind::ImageTooLarge);
        assert!(e.message.contains("300x200 = 60000 pixels, over the limit of 59999"), "{}", e.message);
        let e = decode_rgb8(
            &png,
            Transparency::OntoWhite,
            &Options { max_pixels: 1 << 30, max_bytes: 10, ..Options::default() },
            0,
        )
        .unwrap_err();
        assert_eq!(e.kind, Kind::ImageTooLarge);
        assert!(decode_rgb8(
            &png,
            Transparency::OntoWhite,
            &Options { max_pixels: 60_000, max_bytes: 1 << 20, ..Options::default() },
            0
        )
        .is_ok());
    }

    #[test]
    fn a_stop_request_ends_every_decoder() {
        fn always() -> bool {
            true
        }
        let stopping = Options { stop: always, ..Options::default() };
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 9])));
        for f in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
            ImageFormat::WebP,
        ] {
            let bytes = encode(img.clone(), f);
            for alpha in [Transparency::OntoWhite, Transparency::Ignore] {
                let e = decode_rgb8(&bytes, alpha, &stopping, 0).unwrap_err();
                assert_eq!(e.kind, Kind::Interrupted, "{f:?}: {e}");
            }
            // The reader itself must not make decoders retry forever: stopping after the
            // open (inside the decoder's reads) ends too.
            static POLLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            fn after_first() -> bool {
                POLLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1
            }
            POLLS.store(0, std::sync::atomic::Ordering::SeqCst);
            let e =
                decode_rgb8(&bytes, Transparency::OntoWhite, &Options { stop: after_first, ..Options::default() }, 0)
                    .unwrap_err();
            assert_eq!(e.kind, Kind::Interrupted, "{f:?}: {e}");
        }
    }

    #[test]
    fn webp_chunks_larger_than_the_file_are_refused_before_decoding() {
        // Found by cargo fuzz: an EXIF chunk declaring 2,969,567,258 bytes in 594 bytes.
        let bomb = include_bytes!("../fuzz/regressions/decode_preprocess/oom-webp-exif-chunk-2969567258-bytes.webp");
        for e in [
            info(bomb, &Options::default()).unwrap_err(),
            decode_rgb8(bomb, Transparency::OntoWhite, &Options::default(), 0).unwrap_err(),
        ] {
            assert_eq!(e.kind, Kind::InvalidImage, "{e}");
            assert!(e.message.contains("chunk declares 2969567258 bytes"), "{e}");
        }
        // Real WebPs pass, lossy and lossless.
        let img =
            DynamicImage::ImageRgba8(image::RgbaImage::from_fn(33, 17, |x, y| image::Rgba([x as u8, y as u8, 7, 200])));
        let webp = encode(img, ImageFormat::WebP);
        check_webp_chunks(&webp).unwrap();
        assert!(decode_rgb8(&webp, Transparency::OntoWhite, &Options::default(), 0).is_ok());
        // Pillow's WebPs (lossy, lossless, alpha, EXIF; the fuzz seeds) pass too.
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_preprocess");
        let mut checked = 0;
        for entry in std::fs::read_dir(seeds).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            if bytes.len() > 12 && &bytes[8..12] == b"WEBP" {
                check_webp_chunks(&bytes).unwrap();
                checked += 1;
            }
        }
        assert!(checked >= 5, "{checked} WebP seeds");
        // A RIFF size past the end, and a cut chunk.
        let mut lying = webp.clone();
        lying[4..8].copy_from_slice(&(webp.len() as u32 * 2).to_le_bytes());
        assert_eq!(check_webp_chunks(&lying).unwrap_err().kind, Kind::InvalidImage);
        assert_eq!(check_webp_chunks(&webp[..webp.len() - 3]).unwrap_err().kind, Kind::InvalidImage);
    }

    #[test]
    fn truncated_jpegs_are_refused_unless_accepted() {
        let img =
            DynamicImage::ImageRgb8(RgbImage::from_fn(256, 192, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8])));
        let jpg = encode(img, ImageFormat::Jpeg);
        let cut = &jpg[..jpg.len() * 6 / 10];
        let e = decode_rgb8(cut, Transparency::OntoWhite, &Options::default(), 0).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidImage);
        assert!(e.message.contains("truncated"), "{e}");
        let d = decode_rgb8(cut, Transparency::OntoWhite, &Options { accept_damaged: true, ..Options::default() }, 0)
            .unwrap();
        assert_eq!((d.width, d.height), (256, 192));
        // A whole JPEG with trailing bytes after its end marker is fine.
        let mut trailing = jpg.clone();
        trailing.extend_from_slice(b"trailing bytes some cameras append");
        assert!(decode_rgb8(&trailing, Transparency::OntoWhite, &Options::default(), 0).is_ok());
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
        let png = encode(
            DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]))),
            ImageFormat::Png,
        );
        let e = decode_rgb8(&png[..png.len() / 2], Transparency::OntoWhite, &Options::default(), 0).unwrap_err();
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
        let d = decode_rgb8(&tagged, Transparency::OntoWhite, &Options::default(), 0).unwrap();
        assert_eq!((d.width, d.height), (16, 32));
    }

    #[test]
    fn big_jpegs_decode_at_a_reduced_scale_only_when_allowed() {
        let img = RgbImage::from_fn(2048, 1536, |x, y| image::Rgb([(x / 8) as u8, (y / 8) as u8, 128]));
        let jpg = encode(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        let d = decode_rgb8(&jpg, Transparency::OntoWhite, &Options::default(), 512).unwrap();
        // 1536 / 2 = 768 >= 512; / 4 = 384 is too small.
        assert_eq!((d.width, d.height, d.full_width, d.full_height, d.scale), (1024, 768, 2048, 1536, 0.5));
        assert_eq!(d.data.len(), 1024 * 768 * 3);
        // Same picture: the scaled pixel (100, 50) covers full-size pixels (200..202, 100..102).
        let px = &d.data[(50 * 1024 + 100) * 3..][..3];
        assert!((px[0] as i32 - 25).abs() <= 2 && (px[1] as i32 - 12).abs() <= 2, "{px:?}");
        let off = Options { jpeg_dct_scaling: false, ..Options::default() };
        let d = decode_rgb8(&jpg, Transparency::OntoWhite, &off, 512).unwrap();
        assert_eq!((d.width, d.height, d.scale), (2048, 1536, 1.0));
        // EXIF orientation 6 turns the reduced image and its full size alike.
        let d =
            decode_rgb8(&with_exif_orientation(&jpg, 6), Transparency::OntoWhite, &Options::default(), 512).unwrap();
        assert_eq!((d.width, d.height, d.full_width, d.full_height), (768, 1024, 1536, 2048));
        // CMYK goes through the general decoder, at full size.
        let cmyk = include_bytes!("../fuzz/corpus/decode_preprocess/jpeg_cmyk.jpg");
        let d = decode_rgb8(cmyk, Transparency::OntoWhite, &Options::default(), 1).unwrap();
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
