#!/usr/bin/env python3
"""The memory budget across backends, end to end, on the project's cluster.

Runs the cluster with shared_preload_libraries = 'pg_vision' (restarting it if needed) and
checks, against pg_vision_memory / pg_vision_memory_summary:
  1. each model's measured size (printed);
  2. 8 concurrent sessions loading efficientnet, efficientnet_lite2 and clip_fixture
     (image and text towers) in random order under a budget that fits only part of them:
     the shared total never exceeds the budget (polled), evictions happen and show;
  3. 53200 with model, size, usage and the setting to change when one model cannot fit;
  4. bytes are released when a backend ends normally, with a FATAL error
     (idle_session_timeout), by pg_terminate_backend, and when a load fails;
  5. a changed budget takes effect after SELECT pg_reload_conf(); an embed_images() batch
     of 64 leaves the backend's private memory where one image left it;
  6. without shared_preload_libraries: a per-connection budget and one WARNING.
Exits non-zero on the first failed check. Usage: budget_test.py [--seed N]
"""

import argparse
import os
import random
import sys
import threading
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from photos import connect, jpeg_1000, server, shipped  # noqa: E402

MB = 1024 * 1024
# (model, tower) pairs the sessions load, and the SQL that loads (and uses) each.
TOWERS = [("efficientnet", "image"), ("efficientnet_lite2", "image"), ("clip_fixture", "image"), ("clip_fixture", "text")]


def use_sql(model, tower):
    if tower == "text":
        return f"SELECT vector_dims(embed_text('{model}', 'a red summer dress'))"
    return f"SELECT vector_dims(embed_image('{model}', %s))"


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def set_budget(mb):
    """ALTER SYSTEM SET pg_vision.memory_budget (in MB; None resets it) + pg_reload_conf,
    then waits until a new session sees the value."""
    with connect() as c:
        if mb is None:
            c.execute("ALTER SYSTEM RESET pg_vision.memory_budget")
        else:
            c.execute(f"ALTER SYSTEM SET pg_vision.memory_budget = {int(mb)}")
        c.execute("SELECT pg_reload_conf()")
        want = int(mb) if mb is not None else int(c.execute("SELECT boot_val FROM pg_settings WHERE name = 'pg_vision.memory_budget'").fetchone()[0])
    for _ in range(50):
        time.sleep(0.1)
        with connect() as c:
            shown = int(c.execute("SELECT setting FROM pg_settings WHERE name = 'pg_vision.memory_budget'").fetchone()[0])
        if shown == want:
            return
    sys.exit(f"FAILED: pg_vision.memory_budget did not become {want} MB (still {shown})")


def anonymous_mb(pid):
    """Private (anonymous) resident memory of a backend, in MB, from /proc (the server runs here)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("Anonymous:"))


def summary(c):
    return c.execute("SELECT budget, used, backends, models, evictions, cluster_wide FROM pg_vision_memory_summary").fetchone()


def rows_of(c, pid):
    return c.execute("SELECT model, tower, bytes FROM pg_vision_memory WHERE pid = %s ORDER BY 1, 2", (pid,)).fetchall()


def wait_released(c, pid, what):
    for _ in range(100):
        if not rows_of(c, pid):
            check(True, f"bytes released when a backend {what}")
            return
        time.sleep(0.05)
    check(False, f"bytes released when a backend {what} (rows left: {rows_of(c, pid)})")


def measure(image):
    """Each tower's measured size, loaded alone in a fresh session."""
    sizes = {}
    with connect() as c:
        for model in ("efficientnet", "efficientnet_lite2", "clip_fixture"):
            for m, tower, b, ms, _ in c.execute("SELECT * FROM pg_vision_warmup(ARRAY[%s])", (model,)).fetchall():
                sizes[(m, tower)] = b
                print(f"  {m:20} {tower:5} {b / MB:7.1f} MB measured, loaded in {ms:.0f} ms")
        files = {(n, t): fb for n, t, fb in c.execute("SELECT name, tower, file_bytes FROM pg_vision_loaded_models()").fetchall()}
        for k, b in sizes.items():
            print(f"  {k[0]:20} {k[1]:5} {b / files[k]:.2f} x its ONNX file ({files[k] / MB:.1f} MB)")
    return sizes


def concurrent(image, sizes, budget_mb, seed, rounds=12):
    """8 sessions loading towers in random order; a poller checks used <= budget."""
    stop = threading.Event()
    seen = {"max_used": 0, "over": [], "polls": 0}
    errors = []
    refused = [0]

    def poll():
        with connect() as c:
            while not stop.is_set():
                budget, used, *_ = summary(c)
                seen["polls"] += 1
                seen["max_used"] = max(seen["max_used"], used)
                if used > budget:
                    seen["over"].append((used, budget))
                time.sleep(0.01)

    def session(i):
        rnd = random.Random(seed * 100 + i)
        try:
            with connect() as c:
                for _ in range(rounds):
                    model, tower = rnd.choice(TOWERS)
                    sql = use_sql(model, tower)
                    try:
                        c.execute(sql, (image,) if tower == "image" else None)
                    except psycopg.errors.OutOfMemory:
                        refused[0] += 1
        except Exception as e:  # anything but 53200 fails the test
            errors.append(f"session {i}: {type(e).__name__}: {e}")

    poller = threading.Thread(target=poll)
    poller.start()
    workers = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    poller.join()
    check(not errors, f"8 sessions ran without errors other than 53200 ({errors[:3]})")
    check(seen["polls"] > 10 and not seen["over"], f"shared total never exceeded the budget: max {seen['max_used'] / MB:.1f} MB of {budget_mb} MB over {seen['polls']} polls")
    return refused[0], seen["max_used"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    image = shipped("chelsea.png")

    server(preload=True)
    with connect() as c:
        check(summary(c)[5], "pg_vision_memory_summary is cluster-wide with shared_preload_libraries")
    set_budget(None)

    print("measured sizes:")
    sizes = measure(image)
    total = sum(sizes.values())

    # 2. Room for about two full sets of towers among 8 sessions that want 8.
    budget_mb = max(int(2 * total / MB) + 1, int(max(sizes.values()) / MB) + 2)
    set_budget(budget_mb)
    with connect() as c:
        ev0 = summary(c)[4]
    refused, max_used = concurrent(image, sizes, budget_mb, args.seed)
    with connect() as c:
        _, used, backends, models, ev1, _ = summary(c)
    check(ev1 > ev0, f"evictions happened and show in pg_vision_memory_summary ({ev1 - ev0}; {refused} loads refused with 53200)")
    check(used == 0 and backends == 0, "every session's bytes were released when it closed")

    # 3. One model that cannot fit alone.
    small = int(sizes[("efficientnet_lite2", "image")] / MB) - 1
    set_budget(small)
    with connect() as holder, connect() as c:
        holder.execute("SELECT pg_vision_warmup(ARRAY['clip_fixture'])")
        used_before = summary(c)[1]
        try:
            c.execute(use_sql("efficientnet_lite2", "image"), (image,))
            check(False, "53200 when one model alone cannot fit")
        except psycopg.errors.OutOfMemory as e:
            msg = e.diag.message_primary
            print(f"  ERROR 53200: {msg}\n  HINT: {e.diag.message_hint}")
            check(e.sqlstate == "53200" and '"efficientnet_lite2"' in msg and "MB" in msg and "pg_vision.memory_budget" in msg
                  and "1 backend(s)" in msg and "memory_budget" in e.diag.message_hint,
                  "53200 names the model, its size, the budget, what is in use by how many backends, the setting")
        check(summary(c)[1] == used_before, "a refused load leaves no reservation behind")

        # 5. A changed budget takes effect after pg_reload_conf, in an existing session too.
        set_budget(budget_mb)
        c.execute(use_sql("efficientnet_lite2", "image"), (image,))
        check(True, "after raising the budget and pg_reload_conf() the same session loads the model")

    # 4. Release on exit: normal close, FATAL, pg_terminate_backend.
    with connect() as watcher:
        a = connect()
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        a.execute("SELECT pg_vision_warmup(ARRAY['efficientnet'])")
        check(len(rows_of(watcher, pid)) == 1, "a warmed-up session shows in pg_vision_memory")
        a.close()
        wait_released(watcher, pid, "ends normally")

        b = connect()
        pid = b.execute("SELECT pg_backend_pid()").fetchone()[0]
        b.execute("SELECT pg_vision_warmup(ARRAY['efficientnet'])")
        b.execute("SET idle_session_timeout = '200ms'")
        time.sleep(0.6)  # the server ends the idle session with FATAL 57P05
        wait_released(watcher, pid, "ends with a FATAL error (idle_session_timeout)")
        b.close()

        t = connect()
        pid = t.execute("SELECT pg_backend_pid()").fetchone()[0]
        t.execute("SELECT pg_vision_warmup(ARRAY['clip_fixture'])")
        watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_released(watcher, pid, "is ended by pg_terminate_backend")
        t.close()

        u = connect()
        pid = u.execute("SELECT pg_backend_pid()").fetchone()[0]
        u.execute("SELECT pg_vision_warmup(ARRAY['efficientnet', 'clip_fixture'])")
        n = u.execute("SELECT pg_vision_unload('clip_fixture')").fetchone()[0]
        check(n == 2 and [r[0] for r in rows_of(watcher, pid)] == ["efficientnet"], "pg_vision_unload(model) releases that model's shared bytes")
        u.close()
    set_budget(None)

    # 5. A big batch does not stay resident: the budget counts the model, and the
    # activations and decoded images of an embed_images() batch must go back to the
    # system when the call ends (the ONNX Runtime arena shrinks after the last run, then
    # malloc_trim).
    with connect() as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.execute(use_sql("efficientnet", "image"), (image,))
        after_one = anonymous_mb(pid)
        c.execute("SELECT embed_images('efficientnet', %s, 64)", ([jpeg_1000()] * 64,))
        after_batch = anonymous_mb(pid)
        check(after_batch - after_one < 64, f"a batch of 64 leaves the backend's private memory near where one image left it: "
                                            f"{after_one} MB -> {after_batch} MB (an arena kept about 640 MB more)")

    # 6. Without shared_preload_libraries: per connection, and one WARNING saying so.
    server(preload=False)
    try:
        with connect() as c:
            notices = []
            c.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
            c.execute(use_sql("efficientnet", "image"), (image,))
            c.execute(use_sql("clip_fixture", "image"), (image,))
            warnings = [m for s, m in notices if s == "WARNING"]
            check(len(warnings) == 1 and "shared_preload_libraries" in warnings[0], f"one WARNING per backend without shared_preload_libraries: {warnings}")
            s = summary(c)
            check(not s[5] and s[2] == 1, "the budget is per connection without shared_preload_libraries")
    finally:
        server(preload=True)
    print("budget test passed")


if __name__ == "__main__":
    sys.exit(main())
