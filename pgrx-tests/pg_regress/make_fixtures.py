#!/usr/bin/env python3
"""Writes the files the pg_regress suite reads on the server (pg_read_binary_file, COPY,
pg_vision.model_dir) into DIR, which scripts/regress.sh passes to the tests as
$PGV_TESTDATA:

  - real photos (scikit-image's, via scripts/photos.py) and a truncated one;
  - models/: EfficientNet-Lite0 with deliberately broken manifests beside it;
  - format and geometry cases: an EXIF-rotated JPEG and its upright twin, a transparent
    cutout, a tiny and an extreme-aspect image, a CMYK JPEG, an animated GIF, a
    phone-sized JPEG (a mosaic of real photos);
  - copy.txt: COPY input (text format, bytea as hex) for the trigger test.

Usage: make_fixtures.py DIR     (DIR is emptied first)
"""

import json
import os
import shutil
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import photos  # noqa: E402

# The photos the SQL tests read by name, and the ones the trigger test COPYs in.
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg"]


def models(d):
    """The real EfficientNet-Lite0 weights with manifests that each break one thing."""
    os.makedirs(d)
    shutil.copy(os.path.join(REPO, "models", "efficientnet-lite0.onnx"), d)
    with open(os.path.join(REPO, "models", "efficientnet.json")) as f:
        base = json.load(f)

    def write(name, **changes):
        with open(os.path.join(d, f"{name}.json"), "w") as f:
            json.dump(dict(base, name=name, **changes), f, indent=1)

    write("ghost", onnx_file="ghost.onnx", fetch_hint="make ghost")  # weights file missing
    write("effnet_drop_alpha", alpha="drop")                         # same weights, alpha dropped
    write("effnet_white_alpha", alpha="white")                       # same weights, alpha onto white
    write("wrong_dim", dim=1000)                                     # output size differs
    write("wrong_input", input_name="pixels")                        # no such graph input
    write("wrong_output", output_name="features")                    # no such graph output
    with open(os.path.join(d, "broken.json"), "w") as f:             # not JSON
        f.write('{"name": "broken", ')


def formats(d):
    rocket = photos.photo("rocket.jpg").convert("RGB")
    rocket.save(f"{d}/upright.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    rocket.transpose(Image.Transpose.ROTATE_90).save(f"{d}/rotated_exif6.jpg", quality=92, exif=exif.tobytes())
    chelsea = np.asarray(photos.photo("chelsea.png").convert("RGB"))
    alpha = np.zeros(chelsea.shape[:2], np.uint8)
    alpha[60:240, 120:330] = 255                        # opaque window, transparent border
    rgba = np.dstack([chelsea, alpha])
    rgba[alpha == 0, :3] = 0                            # hidden pixels stored black
    Image.fromarray(rgba, "RGBA").save(f"{d}/cutout.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(f"{d}/tiny_1x1.png")
    Image.new("RGB", (10000, 1), (30, 200, 30)).save(f"{d}/wide_10000x1.png")
    Image.fromarray(chelsea).convert("CMYK").save(f"{d}/cmyk.jpg", quality=92)
    frames = [Image.fromarray(chelsea).quantize(64), Image.new("P", (451, 300))]
    frames[0].save(f"{d}/animated.gif", save_all=True, append_images=frames[1:], duration=100)
    photos.collage(3072, 2304).save(f"{d}/big_3072x2304.jpg", quality=90)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name in PHOTOS:
        with open(os.path.join(d, name), "wb") as f:
            f.write(photos.shipped(name))
    with open(os.path.join(d, "truncated.png"), "wb") as f:
        f.write(photos.shipped("chelsea.png")[:5000])
    models(os.path.join(d, "models"))
    formats(d)
    # COPY input for the trigger test: three photos and a broken one.
    with open(os.path.join(d, "copy.txt"), "w") as out:
        for i, name in enumerate(PHOTOS, 1):
            out.write(f"{i}\t\\\\x{photos.shipped(name).hex()}\n")
        out.write("4\t\\\\xdeadbeef\n")


if __name__ == "__main__":
    sys.exit(main())
