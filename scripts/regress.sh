#!/usr/bin/env bash
# SQL regression tests (pg_regress) against the project's running cluster, pgvector-style:
# pgrx-tests/pg_regress/sql/*.sql, expected output in pgrx-tests/pg_regress/expected/*.out,
# run in the order of pgrx-tests/pg_regress/schedule.
# Every test runs as the ordinary role pgv_app.
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

# The tests run as an ordinary application role, as in production: the superuser only
# creates the database, the extensions and the role, and grants what the tests need
# beyond an application's usual rights (documented GRANTs, README "Security and limits").
APP=pgv_app
pgv_psql -q -d postgres <<SQL
SET client_min_messages = warning;
DROP DATABASE IF EXISTS pg_vision_regress WITH (FORCE);
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$APP') THEN CREATE ROLE $APP LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgv_nobody') THEN CREATE ROLE pgv_nobody; END IF;
END \$\$;
ALTER ROLE $APP NOSUPERUSER NOCREATEDB NOCREATEROLE LOGIN;
GRANT pgv_nobody TO $APP;             -- a role with nothing granted, for SET ROLE in errors.sql
GRANT pg_read_server_files TO $APP;   -- the fixture files (COPY FROM, and pg_read_binary_file below): the tests' need, not pg_vision's
GRANT SET ON PARAMETER pg_vision.model_dir, pg_vision.onnxruntime_library TO $APP;  -- broken-model and library cases
CREATE DATABASE pg_vision_regress;
SQL
PGDATABASE=pg_vision_regress pgv_psql -q <<SQL
SET client_min_messages = warning;
CREATE EXTENSION vector;
CREATE EXTENSION pg_vision;
GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO $APP;
CREATE SCHEMA $APP AUTHORIZATION $APP;   -- the role's tables land here ("\$user" on the search_path)
SQL

if [ $# -gt 0 ]; then tests=("$@"); else tests=(--schedule="$SUITE/schedule"); fi
mkdir -p "$STATE/regress"
PGV_TESTDATA="$DATA" PGV_REGRESS_HELPERS="$REPO/$SUITE/helpers.psql" "$PGINSTALL/lib/pgxs/src/test/regress/pg_regress" \
  --inputdir="$SUITE" --outputdir="$STATE/regress" --expecteddir="$SUITE" \
  --bindir="$PGBIN" --host="$PGSOCK" --port="$(pg_port)" --user="$APP" --dbname=pg_vision_regress --use-existing \
  "${tests[@]}" || { head -100 "$STATE/regress/regression.diffs" 2>/dev/null; die "regression tests failed (diffs: $STATE/regress/regression.diffs)"; }
