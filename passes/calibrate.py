"""calibrate — digital corrections after programming: per-output gain and bias.

Rules, per slice (block on a tile), with ``D`` the level differences the pair really holds
(programmed levels, stuck cells at their stuck level) and ``r_i = E[x_i^2]`` (1 without
calibration data):
* ``gain``: the slice's digital scale becomes the weighted least-squares fit
  ``s'_j = s_j * sum_i r_i q_ij D_ij / sum_i r_i D_ij^2`` (kept only if positive), which can
  only lower the weighted error of that output;
* ``bias`` (needs calibration data): the output's known mean error
  ``sum_i E[x_i] (s'_j D_ij - s_j q_ij)`` is cancelled by the slice's digital offset.
Requires: levels. Guarantees: scales and biases finite.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from rcompile.passes.place import block_q

from rcompile.ir import ChipMapping, Plan
from rcompile.pipeline import CHIP, ChipContext, register


@register
@dataclass(frozen=True)
class Calibrate:
    name: ClassVar[str] = "calibrate"
    stage: ClassVar[str] = CHIP
    requires: ClassVar[frozenset[str]] = frozenset({"levels"})
    ensures: ClassVar[frozenset[str]] = frozenset({"calibrated"})
    gain: bool = True
    bias: bool = True

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        from rcompile.passes._kernels import realised_differences

        out = []
        shift = 0.0
        for pl in mapping.placements:
            blk = plan.blocks[pl.block]
            q = block_q(plan, pl.block).astype(np.float64)
            d = realised_differences(mapping.levels[pl.tile], ctx.stuck[pl.tile], pl.phys_rows,
                                     pl.pos, pl.neg)  # [n, m]
            if ctx.calib is not None:
                row = ctx.calib[blk.layer]
                power, mean = (
                    a[blk.group][blk.rows].astype(np.float64) for a in (row.power, row.mean)
                )
            else:
                power, mean = np.ones(len(blk.rows)), None
            s = pl.scale.astype(np.float64)
            if self.gain:
                num = np.einsum("i,ij,ij->j", power, q, d)
                den = np.einsum("i,ij,ij->j", power, d, d)
                ratio = np.divide(num, den, out=np.ones_like(num), where=den > 0)
                s_new = np.where(ratio > 0, s * ratio, s)
            else:
                s_new = s
            offset = pl.offset.astype(np.float64)
            if self.bias and mean is not None:
                err = mean @ (d * s_new[None, :] - q * s[None, :])  # [m]
                offset = offset - err
                shift += float(np.abs(err).sum())
            out.append(
                replace(pl, scale=s_new.astype(np.float32), offset=offset.astype(np.float32))
            )
        return replace(mapping, placements=tuple(out)), {"bias_shift": shift}
