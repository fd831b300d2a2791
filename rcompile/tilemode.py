"""``tile`` emulation mode: every crossbar tile with its own DAC, read noise and ADC, as ONNX.

:func:`build` rewrites the image's digital graph so that each crossbar node (Conv, Gemm,
MatMul) becomes the circuit that computes it, and onnxruntime runs the whole thing batched —
no Python loop over samples. For one crossbar node with input ``x``:

1. **DAC.** A full scale ``a`` — the largest ``|x|`` of each inference (``dynamic``; per input
   vector for Gemm/MatMul, per feature map for Conv) or of a calibration batch
   (``calibrated``) — maps ``x`` to ``v = clip(round(x / a * Q), -Q, Q)`` with
   ``Q = 2^dac_bits - 1`` magnitude codes. Row ``i`` is driven at ``read_v * v_i / Q``. An ideal
   DAC passes ``x`` through.
2. **Crossbar.** For every slice of the layer (a block of rows and column pairs on one tile), a
   Conv (over just the input channels the slice's rows touch, zero where the slice has no row) or
   a MatMul (over just its rows) whose weights are the *realised conductances* of the slice's
   physical cells times ``read_v``: its output channels are the currents of the slice's ``+``
   then ``-`` columns, the ``g_min`` leak of every driven row included.
3. **Read noise.** Every read of a cell carries relative noise ``noise_rel``. It is applied to
   the row inputs, once for the ``+`` columns and independently for the ``-`` columns (a grouped
   Conv, or a block MatMul, over the two noisy copies), which gives every column exactly the
   variance of independent cell noise, ``noise_rel^2 sum_i (read_v v_i G_ij)^2``, and keeps
   the two columns of a pair independent; columns of one group share their rows' draws. Draws
   come from a seeded bank of per-inference patterns (an initializer) picked at random per
   inference, so a batch costs a gather, not a random generator call per value.
4. **ADC** per column, ``2^adc_bits`` codes, rounding to the nearest code, over ``[lo, hi]``:
   ``dynamic``, ``min(0, min I)`` to ``max I`` of this inference and slice; ``calibrated``, the
   extremes of a calibration batch (times ``headroom``), with currents beyond clipped.
5. **Digital.** ``+`` code minus ``-`` code, times the ADC step and
   ``scale / (read_v * step * Q)``, summed over slices (one 1x1 Conv / MatMul does it all),
   times the DAC full scale, plus the chip's digital bias. The ADC's ``lo`` offset and its
   rounding cancel in the difference of a pair.

With ideal converters and no noise this computes exactly ``x @ W_effective + b``, the ``ideal``
mode, up to float32 rounding (a test checks it). The graph also outputs *probes* the energy model
reads (:class:`Probes`). Constant steps (calibrated ranges, the ADC step) are folded into the
weights and biases, so a calibrated 8-bit-or-less ADC costs a QuantizeLinear/DequantizeLinear
pair per slice on top of the crossbar products and the combining product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rcompile.device import IDEAL_BITS, Hardware
from rcompile.errors import BadImage
from rcompile.image import Image, SliceRecord
from rcompile.ir import LAYOUT_CONV


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


@dataclass(frozen=True)
class Calibration:
    """Converter ranges measured on a calibration batch (see :func:`build`, ``calibrate``)."""

    dac_max: tuple[float, ...]
    """Per layer, the largest ``|x|`` seen at the crossbar input."""
    currents: dict[tuple[int, int], tuple[float, float]]
    """Per ``(tile, slice index)``, the smallest and largest column current seen, with ``v``
    the raw input ``x`` (a calibrated DAC) or ``x`` over its per-inference full scale (a
    dynamic one)."""


@dataclass
class Built:
    model: onnx.ModelProto
    n_outputs: int
    """How many of the model's outputs are the original graph's (the rest are probes)."""
    probes: list[Probes]
    calibration: list[str] = field(default_factory=list)
    """Calibration graph only: per layer the max-|x| output, then per slice (in :attr:`slices`
    order) its min and max current outputs."""
    slices: list[tuple[int, int]] = field(default_factory=list)
    """``(tile, slice index)`` of every slice, layer by layer."""

    def read_calibration(self, outs: list[np.ndarray], layers: int) -> Calibration:
        """The :class:`Calibration` in ``outs`` (all outputs of running this graph)."""
        extra = outs[len(outs) - len(self.calibration):]
        dac = tuple(float(np.max(extra[i])) for i in range(layers))
        cur = {
            key: (float(np.min(extra[layers + 2 * i])), float(np.max(extra[layers + 2 * i + 1])))
            for i, key in enumerate(self.slices)
        }
        return Calibration(dac_max=dac, currents=cur)


class _Graph:
    """Appends nodes and initializers with fresh names; knows the opset's Reduce flavour."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        if self.opset < 13:
            raise BadImage(f"image: tile mode needs ONNX opset >= 13; the graph has {self.opset}")
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.taken = {n for node in model.graph.node for n in (*node.input, *node.output)}
        self.taken |= {t.name for t in model.graph.initializer}
        self._n = 0

    def fresh(self, hint: str) -> str:
        while True:
            self._n += 1
            name = f"rc_tile/{hint}_{self._n}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", out: str | None = None,
           **attrs: Any) -> str:
        y = out or self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [y], **attrs))
        return y

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: int = 1) -> str:
        """``op_type`` over ``axes`` (None: every axis)."""
        if axes is None:
            return self.op(op_type, [x], op_type.lower(), keepdims=keepdims)
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            ax = self.const("axes", list(axes), np.int64)
            return self.op(op_type, [x, ax], op_type.lower(), keepdims=keepdims)
        return self.op(op_type, [x], op_type.lower(), axes=list(axes), keepdims=keepdims)

    def output(self, name: str) -> None:
        self.outputs.append(onnx.ValueInfoProto(name=name))

    def row(self, x: str, dtype: int | None = None) -> str:
        """``x`` reshaped to ``[1, -1]`` (one probe row per batch)."""
        y = self.op("Reshape", [x, self.const("row", [1, -1], np.int64)], "probe")
        if dtype is not None:
            y = self.op("Cast", [y], "probe", to=dtype)
        return y


def _layer_slices(image: Image) -> list[list[tuple[int, int, SliceRecord]]]:
    out: list[list[tuple[int, int, SliceRecord]]] = [[] for _ in image.layers]
    for tile in image.tiles:
        for k, s in enumerate(tile.slices):
            out[s.layer].append((int(tile.tile), k, s))
    return out


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def build(
    image: Image,
    graph: onnx.ModelProto,
    levels: dict[int, np.ndarray],
    hw: Hardware,
    biases: list[np.ndarray],
    *,
    seed: int = 0,
    calibration: Calibration | None = None,
    calibrate: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
    bank: int = 128,
) -> Built:
    """The tile-mode model of ``image`` on a chip whose tiles hold realised ``levels``.

    ``graph`` is the image's digital graph (weights stripped), ``levels[t]`` the float level of
    every cell of tile ``t`` after programming and stuck cells, ``biases`` the chip's digital
    bias per layer. ``calibrate`` builds the calibration variant (ideal converters, no noise,
    extra outputs read by :meth:`Built.read_calibration`); a ``calibrated`` converter needs that
    :class:`Calibration`. ``shapes`` (static tensor shapes, optional) lets read noise come from
    a bank of ``bank`` patterns per slice instead of ``RandomNormalLike``.
    """
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    g = _Graph(model)
    cell, cv = hw.cell, hw.converters
    noise = 0.0 if calibrate else hw.read.noise_rel
    adc_bits = IDEAL_BITS if calibrate else cv.adc_bits
    dac_bits = IDEAL_BITS if calibrate else cv.dac_bits
    dac_fixed = cv.dac_range == "calibrated"
    adc_fixed = cv.adc_range == "calibrated"
    if not calibrate and calibration is None and (
        (dac_fixed and dac_bits < IDEAL_BITS) or (adc_fixed and adc_bits < IDEAL_BITS)
    ):
        raise ValueError("a calibrated converter range needs a Calibration")
    rng = np.random.default_rng([int(seed), 0xBA4C])
    nodes = {n.name: n for n in model.graph.node}
    per_layer = _layer_slices(image)
    probes: list[Probes] = []
    replaced: dict[str, list[onnx.NodeProto]] = {}
    built = Built(model=model, n_outputs=len(model.graph.output), probes=probes)
    cal_slices: list[str] = []
    for li, rec in enumerate(image.layers):
        op = rec.op
        node = nodes.get(op.node)
        if node is None:
            raise BadImage(f"image: the digital graph has no node '{op.node}'")
        start = len(g.nodes)
        conv = op.layout == LAYOUT_CONV
        x = node.input[0]
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            x = g.op("Transpose", [x], "xt", perm=[1, 0])
        rank = len(op.shape)
        axes = list(range(1, rank)) if conv else [-1]
        spatial = [0, *range(2, rank)]
        # 1. DAC: v in units of 1/q of the full scale (a per-inference tensor or a constant)
        a: str | None = None  # per-inference full scale
        full = 1.0  # constant full scale
        q = 1.0
        if calibrate:
            built.calibration.append(g.row(g.reduce("ReduceMax", g.op("Abs", [x]), None, 0)))
            if not dac_fixed:
                a = _dyn_scale(g, x, axes)
            v = x if a is None else g.op("Div", [x, a], "v")
            v2 = _sum_sq(g, v, conv, spatial, op.shape[0])
        elif dac_bits >= IDEAL_BITS:  # an ideal DAC: x drives the rows as it is
            v = x
            if dac_fixed and calibration is not None:
                inv_full = 1.0 / max(calibration.dac_max[li] * cv.headroom, 1e-30)
                v2 = _sum_sq(g, x, conv, spatial, op.shape[0], scale=inv_full)
            else:  # energy counts v relative to each inference's own full scale
                v2 = _sum_sq(g, g.op("Div", [x, _dyn_scale(g, x, axes)]), conv, spatial,
                             op.shape[0])
        else:
            q = float(2**dac_bits - 1)
            if dac_fixed:
                assert calibration is not None
                full = max(calibration.dac_max[li] * cv.headroom, 1e-30)
                v = g.op("Mul", [x, g.const("q", q / full)], "v")
            else:
                a = _dyn_scale(g, x, axes)
                v = g.op("Mul", [x, g.op("Div", [g.const("q", q), a])], "v")
            v = g.op("Clip", [g.op("Round", [v]), g.const("lo", -q), g.const("hi", q)], "v")
            v2 = _sum_sq(g, v, conv, spatial, op.shape[0], scale=1.0 / q)
        probe = Probes(v2=v2, in_shape=g.row(g.op("Shape", [x]), TensorProto.FLOAT),
                       conv=_conv_info(node, op) if conv else None)
        # 2.-4. every slice: crossbar currents, read noise, ADC
        slices = per_layer[li]
        if not slices:
            raise BadImage(f"image: layer {op.node} has no slice on any tile")
        unit = cell.read_v * cell.step_us * q / full  # output per unit of (I+ - I-)
        cols: list[str] = []
        coefs: list[np.ndarray] = []
        step_tensor: str | None = None  # a dynamic ADC's step, when one slice makes the layer
        for t, k, s in slices:
            built.slices.append((t, k))
            w_i = cell.read_v * _slice_conductances(levels[t], s, hw)  # [n, 2m]
            inp, w_t = (_conv_slice if conv else _mm_slice)(g, v, op, s, w_i)
            coef = _coefficients(s, op, unit)
            m2 = 2 * len(s.outs)
            bias_c: np.ndarray | None = None
            top = float(2**adc_bits - 1)
            fixed = adc_bits < IDEAL_BITS and adc_fixed
            bipolar = False
            if fixed:  # fold the ADC step into the weights, its offset into a bias
                assert calibration is not None
                lo_r, hi_r = calibration.currents[(t, k)]
                f = q / full if dac_fixed else q
                lo_c, hi_c = min(lo_r, 0.0) * f * cv.headroom, hi_r * f * cv.headroom
                bipolar = lo_c < 0
                step = max((hi_c - lo_c) / top, 1e-30)
                w_t = w_t / step
                if bipolar:
                    bias_c = np.full(m2, -lo_c / step, np.float32)
                coef = coef * np.float32(step)
            if noise > 0:
                layer_in = (shapes or {}).get(x)
                per = None
                if layer_in is not None:
                    per = ((2 * w_t.shape[1], *layer_in[2:]) if conv
                           else (*layer_in[1:-1], 2 * w_t.shape[0]))
                inp = _noisy_rows(g, inp, conv, noise, per, rng, seed, len(built.slices), bank)
                if not conv:
                    n, m = w_t.shape[0], m2 // 2
                    block = np.zeros((2 * n, m2), np.float32)
                    block[:n, :m], block[n:, m:] = w_t[:, :m], w_t[:, m:]
                    w_t = block
            cur = _mvm(g, node, conv, inp, w_t, bias_c, groups=2 if noise > 0 else 1)
            if calibrate:
                cal_slices += [g.row(g.reduce("ReduceMin", cur, None, 0)),
                               g.row(g.reduce("ReduceMax", cur, None, 0))]
            if fixed:
                cols.append(_adc_codes(g, cur, int(adc_bits), bipolar))
            elif adc_bits < IDEAL_BITS:
                lo = g.op("Min", [g.reduce("ReduceMin", cur, axes), g.const("z", 0.0)], "lo")
                hi = g.reduce("ReduceMax", cur, axes)
                step_t = g.op("Max", [
                    g.op("Mul", [g.op("Sub", [hi, lo]), g.const("inv", 1.0 / top)]),
                    g.const("tiny", 1e-30)], "adc_step")
                code = g.op("Round", [g.op("Div", [g.op("Sub", [cur, lo]), step_t])], "code")
                if len(slices) == 1:
                    step_tensor = step_t
                    cols.append(code)
                else:
                    cols.append(g.op("Mul", [code, step_t], "adc"))
            else:
                cols.append(cur)
            coefs.append(coef)
        # 5. digital: pair difference, scale, sum over slices, undo the DAC scale, bias
        cat = cols[0] if len(cols) == 1 else g.op("Concat", cols, "cols", axis=1 if conv else -1)
        coef_all = np.concatenate(coefs, axis=0)  # [sum 2m, n_out]
        scale = a
        if step_tensor is not None:
            scale = step_tensor if a is None else g.op("Mul", [a, step_tensor], "s")
        out = node.output[0]
        bias = None if node.op_type == "MatMul" else np.asarray(biases[li], np.float32)
        last = scale is None and bias is None
        if conv:
            w_c = coef_all.T.reshape(op.n_out, -1, *([1] * (rank - 2)))
            ins = [cat, g.const("combine", w_c)]
            if scale is None and bias is not None:
                ins.append(g.const("bias", bias))
                bias, last = None, True
            y = g.op("Conv", ins, "y", out=out if last else None)
        elif scale is None and bias is not None and rank == 2:
            y = g.op("Gemm", [cat, g.const("combine", coef_all), g.const("bias", bias)], "y",
                     out=out)
            bias = None
        else:
            y = g.op("MatMul", [cat, g.const("combine", coef_all)], "y", out=out if last else None)
        if scale is not None:
            y = g.op("Mul", [y, scale], "y", out=out if bias is None else None)
        if bias is not None:  # (a MatMul's bias is added by the frontend's own Add node next)
            b = bias.reshape(-1, *([1] * (rank - 2))) if conv else bias
            y = g.op("Add", [y, g.const("bias", b)], out=out)
        probes.append(probe)
        replaced[node.name] = g.nodes[start:]
        del g.nodes[start:]
    built.calibration += cal_slices
    _splice(model, g, image, nodes, replaced, biases)
    for p in probes:
        g.output(p.v2)
        g.output(p.in_shape)
    for name in built.calibration:
        g.output(name)
    model.graph.output.extend(g.outputs)
    return built


def _splice(
    model: onnx.ModelProto, g: _Graph, image: Image, nodes: dict[str, onnx.NodeProto],
    replaced: dict[str, list[onnx.NodeProto]], biases: list[np.ndarray],
) -> None:
    """Every crossbar node replaced in place (keeps topological order); weights dropped."""
    new_nodes: list[onnx.NodeProto] = []
    for n in model.graph.node:
        new_nodes.extend(replaced.get(n.name, [n]))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    drop = {rec.op.weight for rec in image.layers}
    drop |= {rec.op.bias for rec in image.layers if nodes[rec.op.node].op_type != "MatMul"}
    keep_inits = [t for t in model.graph.initializer if t.name not in drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep_inits)
    model.graph.initializer.extend(g.inits)
    for rec, b in zip(image.layers, biases, strict=True):
        if nodes[rec.op.node].op_type == "MatMul":
            model.graph.initializer.append(
                numpy_helper.from_array(np.asarray(b, np.float32), rec.op.bias)
            )
    keep_inputs = [i for i in model.graph.input if i.name not in drop]
    del model.graph.input[:]
    model.graph.input.extend(keep_inputs)
    del model.graph.value_info[:]


def _dyn_scale(g: _Graph, x: str, axes: list[int]) -> str:
    """Per-inference DAC full scale ``max |x|`` (never 0)."""
    a = g.reduce("ReduceMax", g.op("Abs", [x], "abs"), axes)
    return g.op("Max", [a, g.const("tiny", 1e-30)], "a")


def _sum_sq(
    g: _Graph, v: str, conv: bool, spatial: list[int], k: int, scale: float = 1.0
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


def _conv_info(node: onnx.NodeProto, op: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"kernel": list(op.shape[2:])}
    for name in ("strides", "pads", "dilations", "auto_pad"):
        val = _attr(node, name, None)
        if val is not None:
            info[name] = val
    return info


def _adc_codes(g: _Graph, cur: str, bits: int, bipolar: bool) -> str:
    """Codes ``clip(round(cur), 0, 2^bits - 1)`` of currents already in ADC steps."""
    top = float(2**bits - 1)
    if bits > 8:
        return g.op("Clip", [g.op("Round", [cur]), g.const("z", 0.0), g.const("top", top)],
                    "code")
    # uint8 saturation at 255 is the ADC's top code when the zero point is 255 - top
    if bipolar:
        cur = g.op("Max", [cur, g.const("z", 0.0)], "cur")
    one, zp = g.const("one", 1.0), g.const("zp", 255 - int(top), np.uint8)
    qv = g.op("QuantizeLinear", [cur, one, zp], "adc")
    return g.op("DequantizeLinear", [qv, one, zp], "code")


def _mvm(
    g: _Graph, node: onnx.NodeProto, conv: bool, inp: str, w: np.ndarray, b: np.ndarray | None,
    groups: int = 1,
) -> str:
    """The crossbar product: a Conv with the node's attributes, or a MatMul (+ bias)."""
    if conv:
        ins = [inp, g.const("w", w)] + ([g.const("b", b)] if b is not None else [])
        return g.op("Conv", ins, "cur", group=groups, **_conv_attrs(node))
    y = g.op("MatMul", [inp, g.const("w", w)], "cur")
    return y if b is None else g.op("Add", [y, g.const("b", b)], "cur")


def _slice_conductances(lv: np.ndarray, s: SliceRecord, hw: Hardware) -> np.ndarray:
    """``[n, 2m]`` realised conductances (uS) of the slice's ``+`` then ``-`` columns."""
    pr = np.asarray(s.phys_rows, np.intp)
    cols = np.concatenate([np.asarray(s.pos, np.intp), np.asarray(s.neg, np.intp)])
    return hw.cell.g_min_us + lv[np.ix_(pr, cols)] * hw.cell.step_us


def _coefficients(s: SliceRecord, op: Any, unit: float) -> np.ndarray:
    """``[2m, n_out]``: +scale/unit on each ``+`` column, -scale/unit on its ``-`` column."""
    m = len(s.outs)
    c = np.zeros((2 * m, op.n_out), np.float64)
    o = s.group * op.outs + np.asarray(s.outs, np.intp)
    sc = np.asarray(s.scale, np.float64) / unit
    c[np.arange(m), o] = sc
    c[m + np.arange(m), o] = -sc
    return c.astype(np.float32)


def _conv_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        if a.name != "group":
            out[a.name] = helper.get_attribute_value(a)
    return out


def _conv_slice(
    g: _Graph, v: str, op: Any, s: SliceRecord, w_i: np.ndarray
) -> tuple[str, np.ndarray]:
    """Input channels of one conv slice and its weight ``[2m, channels, *k]``."""
    kshape = tuple(op.shape[2:])
    cin_g = op.shape[1]
    rows = np.asarray(s.rows, np.intp)
    c, *kk = np.unravel_index(rows, (cin_g, *kshape))
    chans, local = np.unique(c, return_inverse=True)
    w = np.zeros((w_i.shape[1], chans.size, *kshape), np.float64)
    for i in range(rows.size):  # rows are few (<= tile rows); += handles repeated rows
        w[(slice(None), local[i], *(int(k[i]) for k in kk))] += w_i[i]
    absolute = s.group * cin_g + chans
    total = cin_g * op.groups
    if absolute.size == total and np.array_equal(absolute, np.arange(total)):
        inp = v
    elif np.array_equal(absolute, np.arange(absolute[0], absolute[0] + absolute.size)):
        inp = g.op("Slice", [v, g.const("s", [absolute[0]], np.int64),
                             g.const("e", [absolute[0] + absolute.size], np.int64),
                             g.const("ax", [1], np.int64)], "vin")
    else:
        inp = g.op("Gather", [v, g.const("ch", absolute, np.int64)], "vin", axis=1)
    return inp, w.astype(np.float32)


def _mm_slice(
    g: _Graph, v: str, op: Any, s: SliceRecord, w_i: np.ndarray
) -> tuple[str, np.ndarray]:
    rows = np.asarray(s.rows, np.int64)
    if rows.size == op.shape[0] and np.array_equal(rows, np.arange(op.shape[0])):
        inp = v
    elif rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
        inp = g.op("Slice", [v, g.const("s", [rows[0]], np.int64),
                             g.const("e", [rows[0] + rows.size], np.int64),
                             g.const("ax", [-1], np.int64)], "vin")
    else:
        inp = g.op("Gather", [v, g.const("rows", rows, np.int64)], "vin", axis=-1)
    return inp, w_i.astype(np.float32)


def _noisy_rows(
    g: _Graph, inp: str, conv: bool, rel: float, per: tuple[int, ...] | None,
    rng: np.random.Generator, seed: int, k: int, bank: int,
) -> str:
    """The slice input twice (for its ``+`` and its ``-`` columns), each element times
    ``1 + rel * N(0, 1)``: every read of a cell carries relative noise ``rel``, drawn per row and
    read, independently for the two column groups. Per column this is exactly the variance of
    independent cell noise, ``rel^2 sum_i (v_i G_ij)^2``; columns of one group share their rows'
    draws. Draws come from ``bank`` stored per-inference patterns picked at random
    (``RandomNormalLike`` when the input shape is unknown)."""
    axis = 1 if conv else -1
    both = g.op("Concat", [inp, inp], "vv", axis=axis)
    if per is None or bank < 1:
        z = g.op("RandomNormalLike", [both], "z", seed=float(seed * 7919 + k))
        f = g.op("Add", [g.op("Mul", [z, g.const("rel", rel)]), g.const("one", 1.0)], "f")
        return g.op("Mul", [both, f], "vnoisy")
    patterns = 1.0 + rel * rng.standard_normal((bank, *per), dtype=np.float32)
    pat = g.const("bank", patterns)
    n = g.op("Slice", [g.op("Shape", [both]), g.const("s", [0], np.int64),
                      g.const("e", [1], np.int64)], "n")
    u = g.op("RandomUniformLike", [g.op("ConstantOfShape", [n], "zeros")], "u",
             seed=float(seed * 7919 + k + 1), dtype=TensorProto.FLOAT)
    idx = g.op("Cast", [g.op("Floor", [g.op("Mul", [u, g.const("k", float(bank))])])], "idx",
               to=TensorProto.INT64)
    idx = g.op("Min", [idx, g.const("kmax", bank - 1, np.int64)], "idx")
    return g.op("Mul", [both, g.op("Gather", [pat, idx], "z", axis=0)], "vnoisy")


def add_probes(model: onnx.ModelProto, image: Image) -> tuple[onnx.ModelProto, list[Probes]]:
    """``model`` (ideal mode: the digital graph with effective weights) plus the energy probes of
    every crossbar layer, ``v = x / max|x|`` per inference (an ideal, dynamic DAC)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    nodes = {n.name: n for n in out.graph.node}
    probes = []
    for rec in image.layers:
        op = rec.op
        node = nodes[op.node]
        conv = op.layout == LAYOUT_CONV
        x = node.input[0]
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            x = g.op("Transpose", [x], "xt", perm=[1, 0])
        rank = len(op.shape)
        a = _dyn_scale(g, x, list(range(1, rank)) if conv else [-1])
        v2 = _sum_sq(g, g.op("Div", [x, a], "v"), conv, [0, *range(2, rank)], op.shape[0])
        probes.append(Probes(v2=v2, in_shape=g.row(g.op("Shape", [x]), TensorProto.FLOAT),
                             conv=_conv_info(node, op) if conv else None))
    out.graph.node.extend(g.nodes)
    out.graph.initializer.extend(g.inits)
    for p in probes:
        g.output(p.v2)
        g.output(p.in_shape)
    out.graph.output.extend(g.outputs)
    return out, probes
