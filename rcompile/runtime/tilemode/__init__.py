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
   (:class:`LayerLayout`): slices that read the same input channels (Conv: the channels their
   rows touch; Gemm/MatMul: their rows) form a group whose input is gathered once, and the layer is
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
   With ``adc = pair`` the product has one output per column pair, ``I+ - I-`` (weights
   ``G+ - G-``; with read noise, ``G+`` on the ``+`` noisy copy and ``-G-`` on the ``-`` one).
4. **ADC** per column (``pair``: per pair), ``2^adc_bits`` codes, rounding to the nearest code,
   over ``[lo, hi]``:
   ``dynamic``, ``min(0, min I)`` to ``max I`` of this inference and slice; ``calibrated``, the
   extremes of a calibration batch (times ``headroom``), with currents beyond clipped at both
   ends. A calibrated ADC's step and offset are folded into the product's weights and bias, its
   clip into the product (onnxruntime's ``FusedConv`` with a ``Clip`` activation), and its
   rounding is a QuantizeLinear to uint8: the codes stay bytes until step 5 reads them. A pair
   ADC's range is signed, ``[min(0, lo), max(0, hi)]``, with zero current a code.
5. **Digital.** ``+`` code minus ``-`` code (``pair``: the code less the code of zero current,
   in the read-back's zero points), times the ADC step and
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

from rcompile.runtime.tilemode.circuit import (
    NOISE_BANK_FLOATS,
    TILE_BATCH_FLOATS,
    Built,
    Calibration,
    CircuitSettings,
    TileLayer,
    build,
)
from rcompile.runtime.tilemode.layout import COMBINE_DENSE_RATIO, LayerLayout
from rcompile.runtime.tilemode.onnxgraph import MIN_OPSET, MS_DOMAIN, GraphWriter, has_kernel
from rcompile.runtime.tilemode.probes import Probes, add_probes

__all__ = [
    "COMBINE_DENSE_RATIO",
    "MIN_OPSET",
    "MS_DOMAIN",
    "NOISE_BANK_FLOATS",
    "TILE_BATCH_FLOATS",
    "Built",
    "Calibration",
    "CircuitSettings",
    "GraphWriter",
    "LayerLayout",
    "Probes",
    "TileLayer",
    "add_probes",
    "build",
    "has_kernel",
]
