"""transform — the mapping transformation (MT), solved per chip with OR-Tools.

Rule: every logical output of a block goes to one of the adjacent column pairs ``(2p, 2p+1)``
of its strip of the tile under one of four transforms: polarity (which column is ``+``) x
common mode
(``low``: the idle cell of each weight sits at level 0, the two-column scheme; ``high``: it sits at
the top level, so a stuck-on cell on the idle side costs nothing). There is no per-cell
compensation: a transform applies to the whole pair, as in the MT paper. The cost of an
(output, pair) is the least true error over the four transforms; outputs go to pairs by an exact
linear assignment. Rows stay in order. With ``noise=true``, on a device with per-level
programming error (``Device.level_rms_error``), the expected error of the levels each
transform writes joins the cost, so MT knows when a high common mode is costly to program.
Requires: placements. Guarantees: ``pos``/``neg``/``high`` set per output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from rcompile.passes.place import block_q, block_weights

from rcompile.ir import ChipMapping, Plan
from rcompile.pipeline import CHIP, ChipContext, register
from rcompile.solvers import assign


def scheme_levels(
    q: np.ndarray, high: np.ndarray | bool, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """Target levels of a fault-agnostic pair: low (two-column) or high common mode."""
    kp_low, kn_low = np.maximum(q, 0), np.maximum(-q, 0)
    kp_high, kn_high = top + np.minimum(q, 0), top - np.maximum(q, 0)
    return np.where(high, kp_high, kp_low), np.where(high, kn_high, kn_low)


def realised(k: np.ndarray, stuck: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(stuck), k, stuck)


@register
@dataclass(frozen=True)
class Transform:
    name: ClassVar[str] = "transform"
    stage: ClassVar[str] = CHIP
    noise: bool = False
    """Weigh in the device's per-level programming error (opt-in)."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        top = ctx.device.max_level
        out = []
        total = 0.0
        noisy = self.noise and bool(ctx.device.level_rms_error)
        sq_err = ctx.device.expected_sq_error(np.arange(top + 1))
        for pl in mapping.placements:
            q = block_q(plan, pl.block).astype(np.float64)  # [n, m]
            w = block_weights(plan, ctx, pl.block)
            n, m = q.shape
            npairs = len(pl.cols) // 2  # adjacent pairs of the block's strip
            st = ctx.stuck[pl.tile][pl.phys_rows][:, pl.cols]  # [n, strip]
            a, b = st[:, 0 : 2 * npairs : 2], st[:, 1 : 2 * npairs : 2]  # [n, P]
            best = np.full((m, npairs), np.inf)
            pick = np.zeros((m, npairs), np.int8)
            for t, (flip, high) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
                kp, kn = scheme_levels(q, bool(high), top)  # [n, m]
                sp, sn = (b, a) if flip else (a, b)
                e = realised(kp[:, :, None], sp[:, None, :]) - realised(
                    kn[:, :, None], sn[:, None, :]
                )
                err = (e - q[:, :, None]) ** 2
                if noisy:  # expected programming error of the healthy cells written
                    err += np.isnan(sp)[:, None, :] * sq_err[kp.astype(np.intp)][:, :, None]
                    err += np.isnan(sn)[:, None, :] * sq_err[kn.astype(np.intp)][:, :, None]
                cost = np.einsum("ij,ijp->jp", w, err)
                better = cost < best
                best = np.where(better, cost, best)
                pick = np.where(better, t, pick)
            choice = assign(best)
            t = pick[np.arange(m), choice]
            flip, high = (t % 2).astype(bool), (t >= 2)
            even, odd = pl.cols[2 * choice], pl.cols[2 * choice + 1]
            total += float(best[np.arange(m), choice].sum())
            out.append(
                replace(
                    pl,
                    pos=np.where(flip, odd, even).astype(np.int32),
                    neg=np.where(flip, even, odd).astype(np.int32),
                    high=high,
                )
            )
        return replace(mapping, placements=tuple(out)), {"cost_after": total}
