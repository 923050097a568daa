#!/usr/bin/env python3
"""Writes the seed corpus of the pg_vision fuzz targets.

Every seed is a small, valid file of a format pg_vision decodes, made from a real
scikit-image photo downscaled, so the fuzzer starts from inputs that reach deep into
each decoder (headers, entropy coding, filters, palettes, alpha, EXIF) instead of
having to discover the formats' magic numbers itself.

    /work/main/.pgv/venv/bin/python core/fuzz/make_seeds.py   # from the repo root

Needs Pillow (with WebP and libtiff), numpy and scikit-image. Deterministic: running
it again rewrites the same bytes for the same library versions.
"""
import base64
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image
from skimage import data

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "decode_preprocess")
OUT_B64 = os.path.join(HERE, "corpus", "base64")
MAX_SEED = 20 * 1024


def photo(name, size):
    """A scikit-image sample photo, downscaled (Lanczos) to `size`."""
    arr = getattr(data, name)()
    img = Image.fromarray(arr)
    return img.resize(size, Image.LANCZOS)


def chunk(kind, body):
    c = struct.pack(">I", len(body)) + kind + body
    return c + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def unfilter_inverse(row, prev, ftype, bpp):
    """Applies PNG filter `ftype` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) to a row."""
    out = bytearray(len(row))
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if ftype == 0:
            pred = 0
        elif ftype == 1:
            pred = a
        elif ftype == 2:
            pred = b
        elif ftype == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out[i] = (x - pred) & 0xFF
    return bytes(out)


def png_raw(arr, color_type, bit_depth):
    """A PNG written by hand, for what Pillow cannot write (16-bit RGB and RGBA).
    Rows cycle through the five filter types so the decoder's unfilter code is seeded."""
    h, w = arr.shape[:2]
    be = arr.astype(">u2").tobytes() if bit_depth == 16 else arr.astype("u1").tobytes()
    stride = len(be) // h
    bpp = arr.shape[2] * bit_depth // 8 if arr.ndim == 3 else bit_depth // 8
    rows, prev = b"", bytes(stride)
    for y in range(h):
        row = be[y * stride:(y + 1) * stride]
        rows += bytes([y % 5]) + unfilter_inverse(row, prev, y % 5, bpp)
        prev = row
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def save(img, name, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    write(name, buf.getvalue())


def write(name, blob):
    if len(blob) > MAX_SEED:
        sys.exit(f"{name}: {len(blob)} bytes, over the {MAX_SEED}-byte seed budget")
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(blob)
    print(f"{name:34s} {len(blob):6d} bytes")


def exif(orientation):
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(OUT_B64, exist_ok=True)
    cat = photo("chelsea", (64, 48))           # RGB cat
    coffee = photo("coffee", (48, 32))         # RGB cup
    astro = photo("astronaut", (40, 40))       # RGB portrait
    camera = photo("camera", (48, 48))         # greyscale photographer
    # RGBA: the astronaut with a radial alpha mask (opaque centre, transparent corners).
    yy, xx = np.mgrid[0:40, 0:40]
    mask = np.clip(255 - (np.hypot(xx - 20, yy - 20) * 12), 0, 255).astype(np.uint8)
    astro_rgba = astro.copy()
    astro_rgba.putalpha(Image.fromarray(mask))
    camera_la = camera.copy().convert("LA")
    camera_la.putalpha(Image.fromarray(np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1))))

    # JPEG
    save(cat, "jpeg_baseline.jpg", "JPEG", quality=85)
    save(cat, "jpeg_progressive.jpg", "JPEG", quality=80, progressive=True)
    save(coffee, "jpeg_444_optimized.jpg", "JPEG", quality=90, subsampling=0, optimize=True)
    save(coffee, "jpeg_422_restart.jpg", "JPEG", quality=70, subsampling=1, restart_marker_blocks=1)
    save(camera, "jpeg_grey.jpg", "JPEG", quality=85)
    save(coffee.convert("CMYK"), "jpeg_cmyk.jpg", "JPEG", quality=85)
    save(cat, "jpeg_exif_rot6.jpg", "JPEG", quality=75, exif=exif(6))
    save(coffee, "jpeg_exif_rot3.jpg", "JPEG", quality=75, exif=exif(3))
    save(astro, "jpeg_exif_rot5.jpg", "JPEG", quality=75, exif=exif(5))
    # PNG
    save(coffee, "png_rgb8.png", "PNG", optimize=True)
    save(camera, "png_grey8.png", "PNG")
    save(Image.fromarray(np.asarray(camera).astype(np.uint16) * 257), "png_grey16.png", "PNG")
    write("png_rgb16.png", png_raw(np.asarray(coffee).astype(np.uint16) * 257, 2, 16))
    write("png_rgba16.png", png_raw(np.asarray(astro_rgba).astype(np.uint16) * 257, 6, 16))
    save(cat.quantize(64), "png_palette.png", "PNG")
    pal = astro_rgba.convert("RGB").quantize(32)
    save(pal, "png_palette_trns.png", "PNG", transparency=0)
    save(camera.convert("1"), "png_1bit.png", "PNG")
    save(camera_la, "png_grey_alpha.png", "PNG")
    save(astro_rgba, "png_rgba.png", "PNG")
    save(coffee, "png_exif_rot8.png", "PNG", exif=exif(8))
    # WebP
    save(cat, "webp_lossy.webp", "WEBP", quality=70)
    save(coffee, "webp_lossless.webp", "WEBP", lossless=True)
    save(astro_rgba, "webp_lossy_alpha.webp", "WEBP", quality=70)
    save(astro_rgba, "webp_lossless_alpha.webp", "WEBP", lossless=True)
    save(coffee, "webp_exif_rot6.webp", "WEBP", quality=60, exif=exif(6))
    # GIF
    save(cat.quantize(128), "gif.gif", "GIF")
    frames = [coffee.quantize(32), coffee.transpose(Image.FLIP_LEFT_RIGHT).quantize(32)]
    frames[0].save(buf := io.BytesIO(), "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    write("gif_animated.gif", buf.getvalue())
    save(pal, "gif_transparent.gif", "GIF", transparency=0, interlace=True)
    # BMP
    save(coffee, "bmp_rgb24.bmp", "BMP")
    save(cat.quantize(16), "bmp_pal8.bmp", "BMP")
    save(camera, "bmp_grey8.bmp", "BMP")
    save(camera.convert("1"), "bmp_1bit.bmp", "BMP")
    # TIFF
    save(coffee, "tiff_rgb_raw.tif", "TIFF")
    save(coffee, "tiff_rgb_lzw.tif", "TIFF", compression="tiff_lzw")
    save(cat, "tiff_rgb_deflate.tif", "TIFF", compression="tiff_adobe_deflate")
    save(camera, "tiff_grey_packbits.tif", "TIFF", compression="packbits")
    save(Image.fromarray((np.asarray(camera).astype(np.uint16) * 257)), "tiff_grey16.tif", "TIFF")
    save(astro_rgba, "tiff_rgba_lzw.tif", "TIFF", compression="tiff_lzw")
    save(coffee.convert("CMYK"), "tiff_cmyk.tif", "TIFF")
    # Degenerate sizes: the preprocessing geometry's edge cases.
    px = Image.new("RGB", (1, 1), (200, 30, 90))
    save(px, "tiny_1x1.png", "PNG")
    save(px, "tiny_1x1.jpg", "JPEG")
    save(px, "tiny_1x1.gif", "GIF")
    save(px, "tiny_1x1.bmp", "BMP")
    save(px, "tiny_1x1_lossless.webp", "WEBP", lossless=True)
    save(Image.new("RGBA", (1, 1), (10, 20, 30, 128)), "tiny_1x1_rgba.tif", "TIFF")
    row = cat.resize((1000, 1), Image.BILINEAR)
    save(row, "wide_1000x1.png", "PNG")
    save(row, "wide_1000x1.jpg", "JPEG", quality=80)
    save(row.transpose(Image.TRANSPOSE), "tall_1x1000.png", "PNG")
    save(row.transpose(Image.TRANSPOSE), "tall_1x1000.webp", "WEBP", quality=60)

    # base64 target: text forms of two of the images.
    for name, src in [("plain.txt", "png_rgb8.png"), ("data_url.txt", "tiny_1x1.jpg")]:
        blob = open(os.path.join(OUT, src), "rb").read()
        text = base64.b64encode(blob).decode()
        if name == "data_url.txt":
            text = "data:image/jpeg;base64," + text
        else:
            text = "\n".join(text[i:i + 76] for i in range(0, len(text), 76)).rstrip("=")
        with open(os.path.join(OUT_B64, name), "w") as f:
            f.write(text)
        print(f"base64/{name:27s} {len(text):6d} bytes")


if __name__ == "__main__":
    main()
