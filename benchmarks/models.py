"""Benchmark workloads, built in code with ``onnx.helper`` and seeded random weights.

Nothing here is committed as a model file: :func:`write_all` writes the ONNX files into a
(temporary) directory each run.

* :func:`vgg8` — the VGG-8 of DNN+NeuroSim's CIFAR-10 example: six 3x3 convs
  128-128-256-256-512-512 (max-pool after every second), FC 8192 -> 1024 -> 10, input 3x32x32,
  about 13.0 M weights. ``width`` scales every channel count: ``width=0.25 / 0.5 / 1`` give the
  1x / 4x / 16x weight-count family the scaling benchmark uses (the first conv and the last FC
  scale linearly, the rest with ``width**2``, so the ratios are close to, not exactly, 4).
* :func:`resnet18` — ResNet-18 for ImageNet (3x224x224, 1000 classes), about 11.7 M weights:
  7x7/2 stem, four stages of two basic blocks (64-128-256-512), 1x1/2 projection shortcuts,
  global average pool, FC 512 -> 1000. BatchNorm after every conv, as a trained network has.

The dense workload is the shipped ``examples/dense`` model, not one built here.

Weights are He-normal (``seed``), so the quantised levels use the whole range like trained ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    weights: int
    """Crossbar weights (Conv/Gemm kernels; biases excluded)."""
    input_shape: tuple[int, ...]
    """Shape of one sample, without the batch axis."""


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.weights = 0
        self._n = 0

    def name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def init(self, name: str, a: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, bn: bool = False) -> str:
        n = self.name("conv")
        w = self.rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        self.weights += w.size
        ins = [x, self.init(n + ".w", w)]
        if not bn:
            ins.append(self.init(n + ".b", self.rng.normal(0, 0.01, cout)))
        p = k // 2
        self.nodes.append(helper.make_node("Conv", ins, [n], name=n, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[p, p, p, p]))
        if not bn:
            return n
        b = self.name("bn")
        args = [
            self.init(b + ".g", self.rng.uniform(0.5, 1.5, cout)),
            self.init(b + ".b", self.rng.normal(0, 0.1, cout)),
            self.init(b + ".m", self.rng.normal(0, 0.1, cout)),
            self.init(b + ".v", self.rng.uniform(0.5, 1.5, cout)),
        ]
        self.nodes.append(helper.make_node("BatchNormalization", [n, *args], [b], name=b))
        return b

    def gemm(self, x: str, k: int, n_out: int) -> str:
        n = self.name("fc")
        w = self.rng.normal(0, np.sqrt(2.0 / k), (n_out, k))
        self.weights += w.size
        self.nodes.append(helper.make_node(
            "Gemm",
            [x, self.init(n + ".w", w), self.init(n + ".b", self.rng.normal(0, 0.01, n_out))],
            [n], name=n, transB=1))
        return n

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        n = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [n], name=n, **attrs))
        return n

    def model(self, name: str, x: str, shape: tuple[int, ...], y: str, classes: int
              ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", *shape])],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", classes])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def vgg8(width: float = 1.0, seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """VGG-8 (NeuroSim CIFAR-10 shape) with every channel count scaled by ``width``."""
    b = _Builder(seed)
    ch = [max(1, round(c * width)) for c in (128, 128, 256, 256, 512, 512)]
    fc = max(1, round(1024 * width))
    x, cin = "x", 3
    for i, c in enumerate(ch):
        x = b.op("Relu", [b.conv(x, cin, c, 3)])
        cin = c
        if i % 2:
            x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x])
    x = b.op("Relu", [b.gemm(x, cin * 4 * 4, fc)])
    y = b.gemm(x, fc, 10)
    return b.model("vgg8", "x", (3, 32, 32), y, 10), b.weights


def resnet18(seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """ResNet-18 for ImageNet, BatchNorm after every conv (folded by the compiler)."""
    b = _Builder(seed)
    x = b.op("Relu", [b.conv("x", 3, 64, 7, stride=2, bn=True)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for blk in range(2):
            stride = 2 if stage > 0 and blk == 0 else 1
            h = b.op("Relu", [b.conv(x, cin, cout, 3, stride, bn=True)])
            h = b.conv(h, cout, cout, 3, 1, bn=True)
            short = b.conv(x, cin, cout, 1, stride, bn=True) if (stride, cin) != (1, cout) else x
            x = b.op("Relu", [b.op("Add", [h, short])])
            cin = cout
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    y = b.gemm(x, 512, 1000)
    return b.model("resnet18", "x", (3, 224, 224), y, 1000), b.weights


#: The scaled family: width of VGG-8 for 1x, 4x, 16x weights (16x is the real VGG-8).
SCALES: dict[str, float] = {"1x": 0.25, "4x": 0.5, "16x": 1.0}


def write(name: str, model: onnx.ModelProto, weights: int, shape: tuple[int, ...],
          directory: str) -> Workload:
    path = os.path.join(directory, f"{name}.onnx")
    onnx.save(model, path)
    return Workload(name, path, weights, shape)


def write_all(directory: str, scales: dict[str, float] | None = None, *, resnet: bool = False
              ) -> dict[str, Workload]:
    """Write VGG-8, its scaled family (``scales``, default :data:`SCALES`) and, with
    ``resnet``, ResNet-18 into ``directory``; returns them by name (``vgg8``, ``vgg8-1x``, ...).
    A width of 1 is VGG-8 itself (the same file)."""
    out: dict[str, Workload] = {}
    m, n = vgg8()
    out["vgg8"] = write("vgg8", m, n, (3, 32, 32), directory)
    if resnet:
        m, n = resnet18()
        out["resnet18"] = write("resnet18", m, n, (3, 224, 224), directory)
    for tag, width in (SCALES if scales is None else scales).items():
        if width == 1.0:
            out[f"vgg8-{tag}"] = Workload(f"vgg8-{tag}", out["vgg8"].path, out["vgg8"].weights,
                                          (3, 32, 32))
            continue
        m, n = vgg8(width)
        out[f"vgg8-{tag}"] = write(f"vgg8-{tag}", m, n, (3, 32, 32), directory)
    return out
