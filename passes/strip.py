"""strip — global row assignment over a column strip.

Rules: a *strip* is the set of blocks of one layer and group that hold the same outputs, each
alone on its tile (blocks packed several to a tile keep their rows). The partial sums of a
strip's tiles are added digitally, so any logical row of the strip may drive any physical row
of any of its tiles, not only one inside its own 128-row block. With every tile's column pairs
held fixed, the strip's logical rows go to (tile, physical row) slots by an OR-Tools linear
assignment on the true objective of ``passes/_objective.py``; each row is offered its
``candidates`` cheapest slots plus its current one, so the current mapping stays feasible.
Then each tile's column moves of ``pair`` run with its new rows. A round is kept only if it
lowers the strip's cost; rounds repeat while it falls. Strips on clean tiles cost nothing and
are skipped.

The chip's blocks are re-cut to match (``ChipMapping.blocks``): each tile of a strip holds a
block of the logical rows now routed to it, in increasing order; a tile left with no rows is
released. The image needs nothing new: a slice is a block of rows and column pairs on one tile.
Requires: placements. Guarantees: every non-zero weight lies in exactly one block; rows and
columns stay injective per tile; the objective never increases.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from ortools.graph.python import min_cost_flow
from rcompile.passes._objective import cell_codes, code_table
from rcompile.passes.pair import BlockProblem, improve_columns

from rcompile.errors import SolverError
from rcompile.ir import Block, ChipMapping, Placement, Plan
from rcompile.pipeline import CHIP, ChipContext, register
from rcompile.solvers import integer_costs


def strip_members(plan: Plan, placements: tuple[Placement, ...]) -> list[list[int]]:
    """Indices of the placements of every strip of two or more tiles, in placement order."""
    per_tile = Counter(pl.tile for pl in placements)
    strips: dict[tuple[int, int, bytes], list[int]] = {}
    for k, pl in enumerate(placements):
        if per_tile[pl.tile] == 1:
            blk = plan.blocks[pl.block]
            strips.setdefault((blk.layer, blk.group, blk.outs.tobytes()), []).append(k)
    return [m for m in strips.values() if len(m) > 1]


@dataclass
class StripProblem:
    """The logical rows of one strip and the tiles that may hold them."""

    q: np.ndarray  # int [n, m]: every logical row of the strip
    r: np.ndarray  # float [n]: row weight E[x^2] (1 without calibration data)
    s2: np.ndarray  # float [m]: squared output scale
    rows: np.ndarray  # int [n]: logical row index of each strip row
    codes: list[np.ndarray]  # per tile int16 [R, C]
    top: int

    def slot_costs(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """``cost[i, t * R + p]``: strip row ``i`` on physical row ``p`` of tile ``t`` with the
        tiles' current column pairs (one matrix product over the one-hot of ``q``)."""
        table = code_table(self.top)  # [codes, codes, V]
        n_v = table.shape[2]
        n, m = self.q.shape
        onehot = np.zeros((n, m, n_v), np.float32)
        onehot[np.arange(n)[:, None], np.arange(m)[None, :], self.q.astype(np.int64) + self.top] = 1
        y = []
        for codes, (pos, neg) in zip(self.codes, pairs, strict=True):
            err = table[codes[:, pos].astype(np.int64), codes[:, neg].astype(np.int64)]  # [R,m,V]
            y.append((err * self.s2[None, :, None]).transpose(1, 2, 0).reshape(m * n_v, -1))
        cost = onehot.reshape(n, m * n_v) @ np.concatenate(y, axis=1).astype(np.float32)
        return cost.astype(np.float64) * self.r[:, None]


def _assign_rows(cost: np.ndarray, current: np.ndarray, candidates: int) -> np.ndarray:
    """Slot of every strip row: the exact minimum-cost assignment over each row's
    ``candidates`` cheapest slots and its current slot (a feasible one), solved as an OR-Tools
    min-cost flow (rows -> slots -> sink), which needs no dummy rows for the free slots."""
    n, slots = cost.shape
    k = min(candidates, slots)
    near = (np.argpartition(cost, k - 1, axis=1)[:, :k] if k < slots
            else np.tile(np.arange(slots), (n, 1)))
    arcs = np.unique(np.concatenate([np.arange(n).repeat(near.shape[1]) * slots + near.ravel(),
                                     np.arange(n) * slots + current]))
    left, right = np.divmod(arcs, slots)
    icost = integer_costs(cost[left, right], float(cost.max()), n=slots)
    # data -> variables: node i < n is a row, n + s a slot, n + slots the sink
    flow = min_cost_flow.SimpleMinCostFlow()
    sink = n + slots
    row_arcs = flow.add_arcs_with_capacity_and_unit_cost(
        left, n + right, np.ones(len(left), np.int64), icost)
    flow.add_arcs_with_capacity_and_unit_cost(
        n + np.arange(slots), np.full(slots, sink), np.ones(slots, np.int64),
        np.zeros(slots, np.int64))
    # constraints: every row sends one unit; the sink takes all n; a slot carries at most one
    supplies = np.zeros(n + slots + 1, np.int64)
    supplies[:n] = 1
    supplies[sink] = -n
    flow.set_nodes_supplies(np.arange(n + slots + 1), supplies)
    status = flow.solve()
    if status != flow.OPTIMAL:
        raise SolverError(f"strip row assignment {n}x{slots}: min-cost flow status {status}")
    used = flow.flows(row_arcs) > 0
    out = np.empty(n, np.int64)
    out[left[used]] = right[used]
    return out


@register
@dataclass(frozen=True)
class Strip:
    name: ClassVar[str] = "strip"
    stage: ClassVar[str] = CHIP
    requires: ClassVar[frozenset[str]] = frozenset({"placements"})
    ensures: ClassVar[frozenset[str]] = frozenset()
    rounds: int = 2
    candidates: int = 64
    """Slots offered to each logical row besides its current one."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        placements = list(mapping.placements)
        blocks = list(plan.blocks)
        before = after = 0.0
        solved = 0
        for members in strip_members(plan, mapping.placements):
            tiles = [placements[k].tile for k in members]
            if all(np.isnan(ctx.stuck[t]).all() for t in tiles):
                continue
            b0, a0, new = self._solve(plan, ctx, [placements[k] for k in members])
            before, after, solved = before + b0, after + a0, solved + 1
            for k, (blk, pl) in zip(members, new, strict=True):
                blocks[placements[k].block] = blk
                placements[k] = pl
        # release tiles left without rows, renumbering blocks in order
        keep = [b for b, blk in enumerate(blocks) if len(blk.rows)]
        renum = {b: i for i, b in enumerate(keep)}
        out = tuple(replace(pl, block=renum[pl.block]) for pl in placements
                    if pl.block in renum)
        stats = {"strips_solved": solved, "cost_before": before, "cost_after": after,
                 "tiles_released": len(blocks) - len(keep)}
        cut = tuple(blocks[b] for b in keep)
        return replace(mapping, placements=out, blocks=cut), stats

    def _solve(self, plan: Plan, ctx: ChipContext, pls: list[Placement]
               ) -> tuple[float, float, list[tuple[Block, Placement]]]:
        first = plan.blocks[pls[0].block]
        layer = plan.layers[first.layer]
        rows = np.concatenate([plan.blocks[pl.block].rows for pl in pls])
        rr = (ctx.calib[first.layer].power[first.group][rows].astype(np.float64)
              if ctx.calib is not None else np.ones(len(rows)))
        sp = StripProblem(
            q=layer.q[first.group][np.ix_(rows, first.outs)],
            r=rr,
            s2=layer.scale[first.group][first.outs].astype(np.float64) ** 2,
            rows=rows,
            codes=[cell_codes(ctx.stuck[pl.tile]) for pl in pls],
            top=ctx.device.max_level,
        )
        R = ctx.geometry.rows
        slot = np.concatenate([pl.phys_rows + t * R for t, pl in enumerate(pls)])
        pairs = [(pl.pos, pl.neg) for pl in pls]
        start = cost = self._cost(sp, slot, pairs)
        for _ in range(self.rounds):
            if cost == 0.0:
                break
            full = sp.slot_costs(pairs)
            s2 = _assign_rows(full, slot, self.candidates)
            p2 = [self._columns(sp, s2, t, pl, ctx, pos, neg)
                  for t, (pl, (pos, neg)) in enumerate(zip(pls, pairs, strict=True))]
            c2 = self._cost(sp, s2, p2)
            if c2 >= cost * (1 - 1e-9):
                break
            slot, pairs, cost = s2, p2, c2
        out = []
        for t, (pl, (pos, neg)) in enumerate(zip(pls, pairs, strict=True)):
            mine = np.flatnonzero(slot // R == t)
            mine = mine[np.argsort(rows[mine], kind="stable")]
            blk = Block(layer=first.layer, group=first.group, rows=rows[mine].astype(np.int32),
                        outs=first.outs)
            out.append((blk, replace(pl, phys_rows=(slot[mine] % R).astype(np.int32),
                                     pos=pos.astype(np.int32), neg=neg.astype(np.int32))))
        return start, cost, out

    def _cost(self, sp: StripProblem, slot: np.ndarray,
              pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
        R = sp.codes[0].shape[0]
        table = code_table(sp.top)
        qi = sp.q.astype(np.int64) + sp.top
        total = 0.0
        for t, (pos, neg) in enumerate(pairs):
            mine = np.flatnonzero(slot // R == t)
            sub = sp.codes[t][slot[mine] % R].astype(np.int64)
            err = table[sub[:, pos], sub[:, neg], qi[mine]]
            total += float(np.sum(sp.r[mine, None] * sp.s2[None, :] * err))
        return total

    def _columns(self, sp: StripProblem, slot: np.ndarray, t: int, pl: Placement,
                 ctx: ChipContext, pos: np.ndarray, neg: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The column moves of ``pair`` on tile ``t`` with the rows the assignment gave it."""
        R = ctx.geometry.rows
        mine = np.flatnonzero(slot // R == t)
        if mine.size == 0:
            return pos, neg
        bp = BlockProblem(q=sp.q[mine], w=sp.r[mine, None] * sp.s2[None, :],
                          codes=cell_codes(ctx.stuck[pl.tile][:, pl.cols]), top=sp.top,
                          cols=pl.cols)
        lp, ln, _ = improve_columns(bp, slot[mine] % R, bp.local(pos), bp.local(neg))
        return bp.physical(lp), bp.physical(ln)
