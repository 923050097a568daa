#!/usr/bin/env python3
"""Derive, from one ONNX file, the files whose weights several processes can share.

Inputs of core/examples/shared_weights.rs (which measures them); everything is written to
--out (default target/shared-weights, ignored by git). For MODEL.onnx:

  MODEL.ort            ORT format, 'Fixed' optimisation style, level all, --target_platform
                       amd64: optimised at conversion, NCHWc blocked convolutions baked in.
                       NCHWc's block size is this CPU's (8 with AVX2, 16 with AVX-512): the
                       file belongs to this kind of CPU.
  MODEL.portable.ort   the same without --target_platform: the converter then leaves out
                       the NchwcTransformer ("creates a device specific model"), so the file
                       runs anywhere, without blocked convolutions.
  MODEL.ext.onnx       the unoptimised graph with its initializers of 1 KB or more in
  + .ext.onnx.data     MODEL.ext.onnx.data (ONNX external data, as the onnx package writes it).
  MODEL.opt.onnx       optimised by ONNX Runtime at level all (NCHWc included: this CPU's),
  + .opt.onnx.data     saved as ONNX with external initializers.
  MODEL.optpp.onnx     the same, plus ONNX Runtime's prepacked weights (the layouts its kernels
  + .optpp.onnx.data   rearrange weights into at load) written to the data file as well
                       (session.save_external_prepacked_constant_initializers): CPU-specific.

Use the onnxruntime whose library pg_vision loads: the files are read by that version.

Usage: prepare_shared_weights.py MODEL.onnx [--out DIR]
"""

import argparse
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx")
    ap.add_argument("--out", default="target/shared-weights")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.onnx))[0]
    for what, make in (
        ("ORT format, NCHWc (amd64)", lambda: convert_to_ort(args.onnx, args.out, stem, True)),
        ("ORT format, portable", lambda: convert_to_ort(args.onnx, args.out, stem, False)),
        ("external data", lambda: external_data(args.onnx, args.out, stem)),
        ("optimised, external data", lambda: optimized(args.onnx, args.out, stem, False)),
        ("optimised, external data and prepacked weights", lambda: optimized(args.onnx, args.out, stem, True)),
    ):
        start = time.time()
        files = make()
        sizes = ", ".join(f"{os.path.basename(f)} {os.path.getsize(f) / 1e6:.1f} MB" for f in files if os.path.exists(f))
        print(f"{what}: {sizes} ({time.time() - start:.1f} s)")
    shutil.rmtree(os.path.join(args.out, "__pycache__"), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
