#!/usr/bin/env python3
"""transformers' side of the Fashion-CLIP fixture's parity test: what a transformers user gets
from the fixture folder (scripts/build_fclip_fixture.py), with CLIPProcessor + CLIPModel.

Runs in the Fashion-CLIP venv (torch + transformers; the main venv has neither), started by
pgrx-tests/python/test_fclip_parity.py, which writes the request folder and reads the answer:

  request/images/NNNN       the corpus' files, as uploaded (CLIPProcessor opens them with
                            Pillow, as a transformers user would: Image.open)
  request/decoded/NNNN.png  the same pictures as pg_vision's manifest decodes them (upright by
                            EXIF, 16-bit scaled to 8, transparency composited onto white), RGB
  request/tensors.npy       pg_vision's manifest recipe applied by scripts/reference_embed.py,
                            [N,3,224,224] float32
  request/captions.json     texts

answer.npz (every feature vector L2-normalised, float32):
  pixels_file, pixels_decoded   CLIPProcessor's pixel_values for the file and for the decoded picture
  image_file, image_decoded     get_image_features of those
  image_recipe                  get_image_features of tensors.npy (the model alone, on the manifest's input)
  text_ids                      CLIPProcessor's input_ids, padded to 77 with EOT (its pad token)
  text                          get_text_features(input_ids, attention_mask)

Usage: fclip_reference.py --model DIR --request DIR --out FILE.npz [--threads 2]
"""

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

BATCH = 16
CONTEXT = 77


def unit(features):
    features = features.to(torch.float64)
    return (features / features.norm(dim=-1, keepdim=True)).to(torch.float32).numpy()


def image_features(model, pixels):
    """L2-normalised get_image_features of [N,3,224,224] pixel values, in batches."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), BATCH):
            out.append(unit(model.get_image_features(pixel_values=torch.from_numpy(pixels[i:i + BATCH]))))
    return np.concatenate(out)


def processed(processor, paths):
    """CLIPProcessor's pixel_values for each file, opened with Pillow as given."""
    pixels = []
    for path in paths:
        with Image.open(path) as img:
            pixels.append(processor(images=img, return_tensors="np")["pixel_values"][0])
    return np.stack(pixels).astype(np.float32)


def text_features(model, processor, captions):
    """(input_ids [N,77], L2-normalised get_text_features [N,512])."""
    batch = processor(text=captions, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        features = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return batch["input_ids"].numpy(), unit(features)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the fixture folder (save_pretrained output)")
    ap.add_argument("--request", required=True, help="folder written by the test (see above)")
    ap.add_argument("--out", required=True, help="answer file (.npz)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = CLIPModel.from_pretrained(args.model).eval()
    # What CLIPProcessor.from_pretrained gives here, made explicit: the fast (Rust) tokenizer,
    # its default, and the Pillow image processor the folder names (the torchvision one is
    # not installed).
    processor = CLIPProcessor(image_processor=CLIPImageProcessor.from_pretrained(args.model),
                              tokenizer=CLIPTokenizerFast.from_pretrained(args.model))

    names = sorted(os.listdir(os.path.join(args.request, "images")))
    files = [os.path.join(args.request, "images", n) for n in names]
    decoded = [os.path.join(args.request, "decoded", n + ".png") for n in names]
    pixels_file, pixels_decoded = processed(processor, files), processed(processor, decoded)
    with open(os.path.join(args.request, "captions.json"), encoding="utf-8") as f:
        text_ids, text = text_features(model, processor, json.load(f))
    np.savez(
        args.out,
        pixels_file=pixels_file, pixels_decoded=pixels_decoded,
        image_file=image_features(model, pixels_file), image_decoded=image_features(model, pixels_decoded),
        image_recipe=image_features(model, np.load(os.path.join(args.request, "tensors.npy"))),
        text_ids=text_ids, text=text,
    )


if __name__ == "__main__":
    main()
