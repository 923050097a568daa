#!/usr/bin/env python3
"""Build a TINY CLIP-shaped ONNX *fixture* with RANDOM weights (fixed seed).

THIS IS NOT A MODEL. Its vectors mean nothing. It exists only to test pg_vision's CLIP
contract (two towers, tensor names, shapes, int64 token ids, EOT pooling, dimensions)
without a real CLIP, which no package registry carries (see /work/shared/STACK.md).
Its manifest is models/clip_fixture.json.

Two graphs, numpy + onnx only, opset 13, deterministic (seed 20261128):

  clip-fixture-image.onnx
    pixel_values float32 [N,3,224,224]
      -> AveragePool 32x32 / 32  -> [N,3,7,7] -> Flatten -> [N,147]
      -> MatMul random [147,512] + bias                      => image_embeds [N,512]

  clip-fixture-text.onnx
    input_ids int64 [N,L], L from 1 to 77 (a dynamic axis, as scripts/export_fclip.py
    exports CLIP: pg_vision then feeds a text's ids only up to its EOT)
      -> Gather from a random token table [49408,32] + the first L rows of a random
         position table [77,32]
      -> CumSum over the sequence axis (a stand-in for CLIP's causal attention: position t
         sees tokens 0..t and nothing after it)
      -> the row at the EOT position, found as Hugging Face CLIP does it:
         ArgMax(Cast(input_ids, int32), axis=-1)  (EOT, 49407, is the largest id)
         then GatherElements on the sequence axis
      -> Tanh -> MatMul random [32,512]                      => text_embeds [N,512]

So the text output depends on every token up to and including EOT, and on nothing after
it (padding), as in CLIP. Neither graph is L2-normalised; the manifest asks pg_vision to.

Usage: build_clip_fixture.py --out DIR [--check]
  writes DIR/clip-fixture-image.onnx and DIR/clip-fixture-text.onnx;
  --check then runs both with onnxruntime and asserts shapes and the EOT contract.
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261128
OPSET = 13
IMAGE_SIZE = 224
POOL = 32  # 224 / 32 = 7
DIM = 512
VOCAB = 49408
WIDTH = 32
CONTEXT = 77
SOT, EOT = 49406, 49407

IMAGE_FILE = "clip-fixture-image.onnx"
TEXT_FILE = "clip-fixture-text.onnx"
DOC = "pg_vision test FIXTURE with RANDOM weights (seed %d): not a model, its vectors mean nothing" % SEED


def _model(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pg_vision build_clip_fixture.py")
    # The ir_version onnx.helper picks can be newer than older runtimes accept; opset 13 needs only 7.
    model.ir_version = 7
    model.doc_string = DOC
    onnx.checker.check_model(model)
    return model


def image_tower(rng):
    pooled = 3 * (IMAGE_SIZE // POOL) ** 2
    w = (rng.standard_normal((pooled, DIM)) / np.sqrt(pooled)).astype(np.float32)
    b = (rng.standard_normal(DIM) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["pixel_values"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "clip_fixture_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["N", DIM])],
        [numpy_helper.from_array(w, "proj"), numpy_helper.from_array(b, "bias")],
    )
    return _model(graph)


def text_tower(rng):
    # CLIP initialises its token embedding with std 0.02 and its positions with 0.01.
    tokens = (rng.standard_normal((VOCAB, WIDTH)) * 0.02).astype(np.float32)
    positions = (rng.standard_normal((CONTEXT, WIDTH)) * 0.01).astype(np.float32)
    proj = (rng.standard_normal((WIDTH, DIM)) / np.sqrt(WIDTH)).astype(np.float32)
    inits = [
        numpy_helper.from_array(tokens, "token_embedding"),
        numpy_helper.from_array(positions, "position_embedding"),
        numpy_helper.from_array(proj, "text_projection"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "seq_axis"),
        numpy_helper.from_array(np.array([1, 1, WIDTH], dtype=np.int64), "gather_shape"),
    ]
    nodes = [
        helper.make_node("Gather", ["token_embedding", "input_ids"], ["tok"], axis=0),  # [N,L,WIDTH]
        # Positions 0 .. L-1 of the table, L = the ids' length: any length up to CONTEXT.
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "seq_axis"], ["length"], axis=0),
        helper.make_node("Range", ["zero", "length", "one"], ["position_ids"]),
        helper.make_node("Gather", ["position_embedding", "position_ids"], ["pos"], axis=0),  # [L,WIDTH]
        helper.make_node("Add", ["tok", "pos"], ["x"]),
        helper.make_node("CumSum", ["x", "seq_axis"], ["hidden"]),  # causal stand-in
        # EOT position as HF CLIP finds it: argmax over the (int) ids.
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("ArgMax", ["ids32"], ["eot"], axis=1, keepdims=1),  # [N,1]
        helper.make_node("Unsqueeze", ["eot", "seq_axis_2"], ["eot3"]),  # [N,1,1]
        helper.make_node("Expand", ["eot3", "gather_shape"], ["eot_idx"]),  # [N,1,WIDTH]
        helper.make_node("GatherElements", ["hidden", "eot_idx"], ["pooled3"], axis=1),  # [N,1,WIDTH]
        helper.make_node("Squeeze", ["pooled3", "seq_axis_1"], ["pooled"]),  # [N,WIDTH]
        helper.make_node("Tanh", ["pooled"], ["act"]),
        helper.make_node("MatMul", ["act", "text_projection"], ["text_embeds"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([2], dtype=np.int64), "seq_axis_2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis_1"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "clip_fixture_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "L"])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["N", DIM])],
        inits,
    )
    return _model(graph)


def _ids(*tokens):
    row = np.zeros(CONTEXT, dtype=np.int64)
    seq = [SOT, *tokens, EOT]
    row[: len(seq)] = seq
    return row


def check(out_dir):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    image = ort.InferenceSession(os.path.join(out_dir, IMAGE_FILE), opts, providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(os.path.join(out_dir, TEXT_FILE), opts, providers=["CPUExecutionProvider"])
    assert [i.name for i in image.get_inputs()] == ["pixel_values"]
    assert [o.name for o in image.get_outputs()] == ["image_embeds"]
    assert [i.name for i in text.get_inputs()] == ["input_ids"] and text.get_inputs()[0].type == "tensor(int64)"
    assert [o.name for o in text.get_outputs()] == ["text_embeds"]

    px = np.random.default_rng(1).standard_normal((2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    (img,) = image.run(None, {"pixel_values": px})
    assert img.shape == (2, DIM) and img.dtype == np.float32 and np.isfinite(img).all(), img.shape
    assert not np.allclose(img[0], img[1])

    cat = _ids(320, 1125, 539, 320, 2368)  # "a photo of a cat"
    dog = _ids(320, 1125, 539, 320, 1929)  # same prefix, different last word
    short = _ids(320, 1125)  # EOT earlier
    junk = cat.copy()
    junk[10:] = 12345  # garbage after EOT: must not matter (ids < EOT, so argmax still finds EOT)
    empty = _ids()
    batch = np.stack([cat, dog, short, cat, junk, empty])
    (txt,) = text.run(None, {"input_ids": batch})
    assert txt.shape == (6, DIM) and txt.dtype == np.float32 and np.isfinite(txt).all(), txt.shape
    assert not np.allclose(txt[0], txt[1]), "different strings must give different vectors"
    assert not np.allclose(txt[0], txt[2]), "the EOT position must matter"
    assert not np.allclose(txt[0], txt[5])
    assert np.array_equal(txt[0], txt[3]), "identical strings must give identical vectors"
    assert np.allclose(txt[0], txt[4], atol=1e-6), "tokens after EOT must not matter"
    (one,) = text.run(None, {"input_ids": cat[None, :]})
    assert np.allclose(one[0], txt[0], atol=1e-6), "batching must not change a row"
    (cut,) = text.run(None, {"input_ids": cat[None, :7]})  # SOT + 5 tokens + EOT
    assert np.array_equal(cut[0], one[0]), "cutting the ids after EOT must not change the vector"
    print(f"check ok: image_embeds {img.shape}, text_embeds {txt.shape}; EOT pooling verified")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for the two ONNX files")
    ap.add_argument("--check", action="store_true", help="run both graphs with onnxruntime and check the contract")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for name, model in ((IMAGE_FILE, image_tower(rng)), (TEXT_FILE, text_tower(rng))):
        path = os.path.join(args.out, name)
        tmp = path + ".tmp"
        onnx.save(model, tmp)
        os.replace(tmp, path)
        print(f"wrote {path} ({os.path.getsize(path)} bytes) - FIXTURE, random weights")
    if args.check:
        check(args.out)


if __name__ == "__main__":
    sys.exit(main())
