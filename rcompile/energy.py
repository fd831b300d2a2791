"""Energy and latency of one inference on the programmed chip (an estimate, per layer).

What is counted, per crossbar layer and per inference (``mvms`` = matrix-vector products the
layer needs: output positions of a Conv, rows of a MatMul, 1 for a Gemm on one sample):

* **cells**: every cell on a driven row of a slice's sensed columns dissipates
  ``(read_v * v_i)^2 * G_ij`` during the read pulse, with ``G`` the *realised* conductance (a
  stuck-on cell draws ``g_max`` whatever it was meant to hold) and ``v_i`` the DAC value of row
  ``i`` relative to full scale, measured on the data (``sum over mvms of v_i^2``). Columns a
  slice does not read are not clamped and carry no current.
* **ADC**: one conversion per sensed column per MVM (``+`` and ``-`` columns both) with
  ``adc = column``; one per column pair (the signed difference) with ``adc = pair``.
* **DAC**: one conversion per driven row per MVM.
* **digital**: per output and slice a subtraction (``column`` only: a ``pair`` conversion is
  the difference already), a scaling and an accumulation; per output the
  DAC rescale and the bias; plus every op of the digital graph outside the crossbars
  (:func:`periphery_ops`).

Latency: tiles work in parallel, slices sharing a tile one after another; one MVM takes the
read pulse plus the ADC conversions of its columns, ``ceil(2m / ADCs per tile)`` of them in
series (``ceil(m / ADCs per tile)`` with ``adc = pair``); layers run one after another, MVMs of
a layer one after another (no pipelining), the digital work at
:attr:`~rcompile.device.Costs.digital_gops`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from rcompile.device import Hardware
from rcompile.image import Image
from rcompile.ir import LAYOUT_CONV


@dataclass(frozen=True)
class LayerCost:
    """Energy (joules) and latency (seconds) of one layer for one inference."""

    node: str
    mvms: float
    """Matrix-vector products per inference (per slice)."""
    adc_conversions: float
    cell_j: float
    adc_j: float
    dac_j: float
    digital_j: float
    energy_j: float
    latency_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Activity:
    """What the data did to one crossbar layer (from the emulated graph's probes)."""

    v2: np.ndarray
    """Per input channel (Conv) or feature (Gemm/MatMul): ``sum v^2`` per inference, ``v`` the
    DAC value relative to full scale, summed over the input positions."""
    in_positions: int
    """Input positions per sample (spatial size of a Conv input, rows of a MatMul)."""
    out_positions: int
    """MVMs per sample: output positions of a Conv, rows of a MatMul, 1 for a Gemm."""


def estimate(
    image: Image,
    levels: dict[int, np.ndarray],
    hw: Hardware,
    activity: list[Activity],
    periphery: float = 0.0,
) -> list[LayerCost]:
    """Per crossbar layer, then one ``<digital periphery>`` entry for ``periphery`` ops."""
    cell, costs = hw.cell, hw.costs
    n_adc = max(1, math.ceil(hw.tile_cols / hw.converters.cols_per_adc))
    if levels:
        n_adc = max(1, math.ceil(next(iter(levels.values())).shape[1] / hw.converters.cols_per_adc))
    pulse_s = hw.read.pulse_ns * 1e-9
    reads = hw.converters.reads_per_output  # conversions per output of a slice
    ops_per_read = 1 + reads  # (subtraction,) scaling, accumulation
    out: list[LayerCost] = []
    by_layer: dict[int, list[tuple[int, Any]]] = {}
    for tile in image.tiles:
        for s in tile.slices:
            by_layer.setdefault(s.layer, []).append((int(tile.tile), s))
    for li, rec in enumerate(image.layers):
        op = rec.op
        act = activity[li]
        conv = op.layout == LAYOUT_CONV
        mvms = float(act.out_positions)
        ratio = mvms / max(1, act.in_positions) if conv else 1.0
        cell_j = adc_n = dac_n = dig = 0.0
        tile_time: dict[int, float] = {}
        for t, s in by_layer.get(li, []):
            rows = np.asarray(s.rows, np.intp)
            if conv:
                chan = s.group * op.shape[1] + rows // int(np.prod(op.shape[2:]))
                v2 = act.v2[chan] * ratio
            else:
                v2 = act.v2[rows]
            pr = np.asarray(s.phys_rows, np.intp)
            cols = np.concatenate([np.asarray(s.pos, np.intp), np.asarray(s.neg, np.intp)])
            g_us = cell.g_min_us + levels[t][np.ix_(pr, cols)] * cell.step_us
            cell_j += pulse_s * cell.read_v**2 * float(v2 @ g_us.sum(axis=1)) * 1e-6
            m = len(s.outs)
            adc_n += reads * m * mvms
            dac_n += rows.size * mvms
            dig += ops_per_read * m * mvms
            t_mvm = pulse_s + math.ceil(reads * m / n_adc) * costs.adc_time_ns * 1e-9
            tile_time[t] = tile_time.get(t, 0.0) + t_mvm
        dig += 2 * op.n_out * mvms
        adc_j = adc_n * costs.adc_energy_pj * 1e-12
        dac_j = dac_n * costs.dac_energy_pj * 1e-12
        dig_j = dig * costs.digital_op_pj * 1e-12
        latency = mvms * max(tile_time.values(), default=0.0) + dig / (costs.digital_gops * 1e9)
        out.append(
            LayerCost(
                node=op.node, mvms=mvms, adc_conversions=adc_n, cell_j=cell_j, adc_j=adc_j,
                dac_j=dac_j, digital_j=dig_j, energy_j=cell_j + adc_j + dac_j + dig_j,
                latency_s=latency,
            )
        )
    dj = periphery * costs.digital_op_pj * 1e-12
    out.append(
        LayerCost(
            node="<digital periphery>", mvms=0.0, adc_conversions=0.0, cell_j=0.0, adc_j=0.0,
            dac_j=0.0, digital_j=dj, energy_j=dj, latency_s=periphery / (costs.digital_gops * 1e9),
        )
    )
    return out


_POOLS = ("MaxPool", "AveragePool", "LpPool")


def infer_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor whose shape ONNX shape inference can fix once each graph
    input has the shape given in ``input_shapes`` (empty on an exotic graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        shape = input_shapes.get(inp.name)
        if shape is None or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if not inp.type.tensor_type.HasField("shape"):  # declared without a shape: any rank
            dims.extend(onnx.TensorShapeProto.Dimension() for _ in shape)
        if len(dims) != len(shape):
            continue
        for d, n in zip(dims, shape, strict=True):
            d.ClearField("dim_param")
            d.dim_value = int(n)
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # shape inference is a convenience here, never a requirement
        return {}
    out: dict[str, tuple[int, ...]] = {}
    for vi in (*m.graph.input, *m.graph.value_info, *m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    return out


def periphery_ops(
    model: onnx.ModelProto, sample_shapes: dict[str, tuple[int, ...]], crossbar: set[str]
) -> float:
    """Digital operations per inference of every node outside the crossbars: one per output
    element (times the window for pooling). ``sample_shapes`` fixes each graph input's shape for
    one sample; outputs whose shape cannot be inferred count zero."""
    shapes = infer_shapes(model, sample_shapes)
    sizes = {k: int(np.prod(v, dtype=np.int64)) for k, v in shapes.items()}
    total = 0.0
    for node in model.graph.node:
        if node.name in crossbar or not node.output:
            continue
        n = sizes.get(node.output[0], 0)
        window = 1
        if node.op_type in _POOLS:
            for a in node.attribute:
                if a.name == "kernel_shape":
                    window = int(np.prod(list(a.ints)))
        total += n * window
    return total
