"""place: bins on tiles (sequential, or an exact assignment to the cleanest), strips per block."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.place import Place, assign_rank1_classes

from rcompile.errors import DoesNotFit
from rcompile.ir import Plan
from rcompile.solvers import assign
from tests.passes.conftest import assert_injective, chip_of, plan_of, random_stuck, run_chip


def healthy(tiles: int, plan: Plan) -> np.ndarray:
    return np.full((tiles, plan.tile_rows, plan.tile_cols), np.nan, np.float32)


def test_sequential_is_the_identity_placement(tiny_plan: Plan) -> None:
    ctx = chip_of(tiny_plan, random_stuck(len(tiny_plan.blocks) + 3, 16, 6, 0.2, 1))
    mapping, log = run_chip(tiny_plan, ctx, "place")
    assert log[0]["tiles_used"] == len(tiny_plan.blocks) and log[0]["tiles"] == ctx.geometry.tiles
    assert [p.block for p in mapping.placements] == list(range(len(tiny_plan.blocks)))
    for p in mapping.placements:
        blk = tiny_plan.blocks[p.block]
        m = len(blk.outs)
        assert p.tile == p.block
        np.testing.assert_array_equal(p.phys_rows, np.arange(len(blk.rows)))
        np.testing.assert_array_equal(p.pos, np.arange(0, 2 * m, 2))  # output j on (2j, 2j+1)
        np.testing.assert_array_equal(p.neg, np.arange(1, 2 * m, 2))
        np.testing.assert_array_equal(p.cols, np.arange(6))  # a tile of its own: every column
        assert not p.high.any() and not p.offset.any()
        scale = tiny_plan.layers[blk.layer].scale[blk.group][blk.outs]
        np.testing.assert_array_equal(p.scale, scale)
    for bias, layer in zip(mapping.bias, tiny_plan.layers, strict=True):
        np.testing.assert_array_equal(bias, layer.bias)
        assert bias is not layer.bias  # a copy: later passes may not touch the plan


def test_packed_blocks_share_a_tile_on_disjoint_strips() -> None:
    """Eight groups of 2 outputs on 14-column tiles: pack puts 3 blocks (12 columns) a tile."""
    w = np.random.default_rng(0).normal(size=(8, 5, 2))
    plan = plan_of(w, tile_rows=8, tile_cols=14, passes="quantize,tile,pack")
    assert plan.tiles_needed() == 3
    for order in ("sequential", "assign"):
        ctx = chip_of(plan, random_stuck(4, 8, 14, 0.1, 2))
        mapping, _ = run_chip(plan, ctx, f"place{{order={order}}}")
        assert_injective(plan, mapping, ctx)
        for members in plan.bins():
            pls = [mapping.placements[b] for b in members]
            assert len({p.tile for p in pls}) == 1  # a bin is one tile
            cols = np.concatenate([p.cols for p in pls])
            assert len(cols) <= 14 and len(set(cols.tolist())) == len(cols)
            for p in pls:  # adjacent pairs at the start of its strip, identity rows
                np.testing.assert_array_equal(p.pos, p.cols[0:4:2])
                np.testing.assert_array_equal(p.neg, p.cols[1:4:2])
                np.testing.assert_array_equal(p.phys_rows, np.arange(5))
        # the 2 spare columns of a 12-of-14 tile go to the first strip
        assert [len(mapping.placements[b].cols) for b in plan.bins()[0]] == [6, 4, 4]


def test_assign_puts_blocks_on_the_cleaner_tiles() -> None:
    plan = plan_of(np.random.default_rng(1).normal(size=(1, 8, 6)), passes="quantize,tile")
    assert len(plan.blocks) == 2
    stuck = random_stuck(5, 8, 6, 0.3, 3)
    stuck[[2, 4]] = np.nan  # two clean tiles among three dirty ones
    ctx = chip_of(plan, stuck)
    mapping, _ = run_chip(plan, ctx, "place{order=assign}")
    assert sorted(p.tile for p in mapping.placements) == [2, 4]
    mapping, _ = run_chip(plan, ctx, "place")
    assert [p.tile for p in mapping.placements] == [0, 1]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(0, 3), st.floats(0.02, 0.4))
def test_assign_is_the_exact_minimum_of_the_estimated_cost(
    seed: int, blocks: int, spare: int, rate: float
) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(blocks, int(rng.integers(2, 9)), 3)) * rng.uniform(0.1, 3, (blocks, 1, 1))
    plan = plan_of(w, passes="quantize,tile")
    ctx = chip_of(plan, random_stuck(blocks + spare, 8, 6, rate, seed))
    mapping, _ = run_chip(plan, ctx, "place{order=assign}")
    assert_injective(plan, mapping, ctx)
    tiles = [p.tile for p in mapping.placements]
    assert len(set(tiles)) == blocks
    if spare == 0:  # nothing to choose: the sequential placement
        assert tiles == list(range(blocks))
        return
    mass, shape, density = Place()._factors(plan, ctx, plan.bins())
    cost = mass[:, None] * density[shape]  # [bins, tiles]
    best = min(sum(cost[k, t] for k, t in enumerate(p))
               for p in itertools.permutations(range(ctx.geometry.tiles), blocks))
    assert sum(cost[k, t] for k, t in enumerate(tiles)) == pytest.approx(best, rel=1e-6)


def test_estimated_cost_favours_rows_and_columns_later_passes_can_pick() -> None:
    """Two bad lines cost a block that can leave them spare nothing; fewer faults spread over
    every row and column cost it something."""
    plan = plan_of(np.ones((1, 4, 2)), passes="quantize,tile")  # 4 rows, 4 columns of 8 x 6
    stuck = healthy(2, plan)
    stuck[0, 6:, :] = 0.0  # tile 0: two whole stuck rows (12 cells), outside the 4 cleanest
    rows = np.arange(8)
    stuck[1, rows, rows % 6] = 15.0  # tile 1: 8 stray cells, one in every row
    mass, shape, density = Place()._factors(plan, chip_of(plan, stuck), plan.bins())
    assert density[shape[0], 0] == 0.0 < density[shape[0], 1]


def test_a_chip_with_too_few_tiles_does_not_fit(tiny_plan: Plan) -> None:
    ctx = chip_of(tiny_plan, healthy(len(tiny_plan.blocks) - 1, tiny_plan))
    for order in ("sequential", "assign"):
        with pytest.raises(DoesNotFit, match=r"test-chip: the model needs 45 tiles of 16x6 but "
                           r"the chip has 44"):
            run_chip(tiny_plan, ctx, f"place{{order={order}}}")


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 14), st.integers(1, 3), st.integers(0, 60))
def test_rank1_classes_reach_the_dense_optimum(seed: int, nb: int, classes: int, spare: int
                                               ) -> None:
    """The sparse arcs of a big chip keep the optimum of the dense blocks x tiles problem."""
    rng = np.random.default_rng(seed)
    tiles = nb + spare
    mass = rng.uniform(0, 10, nb) * (rng.random(nb) < 0.9)
    mass[rng.random(nb) < 0.2] = 3.0  # ties
    shape = rng.integers(0, classes, nb)
    shape[0] = 0
    density = rng.uniform(0, 2, (classes, tiles)).round(1)  # ties among tiles too
    if not (mass.max() > 0 and density.max() > 0):
        return
    got = assign_rank1_classes(mass, shape, density, tiles)
    assert len(set(got.tolist())) == nb and got.max() < tiles
    dense = mass[:, None] * density[shape]
    want = assign(dense)
    assert dense[np.arange(nb), got].sum() == pytest.approx(dense[np.arange(nb), want].sum(),
                                                           rel=1e-9, abs=1e-9)
