#!/usr/bin/env python3
"""Sanity check of a converted EfficientNet: classify two scikit-image photographs.

Runs the reference pipeline (reference_embed.py) on scikit-image's chelsea.png (a cat) and
coffee.png (a cup of espresso), prints the top-5 ImageNet classes of the logits, and exits
non-zero unless a cat class (281-285) is in the top 3 for chelsea and espresso (967) is the
top 1 for coffee.

Usage: check_classes.py --model-dir DIR [--manifest models/efficientnet.json]
"""

import argparse
import importlib.resources
import os
import sys

import numpy as np

from reference_embed import embed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Names of the ImageNet classes the check is about (the full label list is not shipped).
CLASS_NAMES = {
    281: "tabby",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
    967: "espresso",
}
CAT_CLASSES = {281, 282, 283, 284, 285}
ESPRESSO = 967


def skimage_image(name):
    # importlib finds skimage's data folder without importing skimage's submodules.
    return importlib.resources.files("skimage").joinpath("data", name).read_bytes()


def label(index):
    return f"{index} {CLASS_NAMES[index]}" if index in CLASS_NAMES else str(index)


def top5(logits):
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-logits)[:5]
    return [(int(i), float(probs[i])) for i in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="directory holding the manifest's onnx_file")
    ap.add_argument("--manifest", default=os.path.join(REPO, "models", "efficientnet.json"))
    args = ap.parse_args()

    images = ["chelsea.png", "coffee.png"]
    logits = embed(args.manifest, args.model_dir, [skimage_image(n) for n in images], output="logits")
    top = {}
    for name, vector in zip(images, logits):
        top[name] = top5(vector)
        listed = ", ".join(f"{label(i)} ({p:.3f})" for i, p in top[name])
        print(f"{name}: top-5 {listed}")

    failures = []
    if not CAT_CLASSES & {i for i, _ in top["chelsea.png"][:3]}:
        failures.append("chelsea.png: no cat class (281-285) in the top 3")
    if top["coffee.png"][0][0] != ESPRESSO:
        failures.append("coffee.png: espresso (967) is not the top class")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"OK ({os.path.basename(args.manifest)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
