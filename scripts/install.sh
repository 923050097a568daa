#!/usr/bin/env bash
# Builds pg_vision (release) and installs it into the project's PostgreSQL.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
say "building and installing pg_vision (release) into $PGINSTALL"
cargo pgrx install --release --pg-config "$PG_CONFIG" 2>&1 | grep -vE '^\s+(Compiling|Checking|Fresh)' || exit "${PIPESTATUS[0]}"
