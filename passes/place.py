"""place — put every logical block on a physical tile.

Rules:
* ``order=sequential`` (baseline): block ``b`` goes to tile ``b``, first ``n`` rows, output ``j``
  on the adjacent columns ``(2j, 2j+1)``.
* ``order=assign``: when the chip has spare tiles, blocks go where they lose least: an exact
  OR-Tools assignment over blocks x tiles of an estimated cost ``E_b * D_t(n_b, m_b)``, where
  ``E_b`` is the block's weighted squared-weight mass and ``D_t`` the stuck-cell density of the
  cleanest ``n_b`` rows and ``2 m_b`` columns of tile ``t`` (the ones later passes can pick).
Requires: blocks. Guarantees: one block per tile, identity rows and adjacent pairs.
Raises DoesNotFit when the chip has fewer tiles than blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rcompile.errors import DoesNotFit
from rcompile.ir import ChipMapping, Placement, Plan
from rcompile.pipeline import CHIP, ChipContext, register
from rcompile.solvers import assign


def block_weights(plan: Plan, ctx: ChipContext, b: int) -> np.ndarray:
    """``r_i * scale_j^2`` for every entry of block ``b`` (the objective's weights)."""
    blk = plan.blocks[b]
    layer = plan.layers[blk.layer]
    s = layer.scale[blk.group][blk.outs].astype(np.float64)
    if ctx.calib is not None:
        r = ctx.calib[blk.layer][0][blk.group][blk.rows].astype(np.float64)
    else:
        r = np.ones(len(blk.rows))
    return r[:, None] * (s**2)[None, :]


def block_q(plan: Plan, b: int) -> np.ndarray:
    blk = plan.blocks[b]
    return plan.layers[blk.layer].q[blk.group][np.ix_(blk.rows, blk.outs)]


def initial_placement(plan: Plan, b: int, tile: int) -> Placement:
    blk = plan.blocks[b]
    m = len(blk.outs)
    return Placement(
        block=b,
        tile=tile,
        phys_rows=np.arange(len(blk.rows), dtype=np.int32),
        pos=np.arange(0, 2 * m, 2, dtype=np.int32),
        neg=np.arange(1, 2 * m, 2, dtype=np.int32),
        high=np.zeros(m, bool),
        scale=plan.layers[blk.layer].scale[blk.group][blk.outs].astype(np.float32),
        offset=np.zeros(m, np.float32),
    )


@register
@dataclass(frozen=True)
class Place:
    name: ClassVar[str] = "place"
    stage: ClassVar[str] = CHIP
    order: str = "sequential"
    """sequential | assign"""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        nb, nt = len(plan.blocks), ctx.geometry.tiles
        if nb > nt:
            raise DoesNotFit(
                f"fault map {ctx.chip_id}: the model needs {nb} tiles of "
                f"{ctx.geometry.rows}x{ctx.geometry.cols} but the chip has {nt}"
            )
        if self.order == "assign" and nt > nb:
            tiles = assign(self._cost(plan, ctx))
        elif self.order in ("sequential", "assign"):
            tiles = np.arange(nb, dtype=np.int32)
        else:
            raise ValueError(f"unknown order {self.order!r}; expected sequential or assign")
        placements = tuple(initial_placement(plan, b, int(t)) for b, t in enumerate(tiles))
        bias = tuple(layer.bias.copy() for layer in plan.layers)
        return ChipMapping(placements=placements, bias=bias), {"tiles_used": nb, "tiles": nt}

    def _cost(self, plan: Plan, ctx: ChipContext) -> np.ndarray:
        stuck = ~np.isnan(ctx.stuck)  # [T, R, C]
        row_frac = np.sort(stuck.mean(axis=2), axis=1)  # cleanest rows first
        col_frac = np.sort(stuck.mean(axis=1), axis=1)
        row_cum = np.cumsum(row_frac, axis=1)
        col_cum = np.cumsum(col_frac, axis=1)
        overall = max(float(stuck.mean()), 1e-12)
        cost = np.zeros((len(plan.blocks), ctx.geometry.tiles))
        for b, blk in enumerate(plan.blocks):
            n, m2 = len(blk.rows), 2 * len(blk.outs)
            q = block_q(plan, b).astype(np.float64)
            mass = float(np.sum(block_weights(plan, ctx, b) * (q**2 + 1.0)))
            density = (row_cum[:, n - 1] / n) * (col_cum[:, m2 - 1] / m2) / overall
            cost[b] = mass * density
        return cost
