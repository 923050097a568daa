#!/usr/bin/env bash
# Fashion-CLIP's path, offline (make fclip-fixture; run by make test before the SQL suites):
#   1. the Fashion-CLIP venv (scripts/fclip_venv.sh; once per state directory);
#   2. Fashion-CLIP's architecture with RANDOM weights, NOT a model, as a Hugging Face folder:
#      $STATE/fclip-fixture-hf (scripts/build_fclip_fixture.py);
#   3. exported by the project's exporter, as make fclip exports the real model:
#      models/fclip-fixture-image.onnx and models/fclip-fixture-text.onnx (scripts/export_fclip.py);
#   4. installed with the other models as `fclip_fixture` (models/fclip_fixture.json; models.sh
#      stamps the installed manifest with the files' sha256: the export is not byte-reproducible).
# Each step is skipped when its output is newer than what it is made from, so a second run
# only compares and hashes the installed files (a few seconds).
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
"$REPO/scripts/fclip_venv.sh"

HF="$STATE/fclip-fixture-hf"
weights="$HF/model.safetensors"
stale() { # stale OUTPUT INPUT...: OUTPUT is missing or older than an input
  local out="$1"; shift
  [ -s "$out" ] || return 0
  for f in "$@"; do [ "$f" -nt "$out" ] && return 0; done
  return 1
}

if stale "$weights" scripts/build_fclip_fixture.py scripts/tokenizer_fixture.py "$FCLIP_VENV.stamp"; then
  say "building Fashion-CLIP's architecture with RANDOM weights (not a model) in $HF"
  rm -rf "$HF" "$HF.tmp"
  "$FCLIP_PY" scripts/build_fclip_fixture.py --out "$HF.tmp"
  mv "$HF.tmp" "$HF"
fi

if stale models/fclip-fixture-image.onnx "$weights" scripts/export_fclip.py \
   || stale models/fclip-fixture-text.onnx "$weights" scripts/export_fclip.py; then
  say "exporting it with scripts/export_fclip.py to models/fclip-fixture-{image,text}.onnx"
  "$FCLIP_PY" scripts/export_fclip.py --model "$HF" --prefix fclip-fixture --out models
fi

"$REPO/scripts/models.sh"
