#!/usr/bin/env python3
"""Shared weights through SQL: what N connections holding a model add to the machine's
memory (PSS) and what one embedding costs, with pg_vision.shared_weights on and off.

Models: EfficientNet-Lite0 (`efficientnet`, image tower) and the ViT-B/32-sized fixture
(`vit_fixture`, image and text towers, RANDOM weights: scripts/build_vit_fixture.py), which
this script installs in pg_vision.model_dir with a manifest and prepared files if missing.

Memory, per model and setting, for 1 and then N connections: each connection first loads a
tiny model (clip_fixture's image tower) so that ONNX Runtime's library and environment are
there before measuring; the sum of their PSS (/proc/<pid>/smaps_rollup: pages shared by k
processes count 1/k in each) is taken; then each connection in turn loads the model's
towers and embeds once with each; the sum is taken again, all connections still holding
the model. The difference is what the model added to the machine. Also printed: the budget's
view at N connections (pg_vision_memory_summary: private bytes, shared files counted once).

Latency: two connections, one with the setting on, one off, the model loaded in both,
called in turns (one call each, --runs times): p50 of each, and the median of the paired
ratios (a call with the setting on over the call with it off just before it). Image: a
224x224 PNG (so decoding is small next to inference); text: a short sentence.

Needs the superuser (pg_vision.shared_weights is a superuser setting). Runs on the server's
machine (it reads the backends' /proc).
Usage: scripts/bench/shared_weights.py [--n 8] [--runs 60] [--models efficientnet,vit_fixture] [--json FILE]
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for photos.py
from photos import alter_system, connect, shipped, state_dir  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MB = 1e6
TOWERS = {"efficientnet": ("image",), "vit_fixture": ("image", "text")}
VIT_FILES = {"image": "vit-b32-fixture-image.onnx", "text": "vit-b32-fixture-text.onnx"}
TEXT = "a red summer dress with white dots"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_dir(model):
    """The model directory a connection uses for `model`: the fixture has one of its own
    (under the cluster's state directory), so that it never shows in the installed list."""
    return os.path.join(state_dir(), "bench-models") if model == "vit_fixture" else None


def install_vit_fixture():
    """Builds (if missing) and installs the ViT-B/32-sized fixture as model vit_fixture in
    model_dir("vit_fixture"), with its prepared files; each file renamed into place."""
    dest = model_dir("vit_fixture")
    os.makedirs(dest, exist_ok=True)
    os.chmod(dest, 0o755)
    shas = {}
    for tower, name in VIT_FILES.items():
        src = os.path.join(REPO, "models", name)
        if not os.path.isfile(src):
            print(f"building {src} (random weights, a minute or two)", flush=True)
            subprocess.run([sys.executable, os.path.join(REPO, "scripts/build_vit_fixture.py"), "--tower", tower, "--out", src + ".tmp"], check=True)
            os.replace(src + ".tmp", src)
        shas[tower] = sha256(src)
        target = os.path.join(dest, name)
        if not os.path.isfile(target) or sha256(target) != shas[tower]:
            shutil.copyfile(src, target + ".tmp")
            os.chmod(target + ".tmp", 0o644)
            os.replace(target + ".tmp", target)
        subprocess.run([sys.executable, os.path.join(REPO, "scripts/prepare_shared_weights.py"), target, "--sha256", shas[tower]], check=True, stdout=subprocess.DEVNULL)
    manifest = json.load(open(os.path.join(REPO, "models/clip_fixture.json")))
    manifest.update(
        name="vit_fixture",
        description="FIXTURE WITH RANDOM WEIGHTS, CLIP ViT-B/32-sized (scripts/build_vit_fixture.py), for memory and speed studies; its vectors mean nothing.",
        onnx_file=VIT_FILES["image"],
        onnx_sha256=shas["image"],
        fetch_hint="scripts/bench/shared_weights.py installs it",
    )
    manifest["text"].update(onnx_file=VIT_FILES["text"], onnx_sha256=shas["text"])
    path = os.path.join(dest, "vit_fixture.json")
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2)
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)


def pss(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def png224():
    from PIL import Image

    img = Image.open(io.BytesIO(shipped("chelsea.png"))).convert("RGB").resize((224, 224))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def use(c, model, tower, image):
    if tower == "image":
        c.execute("SELECT embed_image(%s, %s) IS NOT NULL", (model, image)).fetchone()
    else:
        c.execute("SELECT embed_text(%s, %s) IS NOT NULL", (model, TEXT)).fetchone()


def open_conn(model, shared):
    """A connection with the setting on or off; the tiny model loaded first from the
    installed models (ONNX Runtime's library and environment are then in place), then
    pointed at `model`'s directory."""
    c = connect()
    c.autocommit = True
    c.execute(f"SET pg_vision.shared_weights = {'on' if shared else 'off'}")
    c.execute("SELECT count(*) FROM pg_vision_warmup(ARRAY['clip_fixture'])").fetchone()
    if model_dir(model):
        c.execute("SELECT set_config('pg_vision.model_dir', %s, false)", (model_dir(model),))
    return c


def memory(model, shared, n, image):
    """PSS bytes added by `model` in n connections together, and the budget's summary then."""
    conns = [open_conn(model, shared) for _ in range(n)]
    try:
        pids = []
        for c in conns:
            pids.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        before = sum(pss(p) for p in pids)
        for c in conns:
            for tower in TOWERS[model]:
                use(c, model, tower, image)
        after = sum(pss(p) for p in pids)
        budget = conns[0].execute(
            "SELECT sum(bytes)::float8, sum(shared_bytes)::float8 FROM pg_vision_memory WHERE model = %s", (model,)
        ).fetchone()
        summary = conns[0].execute("SELECT private, shared, shared_files FROM pg_vision_memory_summary").fetchone()
        return after - before, budget, summary
    finally:
        for c in conns:
            c.close()


def latency(model, tower, image, runs):
    on, off = open_conn(model, True), open_conn(model, False)
    try:
        for c in (on, off):
            for _ in range(5):
                use(c, model, tower, image)
        times = {True: [], False: []}
        ratios = []
        for i in range(runs):
            pair = {}
            for shared, c in ((False, off), (True, on)) if i % 2 else ((True, on), (False, off)):
                t = time.perf_counter()
                use(c, model, tower, image)
                pair[shared] = time.perf_counter() - t
                times[shared].append(pair[shared] * 1e3)
            ratios.append(pair[True] / pair[False])
        return statistics.median(times[True]), statistics.median(times[False]), statistics.median(ratios)
    finally:
        on.close()
        off.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--models", default="efficientnet,vit_fixture")
    ap.add_argument("--json")
    args = ap.parse_args()
    models = args.models.split(",")
    image = png224()
    if "vit_fixture" in models:
        install_vit_fixture()
    with connect() as c:
        ort = c.execute("SELECT current_setting('pg_vision.onnxruntime_library')").fetchone()[0]
    print(f"models: {', '.join(models)}; {args.n} connections; {args.runs} latency runs", flush=True)
    # Unshared, 8 connections hold 8 copies of the ViT fixture (about 5 GB): the budget is
    # raised for the run (and reset after) so that the comparison can be made at all.
    alter_system("pg_vision.memory_budget", 16384)
    try:
        results = run(models, args, image)
    finally:
        alter_system("pg_vision.memory_budget", None)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "runs": args.runs, "onnxruntime_library": ort, "results": results}, f, indent=2)


def run(models, args, image):
    results = []
    for model in models:
        row = {"model": model}
        for shared in (True, False):
            key = "on" if shared else "off"
            one, _, _ = memory(model, shared, 1, image)
            many, budget, summary = memory(model, shared, args.n, image)
            row[key] = {
                "pss_1_mb": one / MB,
                f"pss_{args.n}_mb": many / MB,
                "ratio": many / one,
                "budget_private_mb": (budget[0] or 0) / MB,
                "budget_shared_rows_mb": (budget[1] or 0) / MB,
                "summary_private_mb": summary[0] / MB,
                "summary_shared_mb": summary[1] / MB,
                "summary_shared_files": summary[2],
            }
            print(f"{model} shared_weights={key}: PSS added by 1 connection {one / MB:.1f} MB, by {args.n} {many / MB:.1f} MB "
                  f"(ratio {many / one:.2f}); budget at {args.n}: private {summary[0] / MB:.1f} MB, shared {summary[1] / MB:.1f} MB "
                  f"in {summary[2]} file(s)", flush=True)
        for tower in TOWERS[model]:
            p_on, p_off, ratio = latency(model, tower, image, args.runs)
            row[f"latency_{tower}"] = {"on_ms": p_on, "off_ms": p_off, "paired_ratio": ratio}
            print(f"{model} {tower} tower: p50 {p_on:.2f} ms shared, {p_off:.2f} ms not shared; paired ratio {ratio:.3f} "
                  f"({(ratio - 1) * 100:+.1f}%)", flush=True)
        results.append(row)
    return results


if __name__ == "__main__":
    sys.exit(main())
