#!/usr/bin/env bash
# SQL regression tests (pg_regress) against the project's running cluster, pgvector-style:
# pgrx-tests/pg_regress/sql/*.sql, expected output in pgrx-tests/pg_regress/expected/*.out,
# run in the order of pgrx-tests/pg_regress/schedule.
# Usage: scripts/regress.sh [test ...]     (default: the whole schedule; e.g. regress.sh api trigger)
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
SUITE=pgrx-tests/pg_regress

# Test data the server reads (photos, broken models, format cases), where the server's
# user can read it.
DATA="$STATE/testdata"
"$PY" "$SUITE/make_fixtures.py" "$DATA"
chmod -R a+rX "$DATA"

"$REPO/scripts/pg.sh" start >/dev/null
if [ $# -gt 0 ]; then tests=("$@"); else tests=(--schedule="$SUITE/schedule"); fi
mkdir -p "$STATE/regress"
PGV_TESTDATA="$DATA" PGV_REGRESS_HELPERS="$REPO/$SUITE/helpers.psql" "$PGINSTALL/lib/pgxs/src/test/regress/pg_regress" \
  --inputdir="$SUITE" --outputdir="$STATE/regress" --expecteddir="$SUITE" \
  --bindir="$PGBIN" --host="$PGSOCK" --port="$(pg_port)" --user=postgres --dbname=pg_vision_regress \
  "${tests[@]}" || { head -100 "$STATE/regress/regression.diffs" 2>/dev/null; die "regression tests failed (diffs: $STATE/regress/regression.diffs)"; }
