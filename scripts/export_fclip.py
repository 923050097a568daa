#!/usr/bin/env python3
"""Exports a Hugging Face CLIPModel (Fashion-CLIP, ViT-B/32, by default) to ONNX for pg_vision.

Writes PREFIX-image.onnx: input `pixel_values` float32 [N,3,224,224] (CLIP's recipe, done by
pg_vision from the model's manifest), output `image_embeds` [N,512] = visual_projection of the
pooled vision output; and PREFIX-text.onnx: input `input_ids` int64 [N,L], L from 1 to 77 (CLIP
BPE, done by pg_vision), output `text_embeds` [N,512] = text_projection of the EOT token's
state. CLIP's text attention is causal, so the zero padding after EOT cannot change the result
and no attention mask is needed; and as the length axis L is dynamic, pg_vision feeds a text's
ids only up to its EOT (the longest text's in a batch), not 77 positions: the same vector for
a fraction of the work. pg_vision L2-normalises both.

--model is a Hugging Face repository id or a local folder:
  - patrickjohncyh/fashion-clip (the default, `make fclip`): needs internet, writes fclip-*.onnx;
  - a folder written by scripts/build_fclip_fixture.py (Fashion-CLIP's architecture with
    RANDOM weights, offline), exported with --prefix fclip-fixture (scripts/fclip_fixture.sh).
Each file is written next to its final name and renamed into place, so an interrupted export
leaves no half file under that name.

The graphs come from PyTorch's TorchScript-based exporter (dynamo=False): one self-contained
file per tower, as pg_vision loads it (torch's default exporter since 2.9, the
torch.export-based one, needs onnxscript and by default writes the weights to a separate
external-data file).

Needs torch + transformers (scripts/requirements-fclip.txt, in $STATE/fclip-venv).
Usage: export_fclip.py --out DIR [--model REPO_OR_FOLDER] [--prefix NAME]
"""
import argparse
import os
import warnings

import torch
from transformers import CLIPModel

REPO_ID = "patrickjohncyh/fashion-clip"
OPSET = 17
SOT, EOT = 49406, 49407


class ImageTower(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.vision = clip.vision_model
        self.proj = clip.visual_projection

    def forward(self, pixel_values):
        pooled = self.vision(pixel_values=pixel_values).pooler_output
        return self.proj(pooled)


class TextTower(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.text = clip.text_model
        self.proj = clip.text_projection

    def forward(self, input_ids):
        pooled = self.text(input_ids=input_ids).pooler_output
        return self.proj(pooled)


def export(tower, example, input_name, output_name, path, input_axes):
    """One tower to `path`, through a temporary file renamed into place; `input_axes` names
    the input's dynamic axes."""
    tmp = path + ".tmp"
    with warnings.catch_warnings():
        # Known and harmless here: the legacy exporter is chosen on purpose (above); CLIP's check
        # of the image size is traced as a constant (the graph takes 224x224, as the manifest
        # feeds it); the EOT row is picked by an index that is never negative (an argmax).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(
            tower, (example,), tmp, input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: input_axes, output_name: {0: "N"}}, opset_version=OPSET, dynamo=False,
        )
    os.replace(tmp, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the ONNX files")
    ap.add_argument("--model", default=REPO_ID, help=f"Hugging Face repository id or local folder (default {REPO_ID})")
    ap.add_argument("--prefix", default="fclip", help="file name prefix: PREFIX-image.onnx, PREFIX-text.onnx (default fclip)")
    args = ap.parse_args()
    clip = CLIPModel.from_pretrained(args.model).eval()
    export(ImageTower(clip), torch.zeros(1, 3, 224, 224), "pixel_values", "image_embeds",
           os.path.join(args.out, f"{args.prefix}-image.onnx"), {0: "N"})
    ids = torch.zeros(1, 77, dtype=torch.int64)
    ids[0, 0], ids[0, 1] = SOT, EOT
    export(TextTower(clip), ids, "input_ids", "text_embeds", os.path.join(args.out, f"{args.prefix}-text.onnx"),
           {0: "N", 1: "L"})


if __name__ == "__main__":
    main()
