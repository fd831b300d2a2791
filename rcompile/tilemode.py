"""``tile`` emulation mode: every crossbar tile with its own DAC, read noise and ADC, as ONNX.

:func:`build` rewrites the image's digital graph so that each crossbar node (Conv, Gemm,
MatMul) becomes the circuit that computes it, and onnxruntime runs the whole thing batched —
no Python loop over samples. For one crossbar node with input ``x``:

1. **DAC.** A full scale ``a`` — the largest ``|x|`` of each inference (``dynamic``; per input
   vector for Gemm/MatMul, per feature map for Conv) or of a calibration batch
   (``calibrated``) — maps ``x`` to ``v = clip(round(x / a * Q), -Q, Q)`` with
   ``Q = 2^dac_bits - 1`` magnitude codes. Row ``i`` is driven at ``read_v * v_i / Q``. An ideal
   DAC passes ``x`` through.
2. **Crossbar.** Every slice of the layer (a block of rows and column pairs on one tile) is a
   product whose weights are the *realised conductances* of the slice's physical cells times
   ``read_v``; its outputs are the currents of the slice's ``+`` and ``-`` columns, the
   ``g_min`` leak of every driven row included. All slices of a layer are *one* node
   (:class:`_Batched`): slices that read the same input channels (Conv: the channels their rows
   touch; Gemm/MatMul: their rows) form a group whose input is gathered once, and the layer is
   one grouped Conv (Gemm/MatMul: one batched MatMul) over the groups, zero-padded to the
   widest group and the widest slice. A layer split over a thousand tiles is still a handful
   of nodes, and the batch shrinks so that one layer's column currents stay within
   :data:`TILE_BATCH_FLOATS`.
3. **Read noise.** Every read of a cell carries relative noise ``noise_rel``. It is applied to
   the layer input, once for the ``+`` columns and independently for the ``-`` columns (each
   sign of each group is a group of the product with its own noisy copy), which gives every
   column exactly the variance of independent cell noise, ``noise_rel^2 sum_i (read_v v_i
   G_ij)^2``, and keeps the two columns of a pair independent; columns that read the same rows
   (of one slice, or of slices on other tiles reading the same rows) share their rows' draws.
   Draws come from a seeded bank of per-inference patterns (an initializer, at most
   :data:`NOISE_BANK_FLOATS` values a layer) picked at random per inference, so a batch costs a
   gather, not a random generator call per value.
4. **ADC** per column, ``2^adc_bits`` codes, rounding to the nearest code, over ``[lo, hi]``:
   ``dynamic``, ``min(0, min I)`` to ``max I`` of this inference and slice; ``calibrated``, the
   extremes of a calibration batch (times ``headroom``), with currents beyond clipped at both
   ends. A calibrated ADC's step and offset are folded into the product's weights and bias, its
   clip into the product (onnxruntime's ``FusedConv`` with a ``Clip`` activation), and its
   rounding is a QuantizeLinear to uint8: the codes stay bytes until step 5 reads them.
5. **Digital.** ``+`` code minus ``-`` code, times the ADC step and
   ``scale / (read_v * step * Q)``, summed over slices, times the DAC full scale, plus the
   chip's digital bias. uint8 codes are read back by a DequantizeLinear whose per-column scale
   is that coefficient (one pass). The sum is one dense product over all columns when the
   layer has few, else a weighted ReduceSum over the row blocks (when every block splits the
   outputs alike) or a gather of each output's columns and a weighted sum. The ADC's ``lo``
   offset cancels in the difference of a pair.

With ideal converters and no noise this computes exactly ``x @ W_effective + b``, the ``ideal``
mode, up to float32 rounding (a test checks it for every way of summing). The graph also
outputs *probes* the energy model reads (:class:`Probes`).
"""

from __future__ import annotations

import functools
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

MS_DOMAIN = "com.microsoft"
"""onnxruntime's own operator domain (its CPU kernels include ``FusedConv``)."""

TILE_BATCH_FLOATS = 1 << 25
"""Budget (float32 values, 128 MB) of one layer's tile tensors per run: the batch shrinks for
models whose layers are split over many tiles (every tile column is a tensor channel)."""

NOISE_BANK_FLOATS = 1 << 22
"""Budget (float32 values, 16 MB) of one layer's bank of read-noise patterns: a layer with a
large input keeps fewer patterns (at least 8, at most ``bank``)."""

MIN_OPSET = 7
"""Oldest ``ai.onnx`` opset the emulator writes nodes for (onnxruntime's oldest supported)."""

COMBINE_DENSE_RATIO = 32
"""The digital sum of a layer is one dense product over all its columns when they are at most
this many times the columns one output reads; else a gather of each output's columns and a
weighted sum (cheaper when many slices split the layer: most of a dense product is zeros)."""


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
    slots: list[tuple[int, np.ndarray]] = field(default_factory=list)
    """Per layer, the slots of its product and the slot of each of its slices."""
    floats_per_sample: int = 0
    """Largest per-sample size (float32 values) of a layer's column currents plus its gathered
    input, when the shapes are known (0: unknown)."""

    def max_batch(self, budget: int = TILE_BATCH_FLOATS) -> int:
        """Samples per run that keep one layer's tile tensors within ``budget`` values."""
        return max(1, budget // self.floats_per_sample) if self.floats_per_sample else 1 << 30

    def read_calibration(self, outs: list[np.ndarray], layers: int) -> Calibration:
        """The :class:`Calibration` in ``outs`` (all outputs of running this graph): per layer
        the max-|x| output, then per layer the per-slice min and max current outputs."""
        extra = outs[len(outs) - len(self.calibration):]
        dac = tuple(float(np.max(extra[i])) for i in range(layers))
        cur: dict[tuple[int, int], tuple[float, float]] = {}
        start = 0
        for li, (n_slots, slot) in enumerate(self.slots):
            lo = np.min(extra[layers + 2 * li].reshape(-1, n_slots), axis=0)
            hi = np.max(extra[layers + 2 * li + 1].reshape(-1, n_slots), axis=0)
            for i, key in enumerate(self.slices[start : start + slot.size]):
                cur[key] = (float(lo[slot[i]]), float(hi[slot[i]]))
            start += slot.size
        return Calibration(dac_max=dac, currents=cur)


class _Graph:
    """Appends nodes and initializers with fresh names, every node in the graph's own opset.

    The emulator's nodes take the form the model's ``ai.onnx`` opset defines (7 and up): Reduce
    axes as an attribute or an input, Clip bounds as attributes (< 11) or inputs, Slice as
    attributes (< 10). Where an op is missing from an old opset, an exact equivalent stands in:
    ``Max``/``Min`` with a constant are a Clip (< 8: no broadcasting), ``ConstantOfShape`` a Tile
    (< 9), ``Round`` an addition of ``2^23`` (< 11, see :meth:`round`), the ADC's uint8 codes
    (a QuantizeLinear read back by a per-axis DequantizeLinear, 13 and up) float codes, and the
    random generators the random mask of a Dropout (:meth:`uniform`, :meth:`normal_like`).
    ``Round``, the quantizers and the random generators are used only where onnxruntime has a
    kernel of the graph's opset (``Round`` and the generators of opset 22, the quantizers of 28
    have none in onnxruntime 1.32).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        if self.opset < MIN_OPSET:
            raise BadImage(f"image: the graph has ONNX opset {self.opset}; expected "
                           f"{MIN_OPSET} or newer")
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.uses_ms_domain = False
        """Set when a node of onnxruntime's ``com.microsoft`` domain was added."""
        self.taken = {n for node in model.graph.node for n in (*node.input, *node.output)}
        self.taken |= {t.name for t in model.graph.initializer}
        self._n = 0

    def has(self, op_type: str) -> bool:
        """Whether onnxruntime runs ``op_type`` of this graph's opset (see :func:`_has_kernel`)."""
        return _has_kernel(op_type, self.opset)

    @property
    def uint8_codes(self) -> bool:
        """ADC codes may stay uint8 (a per-axis DequantizeLinear reads them: opset 13)."""
        return self.opset >= 13 and self.has("QuantizeLinear") and self.has("DequantizeLinear")

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

    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: int = 1,
               out: str | None = None, hint: str = "") -> str:
        """``op_type`` over ``axes`` (None: every axis)."""
        hint = hint or op_type.lower()
        if axes is None:
            return self.op(op_type, [x], hint, out=out, keepdims=keepdims)
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            ax = self.const("axes", list(axes), np.int64)
            return self.op(op_type, [x, ax], hint, out=out, keepdims=keepdims)
        return self.op(op_type, [x], hint, out=out, axes=list(axes), keepdims=keepdims)

    def clip(self, x: str, lo: float, hi: float, hint: str = "clip") -> str:
        """``x`` clipped to ``[lo, hi]`` (float)."""
        if self.opset >= 11:
            return self.op("Clip", [x, self.const("lo", lo), self.const("hi", hi)], hint)
        return self.op("Clip", [x], hint, min=float(lo), max=float(hi))

    def maximum(self, x: str, c: float, hint: str) -> str:
        """``max(x, c)`` of a float tensor and a constant."""
        if self.opset >= 8:
            return self.op("Max", [x, self.const("c", c)], hint)
        return self.op("Clip", [x], hint, min=float(c), max=float(np.finfo(np.float32).max))

    def minimum(self, x: str, c: float, hint: str) -> str:
        """``min(x, c)`` of a float tensor and a constant."""
        if self.opset >= 8:
            return self.op("Min", [x, self.const("c", c)], hint)
        return self.op("Clip", [x], hint, min=float(np.finfo(np.float32).min), max=float(c))

    def round(self, x: str, lo: float, hi: float, hint: str = "code") -> str:
        """``x`` rounded half to even, for ``x`` known to lie in ``[lo, hi]``.

        Before opset 11 (no ``Round``): ``(x + m) - m`` rounds exactly so when every sum lies in
        ``[2^23, 2^24)``, where float32 holds exactly the integers (the addition rounds to the
        nearest, ties to even, and ``m`` is even): ``m = 2^23`` for ``x >= 0``, ``1.5 * 2^23``
        for ``|x| < 2^22``, else the positive and negative parts apart. Converter codes are
        below ``2^23`` (at most 23 bits below ideal)."""
        if self.has("Round"):
            return self.op("Round", [x], hint)
        if lo >= 0 or max(-lo, hi) < 2.0**22:
            m = self.const("m", 2.0**23 if lo >= 0 else 1.5 * 2.0**23)
            return self.op("Sub", [self.op("Add", [x, m], hint), m], hint)
        pos = self.round(self.op("Relu", [x], hint), 0.0, hi, hint)
        neg = self.round(self.op("Relu", [self.op("Neg", [x], hint)], hint), 0.0, -lo, hint)
        return self.op("Sub", [pos, neg], hint)

    def clip_round(self, x: str, lo: float, hi: float, hint: str = "code") -> str:
        """``clip(round(x), lo, hi)`` for integer bounds (equal to ``round(clip(x))``, which an
        opset without ``Round`` computes, see :meth:`round`)."""
        if self.has("Round"):
            return self.op("Clip", [self.op("Round", [x]), self.const("lo", lo),
                                    self.const("hi", hi)], hint)
        return self.round(self.clip(x, lo, hi, hint), lo, hi, hint)

    def zeros(self, shape: str, hint: str) -> str:
        """A float zero tensor of the (int64 1-D tensor) ``shape``."""
        if self.opset >= 9:
            return self.op("ConstantOfShape", [shape], hint)
        return self.op("Tile", [self.const("zero", np.zeros(1)), shape], hint)

    def _bits(self, shape: str, seed: int) -> str:
        """Fair random bits (float 0 or 1) of the (int64 1-D tensor) ``shape``: the mask of a
        training-mode Dropout of ratio 0.5 (its mask, which onnxruntime's Dropout elimination
        keeps)."""
        ones = self.op("ConstantOfShape", [shape], "ones",
                       value=numpy_helper.from_array(np.ones(1, np.float32)))
        kept, mask = self.fresh("dropped"), self.fresh("mask")
        self.nodes.append(helper.make_node(
            "Dropout", [ones, self.const("half", 0.5), self.const("on", True, np.bool_)],
            [kept, mask], seed=int(seed)))
        return self.op("Cast", [mask], "bits", to=TensorProto.FLOAT)

    def uniform(self, shape: str, seed: int, hint: str) -> str:
        """Uniform ``[0, 1)`` draws of the (int64 1-D tensor) ``shape``.

        Where onnxruntime has no ``RandomUniformLike`` of the graph's opset (its opset-22 form)
        24 random bits make each draw, ``sum_j bit_j 2^-(j + 1)`` (exact in float32)."""
        if self.has("RandomUniformLike"):
            return self.op("RandomUniformLike", [self.zeros(shape, "zeros")], hint,
                           seed=float(seed), dtype=TensorProto.FLOAT)
        wide = self.op("Concat", [shape, self.const("bits", [24], np.int64)], hint, axis=0)
        weights = self.const("w", 0.5 ** np.arange(1, 25))
        return self.op("MatMul", [self._bits(wide, seed), weights], hint)

    def normal_like(self, x: str, seed: int, hint: str) -> str:
        """Standard normal draws shaped like ``x``. Without ``RandomNormalLike`` (see
        :meth:`uniform`): the sum of 16 random bits, centred and scaled (a binomial with exactly
        mean 0 and variance 1)."""
        if self.has("RandomNormalLike"):
            return self.op("RandomNormalLike", [x], hint, seed=float(seed))
        wide = self.op("Concat", [self.const("n", [16], np.int64), self.op("Shape", [x])], hint,
                       axis=0)
        total = self.reduce("ReduceSum", self._bits(wide, seed), [0], 0, hint=hint)
        return self.op("Sub", [self.op("Mul", [total, self.const("q", 0.5)], hint),
                               self.const("mean", 4.0)], hint)

    def dims(self, x: str, lo: int, hi: int | None = None) -> str:
        """``Shape(x)[lo:hi]`` (``hi`` None: to the last axis)."""
        end = np.iinfo(np.int64).max if hi is None else hi
        shape = self.op("Shape", [x])
        if self.opset < 10:
            return self.op("Slice", [shape], "dims", starts=[lo], ends=[end], axes=[0])
        return self.op("Slice", [shape, self.const("s", [lo], np.int64),
                                 self.const("e", [end], np.int64)], "dims")

    def shape_with(self, x: str, middle: Sequence[int]) -> str:
        """``[N, *middle, *spatial]``: ``x``'s batch and spatial axes around ``middle``."""
        return self.op("Concat", [self.dims(x, 0, 1), self.const("mid", list(middle), np.int64),
                                  self.dims(x, 2)], "shape", axis=0)

    def output(self, name: str) -> None:
        self.outputs.append(onnx.ValueInfoProto(name=name))

    def row(self, x: str, dtype: int | None = None) -> str:
        """``x`` reshaped to ``[1, -1]`` (one probe row per batch)."""
        y = self.op("Reshape", [x, self.const("row", [1, -1], np.int64)], "probe")
        if dtype is not None:
            y = self.op("Cast", [y], "probe", to=dtype)
        return y


@functools.cache
def _kernels() -> dict[str, list[tuple[int, int]]] | None:
    """Version ranges of onnxruntime's CPU kernels of every ``ai.onnx`` op (None: unknown)."""
    try:
        from onnxruntime.capi import _pybind_state

        defs = _pybind_state.get_all_opkernel_def()
    except (ImportError, AttributeError):  # pragma: no cover - an onnxruntime without the list
        return None
    out: dict[str, list[tuple[int, int]]] = {}
    for k in defs:
        if k.provider == "CPUExecutionProvider" and k.domain in ("", "ai.onnx"):
            out.setdefault(k.op_name, []).append(tuple(k.version_range))
    return out


@functools.cache
def _has_kernel(op_type: str, opset: int) -> bool:
    """Whether onnxruntime's CPU provider runs the ``op_type`` of ``opset``: a kernel registered
    for exactly its schema's version, or for a closed range holding it (onnxruntime's rule: an
    open-ended kernel serves only the version it starts at)."""
    try:
        since = onnx.defs.get_schema(op_type, opset, "").since_version
    except onnx.defs.SchemaError:
        return False
    kernels = _kernels()
    if kernels is None:
        return True
    top = np.iinfo(np.int32).max
    return any(lo == since or lo <= since <= hi < top for lo, hi in kernels.get(op_type, []))


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
    a bank of at most ``bank`` patterns per layer instead of ``RandomNormalLike``, and sizes
    :attr:`Built.floats_per_sample`.
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
            v = g.clip_round(v, -q, q, "v")
            v2 = _sum_sq(g, v, conv, spatial, op.shape[0], scale=1.0 / q)
        probe = Probes(v2=v2, in_shape=g.row(g.op("Shape", [x]), TensorProto.FLOAT),
                       conv=_conv_info(node, op) if conv else None)
        # 2.-5. every slice of the layer at once: crossbar, read noise, ADC, digital sum
        slices = per_layer[li]
        if not slices:
            raise BadImage(f"image: layer {op.node} has no slice on any tile")
        unit = cell.read_v * cell.step_us * q / full  # output per unit of (I+ - I-)
        lay = _Batched.of(op, slices, levels, hw, unit)
        built.slices += [(t, k) for t, k, _ in slices]
        built.slots.append((lay.groups * lay.per, lay.slot))
        top = float(2**adc_bits - 1)
        fixed = adc_bits < IDEAL_BITS and adc_fixed
        bias_c = None
        if fixed:  # fold each slice's ADC step into its weights, its offset into a bias
            assert calibration is not None
            f = (q / full if dac_fixed else q) * cv.headroom
            bias_c = lay.fold_adc([calibration.currents[(t, k)] for t, k, _ in slices], f, top)
        src = v
        if not conv:  # rows of the layer input
            src = g.op("Reshape", [v, g.const("k2", [-1, op.shape[0]], np.int64)], "v2d")
        layer_in, layer_out = (shapes or {}).get(x), (shapes or {}).get(node.output[0])
        if layer_in is not None and layer_out is not None:
            pos_in = int(np.prod(layer_in[2:] if conv else layer_in[1:-1], dtype=np.int64))
            pos_out = int(np.prod(layer_out[2:] if conv else layer_out[1:-1], dtype=np.int64))
            size = 2 * lay.columns * pos_out + lay.index.size * pos_in
            built.floats_per_sample = max(built.floats_per_sample, size)
        code, zp = _crossbar(g, lay, src, conv, node, noise=noise, per_in=layer_in, bank=bank,
                             rng=rng, seed=seed, key=li, bias_c=bias_c, adc_bits=adc_bits,
                             fixed=fixed, calibrate=calibrate, cal_slices=cal_slices)
        # rows back to a MatMul's leading axes, undo the DAC scale, add the chip's bias
        tail: list[tuple[str, list[str]]] = []
        if node.op_type == "MatMul":
            tail.append(("Reshape", [g.op("Concat", [
                g.dims(x, 0, -1), g.const("n", [op.n_out], np.int64)], "oshape", axis=0)]))
        # (a MatMul's bias is added by the frontend's own Add node next)
        bias = None if node.op_type == "MatMul" else np.asarray(biases[li], np.float32)
        if a is not None:
            tail.append(("Mul", [a]))
            if bias is not None:
                tail.append(("Add", [g.const("bias", bias.reshape(-1, *([1] * (rank - 2))))]))
                bias = None
        out = node.output[0]
        y = lay.combine(g, code, conv, out=None if tail else out, bias=bias, zp=zp)
        for i, (op_type, extra) in enumerate(tail):
            y = g.op(op_type, [y, *extra], "y", out=out if i == len(tail) - 1 else None)
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
    if g.uses_ms_domain and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
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
    return g.maximum(a, 1e-30, "a")


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


@dataclass
class _Batched:
    """All slices of one crossbar layer as one grouped Conv (a Gemm/MatMul as a batched MatMul).

    Slices that read the same input channels (Conv: the channels their rows touch; Gemm/MatMul:
    their rows) form one group, so an input is gathered once per group, not once per slice:
    ``groups`` groups of ``per`` slots, ``width`` input channels each (zero-padded). A slot has
    ``mmax`` ``+`` and ``mmax`` ``-`` columns (a slice's ``m`` columns, then zero ones); columns
    are ordered ``[group, sign, slot, column]``, so with read noise every (group, sign) is a
    group of the Conv with its own noisy input. Column ``c`` feeds output ``out_of[c]`` (-1:
    padding) with coefficient ``coef[c]`` (``+-scale / unit``, times the ADC step when that is
    folded into the weights). Slice ``i`` sits in slot ``slot[i]`` (``group * per + slot``).
    """

    groups: int
    per: int
    mmax: int
    channels: int
    """Input channels (features) of the layer."""
    index: np.ndarray
    """``[groups, width]`` input channel of every weight column (padding repeats one)."""
    w: np.ndarray
    """``[groups, 2, per, mmax, width, *kernel]`` float64 weights: ``read_v * G`` per cell."""
    out_of: np.ndarray
    coef: np.ndarray
    slot: np.ndarray
    n_out: int

    @classmethod
    def of(cls, op: Any, slices: list[tuple[int, int, SliceRecord]],
           levels: dict[int, np.ndarray], hw: Hardware, unit: float) -> _Batched:
        conv = op.layout == LAYOUT_CONV
        blocks = []
        for t, _, s in slices:
            w_i = hw.cell.read_v * _slice_conductances(levels[t], s, hw)  # [rows, 2m]
            blocks.append(_conv_block(op, s, w_i) if conv else _mm_block(op, s, w_i))
        by_rows: dict[tuple[int, ...], list[int]] = {}
        for i, (chans, _) in enumerate(blocks):
            by_rows.setdefault(tuple(chans.tolist()), []).append(i)
        # groups in input order: a layer split into row blocks reads its input as it is
        by_rows = dict(sorted(by_rows.items()))
        n_groups, per = len(by_rows), max(len(v) for v in by_rows.values())
        width = max(b[0].size for b in blocks)
        mmax = max(len(s.outs) for _, _, s in slices)
        kernel = tuple(op.shape[2:]) if conv else ()
        index = np.zeros((n_groups, width), np.int64)
        w = np.zeros((n_groups, 2, per, mmax, width, *kernel), np.float64)
        out_of = np.full((n_groups, 2, per, mmax), -1, np.int64)
        coef = np.zeros((n_groups, 2, per, mmax), np.float64)
        slot = np.zeros(len(slices), np.int64)
        for gi, members in enumerate(by_rows.values()):
            chans = blocks[members[0]][0]
            index[gi, : chans.size] = chans
            index[gi, chans.size :] = chans[0]
            # slots by first output and columns by output: a layer split into the same
            # outputs on every row block gets the same layout in every group (see combine)
            outs_of = {i: slices[i][2].group * op.outs + np.asarray(slices[i][2].outs, np.int64)
                       for i in members}
            for j, i in enumerate(sorted(members, key=lambda i: int(outs_of[i].min()))):
                s, wb = slices[i][2], blocks[i][1]
                m = len(s.outs)
                by_out = np.argsort(outs_of[i], kind="stable")
                w[gi, 0, j, :m, : chans.size] = wb[:m][by_out]
                w[gi, 1, j, :m, : chans.size] = wb[m:][by_out]
                out_of[gi, :, j, :m] = outs_of[i][by_out]
                sc = np.asarray(s.scale, np.float64)[by_out] / unit
                coef[gi, 0, j, :m], coef[gi, 1, j, :m] = sc, -sc
                slot[i] = gi * per + j
        channels = op.groups * op.shape[1] if conv else op.shape[0]
        return cls(groups=n_groups, per=per, mmax=mmax, channels=channels, index=index, w=w,
                   out_of=out_of.reshape(-1), coef=coef.reshape(-1), slot=slot,
                   n_out=op.n_out)

    @property
    def columns(self) -> int:
        return self.groups * 2 * self.per * self.mmax

    @property
    def width(self) -> int:
        return int(self.index.shape[1])

    def weights(self) -> np.ndarray:
        """``[columns, width, *kernel]`` (no kernel axes for a Gemm/MatMul)."""
        return self.w.reshape(self.columns, *self.w.shape[4:]).astype(np.float32)

    def slot_shape(self) -> list[int]:
        """Reshape of the product that puts a slot's columns on axes 2 and 4:
        ``[N, groups, 2, per, -1]``."""
        return [0, self.groups, 2, self.per, -1]

    def fold_adc(self, ranges: list[tuple[float, float]], f: float, top: float
                 ) -> np.ndarray | None:
        """Scale every slice's weights by ``1 / step`` of its calibrated ADC (currents come out
        in ADC steps) and its coefficients by ``step``; the bias that puts a range starting
        below zero current at code 0 (None when no range does)."""
        bias = np.zeros((self.groups, 2, self.per, self.mmax), np.float64)
        coef = self.coef.reshape(self.groups, 2, self.per, self.mmax)
        for i, (lo_r, hi_r) in enumerate(ranges):
            gi, j = divmod(int(self.slot[i]), self.per)
            lo_c, hi_c = min(lo_r, 0.0) * f, hi_r * f
            step = max((hi_c - lo_c) / top, 1e-30)
            self.w[gi, :, j] /= step
            coef[gi, :, j] *= step
            bias[gi, :, j] = -lo_c / step
        return bias.reshape(-1).astype(np.float32) if bias.any() else None

    def combine(self, g: _Graph, code: str, conv: bool, out: str | None,
                bias: np.ndarray | None = None, zp: int | None = None) -> str:
        """Per output, the sum of ``coef * code`` over its columns, plus ``bias``:
        ``[N, n_out, *spatial]`` (Conv) or ``[rows, n_out]``. ``zp``: ``code`` is uint8 codes
        offset by ``zp`` (see :func:`_adc_codes`), read by :func:`_per_column` (None: float
        codes)."""
        cols, used = self.columns, self.out_of >= 0
        k = max(1, int(np.bincount(self.out_of[used], minlength=self.n_out).max(initial=0)))
        ones = [1] * len(self._spatial())
        if cols <= COMBINE_DENSE_RATIO * k:  # one dense product, the bias included
            if zp is not None:
                code = _dequantize(g, code, zp)
            dense = np.zeros((cols, self.n_out), np.float32)
            dense[np.flatnonzero(used), self.out_of[used]] = self.coef[used]
            b_in = [] if bias is None else [g.const("bias", np.asarray(bias, np.float32))]
            if conv:
                w_c = dense.T.reshape(self.n_out, cols, *ones)
                return g.op("Conv", [code, g.const("combine", w_c), *b_in], "y", out=out)
            flat = g.op("Reshape", [code, g.const("c2", [-1, cols], np.int64)], "codes")
            return g.op("Gemm" if b_in else "MatMul", [flat, g.const("combine", dense), *b_in],
                        "y", out=out)
        last = out if bias is None else None
        where = self._regular()
        if where is not None:
            y = self._combine_regular(g, code, conv, last, where, zp)
        else:  # each output gathers its k columns (padding: column 0 with coefficient 0)
            idx = np.zeros((self.n_out, k), np.int64)
            wk = np.zeros((self.n_out, k), np.float32)
            order = np.argsort(self.out_of, kind="stable")
            order = order[self.out_of[order] >= 0]
            outs = self.out_of[order]
            slot = np.arange(order.size) - np.searchsorted(outs, np.arange(self.n_out))[outs]
            idx[outs, slot] = order
            wk[outs, slot] = self.coef[order]
            picked = g.op("Gather", [code, g.const("pick", idx.reshape(-1), np.int64)],
                          "picked", axis=1)
            shape = (g.shape_with(code, [self.n_out, k]) if conv
                     else g.const("s3", [-1, self.n_out, k], np.int64))
            terms = g.op("Reshape", [_per_column(g, picked, wk, zp, len(ones)), shape],
                         "terms")
            y = g.reduce("ReduceSum", terms, [2], 0, out=last, hint="y")
        if bias is None:
            return y
        b = np.asarray(bias, np.float32).reshape(-1, *ones) if conv else bias
        return g.op("Add", [y, g.const("bias", b)], "y", out=out)

    def _spatial(self) -> tuple[int, ...]:
        return tuple(self.w.shape[5:])

    def _regular(self) -> np.ndarray | None:
        """Where every group holds the same outputs at the same column places (a layer split
        alike on every row block): per place ``[per * mmax]`` its output (-1 padding), and for
        every output a place holding it or a padding place; else None."""
        out4 = self.out_of.reshape(self.groups, 2, self.per * self.mmax)
        place = out4[0, 0]
        if not (out4 == place).all():
            return None
        where = np.full(self.n_out, -1, np.int64)
        where[place[place >= 0]] = np.flatnonzero(place >= 0)
        pads = np.flatnonzero(place < 0)
        if (where < 0).any():
            if pads.size == 0:
                return None
            where[where < 0] = pads[0]  # an output no slice holds reads a zero column
        return where

    def _combine_regular(self, g: _Graph, code: str, conv: bool, out: str | None,
                         where: np.ndarray, zp: int | None) -> str:
        """``sum over groups and signs of coef * code`` per place (a weighted ReduceSum: no
        gather of the large column tensor), then the places in output order (``where``, from
        :meth:`_regular`)."""
        places = self.per * self.mmax
        shape = g.const("gsp", [0, self.groups * 2, places, *([-1] if conv else [])], np.int64)
        terms = g.op("Reshape", [
            _per_column(g, code, self.coef, zp, len(self._spatial())), shape], "terms")
        identity = np.array_equal(where, np.arange(places))
        y = g.reduce("ReduceSum", terms, [1], 0, out=out if identity and not conv else None,
                     hint="y")
        if conv:  # [N, places, positions] back to [N, places, *spatial]
            y = g.op("Reshape", [y, g.shape_with(code, [places])], "y",
                     out=out if identity else None)
        if identity:
            return y
        return g.op("Gather", [y, g.const("where", where, np.int64)], "y", out=out, axis=1)


def _crossbar(
    g: _Graph, lay: _Batched, src: str, conv: bool, node: onnx.NodeProto, *, noise: float,
    per_in: tuple[int, ...] | None, bank: int, rng: np.random.Generator, seed: int, key: int,
    bias_c: np.ndarray | None, adc_bits: float, fixed: bool, calibrate: bool,
    cal_slices: list[str],
) -> tuple[str, int | None]:
    """Steps 2.-4. of :func:`build` for every slice of layer ``lay`` on the DAC's output
    ``src``: gathered rows, read noise, the product and the ADC. Returns the codes and their
    zero point (see :func:`_adc_codes`); a calibration graph's per-slice current extremes go to
    ``cal_slices``."""
    rows = lay.index.reshape(-1)
    vin = src
    if not np.array_equal(rows, np.arange(lay.channels)):
        vin = g.op("Gather", [src, g.const("rows", rows, np.int64)], "vin", axis=1)
    groups = lay.groups
    if noise > 0:  # each group's input twice, for its + and its - columns, each noisy
        per = None
        if per_in is not None:
            per = (lay.groups, 2, lay.width,
                   *([int(np.prod(per_in[2:], dtype=np.int64))] if conv else []))
        room = max(8, NOISE_BANK_FLOATS // max(1, int(np.prod(per or (1,)))))
        vin = _noisy_rows(g, vin, conv, lay.groups, lay.width, noise, per, rng, seed, key,
                          min(bank, room))
        groups = 2 * lay.groups
    top = float(2**adc_bits - 1)
    clipped = False  # the ADC's clip to [0, top] steps done by the product itself
    if conv:
        w_ins = [vin, g.const("w", lay.weights())]
        if bias_c is not None:
            w_ins.append(g.const("b", bias_c))
        if fixed and adc_bits <= 8:  # onnxruntime's Conv with a fused Clip: one pass less
            cur = g.op("FusedConv", w_ins, "cur", domain=MS_DOMAIN, group=groups,
                       activation="Clip", activation_params=[0.0, top], **_conv_attrs(node))
            g.uses_ms_domain = True
            clipped = True
        else:
            cur = g.op("Conv", w_ins, "cur", group=groups, **_conv_attrs(node))
    else:  # block-diagonal: one batched MatMul over the groups
        cur = _grouped_matmul(g, vin, lay.weights(), groups, bias_c)
    # cur: [N, columns, *spatial] (Conv) or [rows, columns]
    per_slice = ""
    if calibrate or (adc_bits < IDEAL_BITS and not fixed):
        per_slice = g.op("Reshape", [cur, g.const("s5", lay.slot_shape(), np.int64)], "cur5")
    if calibrate:
        cal_slices += [g.row(g.reduce("ReduceMin", per_slice, [0, 2, 4], 0)),
                       g.row(g.reduce("ReduceMax", per_slice, [0, 2, 4], 0))]
    if fixed:  # currents are in ADC steps already
        return _adc_codes(g, cur, int(adc_bits), clipped)
    if adc_bits < IDEAL_BITS:  # per inference and slice: [min(0, lo), hi]
        lo = g.minimum(g.reduce("ReduceMin", per_slice, [2, 4]), 0.0, "lo")
        hi = g.reduce("ReduceMax", per_slice, [2, 4])
        step_t = g.maximum(g.op("Mul", [g.op("Sub", [hi, lo]), g.const("inv", 1.0 / top)]),
                           1e-30, "adc_step")
        code = g.round(g.op("Div", [g.op("Sub", [per_slice, lo]), step_t]), 0.0, top)
        return g.op("Reshape", [g.op("Mul", [code, step_t]), g.op("Shape", [cur])], "adc"), None
    return cur, None


def _adc_codes(g: _Graph, cur: str, bits: int, clipped: bool = False) -> tuple[str, int | None]:
    """Codes ``clip(round(cur), 0, 2^bits - 1)`` of currents already in ADC steps, and their
    zero point.

    Up to 8 bits: uint8 codes from a QuantizeLinear with zero point ``255 - top`` (its
    saturation at 255 is the ADC's top code; currents below zero are clipped first), which the
    digital sum reads back with that zero point (:meth:`_Batched.combine`), so the float codes
    are never written. ``clipped``: ``cur`` is in ``[0, top]`` already (a fused Clip), and the
    zero point is 0. Above 8 bits: float codes (zero point None)."""
    top = float(2**bits - 1)
    if clipped and not g.uint8_codes:
        return g.round(cur, 0.0, top), None
    if clipped:
        return g.op("QuantizeLinear", [cur, g.const("one", 1.0), g.const("zp0", 0, np.uint8)],
                    "adc"), 0
    if bits > 8 or not g.uint8_codes:
        return g.clip_round(cur, 0.0, top), None
    cur = g.op("Relu", [cur], "cur")
    zp = 255 - int(top)
    return g.op("QuantizeLinear", [cur, g.const("one", 1.0), g.const("zp", zp, np.uint8)],
                "adc"), zp


def _dequantize(g: _Graph, code: str, zp: int) -> str:
    """``code - zp`` of uint8 codes, as float (one DequantizeLinear)."""
    return g.op("DequantizeLinear", [code, g.const("one", 1.0), g.const("zp", zp, np.uint8)],
                "code")


def _per_column(g: _Graph, code: str, coef: np.ndarray, zp: int | None, spatial: int) -> str:
    """``code * coef`` along axis 1 (``spatial`` axes follow it). uint8 codes (``zp`` given)
    are read with their zero point by one DequantizeLinear whose per-axis scale is ``coef``;
    float codes (``zp`` None) take a Mul."""
    sc = np.asarray(coef, np.float32).reshape(-1)
    if zp is None:
        return g.op("Mul", [code, g.const("coef", sc.reshape(1, -1, *[1] * spatial))], "terms")
    return g.op("DequantizeLinear", [code, g.const("coef", sc),
                                     g.const("zp", np.full(sc.size, zp), np.uint8)],
                "terms", axis=1)


def _grouped_matmul(
    g: _Graph, vin: str, w: np.ndarray, groups: int, bias: np.ndarray | None
) -> str:
    """``[rows, groups * width] -> [rows, groups * out]``, group ``i`` of the input times
    ``w[i * out : (i + 1) * out].T`` (``w``: ``[groups * out, width]``), plus ``bias``."""
    out, width = w.shape[0] // groups, w.shape[1]
    if groups == 1:
        y = g.op("MatMul", [vin, g.const("w", np.ascontiguousarray(w.T))], "cur")
    else:
        per = g.op("Transpose", [g.op("Reshape", [vin, g.const("g3", [-1, groups, width],
                                                               np.int64)])], "vg", perm=[1, 0, 2])
        wg = np.ascontiguousarray(w.reshape(groups, out, width).transpose(0, 2, 1))
        y = g.op("MatMul", [per, g.const("w", wg)], "cur")  # [groups, rows, out]
        y = g.op("Reshape", [g.op("Transpose", [y], "cur", perm=[1, 0, 2]),
                             g.const("g2", [-1, groups * out], np.int64)], "cur")
    return y if bias is None else g.op("Add", [y, g.const("b", bias)], "cur")


def _conv_block(op: Any, s: SliceRecord, w_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute input channels one conv slice touches and its weight ``[2m, channels, *k]``."""
    kshape = tuple(op.shape[2:])
    cin_g = op.shape[1]
    rows = np.asarray(s.rows, np.intp)
    c, *kk = np.unravel_index(rows, (cin_g, *kshape))
    chans, local = np.unique(c, return_inverse=True)
    # rows as flat (channel, kernel position) cells; a row read twice (redundant copies) sums
    cell = np.ravel_multi_index((local, *kk), (chans.size, *kshape))
    w = np.zeros((chans.size * int(np.prod(kshape, dtype=np.int64)), w_i.shape[1]), np.float64)
    np.add.at(w, cell, w_i)
    return s.group * cin_g + chans, w.T.reshape(w_i.shape[1], chans.size, *kshape)


def _mm_block(op: Any, s: SliceRecord, w_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input rows one Gemm/MatMul slice reads and its weight ``[2m, rows]``."""
    rows, local = np.unique(np.asarray(s.rows, np.int64), return_inverse=True)
    w = np.zeros((w_i.shape[1], rows.size), np.float64)
    np.add.at(w.T, local, w_i)  # a row read twice (redundant copies) sums
    return rows, w


def _slice_conductances(lv: np.ndarray, s: SliceRecord, hw: Hardware) -> np.ndarray:
    """``[n, 2m]`` realised conductances (uS) of the slice's ``+`` then ``-`` columns."""
    pr = np.asarray(s.phys_rows, np.intp)
    cols = np.concatenate([np.asarray(s.pos, np.intp), np.asarray(s.neg, np.intp)])
    return hw.cell.g_min_us + lv[np.ix_(pr, cols)] * hw.cell.step_us


def _conv_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        if a.name != "group":
            out[a.name] = helper.get_attribute_value(a)
    return out


def _noisy_rows(
    g: _Graph, vin: str, conv: bool, groups: int, width: int, rel: float,
    per: tuple[int, ...] | None, rng: np.random.Generator, seed: int, k: int, bank: int,
) -> str:
    """Every group's gathered input twice (for its ``+`` and its ``-`` columns: ``[N, groups *
    2 * width, *spatial]``), each element times ``1 + rel * N(0, 1)``: every read of a cell
    carries relative noise ``rel``, drawn per row and read, independently for the two signs.
    Per column this is exactly the variance of independent cell noise,
    ``rel^2 sum_i (v_i G_ij)^2``; columns reading the same rows share their draws. Draws come
    from ``bank`` stored per-inference patterns ``per`` picked at random
    (``RandomNormalLike`` when the input shape is unknown). One broadcast Mul writes both
    copies in the order the grouped product reads them."""
    split = g.const("gw", [0, groups, 1, width, *([-1] if conv else [])], np.int64)
    v5 = g.op("Reshape", [vin, split], "vg")
    back = g.shape_with(vin, [2 * groups * width])
    if per is None or bank < 1:
        both = g.op("Concat", [v5, v5], "vv", axis=2)
        z = g.normal_like(both, seed * 7919 + k, "z")
        f = g.op("Add", [g.op("Mul", [z, g.const("rel", rel)]), g.const("one", 1.0)], "f")
        return g.op("Reshape", [g.op("Mul", [both, f], "vnoisy"), back], "vnoisy")
    patterns = 1.0 + rel * rng.standard_normal((bank, *per), dtype=np.float32)
    pat = g.const("bank", patterns)
    u = g.uniform(g.dims(vin, 0, 1), seed * 7919 + k + 1, "u")
    pick = g.op("Floor", [g.op("Mul", [u, g.const("k", float(bank))])], "idx")
    if g.opset >= 12:
        idx = g.op("Cast", [pick], "idx", to=TensorProto.INT64)
        idx = g.op("Min", [idx, g.const("kmax", bank - 1, np.int64)], "idx")
    else:  # no integer Min: the same bound on the float index
        idx = g.op("Cast", [g.minimum(pick, float(bank - 1), "idx")], "idx", to=TensorProto.INT64)
    noisy = g.op("Mul", [v5, g.op("Gather", [pat, idx], "z", axis=0)], "vnoisy")
    return g.op("Reshape", [noisy, back], "vnoisy")


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
        if conv:  # the full scale is one number per sample: divide the per-sample sums instead
            per_sample = g.reduce("ReduceSumSquare", x, list(range(2, rank)))  # [N, C, 1..]
            scaled = g.op("Div", [per_sample, g.op("Mul", [a, a], "a2")], "v2n")
            v2 = g.row(g.reduce("ReduceSum", scaled, [0, *range(2, rank)]))
        else:
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
