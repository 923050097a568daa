#!/usr/bin/env bash
# Benchmarks the installed (release) build through SQL (the drivers are in scripts/bench/):
# single and batch latency (latency.py, 1 and 2 intra-op threads), Fashion-CLIP's
# architecture against PyTorch and Python onnxruntime (fclip.py, on the random-weight
# fixture), trigger ingestion and search (shop.py), search by upload in every query form
# under custom and generic plans (forms.py), against the Python service pg_vision replaced
# (versus.py, which starts service.py), ONNX Runtime session options and the memo's hashing
# (Rust examples in core/examples/), first-call latency with and without preload
# (preload_latency.py), shared weights' memory and speed (shared_weights.py), 8 clients
# under a tight memory budget (load.py) and the peak memory of one decode at the pixel limit
# (decode_peak_memory.py), memory per backend against the number of backends (memory.py).
# Results in bench-results/ and on the terminal; last, charts.py draws
# bench-results/latency.png, throughput.png and memory.png from the JSON the drivers saved.
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
say "Fashion-CLIP's architecture (random weights): SQL against PyTorch and Python onnxruntime, 2 threads"
"$REPO/scripts/fclip_fixture.sh" >/dev/null
"$PY" scripts/bench/fclip.py --threads 2 --json bench-results/fclip.json
say "shop: ingestion through the trigger, search"
"$PY" scripts/bench/shop.py --json bench-results/shop.json
say "import: trigger mode=sync against mode=async (background workers), queue bloat after 100,000 rows"
"$PY" scripts/bench/async_import.py --json bench-results/async_import.json
say "search by upload in every query form, custom and generic plans"
"$PY" scripts/bench/forms.py --json bench-results/forms.json
say "versus the replaced service: search by upload, pg_vision against FastAPI + onnxruntime + pgvector"
"$PY" scripts/bench/versus.py --profile --sweep 1,2,4,8 --json bench-results/versus.json
say "ONNX Runtime session options: one session's latency, 8 sessions at once (no PostgreSQL)"
PG_VISION_ORT_LIB="$ORT_LIB_SRC" \
  cargo run -q --release -p pg_vision_core --example session_bench -- models/efficientnet-lite0.onnx 2 8
say "the memo's lookup: SHA-256 of an upload, and the last upload recognised again"
cargo run -q --release -p pg_vision_core --example memo_bench
say "first-call latency with and without pg_vision.preload_models"
"$PY" scripts/bench/preload_latency.py
say "load: 8 clients for 60 s under a 100 MB memory budget"
"$PY" scripts/bench/load.py --clients 8 --seconds 60 --budget-mb 100
say "shared weights: PSS of 1 and 8 connections holding a model, latency, pg_vision.shared_weights on and off"
PG_CONFIG="$PG_CONFIG" "$PY" scripts/bench/shared_weights.py --n 8 --json bench-results/shared_weights.json
say "peak memory of one decode at the pixel limit"
"$PY" scripts/bench/decode_peak_memory.py
say "memory per backend against the number of backends"
"$PY" scripts/bench/memory.py --json bench-results/memory.json
say "charts from the saved figures"
"$PY" scripts/bench/charts.py --results bench-results
