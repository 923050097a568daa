#!/usr/bin/env bash
# Every test, fastest first, stopping at the first failure (which names the step and, in
# pytest, the test). Run by `make test` after setup:
#   1. format and lint: cargo fmt --check, cargo clippy -D warnings (core, then the extension);
#   2. unit tests of the Postgres-free core (cargo test -p pg_vision_core);
#   3. #[pg_test]s (cargo pgrx test, debug build in its own cluster);
#   4. Fashion-CLIP's architecture with random weights built, exported and installed as
#      fclip_fixture (scripts/fclip_fixture.sh; its torch venv is made once per state directory);
#   5. the pg_regress suite (scripts/regress.sh: pgrx-tests/pg_regress);
#   6. extension upgrades from every released version (scripts/upgrade_test.sh: pgrx-tests/upgrade);
#   7. the end-to-end pytest suites (pgrx-tests/python): memory budget, cancel, hostile
#      calls from an ordinary role, parity with the reference pipeline and, for fclip_fixture,
#      with transformers, the demo's search page in headless Chromium.
# Which runner runs what, and how to run one test: pgrx-tests/README.md.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"

say "format (cargo fmt --all --check)"
cargo fmt --all --check

say "lint the Postgres-free core (cargo clippy -p pg_vision_core --all-targets -D warnings)"
cargo clippy -q -p pg_vision_core --all-targets -- -D warnings

say "lint the extension (cargo clippy --features \"pg$PG_MAJOR pg_test\" --all-targets -D warnings)"
cargo clippy -q --features "pg$PG_MAJOR pg_test" --all-targets -- -D warnings

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

# pg_test installed a debug build; the SQL and end-to-end suites run on the release build.
"$REPO/scripts/install.sh"
"$REPO/scripts/pg.sh" restart

say "Fashion-CLIP's architecture with random weights, exported and installed as fclip_fixture (scripts/fclip_fixture.sh)"
"$REPO/scripts/fclip_fixture.sh"

say "SQL regression tests (pg_regress: pgrx-tests/pg_regress)"
"$REPO/scripts/regress.sh"

say "extension upgrade: ALTER EXTENSION pg_vision UPDATE from every released version equals a new install"
"$REPO/scripts/upgrade_test.sh"

say "end-to-end tests (pytest pgrx-tests/python): memory budget, cancel, hostile calls, parity (cosine >= 0.999), the demo page in Chromium"
"$PY" -m pytest -q -p no:cacheprovider -rs pgrx-tests/python

say "all tests passed"
