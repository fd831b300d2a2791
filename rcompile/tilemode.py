"""``tile`` emulation mode: every crossbar tile with its own DAC, read noise and ADC, as ONNX.

:func:`build` rewrites the image's digital graph so that each crossbar node (Conv, Gemm,
MatMul) becomes the circuit that computes it, and onnxruntime runs the whole thing batched —
no Python loop over samples. For one crossbar node with input ``x``:

1. **DAC.** ``a = max |x|`` per inference (per input vector for Gemm/MatMul, per feature map
   for Conv) sets the full-scale row voltage; ``v = round(x / a * Q) `` with ``Q = 2^dac_bits - 1``
   magnitude codes (no rounding for an ideal DAC). Row ``i`` is driven at ``read_v * v_i / Q``.
2. **Crossbar.** For every slice of the layer (a block of rows and column pairs on one tile), a
   Conv (over just the input channels the slice's rows touch, zero where the slice has no row) or
   a MatMul (over just its rows) whose weights are the *realised conductances* of the slice's
   physical cells times ``read_v``: its output channels are the currents of the slice's ``+``
   and ``-`` columns, in microamperes per unit of ``v``, the ``g_min`` leak of every driven row
   included.
3. **Read noise.** Each cell's current has standard deviation ``noise_rel * G`` per read, so a
   column's current gets ``N(0, noise_rel^2 * sum_i (read_v v_i G_ij)^2)`` — the variance is a
   second Conv/MatMul of ``v^2`` with ``(noise_rel read_v G)^2``. Standard normals come from a
   seeded bank (an initializer) read at a random offset per batch and slice, so a batch costs a
   copy, not a call to a random generator per value.
4. **ADC** per column, ``adc_bits`` codes over the slice's range (``dynamic``: ``min(0, min I)``
   to ``max I`` of this inference; ``calibrated``: fixed, from a calibration batch).
5. **Digital.** The codes times the ADC step, ``+`` column minus ``-`` column, times
   ``scale / (read_v * step * Q)``, summed over slices (one 1x1 Conv / MatMul does all of it),
   times ``a``, plus the chip's digital bias.

With ideal converters and no noise this computes exactly ``x @ W_effective + b``, the ``ideal``
mode, up to float32 rounding (a test checks it). The graph also outputs *probes* the energy model
reads: per crossbar layer the sum of ``v^2`` per input channel and the shapes of its input and
output (:class:`Probes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rcompile.device import Hardware
from rcompile.errors import BadImage
from rcompile.image import Image, SliceRecord
from rcompile.ir import LAYOUT_CONV

#: Upper bound of the noise bank, in float32 values (128 MiB); larger column tensors draw their
#: noise with RandomNormalLike instead.
MAX_BANK = 1 << 25
_BANK_SLACK = 1 << 17


@dataclass(frozen=True)
class Probes:
    """Names of the extra graph outputs of one crossbar layer (all 2-D, one row per batch)."""

    v2: str
    """``[1, channels]`` per batch: sum over samples and positions of ``v^2`` (DAC units)."""
    in_shape: str
    """``[1, rank]`` per batch: shape of the layer input (after a Gemm ``transA``)."""
    out_shape: str
    """``[1, rank]`` per batch: shape of the layer output."""
    dac_q: float
    """``Q``: ``v`` is in units of ``1/Q`` of full scale."""


@dataclass
class Built:
    model: onnx.ModelProto
    n_outputs: int
    """How many of the model's outputs are the original graph's (the rest are probes)."""
    probes: list[Probes]
    calibration: list[tuple[str, str]] = field(default_factory=list)
    """Per slice (in :attr:`slices` order) the names of its ``[1, 1]`` min/max current outputs
    (only for a calibration graph)."""
    slices: list[tuple[int, int]] = field(default_factory=list)
    """``(tile, slice index)`` of every slice, layer by layer."""


class _Graph:
    """Appends nodes and initializers with fresh names; knows the opset's Reduce flavour."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        if self.opset < 11:
            raise BadImage(f"image: tile mode needs ONNX opset >= 11; the graph has {self.opset}")
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

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        new_style = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if new_style:
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
    adc_ranges: dict[tuple[int, int], tuple[float, float]] | None = None,
    calibrate: bool = False,
    max_column_values: int | None = None,
) -> Built:
    """The tile-mode model of ``image`` on a chip whose tiles hold realised ``levels``.

    ``graph`` is the image's digital graph (weights stripped), ``levels[t]`` the float level of
    every cell of tile ``t`` after programming and stuck cells, ``biases`` the chip's digital
    bias per layer. ``calibrate`` builds the calibration variant (ideal ADC, per-slice min/max
    current outputs); ``adc_ranges[(tile, slice)] = (lo, hi)`` are then the ``calibrated``
    ranges. ``max_column_values`` bounds the values of one slice's column-current tensor in
    one batch (sizes the noise bank; None = no bank, RandomNormalLike).
    """
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    g = _Graph(model)
    cell, conv_ = hw.cell, hw.converters
    noise = 0.0 if calibrate else hw.read.noise_rel
    adc_on = conv_.adc_bits < 24 and not calibrate
    q_dac = float(2**conv_.dac_bits - 1) if conv_.dac_bits < 24 else 1.0
    bank = None
    bank_size = 0
    if noise > 0 and max_column_values:
        bank_size = min(MAX_BANK, int(max_column_values) + _BANK_SLACK)
        rng = np.random.default_rng([seed, 0xBA4C])
        bank = g.const("noise_bank", rng.standard_normal(bank_size, dtype=np.float32))
    nodes = {n.name: n for n in model.graph.node}
    per_layer = _layer_slices(image)
    probes: list[Probes] = []
    replaced: dict[str, list[onnx.NodeProto]] = {}
    built = Built(model=model, n_outputs=len(model.graph.output), probes=probes)
    noise_k = 0
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
        # 1. DAC: per-inference full scale, magnitude codes
        a = g.reduce("ReduceMax", g.op("Abs", [x], "abs"), axes)
        a = g.op("Max", [a, g.const("tiny", 1e-30)], "a")
        if q_dac > 1:
            v = g.op("Round", [g.op("Mul", [x, g.op("Div", [g.const("q", q_dac), a])])], "v")
        else:
            v = g.op("Div", [x, a], "v")
        v2 = g.op("Mul", [v, v], "v2")
        if conv:
            chan = [0, *range(2, rank)]
            v2s = g.reduce("ReduceSum", v2, chan)
        else:
            flat = g.op("Reshape", [v2, g.const("kshape", [-1, op.shape[0]], np.int64)])
            v2s = g.reduce("ReduceSum", flat, [0])
        names = Probes(
            v2=g.row(v2s), in_shape=g.row(g.op("Shape", [x]), TensorProto.FLOAT),
            out_shape="", dac_q=q_dac,
        )
        # 2.-4. every slice: crossbar currents, read noise, ADC
        cols: list[str] = []
        coefs: list[np.ndarray] = []
        single_scale: str | None = None
        slices = per_layer[li]
        if not slices:
            raise BadImage(f"image: layer {op.node} has no slice on any tile")
        for t, k, s in slices:
            built.slices.append((t, k))
            gcells = _slice_conductances(levels[t], s, hw)  # [n, 2m] uS
            w_i = hw.cell.read_v * gcells
            if conv:
                inp, w_t, wn_t = _conv_slice(g, v, op, s, w_i, noise * w_i)
                cur = g.op("Conv", [inp, g.const("w", w_t)], "cur", **_conv_attrs(node))
            else:
                inp, w_t, wn_t = _mm_slice(g, v, op, s, w_i, noise * w_i)
                cur = g.op("MatMul", [inp, g.const("w", w_t)], "cur")
            if noise > 0:
                sq = g.op("Mul", [inp, inp], "vsq")
                if conv:
                    var = g.op("Conv", [sq, g.const("wn", wn_t)], "var", **_conv_attrs(node))
                else:
                    var = g.op("MatMul", [sq, g.const("wn", wn_t)], "var")
                std = g.op("Sqrt", [var], "std")
                z = _normals(g, cur, bank, bank_size, seed, noise_k, max_column_values)
                noise_k += 1
                cur = g.op("Add", [cur, g.op("Mul", [std, z])], "cur")
            if calibrate:
                lo = g.row(g.op("ReduceMin", [cur], "cal", keepdims=0))
                hi = g.row(g.op("ReduceMax", [cur], "cal", keepdims=0))
                built.calibration.append((lo, hi))
            coef = _coefficients(s, op, rec.op.outs, cell.read_v * cell.step_us * q_dac)
            if adc_on:
                levels_n = float(2**conv_.adc_bits)
                widen = (1.0 + 2.0 ** -(conv_.adc_bits + 1)) / levels_n
                if conv_.adc_range == "calibrated" and adc_ranges is not None:
                    lo_c, hi_c = adc_ranges[(t, k)]
                    lo_c, hi_c = min(lo_c, 0.0) * conv_.adc_headroom, hi_c * conv_.adc_headroom
                    delta = max((hi_c - lo_c) / levels_n, 1e-30)
                    code = g.op("Floor", [g.op("Mul", [
                        g.op("Sub", [cur, g.const("lo", lo_c)]), g.const("inv", 1.0 / delta)])])
                    code = g.op("Clip", [code, g.const("z", 0.0), g.const("top", levels_n - 1)],
                                "code")
                    cols.append(code)
                    coefs.append(coef * delta)
                    continue
                lo = g.op("Min", [g.reduce("ReduceMin", cur, axes), g.const("z", 0.0)], "lo")
                hi = g.reduce("ReduceMax", cur, axes)
                delta = g.op("Max", [
                    g.op("Mul", [g.op("Sub", [hi, lo]), g.const("w", widen)]),
                    g.const("tiny", 1e-30)], "delta")
                code = g.op("Floor", [g.op("Div", [g.op("Sub", [cur, lo]), delta])], "code")
                if len(slices) == 1:
                    single_scale = delta
                    cols.append(code)
                else:
                    cols.append(g.op("Mul", [code, delta], "adc"))
            else:
                cols.append(cur)
            coefs.append(coef)
        # 5. digital: pair difference, scale, sum over slices, undo the DAC scale, bias
        cat = cols[0] if len(cols) == 1 else g.op("Concat", cols, "cols", axis=1 if conv else -1)
        coef_all = np.concatenate(coefs, axis=0)  # [sum 2m, n_out]
        if conv:
            w_c = coef_all.T.reshape(op.n_out, -1, *([1] * (rank - 2)))
            y = g.op("Conv", [cat, g.const("combine", w_c)], "y")
        else:
            y = g.op("MatMul", [cat, g.const("combine", coef_all)], "y")
        scale = a if single_scale is None else g.op("Mul", [a, single_scale], "s")
        out = node.output[0]
        if node.op_type == "MatMul":  # the frontend's own Add node adds op.bias next
            y = g.op("Mul", [y, scale], out=out)
        else:
            b = np.asarray(biases[li], np.float32)
            b = b.reshape(-1, *([1] * (rank - 2))) if conv else b
            y = g.op("Add", [g.op("Mul", [y, scale]), g.const("bias", b)], out=out)
        probes.append(Probes(v2=names.v2, in_shape=names.in_shape,
                             out_shape=g.row(g.op("Shape", [out]), TensorProto.FLOAT),
                             dac_q=q_dac))
        replaced[node.name] = g.nodes[start:]
        del g.nodes[start:]
    # splice: every crossbar node replaced in place (keeps topological order)
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
    for p in probes:
        for name in (p.v2, p.in_shape, p.out_shape):
            g.output(name)
    for lo, hi in built.calibration:
        g.output(lo)
        g.output(hi)
    model.graph.output.extend(g.outputs)
    return built


def _slice_conductances(lv: np.ndarray, s: SliceRecord, hw: Hardware) -> np.ndarray:
    """``[n, 2m]`` realised conductances (uS) of the slice's ``+`` then ``-`` columns."""
    pr = np.asarray(s.phys_rows, np.intp)
    cols = np.concatenate([np.asarray(s.pos, np.intp), np.asarray(s.neg, np.intp)])
    return hw.cell.g_min_us + lv[np.ix_(pr, cols)] * hw.cell.step_us


def _coefficients(s: SliceRecord, op: Any, outs: int, unit: float) -> np.ndarray:
    """``[2m, n_out]``: +scale/unit on each ``+`` column, -scale/unit on its ``-`` column."""
    m = len(s.outs)
    c = np.zeros((2 * m, op.n_out), np.float64)
    o = s.group * outs + np.asarray(s.outs, np.intp)
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
    g: _Graph, v: str, op: Any, s: SliceRecord, w_i: np.ndarray, wn_i: np.ndarray
) -> tuple[str, np.ndarray, np.ndarray]:
    """Input channels of one conv slice and its weight ``[2m, channels, *k]`` (and noise's)."""
    kshape = tuple(op.shape[2:])
    cin_g = op.shape[1]
    rows = np.asarray(s.rows, np.intp)
    c, *kk = np.unravel_index(rows, (cin_g, *kshape))
    chans, local = np.unique(c, return_inverse=True)
    w = np.zeros((w_i.shape[1], chans.size, *kshape), np.float64)
    wn = np.zeros_like(w)
    for i in range(rows.size):  # rows are few (<= tile rows); add.at handles repeated rows
        idx = (slice(None), local[i], *(int(k[i]) for k in kk))
        w[idx] += w_i[i]
        wn[idx] += wn_i[i] ** 2
    absolute = s.group * cin_g + chans
    total = cin_g * op.groups
    if absolute.size == total and np.array_equal(absolute, np.arange(total)):
        inp = v
    else:
        inp = g.op("Gather", [v, g.const("ch", absolute, np.int64)], "vin", axis=1)
    return inp, w.astype(np.float32), wn.astype(np.float32)


def _mm_slice(
    g: _Graph, v: str, op: Any, s: SliceRecord, w_i: np.ndarray, wn_i: np.ndarray
) -> tuple[str, np.ndarray, np.ndarray]:
    rows = np.asarray(s.rows, np.int64)
    if rows.size == op.shape[0] and np.array_equal(rows, np.arange(op.shape[0])):
        inp = v
    else:
        inp = g.op("Gather", [v, g.const("rows", rows, np.int64)], "vin", axis=-1)
    return inp, w_i.astype(np.float32), (wn_i**2).astype(np.float32)


def _normals(
    g: _Graph, like: str, bank: str | None, bank_size: int, seed: int, k: int,
    max_values: int | None,
) -> str:
    """Standard normals shaped like ``like``: a window of the bank at a random offset."""
    if bank is None or max_values is None or max_values > bank_size:
        return g.op("RandomNormalLike", [like], "z", seed=float(seed * 7919 + k))
    shape = g.op("Shape", [like])
    n = g.op("Reshape", [g.op("Size", [like]), g.const("one", [1], np.int64)], "n")
    room = g.op("Sub", [g.const("bank_n", [bank_size], np.int64), n], "room")
    u = g.op("RandomUniform", [], "u", shape=[1], seed=float(seed * 7919 + k + 1),
             dtype=TensorProto.FLOAT)
    off = g.op("Cast", [g.op("Floor", [g.op("Mul", [u, g.op("Cast", [room],
                                                                     to=TensorProto.FLOAT)])])],
               "off", to=TensorProto.INT64)
    off = g.op("Min", [off, room], "off")
    win = g.op("Slice", [bank, off, g.op("Add", [off, n]), g.const("ax", [0], np.int64)], "win")
    return g.op("Reshape", [win, shape], "z")


def add_probes(model: onnx.ModelProto, image: Image) -> tuple[onnx.ModelProto, list[Probes]]:
    """``model`` (ideal mode: the digital graph with effective weights) plus the energy probes of
    every crossbar layer, ``v = x / max|x|`` with an ideal DAC."""
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
        a = g.reduce("ReduceMax", g.op("Abs", [x], "abs"), list(range(1, rank)) if conv else [-1])
        v = g.op("Div", [x, g.op("Max", [a, g.const("tiny", 1e-30)])], "v")
        v2 = g.op("Mul", [v, v], "v2")
        if conv:
            v2s = g.reduce("ReduceSum", v2, [0, *range(2, rank)])
        else:
            flat = g.op("Reshape", [v2, g.const("kshape", [-1, op.shape[0]], np.int64)])
            v2s = g.reduce("ReduceSum", flat, [0])
        probes.append(Probes(
            v2=g.row(v2s), in_shape=g.row(g.op("Shape", [x]), TensorProto.FLOAT),
            out_shape=g.row(g.op("Shape", [node.output[0]]), TensorProto.FLOAT), dac_q=1.0,
        ))
    out.graph.node.extend(g.nodes)
    out.graph.initializer.extend(g.inits)
    for p in probes:
        for name in (p.v2, p.in_shape, p.out_shape):
            g.output(name)
    out.graph.output.extend(g.outputs)
    return out, probes

