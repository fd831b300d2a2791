"""Energy probes: extra graph outputs that tell the energy model how hard each crossbar layer's
rows were driven (:mod:`rcompile.energy`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from rcompile.image import Image
from rcompile.ir import LAYOUT_CONV
from rcompile.runtime.tilemode.onnxgraph import GraphWriter, node_attr


@dataclass(frozen=True)
class Probes:
    """Extra graph outputs of one crossbar layer (2-D, one row per batch) and what reads them."""

    v2: str
    """``[1, channels]`` per batch: sum over samples and positions of ``(v / full scale)^2``
    per input channel (Conv) or feature (Gemm/MatMul)."""
    in_shape: str
    """``[1, rank]`` per batch: shape of the layer input (after a Gemm ``transA``)."""
    conv: dict[str, Any] | None = None
    """Conv attributes (kernel, strides, pads, dilations, auto_pad) to count output positions;
    None for Gemm/MatMul."""

    def positions(self, in_shape: tuple[int, ...]) -> tuple[int, int]:
        """``(input positions, output positions)`` per sample: MVMs the layer needs."""
        if self.conv is None:
            n = int(np.prod(in_shape[1:-1], dtype=np.int64))
            return n, n
        spatial = in_shape[2:]
        k = self.conv["kernel"]
        s = self.conv.get("strides") or [1] * len(k)
        d = self.conv.get("dilations") or [1] * len(k)
        p = self.conv.get("pads") or [0] * (2 * len(k))
        auto = self.conv.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        out = []
        for i, n in enumerate(spatial):
            if auto in ("SAME_UPPER", "SAME_LOWER"):
                out.append(-(-n // s[i]))
            else:
                span = d[i] * (k[i] - 1) + 1
                out.append((n + p[i] + p[i + len(k)] - span) // s[i] + 1)
        return int(np.prod(spatial, dtype=np.int64)), int(np.prod(out, dtype=np.int64))


def add_probes(model: onnx.ModelProto, image: Image) -> tuple[onnx.ModelProto, list[Probes]]:
    """``model`` (ideal mode: the digital graph with effective weights) plus the energy probes of
    every crossbar layer, ``v = x / max|x|`` per inference (an ideal, dynamic DAC)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = GraphWriter(out)
    nodes = {n.name: n for n in out.graph.node}
    probes = []
    for rec in image.layers:
        op = rec.op
        node = nodes[op.node]
        conv = op.layout == LAYOUT_CONV
        x = node.input[0]
        if node.op_type == "Gemm" and node_attr(node, "transA", 0):
            x = g.op("Transpose", [x], "xt", perm=[1, 0])
        rank = len(op.shape)
        a = dynamic_scale(g, x, list(range(1, rank)) if conv else [-1])
        if conv:  # the full scale is one number per sample: divide the per-sample sums instead
            per_sample = g.reduce("ReduceSumSquare", x, list(range(2, rank)))  # [N, C, 1..]
            scaled = g.op("Div", [per_sample, g.op("Mul", [a, a], "a2")], "v2n")
            v2 = g.row(g.reduce("ReduceSum", scaled, [0, *range(2, rank)]))
        else:
            v2 = sum_squares(g, g.op("Div", [x, a], "v"), conv, [0, *range(2, rank)], op.shape[0])
        probes.append(Probes(v2=v2, in_shape=g.row(g.op("Shape", [x]), TensorProto.FLOAT),
                             conv=conv_info(node, op) if conv else None))
    out.graph.node.extend(g.nodes)
    out.graph.initializer.extend(g.inits)
    for p in probes:
        g.output(p.v2)
        g.output(p.in_shape)
    out.graph.output.extend(g.outputs)
    return out, probes


def dynamic_scale(g: GraphWriter, x: str, axes: list[int]) -> str:
    """Per-inference DAC full scale ``max |x|`` (never 0)."""
    a = g.reduce("ReduceMax", g.op("Abs", [x], "abs"), axes)
    return g.maximum(a, 1e-30, "a")


def sum_squares(
    g: GraphWriter, v: str, conv: bool, spatial: list[int], k: int, scale: float = 1.0
) -> str:
    """Probe: ``sum (scale * v)^2`` over samples and positions, per channel, as ``[1, C]``."""
    if conv:
        s = g.reduce("ReduceSumSquare", v, spatial)
    else:
        flat = g.op("Reshape", [v, g.const("kshape", [-1, k], np.int64)])
        s = g.reduce("ReduceSumSquare", flat, [0])
    if scale != 1.0:
        s = g.op("Mul", [s, g.const("sq", scale * scale)], "v2")
    return g.row(s)


def conv_info(node: onnx.NodeProto, op: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"kernel": list(op.shape[2:])}
    for name in ("strides", "pads", "dilations", "auto_pad"):
        val = node_attr(node, name, None)
        if val is not None:
            info[name] = val
    return info

