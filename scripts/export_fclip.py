#!/usr/bin/env python3
"""Exports Fashion-CLIP (patrickjohncyh/fashion-clip, ViT-B/32) to ONNX for pg_vision.

Writes fclip-image.onnx: input `pixel_values` float32 [N,3,224,224] (CLIP's recipe, done by
pg_vision from models/fclip.json), output `image_embeds` [N,512] = visual_projection of the
pooled vision output; and fclip-text.onnx: input `input_ids` int64 [N,77] (CLIP BPE, done by
pg_vision), output `text_embeds` [N,512] = text_projection of the EOT token's state. CLIP's
text attention is causal, so the zero padding after EOT cannot change the result and no
attention mask is needed. pg_vision L2-normalises both.

Needs internet (Hugging Face) and torch + transformers (scripts/requirements-fclip.txt).
Usage: export_fclip.py --out DIR
"""
import argparse
import os

import torch
from transformers import CLIPModel

REPO_ID = "patrickjohncyh/fashion-clip"


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    clip = CLIPModel.from_pretrained(REPO_ID).eval()
    dummy = torch.zeros(1, 3, 224, 224)
    path = os.path.join(args.out, "fclip-image.onnx")
    torch.onnx.export(
        ImageTower(clip), (dummy,), path,
        input_names=["pixel_values"], output_names=["image_embeds"],
        dynamic_axes={"pixel_values": {0: "N"}, "image_embeds": {0: "N"}}, opset_version=17,
    )
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    ids = torch.zeros(1, 77, dtype=torch.int64)
    ids[0, 0], ids[0, 1] = 49406, 49407
    path = os.path.join(args.out, "fclip-text.onnx")
    torch.onnx.export(
        TextTower(clip), (ids,), path,
        input_names=["input_ids"], output_names=["text_embeds"],
        dynamic_axes={"input_ids": {0: "N"}, "text_embeds": {0: "N"}}, opset_version=17,
    )
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
