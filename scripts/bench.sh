#!/usr/bin/env bash
# Benchmarks the installed (release) build through SQL: single and batch latency
# (bench.py, 1 and 2 intra-op threads), then trigger ingestion and search (bench_shop.py).
# Usage: scripts/bench.sh [bench.py args]
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
"$REPO/scripts/pg.sh" start >/dev/null
mkdir -p bench-results
for t in 1 2; do
  "$PY" scripts/bench.py --threads "$t" --json "bench-results/latency-threads$t.json" "$@"
done
"$PY" scripts/bench_shop.py --json bench-results/shop.json
