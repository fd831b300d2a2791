"""covariance — reprogram a layer's pairs for the calibration data's input covariance.

Rules: after ``program``, every Gemm/MatMul layer whose calibration moment ``E[x x^T]`` is known
(``RowStats.moment``) has the realised level difference of every pair it owns re-chosen by the
coordinate descent of ``passes/_covariance.py`` on ``sum_j e_j^T S e_j``, where ``e_j`` is the
level error of output ``j`` over all the layer's rows (on every tile of its column strip: their
partial sums are added digitally) and ``S`` the input covariance (``center``; the bias
calibration removes the mean error) shrunk towards its diagonal by ``shrink``. A healthy or
half-stuck pair may then sit off its own target so that it cancels the error of stuck pairs in
correlated rows. Mapping, scales and offsets are unchanged; only the levels of healthy cells
move. Layers without a moment (Conv layers, no calibration data) are left as they are.
Requires: levels. Guarantees: every layer's covariance objective never increases; stuck cells
keep their stuck level; every level within ``0..L-1``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from rcompile.ir import LAYOUT_CONV, ChipMapping, Placement, Plan, chip_view
from rcompile.pipeline import CHIP, ChipContext, register


@register
@dataclass(frozen=True)
class Covariance:
    name: ClassVar[str] = "covariance"
    stage: ClassVar[str] = CHIP
    requires: ClassVar[frozenset[str]] = frozenset({"levels"})
    ensures: ClassVar[frozenset[str]] = frozenset()
    shrink: float = 0.9
    """Weight of the diagonal: ``(1 - shrink) * S + shrink * diag(S)``; 1 = diagonal objective."""
    center: bool = True
    """Covariance (the bias calibration cancels the mean error) instead of ``E[x x^T]``."""
    sweeps: int = 4
    """Coordinate-descent sweeps over the layer's rows at most."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        if not 0.0 <= self.shrink <= 1.0:
            raise ValueError(f"shrink {self.shrink}: expected a fraction in [0, 1]")
        view = chip_view(plan, mapping)
        levels = {t: lv.copy() for t, lv in mapping.levels.items()}
        before = after = 0.0
        moved = solved = unseen = 0
        for (layer, group), pls in _layer_groups(view, mapping).items():
            stats = None if ctx.calib is None else ctx.calib[layer]
            if stats is None or stats.moment is None:
                unseen += view.ops[layer].layout != LAYOUT_CONV
                continue
            b, a, n = self._layer(view, ctx, levels, layer, group, pls)
            before, after, moved, solved = before + b, after + a, moved + n, solved + 1
        stats_out = {"layers_solved": solved, "layers_without_moments": unseen,
                     "cost_before": before, "cost_after": after, "weights_moved": moved}
        return replace(mapping, levels=levels), stats_out

    def _layer(self, view: Plan, ctx: ChipContext, levels: dict[int, np.ndarray], layer: int,
               group: int, pls: list[Placement]) -> tuple[float, float, int]:
        """Descend on one layer group in place of ``levels``; its cost before, after, moves."""
        from rcompile.passes._covariance import (
            column_costs,
            descend,
            pair_levels,
            realisable,
            shrunk_moment,
        )
        from rcompile.passes._kernels import realised_differences

        assert ctx.calib is not None
        stats = ctx.calib[layer]
        assert stats.moment is not None
        top = ctx.device.max_level
        q = view.layers[layer].q[group].astype(np.float64)
        n, m = q.shape
        d = np.zeros((n, m))
        off = np.zeros((n, m))
        tlo = np.zeros((n, m), np.int64)
        thi = np.zeros((n, m), np.int64)
        for pl in pls:
            blk = view.blocks[pl.block]
            at = np.ix_(blk.rows, blk.outs)
            sp, sn = _stuck_pairs(ctx, pl)
            d[at] = realised_differences(levels[pl.tile], ctx.stuck[pl.tile], pl.phys_rows,
                                         pl.pos, pl.neg)
            off[at], tlo[at], thi[at] = realisable(sp, sn, top)
        # a row whose input is always 0 in the calibration data has no covariance either
        if not np.any((d != q) & (stats.power[group] > 0)[:, None]):
            return 0.0, 0.0, 0  # no error any calibration input can see: nothing to cancel
        sigma = shrunk_moment(stats.moment[group], stats.mean[group].astype(np.float64),
                              self.center, self.shrink)
        before = float(column_costs(sigma, d - q).sum())
        dt, moved = descend(sigma, d.T.copy(), ((d - q).T @ sigma).copy(), off.T.copy(),
                            tlo.T.copy(), thi.T.copy(), self.sweeps)
        d = dt.T
        after = float(column_costs(sigma, d - q).sum())
        for pl in pls:
            blk = view.blocks[pl.block]
            sp, sn = _stuck_pairs(ctx, pl)
            t = np.rint(d[np.ix_(blk.rows, blk.outs)] - realisable(sp, sn, top)[0])
            kp, kn = pair_levels(t, sp, sn)
            lv = levels[pl.tile]
            lv[pl.phys_rows[:, None], pl.pos[None, :]] = kp
            lv[pl.phys_rows[:, None], pl.neg[None, :]] = kn
        return before, after, moved


def _layer_groups(view: Plan, mapping: ChipMapping) -> dict[tuple[int, int], list[Placement]]:
    """Placements of every (layer, group), in placement order."""
    out: dict[tuple[int, int], list[Placement]] = {}
    for pl in mapping.placements:
        blk = view.blocks[pl.block]
        out.setdefault((blk.layer, blk.group), []).append(pl)
    return out


def _stuck_pairs(ctx: ChipContext, pl: Placement) -> tuple[np.ndarray, np.ndarray]:
    """Stuck level (NaN = healthy) of the ``+`` and ``-`` cell of every pair of ``pl``."""
    st = ctx.stuck[pl.tile]
    return st[np.ix_(pl.phys_rows, pl.pos)], st[np.ix_(pl.phys_rows, pl.neg)]
