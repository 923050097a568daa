#!/usr/bin/env python3
"""PyTorch's side of scripts/bench/fclip.py: the Fashion-CLIP fixture in transformers, timed.

Runs in the Fashion-CLIP venv (torch + transformers), started by fclip.py with a request
folder: upload.jpg (the single-image upload), batch/*.jpg (the batch), captions.json.
Prints one JSON object: per-call milliseconds (after a warm-up) of
  image   Image.open + CLIPProcessor + get_image_features of upload.jpg, and its split
          (image_preprocess: Pillow decode + CLIPProcessor; image_model: get_image_features);
  text    CLIPTokenizerFast + get_text_features of one caption (text_tokenize, text_model: on
          its own length, as transformers runs it); text_model_77: get_text_features on the
          ids padded to 77, what running every position costs;
  batch   images per second over batch/: decode + CLIPProcessor + get_image_features in
          batches of --batch;
and the captions' token ids (`ids`, padded with 0 after EOT, as pg_vision feeds them), so
fclip.py can time onnxruntime on the same input.

Usage: fclip_torch.py --model DIR --request DIR --iterations N --threads T --batch B
"""

import argparse
import glob
import json
import os
import time

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

WARMUP = 3
EOT = 49407


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1e3, result


def image_calls(model, processor, path, n):
    """[(preprocess ms, model ms)] of n embeddings of one file."""
    out = []
    for _ in range(WARMUP + n):
        pre, pixels = timed(lambda: processor(images=Image.open(path), return_tensors="pt")["pixel_values"])
        run, _ = timed(lambda: model.get_image_features(pixel_values=pixels))
        out.append((pre, run))
    return out[WARMUP:]


def text_calls(model, tokenizer, captions, n):
    """[(tokenize ms, model ms)] of n embeddings, one caption each (cycling)."""
    out = []
    for i in range(WARMUP + n):
        tok, ids = timed(lambda: tokenizer(captions[i % len(captions)], return_tensors="pt")["input_ids"])
        run, _ = timed(lambda: model.get_text_features(input_ids=ids))
        out.append((tok, run))
    return out[WARMUP:]


def padded_text_calls(model, ids, n):
    """ms of n get_text_features on ids padded to 77: what running every position costs."""
    out = []
    for i in range(WARMUP + n):
        row = torch.tensor([ids[i % len(ids)]])
        out.append(timed(lambda: model.get_text_features(input_ids=row))[0])
    return out[WARMUP:]


def batch_rate(model, processor, paths, batch):
    """Images per second: decode + CLIPProcessor + get_image_features, batch images at a time."""
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        images = [Image.open(p) for p in paths[i:i + batch]]
        model.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
    return len(paths) / (time.perf_counter() - start)


def padded_ids(tokenizer, captions):
    """Each caption's ids, SOT ... EOT then zeros to 77 (fclip.py's onnxruntime side cuts them after EOT)."""
    out = []
    for ids in tokenizer(captions, truncation=True, max_length=77)["input_ids"]:
        out.append(ids + [0] * (77 - len(ids)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--request", required=True)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = CLIPModel.from_pretrained(args.model).eval()
    processor = CLIPImageProcessor.from_pretrained(args.model)
    tokenizer = CLIPTokenizerFast.from_pretrained(args.model)
    with open(os.path.join(args.request, "captions.json"), encoding="utf-8") as f:
        captions = json.load(f)
    batch_paths = sorted(glob.glob(os.path.join(args.request, "batch", "*.jpg")))
    image = image_calls(model, processor, os.path.join(args.request, "upload.jpg"), args.iterations)
    text = text_calls(model, tokenizer, captions, args.iterations)
    ids = padded_ids(tokenizer, captions)
    print(json.dumps({
        "torch": torch.__version__,
        "image": [a + b for a, b in image], "image_preprocess": [a for a, _ in image], "image_model": [b for _, b in image],
        "text": [a + b for a, b in text], "text_tokenize": [a for a, _ in text], "text_model": [b for _, b in text],
        "text_model_77": padded_text_calls(model, ids, args.iterations),
        "batch_images_per_s": batch_rate(model, processor, batch_paths, args.batch),
        "ids": ids,
    }))


if __name__ == "__main__":
    main()
