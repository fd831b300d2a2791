"""tile: per group, the non-zero rows and outputs cut into the fewest balanced chunks that fit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.tile import Tile

from rcompile import api
from rcompile import pipeline as pl
from rcompile.ir import Plan
from tests.passes.conftest import plan_of


def test_plan_blocks_cover_every_weight_once(tiny_model: str) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    for li, layer in enumerate(plan.layers):
        cover = np.zeros(layer.q.shape, int)
        for b in plan.blocks:
            if b.layer == li:
                assert len(b.rows) <= 16 and len(b.outs) <= 3
                cover[b.group][np.ix_(b.rows, b.outs)] += 1
        assert np.all(cover[layer.q != 0] == 1)


def tiled(w: np.ndarray, rows: int, cols: int, skip_zero: bool = True) -> tuple[Plan, float]:
    plan = plan_of(w, tile_rows=rows, tile_cols=cols, passes="quantize")
    out, stats = Tile(skip_zero=skip_zero).run(plan, pl.PlanContext(rows, cols, plan.device))
    pl.check_plan(out)
    return out, float(stats["cell_utilisation"])


def balanced_chunks(sizes: list[int], n: int, limit: int) -> bool:
    """Fewest chunks of at most ``limit`` covering ``n`` items, sizes differing by at most 1."""
    return len(sizes) == -(-n // limit) and sum(sizes) == n and max(sizes) - min(sizes) <= 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(1, 40), st.integers(1, 20),
       st.integers(1, 12), st.integers(1, 8), st.floats(0, 0.5), st.booleans())
def test_blocks_fit_cover_once_skip_zeros_and_are_balanced(
    seed: int, groups: int, rows: int, outs: int, tile_rows: int, pairs: int, zero: float,
    skip_zero: bool
) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(groups, rows, outs))
    w[:, rng.random(rows) < zero, :] = 0.0  # pruned rows
    w[:, :, rng.random(outs) < zero] = 0.0  # pruned outputs
    plan, util = tiled(w, tile_rows, 2 * pairs, skip_zero)
    q = plan.layers[0].q
    used = 0
    for g in range(groups):
        blocks = [b for b in plan.blocks if b.group == g]
        live_rows = np.flatnonzero(q[g].any(axis=1)) if skip_zero else np.arange(rows)
        live_outs = np.flatnonzero(q[g].any(axis=0)) if skip_zero else np.arange(outs)
        cover = np.zeros(q[g].shape, int)
        for b in blocks:
            assert b.layer == 0 and b.rows.dtype == b.outs.dtype == np.int32
            assert 0 < len(b.rows) <= tile_rows and 0 < len(b.outs) <= pairs
            assert np.all(np.diff(b.rows) > 0) and np.all(np.diff(b.outs) > 0)
            cover[np.ix_(b.rows, b.outs)] += 1
            used += 2 * len(b.rows) * len(b.outs)
        # exactly the live rows x live outputs, each once: pruned rows and outputs take no cells
        want = np.zeros(q[g].shape, int)
        want[np.ix_(live_rows, live_outs)] = 1
        np.testing.assert_array_equal(cover, want)
        row_chunks = {tuple(b.rows.tolist()) for b in blocks}
        out_chunks = {tuple(b.outs.tolist()) for b in blocks}
        assert len(blocks) == len(row_chunks) * len(out_chunks)  # a grid of chunks
        if blocks:
            assert balanced_chunks([len(c) for c in row_chunks], len(live_rows), tile_rows)
            assert balanced_chunks([len(c) for c in out_chunks], len(live_outs), pairs)
        else:
            assert len(live_rows) == len(live_outs) == 0
    cells = len(plan.blocks) * tile_rows * 2 * pairs
    assert util == (used / cells if cells else 0.0)


def test_a_pruned_row_and_output_free_their_cells() -> None:
    w = np.ones((1, 5, 4))
    w[0, 2, :] = 0.0  # pruned row
    w[0, :, 1] = 0.0  # pruned output
    plan, _ = tiled(w, 2, 4)
    # 4 live rows in 2 chunks of 2, 3 live outputs in 2 chunks (2 and 1)
    assert [(b.rows.tolist(), b.outs.tolist()) for b in plan.blocks] == [
        ([0, 1], [0, 2]), ([0, 1], [3]), ([3, 4], [0, 2]), ([3, 4], [3])]
    plan, _ = tiled(w, 8, 8, skip_zero=False)
    assert [(b.rows.tolist(), b.outs.tolist()) for b in plan.blocks] == [
        ([0, 1, 2, 3, 4], [0, 1, 2, 3])]


def test_balanced_not_greedy() -> None:
    """9 rows on 8-row tiles: 5 + 4, leaving spare rows in both blocks, not 8 + 1."""
    plan, _ = tiled(np.ones((1, 9, 1)), 8, 2)
    assert [len(b.rows) for b in plan.blocks] == [5, 4]


def test_an_all_zero_layer_has_no_blocks() -> None:
    plan, util = tiled(np.zeros((2, 3, 3)), 4, 4)
    assert plan.blocks == () and util == 0.0
