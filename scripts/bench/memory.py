#!/usr/bin/env python3
"""Memory per backend against the number of backends that embed: for each N of
--backends, N new connections each embed the same 1000x1000 JPEG (photos.jpeg_1000(),
efficientnet, CALLS times), then every backend's /proc/<pid>/smaps_rollup is read: private
memory (its own pages: the model's weights, ONNX Runtime's buffers, the working memory
malloc keeps), PSS (private plus its share of pages shared with other backends, such as
the ONNX Runtime library's code) and RSS; and pg_vision_memory's measured model bytes (what
pg_vision.memory_budget counts). The same figures for N idle new connections first, as
the baseline. Every backend holds its own copy of the model, so private memory per backend
should stay flat while PSS falls as shared pages are split among more backends.

Reads the backends' /proc entries: run it as root or as the server's user, on the server's
machine (make bench does).

Usage: scripts/bench/memory.py [--backends 1,2,4,8] [--calls 3] [--json FILE]
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
import photos  # noqa: E402

MB = 1024 * 1024


def smaps_rollup(pid):
    """{field: bytes} of /proc/<pid>/smaps_rollup (Rss, Pss, Private_Clean, ...)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def backend_figures(pid, model_bytes):
    m = smaps_rollup(pid)
    return {"pid": pid, "rss": m["Rss"], "pss": m["Pss"], "private": m["Private_Clean"] + m["Private_Dirty"],
            "anonymous": m.get("Anonymous", 0), "model_bytes": model_bytes}


def measure(n, calls, image):
    """Figures of n new backends, idle then after embedding: {"idle": [...], "embedding": [...]}."""
    conns = [photos.connect(application_name="pgv-bench-memory") for _ in range(n)]
    try:
        pids = [c.info.backend_pid for c in conns]
        idle = [backend_figures(pid, 0) for pid in pids]
        for c in conns:
            for _ in range(calls):
                c.execute("SELECT embed_efficientnet(%b) IS NOT NULL", [image]).fetchone()
        with photos.connect() as admin:
            held = dict(admin.execute("SELECT pid, sum(bytes)::bigint FROM pg_vision_memory WHERE pid = ANY(%s) "
                                      "GROUP BY pid", [pids]).fetchall())
        embedding = [backend_figures(pid, held.get(pid, 0)) for pid in pids]
    finally:
        for c in conns:
            c.close()
    return {"idle": idle, "embedding": embedding}


def summary(backends):
    """Mean per backend of each figure, and the total private memory."""
    keys = ("rss", "pss", "private", "anonymous", "model_bytes")
    return {**{f"mean_{k}": statistics.mean(b[k] for b in backends) for k in keys},
            "total_private": sum(b["private"] for b in backends)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", type=lambda v: [int(n) for n in v.split(",") if n], default=[1, 2, 4, 8])
    ap.add_argument("--calls", type=int, default=3, help="embeddings per backend before measuring")
    ap.add_argument("--json", metavar="FILE", help="also save the figures as JSON")
    args = ap.parse_args()
    photos.server(preload=True)
    image = photos.jpeg_1000()
    with photos.connect() as c:
        threads = c.execute("SHOW pg_vision.intra_op_threads").fetchone()[0]
    print(f"memory per backend, efficientnet, {args.calls} embeddings of a 1000x1000 JPEG each, "
          f"{threads} intra-op thread(s); MB, mean per backend")
    print(f"  {'backends':>8} {'idle private':>13} {'private':>8} {'PSS':>7} {'RSS':>7} {'model (budget)':>15} "
          f"{'total private':>14}")
    points = []
    for n in args.backends:
        figures = measure(n, args.calls, image)
        idle, used = summary(figures["idle"]), summary(figures["embedding"])
        points.append({"backends": n, "idle": idle, "embedding": used, "per_backend": figures})
        print(f"  {n:8d} {idle['mean_private'] / MB:13.1f} {used['mean_private'] / MB:8.1f} {used['mean_pss'] / MB:7.1f} "
              f"{used['mean_rss'] / MB:7.1f} {used['mean_model_bytes'] / MB:15.1f} {used['total_private'] / MB:14.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": {"model": "efficientnet", "calls": args.calls, "intra_op_threads": threads,
                                    "image_bytes": len(image), "nproc": os.cpu_count()},
                       "points": points}, f, indent=2)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
