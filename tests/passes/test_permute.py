"""permute: exact row assignments alternated with pair's column moves; injective, never worse."""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes._objective import cell_codes
from rcompile.passes.pair import BlockProblem, improve_columns
from rcompile.passes.permute import move_rows

from rcompile import api
from rcompile import faultmap as fmap
from rcompile.device import Cell
from rcompile.ir import ChipMapping, Plan
from rcompile.pipeline import SolverOptions
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
@given(st.integers(0, 10_000), st.floats(0.0, 0.6))
def test_permutation_moves_are_bijections_and_never_worsen(seed: int, rate: float) -> None:
    rng = np.random.default_rng(seed)
    n, m, rows, cols = 12, 5, 16, 14
    q = rng.integers(-TOP, TOP + 1, size=(n, m))
    fm = fmap.synth(1, rows, cols, rate, (1, 1), seed)
    codes = cell_codes(fm.stuck_levels(Cell())[0])
    bp = BlockProblem(q=q, w=np.ones((n, m)), codes=codes, top=TOP, cols=np.arange(cols))
    r0, p0, n0 = np.arange(n), np.arange(0, 2 * m, 2), np.arange(1, 2 * m, 2)
    c0 = bp.cost(r0, p0, n0)
    r1 = move_rows(bp, r0, p0, n0)
    assert len(set(r1.tolist())) == n and r1.max() < rows
    assert bp.cost(r1, p0, n0) <= c0 + 1e-9
    p1, n1, c1 = improve_columns(bp, r1, p0, n0)
    cols_used = np.concatenate([p1, n1])
    assert len(set(cols_used.tolist())) == 2 * m and cols_used.max() < cols
    assert c1 <= bp.cost(r1, p0, n0) + 1e-9


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.5), st.booleans())
def test_permute_stays_injective_and_never_raises_the_objective(seed: int, rate: float,
                                                                columns: bool) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, int(rng.integers(2, 12)), int(rng.integers(1, 6))))
    plan = plan_of(w, tile_rows=8, tile_cols=8, passes="quantize,tile,pack")
    ctx = chip_of(plan, random_stuck(plan.tiles_needed(), 8, 8, rate, seed))
    placed, _ = run_chip(plan, ctx, "place")
    moved, log = run_chip(plan, ctx, f"permute{{columns={str(columns).lower()}}}", placed)
    assert_injective(plan, moved, ctx)
    before, after = objective(plan, placed, ctx), objective(plan, moved, ctx)
    for a, b, p0, p1 in zip(before, after, placed.placements, moved.placements, strict=True):
        assert b <= a + 1e-9
        if not columns:  # rows only
            np.testing.assert_array_equal(p1.pos, p0.pos)
            np.testing.assert_array_equal(p1.neg, p0.neg)
    faulty = {p.tile for p in placed.placements if not np.isnan(ctx.stuck[p.tile]).all()}
    stats = log[0]
    assert stats["blocks_solved"] == sum(p.tile in faulty for p in placed.placements)
    assert stats["cost_after"] <= stats["cost_before"] + 1e-9 and stats["time_limit_hits"] == 0
    assert stats["cost_after"] == pytest.approx(sum(after), rel=1e-9, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(0, 2), st.floats(0.1, 0.6))
def test_a_row_round_is_the_exact_best_row_assignment(seed: int, n: int, spare: int, rate: float
                                                      ) -> None:
    """One block, one round, rows only: the best of every injective map of rows to lines."""
    rng = np.random.default_rng(seed)
    lines = n + spare
    plan = plan_of(rng.normal(size=(1, n, 2)), tile_rows=lines, tile_cols=4)
    ctx = chip_of(plan, random_stuck(1, lines, 4, rate, seed))
    placed, _ = run_chip(plan, ctx, "place")
    moved, _ = run_chip(plan, ctx, "permute{rounds=1,columns=false}", placed)
    p = placed.placements[0]
    best = min(
        objective(plan, ChipMapping((dataclasses.replace(p, phys_rows=np.array(r, np.int32)),)),
                  ctx)[0]
        for r in itertools.permutations(range(lines), n)
    )
    assert objective(plan, moved, ctx)[0] == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_a_fault_free_chip_is_left_as_placed(tiny_plan: Plan) -> None:
    ctx = chip_of(tiny_plan, np.full((tiny_plan.tiles_needed(), 16, 6), np.nan))
    placed, _ = run_chip(tiny_plan, ctx, "place")
    moved, log = run_chip(tiny_plan, ctx, "permute", placed)
    assert log[0]["blocks_solved"] == 0
    assert all(a is b for a, b in zip(moved.placements, placed.placements, strict=True))


def test_results_do_not_depend_on_the_number_of_workers(
    tiny_plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = chip_of(tiny_plan, random_stuck(tiny_plan.tiles_needed(), 16, 6, 0.1, 7))
    placed, _ = run_chip(tiny_plan, ctx, "place")
    runs = []
    for jobs in ("1", "2"):  # 45 faulty blocks: two forked workers
        monkeypatch.setenv("RCOMPILE_JOBS", jobs)
        runs.append(run_chip(tiny_plan, ctx, "permute", placed)[0])
    for a, b in zip(*(r.placements for r in runs), strict=True):
        for f in ("phys_rows", "pos", "neg"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_the_time_limit_leaves_a_valid_mapping_and_is_counted(tiny_plan: Plan) -> None:
    ctx = chip_of(tiny_plan, random_stuck(tiny_plan.tiles_needed(), 16, 6, 0.2, 8))
    ctx = dataclasses.replace(ctx, solver=SolverOptions(time_limit_s=0.0))
    placed, _ = run_chip(tiny_plan, ctx, "place")
    moved, log = run_chip(tiny_plan, ctx, "permute", placed)
    assert log[0]["time_limit_hits"] == log[0]["blocks_solved"] == len(tiny_plan.blocks)
    assert_injective(tiny_plan, moved, ctx)
    assert objective(tiny_plan, moved, ctx) == objective(tiny_plan, placed, ctx)


def test_the_objective_never_rises_on_fractional_stuck_levels() -> None:
    plan, ctx = fractional_chip(283)
    placed, _ = run_chip(plan, ctx, "place")
    moved, _ = run_chip(plan, ctx, "permute", placed)
    for a, b in zip(objective(plan, placed, ctx), objective(plan, moved, ctx), strict=True):
        assert b <= a + 1e-9


def test_a_third_party_graph_on_measured_conductances_is_costed_exactly() -> None:
    """sklearn's MLP (skl2onnx) on a chip whose stuck cells carry measured conductances
    (fractional levels): the costs permute and pair report are the true objective, and no
    block gets worse."""
    path = os.path.join(os.path.dirname(__file__), "..", "data", "compat",
                        "sk_mlp_classifier-skl2onnx13-dynamic.onnx")
    plan, _ = api.make_plan(path, tile_rows=64, tile_cols=64)
    fm = fmap.synth(plan.tiles_needed() + 1, 64, 64, 0.2, (1, 1), 4)
    rng = np.random.default_rng(4)
    g = rng.uniform(plan.device.g_min_us, plan.device.g_max_us, fm.faults.shape)
    fm = dataclasses.replace(fm, stuck_g=np.where(fm.faults != 0, g, np.nan).astype(np.float32))
    ctx = chip_of(plan, fm.stuck_levels(plan.device))
    assert np.any(np.nan_to_num(ctx.stuck) % 1 != 0)  # the levels really are fractional
    placed, _ = run_chip(plan, ctx, "place")
    before = objective(plan, placed, ctx)
    for spec in ("permute", "pair"):
        moved, log = run_chip(plan, ctx, spec, placed)
        after = objective(plan, moved, ctx)
        assert log[0]["cost_before"] == pytest.approx(sum(before), rel=1e-9)
        assert log[0]["cost_after"] == pytest.approx(sum(after), rel=1e-9)
        assert all(b <= a + 1e-9 for a, b in zip(before, after, strict=True))
