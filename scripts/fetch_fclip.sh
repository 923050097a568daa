#!/usr/bin/env bash
# Fashion-CLIP's weights exist only on Hugging Face: this needs internet, which CI and the
# build machines here do not have. Exports both towers to models/fclip-image.onnx and
# models/fclip-text.onnx in the Fashion-CLIP venv (scripts/fclip_venv.sh: torch is large), then
# installs them with the other models. Offline, scripts/fclip_fixture.sh runs the same export
# on Fashion-CLIP's architecture with random weights.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
if ! "$PY" -c "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=10)" 2>/dev/null; then
  die "huggingface.co is not reachable: Fashion-CLIP cannot be downloaded here. Run 'make fclip' on a machine with internet, then copy models/fclip-image.onnx and models/fclip-text.onnx into $("$PG_CONFIG" --sharedir)/pg_vision/"
fi
"$REPO/scripts/fclip_venv.sh"
"$FCLIP_PY" scripts/export_fclip.py --out models
"$REPO/scripts/models.sh"
