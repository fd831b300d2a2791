"""pair — differential column assignment: which physical columns pair up, and which is ``+``.

Three exact moves, each a linear assignment on the true objective of ``passes/_objective.py``
with the other choices held fixed (compiled cost loops and the warm-started float assignment;
with ``BlockProblem.reference``, OR-Tools on cost matrices summed in numpy's order, which are
defined by the numpy code here and ``pair_cost_by_state`` and compiled bit for bit):
* ``outputs -> pairs``: logical outputs onto the current pairs and onto pairs formed from unused
  columns, each with the better polarity;
* ``pos``: the ``+`` column of every output, among all columns not holding a ``-`` cell;
* ``neg``: the ``-`` column likewise.
The pass applies them in turn until the block cost stops falling (at most ``rounds`` times).
Requires: placements. Guarantees: pairs stay disjoint; the objective never increases.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from rcompile.passes._objective import (
    StuckCodes,
    cell_codes,
    pair_error,
    stuck_codes,
    whole_codes,
)
from rcompile.passes.place import block_q, block_weights

from rcompile.ir import ChipMapping, Placement, Plan
from rcompile.pipeline import CHIP, ChipContext, register
from rcompile.solvers import assign, assign_from


@dataclass
class BlockProblem:
    """One block on one tile: what every move needs."""

    q: np.ndarray  # int [n, m]
    w: np.ndarray  # float [n, m]: r_i * s_j^2
    codes: np.ndarray  # int16 [R, S]: cell_codes of the tile's cells on the block's strip
    top: int
    cols: np.ndarray  # int32 [S]: physical column of each strip column (moves work on strip ones)
    reference: bool = False
    """Solve every move with numpy cost matrices and OR-Tools' integer assignment (the
    reference solver, slower) instead of the compiled loops and the float assignment."""
    cells: StuckCodes | None = None
    """The strip's exact stuck codes, which every cost here uses; ``None``: those of ``codes``
    (whole stuck levels)."""
    restart: int = 0
    """Which fast search (not ``reference``): 0 warm-starts every move from the current mapping;
    1 solves every move from scratch (start -1: ties fall elsewhere, so the search ends
    elsewhere); ``k >= 2`` from scratch on the places shuffled by a permutation drawn from
    ``seed`` and ``k``."""
    seed: int = 0
    qi: np.ndarray = field(init=False)  # int64 [n, m]: q + top, the tables' q index
    sc: StuckCodes = field(init=False)  # cells, or whole_codes(codes)
    solved: dict[tuple[tuple[int, ...], bytes], np.ndarray] = field(init=False, repr=False)
    """Reference assignments by cost matrix (see :meth:`solve`)."""
    shuffles: dict[int, np.ndarray] = field(init=False, repr=False)
    """Restart ``k >= 2``'s permutation of ``m`` places, by ``m``."""

    def __post_init__(self) -> None:
        self.qi = self.q.astype(np.int64) + self.top
        self.w = np.ascontiguousarray(self.w, np.float64)
        self.sc = self.cells if self.cells is not None else whole_codes(self.codes, self.top)
        self.solved = {}
        self.shuffles = {}

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray,
                                   np.ndarray]:
        """The first arguments of every compiled cost loop (``passes/_kernels.py``)."""
        return self.sc.levels, self.sc.alone, self.top, self.qi, self.w, self.sc.codes

    def _shuffle(self, m: int) -> np.ndarray:
        """The permutation of ``m`` places of restart ``k >= 2`` (the same for every move of
        that size in the block)."""
        if m not in self.shuffles:
            self.shuffles[m] = np.random.default_rng([self.seed, self.restart, m]).permutation(m)
        return self.shuffles[m]

    def local(self, physical: np.ndarray) -> np.ndarray:
        """Strip index of physical columns."""
        return np.searchsorted(self.cols, physical).astype(np.int32)

    def physical(self, local: np.ndarray) -> np.ndarray:
        return self.cols[local].astype(np.int32)

    def cost(self, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
        from rcompile.passes._kernels import block_cost, block_cost_ref

        kernel = block_cost_ref if self.reference else block_cost
        return float(kernel(*self.kernel_args(), rows, pos, neg))

    def cost_numpy(self, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
        """:meth:`cost` summed by numpy: the definition of the reference solver's numbers
        (its compiled loop equals it bit for bit)."""
        sub = self.sc.codes[rows]
        cp, cn = sub[:, pos], sub[:, neg]  # [n, m]
        return float(np.sum(self.w * pair_error(self.sc, cp, cn, self.qi)))

    def solve(self, cost: np.ndarray, start: np.ndarray) -> np.ndarray:
        """The assignment of one move: exact either way, from ``start`` unless reference.

        The reference solver's answer depends on the cost matrix only, and a block's search
        often poses the same move twice (a side move after a round that changed nothing it
        reads): such a repeat takes the answer already found instead of a second OR-Tools
        call, the same assignment."""
        if not self.reference:
            if self.restart == 0:
                return assign_from(cost, start)
            cold = np.full(len(start), -1)
            if self.restart == 1:
                return assign_from(cost, cold)
            shown = self._shuffle(cost.shape[1])  # place shown[k] is offered as place k
            return shown[assign_from(cost[:, shown], cold)].astype(np.int32)
        key = (cost.shape, cost.tobytes())
        if key not in self.solved:
            self.solved[key] = assign(cost)
        return self.solved[key].copy()


def move_pairs(bp: BlockProblem, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Outputs onto current and spare pairs, polarity chosen per (output, pair)."""
    from rcompile.passes._kernels import pair_costs, pair_costs_ref

    used = np.zeros(bp.sc.codes.shape[1], bool)
    used[pos] = used[neg] = True
    spare = np.flatnonzero(~used)
    a = np.concatenate([pos, spare[0 : len(spare) // 2 * 2 : 2]]).astype(np.int32)
    b = np.concatenate([neg, spare[1 : len(spare) // 2 * 2 : 2]]).astype(np.int32)
    kernel = pair_costs_ref if bp.reference else pair_costs
    fwd, rev = kernel(*bp.kernel_args(), rows, a, b)  # [m, P] each
    choice = bp.solve(np.minimum(fwd, rev), np.arange(len(pos)))
    flip = rev[np.arange(len(choice)), choice] < fwd[np.arange(len(choice)), choice]
    return np.where(flip, b[choice], a[choice]).astype(np.int32), np.where(
        flip, a[choice], b[choice]
    ).astype(np.int32)


def move_side(bp: BlockProblem, rows: np.ndarray, move: np.ndarray, fixed: np.ndarray,
              move_is_pos: bool) -> np.ndarray:
    """New columns for one side of every pair, the other side held fixed.

    ``cost[j, a]`` (output j's moving cell on free column a) is the cost with a healthy cell on
    column a, the same for every a, plus a correction for each row where column a is stuck:
    work in proportion to the stuck cells of the free columns.
    """
    from rcompile.passes._kernels import side_costs, side_costs_ref

    keep = np.ones(bp.sc.codes.shape[1], bool)
    keep[fixed] = False
    free = np.flatnonzero(keep).astype(np.int32)  # setdiff1d's answer, without its sort
    kernel = side_costs_ref if bp.reference else side_costs
    cost = kernel(*bp.kernel_args(), rows, fixed, free, move_is_pos)
    return free[bp.solve(cost, np.searchsorted(free, move))].astype(np.int32)


def _side_costs_numpy(bp: BlockProblem, rows: np.ndarray, fixed: np.ndarray, free: np.ndarray,
                      move_is_pos: bool) -> np.ndarray:
    """:func:`rcompile.passes._kernels.side_costs` in numpy: the definition of the reference
    solver's numbers (``side_costs_ref`` equals it bit for bit)."""
    sub = bp.sc.codes[rows].astype(np.int64)  # [n, C]
    cand = sub[:, free]  # [n, A]
    fix = sub[:, fixed]  # [n, m]

    def err(moving: np.ndarray, other: np.ndarray, qi: np.ndarray) -> np.ndarray:
        return (pair_error(bp.sc, moving, other, qi) if move_is_pos
                else pair_error(bp.sc, other, moving, qi))

    qi = bp.qi
    healthy = err(np.zeros_like(fix), fix, qi)  # [n, m]: error with a healthy moving cell
    cost = np.repeat((bp.w * healthy).sum(axis=0)[:, None], len(free), axis=1)  # [m, A]
    a, i = np.nonzero(cand.T)  # stuck candidate cells, sorted by column
    if a.size:
        delta = bp.w[i] * (err(cand[i, a][:, None], fix[i], qi[i]) - healthy[i])  # [nnz, m]
        starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
        cost[:, a[starts]] += np.add.reduceat(delta, starts, axis=0).T
    return cost


def improve_columns(bp: BlockProblem, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """One pass of the three column moves, each kept only if it lowers the cost."""
    best = bp.cost(rows, pos, neg)
    for step in ("pairs", "pos", "neg"):
        if step == "pairs":
            p2, n2 = move_pairs(bp, rows, pos, neg)
        elif step == "pos":
            p2, n2 = move_side(bp, rows, pos, neg, True), neg
        else:
            p2, n2 = pos, move_side(bp, rows, neg, pos, False)
        c = bp.cost(rows, p2, n2)
        if c < best:
            best, pos, neg = c, p2, n2
    return pos, neg, best


def problem(plan: Plan, ctx: ChipContext, pl: Placement) -> BlockProblem:
    stuck = ctx.stuck[pl.tile][:, pl.cols]
    top = ctx.device.max_level
    cells = stuck_codes(stuck, top)
    whole = len(cells.levels) == top + 2  # then the exact codes are cell_codes
    return BlockProblem(
        q=block_q(plan, pl.block),
        w=block_weights(plan, ctx, pl.block),
        codes=cells.codes.astype(np.int16) if whole else cell_codes(stuck),
        top=top,
        cols=pl.cols,
        cells=cells,
    )


@register
@dataclass(frozen=True)
class Pair:
    name: ClassVar[str] = "pair"
    stage: ClassVar[str] = CHIP
    requires: ClassVar[frozenset[str]] = frozenset({"placements"})
    ensures: ClassVar[frozenset[str]] = frozenset()
    rounds: int = 3

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        out = []
        before = after = 0.0
        for pl in mapping.placements:
            if np.isnan(ctx.stuck[pl.tile]).all():
                out.append(pl)  # a clean tile costs nothing to solve
                continue
            bp = problem(plan, ctx, pl)
            pos, neg = bp.local(pl.pos), bp.local(pl.neg)
            start = cost = bp.cost(pl.phys_rows, pos, neg)
            for _ in range(self.rounds):
                pos, neg, new = improve_columns(bp, pl.phys_rows, pos, neg)
                if new >= cost:
                    break
                cost = new
            before += start
            after += cost
            out.append(replace(pl, pos=bp.physical(pos), neg=bp.physical(neg)))
        return replace(mapping, placements=tuple(out)), {"cost_before": before, "cost_after": after}
