#!/usr/bin/env bash
# Fashion-CLIP's weights exist only on Hugging Face: this needs internet, which CI and the
# build machines here do not have. Exports the image tower to models/fclip-image.onnx in a
# separate venv (torch is large), then installs it with the other models.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
if ! "$PY" -c "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=10)" 2>/dev/null; then
  die "huggingface.co is not reachable: Fashion-CLIP cannot be downloaded here. Run 'make fclip' on a machine with internet, then copy models/fclip-image.onnx into $("$PG_CONFIG" --sharedir)/pg_vision/"
fi
FVENV="$STATE/fclip-venv"
[ -x "$FVENV/bin/python" ] || python3 -m venv "$FVENV"
"$FVENV/bin/pip" install -q -r scripts/requirements-fclip.txt
"$FVENV/bin/python" scripts/export_fclip.py --out models
"$REPO/scripts/models.sh"
