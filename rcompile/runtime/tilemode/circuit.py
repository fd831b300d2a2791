"""The tile-mode graph: every crossbar node of the image's digital graph rewritten into its
circuit (DAC, crossbar, read noise, ADC, digital sum; the steps of
:mod:`rcompile.runtime.tilemode`), one stage function per step, each reading one
:class:`TileLayer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rcompile.device import IDEAL_BITS, Hardware
from rcompile.errors import BadImage
from rcompile.image import Image, SliceRecord
from rcompile.ir import LAYOUT_CONV, WeightOp
from rcompile.runtime.tilemode.layout import LayerLayout
from rcompile.runtime.tilemode.onnxgraph import MS_DOMAIN, GraphWriter, node_attr
from rcompile.runtime.tilemode.probes import Probes, conv_info, dynamic_scale, sum_squares

TILE_BATCH_FLOATS = 1 << 25
"""Budget (float32 values, 128 MB) of one layer's tile tensors per run: the batch shrinks for
models whose layers are split over many tiles (every tile column is a tensor channel)."""

NOISE_BANK_FLOATS = 1 << 22
"""Budget (float32 values, 16 MB) of one layer's bank of read-noise patterns: a layer with a
large input keeps fewer patterns (at least 8, at most ``bank``)."""


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

    def max_batch(self, budget: int | None = None) -> int:
        """Samples per run that keep one layer's tile tensors within ``budget`` values
        (default :data:`TILE_BATCH_FLOATS`)."""
        if not self.floats_per_sample:
            return 1 << 30
        return max(1, (TILE_BATCH_FLOATS if budget is None else budget) // self.floats_per_sample)

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


def _layer_slices(image: Image) -> list[list[tuple[int, int, SliceRecord]]]:
    out: list[list[tuple[int, int, SliceRecord]]] = [[] for _ in image.layers]
    for tile in image.tiles:
        for k, s in enumerate(tile.slices):
            out[s.layer].append((int(tile.tile), k, s))
    return out


@dataclass(frozen=True)
class CircuitSettings:
    """What every layer of one tile-mode graph shares: the converters and the read noise."""

    calibrate: bool
    """The calibration variant: ideal converters, no noise, range outputs."""
    noise_rel: float
    """Relative read noise of every cell read (0 when calibrating)."""
    dac_bits: float
    adc_bits: float
    """Converter resolutions (:data:`~rcompile.device.IDEAL_BITS` when calibrating)."""
    dac_calibrated: bool
    adc_calibrated: bool
    """The converter's range is a calibration batch's (else each inference's own)."""
    headroom: float
    """Margin over the calibrated ranges."""
    seed: int
    bank: int
    """At most this many stored read-noise patterns per layer."""
    rng: np.random.Generator
    """Draws the read-noise patterns, layer after layer."""

    @classmethod
    def of(cls, hw: Hardware, calibrate: bool, calibration: Calibration | None, seed: int,
           bank: int) -> CircuitSettings:
        cv = hw.converters
        adc_bits = IDEAL_BITS if calibrate else cv.adc_bits
        dac_bits = IDEAL_BITS if calibrate else cv.dac_bits
        dac_calibrated = cv.dac_range == "calibrated"
        adc_calibrated = cv.adc_range == "calibrated"
        if not calibrate and calibration is None and (
            (dac_calibrated and dac_bits < IDEAL_BITS)
            or (adc_calibrated and adc_bits < IDEAL_BITS)
        ):
            raise ValueError("a calibrated converter range needs a Calibration")
        return cls(calibrate=calibrate, noise_rel=0.0 if calibrate else hw.read.noise_rel,
                   dac_bits=dac_bits, adc_bits=adc_bits, dac_calibrated=dac_calibrated,
                   adc_calibrated=adc_calibrated, headroom=cv.headroom, seed=int(seed),
                   bank=bank, rng=np.random.default_rng([int(seed), 0xBA4C]))


@dataclass
class TileLayer:
    """One crossbar layer as every stage of :func:`build` reads it."""

    index: int
    """Position of the layer in the image (keys its read-noise draws)."""
    op: WeightOp
    node: onnx.NodeProto
    """The crossbar node of the digital graph its circuit replaces."""
    x: str
    """The layer input (a Gemm's ``transA`` undone)."""
    slices: list[tuple[int, int, SliceRecord]]
    """``(tile, slice index, slice)`` of every slice of the layer."""
    layout: LayerLayout
    settings: CircuitSettings
    dac_codes: float
    """``Q``, the DAC's magnitude codes per sign (1: an ideal DAC, which passes ``x``)."""
    dac_range: float | None
    """A calibrated DAC's full scale, ``max |x| * headroom`` of the calibration batch (None:
    each inference's own)."""
    dac_full_scale: float
    """The constant full scale the DAC codes are in: ``dac_range`` of a calibrated DAC that is
    not ideal, else 1 (the per-inference full scale is a tensor, see :func:`_dac`)."""
    adc_max_code: float
    """The ADC's top code, ``2^adc_bits - 1``."""
    adc_in_steps: bool
    """A calibrated ADC: its steps are folded into the product's weights, so currents come out
    in ADC steps, and its offsets into :attr:`adc_bias`."""
    adc_bias: np.ndarray | None
    """Per column of the product, the bias that puts a calibrated range starting below zero
    current at code 0 (None: no such range)."""
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    """Static shapes of the layer's input and output (None: unknown)."""

    @property
    def conv(self) -> bool:
        return self.op.layout == LAYOUT_CONV

    def floats_per_sample(self) -> int:
        """Per-sample float32 values of the column currents plus the gathered input (0:
        unknown shapes)."""
        if self.input_shape is None or self.output_shape is None:
            return 0
        conv, shape_in, shape_out = self.conv, self.input_shape, self.output_shape
        pos_in = int(np.prod(shape_in[2:] if conv else shape_in[1:-1], dtype=np.int64))
        pos_out = int(np.prod(shape_out[2:] if conv else shape_out[1:-1], dtype=np.int64))
        return 2 * self.layout.columns * pos_out + self.layout.index.size * pos_in


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
    laid_out: dict[int, LayerLayout] | None = None,
) -> Built:
    """The tile-mode model of ``image`` on a chip whose tiles hold realised ``levels``.

    ``graph`` is the image's digital graph (weights stripped), ``levels[t]`` the float level of
    every cell of tile ``t`` after programming and stuck cells, ``biases`` the chip's digital
    bias per layer. ``calibrate`` builds the calibration variant (ideal converters, no noise,
    extra outputs read by :meth:`Built.read_calibration`); a ``calibrated`` converter needs that
    :class:`Calibration`. ``shapes`` (static tensor shapes, optional) lets read noise come from
    a bank of at most ``bank`` patterns per layer instead of ``RandomNormalLike``, and sizes
    :attr:`Built.floats_per_sample`. ``laid_out`` caches every layer's slices laid out in
    unit 1 (:meth:`LayerLayout.in_units`), filled here: the calibration graph and the final one
    of one image, levels and hardware share one cache, so the layouts are computed once.
    """
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    g = GraphWriter(model)
    settings = CircuitSettings.of(hw, calibrate, calibration, seed, bank)
    nodes = {n.name: n for n in model.graph.node}
    per_layer = _layer_slices(image)
    if laid_out is None:
        laid_out = {}
    built = Built(model=model, n_outputs=len(model.graph.output), probes=[])
    current_outputs: list[str] = []  # calibration: per slice its current extremes
    replaced: dict[str, list[onnx.NodeProto]] = {}
    for li, rec in enumerate(image.layers):
        start = len(g.nodes)
        layer = _tile_layer(g, li, rec.op, nodes, per_layer[li], levels, hw, settings,
                            calibration, shapes or {}, laid_out)
        v, dac_scale, probe = _dac(g, layer, built.calibration)  # 1.
        code, zero_point = _crossbar(g, layer, v, current_outputs)  # 2.-4.
        _digital(g, layer, code, zero_point, dac_scale, biases[li])  # 5.
        built.probes.append(probe)
        built.slices += [(t, k) for t, k, _ in layer.slices]
        built.slots.append((layer.layout.groups * layer.layout.per, layer.layout.slot))
        built.floats_per_sample = max(built.floats_per_sample, layer.floats_per_sample())
        replaced[layer.node.name] = g.nodes[start:]
        del g.nodes[start:]
    built.calibration += current_outputs
    _splice(model, g, image, nodes, replaced, biases)
    for p in built.probes:
        g.output(p.v2)
        g.output(p.in_shape)
    for name in built.calibration:
        g.output(name)
    model.graph.output.extend(g.outputs)
    if g.uses_ms_domain and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return built


def _tile_layer(
    g: GraphWriter, li: int, op: WeightOp, nodes: dict[str, onnx.NodeProto],
    slices: list[tuple[int, int, SliceRecord]], levels: dict[int, np.ndarray], hw: Hardware,
    settings: CircuitSettings, calibration: Calibration | None,
    shapes: dict[str, tuple[int, ...]], laid_out: dict[int, LayerLayout],
) -> TileLayer:
    """The record of layer ``li``: its converters' constants and its slices laid out as one
    product (a calibrated ADC's steps folded in). Adds the Transpose that undoes a Gemm's
    ``transA``."""
    node = nodes.get(op.node)
    if node is None:
        raise BadImage(f"image: the digital graph has no node '{op.node}'")
    if not slices:
        raise BadImage(f"image: layer {op.node} has no slice on any tile")
    x = node.input[0]
    if node.op_type == "Gemm" and node_attr(node, "transA", 0):
        x = g.op("Transpose", [x], "xt", perm=[1, 0])
    s = settings
    dac_range = None
    if s.dac_calibrated and calibration is not None:
        dac_range = max(calibration.dac_max[li] * s.headroom, 1e-30)
    real_dac = not s.calibrate and s.dac_bits < IDEAL_BITS
    dac_codes = float(2**s.dac_bits - 1) if real_dac else 1.0
    full_scale = dac_range if real_dac and s.dac_calibrated and dac_range is not None else 1.0
    unit = hw.cell.read_v * hw.cell.step_us * dac_codes / full_scale  # output per (I+ - I-)
    if li not in laid_out:
        laid_out[li] = LayerLayout.of(op, slices, levels, hw, 1.0)
    layout = laid_out[li].in_units(unit)
    adc_max_code = float(2**s.adc_bits - 1)
    adc_in_steps = s.adc_bits < IDEAL_BITS and s.adc_calibrated
    adc_bias = None
    if adc_in_steps:  # fold each slice's ADC step into its weights, its offset into a bias
        assert calibration is not None
        per_unit = (dac_codes / full_scale if s.dac_calibrated else dac_codes) * s.headroom
        adc_bias = layout.fold_adc([calibration.currents[(t, k)] for t, k, _ in slices],
                                   per_unit, adc_max_code)
    return TileLayer(index=li, op=op, node=node, x=x, slices=slices, layout=layout,
                     settings=settings, dac_codes=dac_codes, dac_range=dac_range,
                     dac_full_scale=full_scale, adc_max_code=adc_max_code,
                     adc_in_steps=adc_in_steps, adc_bias=adc_bias,
                     input_shape=shapes.get(x), output_shape=shapes.get(node.output[0]))


def _dac(g: GraphWriter, layer: TileLayer, dac_max_outputs: list[str]
         ) -> tuple[str, str | None, Probes]:
    """Step 1: the rows' drive ``v`` in units of ``1 / dac_codes`` of the full scale, the
    per-inference full scale (None: a constant one), and the layer's energy probe. A
    calibration graph's max-|x| output goes to ``dac_max_outputs``."""
    s, x, conv, k = layer.settings, layer.x, layer.conv, layer.op.shape[0]
    rank = len(layer.op.shape)
    axes = list(range(1, rank)) if conv else [-1]
    spatial = [0, *range(2, rank)]
    dac_scale: str | None = None
    if s.calibrate:
        dac_max_outputs.append(g.row(g.reduce("ReduceMax", g.op("Abs", [x]), None, 0)))
        if not s.dac_calibrated:
            dac_scale = dynamic_scale(g, x, axes)
        v = x if dac_scale is None else g.op("Div", [x, dac_scale], "v")
        v2 = sum_squares(g, v, conv, spatial, k)
    elif s.dac_bits >= IDEAL_BITS:  # an ideal DAC: x drives the rows as it is
        v = x
        if layer.dac_range is not None:
            v2 = sum_squares(g, x, conv, spatial, k, scale=1.0 / layer.dac_range)
        else:  # energy counts v relative to each inference's own full scale
            v2 = sum_squares(g, g.op("Div", [x, dynamic_scale(g, x, axes)]), conv, spatial, k)
    else:
        codes = layer.dac_codes
        if s.dac_calibrated:
            v = g.op("Mul", [x, g.const("dac_gain", codes / layer.dac_full_scale)], "v")
        else:
            dac_scale = dynamic_scale(g, x, axes)
            v = g.op("Mul", [x, g.op("Div", [g.const("dac_codes", codes), dac_scale])], "v")
        v = g.clip_round(v, -codes, codes, "v")
        v2 = sum_squares(g, v, conv, spatial, k, scale=1.0 / codes)
    probe = Probes(v2=v2, in_shape=g.row(g.op("Shape", [x]), TensorProto.FLOAT),
                   conv=conv_info(layer.node, layer.op) if conv else None)
    return v, dac_scale, probe


def _digital(g: GraphWriter, layer: TileLayer, code: str, zero_point: int | None,
             dac_scale: str | None, bias: np.ndarray) -> str:
    """Step 5: the codes summed into the layer's outputs, rows back to a MatMul's leading axes,
    the DAC's per-inference full scale undone and the chip's bias added, under the crossbar
    node's own output name."""
    node, op = layer.node, layer.op
    tail: list[tuple[str, list[str]]] = []
    if node.op_type == "MatMul":
        tail.append(("Reshape", [g.op("Concat", [
            g.dims(layer.x, 0, -1), g.const("n", [op.n_out], np.int64)], "oshape", axis=0)]))
    # (a MatMul's bias is added by the frontend's own Add node next)
    b: np.ndarray | None = None if node.op_type == "MatMul" else np.asarray(bias, np.float32)
    if dac_scale is not None:
        tail.append(("Mul", [dac_scale]))
        if b is not None:
            tail.append(("Add", [g.const("bias", b.reshape(-1, *([1] * (len(op.shape) - 2))))]))
            b = None
    out = node.output[0]
    y = layer.layout.combine(g, code, layer.conv, out=None if tail else out, bias=b,
                             zp=zero_point)
    for i, (op_type, extra) in enumerate(tail):
        y = g.op(op_type, [y, *extra], "y", out=out if i == len(tail) - 1 else None)
    return y


def _splice(
    model: onnx.ModelProto, g: GraphWriter, image: Image, nodes: dict[str, onnx.NodeProto],
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


def _crossbar(g: GraphWriter, layer: TileLayer, v: str, current_outputs: list[str]
              ) -> tuple[str, int | None]:
    """Steps 2.-4. for every slice of ``layer`` at once on the DAC's output ``v``: gathered
    rows, read noise, the product and the ADC. Returns the codes and their zero point (see
    :func:`_adc_codes`); a calibration graph's per-slice current extremes go to
    ``current_outputs``."""
    s, lay, conv = layer.settings, layer.layout, layer.conv
    src = v
    if not conv:  # rows of the layer input
        src = g.op("Reshape", [v, g.const("k2", [-1, layer.op.shape[0]], np.int64)], "v2d")
    rows = lay.index.reshape(-1)
    vin = src
    if not np.array_equal(rows, np.arange(lay.channels)):
        vin = g.op("Gather", [src, g.const("rows", rows, np.int64)], "vin", axis=1)
    groups, noisy = lay.groups, s.noise_rel > 0
    if noisy:  # each group's input twice, for its + and its - columns, each noisy
        vin = _noisy_rows(g, layer, vin)
        groups = lay.signs * lay.groups  # a pair's group reads both copies
    max_code = layer.adc_max_code
    clipped = False  # the ADC's clip to [0, max_code] steps done by the product itself
    if conv:
        w_ins = [vin, g.const("w", lay.weights(noisy))]
        if layer.adc_bias is not None:
            w_ins.append(g.const("b", layer.adc_bias))
        if layer.adc_in_steps and s.adc_bits <= 8:  # onnxruntime's Conv with a fused Clip
            cur = g.op("FusedConv", w_ins, "cur", domain=MS_DOMAIN, group=groups,
                       activation="Clip", activation_params=[0.0, max_code],
                       **_conv_attrs(layer.node))
            g.uses_ms_domain = True
            clipped = True
        else:
            cur = g.op("Conv", w_ins, "cur", group=groups, **_conv_attrs(layer.node))
    else:  # block-diagonal: one batched MatMul over the groups
        cur = _grouped_matmul(g, vin, lay.weights(noisy), groups, layer.adc_bias)
    # cur: [N, columns, *spatial] (Conv) or [rows, columns]
    per_slice = ""
    if s.calibrate or (s.adc_bits < IDEAL_BITS and not layer.adc_in_steps):
        per_slice = g.op("Reshape", [cur, g.const("s5", lay.slot_shape(), np.int64)], "cur5")
    if s.calibrate:
        current_outputs += [g.row(_reduce5(g, "ReduceMin", per_slice, [0, 2], 0)),
                            g.row(_reduce5(g, "ReduceMax", per_slice, [0, 2], 0))]
    if layer.adc_in_steps:  # currents are in ADC steps already
        return _adc_codes(g, cur, int(s.adc_bits), clipped)
    if s.adc_bits < IDEAL_BITS:  # per inference and slice: [min(0, lo), hi]
        lo = g.minimum(_reduce5(g, "ReduceMin", per_slice, [2]), 0.0, "lo")
        hi = _reduce5(g, "ReduceMax", per_slice, [2])
        if lay.pair:
            return _signed_dynamic_adc(g, cur, per_slice, lo, hi, max_code), None
        step_t = g.maximum(g.op("Mul", [g.op("Sub", [hi, lo]), g.const("inv", 1.0 / max_code)]),
                           1e-30, "adc_step")
        code = g.round(g.op("Div", [g.op("Sub", [per_slice, lo]), step_t]), 0.0, max_code)
        return g.op("Reshape", [g.op("Mul", [code, step_t]), g.op("Shape", [cur])], "adc"), None
    return cur, None


def _reduce5(g: GraphWriter, op_type: str, x: str, axes: list[int], keepdims: int = 1) -> str:
    """``op_type`` of the 5-D per-slice currents ``x`` over ``axes`` and the last axis: the
    contiguous last axis first, then the rest. Min and max are exact, so the values are those
    of one reduction over all the axes; onnxruntime's single strided reduction over
    ``[0, 2, 4]`` ran about 25x slower than the two (a 6x12x32x32x128 tensor, 2 threads)."""
    last = g.reduce(op_type, x, [4], 1)
    return g.reduce(op_type, last, [*axes, 4], keepdims)


def _signed_dynamic_adc(g: GraphWriter, cur: str, per_slice: str, lo: str, hi: str,
                        max_code: float) -> str:
    """A ``pair`` ADC with a per-inference range: the signed currents ``per_slice`` (slots on
    axis 3, as :meth:`LayerLayout.slot_shape`) read as ``step * round(I / step)``, ``step`` the
    range ``[min(0, lo), max(0, hi)]`` over ``max_code``: zero current is a code, and the
    ``max_code + 1`` codes cover the range within half a step at either end."""
    hi = g.maximum(hi, 0.0, "hi")
    step_t = g.maximum(g.op("Mul", [g.op("Sub", [hi, lo]), g.const("inv", 1.0 / max_code)]),
                       1e-30, "adc_step")
    code = g.round(g.op("Div", [per_slice, step_t]), -max_code, max_code)
    return g.op("Reshape", [g.op("Mul", [code, step_t]), g.op("Shape", [cur])], "adc")


def _adc_codes(g: GraphWriter, cur: str, bits: int, clipped: bool = False
               ) -> tuple[str, int | None]:
    """Codes ``clip(round(cur), 0, 2^bits - 1)`` of currents already in ADC steps, and their
    zero point.

    Up to 8 bits: uint8 codes from a QuantizeLinear with zero point ``255 - max_code`` (its
    saturation at 255 is the ADC's top code; currents below zero are clipped first), which the
    digital sum reads back with that zero point (:meth:`LayerLayout.combine`), so the float codes
    are never written. ``clipped``: ``cur`` is in ``[0, max_code]`` already (a fused Clip), and the
    zero point is 0. Above 8 bits: float codes (zero point None)."""
    max_code = float(2**bits - 1)
    if clipped and not g.uint8_codes:
        return g.round(cur, 0.0, max_code), None
    if clipped:
        return g.op("QuantizeLinear", [cur, g.const("one", 1.0), g.const("zp0", 0, np.uint8)],
                    "adc"), 0
    if bits > 8 or not g.uint8_codes:
        return g.clip_round(cur, 0.0, max_code), None
    cur = g.op("Relu", [cur], "cur")
    zp = 255 - int(max_code)
    return g.op("QuantizeLinear", [cur, g.const("one", 1.0), g.const("zp", zp, np.uint8)],
                "adc"), zp


def _grouped_matmul(
    g: GraphWriter, vin: str, w: np.ndarray, groups: int, bias: np.ndarray | None
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


def _conv_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        if a.name != "group":
            out[a.name] = helper.get_attribute_value(a)
    return out


def _noisy_rows(g: GraphWriter, layer: TileLayer, vin: str) -> str:
    """Every group of ``layer``'s gathered input ``vin`` twice (for its ``+`` and its ``-``
    columns: ``[N, groups * 2 * width, *spatial]``), each element times ``1 + rel * N(0, 1)``:
    every read of a cell carries relative noise ``rel``, drawn per row and read, independently
    for the two signs.
    Per column this is exactly the variance of independent cell noise,
    ``rel^2 sum_i (v_i G_ij)^2``; columns reading the same rows share their draws. Draws come
    from ``bank`` stored per-inference patterns ``per`` picked at random
    (``RandomNormalLike`` when the input shape is unknown). One broadcast Mul writes both
    copies in the order the grouped product reads them."""
    s, conv, lay = layer.settings, layer.conv, layer.layout
    groups, width, rel = lay.groups, lay.width, s.noise_rel
    seed, k = s.seed, layer.index  # the layer's own random stream
    per = None  # one inference's draws
    if layer.input_shape is not None:
        per = (groups, 2, width,
               *([int(np.prod(layer.input_shape[2:], dtype=np.int64))] if conv else []))
    room = max(8, NOISE_BANK_FLOATS // max(1, int(np.prod(per or (1,)))))
    bank = min(s.bank, room)
    split = g.const("gw", [0, groups, 1, width, *([-1] if conv else [])], np.int64)
    v5 = g.op("Reshape", [vin, split], "vg")
    back = g.shape_with(vin, [2 * groups * width])
    if per is None or bank < 1:
        both = g.op("Concat", [v5, v5], "vv", axis=2)
        z = g.normal_like(both, seed * 7919 + k, "z")
        f = g.op("Add", [g.op("Mul", [z, g.const("rel", rel)]), g.const("one", 1.0)], "f")
        return g.op("Reshape", [g.op("Mul", [both, f], "vnoisy"), back], "vnoisy")
    patterns = 1.0 + rel * s.rng.standard_normal((bank, *per), dtype=np.float32)
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


