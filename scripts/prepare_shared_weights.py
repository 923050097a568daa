#!/usr/bin/env python3
"""Prepare ONNX files whose weights every PostgreSQL backend shares (core/src/prepared.rs).

Default (what scripts/models.sh runs on the serving machine), for each MODEL.onnx given:

  MODEL.shared.onnx       the graph optimised by ONNX Runtime at level all (NCHWc blocked
  MODEL.shared.onnx.data  convolutions included) with its initializers of 1 KB or more AND
                          its prepacked weights (the layouts its kernels rearrange weights
                          into at load; session.save_external_prepacked_constant_initializers)
                          in the data file, which ONNX Runtime then maps instead of copying:
                          every process shares its pages.
  MODEL.shared.json       the sidecar: this ONNX Runtime's version, this CPU's features
                          (cpu_features(): the same string core/src/prepared.rs computes),
                          the source's name and SHA-256, the prepared files and their sizes.
                          pg_vision uses the prepared files only when all of it matches.

written next to MODEL.onnx, each to a temporary name then renamed into place (a mapped file
rewritten in place would be SIGBUS in every backend that maps it), the sidecar last. A model
whose sidecar already matches is skipped. Use the onnxruntime whose library pg_vision loads.

--study --out DIR instead writes every variant the study compared (core/examples/shared_weights.rs):
  MODEL.ort            ORT format, 'Fixed' optimisation style, level all, --target_platform
                       amd64: optimised at conversion, NCHWc blocked convolutions baked in.
  MODEL.portable.ort   the same without --target_platform (no NchwcTransformer: runs anywhere).
  MODEL.ext.onnx       the unoptimised graph with its initializers of 1 KB or more in
  + .ext.onnx.data     MODEL.ext.onnx.data (ONNX external data, as the onnx package writes it).
  MODEL.opt.onnx       optimised by ONNX Runtime at level all, external initializers.
  MODEL.optpp.onnx     the same, plus the prepacked weights in the data file (= the default's).

Usage: prepare_shared_weights.py MODEL.onnx... [--sha256 HEX] [--force]
       prepare_shared_weights.py --study MODEL.onnx [--out DIR]
"""

import argparse
import hashlib
import json
import platform
import os
import shutil
import subprocess
import sys
import tempfile
import time

import onnx
import onnxruntime as ort


def convert_to_ort(onnx_path, out, stem, amd64):
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", "--optimization_style", "Fixed", "--output_dir", tmp]
        if amd64:
            cmd += ["--target_platform", "amd64"]
        subprocess.run(cmd + [onnx_path], check=True, stdout=subprocess.DEVNULL)
        target = os.path.join(out, stem + (".ort" if amd64 else ".portable.ort"))
        os.replace(os.path.join(tmp, stem + ".ort"), target)
        return [target]


def external_data(onnx_path, out, stem):
    model = onnx.load(onnx_path)
    target = os.path.join(out, stem + ".ext.onnx")
    onnx.save(model, target, save_as_external_data=True, all_tensors_to_one_file=True, location=stem + ".ext.onnx.data", size_threshold=1024)
    return [target, target + ".data"]


def optimized(onnx_path, out, stem, prepacked):
    suffix = ".optpp.onnx" if prepacked else ".opt.onnx"
    target = os.path.join(out, stem + suffix)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = target
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", stem + suffix + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    if prepacked:
        so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    return [target, target + ".data"]


FORMAT = 1
# Keep in step with RELEVANT in core/src/prepared.rs.
RELEVANT = {
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",
}


def cpu_features():
    """The architecture and the CPU flags that decide ONNX Runtime's kernels and layouts."""
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags = value
                break
    except OSError:
        pass
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    return arch + ":" + ",".join(sorted(set(flags.split()) & RELEVANT))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def matches(sidecar_path, want):
    """Whether the sidecar there records `want` and its files are present at their sizes."""
    try:
        have = json.load(open(sidecar_path))
    except (OSError, ValueError):
        return False
    d = os.path.dirname(sidecar_path)
    keys = ("format", "ort_version", "cpu", "source_onnx", "source_sha256")
    return all(have.get(k) == want[k] for k in keys) and all(
        os.path.isfile(os.path.join(d, have.get(f, ""))) and os.path.getsize(os.path.join(d, have[f])) == have.get(n)
        for f, n in (("onnx_file", "onnx_bytes"), ("data_file", "data_bytes"))
    )


def prepare(onnx_path, source_sha=None, force=False):
    """Writes MODEL.shared.onnx(+.data) and MODEL.shared.json next to MODEL.onnx; returns
    what it did."""
    d, base = os.path.split(os.path.abspath(onnx_path))
    stem = base[: -len(".onnx")] if base.endswith(".onnx") else base
    graph, data, side = stem + ".shared.onnx", stem + ".shared.onnx.data", stem + ".shared.json"
    want = {
        "format": FORMAT,
        "ort_version": ort.__version__,
        "cpu": cpu_features(),
        "source_onnx": base,
        "source_sha256": source_sha or sha256(onnx_path),
    }
    if not force and matches(os.path.join(d, side), want):
        return "up to date"
    start = time.time()
    # Written under the final names in a temporary directory beside the model (the graph
    # refers to its data file by name; same file system, so the renames are atomic).
    with tempfile.TemporaryDirectory(dir=d, prefix=".prepare-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = os.path.join(tmp, graph)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", data)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        sidecar = dict(
            want,
            onnx_file=graph,
            onnx_bytes=os.path.getsize(os.path.join(tmp, graph)),
            data_file=data,
            data_bytes=os.path.getsize(os.path.join(tmp, data)),
        )
        with open(os.path.join(tmp, side), "w") as f:
            json.dump(sidecar, f, indent=2)
            f.write("\n")
        # The data file first, the sidecar (which makes them used) last.
        for name in (data, graph, side):
            os.chmod(os.path.join(tmp, name), 0o644)
            os.replace(os.path.join(tmp, name), os.path.join(d, name))
    size = (sidecar["onnx_bytes"] + sidecar["data_bytes"]) / 1e6
    return f"prepared {graph} + {data} ({size:.1f} MB, {time.time() - start:.1f} s)"


def study(onnx_path, out):
    os.makedirs(out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    for what, make in (
        ("ORT format, NCHWc (amd64)", lambda: convert_to_ort(onnx_path, out, stem, True)),
        ("ORT format, portable", lambda: convert_to_ort(onnx_path, out, stem, False)),
        ("external data", lambda: external_data(onnx_path, out, stem)),
        ("optimised, external data", lambda: optimized(onnx_path, out, stem, False)),
        ("optimised, external data and prepacked weights", lambda: optimized(onnx_path, out, stem, True)),
    ):
        start = time.time()
        files = make()
        sizes = ", ".join(f"{os.path.basename(f)} {os.path.getsize(f) / 1e6:.1f} MB" for f in files if os.path.exists(f))
        print(f"{what}: {sizes} ({time.time() - start:.1f} s)")
    shutil.rmtree(os.path.join(out, "__pycache__"), ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", nargs="+")
    ap.add_argument("--sha256", help="the source's SHA-256 as its manifest declares it (one model only)")
    ap.add_argument("--force", action="store_true", help="prepare even if the sidecar matches")
    ap.add_argument("--study", action="store_true", help="write the study's variants to --out instead")
    ap.add_argument("--out", default="target/shared-weights")
    args = ap.parse_args()
    if args.study:
        for path in args.onnx:
            study(path, args.out)
        return 0
    if args.sha256 and len(args.onnx) > 1:
        ap.error("--sha256 names one model's weights")
    for path in args.onnx:
        print(f"{path}: {prepare(path, args.sha256, args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
