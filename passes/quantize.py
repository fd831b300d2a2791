"""quantize — trained weights to cell-level differences, per-output scale.

Rule: for each output ``j`` of each group, ``scale_j = max_i |W_ij| / T`` and
``q_ij = round(W_ij / scale_j)``, so ``|q| <= T`` and the largest weight of every output is
exact. An all-zero output gets scale 1 and q = 0. ``T = L-1`` (one cell per polarity), or
``2^weight_bits - 1`` for a bit-sliced cell (``Cell.weight_bits``; q is then int16 when it
does not fit int8, and the per-chip stage splits it into slices: docs/slicing.md).
Requires: the plan's float matrices. Guarantees: ``layers`` set, one per op, same order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from rcompile.ir import Layer, Plan, q_dtype
from rcompile.pipeline import PLAN, PlanContext, register


@register
@dataclass(frozen=True)
class Quantize:
    name: ClassVar[str] = "quantize"
    stage: ClassVar[str] = PLAN
    requires: ClassVar[frozenset[str]] = frozenset()
    ensures: ClassVar[frozenset[str]] = frozenset({"quantised"})

    def run(self, plan: Plan, ctx: PlanContext) -> tuple[Plan, dict[str, Any]]:
        top = ctx.device.weight_top  # the cell's top level, or 2^weight_bits - 1 when sliced
        qtype = q_dtype(top)
        layers = []
        err = 0.0
        total = 0.0
        for op, w, b in zip(plan.ops, plan.float_mats, plan.biases, strict=True):
            peak = np.abs(w).max(axis=1)  # [groups, outs]
            scale = np.where(peak > 0, peak / top, 1.0).astype(np.float32)
            q = np.clip(np.rint(w / scale[:, None, :]), -top, top).astype(qtype)
            layers.append(Layer(op=op, q=q, scale=scale, bias=b.astype(np.float32)))
            err += float(np.sum((q * scale[:, None, :] - w) ** 2))
            total += float(np.sum(w.astype(np.float64) ** 2))
        rel = (err / total) ** 0.5 if total else 0.0
        return replace(plan, layers=tuple(layers)), {"rel_quant_error": rel}
