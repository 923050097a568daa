#!/usr/bin/env python3
"""Charts of the benchmarks, drawn from the figures the drivers saved (never typed in):

  latency.png     search by upload, p50 / p95 / p99 ms, pg_vision against the replaced
                  service's architecture (bench-results/versus.json, scripts/bench/versus.py)
  throughput.png  searches per second against the number of concurrent clients, both sides
                  (versus.json's sweep: versus.py --sweep 1,2,4,8)
  memory.png      memory per backend against the number of backends that embed
                  (bench-results/memory.json, scripts/bench/memory.py)

A chart whose JSON is missing is skipped, saying so. make bench runs this last.

Usage: scripts/bench/charts.py [--results bench-results] [--out DIR (default: --results)]
"""

import argparse
import datetime
import json
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

MB = 1024 * 1024
COLOURS = {"pg_vision": "#1f5fa8", "service": "#d9822b"}
LABELS = {"pg_vision": "pg_vision (in the database)", "service": "replaced service (FastAPI + onnxruntime + pgvector)"}


def read(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load(settings):
    """The machine's load average around the run (other work on the cores skews every figure)."""
    return (f"load average {settings['loadavg_before']:g} before, {settings['loadavg_after']:g} after "
            f"(the run's own clients included)")


def footnote(fig, path, text):
    """Where the figures come from, and when they were measured."""
    when = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc).strftime("%Y-%m-%d")
    note = textwrap.fill(f"{text}; from {os.path.basename(path)}, measured {when}", 115)
    fig.text(0.01, 0.01, note, fontsize=7, color="#555")


def latency_chart(versus, path, out):
    s = versus["settings"]
    lat = versus["latency_ms"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.38
    percentiles = ("p50", "p95", "p99")
    for k, side in enumerate(("pg_vision", "service")):
        xs = [i + (k - 0.5) * width for i in range(len(percentiles))]
        values = [lat[side][p] for p in percentiles]
        bars = ax.bar(xs, values, width, label=LABELS[side], color=COLOURS[side])
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(range(len(percentiles)), percentiles)
    ax.set_ylabel("ms per search (client's wall time)")
    ax.set_title(f"Search by upload, sequential: service p50 / pg_vision p50 = "
                 f"{versus['latency_ratio_service_over_pg_vision']:.2f}x", fontsize=11)
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(y=0.15)
    footnote(fig, path, f"{s['iterations']} searches per side, {s['image']}, {s['rows']} rows HNSW, "
                        f"{s['threads']} intra-op threads, {s['nproc']} cores, {load(s)}")
    return save(fig, out, "latency.png")


def throughput_chart(versus, path, out):
    s = versus["settings"]
    curve = versus.get("sweep") or [{"clients": s["clients"], **versus["throughput"]}]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    clients = [p["clients"] for p in curve]
    for side in ("pg_vision", "service"):
        values = [p[side]["searches_per_s"] for p in curve]
        ax.plot(clients, values, marker="o", label=LABELS[side], color=COLOURS[side])
        above = side == "pg_vision"  # labels on either side of the lines, so they never overlap
        for x, y in zip(clients, values):
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 7 if above else -8),
                        ha="center", va="bottom" if above else "top", fontsize=8, color=COLOURS[side])
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("searches per second")
    ax.set_ylim(bottom=0)
    ax.margins(y=0.15)
    last = curve[-1]
    ax.set_title(f"Throughput: pg_vision / service at {last['clients']} clients = "
                 f"{last['pg_vision']['searches_per_s'] / last['service']['searches_per_s']:.2f}x", fontsize=11)
    ax.legend(fontsize=8, loc="lower right")
    seconds = s.get("sweep_seconds", s["seconds"]) if versus.get("sweep") else s["seconds"]
    footnote(fig, path, f"{seconds:g} s per side and point, {s['image']}, {s['threads']} intra-op threads, "
                        f"{s['workers']} uvicorn workers, {s['nproc']} cores, {load(s)}")
    return save(fig, out, "throughput.png")


def memory_chart(memory, path, out):
    s = memory["settings"]
    points = memory["points"]
    n = [p["backends"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines = (("mean_pss", "PSS (private + its share of shared pages)", "#7a4fa0"),
             ("mean_private", "private (its own pages)", "#1f5fa8"),
             ("mean_model_bytes", "the model, as pg_vision_memory measures it (budgeted)", "#2e8b57"))
    for key, label, colour in lines:
        values = [p["embedding"][key] / MB for p in points]
        ax.plot(n, values, marker="o", label=label, color=colour)
        ax.annotate(f"{values[-1]:.1f}", (n[-1], values[-1]), textcoords="offset points", xytext=(8, -3), fontsize=8)
    idle = [p["idle"]["mean_private"] / MB for p in points]
    ax.plot(n, idle, marker=".", linestyle="--", color="#888", label="private, idle new connection")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(x) for x in n])
    ax.set_xlabel("backends that have embedded")
    ax.set_ylabel("MB per backend (mean)")
    ax.set_ylim(bottom=0)
    ax.margins(x=0.12, y=0.15)
    total = points[-1]["embedding"]["total_private"] / MB
    ax.set_title(f"Memory per backend: each holds its own model ({n[-1]} backends: {total:.0f} MB private in all)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="center right")
    footnote(fig, path, f"{s['model']}, {s['calls']} embeddings of a 1000x1000 JPEG per backend, "
                        f"{s['intra_op_threads']} intra-op thread(s), /proc/<pid>/smaps_rollup")
    return save(fig, out, "memory.png")


def save(fig, out, name):
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="bench-results", help="where the drivers saved their JSON")
    ap.add_argument("--out", help="where to write the PNGs (default: --results)")
    args = ap.parse_args()
    out = args.out or args.results
    os.makedirs(out, exist_ok=True)
    charts = ((latency_chart, "versus.json"), (throughput_chart, "versus.json"), (memory_chart, "memory.json"))
    for draw, source in charts:
        path = os.path.join(args.results, source)
        figures = read(path)
        if figures is None:
            print(f"{draw.__name__}: skipped, no {path}")
            continue
        print(f"{draw.__name__}: {draw(figures, path, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
