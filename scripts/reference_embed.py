#!/usr/bin/env python3
"""Reference image-embedding pipeline (Pillow + numpy + onnxruntime), independent of pg_vision.

It follows a model manifest (models/<name>.json, described in models/README.md) step by
step, so its vectors are what pg_vision's Rust pipeline should reproduce:

  1. decode with Pillow and apply the EXIF orientation (ImageOps.exif_transpose);
  2. remove transparency: alpha "white" composites images that have transparency (RGBA, LA,
     PA, P or L/RGB with a transparent colour) onto white; "drop" (and every opaque image)
     is Pillow's plain convert("RGB");
  3. resize: "shortest_side" scales the short side to resize.size and the long side to
     int(long * size / short), truncated as torchvision's and CLIP's Resize(size) do;
     "exact" resizes to size x size (width x height when size is 0). Pillow's BICUBIC or BILINEAR filter, which
     antialiases (widens the kernel) when downscaling;
  4. crop "center" to width x height, offsets int(round((w - width) / 2.0)) like
     torchvision's CenterCrop (Python's round: halves go to the even integer); "none" keeps
     the whole image;
  5. float32, channels in the manifest's colour order: (pixel * scale - mean[c]) / std[c];
  6. NCHW or NHWC, batch of one; run the ONNX model, check the output size against the
     manifest's dim; L2-normalise the main embedding if l2_normalize is true (extra outputs,
     such as logits, are returned as the model produced them).

Usage:
  reference_embed.py --manifest models/efficientnet.json --model-dir DIR
                     [--output embedding|logits] [--dump-tensor] IMAGE...

prints one JSON line per image: {"file": ..., "vector": [...]} (plus "tensor", the flat
preprocessed input, with --dump-tensor). `--output` names the main output "embedding" or a
key of the manifest's extra_outputs.

As a module: embed(manifest_path, model_dir, image_bytes_list, output=None),
preprocess(manifest, pil_image) and picture(manifest, pil_image) (steps 1-2 only).
"""

import argparse
import io
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

MAIN_OUTPUT = "embedding"

RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}


def load_manifest(path):
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    checks = [
        ("layout", manifest["layout"], ("NCHW", "NHWC")),
        ("color_order", manifest["color_order"], ("RGB", "BGR")),
        ("alpha", manifest["alpha"], ("white", "drop")),
        ("resize.mode", manifest["resize"]["mode"], ("shortest_side", "exact")),
        ("resize.interpolation", manifest["resize"]["interpolation"], tuple(RESAMPLING)),
        ("crop", manifest["crop"], ("center", "none")),
    ]
    for field, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"{path}: {field} is {value!r}, expected one of {allowed}")
    return manifest


def _to_8bit(img):
    """16-bit greyscale ("I;16", "I") to 8-bit "L" by value / 257, rounded; Pillow's own
    convert() clamps those values at 255 instead of scaling them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8), "L")
    return img


def _remove_alpha(manifest, img):
    if manifest["alpha"] == "white" and img.has_transparency_data:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _resize(manifest, img):
    spec = manifest["resize"]
    resample = RESAMPLING[spec["interpolation"]]
    if spec["mode"] == "exact":
        side = spec.get("size", 0)
        return img.resize((side, side) if side else (manifest["width"], manifest["height"]), resample)
    size = spec["size"]
    w, h = img.size
    short, long = min(w, h), max(w, h)
    # int(long * size / short) as torchvision's Resize(size); integers so no float error decides a pixel.
    new_long = (long * size) // short
    new_size = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new_size, resample)


def _center_crop(manifest, img):
    cw, ch = manifest["width"], manifest["height"]
    w, h = img.size
    if w < cw or h < ch:
        raise ValueError(f"image is {w}x{h} after resizing, smaller than the {cw}x{ch} crop")
    left = int(round((w - cw) / 2.0))
    top = int(round((h - ch) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def picture(manifest, pil_image):
    """Steps 1 and 2: the upright, 8-bit, opaque RGB picture the recipe resizes."""
    return _remove_alpha(manifest, _to_8bit(ImageOps.exif_transpose(pil_image)))


def preprocess(manifest, pil_image):
    """Apply the manifest's recipe to a decoded Pillow image; return the model input, batch of one."""
    img = _resize(manifest, picture(manifest, pil_image))
    if manifest["crop"] == "center":
        img = _center_crop(manifest, img)

    pixels = np.asarray(img, dtype=np.float32)  # H, W, RGB
    if manifest["color_order"] == "BGR":
        pixels = pixels[:, :, ::-1]
    scale = np.float32(manifest["scale"])
    mean = np.asarray(manifest["mean"], dtype=np.float32)
    std = np.asarray(manifest["std"], dtype=np.float32)
    values = (pixels * scale - mean) / std
    if manifest["layout"] == "NCHW":
        values = values.transpose(2, 0, 1)
    return np.ascontiguousarray(values[np.newaxis], dtype=np.float32)


class Model:
    """An onnxruntime session for one manifest."""

    def __init__(self, manifest_path, model_dir):
        self.manifest = load_manifest(manifest_path)
        path = os.path.join(model_dir, self.manifest["onnx_file"])
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing; produce it with: {self.manifest['fetch_hint']}")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def output_spec(self, output):
        """(ONNX output name, dim, L2-normalise?) for the main output or an extra one."""
        m = self.manifest
        if output in (None, MAIN_OUTPUT):
            return m["output_name"], m["dim"], m["l2_normalize"]
        extra = m["extra_outputs"]
        if output not in extra:
            raise ValueError(f"unknown output {output!r}: expected {MAIN_OUTPUT!r} or one of {sorted(extra)}")
        return extra[output]["output_name"], extra[output]["dim"], False

    def run(self, tensor, output=None):
        name, dim, l2 = self.output_spec(output)
        (result,) = self.session.run([name], {self.manifest["input_name"]: tensor})
        vector = np.asarray(result, dtype=np.float32)[0].reshape(-1)
        if vector.size != dim:
            raise ValueError(f"output {name!r} has {vector.size} values, the manifest says {dim}")
        if l2:
            norm = np.linalg.norm(vector.astype(np.float64))
            if norm > 0:
                vector = (vector / norm).astype(np.float32)
        return vector

    def embed_bytes(self, image_bytes, output=None):
        """(preprocessed input tensor, output vector) for one encoded image."""
        tensor = preprocess(self.manifest, Image.open(io.BytesIO(image_bytes)))
        return tensor, self.run(tensor, output)


def embed(manifest_path, model_dir, image_bytes_list, output=None):
    """Vectors (float32 ndarrays) for encoded images; output None means the main embedding."""
    model = Model(manifest_path, model_dir)
    return [model.embed_bytes(data, output)[1] for data in image_bytes_list]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True, help="model manifest JSON (models/<name>.json)")
    ap.add_argument("--model-dir", required=True, help="directory holding the manifest's onnx_file")
    ap.add_argument("--output", default=MAIN_OUTPUT,
                    help=f"{MAIN_OUTPUT!r} (default) or a key of the manifest's extra_outputs, e.g. logits")
    ap.add_argument("--dump-tensor", action="store_true", help="also print the preprocessed input tensor")
    ap.add_argument("images", nargs="+", metavar="IMAGE")
    args = ap.parse_args()

    model = Model(args.manifest, args.model_dir)
    model.output_spec(args.output)  # reject an unknown --output before reading any image
    for path in args.images:
        with open(path, "rb") as f:
            tensor, vector = model.embed_bytes(f.read(), args.output)
        record = {"file": path, "vector": vector.tolist()}
        if args.dump_tensor:
            record["tensor"] = tensor.reshape(-1).tolist()
        print(json.dumps(record))


if __name__ == "__main__":
    sys.exit(main())
