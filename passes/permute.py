"""permute — row and column permutation, alternated until the block cost stops falling.

Rules: with the column pairs fixed, logical rows go to physical rows by an exact linear
assignment (``cost[i, r]`` = the true error of logical row ``i`` on physical row ``r``); rows the
block does not use are left to the worst lines. Then the column moves of ``pair`` (outputs onto
pairs with polarity, then each side) run with the rows fixed. Rounds repeat while the cost falls.
Tiles without faults are skipped: they cost nothing; a block stops as soon as its cost is
exactly zero. Blocks are independent, so they are solved on every core
(:func:`rcompile.solvers.fork_map`); results do not depend on the number of workers.
Each block gets ``--time-limit`` seconds (checked between rounds); blocks stopped by it are
counted in ``time_limit_hits`` and ``build`` reports them.

Two solvers run the same moves: the fast one (compiled cost loops, the float assignment of
:func:`rcompile.solvers.assign_from` warm-started from the current mapping) and the reference
one (cost matrices summed in numpy's order, compiled; OR-Tools' integer assignment). Both are
exact per move but break ties differently, so the local search can end in different places.
Every block runs the fast one; with ``reference`` (default) a block it leaves above zero cost
also runs the reference one and the better result is kept (ties to the reference), so no block
ends worse than under the reference solver alone. ``restarts`` runs further fast searches of a
block left above zero cost from scratch (each with its own time limit) and keeps the cheapest.
Requires: placements. Guarantees: rows and columns stay injective; cost never increases.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from rcompile.passes._objective import cell_codes, stuck_codes
from rcompile.passes.pair import BlockProblem, improve_columns, move_pairs, move_side, problem

from rcompile.ir import ChipMapping, Placement, Plan
from rcompile.pipeline import CHIP, ChipContext, register
from rcompile.solvers import fork_map

Solved = tuple[np.ndarray, np.ndarray, np.ndarray, float, float, bool]
"""rows, pos, neg, cost before, cost after of one block, and whether its time limit was hit."""


def move_rows(bp: BlockProblem, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray
              ) -> np.ndarray:
    """Best physical row for every logical row, columns held fixed (solved from ``rows``)."""
    from rcompile.passes._kernels import row_costs, row_costs_ref

    kernel = row_costs_ref if bp.reference else row_costs  # ref: pair_cost_by_state's numbers
    cost = kernel(*bp.kernel_args(), pos, neg)  # [n, R]
    return bp.solve(cost, rows)


def solve_block(bp: BlockProblem, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray,
                rounds: int, columns: bool, time_limit_s: float = math.inf) -> Solved:
    """Alternate row and column moves on one block; returns rows, pos, neg, the cost before
    and after, and whether the block's time limit stopped it. A cost of exactly zero cannot
    fall: solving stops there (every later move would be rejected, since a move is kept only if
    it lowers the cost). The time limit is checked between rounds: the result is always a
    complete, valid mapping, only a less optimised one."""
    t0 = time.perf_counter()
    start = cost = bp.cost(rows, pos, neg)
    for _ in range(rounds):
        if cost == 0.0:
            break
        if time.perf_counter() - t0 > time_limit_s:
            return rows, pos, neg, start, cost, True
        prev = cost
        r2 = move_rows(bp, rows, pos, neg)
        c2 = bp.cost(r2, pos, neg)
        if c2 < cost:
            rows, cost = r2, c2
        if columns and cost > 0.0:
            pos, neg, cost = improve_columns(bp, rows, pos, neg)
        if cost >= prev * (1 - 1e-9):
            break
    return rows, pos, neg, start, cost, False


def compile_kernels() -> None:
    """Compile (or load from numba's cache) every cost loop and the assignment, for whole and
    fractional stuck levels, on a tiny block: a block's time limit then measures solving
    only, never a first call's compilation (seconds on a cold cache), so results do not
    depend on whether the cache was warm."""
    stuck = np.array([[0.0, np.nan, 15.0, np.nan], [np.nan, 3.0, np.nan, np.nan]], np.float32)
    for levels in (stuck, stuck / 2):  # whole, then fractional levels
        fast = BlockProblem(q=np.array([[1], [-2]]), w=np.ones((2, 1)), codes=cell_codes(levels),
                            top=15, cols=np.arange(4, dtype=np.int32),
                            cells=stuck_codes(levels, 15))
        for bp in (fast, replace(fast, reference=True)):
            rows, pos, neg = np.arange(2, dtype=np.int32), np.array([0], np.int32), np.array(
                [1], np.int32)
            bp.cost(rows, pos, neg)
            move_rows(bp, rows, pos, neg)
            move_pairs(bp, rows, pos, neg)
            move_side(bp, rows, pos, neg, True)
            move_side(bp, rows, neg, pos, False)


@register
@dataclass(frozen=True)
class Permute:
    name: ClassVar[str] = "permute"
    stage: ClassVar[str] = CHIP
    requires: ClassVar[frozenset[str]] = frozenset({"placements"})
    ensures: ClassVar[frozenset[str]] = frozenset()
    rounds: int = 6
    columns: bool = True
    """Also move columns between row rounds (else rows only)."""
    reference: bool = True
    """Also solve every block the fast solver leaves above zero cost with the reference solver
    (numpy cost matrices, OR-Tools integer assignment) and keep the better: no block then ends
    worse than the reference alone would leave it. ``false``: the fast solver only, several
    times faster at high fault rates; as good on average, not block by block."""
    restarts: int = 0
    """Further fast searches of every block the fast solver leaves above zero cost, each from
    the block's first mapping with every move solved from scratch (the first as it is, the
    others on places shuffled by ``--solver-seed``), until one reaches zero; the cheapest
    kept (ties to the earlier). The local search ends where its ties lead it, so a search from
    scratch often ends lower than the warm-started one (strategy ``full-fast``)."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        placements = mapping.placements
        todo = [k for k, pl in enumerate(placements) if not np.isnan(ctx.stuck[pl.tile]).all()]
        if todo:
            compile_kernels()  # before any block's clock starts (and before forking)
        solved = fork_map(_solve_blocks, (self, plan, ctx, placements), todo)
        out = list(placements)
        before = after = 0.0
        hits = ref_runs = ref_better = 0
        for k, (rows, pos, neg, start, cost, hit, ref) in zip(todo, solved, strict=True):
            before += start
            after += cost
            hits += hit
            ref_runs += ref > 0
            ref_better += ref > 1
            out[k] = replace(placements[k], phys_rows=rows.astype(np.int32), pos=pos, neg=neg)
        stats = {
            "blocks_solved": len(todo),
            "cost_before": before,
            "cost_after": after,
            "time_limit_hits": hits,
            "reference_solved": ref_runs,
            "reference_better": ref_better,
        }
        return replace(mapping, placements=tuple(out)), stats


def _solve_blocks(shared: tuple[Permute, Plan, ChipContext, tuple[Placement, ...]],
                  which: list[int]) -> list[tuple[Any, ...]]:
    """Solve the given placements (each independent of the others), in order. Each result is
    :data:`Solved` plus 0 (reference not run), 1 (run, kept: not worse) or 2 (strictly better
    than the fast solution).

    On fractional stuck levels the block is also solved on levels rounded to whole ones (the
    search earlier versions ran) and the truly better mapping kept, ties to the exact search:
    the exact objective makes every move sound, but a local search on another landscape can
    still end lower on some block, and this way none ends above it."""
    self, plan, ctx, placements = shared
    out: list[tuple[Any, ...]] = []
    for k in which:
        pl = placements[k]
        bp = problem(plan, ctx, pl)
        begin = (pl.phys_rows, bp.local(pl.pos), bp.local(pl.neg))
        best = _solve_one(self, bp, begin, ctx.solver.time_limit_s, ctx.solver.seed)
        if len(bp.sc.levels) > bp.top + 2:  # some stuck level is fractional
            rounded = _solve_one(self, replace(bp, cells=None), begin, ctx.solver.time_limit_s,
                                 ctx.solver.seed)
            judge = replace(bp, reference=True)
            true = judge.cost(*rounded[0][:3])
            if true < judge.cost(*best[0][:3]):
                start, hit = best[0][3], best[0][5] or rounded[0][5]
                best = ((*rounded[0][:3], start, true, hit), rounded[1])
        (rows, pos, neg, start, cost, hit), ref = best
        out.append((rows, bp.physical(pos), bp.physical(neg), start, cost, hit, ref))
    return out


def _solve_one(self: Permute, bp: BlockProblem,
               begin: tuple[np.ndarray, np.ndarray, np.ndarray], time_limit_s: float,
               seed: int = 0) -> tuple[Solved, int]:
    """The fast solver and its ``restarts``, then (with ``reference``, above zero cost) the
    reference one and the better kept; the reference flag of :func:`_solve_blocks`."""
    rows, pos, neg, start, cost, hit = solve_block(bp, *begin, self.rounds, self.columns,
                                                   time_limit_s)
    for k in range(1, self.restarts + 1):
        if cost == 0.0:
            break
        alt = solve_block(replace(bp, restart=k, seed=seed), *begin, self.rounds, self.columns,
                          time_limit_s)
        hit = hit or alt[5]
        if alt[4] < cost:
            rows, pos, neg, cost = alt[0], alt[1], alt[2], alt[4]
    ref = 0
    if self.reference and cost > 0.0:
        rbp = replace(bp, reference=True)
        solved = solve_block(rbp, *begin, self.rounds, self.columns, time_limit_s)
        fast = rbp.cost(rows, pos, neg)  # both costs summed the same way
        if solved[4] <= fast:  # ties go to the reference: its images stay what they were
            ref = 1 + (solved[4] < fast)
            rows, pos, neg, start, cost = solved[:5]
            hit = hit or solved[5]
    return (rows, pos, neg, start, cost, hit), ref
