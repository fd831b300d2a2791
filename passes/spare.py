"""spare — spare tiles for the worst blocks: split each over two tiles.

Rules: the chip's unused tiles (cleanest first) go to the blocks alone on their tile with the
highest residual cost (the objective of ``passes/_objective.py`` under the current mapping),
one tile each, at most ``tiles`` of them (``-1``: every unused tile). A chosen block is split
by rows (``axis=rows``: the half of its logical rows that cost most where they are moves to
the spare tile, so each half has about as many spare rows as it uses) or by outputs
(``axis=outs``: likewise, each half then has twice the columns it needs); the halves are then
solved by ``permute``'s row and column moves. The partial sums of the two tiles are added
digitally, so the image needs nothing new (two slices of one block). Halves by rows keep the
block's outputs, so a later ``strip`` pass sees the spare tile as one more tile of that strip.
A split is kept only if it lowers the block's cost.
Requires: placements (after ``permute``). Guarantees: every non-zero weight lies in exactly one
block; the objective never increases.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
from rcompile.passes._objective import code_table
from rcompile.passes.pair import BlockProblem, problem
from rcompile.passes.permute import solve_block
from rcompile.passes.place import initial_placement

from rcompile.ir import Block, ChipMapping, Plan
from rcompile.pipeline import CHIP, ChipContext, register


@register
@dataclass(frozen=True)
class Spare:
    name: ClassVar[str] = "spare"
    stage: ClassVar[str] = CHIP
    requires: ClassVar[frozenset[str]] = frozenset({"placements"})
    ensures: ClassVar[frozenset[str]] = frozenset()
    tiles: int = -1
    """Spare tiles to use at most; -1: every unused tile."""
    rounds: int = 6
    """Row and column rounds of ``permute`` on each half."""
    axis: Literal["rows", "outs"] = "rows"
    """rows: split the block's logical rows; outs: split its outputs (each half then has
    twice the columns it needs)."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        used = {pl.tile for pl in mapping.placements}
        free = [t for t in range(ctx.geometry.tiles) if t not in used]
        free.sort(key=lambda t: (float(np.mean(~np.isnan(ctx.stuck[t]))), t))
        if self.tiles >= 0:
            free = free[: self.tiles]
        per_tile = Counter(pl.tile for pl in mapping.placements)
        costs = []
        for k, pl in enumerate(mapping.placements):
            if per_tile[pl.tile] == 1 and len(plan.blocks[pl.block].rows) > 1:
                bp = problem(plan, ctx, pl)
                costs.append((bp.cost(pl.phys_rows, bp.local(pl.pos), bp.local(pl.neg)), k))
        costs.sort(key=lambda c: (-c[0], c[1]))
        blocks = list(plan.blocks)
        placements = list(mapping.placements)
        before = after = 0.0
        split = 0
        for tile, (cost, k) in zip(free, costs, strict=False):
            if cost == 0.0:
                break
            got = self._split(plan, ctx, blocks, placements, k, tile)
            before += cost
            after += got if got is not None else cost
            split += got is not None
        stats = {"blocks_split": split, "cost_before": before, "cost_after": after}
        return replace(mapping, placements=tuple(placements), blocks=tuple(blocks)), stats

    def _split(self, plan: Plan, ctx: ChipContext, blocks: list[Block], placements: list[Any],
               k: int, tile: int) -> float | None:
        """Split placement ``k`` onto ``tile`` in place; returns its new cost, or None when the
        split does not pay (nothing changes then)."""
        pl = placements[k]
        blk = blocks[pl.block]
        bp = problem(plan, ctx, pl)
        pos, neg = bp.local(pl.pos), bp.local(pl.neg)
        old = bp.cost(pl.phys_rows, pos, neg)
        sub = bp.codes[pl.phys_rows]
        err = bp.w * _err(bp, sub[:, pos], sub[:, neg])  # [n, m]
        by_rows = self.axis == "rows"
        if self.axis not in ("rows", "outs"):
            raise ValueError(f"unknown axis {self.axis!r}; expected rows or outs")
        order = np.argsort(-np.sum(err, axis=1 if by_rows else 0), kind="stable")
        if not by_rows and len(order) < 2:
            return None
        move = np.sort(order[: len(order) // 2])
        stay = np.sort(order[len(order) // 2:])
        halves = []
        total = 0.0
        for part, t in ((stay, pl.tile), (move, tile)):
            rows = blk.rows[part] if by_rows else blk.rows
            outs = blk.outs if by_rows else blk.outs[part]
            b2 = Block(layer=blk.layer, group=blk.group, rows=rows, outs=outs)
            view = replace(plan, blocks=(b2,), bin_of=())
            scale = pl.scale if by_rows else pl.scale[part]
            offset = pl.offset if by_rows else pl.offset[part]
            if t == pl.tile and by_rows:
                p2 = replace(pl, block=0, phys_rows=pl.phys_rows[part])
            elif t == pl.tile:
                p2 = replace(pl, block=0, pos=pl.pos[part], neg=pl.neg[part], scale=scale,
                             offset=offset)
            else:
                p2 = replace(initial_placement(view, 0, t, np.arange(ctx.geometry.cols)),
                             scale=scale, offset=offset)
            bp2 = problem(view, ctx, p2)
            rows, lp, ln, _, cost, _ = solve_block(
                bp2, p2.phys_rows, bp2.local(p2.pos), bp2.local(p2.neg), self.rounds, True,
                ctx.solver.time_limit_s)
            halves.append((b2, replace(p2, phys_rows=rows.astype(np.int32),
                                       pos=bp2.physical(lp), neg=bp2.physical(ln))))
            total += cost
        if total >= old:
            return None
        (b_stay, p_stay), (b_move, p_move) = halves
        blocks[pl.block] = b_stay
        placements[k] = replace(p_stay, block=pl.block)
        blocks.append(b_move)
        placements.append(replace(p_move, block=len(blocks) - 1))
        return total


def _err(bp: BlockProblem, cp: np.ndarray, cn: np.ndarray) -> np.ndarray:
    """Squared level error of every entry of ``bp`` on the given cell codes."""
    return code_table(bp.top)[cp, cn, bp.q.astype(np.int64) + bp.top]
