"""place — put every logical block on a physical tile.

Rules:
* ``order=sequential`` (baseline): block ``b`` goes to tile ``b``, first ``n`` rows, output ``j``
  on the adjacent columns ``(2j, 2j+1)``.
* ``order=assign``: when the chip has spare tiles, bins go where they lose least: an exact
  OR-Tools assignment over blocks x tiles of an estimated cost ``E_b * D_t(n_b, m_b)``, where
  ``E_b`` is the block's weighted squared-weight mass and ``D_t`` the stuck-cell density of the
  cleanest ``n_b`` rows and ``2 m_b`` columns of tile ``t`` (the ones later passes can pick).
  Chips of more than ``DENSE_TILES`` tiles get the same optimum cost from an exact float
  assignment (:func:`rcompile.solvers.assign_from`) or, beyond ``FLOAT_ENTRIES`` bins x tiles,
  from a provably sufficient subset of the arcs (:func:`assign_rank1_classes`).
Blocks that ``pack`` put in one bin share a tile, each on its own column strip
(:func:`strips`); without ``pack`` every block is a bin of its own.
Requires: blocks. Guarantees: one bin per tile, identity rows and adjacent pairs in each strip.
Raises DoesNotFit when the chip has fewer tiles than blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from rcompile.errors import DoesNotFit
from rcompile.ir import ChipMapping, Placement, Plan
from rcompile.pipeline import CHIP, ChipContext, register
from rcompile.solvers import assign, assign_from, assign_sparse


def block_weights(plan: Plan, ctx: ChipContext, b: int) -> np.ndarray:
    """``r_i * scale_j^2`` for every entry of block ``b`` (the objective's weights)."""
    blk = plan.blocks[b]
    layer = plan.layers[blk.layer]
    s = layer.scale[blk.group][blk.outs].astype(np.float64)
    if ctx.calib is not None:
        r = ctx.calib[blk.layer].power[blk.group][blk.rows].astype(np.float64)
    else:
        r = np.ones(len(blk.rows))
    return r[:, None] * (s**2)[None, :]


def block_q(plan: Plan, b: int) -> np.ndarray:
    """Quantised weights ``[n, m]`` of block ``b`` (read-only; a view when its rows and outputs
    are contiguous ranges, as they are unless pruning removed some)."""
    blk = plan.blocks[b]
    q = plan.layers[blk.layer].q[blk.group]
    rows, outs = _span(blk.rows), _span(blk.outs)
    out = q[rows, outs] if rows and outs else q[np.ix_(blk.rows, blk.outs)]
    out.flags.writeable = False
    return out


def _span(idx: np.ndarray) -> slice | None:
    """``idx`` as a slice when it is a contiguous increasing range, else None."""
    if len(idx) and int(idx[-1]) - int(idx[0]) + 1 == len(idx):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return None


def initial_placement(plan: Plan, b: int, tile: int, cols: np.ndarray) -> Placement:
    """Block ``b`` on ``tile``: first rows, outputs on adjacent pairs at the start of its strip."""
    blk = plan.blocks[b]
    m = len(blk.outs)
    return Placement(
        block=b,
        tile=tile,
        phys_rows=np.arange(len(blk.rows), dtype=np.int32),
        pos=cols[0 : 2 * m : 2].astype(np.int32),
        neg=cols[1 : 2 * m : 2].astype(np.int32),
        high=np.zeros(m, bool),
        scale=plan.layers[blk.layer].scale[blk.group][blk.outs].astype(np.float32),
        cols=cols.astype(np.int32),
        offset=np.zeros(m, np.float32),
    )


def strips(plan: Plan, members: list[int], cols: int) -> list[np.ndarray]:
    """Disjoint column strips of one tile for the blocks ``members`` (in order): each block gets
    its ``2 m`` columns plus an even share of the columns left over (room for pair moves)."""
    need = [2 * len(plan.blocks[b].outs) for b in members]
    spare = (cols - sum(need)) // 2  # spare pairs
    extra = [2 * (spare // len(members) + (i < spare % len(members))) for i in range(len(members))]
    out, start = [], 0
    for n, e in zip(need, extra, strict=True):
        out.append(np.arange(start, start + n + e, dtype=np.int32))
        start += n + e
    return out


@register
@dataclass(frozen=True)
class Place:
    name: ClassVar[str] = "place"
    stage: ClassVar[str] = CHIP
    requires: ClassVar[frozenset[str]] = frozenset({"blocks"})
    ensures: ClassVar[frozenset[str]] = frozenset({"placements"})
    order: Literal["sequential", "assign"] = "sequential"
    """``sequential``: bins on tiles 0, 1, ...; ``assign``: an exact assignment of bins to the
    tiles whose faults hurt them least (when the chip has spare tiles)."""

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]:
        bins = plan.bins()
        nb, nt = len(bins), ctx.geometry.tiles
        if nb > nt:
            raise DoesNotFit(
                f"fault map {ctx.chip_id}: the model needs {nb} tiles of "
                f"{ctx.geometry.rows}x{ctx.geometry.cols} but the chip has {nt}"
            )
        if self.order == "assign" and nt > nb:
            tiles = self._assign(plan, ctx, bins)
        elif self.order in ("sequential", "assign"):
            tiles = np.arange(nb, dtype=np.int32)
        else:
            raise ValueError(f"unknown order {self.order!r}; expected sequential or assign")
        placements = []
        for members, t in zip(bins, tiles, strict=True):
            for b, cols in zip(members, strips(plan, members, ctx.geometry.cols), strict=True):
                placements.append(initial_placement(plan, b, int(t), cols))
        placements.sort(key=lambda p: p.block)
        bias = tuple(layer.bias.copy() for layer in plan.layers)
        return ChipMapping(placements=tuple(placements), bias=bias), {
            "tiles_used": nb,
            "tiles": nt,
        }

    def _assign(self, plan: Plan, ctx: ChipContext, bins: list[list[int]]) -> np.ndarray:
        mass, shape, density = self._factors(plan, ctx, bins)
        nt = ctx.geometry.tiles
        if nt <= DENSE_TILES:
            return assign(mass[:, None] * density[shape])
        if len(mass) * nt <= FLOAT_ENTRIES:
            # heaviest bins first: each then finds a free tile after a short search
            order = np.lexsort((np.arange(len(mass)), -mass))
            tiles = np.empty(len(mass), np.int32)
            tiles[order] = assign_from(mass[order, None] * density[shape[order]],
                                       np.full(len(mass), -1))
            return tiles
        return assign_rank1_classes(mass, shape, density, nt)

    def _factors(
        self, plan: Plan, ctx: ChipContext, bins: list[list[int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The estimated cost ``cost[k, t] = mass[k] * density[shape[k], t]`` of bin ``k`` on
        tile ``t``: one sensitivity per bin (the sum over its blocks) and one density row per
        distinct bin shape ``(most rows, columns used)``."""
        stuck = ~np.isnan(ctx.stuck)  # [T, R, C]
        row_frac = np.sort(stuck.mean(axis=2), axis=1)  # cleanest rows first
        col_frac = np.sort(stuck.mean(axis=1), axis=1)
        row_cum = np.cumsum(row_frac, axis=1)
        col_cum = np.cumsum(col_frac, axis=1)
        overall = max(float(stuck.mean()), 1e-12)
        mass = np.zeros(len(bins))
        shapes: dict[tuple[int, int], int] = {}
        shape = np.empty(len(bins), np.int64)
        for k, members in enumerate(bins):
            for b in members:
                q = block_q(plan, b).astype(np.float64)
                mass[k] += float(np.sum(block_weights(plan, ctx, b) * (q**2 + 1.0)))
            n = max(len(plan.blocks[b].rows) for b in members)
            m2 = sum(2 * len(plan.blocks[b].outs) for b in members)
            shape[k] = shapes.setdefault((n, m2), len(shapes))
        density = np.empty((len(shapes), ctx.geometry.tiles))
        for (n, m2), k in shapes.items():
            density[k] = (row_cum[:, n - 1] / n) * (col_cum[:, m2 - 1] / m2) / overall
        return mass, shape, density


#: Chips of up to this many tiles get the dense blocks x tiles assignment (the exact integer
#: costs of :func:`rcompile.solvers.assign`); larger ones the sparse, equally exact one below.
DENSE_TILES = 1448

#: Larger chips with at most this many bins x tiles get the exact float assignment of
#: :func:`rcompile.solvers.assign_from` on the dense costs (64 MB; ten times faster than the
#: sparse OR-Tools one below on a 1,745-tile chip); beyond it, :func:`assign_rank1_classes`.
FLOAT_ENTRIES = 2**23

#: Arcs offered to each block at least, in :func:`assign_rank1_classes` (speed only: with
#: fewer, a dominant block shape leaves a nearly tight matching that OR-Tools solves slowly).
SLACK_ARCS = 32


def assign_rank1_classes(
    mass: np.ndarray, shape: np.ndarray, density: np.ndarray, tiles: int
) -> np.ndarray:
    """Exact minimum of ``sum_b mass[b] * density[shape[b], tile(b)]`` over injective
    ``tile``, solved on a provably sufficient subset of the blocks x tiles arcs.

    Why the subset keeps an optimum. Call the blocks of one shape a *class* k (``n_k`` blocks,
    ``N`` blocks in all); within a class the cost is rank-1, ``a_b d_t``, with ``a, d >= 0``.
    Order class k's tiles by ``d`` (ties by index) and its blocks by ``a`` descending (ties by
    index). Among the optimal assignments take one that minimises, lexicographically,
    (1) the sum over blocks of the position of its tile in its class's tile order, then
    (2) the number of pairs of same-class blocks whose tiles are in the opposite order to
    their masses. Then:
    * no unused tile comes before a used one in that block's class order: moving the block
      there does not raise the cost (``d`` is no larger) and lowers (1);
    * within a class, larger masses sit on earlier tiles: swapping an inverted pair changes
      the cost by ``(a1 - a2)(d_t2 - d_t1) <= 0``, keeps (1) and lowers (2).
    So the block of rank ``r`` (0-based) in class k sits at position ``p`` with ``r <= p``, and
    every tile before it is used, ``r`` of them by its own class and at most ``N - n_k`` by the
    others: ``p <= r + N - n_k``. Offering each block only the ``N - n_k + 1`` tiles of
    positions ``r .. r + N - n_k`` therefore keeps that optimal assignment, and the
    assignment solved on these arcs has the optimal cost of the dense problem.
    When one block shape dominates (a big model on 128 x 128 tiles), this is a few percent of
    the dense arcs.
    """
    nb = len(mass)
    top = max(float(mass[shape == k].max()) * float(density[k].max())
              for k in np.unique(shape))
    left, right, cost = [], [], []
    for k in np.unique(shape):
        members = np.flatnonzero(shape == k)
        members = members[np.lexsort((members, -mass[members]))]  # mass descending
        order = np.argsort(density[k], kind="stable")
        # N - n_k + 1 tiles suffice (above); a few more keep that optimum (a superset of a
        # sufficient set is sufficient) and make the matching far less tight for the solver
        width = min(max(nb - len(members) + 1, SLACK_ARCS), tiles - len(members) + 1)
        pos = np.arange(len(members))[:, None] + np.arange(width)[None, :]
        t = order[pos]  # [n_k, width]
        left.append(np.repeat(members, width))
        right.append(t.ravel())
        cost.append((mass[members][:, None] * density[k][t]).ravel())
    return assign_sparse(nb, tiles, np.concatenate(left), np.concatenate(right),
                         np.concatenate(cost), top)
