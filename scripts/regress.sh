#!/usr/bin/env bash
# SQL regression tests (pg_regress) against the project's running cluster, pgvector-style:
# pgrx-tests/sql/*.sql, expected output in pgrx-tests/expected/*.out.
# Usage: scripts/regress.sh [test ...]     (default: every test in pgrx-tests/schedule)
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"

# Test data the server reads: real photos and deliberately broken models, copied where
# the server's user can read them.
DATA="$STATE/testdata"
SKIMAGE="$("$PY" -c 'import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), "data"))')"
rm -rf "$DATA" && mkdir -p "$DATA/models"
cp "$SKIMAGE/chelsea.png" "$SKIMAGE/coffee.png" "$SKIMAGE/rocket.jpg" "$DATA/"
head -c 5000 "$SKIMAGE/chelsea.png" > "$DATA/truncated.png"
cp models/efficientnet-lite0.onnx "$DATA/models/"
"$PY" - "$DATA/models" <<'PY'
import json, sys
d = sys.argv[1]
base = json.load(open("models/efficientnet.json"))
def write(name, **changes):
    m = dict(base, name=name, **changes)
    json.dump(m, open(f"{d}/{name}.json", "w"), indent=1)
write("ghost", onnx_file="ghost.onnx", fetch_hint="make ghost")      # weights file missing
write("effnet_drop_alpha", alpha="drop")                              # same weights, alpha dropped
write("effnet_white_alpha", alpha="white")                            # same weights, alpha onto white
write("wrong_dim", dim=1000)                                          # output size differs
write("wrong_input", input_name="pixels")                             # no such graph input
write("wrong_output", output_name="features")                         # no such graph output
open(f"{d}/broken.json", "w").write('{"name": "broken", ')            # not JSON
PY
# Format and geometry cases: an EXIF-rotated JPEG and its upright twin, a transparent
# cutout, a tiny and an extreme-aspect image, a CMYK JPEG, an animated GIF, a phone-sized
# JPEG (a mosaic of real photos, scripts/photos.py).
"$PY" - "$DATA" "$SKIMAGE" <<'PY'
import os, sys
sys.path.insert(0, "scripts")
import photos
import numpy as np
from PIL import Image
d, sk = sys.argv[1], sys.argv[2]
rocket = Image.open(os.path.join(sk, "rocket.jpg")).convert("RGB")
rocket.save(f"{d}/upright.jpg", quality=92)
exif = Image.Exif(); exif[0x0112] = 6          # "rotate 90 clockwise to view"
rocket.transpose(Image.Transpose.ROTATE_90).save(f"{d}/rotated_exif6.jpg", quality=92, exif=exif.tobytes())
chelsea = np.asarray(Image.open(os.path.join(sk, "chelsea.png")).convert("RGB"))
alpha = np.zeros(chelsea.shape[:2], np.uint8); alpha[60:240, 120:330] = 255   # opaque window, transparent border
rgba = np.dstack([chelsea, alpha]); rgba[alpha == 0, :3] = 0                    # hidden pixels stored black
Image.fromarray(rgba, "RGBA").save(f"{d}/cutout.png")
Image.new("RGB", (1, 1), (200, 30, 30)).save(f"{d}/tiny_1x1.png")
Image.new("RGB", (10000, 1), (30, 200, 30)).save(f"{d}/wide_10000x1.png")
Image.fromarray(chelsea).convert("CMYK").save(f"{d}/cmyk.jpg", quality=92)
frames = [Image.fromarray(chelsea).quantize(64), Image.new("P", (451, 300))]
frames[0].save(f"{d}/animated.gif", save_all=True, append_images=frames[1:], duration=100)
photos.collage(3072, 2304).save(f"{d}/big_3072x2304.jpg", quality=90)
# COPY input (text format, bytea as hex) for the trigger test: three photos and a broken one.
with open(f"{d}/copy.txt", "w") as out:
    for i, n in enumerate(["chelsea.png", "coffee.png", "rocket.jpg"], 1):
        out.write(f"{i}\t\\\\x{open(os.path.join(sk, n), 'rb').read().hex()}\n")
    out.write("4\t\\\\xdeadbeef\n")
PY
chmod -R a+rX "$DATA"

"$REPO/scripts/pg.sh" start >/dev/null
tests=("$@")
[ ${#tests[@]} -gt 0 ] || mapfile -t tests < <(grep -v '^#' pgrx-tests/schedule)
mkdir -p "$STATE/regress"
PGV_TESTDATA="$DATA" PGV_REGRESS_HELPERS="$REPO/pgrx-tests/helpers.psql" "$PGINSTALL/lib/pgxs/src/test/regress/pg_regress" \
  --inputdir=pgrx-tests --outputdir="$STATE/regress" --expecteddir=pgrx-tests \
  --bindir="$PGBIN" --host="$PGSOCK" --port="$(pg_port)" --user=postgres --dbname=pg_vision_regress \
  "${tests[@]}" || { cat "$STATE/regress/regression.diffs" 2>/dev/null | head -100; die "regression tests failed (diffs: $STATE/regress/regression.diffs)"; }
