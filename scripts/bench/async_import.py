#!/usr/bin/env python3
"""Import benchmark: the same photos COPYed into a table whose trigger embeds in the
INSERT (mode=sync) and into one whose trigger queues them for pg_vision's background
workers (mode=async), side by side in one run; then the queue's bloat after 100,000 rows
went through it with autovacuum at its defaults.

Prints, for each mode: the COPY's own cost per row, the rate at which vectors are
written (rows / time until every row has its vector), and the ratio async / sync.

The cluster is restarted with pg_vision.indexer_databases = 'pg_vision' and
pg_vision.indexer_workers = --workers, and restored afterwards.

Usage: scripts/bench/async_import.py [--rows 5000] [--chunk 250] [--workers 2] [--bloat-rows 100000] [--json FILE]
"""
import argparse
import io
import json
import os
import subprocess
import sys
import time

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
import photos  # noqa: E402
from photos import connect  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shop import variants  # noqa: E402


def restart():
    subprocess.run([os.path.join(photos.REPO, "scripts", "pg.sh"), "restart"], check=True, stdout=subprocess.DEVNULL)


def wait_workers(n):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with connect() as c:
            if c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_vision indexer'").fetchone()[0] == n:
                return
        time.sleep(0.1)
    raise SystemExit("the indexer workers did not start")


def make_table(c, name, mode):
    c.execute(f"DROP TABLE IF EXISTS {name}")
    c.execute(f"CREATE TABLE {name} (id bigserial PRIMARY KEY, image bytea, checksum text, emb vector(1280))")
    c.execute(f"""CREATE TRIGGER embed BEFORE INSERT OR UPDATE OF image ON {name} FOR EACH ROW
                  EXECUTE FUNCTION pg_vision_embed_trigger('image', 'emb:efficientnet', 'checksum=checksum', 'mode={mode}')""")


def copy(c, name, images, chunk=None):
    """COPYs the images, `chunk` rows per COPY (each its own transaction, as an import
    script commits as it goes), and returns the seconds it took."""
    chunk = chunk or len(images)
    t0 = time.perf_counter()
    for start in range(0, len(images), chunk):
        with c.cursor().copy(f"COPY {name} (image) FROM STDIN") as cp:
            for img in images[start:start + chunk]:
                cp.write_row((img,))
    return time.perf_counter() - t0


def wait_indexed(c, name):
    assert c.execute(f"SELECT pg_vision_wait_for_indexing('{name}', '1 hour')").fetchone()[0]


def import_side_by_side(images, chunk):
    with connect() as c:
        c.execute("SET client_min_messages = warning")
        # Warm up: the workers' and this session's models are loaded before the clocks run.
        make_table(c, "warm_sync", "sync")
        make_table(c, "warm_async", "async")
        copy(c, "warm_sync", images[:8])
        copy(c, "warm_async", images[:8] * 4)
        wait_indexed(c, "warm_async")
        c.execute("DROP TABLE warm_sync, warm_async")

        c.execute("DROP TABLE IF EXISTS plain")
        c.execute("CREATE TABLE plain (id bigserial PRIMARY KEY, image bytea, checksum text, emb vector(1280))")
        plain_s = copy(c, "plain", images, chunk)

        make_table(c, "import_sync", "sync")
        sync_s = copy(c, "import_sync", images, chunk)
        assert c.execute("SELECT count(emb) FROM import_sync").fetchone()[0] == len(images)

        # The async trigger's own cost: one COPY (one transaction), so no worker runs
        # beside it; the table is dropped at once (the workers then drop its queue rows).
        sample = images[: min(len(images), 1000)]
        plain_one_s = copy(c, "plain", sample)
        make_table(c, "cost_async", "async")
        async_one_s = copy(c, "cost_async", sample)
        c.execute("DROP TABLE cost_async")

        make_table(c, "import_async", "async")
        t0 = time.perf_counter()
        async_copy_s = copy(c, "import_async", images, chunk)
        wait_indexed(c, "import_async")
        async_s = time.perf_counter() - t0
        assert c.execute("SELECT count(emb) FROM import_async").fetchone()[0] == len(images)
        agree = c.execute("""SELECT min(1 - (a.emb <=> s.emb)) FROM import_async a JOIN import_sync s USING (id)""").fetchone()[0]
        c.execute("DROP TABLE plain, import_sync, import_async")
    n = len(images)
    return {
        "rows": n,
        "rows_per_copy": chunk,
        "copy_without_trigger_ms_per_row": plain_s / n * 1e3,
        "sync": {"copy_ms_per_row": sync_s / n * 1e3, "vectors_per_s": n / sync_s},
        "async": {"copy_ms_per_row": async_copy_s / n * 1e3, "vectors_per_s": n / async_s,
                  "trigger_cost_ms_per_row": (async_one_s - plain_one_s) / len(sample) * 1e3},
        "ratio": (n / async_s) / (n / sync_s),
        "min_cosine_async_vs_sync": agree,
    }


def queue_bloat(rows, chunk=10_000):
    """`rows` tiny images through the queue in COPYs of `chunk`, at the workers' pace."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buf, "PNG")
    tiny = buf.getvalue()
    with connect() as c:
        c.execute("SET client_min_messages = warning")
        make_table(c, "bloat", "async")
        t0 = time.perf_counter()
        for start in range(0, rows, chunk):
            copy(c, "bloat", [tiny] * min(chunk, rows - start))
            wait_indexed(c, "bloat")
        elapsed = time.perf_counter() - t0

        def stats():
            live, dead, vacuums, size = c.execute("""
                SELECT n_live_tup, n_dead_tup, autovacuum_count, pg_total_relation_size(relid)
                  FROM pg_stat_user_tables WHERE relname = 'pg_vision_queue'""").fetchone()
            return {"live": live, "dead": dead, "autovacuums": vacuums, "bytes": size}

        c.execute("SELECT pg_stat_force_next_flush()")
        right_after = stats()
        time.sleep(70)  # autovacuum_naptime is 60 s by default
        c.execute("SELECT pg_stat_force_next_flush()")
        later = stats()
        c.execute("DROP TABLE bloat")
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed, "right_after": right_after, "after_70s": later}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=250, help="rows per COPY (each COPY commits)")
    ap.add_argument("--bloat-rows", type=int, default=100_000)
    ap.add_argument("--json")
    args = ap.parse_args()

    print(f"making {args.rows} distinct 640 px JPEGs from the real photographs ...", flush=True)
    images = variants(args.rows)
    print(f"  mean {sum(map(len, images)) / len(images) / 1024:.0f} KB")
    with connect() as c:
        c.execute("ALTER SYSTEM SET pg_vision.indexer_databases = 'pg_vision'")
        c.execute(f"ALTER SYSTEM SET pg_vision.indexer_workers = {args.workers}")
    restart()
    try:
        wait_workers(args.workers)
        result = import_side_by_side(images, args.chunk)
        s, a = result["sync"], result["async"]
        print(f"\nimport of {result['rows']} photos, COPY of {args.chunk} rows per transaction, {args.workers} workers, {os.cpu_count()} cores")
        print(f"  {'':28} {'COPY ms/row':>12} {'vectors/s':>10}")
        print(f"  {'no trigger':28} {result['copy_without_trigger_ms_per_row']:12.3f} {'':>10}")
        print(f"  {'trigger mode=sync':28} {s['copy_ms_per_row']:12.3f} {s['vectors_per_s']:10.1f}")
        print(f"  {'trigger mode=async':28} {a['copy_ms_per_row']:12.3f} {a['vectors_per_s']:10.1f}")
        print(f"  async / sync: {result['ratio']:.2f}x vectors/s; the async trigger adds {a['trigger_cost_ms_per_row']:.3f} ms per row;"
              f" min cosine async vs sync {result['min_cosine_async_vs_sync']:.6f}")
        if args.bloat_rows:
            print(f"\nqueue bloat: {args.bloat_rows} rows through the queue (tiny images), autovacuum at its defaults ...", flush=True)
            bloat = queue_bloat(args.bloat_rows)
            result["bloat"] = bloat
            for when in ("right_after", "after_70s"):
                b = bloat[when]
                print(f"  {when:12} live {b['live']:>7} dead {b['dead']:>7} autovacuums {b['autovacuums']:>3}"
                      f" size {b['bytes'] / 1024:.0f} kB")
            print(f"  ({bloat['rows_per_s']:.0f} rows/s through the queue)")
    finally:
        with connect() as c:
            c.execute("ALTER SYSTEM RESET pg_vision.indexer_databases")
            c.execute("ALTER SYSTEM RESET pg_vision.indexer_workers")
        restart()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
