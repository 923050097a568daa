#!/usr/bin/env python3
"""Product-like captions, the text counterpart of photos.py: a fixed, deterministic list of
shop queries and titles (colours, materials, garments, styles, details, some with accents,
hyphens, apostrophes, sizes and numbers), for the text parity test
(pgrx-tests/python/test_fclip_parity.py) and the text benchmark (scripts/bench/fclip.py).

They are what a fashion shop's search box receives, not adversarial strings (those are the
tokenizer-equivalence fixture's, core/tests/data/clip_tokens.json).

Usage: captions.py [N]   prints the first N (default all)
As a module: product_captions(n=240) -> [str]
"""

import itertools
import random
import sys

SEED = 20261130
COLOURS = ["red", "navy", "black", "off-white", "écru", "camel", "olive green", "dusty pink", "charcoal grey",
           "burgundy", "ivory", "rosé", "fuchsia", "teal", "mustard yellow", "café au lait", "sky blue", "sand"]
MATERIALS = ["cotton", "merino wool", "linen", "silk", "cashmere", "denim", "suede", "leather", "crêpe de chine",
             "bouclé", "lamé", "piqué", "moiré satin", "organic cotton", "recycled polyester", "corduroy"]
GARMENTS = ["summer dress", "trench coat", "t-shirt", "hoodie", "blazer", "slim-fit jeans", "maxi skirt", "cardigan",
            "ankle boots", "sneakers", "crossbody bag", "puffer jacket", "polo shirt", "wide-leg trousers", "beanie",
            "loafers", "parka", "midi skirt", "tote bag", "chelsea boots", "bikini top", "shirt dress", "sweatshirt"]
FEATURES = ["with brass buttons", "with floral print", "with ruffled sleeves", "with a belted waist",
            "with broderie anglaise", "with appliqué flowers", "with contrast stitching", "with a hood",
            "with side pockets", "with gold hardware"]
STYLES = ["striped", "polka-dot", "cropped", "oversized", "double-breasted", "quilted", "pleated", "sleeveless", "vintage",
          "hand-knitted", "relaxed-fit", "high-waisted"]
WHO = ["women's", "men's", "kids'", "unisex", "girls'", "boys'"]
SIZES = ["size M", "XL", "EU 38", "US 10.5", "one size", "32x34", "UK 8", "size 42"]
TEMPLATES = [
    "{colour} {garment}",
    "{colour} {material} {garment}",
    "{who} {colour} {garment} {feature}",
    "{material} {garment} {feature}, {colour}",
    "{style} {colour} {garment} in {material}",
    "a photo of a {colour} {material} {garment}",
    "{who} {garment}, {colour}, {size}",
    "{colour} and {colour2} {style} {garment} {feature}",
]


def product_captions(n=240):
    """The first n captions (a fixed sequence: same seed, same lists, same captions)."""
    rng = random.Random(SEED)
    out, seen = [], set()
    for template in itertools.cycle(TEMPLATES):
        caption = template.format(colour=rng.choice(COLOURS), colour2=rng.choice(COLOURS), material=rng.choice(MATERIALS),
                                  garment=rng.choice(GARMENTS), feature=rng.choice(FEATURES), style=rng.choice(STYLES),
                                  who=rng.choice(WHO),
                                  size=rng.choice(SIZES))
        if caption not in seen:
            seen.add(caption)
            out.append(caption)
        if len(out) == n:
            return out


if __name__ == "__main__":
    for line in product_captions(int(sys.argv[1]) if len(sys.argv) > 1 else 240):
        print(line)
