#!/usr/bin/env bash
# Makes the Fashion-CLIP venv, $FCLIP_VENV ($STATE/fclip-venv): torch + transformers, pinned in
# scripts/requirements-fclip.txt, from PyPI, for `make fclip` (export of the real model) and
# scripts/fclip_fixture.sh (its random-weight fixture and PyTorch reference, `make test`).
# Made once per state directory, again only when the requirements change (a copy of them is
# kept as $FCLIP_VENV.stamp); a second run takes milliseconds. A new one: 1.3 minutes on a
# quiet machine here and 4.6 GB (torch's NVIDIA libraries are 3 GB of it).
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
stamp="$FCLIP_VENV.stamp"
if [ -x "$FCLIP_PY" ] && cmp -s scripts/requirements-fclip.txt "$stamp"; then
  exit 0
fi
say "creating the Fashion-CLIP venv in $FCLIP_VENV (torch + transformers from PyPI, a few GB, once)"
rm -rf "$FCLIP_VENV" "$stamp"
python3 -m venv "$FCLIP_VENV"
# --no-deps: the file pins every package of the venv (see its header).
"$FCLIP_PY" -m pip install -q --disable-pip-version-check --no-deps -r scripts/requirements-fclip.txt
"$FCLIP_PY" -c "import torch, transformers, onnx" || die "the Fashion-CLIP venv does not import torch + transformers"
cp scripts/requirements-fclip.txt "$stamp"
