#!/usr/bin/env python3
"""Load under a tight memory budget: N clients embed images for a while, each picking a
model at random (efficientnet, efficientnet_lite2, clip_fixture), so backends keep
evicting and reloading. Prints throughput, errors by SQLSTATE, backends that crashed
(server log lines "terminated by signal" written during the run) and the largest shared
usage seen against the budget.

Usage: scripts/bench/load.py [--clients 8] [--seconds 60] [--budget-mb 100]   (part of make bench)
The cluster must run with shared_preload_libraries = 'pg_vision' (scripts/pg.sh does).
"""

import argparse
import collections
import os
import random
import sys
import threading
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
from photos import alter_system, connect, names, server, shipped, state_dir  # noqa: E402

MODELS = ["efficientnet", "efficientnet_lite2", "clip_fixture"]
MB = 1024 * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--budget-mb", type=int, default=100)
    args = ap.parse_args()
    images = [shipped(n) for n in names("photo")[:4]]

    server(preload=True)
    with connect() as c:
        c.execute("SET client_min_messages = warning")
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_vision CASCADE")
    alter_system("pg_vision.memory_budget", args.budget_mb)
    log = os.path.join(state_dir(), "postgres.log")
    log_start = os.path.getsize(log)

    stop = threading.Event()
    lock = threading.Lock()
    done, errors, lat = [0], collections.Counter(), []
    peak = {"used": 0, "budget": 0, "backends": 0, "evictions0": None, "evictions": 0}

    def client(i):
        rnd = random.Random(i)
        conn = None
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect()
                t0 = time.monotonic()
                conn.execute("SELECT embed_image(%s, %s) IS NOT NULL", (rnd.choice(MODELS), rnd.choice(images))).fetchone()
                with lock:
                    done[0] += 1
                    lat.append(time.monotonic() - t0)
            except psycopg.Error as e:
                with lock:
                    errors[e.sqlstate or type(e).__name__] += 1
                if isinstance(e, psycopg.OperationalError):
                    conn = None
        if conn is not None:
            conn.close()

    def poll():
        with connect() as c:
            while not stop.is_set():
                budget, used, backends, ev = c.execute(
                    "SELECT budget, used, backends, evictions FROM pg_vision_memory_summary").fetchone()
                if peak["evictions0"] is None:
                    peak["evictions0"] = ev
                peak.update(used=max(peak["used"], used), budget=budget, backends=max(peak["backends"], backends), evictions=ev)
                time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)] + [threading.Thread(target=poll)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    alter_system("pg_vision.memory_budget", None)

    with open(log, errors="replace") as f:
        f.seek(log_start)
        crashes = [l.strip() for l in f if "terminated by signal" in l]
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")  # noqa: E731
    print(f"clients {args.clients}, {elapsed:.0f} s, budget {peak['budget'] / MB:.0f} MB")
    print(f"embeddings: {done[0]} ({done[0] / elapsed:.1f}/s), latency p50 {pct(0.5):.0f} ms, p95 {pct(0.95):.0f} ms, p99 {pct(0.99):.0f} ms")
    print(f"errors by SQLSTATE: {dict(errors) or 'none'}")
    print(f"evictions: {peak['evictions'] - (peak['evictions0'] or 0)}")
    print(f"crashed backends: {len(crashes)}" + "".join(f"\n  {l}" for l in crashes[:5]))
    print(f"max shared usage: {peak['used'] / MB:.1f} MB of {peak['budget'] / MB:.0f} MB budget, up to {peak['backends']} backends holding models")
    ok = not crashes and peak["used"] <= peak["budget"] and set(errors) <= {"53200"}
    print("load test " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
