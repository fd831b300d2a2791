"""program — target level of every cell of every used tile.

Schemes:
* ``two-column`` (baseline, fault-agnostic): ``w > 0`` on ``G+`` with ``G- = g_min``, the reverse
  for ``w < 0``.
* ``differential`` (fault-agnostic, pruning + differential-mapping paper): the pair's common
  mode sits at the state faults favour: ``high`` (idle cell at the top level, so zero and pruned
  weights absorb stuck-on cells) when the chip's stuck-on cells outnumber stuck-off ones
  (``common=auto``), else ``low``; ``common=high|low`` forces it. Only the aggregate ratio of
  the process is used, never where the faults are.
* ``transform``: each pair's common mode as chosen by ``transform`` (``Placement.high``).
* ``compensate``: with the fault map, each pair is programmed optimally
  (``passes/_objective.best_levels``): a stuck cell's healthy partner is set so that
  ``G+ - G-`` comes as close as the levels allow to the weight. On a device that programs some
  levels less accurately (``Cell.level_rms_error``), ``noise`` adds the expected programming
  error of written levels to the objective (``_objective.best_levels_noisy``): ``partners``
  only for the healthy partner of a stuck cell (healthy pairs keep the lowest common mode),
  ``all`` (alias ``true``) for every healthy cell, so a healthy pair may sit at the common mode
  whose levels program best. Default ``auto`` = ``off``: no mode gave a consistent paired
  gain on the neurosim preset (docs/device.md).
Unused cells stay at level 0 (least current).
Requires: placements. Guarantees: ``levels`` for every used tile.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
from rcompile.passes._objective import best_levels, best_levels_noisy, noise_mode
from rcompile.passes.place import block_q
from rcompile.passes.transform import scheme_levels

from rcompile.ir import ChipMapping, Plan
from rcompile.pipeline import CHIP, ChipContext, register

SCHEMES = ("two-column", "differential", "transform", "compensate")


@register
@dataclass(frozen=True)
class Program:
    name: ClassVar[str] = "program"
    stage: ClassVar[str] = CHIP
    requires: ClassVar[frozenset[str]] = frozenset({"placements"})
    ensures: ClassVar[frozenset[str]] = frozenset({"levels"})
    scheme: Literal["two-column", "differential", "transform", "compensate"] = "compensate"
    common: Literal["auto", "high", "low"] = "auto"
    """For ``differential``: auto | high | low."""
    noise: Literal["auto", "off", "partners", "all"] = "auto"
    """For ``compensate``: auto (= off) | off | partners | all (``_objective.noise_mode``):
    how the device's per-level programming error joins the objective (see docs/device.md)."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; expected one of {SCHEMES}")
        top = ctx.device.max_level
        rows, cols = ctx.geometry.rows, ctx.geometry.cols
        levels: dict[int, np.ndarray] = {}
        high_all = self._common_high(ctx) if self.scheme == "differential" else False
        mode = noise_mode(self.noise, ctx.device.level_rms_error)
        sq_err = ctx.device.expected_sq_error(np.arange(top + 1))
        for pl in mapping.placements:
            lv = levels.setdefault(pl.tile, np.zeros((rows, cols), np.uint8))
            q = block_q(plan, pl.block)
            r = pl.phys_rows[:, None]
            if self.scheme == "compensate" and mode == "off":  # best_levels, compiled
                from rcompile.passes._kernels import compensate_levels

                compensate_levels(lv, q, ctx.stuck[pl.tile], pl.phys_rows, pl.pos, pl.neg, top)
                continue
            if self.scheme == "compensate":
                st = ctx.stuck[pl.tile]
                if mode != "off":
                    kp, kn = best_levels_noisy(q, st[r, pl.pos], st[r, pl.neg], top, sq_err,
                                               healthy_pairs=mode == "all")
                else:
                    kp, kn, _ = best_levels(q, st[r, pl.pos], st[r, pl.neg], top)
            else:
                high = {"two-column": False, "differential": high_all}.get(self.scheme, pl.high)
                kp, kn = scheme_levels(q, np.broadcast_to(high, q.shape[1:]), top)
            lv[r, pl.pos] = kp
            lv[r, pl.neg] = kn
        return replace(mapping, levels=levels), {"tiles_programmed": len(levels)}

    def _common_high(self, ctx: ChipContext) -> bool:
        if self.common in ("high", "low"):
            return self.common == "high"
        stuck = ctx.stuck[~np.isnan(ctx.stuck)]
        return bool(
            np.sum(stuck > ctx.device.max_level / 2) > np.sum(stuck <= ctx.device.max_level / 2)
        )
