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
write("wrong_dim", dim=1000)                                          # output size differs
write("wrong_input", input_name="pixels")                             # no such graph input
write("wrong_output", output_name="features")                         # no such graph output
open(f"{d}/broken.json", "w").write('{"name": "broken", ')            # not JSON
PY
chmod -R a+rX "$DATA"

"$REPO/scripts/pg.sh" start >/dev/null
tests=("$@")
[ ${#tests[@]} -gt 0 ] || mapfile -t tests < <(grep -v '^#' pgrx-tests/schedule)
mkdir -p "$STATE/regress"
PGV_TESTDATA="$DATA" "$PGINSTALL/lib/pgxs/src/test/regress/pg_regress" \
  --inputdir=pgrx-tests --outputdir="$STATE/regress" --expecteddir=pgrx-tests \
  --bindir="$PGBIN" --host="$PGSOCK" --port="$(pg_port)" --user=postgres --dbname=pg_vision_regress \
  "${tests[@]}" || { cat "$STATE/regress/regression.diffs" 2>/dev/null | head -100; die "regression tests failed (diffs: $STATE/regress/regression.diffs)"; }
