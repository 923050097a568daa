#!/usr/bin/env python3
"""Fashion-CLIP's architecture (the random-weight fixture `fclip_fixture`, scripts/fclip_fixture.sh)
through SQL against the same weights in PyTorch (transformers) and in Python onnxruntime, in
one run, every engine on the same number of threads (2 by default).

  image   one 1000x1000 JPEG upload (photos.jpeg_1000()), per call, after a warm-up:
            SQL: prepared `SELECT embed_image('fclip_fixture', $1)`, client wall time, and
                 pg_vision_profile's split (decode, preprocess, inference);
            PyTorch: Image.open + CLIPProcessor + get_image_features (scripts/bench/fclip_torch.py,
                 in the Fashion-CLIP venv);
            onnxruntime: scripts/reference_embed.py's Pillow recipe + InferenceSession.run of
                 models/fclip-fixture-image.onnx;
  text    one caption per call (scripts/captions.py):
            SQL: `SELECT embed_text('fclip_fixture', $1)`;
            PyTorch: CLIPTokenizerFast + get_text_features;
            onnxruntime: InferenceSession.run of models/fclip-fixture-text.onnx on the ids
                 transformers' tokenizer gave, SOT .. EOT, as pg_vision feeds them
                 (tokenising excluded: it is PyTorch's `tokenise` row). All three run the
                 caption's own length (about 10 tokens; the exported graph takes any
                 length, see scripts/export_fclip.py); PyTorch's `model, 77 tokens` row
                 shows what running every position would cost;
  batch   images per second for 32 different 1000x1000 JPEGs: SQL embed_images(...,
          batch_size => B) against PyTorch in batches of B.

The weights are random: the timings are Fashion-CLIP's (same architecture, same shapes), the
vectors are not. Absolute figures move between machines and runs (CPU steal is printed);
compare the columns of one run.

Usage: scripts/bench/fclip.py [--iterations 50] [--threads 2] [--batch 4] [--json FILE]
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/
import captions  # noqa: E402
import photos  # noqa: E402
import reference_embed  # noqa: E402
from bench.latency import cpu_times, steal_percent  # noqa: E402

MODEL = "fclip_fixture"
MODELS_DIR = os.path.join(photos.REPO, "models")
WARMUP = 3
BATCH_IMAGES = 32
CAPTIONS = 50


def summary(ms):
    """p50, p95 and mean of a list of milliseconds."""
    q = statistics.quantiles(ms, n=20)
    return {"p50": round(statistics.median(ms), 2), "p95": round(q[18], 2), "mean": round(statistics.fmean(ms), 2)}


def timed(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def batch_jpegs():
    """BATCH_IMAGES different 1000x1000 JPEGs: windows of one large mosaic of real photos."""
    mosaic = photos.collage(2400, 1800)
    out = []
    for i in range(BATCH_IMAGES):
        left, top = (i * 157) % 1400, (i * 97) % 800
        out.append(photos.encode(mosaic.crop((left, top, left + 1000, top + 1000)), "JPEG", quality=90))
    return out


def torch_side(python, folder, upload, batch, texts, args):
    """scripts/bench/fclip_torch.py's figures (see its docstring)."""
    with tempfile.TemporaryDirectory() as request:
        with open(os.path.join(request, "upload.jpg"), "wb") as f:
            f.write(upload)
        os.makedirs(os.path.join(request, "batch"))
        for i, data in enumerate(batch):
            with open(os.path.join(request, "batch", f"{i:03d}.jpg"), "wb") as f:
                f.write(data)
        with open(os.path.join(request, "captions.json"), "w", encoding="utf-8") as f:
            json.dump(texts, f)
        out = subprocess.run([python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fclip_torch.py"),
                              "--model", folder, "--request", request, "--iterations", str(args.iterations),
                              "--threads", str(args.threads), "--batch", str(args.batch)],
                             check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def sql_side(conn, upload, batch, texts, args):
    """Per-call milliseconds through SQL, the profile's split, and embed_images' rate."""
    conn.execute(f"SET pg_vision.intra_op_threads = {int(args.threads)}")
    conn.execute("SET pg_vision.memo_entries = 0")  # every call runs the model
    conn.execute("SELECT pg_vision_unload()")
    image_sql, text_sql = "SELECT embed_image(%s, %b)", "SELECT embed_text(%s, %s)"
    for _ in range(WARMUP):
        conn.execute(image_sql, [MODEL, upload], prepare=True).fetchone()
        conn.execute(text_sql, [MODEL, texts[0]], prepare=True).fetchone()
    image = [timed(lambda: conn.execute(image_sql, [MODEL, upload], prepare=True).fetchone())
             for _ in range(args.iterations)]
    text = [timed(lambda i=i: conn.execute(text_sql, [MODEL, texts[i % len(texts)]], prepare=True).fetchone())
            for i in range(args.iterations)]
    profile = [conn.execute("SELECT decode_ms, preprocess_ms, inference_ms FROM pg_vision_profile(%s, %b)",
                            [MODEL, upload]).fetchone() for _ in range(args.iterations)]
    start = time.perf_counter()
    conn.execute("SELECT embed_images(%s, %s, batch_size => %s)", [MODEL, batch, args.batch]).fetchone()
    rate = len(batch) / (time.perf_counter() - start)
    return {"image": image, "text": text, "batch_images_per_s": rate,
            "image_decode": [p[0] for p in profile], "image_preprocess": [p[1] for p in profile],
            "image_model": [p[2] for p in profile]}


EOT = 49407


def ort_side(upload, ids, args):
    """Per-call milliseconds in Python onnxruntime: Pillow recipe + run (image), run (text)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    manifest = reference_embed.load_manifest(os.path.join(MODELS_DIR, f"{MODEL}.json"))
    image_session = ort.InferenceSession(os.path.join(MODELS_DIR, manifest["onnx_file"]), options,
                                         providers=["CPUExecutionProvider"])
    text_session = ort.InferenceSession(os.path.join(MODELS_DIR, manifest["text"]["onnx_file"]), options,
                                        providers=["CPUExecutionProvider"])
    pre, run = [], []
    for _ in range(WARMUP + args.iterations):
        start = time.perf_counter()
        tensor = reference_embed.preprocess(manifest, Image.open(io.BytesIO(upload)))
        middle = time.perf_counter()
        image_session.run(None, {"pixel_values": tensor})
        pre.append((middle - start) * 1e3)
        run.append((time.perf_counter() - middle) * 1e3)
    text = []
    for i in range(WARMUP + args.iterations):
        padded = ids[i % len(ids)]
        row = np.asarray([padded[:padded.index(EOT) + 1]], dtype=np.int64)  # SOT .. EOT, as pg_vision feeds it
        text.append(timed(lambda: text_session.run(None, {"input_ids": row})))
    pre, run, text = pre[WARMUP:], run[WARMUP:], text[WARMUP:]
    return {"image": [a + b for a, b in zip(pre, run)], "image_preprocess": pre, "image_model": run, "text": text}


def print_table(results):
    rows = [("image, 1000x1000 JPEG", "image"), ("  decode + preprocess", "image_preprocess"),
            ("  model", "image_model"), ("text, one caption", "text"), ("  tokenise", "text_tokenize"),
            ("  model", "text_model"), ("  model, 77 tokens", "text_model_77")]
    engines = ("sql", "torch", "onnxruntime")
    print(f"\n{'p50 ms (p95)':28}" + "".join(f"{e:>22}" for e in engines))
    for label, key in rows:
        cells = []
        for e in engines:
            s = results[e].get(key)
            cells.append(f"{s['p50']:>12.2f} ({s['p95']:.2f})" if s else f"{'-':>20}")
        print(f"{label:28}" + "".join(f"{c:>22}" for c in cells))
    print(f"{'batch, images/s':28}{results['sql']['batch_images_per_s']:>22.1f}{results['torch']['batch_images_per_s']:>22.1f}")
    print(f"(SQL's decode / preprocess / inference split: {results['sql']['image_decode']['p50']} / "
          f"{results['sql']['image_sql_preprocess']['p50']} / {results['sql']['image_model']['p50']} ms)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    state = photos.state_dir()
    python, folder = os.path.join(state, "fclip-venv", "bin", "python"), os.path.join(state, "fclip-fixture-hf")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        sys.exit(f"{folder} is missing: run scripts/fclip_fixture.sh (make fclip-fixture) first")
    upload, batch, texts = photos.jpeg_1000(), batch_jpegs(), captions.product_captions(CAPTIONS)

    start_cpu = cpu_times()
    torch_raw = torch_side(python, folder, upload, batch, texts, args)
    with photos.connect() as conn:
        sql_raw = sql_side(conn, upload, batch, texts, args)
    ort_raw = ort_side(upload, torch_raw.pop("ids"), args)
    steal = steal_percent(start_cpu, cpu_times())

    results = {}
    for engine, raw in (("sql", sql_raw), ("torch", torch_raw), ("onnxruntime", ort_raw)):
        results[engine] = {k: (summary(v) if isinstance(v, list) else v) for k, v in raw.items()}
    results["sql"]["image_sql_preprocess"] = results["sql"].pop("image_preprocess")
    results["settings"] = {"threads": args.threads, "iterations": args.iterations, "batch_size": args.batch,
                           "batch_images": len(batch), "torch": results["torch"].pop("torch"),
                           "onnxruntime": ort.__version__, "cpu_steal_percent": steal, "load": os.getloadavg()}
    print_table(results)
    print(f"threads {args.threads}, {args.iterations} calls each, CPU steal {steal}%, load {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
