"""pair: exact column moves (outputs onto pairs with polarity, then each side) that keep pairs
disjoint and never raise the objective."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes._objective import cell_codes
from rcompile.passes.pair import BlockProblem, move_pairs, move_side

from rcompile.ir import Plan
from tests.passes.conftest import (
    assert_injective,
    chip_of,
    fractional_chip,
    objective,
    plan_of,
    random_stuck,
    run_chip,
)

TOP = 15


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.5), st.integers(2, 5))
def test_pairs_stay_disjoint_and_the_objective_never_rises(seed: int, rate: float, pairs: int
                                                           ) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, int(rng.integers(3, 12)), int(rng.integers(1, 2 * pairs))))
    plan = plan_of(w, tile_rows=8, tile_cols=2 * pairs, passes="quantize,tile,pack")
    ctx = chip_of(plan, random_stuck(plan.tiles_needed(), 8, 2 * pairs, rate, seed))
    placed, _ = run_chip(plan, ctx, "place")
    paired, log = run_chip(plan, ctx, "pair", placed)
    assert_injective(plan, paired, ctx)
    before, after = objective(plan, placed, ctx), objective(plan, paired, ctx)
    for a, b, p0, p1 in zip(before, after, placed.placements, paired.placements, strict=True):
        assert b <= a + 1e-9
        np.testing.assert_array_equal(p1.phys_rows, p0.phys_rows)  # rows are permute's business
        np.testing.assert_array_equal(p1.cols, p0.cols)
        if np.isnan(ctx.stuck[p0.tile]).all():
            assert p1 is p0  # a clean tile is left as it is
    assert log[0]["cost_after"] <= log[0]["cost_before"] + 1e-9
    assert log[0]["cost_after"] == pytest.approx(sum(after), rel=1e-9, abs=1e-12)


def test_pair_moves_an_output_off_a_stuck_column() -> None:
    """Output 0's - column stuck at the top level cannot realise its positive weights; a flip
    of polarity or the spare pair makes it exact."""
    plan = plan_of(np.array([[[1.0, -1.0], [0.5, 0.25]]]), tile_rows=4, tile_cols=6)
    stuck = np.full((1, 4, 6), np.nan, np.float32)
    stuck[0, :, 1] = TOP
    ctx = chip_of(plan, stuck)
    placed, _ = run_chip(plan, ctx, "place")
    paired, _ = run_chip(plan, ctx, "pair", placed)
    assert objective(plan, placed, ctx)[0] > 0 and objective(plan, paired, ctx) == [0.0]
    assert 1 not in paired.placements[0].neg.tolist()


def problem(seed: int, n: int, m: int, strip: int, rate: float) -> BlockProblem:
    rng = np.random.default_rng(seed)
    stuck = random_stuck(1, n, strip, rate, seed)[0]
    return BlockProblem(q=rng.integers(-TOP, TOP + 1, (n, m)), w=rng.uniform(0.1, 2, (n, m)),
                        codes=cell_codes(stuck), top=TOP, cols=np.arange(strip, dtype=np.int32))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(0, 2), st.floats(0.1, 0.6))
def test_outputs_onto_pairs_is_the_exact_best(seed: int, m: int, spare: int, rate: float) -> None:
    """Over every injective choice among current and spare pairs and every polarity."""
    bp = problem(seed, 4, m, 2 * (m + spare), rate)
    rows = np.arange(4)
    pos, neg = np.arange(0, 2 * m, 2), np.arange(1, 2 * m, 2)
    p2, n2 = move_pairs(bp, rows, pos, neg)
    cands = [(2 * k, 2 * k + 1) for k in range(m + spare)]
    best = min(
        bp.cost(rows, np.array([c[f] for c, f in zip(choice, flips, strict=True)]),
                np.array([c[1 - f] for c, f in zip(choice, flips, strict=True)]))
        for choice in itertools.permutations(cands, m)
        for flips in itertools.product((0, 1), repeat=m)
    )
    assert len(set(p2.tolist()) | set(n2.tolist())) == 2 * m
    assert {frozenset(x) for x in zip(p2.tolist(), n2.tolist(), strict=True)} <= set(
        map(frozenset, cands))
    assert bp.cost(rows, p2, n2) == pytest.approx(best, rel=1e-9, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(0, 2), st.floats(0.1, 0.6),
       st.booleans())
def test_one_side_move_is_the_exact_best(seed: int, m: int, spare: int, rate: float,
                                         move_pos: bool) -> None:
    """The moving side over every injective choice of columns the other side does not hold."""
    strip = 2 * m + spare
    bp = problem(seed, 4, m, strip, rate)
    rows = np.arange(4)
    pos, neg = np.arange(0, 2 * m, 2), np.arange(1, 2 * m, 2)
    fixed = neg if move_pos else pos
    moved = move_side(bp, rows, pos if move_pos else neg, fixed, move_pos)
    free = [c for c in range(strip) if c not in fixed.tolist()]

    def cost(side: np.ndarray) -> float:
        return bp.cost(rows, side, neg) if move_pos else bp.cost(rows, pos, side)

    best = min(cost(np.array(c)) for c in itertools.permutations(free, m))
    assert len(set(moved.tolist())) == m and not set(moved.tolist()) & set(fixed.tolist())
    assert cost(moved) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_no_rounds_change_nothing(tiny_plan: Plan) -> None:
    ctx = chip_of(tiny_plan, random_stuck(tiny_plan.tiles_needed(), 16, 6, 0.3, 5))
    placed, _ = run_chip(tiny_plan, ctx, "place")
    same, _ = run_chip(tiny_plan, ctx, "pair{rounds=0}", placed)
    for a, b in zip(placed.placements, same.placements, strict=True):
        np.testing.assert_array_equal(a.pos, b.pos)
        np.testing.assert_array_equal(a.neg, b.neg)



def test_the_objective_never_rises_on_fractional_stuck_levels() -> None:
    plan, ctx = fractional_chip(45)
    placed, _ = run_chip(plan, ctx, "place")
    paired, _ = run_chip(plan, ctx, "pair", placed)
    for a, b in zip(objective(plan, placed, ctx), objective(plan, paired, ctx), strict=True):
        assert b <= a + 1e-9
