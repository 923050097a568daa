#!/usr/bin/env python3
"""Builds Fashion-CLIP's architecture with RANDOM weights, as a Hugging Face model folder.

THIS IS NOT FASHION-CLIP. Its weights are transformers' own random initialisation with a
fixed seed; its vectors mean nothing. Fashion-CLIP's trained weights exist only on Hugging
Face (no package registry carries them), but its architecture, its preprocessing and its
tokeniser can be rebuilt offline. With them, the whole path that `make fclip` takes for
the real model runs here: the folder is exported by the project's own exporter
(scripts/export_fclip.py --model FOLDER), installed as the model `fclip_fixture`
(models/fclip_fixture.json, Fashion-CLIP's manifest recipe), and compared through SQL with
transformers' CLIPProcessor + CLIPModel (pgrx-tests/python/test_fclip_parity.py).

What it writes into --out (as `save_pretrained` writes a model repository):
  config.json, model.safetensors   CLIPModel(CLIP_CONFIG), weights from torch.manual_seed(SEED)
                                   and transformers' `_init_weights` (about 600 MB, float32);
  preprocessor_config.json         CLIPImageProcessor with Fashion-CLIP's settings (IMAGE_PROCESSOR);
  vocab.json, merges.txt,          CLIPTokenizerFast over CLIP's BPE vocabulary, derived offline
  tokenizer.json, ...              from open_clip_torch's bpe_simple_vocab_16e6.txt.gz by
                                   scripts/tokenizer_fixture.py's write_vocab (the same derivation
                                   as the tokenizer-equivalence fixture), checked on known ids.

Deterministic on a given machine and package set (pinned in scripts/requirements-fclip.txt).
Runs in the Fashion-CLIP venv ($STATE/fclip-venv, scripts/fclip_venv.sh), about 10 s.
Usage: build_fclip_fixture.py --out DIR
"""

import argparse
import os
import sys
import tempfile

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_fixture import check_known_ids, open_clip_dir, write_vocab  # noqa: E402

SEED = 20261130

# patrickjohncyh/fashion-clip's configuration. Its model card: FashionCLIP is fine-tuned from
# a ViT-B/32 CLIP checkpoint (OpenAI's, then for FashionCLIP 2.0 laion/CLIP-ViT-B-32-laion2B-
# s34B-b79K) "while keeping the architecture the same", which is openai/clip-vit-base-patch32's.
# Written out field by field from that repository's config.json (not taken from CLIPConfig's
# defaults, which a transformers release may change), including its legacy token ids:
# eos_token_id 2 makes CLIPTextTransformer pool the state at the argmax of the ids, where
# EOT (49407, the largest id) stands.
TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "projection_dim": 512,
}
VISION_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "projection_dim": 512,
}
CLIP_CONFIG = {"projection_dim": 512, "logit_scale_init_value": 2.6592, "initializer_factor": 1.0}

# patrickjohncyh/fashion-clip's preprocessor_config.json (CLIP's): shortest side to 224,
# bicubic (PIL resample 3), centre crop 224x224, rescale by 1/255, CLIP's mean and std, RGB.
IMAGE_PROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
}
CONTEXT = 77


def random_model():
    """CLIPModel with Fashion-CLIP's configuration and transformers' initialisation, seeded."""
    config = CLIPConfig(text_config=TEXT_CONFIG, vision_config=VISION_CONFIG, **CLIP_CONFIG)
    torch.manual_seed(SEED)
    return CLIPModel(config).eval()


def tokenizer():
    """CLIPTokenizerFast over the vocabulary derived offline from open_clip_torch's BPE file."""
    with tempfile.TemporaryDirectory() as folder:
        write_vocab(os.path.join(open_clip_dir(), "bpe_simple_vocab_16e6.txt.gz"), folder)
        tok = CLIPTokenizerFast(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                                model_max_length=CONTEXT)
    check_known_ids({"CLIPTokenizerFast": lambda text: tok(text)["input_ids"]})
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write the model into (created)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model = random_model()
    model.save_pretrained(args.out, safe_serialization=True)
    CLIPProcessor(image_processor=CLIPImageProcessor(**IMAGE_PROCESSOR), tokenizer=tokenizer()).save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: CLIPModel with Fashion-CLIP's configuration, {params / 1e6:.1f}M parameters, "
          f"RANDOM weights (seed {SEED}), its CLIPProcessor")


if __name__ == "__main__":
    main()
