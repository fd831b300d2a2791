"""transform — the mapping transformation (MT), solved per chip with OR-Tools.

Rule: every logical output of a block goes to one of the adjacent column pairs ``(2p, 2p+1)``
of its strip of the tile under one of four transforms: polarity (which column is ``+``) x
common mode
(``low``: the idle cell of each weight sits at level 0, the two-column scheme; ``high``: it sits at
the top level, so a stuck-on cell on the idle side costs nothing). There is no per-cell
compensation: a transform applies to the whole pair, as in the MT paper. The cost of an
(output, pair) is the least true error over the four transforms; outputs go to pairs by an exact
linear assignment. Rows stay in order. On a device with per-level programming error
(``Cell.level_rms_error``, set by ``build --device``) the expected error of the levels each
transform writes on healthy cells joins the cost (``noise=all``, the default there via
``noise=auto``), so MT knows when a high common mode is costly to program: in a paired A/B on
the neurosim preset this gained on average and lost nowhere (docs/device.md).
``noise=partners`` counts only healthy cells whose partner is stuck; ``noise=off`` is the
exact-level cost, which is also what every mode means without an error table.
Requires: placements. Guarantees: ``pos``/``neg``/``high`` set per output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
from rcompile.passes._objective import noise_mode
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
    requires: ClassVar[frozenset[str]] = frozenset({"placements"})
    ensures: ClassVar[frozenset[str]] = frozenset()
    noise: Literal["auto", "off", "partners", "all"] = "auto"
    """auto (= all) | off | partners | all (``_objective.noise_mode``): which healthy cells
    weigh in the device's per-level programming error."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        top = ctx.device.max_level
        out = []
        total = 0.0
        mode = noise_mode(self.noise, ctx.device.level_rms_error, auto="all")
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
                if mode != "off":  # expected programming error of the healthy cells written
                    hp, hn = np.isnan(sp), np.isnan(sn)
                    if mode == "partners":  # ... only where the partner is stuck
                        hp, hn = hp & ~np.isnan(sn), hn & ~np.isnan(sp)
                    err += hp[:, None, :] * sq_err[kp.astype(np.intp)][:, :, None]
                    err += hn[:, None, :] * sq_err[kn.astype(np.intp)][:, :, None]
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
