#!/usr/bin/env bash
# Every test: core unit tests, #[pg_test]s, the pg_regress suite, the hostile-call suite
# (pytest, as an ordinary role), the memory budget and query-cancel drivers, and the parity gate against the independent reference pipeline. Run by `make test` after setup.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"

say "unit tests of the Postgres-free core (cargo test -p pg_vision_core)"
# The fixture test of the text tower runs ONNX Runtime from the library setup installed.
PG_VISION_ORT_LIB="$("$PG_CONFIG" --pkglibdir)/libonnxruntime.so" cargo test -q -p pg_vision_core

say "#[pg_test]s (cargo pgrx test, server as ${RUNAS:-$(id -un)})"
mkdir -p "$STATE/pgrx-test"
if [ -n "$RUNAS" ]; then
  chown "$RUNAS" "$STATE/pgrx-test"
  cargo pgrx test "pg$PG_MAJOR" --runas "$RUNAS" --pgdata "$STATE/pgrx-test"
else
  cargo pgrx test "pg$PG_MAJOR" --pgdata "$STATE/pgrx-test"
fi

# pg_test installed a debug build; the SQL suites run on the release build.
"$REPO/scripts/install.sh"
"$REPO/scripts/pg.sh" restart

say "SQL regression tests (pg_regress: pgrx-tests/sql vs pgrx-tests/expected)"
"$REPO/scripts/regress.sh"

say "extension upgrade: ALTER EXTENSION pg_vision UPDATE from every released version equals a new install"
"$REPO/scripts/upgrade_test.sh"

say "hostile calls from an ordinary role (pytest pgrx-tests/python)"
"$PY" -m pytest -q -p no:cacheprovider pgrx-tests/python

say "memory budget across backends (shared_preload_libraries, 8 sessions, release on exit, reload)"
"$PY" scripts/budget_test.py

say "statement_timeout and pg_cancel_backend stop a long embed_images() batch within a second"
"$PY" scripts/cancel_test.py

say "parity with the reference pipeline (Pillow + onnxruntime), gate cosine >= 0.999"
"$PY" scripts/parity.py

say "all tests passed"
