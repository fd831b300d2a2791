"""pack — several small blocks to a tile: a bin-packing problem solved with OR-Tools CP-SAT.

Rule: a tile's columns are split into disjoint strips, one per block (``2 m_b`` columns for a
block of ``m_b`` outputs); the blocks of one tile are read one after another, so each may use
every row. Blocks of at most ``C/2`` columns (``small``: depthwise and grouped convs, narrow
layers) are packed into the fewest tiles; wider blocks keep a tile each. CP-SAT model: one
boolean per (block, bin); each block in exactly one bin; the widths in a bin at most ``C``
(bin capacity only while the bin is used); bins used in order (symmetry); minimise bins used.
First-fit decreasing seeds the search as a hint, and its count bounds the bins; the solve uses
a deterministic time budget, one worker and a fixed seed, so the plan is reproducible.
Requires: blocks. Guarantees: ``bin_of`` covers every block; strips of a bin fit in ``C``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from ortools.sat.python import cp_model

from rcompile.errors import SolverError
from rcompile.ir import Plan
from rcompile.pipeline import PLAN, PlanContext, register


def _first_fit_decreasing(widths: list[int], cap: int) -> list[int]:
    order = sorted(range(len(widths)), key=lambda i: (-widths[i], i))
    room: list[int] = []
    where = [0] * len(widths)
    for i in order:
        k = next((k for k, r in enumerate(room) if r >= widths[i]), len(room))
        if k == len(room):
            room.append(cap)
        room[k] -= widths[i]
        where[i] = k
    return where


def pack_bins(widths: list[int], cap: int, budget: float) -> tuple[list[int], bool]:
    """Bin of each item, and whether CP-SAT proved the bin count optimal."""
    hint = _first_fit_decreasing(widths, cap)
    nbins = max(hint) + 1
    lower = -(-sum(widths) // cap)
    if nbins == lower:  # the trivial lower bound is met: first-fit is already optimal
        return hint, True
    # data -> variables
    m = cp_model.CpModel()
    x = {(i, k): m.new_bool_var(f"x{i}_{k}") for i in range(len(widths)) for k in range(nbins)}
    used = [m.new_bool_var(f"used{k}") for k in range(nbins)]
    # every block in exactly one bin
    for i in range(len(widths)):
        m.add_exactly_one(x[i, k] for k in range(nbins))
    # a bin's strips fit in the tile, and only a used bin holds anything
    for k in range(nbins):
        m.add(sum(widths[i] * x[i, k] for i in range(len(widths))) <= cap * used[k])
    # bins are used in order (removes symmetric solutions)
    for k in range(nbins - 1):
        m.add_implication(used[k + 1], used[k])
    m.add(sum(used) >= lower)
    # objective: fewest bins
    m.minimize(sum(used))
    for (i, k), var in x.items():
        m.add_hint(var, hint[i] == k)
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = budget
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolverError(f"bin packing of {len(widths)} blocks failed ({solver.status_name()})")
    got = [next(k for k in range(nbins) if solver.value(x[i, k])) for i in range(len(widths))]
    # renumber bins densely in order of first use
    first: dict[int, int] = {}
    for k in got:
        first.setdefault(k, len(first))
    return [first[k] for k in got], status == cp_model.OPTIMAL


@register
@dataclass(frozen=True)
class Pack:
    name: ClassVar[str] = "pack"
    stage: ClassVar[str] = PLAN
    requires: ClassVar[frozenset[str]] = frozenset({"blocks"})
    ensures: ClassVar[frozenset[str]] = frozenset({"packed"})
    budget: float = 5.0
    """CP-SAT deterministic time budget (about seconds)."""

    def run(self, plan: Plan, ctx: PlanContext) -> tuple[Plan, dict[str, Any]]:
        cap = ctx.tile_cols
        widths = [2 * len(b.outs) for b in plan.blocks]
        small = [b for b, w in enumerate(widths) if w <= cap // 2]
        bin_of = np.zeros(len(widths), np.int64)
        nbins = 0
        optimal = True
        if small:
            where, optimal = pack_bins([widths[b] for b in small], cap, self.budget)
            for b, k in zip(small, where, strict=True):
                bin_of[b] = k
            nbins = max(where) + 1
        for b, w in enumerate(widths):
            if w > cap // 2:
                bin_of[b] = nbins
                nbins += 1
        # number bins in order of their first block, so the plan reads top to bottom
        first: dict[int, int] = {}
        for k in bin_of.tolist():
            first.setdefault(k, len(first))
        packed = tuple(first[k] for k in bin_of.tolist())
        return replace(plan, bin_of=packed), {
            "tiles": len(first),
            "blocks": len(widths),
            "packing_optimal": optimal,
        }
