"""Fashion-CLIP's path through SQL against transformers, on its architecture with RANDOM
weights: the model `fclip_fixture` (scripts/fclip_fixture.sh builds it with
scripts/build_fclip_fixture.py and exports it with scripts/export_fclip.py, as make fclip
exports the real model). Its vectors mean nothing; equal vectors mean the path is right.

transformers runs in the Fashion-CLIP venv (the main venv has no torch), through
scripts/fclip_reference.py, once per module: CLIPProcessor + CLIPModel.get_image_features /
get_text_features on the fixture folder, every vector L2-normalised.

Images, every photo of the parity corpus (scripts/photos.py: EXIF-rotated, CMYK, alpha,
16-bit, phone-sized JPEGs, ...), through SQL (embed_image('fclip_fixture', ...), JPEGs with
pg_vision.jpeg_dct_scaling on and off):
  - against the model on the manifest's input (scripts/reference_embed.py's tensor through
    get_image_features): cosine >= 0.999 for every photo. The export and pg_vision's inference
    are the PyTorch model;
  - against CLIPProcessor on the file, as a transformers user calls it: cosine >= 0.999 for
    every photo whose CLIPProcessor input equals the manifest's. For the others the test
    finds the difference and fails unless it is one of these, each proven on the pixels:
      decode   CLIPProcessor takes the file as Pillow opens it: it ignores the EXIF
               orientation, drops transparency (convert("RGB") keeps the colour stored under
               transparent pixels) and clamps 16-bit values at 255; pg_vision turns the
               picture upright, composites onto white (Fashion-CLIP's product photos are on
               white) and scales 16 bits to 8. Proven: CLIPProcessor given pg_vision's
               decoded picture (`reference_embed.picture`) gives the manifest's input, or the
               crop below;
      crop     CLIPProcessor's centre crop starts at floor((size - 224) / 2), pg_vision's (the
               manifest's, torchvision's CenterCrop, which OpenAI's CLIP preprocessing uses)
               at round((size - 224) / 2), half to even: one pixel apart when the resized long
               side minus 224 is odd. Proven: the manifest's recipe with a floor crop equals
               CLIPProcessor's input.
Text: product-like captions (scripts/captions.py) through SQL (embed_text) against
get_text_features on CLIPProcessor's tokens: cosine >= 0.9999 for every caption.
"""

import io
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

import captions
import parity
import photos
import reference_embed

pytestmark = pytest.mark.usefixtures("health")

MODEL = "fclip_fixture"
IMAGE_GATE = parity.GATE  # 0.999
TEXT_GATE = 0.9999
CAPTIONS = 240
# CLIPProcessor's pixel values and the manifest's agree to float rounding (about 1e-6) when
# their recipes agree; a pixel off by one 8-bit level moves a value by 1/255/0.26 = 0.015.
SAME_PIXELS = 1e-3
SCRIPTS = os.path.join(photos.REPO, "scripts")


@pytest.fixture(scope="module")
def fixture_paths():
    """(the Fashion-CLIP venv's python, the fixture folder), or skip saying how to make them."""
    state = photos.state_dir()
    python, folder = os.path.join(state, "fclip-venv", "bin", "python"), os.path.join(state, "fclip-fixture-hf")
    for path in (python, os.path.join(folder, "model.safetensors")):
        if not os.path.exists(path):
            pytest.skip(f"{path} is missing: run scripts/fclip_fixture.sh (make test does)")
    return python, folder


@pytest.fixture(scope="module")
def manifest():
    return reference_embed.load_manifest(os.path.join(parity.MODELS_DIR, f"{MODEL}.json"))


@pytest.fixture(scope="module")
def corpus():
    return photos.corpus()


def write_request(folder, manifest, corpus, texts):
    """The request folder scripts/fclip_reference.py reads (see its docstring)."""
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "decoded"))
    tensors = []
    for i, (_, data) in enumerate(corpus):
        key = f"{i:04d}"
        with open(os.path.join(folder, "images", key), "wb") as f:
            f.write(data)
        reference_embed.picture(manifest, Image.open(io.BytesIO(data))).save(os.path.join(folder, "decoded", key + ".png"))
        tensors.append(reference_embed.preprocess(manifest, Image.open(io.BytesIO(data)))[0])
    tensors = np.stack(tensors)
    np.save(os.path.join(folder, "tensors.npy"), tensors)
    with open(os.path.join(folder, "captions.json"), "w", encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False)
    return tensors


@pytest.fixture(scope="module")
def transformers_side(fixture_paths, manifest, corpus, tmp_path_factory):
    """scripts/fclip_reference.py's answer, plus the manifest tensors sent to it."""
    python, folder = fixture_paths
    request = tmp_path_factory.mktemp("fclip_request")
    tensors = write_request(str(request), manifest, corpus, captions.product_captions(CAPTIONS))
    out = request / "answer.npz"
    subprocess.run([python, os.path.join(SCRIPTS, "fclip_reference.py"), "--model", folder, "--request", str(request),
                    "--out", str(out)], check=True)
    answer = dict(np.load(out))
    answer["tensors"] = tensors
    return answer


@pytest.fixture(scope="module")
def sql_images(app, corpus):
    """{dct: [SQL vector per photo]} with pg_vision.jpeg_dct_scaling on (True) and off."""
    return {dct: [parity.sql_embed(app, MODEL, data, dct) for _, data in corpus] for dct in (True, False)}


def cosines(vectors, references):
    return np.array([parity.cosine(v, r) for v, r in zip(vectors, references)])


def report(title, names, values):
    worst = int(np.argmin(values))
    print(f"\n  {title}: {len(values)}, min cosine {values.min():.6f} ({names[worst]}), mean {values.mean():.6f}")


def test_sql_equals_the_pytorch_model_on_the_manifest_input(corpus, transformers_side, sql_images, capsys):
    names = [n for n, _ in corpus]
    failures = []
    for dct, vectors in sql_images.items():
        c = cosines(vectors, transformers_side["image_recipe"])
        with capsys.disabled():
            report(f"SQL (jpeg_dct_scaling {'on' if dct else 'off'}) vs get_image_features(manifest input), photos",
                   names, c)
        failures += [f"{names[i]} (DCT {'on' if dct else 'off'}) {c[i]:.6f}" for i in np.flatnonzero(c < IMAGE_GATE)]
    assert not failures, "under the gate: " + ", ".join(failures)


def decode_causes(data):
    """What, in this file, CLIPProcessor's Pillow opening keeps that pg_vision's decode changes."""
    img = Image.open(io.BytesIO(data))
    causes = []
    if img.getexif().get(0x0112, 1) != 1:
        causes.append(f"EXIF orientation {img.getexif()[0x0112]} ignored")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        causes.append("16-bit values clamped at 255")
    if img.has_transparency_data:
        causes.append("transparency dropped, not composited onto white")
    return causes


def floor_crop_input(manifest, data):
    """The manifest's recipe with CLIPProcessor's centre crop (offsets floored)."""
    resized = reference_embed._resize(manifest, reference_embed.picture(manifest, Image.open(io.BytesIO(data))))
    w, h, cw, ch = *resized.size, manifest["width"], manifest["height"]
    left, top = (w - cw) // 2, (h - ch) // 2
    return reference_embed.preprocess(manifest, resized.crop((left, top, left + cw, top + ch)))[0]


def differ(a, b):
    return np.abs(a - b).max() > SAME_PIXELS


def explain(manifest, data, i, side):
    """([causes], proven?) for photo i, whose CLIPProcessor input differs from the manifest's."""
    causes, proven = [], True
    if differ(side["pixels_file"][i], side["pixels_decoded"][i]):
        named = decode_causes(data)
        causes += named or ["decoded differently, for no known reason"]
        proven = bool(named)
    if differ(side["pixels_decoded"][i], side["tensors"][i]):
        causes.append("centre crop offset floored, not rounded")
        proven &= not differ(side["pixels_decoded"][i], floor_crop_input(manifest, data))
    return causes, proven


def test_sql_against_clipprocessor_on_the_file(manifest, corpus, transformers_side, sql_images, capsys):
    side, sql = transformers_side, sql_images[True]
    names = [n for n, _ in corpus]
    c_file = cosines(sql, side["image_file"])
    c_decoded = cosines(sql, side["image_decoded"])
    same, failures, lines = [], [], []
    for i, (name, data) in enumerate(corpus):
        if not differ(side["pixels_file"][i], side["tensors"][i]):
            same.append(i)
            if c_file[i] < IMAGE_GATE:
                failures.append(f"{name}: same input, cosine {c_file[i]:.6f}")
            continue
        causes, proven = explain(manifest, data, i, side)
        lines.append(f"    {name:28} cosine {c_file[i]:.6f} (CLIPProcessor on pg_vision's decode: {c_decoded[i]:.6f}): "
                     + "; ".join(causes) + ("" if proven else "  NOT PROVEN"))
        if not proven:
            failures.append(f"{name}: " + "; ".join(causes) + " (not what the pixels show)")
    with capsys.disabled():
        report("SQL vs CLIPProcessor + get_image_features on the file, photos where the inputs agree",
               [names[i] for i in same], c_file[same])
        print(f"  {len(lines)} photos where CLIPProcessor's input differs from the manifest's, and why:")
        print("\n".join(lines))
    assert not failures, "\n".join(failures)


def test_text_equals_get_text_features(app, transformers_side, capsys):
    texts = captions.product_captions(CAPTIONS)
    vectors = [parity.sql_vector(app, "SELECT embed_text(%s, %s)::text", [MODEL, t]) for t in texts]
    c = cosines(vectors, transformers_side["text"])
    with capsys.disabled():
        report("SQL embed_text vs get_text_features(CLIPProcessor tokens), captions", texts, c)
    failures = [f"{texts[i]!r} {c[i]:.6f}, transformers' ids {ids_of(transformers_side, i)}"
                for i in np.flatnonzero(c < TEXT_GATE)]
    assert not failures, "under the gate:\n" + "\n".join(failures)


def ids_of(side, i):
    ids = side["text_ids"][i].tolist()
    return ids[: ids.index(49407) + 1]
