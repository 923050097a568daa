#!/usr/bin/env python3
"""The one place for scikit-image's photographs: where they are, which of them are real
pictures (PHOTOS), and a deterministic corpus of them in the encodings a shop receives;
plus the project's database connection. Used by the tests (pgrx-tests/), scripts/parity.py,
the demo and the benchmarks.

The photos are scikit-image's sample images (skimage/data), used as shipped, plus
re-encodings made here with Pillow (JPEG baseline/progressive/grey/CMYK/EXIF-rotated,
PNG 8/16-bit, palette, grey+alpha, RGBA, WebP lossy/lossless/alpha, GIF, BMP, TIFF), and
phone-sized JPEGs (2048-4096 px: mosaics of the photos at native resolution, an upscaled
EXIF-rotated photo, a grey one) that pg_vision decodes at a reduced DCT scale.
Pillow's encoders are deterministic, so the same Pillow version gives the same bytes.

Usage: photos.py --out DIR      writes the corpus (and jpeg_1000.jpg) for manual checks
       photos.py --data-dir     prints scikit-image's data folder (for shell scripts)
As a module: names(*kinds) -> file names, shipped(name) -> bytes, photo(name) -> PIL image,
corpus() -> [(name, bytes)], jpeg_1000() -> bytes, connect() -> psycopg connection,
server(preload) starts the cluster as a test needs it
"""

import argparse
import functools
import io
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# scikit-image's sample files this project uses, each with what it is, in the order they
# are taken (the shop demo takes the first --photos of them). Synthetic test patterns
# (chessboard, phantom) are left out. The one list: the parity corpus, the demo, the
# benchmarks and the tests all take their photos from it, through names().
PHOTOS = [
    # real photographs
    ("astronaut.png", "photo"), ("chelsea.png", "photo"), ("coffee.png", "photo"), ("rocket.jpg", "photo"),
    ("motorcycle_left.png", "photo"), ("hubble_deep_field.jpg", "photo"), ("retina.jpg", "photo"),
    ("camera.png", "photo"), ("coins.png", "photo"), ("moon.png", "photo"), ("brick.png", "photo"),
    ("grass.png", "photo"), ("gravel.png", "photo"), ("ihc.png", "photo"),
    # other real pictures: microscopy, a blurred grey photo, a scanned page, a silhouette, text
    ("cell.png", "other"), ("microaneurysms.png", "other"), ("clock_motion.png", "other"),
    # real artwork: a colour wheel and a logo (RGBA but fully opaque; real transparency
    # comes from derived())
    ("color.png", "artwork"),
    ("page.png", "other"),
    ("logo.png", "artwork"),
    ("horse.png", "other"), ("text.png", "other"),
    # a small animated GIF
    ("no_time_for_that_tiny.gif", "animation"),
]
# The shipped files in the parity corpus, as shipped.
CORPUS_KINDS = ("photo", "artwork", "animation")


@functools.lru_cache(maxsize=1)
def skimage_data_dir():
    """scikit-image's data folder, where its sample images are (`photos.py --data-dir`
    prints it for the shell scripts)."""
    import skimage.data  # imported here: only the photos need scikit-image
    return os.path.dirname(skimage.data.__file__)


def names(*kinds):
    """The PHOTOS of these kinds (all if none given) that this scikit-image ships, in order."""
    present = set(os.listdir(skimage_data_dir()))
    return [n for n, kind in PHOTOS if (not kinds or kind in kinds) and n in present]


@functools.lru_cache(maxsize=None)
def shipped(name):
    """Bytes of a file from skimage/data, exactly as shipped."""
    with open(os.path.join(skimage_data_dir(), name), "rb") as f:
        return f.read()


def photo(name):
    """A shipped file, decoded (fully loaded, so the bytes buffer can go)."""
    img = Image.open(io.BytesIO(shipped(name)))
    img.load()
    return img


def encode(img, fmt, **params):
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png_rgb16(img):
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one). Each 8-bit value v becomes
    v * 257, the exact 16-bit equivalent, so any correct 16 -> 8 bit reduction gets v back."""
    pixels = np.asarray(img.convert("RGB"), dtype=np.uint16) * 257
    h, w, _ = pixels.shape
    rows = pixels.astype(">u2").reshape(h, w * 3).tobytes()
    stride = w * 3 * 2
    raw = b"".join(b"\x00" + rows[y * stride:(y + 1) * stride] for y in range(h))  # filter 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def radial_alpha(size, opaque=0.35, clear=0.5):
    """An 8-bit alpha mask: opaque in the middle, fading to fully transparent at the
    edges, so that transparency changes many pixels (not just a flat border)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    r = np.hypot((x - w / 2) / w, (y - h / 2) / h)
    a = np.clip((clear - r) / (clear - opaque), 0.0, 1.0)
    return Image.fromarray((a * 255).round().astype(np.uint8), "L")


def with_alpha(img, mode="RGBA"):
    out = img.convert(mode)
    out.putalpha(radial_alpha(img.size))
    return out


def cutout(img):
    """A product-style cutout: the logo's disc kept, the white background made fully
    transparent with its colour stored as black (as many editors export it), so that
    compositing onto white and merely dropping alpha give different pictures."""
    w, h = img.size
    y, x = np.mgrid[0:h, 0:w]
    r = np.hypot(x - (w - 1) / 2, y - (h - 1) / 2)
    alpha = np.clip(min(w, h) / 2 - 2 - r, 0.0, 1.0)  # one-pixel antialiased edge
    rgba = np.asarray(img.convert("RGB"), dtype=np.float64) * alpha[..., None]
    out = np.dstack([rgba.round(), alpha * 255]).round().astype(np.uint8)
    return Image.fromarray(out, "RGBA")


def exif_rotated_jpeg(img):
    """A JPEG stored on its side with EXIF orientation 6 ("rotate 90 CW to view"), as
    phone cameras write them; the upright picture is `img`."""
    stored = img.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=90, exif=exif.tobytes())


@functools.lru_cache(maxsize=1)
def _derived():
    """(name, the shipped file it re-encodes or None if its pixels changed, bytes), one per format variant."""
    astronaut, chelsea, coffee = photo("astronaut.png"), photo("chelsea.png"), photo("coffee.png")
    rocket, motorcycle, ihc = photo("rocket.jpg").convert("RGB"), photo("motorcycle_left.png"), photo("ihc.png")
    camera, logo = photo("camera.png"), cutout(photo("logo.png"))
    return (
        ("astronaut_q90.jpg", "astronaut.png", encode(astronaut, "JPEG", quality=90)),
        ("chelsea_progressive.jpg", "chelsea.png", encode(chelsea, "JPEG", quality=90, progressive=True)),
        ("camera_grey.jpg", "camera.png", encode(camera, "JPEG", quality=90)),
        ("coffee_cmyk.jpg", "coffee.png", encode(coffee.convert("CMYK"), "JPEG", quality=90)),
        ("rocket_exif6.jpg", "rocket.jpg", exif_rotated_jpeg(rocket)),
        ("rocket_rgb8.png", "rocket.jpg", encode(rocket, "PNG")),
        ("chelsea_rgb16.png", "chelsea.png", png_rgb16(chelsea)),
        ("camera_grey16.png", "camera.png",
         encode(Image.fromarray(np.asarray(camera.convert("L"), dtype=np.uint16) * 257), "PNG")),
        ("coffee_palette.png", "coffee.png", encode(coffee.quantize(256), "PNG")),
        ("camera_grey_alpha.png", "camera.png", encode(with_alpha(camera, "LA"), "PNG")),
        ("chelsea_rgba.png", "chelsea.png", encode(with_alpha(chelsea), "PNG")),
        ("logo_cutout.png", None, encode(logo, "PNG")),
        ("coffee_lossy.webp", "coffee.png", encode(coffee, "WEBP", quality=80, method=4)),
        ("motorcycle_lossless.webp", "motorcycle_left.png", encode(motorcycle, "WEBP", lossless=True)),
        ("logo_cutout.webp", None, encode(logo, "WEBP", quality=90, method=4)),
        ("chelsea.gif", "chelsea.png", encode(chelsea.quantize(256), "GIF")),
        ("motorcycle.bmp", "motorcycle_left.png", encode(motorcycle, "BMP")),
        ("ihc.tif", "ihc.png", encode(ihc, "TIFF")),
        ("astronaut_lzw.tif", "astronaut.png", encode(astronaut, "TIFF", compression="tiff_lzw")),
    )


def derived():
    """Re-encodings of the shipped photos, one per format variant: [(name, bytes)]."""
    return [(name, data) for name, _, data in _derived()]


def source_of(name):
    """The shipped file a derived corpus entry re-encodes at the same size (for comparing
    pixels), or None (a shipped file itself, a cutout, a mosaic, a resized photo)."""
    return {n: src for n, src, _ in _derived()}.get(name)


def collage(width, height, tile=256):
    """A width x height mosaic of tile x tile pieces cut from the shipped photos at their
    native resolution (no resampling, each at a different offset), so a big JPEG keeps a
    photo's fine detail and noise; an upscaled photo would be unrealistically smooth for
    testing reduced-scale decoding."""
    sources = [photo(n).convert("RGB") for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg",
                                                   "motorcycle_left.png", "hubble_deep_field.jpg", "retina.jpg", "brick.png")]
    out = Image.new("RGB", (width, height))
    for i, (y, x) in enumerate((y, x) for y in range(0, height, tile) for x in range(0, width, tile)):
        src = sources[i % len(sources)]
        left, top = (i * 37) % (src.width - tile + 1), (i * 53) % (src.height - tile + 1)
        out.paste(src.crop((left, top, left + tile, top + tile)), (x, y))
    return out


def large():
    """Phone-sized JPEGs, big enough for pg_vision to decode them at a reduced DCT scale."""
    big_coffee = photo("coffee.png").convert("RGB").resize((3000, 2000), Image.Resampling.LANCZOS)
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        ("collage_2048x1536.jpg", encode(collage(2048, 1536), "JPEG", quality=90)),
        ("collage_4096x3072_444.jpg", encode(collage(4096, 3072), "JPEG", quality=92, subsampling=0)),
        ("collage_3072x4096_prog.jpg", encode(collage(3072, 4096), "JPEG", quality=85, progressive=True)),
        ("coffee_3000x2000_exif6.jpg", encode(big_coffee.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90,
                                              exif=exif.tobytes())),
        ("camera_grey_2400.jpg", encode(photo("camera.png").convert("L").resize((2400, 2400), Image.Resampling.LANCZOS),
                                        "JPEG", quality=90)),
    ]


@functools.lru_cache(maxsize=1)
def _corpus():
    present = names(*CORPUS_KINDS)
    missing = [n for n, kind in PHOTOS if kind in CORPUS_KINDS and n not in present]
    if missing:
        print(f"photos.py: not in this scikit-image, skipped: {', '.join(missing)}", file=sys.stderr)
    return tuple([(n, shipped(n)) for n in present] + derived() + large())


def corpus():
    """[(name, encoded bytes)]: the shipped photos, the derived encodings, then the large JPEGs."""
    return list(_corpus())


@functools.lru_cache(maxsize=1)
def jpeg_1000():
    """A 1000x1000 baseline JPEG, quality 90, of a real photo: the benchmark's typical upload."""
    big = photo("astronaut.png").convert("RGB").resize((1000, 1000), Image.Resampling.LANCZOS)
    return encode(big, "JPEG", quality=90)


def describe(data):
    """Short format description as Pillow sees it, e.g. 'JPEG CMYK' or 'PNG RGB 16-bit'."""
    img = Image.open(io.BytesIO(data))
    parts = [img.format, img.mode]
    if img.format == "PNG" and data[24] == 16:  # IHDR bit depth; Pillow hides it for RGB
        parts.append("16-bit")
    if img.info.get("progressive") or img.info.get("progression"):
        parts.append("progressive")
    if getattr(img, "n_frames", 1) > 1:
        parts.append(f"{img.n_frames} frames")
    if img.format == "WEBP":
        parts.append("lossless" if img.info.get("lossless") or _webp_is_lossless(data) else "lossy")
    if img.format == "TIFF":
        parts.append(img.info.get("compression", "raw"))
    if img.getexif().get(0x0112, 1) != 1:
        parts.append(f"EXIF orientation {img.getexif()[0x0112]}")
    if img.has_transparency_data:
        parts.append("alpha")
    return " ".join(parts)


def _webp_is_lossless(data):
    # A simple lossless WebP has a VP8L chunk; an extended one (VP8X) may carry it later.
    return b"VP8L" in data[12:64] and b"VP8 " not in data[12:64]


# --- the project's database ---------------------------------------------------------------

def state_dir():
    """$STATE as scripts/env.sh computes it (PG_VISION_STATE wins, as there)."""
    if os.environ.get("PG_VISION_STATE"):
        return os.environ["PG_VISION_STATE"]
    out = subprocess.run(["bash", "-c", '. scripts/env.sh; echo "$STATE"'], cwd=REPO,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def connect(user="postgres", dbname=None, host=None, port=None, **kwargs):
    """A psycopg connection to the project's cluster (unix socket in $STATE/run), autocommit,
    as `user` (the superuser by default), to `dbname` (by default $PGDATABASE, else pg_vision).
    `host` and `port` (both) reach another cluster instead (a socket directory and its port)."""
    import psycopg  # imported here so `photos.py --out` works without psycopg

    if host is None:
        state = state_dir()
        host = os.path.join(state, "run")
        with open(os.path.join(state, "port")) as f:
            port = f.read().strip()
    return psycopg.connect(host=host, port=port, user=user,
                           dbname=dbname or os.environ.get("PGDATABASE", "pg_vision"), autocommit=True, **kwargs)


def server(preload=True):
    """Makes sure the project's cluster runs with (or without) pg_vision in
    shared_preload_libraries, restarting it if needed, and that the pg_vision database
    has the extension."""
    import psycopg

    try:
        with connect() as c:
            on = "pg_vision" in c.execute("SHOW shared_preload_libraries").fetchone()[0]
    except psycopg.OperationalError:
        on = None
    if on != preload:
        env = dict(os.environ)
        if preload:
            env.pop("PG_VISION_SERVER_OPTS", None)
        else:
            env["PG_VISION_SERVER_OPTS"] = ""
        subprocess.run([os.path.join(REPO, "scripts", "pg.sh"), "restart"], check=True, env=env, stdout=subprocess.DEVNULL)
    with connect() as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_vision CASCADE")


def alter_system(name, value=None, connect=connect):
    """ALTER SYSTEM SET name = value (RESET when value is None) and pg_reload_conf(), then
    waits until a new session sees it. `value` is in the setting's base unit (MB for
    pg_vision.memory_budget), as pg_settings.setting shows it; RESET waits for boot_val
    (NULL shows as ''). `connect`: a superuser connection to another cluster (a function of
    no arguments); the project's by default."""
    import re

    from psycopg import sql

    if not re.fullmatch(r"[a-z_][a-z0-9_.]*", name):
        raise ValueError(f"not a setting name: {name!r}")
    with connect() as c:
        if value is None:
            c.execute(f"ALTER SYSTEM RESET {name}")
        else:
            c.execute(sql.SQL(f"ALTER SYSTEM SET {name} = {{}}").format(sql.Literal(str(value))))
        c.execute("SELECT pg_reload_conf()")
        want = str(value) if value is not None else c.execute(
            "SELECT coalesce(boot_val, '') FROM pg_settings WHERE name = %s", (name,)).fetchone()[0]
    shown = None
    for _ in range(50):
        time.sleep(0.1)
        with connect() as c:
            shown = c.execute("SELECT coalesce(setting, '') FROM pg_settings WHERE name = %s", (name,)).fetchone()[0]
        if shown == want:
            return
    raise RuntimeError(f"{name} did not become {want!r} after pg_reload_conf() (still {shown!r})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", help="directory to write the images into")
    what.add_argument("--data-dir", action="store_true", help="print scikit-image's data folder and exit")
    args = ap.parse_args()
    if args.data_dir:
        print(skimage_data_dir())
        return 0
    os.makedirs(args.out, exist_ok=True)
    for name, data in corpus() + [("jpeg_1000.jpg", jpeg_1000())]:
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        print(f"{name:28} {len(data):>9} bytes  {describe(data)}")


if __name__ == "__main__":
    sys.exit(main())
