#!/usr/bin/env python3
"""Benchmark of pg_vision through SQL, over one persistent connection.

After a warm-up (the model is loaded, then 10 calls), each iteration times, for a
1000x1000 JPEG (photos.jpeg_1000()), a small PNG (scikit-image's chelsea.png, 451x300) and a
phone-sized 3072x2304 JPEG (photos.collage()), the last both with pg_vision.jpeg_dct_scaling
on (the default: decoded at 1/2 scale) and off (full-size decode), side by side:
  - the client-side wall time of the prepared `SELECT embed_efficientnet($1)` (binary bytea
    parameter; embed_image(model, $1) for another --model), result fetched;
  - the server-side split reported by pg_vision_profile(model, image): decode, preprocess,
    inference and their total (one more embedding of the same image).
It prints p50/p95/p99/mean in milliseconds, the backend's RSS before and after the model
loads (from /proc: the server runs on this machine), and the settings used.

Usage: scripts/bench/latency.py [--iterations 200] [--model efficientnet] [--threads N] [--json FILE]
"""

import argparse
import json
import statistics
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
import photos  # noqa: E402

WARMUP_CALLS = 10
PROFILE_COLUMNS = ("decode_ms", "preprocess_ms", "inference_ms", "total_ms")


def cpu_times():
    """(steal, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[7], sum(fields[:8])


def steal_percent(start, end):
    """Share of CPU time the hypervisor gave to other guests between two cpu_times(): on a
    virtual machine it slows every figure here, so it is printed beside them."""
    total = end[1] - start[1]
    return round(100.0 * (end[0] - start[0]) / total, 1) if total else 0.0


def backend_rss_kib(conn):
    """VmRSS of this connection's backend, in KiB."""
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def configure(conn, threads):
    """Sets the session's intra-op threads, then unloads every model so the next call loads
    it again with that setting (the setting applies only to sessions created after it)."""
    if threads is not None:
        conn.execute(f"SET pg_vision.intra_op_threads = {int(threads)}")
    conn.execute("SELECT pg_vision_unload()")
    (value,) = conn.execute("SHOW pg_vision.intra_op_threads").fetchone()
    return int(value)


def embed_query(model):
    # embed_efficientnet is the documented per-model wrapper; other models go through embed_image.
    if model == "efficientnet":
        return "SELECT embed_efficientnet(%b)", lambda img: [img]
    return "SELECT embed_image(%s, %b)", lambda img: [model, img]


def time_embed(conn, query, params):
    """Client-side wall time, in ms, of one prepared execution with its result fetched."""
    start = time.perf_counter()
    conn.execute(query, params, prepare=True).fetchone()
    return (time.perf_counter() - start) * 1e3


def profile(conn, model, image):
    return conn.execute(f"SELECT {', '.join(PROFILE_COLUMNS)} FROM pg_vision_profile(%s, %b)",
                        [model, image], prepare=True).fetchone()


def stats(samples):
    a = np.asarray(samples, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": p50, "p95": p95, "p99": p99, "mean": a.mean()}


def bench_image(conn, model, image, iterations, dct_scaling=True):
    """{measure name: stats} for one image: client wall time and the server-side split."""
    conn.execute(f"SET pg_vision.jpeg_dct_scaling = {'on' if dct_scaling else 'off'}")
    query, params = embed_query(model)
    wall, split = [], []
    for _ in range(iterations):
        wall.append(time_embed(conn, query, params(image)))
        split.append(profile(conn, model, image))
    columns = list(zip(*split))
    result = {"client wall": stats(wall)}
    for name, values in zip(PROFILE_COLUMNS, columns):
        result[f"server {name.removesuffix('_ms')}"] = stats(values)
    return result


def backend_cpu_s(pid):
    """User + system CPU seconds of a backend, all its threads (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_batch(conn, model, image, count, batch_size, rounds=3):
    """Throughput of embed_images(): `count` copies of `image` per call, images per second,
    and the backend's CPU time per image (all threads), which says what the same work
    would reach on idle cores: images/s <= cores * 1000 / cpu_ms_per_image."""
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    ips, cpu_ms = [], []
    for _ in range(rounds):
        cpu0, t0 = backend_cpu_s(pid), time.perf_counter()
        conn.execute("SELECT embed_images(%s, %s, %s)", (model, [image] * count, batch_size))
        ips.append(count / (time.perf_counter() - t0))
        cpu_ms.append((backend_cpu_s(pid) - cpu0) * 1e3 / count)
    return {"images_per_call": count, "batch_size": batch_size, "rounds": rounds,
            "images_per_s_best": round(max(ips), 1), "images_per_s_median": round(statistics.median(ips), 1),
            "cpu_ms_per_image": round(statistics.median(cpu_ms), 1)}


def print_table(title, figures):
    print(f"\n{title}")
    print(f"  {'ms':18} {'p50':>8} {'p95':>8} {'p99':>8} {'mean':>8}")
    for name, s in figures.items():
        print(f"  {name:18} {s['p50']:8.2f} {s['p95']:8.2f} {s['p99']:8.2f} {s['mean']:8.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--model", default="efficientnet")
    ap.add_argument("--threads", type=int, help="pg_vision.intra_op_threads for this session (0: one per core)")
    ap.add_argument("--json", metavar="FILE", help="also save the figures as JSON")
    ap.add_argument("--batch", type=int, default=64, help="images per embed_images() call for the throughput figure (0: skip)")
    args = ap.parse_args()

    phone = photos.encode(photos.collage(3072, 2304), "JPEG", quality=90)
    images = {  # name: (bytes, pg_vision.jpeg_dct_scaling)
        "jpeg_1000 (1000x1000 JPEG q90)": (photos.jpeg_1000(), True),
        "chelsea.png (451x300 PNG)": (photos.shipped("chelsea.png"), True),
        f"phone 3072x2304 JPEG ({len(phone) // 1024} KB), DCT scaling on": (phone, True),
        f"phone 3072x2304 JPEG ({len(phone) // 1024} KB), DCT scaling off": (phone, False),
    }
    load_before = round(os.getloadavg()[0], 2)
    cpu_before = cpu_times()
    with photos.connect() as conn:
        threads = configure(conn, args.threads)
        rss_before = backend_rss_kib(conn)
        query, params = embed_query(args.model)
        load_start = time.perf_counter()
        conn.execute(query, params(photos.jpeg_1000()))  # loads the model (and ONNX Runtime)
        first_call_ms = (time.perf_counter() - load_start) * 1e3
        for _ in range(WARMUP_CALLS):
            for image, _ in images.values():
                time_embed(conn, query, params(image))
        rss_after = backend_rss_kib(conn)
        (server_version,) = conn.execute("SHOW server_version").fetchone()
        results = {name: bench_image(conn, args.model, image, args.iterations, dct)
                   for name, (image, dct) in images.items()}
        conn.execute("RESET pg_vision.jpeg_dct_scaling")
        # The default batch size (4) beside a bigger one, in the same run.
        batch = [bench_batch(conn, args.model, photos.jpeg_1000(), args.batch, size) for size in (4, 16)] if args.batch else []

    settings = {
        "model": args.model, "iterations": args.iterations, "warmup_calls": WARMUP_CALLS,
        "pg_vision.intra_op_threads": threads, "nproc": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "server_version": server_version,
        # Other work on the machine skews every figure: the 1-minute load shows it.
        "loadavg_before": load_before, "loadavg_after": round(os.getloadavg()[0], 2),
        "cpu_steal_percent": steal_percent(cpu_before, cpu_times()),
    }
    memory = {"rss_before_kib": rss_before, "rss_after_kib": rss_after, "first_call_ms": first_call_ms}
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(f"backend RSS: {rss_before / 1024:.1f} MiB before the model, {rss_after / 1024:.1f} MiB after loading it "
          f"and {WARMUP_CALLS} warm-up calls (+{(rss_after - rss_before) / 1024:.1f} MiB); "
          f"first call (load + embed) {first_call_ms:.0f} ms")
    for name, figures in results.items():
        print_table(f"{name}, {args.iterations} iterations", figures)
    for b in batch:
        print(f"\nbatch: embed_images() of {b['images_per_call']} x jpeg_1000, batch_size {b['batch_size']}: "
              f"{b['images_per_s_median']} images/s median, {b['images_per_s_best']} best of {b['rounds']} calls; "
              f"{b['cpu_ms_per_image']} ms of backend CPU per image (at most "
              f"{os.cpu_count() * 1000 / b['cpu_ms_per_image']:.0f} images/s on {os.cpu_count()} idle cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "memory": memory, "results": results, "batch": batch}, f, indent=2)
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
