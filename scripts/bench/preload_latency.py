#!/usr/bin/env python3
"""First-call latency with and without pg_vision.preload_models.

For each setting, opens fresh connections and times the connection itself and the first
embed_efficientnet() call in it (median of --runs). With preload the model load moves from
the first call into the connection (loaded right after authentication, see README,
"Warm-up"). Needs shared_preload_libraries = 'pg_vision' (scripts/pg.sh's default).
Usage: scripts/bench/preload_latency.py [--runs 5] [--model efficientnet]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
from photos import alter_system, connect, server, shipped  # noqa: E402


def set_preload(models):
    alter_system("pg_vision.preload_models", models or None)


def run(model, image, runs):
    conn_ms, first_ms, second_ms = [], [], []
    for _ in range(runs):
        t0 = time.monotonic()
        c = connect()
        t1 = time.monotonic()
        c.execute("SELECT embed_image(%s, %s) IS NOT NULL", (model, image)).fetchone()
        t2 = time.monotonic()
        c.execute("SELECT embed_image(%s, %s) IS NOT NULL", (model, image)).fetchone()
        t3 = time.monotonic()
        c.close()
        conn_ms.append((t1 - t0) * 1e3)
        first_ms.append((t2 - t1) * 1e3)
        second_ms.append((t3 - t2) * 1e3)
    return statistics.median(conn_ms), statistics.median(first_ms), statistics.median(second_ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default="efficientnet")
    args = ap.parse_args()
    image = shipped("chelsea.png")
    server(preload=True)
    try:
        results = {}
        for label, setting in (("without preload", ""), (f"preload_models = '{args.model}'", args.model)):
            set_preload(setting)
            results[label] = run(args.model, image, args.runs)
    finally:
        set_preload("")
    print(f"{'':32} {'connect':>9} {'1st call':>9} {'2nd call':>9}   (median of {args.runs}, ms)")
    for label, (a, b, c) in results.items():
        print(f"{label:32} {a:9.1f} {b:9.1f} {c:9.1f}")


if __name__ == "__main__":
    sys.exit(main())
