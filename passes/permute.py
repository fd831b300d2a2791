"""permute — row and column permutation, alternated until the block cost stops falling.

Rules: with the column pairs fixed, logical rows go to physical rows by an exact OR-Tools linear
assignment (``cost[i, r]`` = the true error of logical row ``i`` on physical row ``r``); rows the
block does not use are left to the worst lines. Then the column moves of ``pair`` (outputs onto
pairs with polarity, then each side) run with the rows fixed. Rounds repeat while the cost falls.
Tiles without faults are skipped: they cost nothing.
Requires: placements. Guarantees: rows and columns stay injective; cost never increases.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from rcompile.passes._objective import pair_cost_by_state
from rcompile.passes.pair import BlockProblem, improve_columns, problem

from rcompile.ir import ChipMapping, Plan
from rcompile.pipeline import CHIP, ChipContext, register
from rcompile.solvers import assign


def move_rows(bp: BlockProblem, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Best physical row for every logical row, columns held fixed."""
    cost = pair_cost_by_state(bp.q, bp.w, bp.codes[:, pos], bp.codes[:, neg], bp.top)  # [n, R]
    return assign(cost)


@register
@dataclass(frozen=True)
class Permute:
    name: ClassVar[str] = "permute"
    stage: ClassVar[str] = CHIP
    rounds: int = 6
    columns: bool = True
    """Also move columns between row rounds (else rows only)."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        out = []
        before = after = 0.0
        solved = 0
        for pl in mapping.placements:
            if np.isnan(ctx.stuck[pl.tile]).all():
                out.append(pl)
                continue
            solved += 1
            bp = problem(plan, ctx, pl)
            rows, pos, neg = pl.phys_rows, pl.pos, pl.neg
            cost = bp.cost(rows, pos, neg)
            for _ in range(self.rounds):
                prev = cost
                r2 = move_rows(bp, pos, neg)
                c2 = bp.cost(r2, pos, neg)
                if c2 < cost:
                    rows, cost = r2, c2
                if self.columns:
                    pos, neg, cost = improve_columns(bp, rows, pos, neg)
                if cost >= prev * (1 - 1e-9):
                    break
            before += bp.cost(pl.phys_rows, pl.pos, pl.neg)
            after += cost
            out.append(replace(pl, phys_rows=rows.astype(np.int32), pos=pos, neg=neg))
        stats = {"blocks_solved": solved, "cost_before": before, "cost_after": after}
        return replace(mapping, placements=tuple(out)), stats
