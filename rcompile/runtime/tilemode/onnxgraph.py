"""Writing ONNX nodes for tile mode: fresh names, every node in the graph's own opset, and which
ops onnxruntime has a kernel for."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rcompile.errors import BadImage

MS_DOMAIN = "com.microsoft"
"""onnxruntime's own operator domain (its CPU kernels include ``FusedConv``)."""

MIN_OPSET = 7
"""Oldest ``ai.onnx`` opset the emulator writes nodes for (onnxruntime's oldest supported)."""


class GraphWriter:
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
        """Whether onnxruntime runs ``op_type`` of this graph's opset (see :func:`has_kernel`)."""
        return has_kernel(op_type, self.opset)

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
        return self.op("Sub", [self.op("Mul", [total, self.const("half", 0.5)], hint),
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
def has_kernel(op_type: str, opset: int) -> bool:
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
    open_ended = np.iinfo(np.int32).max  # the upper bound onnxruntime gives an open range
    return any(lo == since or lo <= since <= hi < open_ended for lo, hi in kernels.get(op_type, []))


def node_attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default

