#!/usr/bin/env python3
"""Build CLIP ViT-B/32-SIZED ONNX *fixtures* with RANDOM weights (fixed seed), for memory studies.

THESE ARE NOT MODELS. Their vectors mean nothing. They exist to measure what a CLIP-sized
transformer costs in memory and time inside ONNX Runtime (core/examples/shared_weights.rs):
the same operators, tensor shapes and weight sizes as OpenAI's CLIP ViT-B/32 towers, so
MatMul weights are loaded, optimised and prepacked as a real CLIP's would be. No registry
carries real CLIP weights (see /work/shared/STACK.md).

numpy + onnx only, opset 17 (LayerNormalization), deterministic (seed 20261130).

  vit-b32-fixture-image.onnx  (--tower image, about 88M parameters, 351 MB)
    pixel_values float32 [N,3,224,224]
      -> Conv 768x3x32x32 stride 32 (patches)     -> [N,768,7,7] -> [N,49,768]
      -> class token + positions [50,768]          -> LayerNorm (pre)
      -> 12 x { x += Wo.Attention(LN(x)) (12 heads of 64); x += W2.QuickGELU(W1.LN(x)) }
         (Wq, Wk, Wv, Wo [768,768], W1 [768,3072], W2 [3072,768], each with a bias)
      -> class token -> LayerNorm -> MatMul [768,512]                => image_embeds [N,512]

  vit-b32-fixture-text.onnx   (--tower text, about 63M parameters, 253 MB)
    input_ids int64 [N,77]
      -> Gather from tokens [49408,512] + positions [77,512]
      -> 12 x the same block at width 512 (8 heads of 64, MLP 2048), causal mask
      -> LayerNorm -> the row at the EOT position (ArgMax of the ids, as Hugging Face's
         CLIP finds it) -> MatMul [512,512]                          => text_embeds [N,512]

Usage: build_vit_fixture.py --tower image|text --out FILE [--check]
  --check runs the file once with onnxruntime and checks the output's shape.
"""

import argparse
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261130
OPSET = 17
IMAGE, PATCH = 224, 32
CONTEXT, VOCAB = 77, 49408
EMBED = 512
LAYERS = 12
TOWERS = {
    # width, heads, MLP width
    "image": (768, 12, 3072),
    "text": (512, 8, 2048),
}
DOC = "pg_vision memory-study FIXTURE with RANDOM weights (seed %d): CLIP ViT-B/32-sized, not a model" % SEED


class Graph:
    """Nodes and initializers, with unique names."""

    def __init__(self, rng):
        self.rng, self.nodes, self.inits, self.n = rng, [], [], 0

    def name(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def weight(self, prefix, shape, std=0.02):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std), name))
        return name

    def const(self, prefix, value):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def layer_norm(self, x, width):
        gamma = self.const("ln_gamma", np.ones(width, dtype=np.float32))
        beta = self.const("ln_beta", np.zeros(width, dtype=np.float32))
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)

    def linear(self, x, n_in, n_out):
        y = self.op("MatMul", [x, self.weight("w", (n_in, n_out), std=n_in**-0.5)])
        return self.op("Add", [y, self.const("b", np.zeros(n_out, dtype=np.float32))])

    def block(self, x, width, heads, mlp, seq, mask=None):
        head = width // heads
        split = self.const("heads_shape", np.array([0, seq, heads, head], dtype=np.int64))
        merge = self.const("width_shape", np.array([0, seq, width], dtype=np.int64))
        h = self.layer_norm(x, width)
        q, k, v = (self.op("Reshape", [self.linear(h, width, width), split]) for _ in range(3))
        q = self.op("Transpose", [q], perm=[0, 2, 1, 3])  # [N,heads,seq,head]
        k = self.op("Transpose", [k], perm=[0, 2, 3, 1])  # [N,heads,head,seq]
        v = self.op("Transpose", [v], perm=[0, 2, 1, 3])
        scores = self.op("Mul", [self.op("MatMul", [q, k]), self.const("scale", np.array(head**-0.5, dtype=np.float32))])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        attn = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])
        attn = self.op("Reshape", [self.op("Transpose", [attn], perm=[0, 2, 1, 3]), merge])
        x = self.op("Add", [x, self.linear(attn, width, width)])
        h = self.linear(self.layer_norm(x, width), width, mlp)
        h = self.op("Mul", [h, self.op("Sigmoid", [self.op("Mul", [h, self.const("k", np.array(1.702, dtype=np.float32))])])])
        return self.op("Add", [x, self.linear(h, mlp, width)])


def image_tower(g):
    width, heads, mlp = TOWERS["image"]
    grid = IMAGE // PATCH
    x = g.op("Conv", ["pixel_values", g.weight("patch", (width, 3, PATCH, PATCH))], kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    x = g.op("Transpose", [g.op("Reshape", [x, g.const("flat", np.array([0, width, grid * grid], dtype=np.int64))])], perm=[0, 2, 1])
    batch = g.op("Slice", [g.op("Shape", ["pixel_values"]), g.const("s0", np.array([0])), g.const("s1", np.array([1]))])
    cls_shape = g.op("Concat", [batch, g.const("one_width", np.array([1, width], dtype=np.int64))], axis=0)
    cls = g.op("Expand", [g.weight("class_embedding", (1, 1, width)), cls_shape])
    x = g.op("Add", [g.op("Concat", [cls, x], axis=1), g.weight("positions", (grid * grid + 1, width))])
    x = g.layer_norm(x, width)
    for _ in range(LAYERS):
        x = g.block(x, width, heads, mlp, grid * grid + 1)
    pooled = g.op("Gather", [x, g.const("zero", np.array(0, dtype=np.int64))], axis=1)  # class token, [N,width]
    out = g.op("MatMul", [g.layer_norm(pooled, width), g.weight("proj", (width, EMBED), std=width**-0.5)])
    g.nodes[-1].output[0] = "image_embeds"
    return (
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, IMAGE, IMAGE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["N", EMBED])],
        out,
    )


def text_tower(g):
    width, heads, mlp = TOWERS["text"]
    x = g.op("Gather", [g.weight("token_embedding", (VOCAB, width)), "input_ids"], axis=0)
    x = g.op("Add", [x, g.weight("positions", (CONTEXT, width), std=0.01)])
    mask = g.const("causal_mask", np.triu(np.full((CONTEXT, CONTEXT), -1e9, dtype=np.float32), 1))
    for _ in range(LAYERS):
        x = g.block(x, width, heads, mlp, CONTEXT, mask)
    x = g.layer_norm(x, width)
    eot = g.op("ArgMax", [g.op("Cast", ["input_ids"], to=TensorProto.INT32)], axis=1, keepdims=1)  # [N,1]
    idx = g.op("Expand", [g.op("Unsqueeze", [eot, g.const("axis2", np.array([2]))]), g.const("gshape", np.array([1, 1, width]))])
    pooled = g.op("Squeeze", [g.op("GatherElements", [x, idx], axis=1), g.const("axis1", np.array([1]))])
    out = g.op("MatMul", [pooled, g.weight("text_projection", (width, EMBED), std=width**-0.5)])
    g.nodes[-1].output[0] = "text_embeds"
    return (
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", CONTEXT])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["N", EMBED])],
        out,
    )


def build(tower):
    g = Graph(np.random.default_rng(SEED + (tower == "text")))
    inputs, outputs, _ = (image_tower if tower == "image" else text_tower)(g)
    graph = helper.make_graph(g.nodes, f"vit_b32_fixture_{tower}", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pg_vision build_vit_fixture.py")
    model.ir_version = 8
    model.doc_string = DOC
    onnx.checker.check_model(model)  # the in-memory model is under 2 GB
    params = sum(int(np.prod(t.dims)) for t in g.inits)
    return model, params


def check(path, tower):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    if tower == "image":
        feed = {"pixel_values": np.random.default_rng(1).standard_normal((2, 3, IMAGE, IMAGE)).astype(np.float32)}
    else:
        ids = np.zeros((2, CONTEXT), dtype=np.int64)
        ids[:, :4] = [[49406, 320, 1125, 49407], [49406, 320, 2368, 49407]]
        feed = {"input_ids": ids}
    (out,) = s.run(None, feed)
    assert out.shape == (2, EMBED) and np.isfinite(out).all() and not np.allclose(out[0], out[1]), out.shape
    print(f"check ok: {tower} output {out.shape}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tower", choices=sorted(TOWERS), required=True)
    ap.add_argument("--out", required=True, help="the ONNX file to write")
    ap.add_argument("--check", action="store_true", help="run it once with onnxruntime")
    args = ap.parse_args()
    start = time.time()
    model, params = build(args.tower)
    tmp = args.out + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, args.out)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {params / 1e6:.1f}M parameters, {size / 1e6:.0f} MB, {time.time() - start:.0f} s - FIXTURE, random weights")
    if args.check:
        check(args.out, args.tower)


if __name__ == "__main__":
    sys.exit(main())
