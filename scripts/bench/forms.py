#!/usr/bin/env python3
"""Search by upload in every query form, custom and generic plans side by side.

Each form (the same search written as applications write it) is a prepared statement run
through psycopg with a binary bytea parameter, under plan_cache_mode force_custom_plan and
force_generic_plan, on a 2,000-row HNSW table of random unit vectors. Every execution sends
a new upload (a 1000x1000 JPEG, photos.jpeg_1000(), with 4 bytes appended after its end
marker: the same picture, new bytes), so the memo cannot answer from an earlier execution.
For each form and plan it prints p50/p95 latency and the model runs per execution (`calls`
in pg_vision_loaded_models()), with the memo on (the default) and off: off shows what the
memo saves.

Then what a memo lookup costs against what it saves, for a big upload (a 4096x3072 JPEG of
about 8 MB), in one transaction: its round trip alone (SELECT octet_length($1)), its
embedding when new (hash, decode, inference) and again (hash and lookup), p50 of each. The hash alone is measured by
`cargo run --release -p pg_vision_core --example memo_bench`.

Usage: scripts/bench/forms.py [--iterations 30] [--threads 2] [--json FILE]
"""

import argparse
import json
import os
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
import photos  # noqa: E402

ROWS = 2000
FORMS = {
    "twice (README's first form)": """
        SELECT id, 1 - (embedding <=> embed_efficientnet($1)) AS similarity FROM bench_forms
         ORDER BY embedding <=> embed_efficientnet($1) LIMIT 10""",
    "subquery in FROM": """
        SELECT id, 1 - (embedding <=> q.v) AS similarity FROM bench_forms, (SELECT embed_efficientnet($1) AS v) q
         ORDER BY embedding <=> q.v LIMIT 10""",
    "CTE": """
        WITH q AS (SELECT embed_efficientnet($1) AS v)
        SELECT id, 1 - (embedding <=> q.v) AS similarity FROM bench_forms, q ORDER BY embedding <=> q.v LIMIT 10""",
    "CTE MATERIALIZED": """
        WITH q AS MATERIALIZED (SELECT embed_efficientnet($1) AS v)
        SELECT id, 1 - (embedding <=> (SELECT v FROM q)) AS similarity FROM bench_forms
         ORDER BY embedding <=> (SELECT v FROM q) LIMIT 10""",
    "LATERAL": """
        SELECT s.id, 1 - s.distance AS similarity FROM (SELECT embed_efficientnet($1) AS v) q
         CROSS JOIN LATERAL (SELECT id, embedding <=> q.v AS distance FROM bench_forms
                              ORDER BY embedding <=> q.v LIMIT 10) s""",
    "PL/pgSQL function": "SELECT * FROM pg_temp.bench_search($1)",
}
PLPGSQL = """
CREATE FUNCTION pg_temp.bench_search(img bytea) RETURNS TABLE (id int, similarity float8) LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY SELECT b.id, 1 - (b.embedding <=> embed_efficientnet(img)) FROM bench_forms b
                ORDER BY b.embedding <=> embed_efficientnet(img) LIMIT 10;
END $$"""
PLANS = ("force_custom_plan", "force_generic_plan")


def setup(conn, threads):
    conn.execute(f"SET pg_vision.intra_op_threads = {int(threads)}")
    conn.execute("SELECT pg_vision_unload()")
    conn.execute(f"""
        CREATE TEMP TABLE bench_forms AS
        SELECT n AS id, (SELECT array_agg(random() - 0.5) FROM generate_series(1, 1280 + n * 0))::vector(1280)
                 AS embedding
          FROM generate_series(1, {ROWS}) n""")
    conn.execute("CREATE INDEX ON bench_forms USING hnsw (embedding vector_cosine_ops)")
    conn.execute(PLPGSQL)
    conn.execute("SELECT embed_efficientnet(%s)", (photos.jpeg_1000(),))  # loads the model


def calls(conn):
    return conn.execute(
        "SELECT calls FROM pg_vision_loaded_models() WHERE name = 'efficientnet' AND tower = 'image'"
    ).fetchone()[0]


def measure(conn, sql, plan, memo, iterations, uploads):
    """p50 and p95 latency (ms) and model runs per execution of one form under one plan."""
    conn.execute(f"SET plan_cache_mode = {plan}")
    conn.execute(f"SET pg_vision.memo_entries = {128 if memo else 0}")
    psql = sql.replace("$1", "%(upload)s")
    times, runs = [], []
    for i in range(iterations + 3):
        upload = next(uploads)
        before = calls(conn)
        start = time.perf_counter()
        rows = conn.execute(psql, {"upload": upload}, prepare=True, binary=True).fetchall()
        elapsed = (time.perf_counter() - start) * 1e3
        assert len(rows) == 10, rows
        if i >= 3:  # the first executions prepare the statement
            times.append(elapsed)
            runs.append(calls(conn) - before)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": times[int(0.95 * (len(times) - 1))],
        "runs_per_execution": statistics.mean(runs),
    }


def new_uploads():
    base = photos.jpeg_1000()
    n = 0
    while True:
        n += 1
        yield base + struct.pack(">I", n)


def memo_cost(conn, iterations):
    """p50 ms of a big JPEG's round trip alone (octet_length), its embedding the first time
    (miss: hash, decode, inference) and again (hit: hash, lookup)."""
    conn.execute("SET pg_vision.memo_entries = 128")
    big = photos.encode(photos.collage(4096, 3072), "JPEG", quality=97, subsampling=0)
    transfer, miss, hit = [], [], []
    for i in range(iterations):
        upload = big + struct.pack(">I", i)
        with conn.transaction():  # the memo lasts one transaction
            for out, sql in ((transfer, "SELECT octet_length(%s)"), (miss, "SELECT embed_efficientnet(%s) IS NULL"),
                             (hit, "SELECT embed_efficientnet(%s) IS NULL")):
                start = time.perf_counter()
                conn.execute(sql, (upload,), prepare=True, binary=True).fetchone()
                out.append((time.perf_counter() - start) * 1e3)
    return {"upload_bytes": len(big), "transfer_p50_ms": statistics.median(transfer),
            "miss_p50_ms": statistics.median(miss), "hit_p50_ms": statistics.median(hit)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="pg_vision.intra_op_threads")
    ap.add_argument("--json")
    args = ap.parse_args()
    results = {"rows": ROWS, "threads": args.threads, "iterations": args.iterations, "forms": {}}
    uploads = new_uploads()
    with photos.connect() as conn:
        setup(conn, args.threads)
        print(f"{ROWS}-row HNSW table, 1000x1000 JPEG ({len(photos.jpeg_1000())} bytes), a new upload each execution, "
              f"{args.threads} intra-op thread(s), {args.iterations} executions each")
        head = f"{'form':<28} {'plan':<8} | {'memo on: p50':>12} {'p95':>7} {'runs':>5} | {'memo off: p50':>13} {'runs':>5}"
        print(head)
        print("-" * len(head))
        for name, sql in FORMS.items():
            for plan in PLANS:
                on = measure(conn, sql, plan, True, args.iterations, uploads)
                off = measure(conn, sql, plan, False, args.iterations, uploads)
                results["forms"].setdefault(name, {})[plan] = {"memo_on": on, "memo_off": off}
                print(f"{name:<28} {plan.split('_')[1]:<8} | {on['p50_ms']:>12.2f} {on['p95_ms']:>7.2f} "
                      f"{on['runs_per_execution']:>5.1f} | {off['p50_ms']:>13.2f} {off['runs_per_execution']:>5.1f}")
        cost = memo_cost(conn, max(5, args.iterations // 3))
        results["memo_cost"] = cost
        print(f"\nmemo lookup, a {cost['upload_bytes'] / 1e6:.1f} MB JPEG (p50): round trip alone "
              f"{cost['transfer_p50_ms']:.1f} ms; embedded when new {cost['miss_p50_ms']:.1f} ms; "
              f"again (memo hit) {cost['hit_p50_ms']:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
