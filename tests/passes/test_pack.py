"""pack: small blocks (at most C/2 columns) into the fewest tiles, each on its own strip."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.pack import Pack, _first_fit_decreasing, pack_bins

from rcompile import pipeline as pl
from rcompile.ir import Block, Plan
from tests.passes.conftest import plan_of


def fewest_bins(widths: list[int], cap: int) -> int:
    """The optimum by exhaustive search (items largest first, each into a used bin or a new one)."""
    items = sorted(widths, reverse=True)
    best = len(items)

    def place(i: int, room: list[int]) -> None:
        nonlocal best
        if len(room) >= best:
            return
        if i == len(items):
            best = len(room)
            return
        for k in range(len(room)):
            if room[k] >= items[i]:
                room[k] -= items[i]
                place(i + 1, room)
                room[k] += items[i]
        place(i + 1, [*room, cap - items[i]])

    place(0, [])
    return best


def check_bins(widths: list[int], where: list[int], cap: int, ordered: bool = False) -> int:
    """Every item has a bin, bins are numbered densely (``ordered``: in order of first use),
    the widths in each fit."""
    nbins = max(where) + 1
    first = list(dict.fromkeys(where))
    assert (first if ordered else sorted(first)) == list(range(nbins))
    for k in range(nbins):
        assert sum(w for w, b in zip(widths, where, strict=True) if b == k) <= cap
    return nbins


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 8), st.lists(st.integers(1, 4), min_size=1, max_size=8))
def test_fewest_bins_never_more_than_first_fit(pairs: int, outs: list[int]) -> None:
    cap = 2 * pairs
    widths = [2 * min(o, pairs) for o in outs]
    where, optimal = pack_bins(widths, cap, budget=5.0)
    nbins = check_bins(widths, where, cap)
    assert nbins <= max(_first_fit_decreasing(widths, cap)) + 1
    assert optimal and nbins == fewest_bins(widths, cap)  # small problems are solved to optimality


def test_packing_beats_first_fit_decreasing() -> None:
    """Widths 6, 6, 4, 4, 4, 4 in tiles of 14: first-fit decreasing takes 3, the optimum 2."""
    widths = [6, 6, 4, 4, 4, 4]
    assert max(_first_fit_decreasing(widths, 14)) + 1 == 3
    where, optimal = pack_bins(widths, 14, budget=5.0)
    assert check_bins(widths, where, 14) == 2 and optimal


def plan_with_blocks(outs: list[int], tile_cols: int) -> Plan:
    """A plan whose blocks have ``outs`` outputs each (one row, one group per block)."""
    w = np.zeros((len(outs), 1, max(outs)))
    for g, m in enumerate(outs):
        w[g, 0, :m] = 1.0
    plan = plan_of(w, tile_rows=4, tile_cols=tile_cols, passes="quantize")
    blocks = tuple(Block(layer=0, group=g, rows=np.zeros(1, np.int32),
                         outs=np.arange(m, dtype=np.int32)) for g, m in enumerate(outs))
    return Plan(**{**plan.__dict__, "blocks": blocks})


def test_pack_shares_tiles_between_small_blocks_and_gives_wide_ones_a_tile() -> None:
    plan = plan_with_blocks([3, 3, 2, 5, 2, 2, 2], tile_cols=14)  # 5 outputs: 10 > 14/2 columns
    ctx = pl.PlanContext(4, 14, plan.device)
    out, stats = Pack().run(plan, ctx)
    pl.check_plan(out)
    assert len(out.bin_of) == len(plan.blocks) and stats["tiles"] == out.tiles_needed() == 3
    assert stats["packing_optimal"] and stats["blocks"] == 7
    assert [out.bin_of[b] for b in range(7)].count(out.bin_of[3]) == 1  # the wide block alone
    widths = [2 * len(b.outs) for b in plan.blocks]
    check_bins(widths, list(out.bin_of), 14, ordered=True)  # numbered in order of their first block
    assert out.bins() == [[b for b in range(7) if out.bin_of[b] == k] for k in range(3)]
    again, _ = Pack().run(plan, ctx)
    assert again.bin_of == out.bin_of  # reproducible


def test_a_solved_packing_is_reproducible_and_beats_first_fit() -> None:
    """Thirty blocks of 2 or 3 outputs on 14-column tiles: first-fit decreasing takes 12 tiles,
    the trivial bound is 10, so CP-SAT really solves; twice, the same bins."""
    outs = [3, 3, 2, 2, 2, 2] * 5
    np.random.default_rng(4).shuffle(outs)
    plan = plan_with_blocks(outs, tile_cols=14)
    ctx = pl.PlanContext(4, 14, plan.device)
    widths = [2 * m for m in outs]
    assert max(_first_fit_decreasing(widths, 14)) + 1 == 12
    a, sa = Pack(budget=0.5).run(plan, ctx)
    b, sb = Pack(budget=0.5).run(plan, ctx)
    assert a.bin_of == b.bin_of and sa == sb
    assert check_bins(widths, list(a.bin_of), 14, ordered=True) == sa["tiles"] == 10
    assert sa["packing_optimal"]
