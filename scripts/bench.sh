#!/usr/bin/env bash
# Benchmarks the installed (release) build through SQL (the drivers are in scripts/bench/):
# single and batch latency (latency.py, 1 and 2 intra-op threads), trigger ingestion and
# search (shop.py), search by upload against the Python service pg_vision replaced (versus.py,
# which starts service.py), first-call latency with and without preload (preload_latency.py),
# 8 clients under a tight memory budget (load.py) and the peak memory of one decode at the
# pixel limit (decode_peak_memory.py). Results in bench-results/ and on the terminal.
# Usage: scripts/bench.sh [latency.py args]
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$REPO"
"$REPO/scripts/pg.sh" start >/dev/null
mkdir -p bench-results
for t in 1 2; do
  say "latency, $t intra-op thread(s)"
  "$PY" scripts/bench/latency.py --threads "$t" --json "bench-results/latency-threads$t.json" "$@"
done
say "shop: ingestion through the trigger, search"
"$PY" scripts/bench/shop.py --json bench-results/shop.json
say "versus the replaced service: search by upload, pg_vision against FastAPI + onnxruntime + pgvector"
"$PY" scripts/bench/versus.py --profile --json bench-results/versus.json
say "first-call latency with and without pg_vision.preload_models"
"$PY" scripts/bench/preload_latency.py
say "load: 8 clients for 60 s under a 100 MB memory budget"
"$PY" scripts/bench/load.py --clients 8 --seconds 60 --budget-mb 100
say "peak memory of one decode at the pixel limit"
"$PY" scripts/bench/decode_peak_memory.py
