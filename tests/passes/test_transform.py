"""transform (MT): each output on an adjacent pair under the least-cost of four transforms
(polarity x common mode), outputs to pairs by an exact assignment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.place import block_q, block_weights

from rcompile import api
from rcompile import faultmap as fmap
from rcompile.device import Cell
from tests.passes.conftest import chip_of, plan_of, random_stuck, run_chip

TOP = 15
NEUROSIM_RMS = (0, .35, .40, .50, .65, .85, 1.0, 1.09, 1.08, 1.06, .92, .83, .61, .57, .63, .28)


def transform_cost(q: np.ndarray, w: np.ndarray, sp: np.ndarray, sn: np.ndarray, high: bool,
                   mode: str, sq: np.ndarray) -> float:
    """One output on one pair, written out: the weighted error of the levels the transform
    writes (stuck cells at their level) plus, by ``mode``, healthy cells' programming error."""
    kp = TOP + np.minimum(q, 0) if high else np.maximum(q, 0)
    kn = TOP - np.maximum(q, 0) if high else np.maximum(-q, 0)
    hp, hn = np.isnan(sp), np.isnan(sn)
    err = (np.where(hp, kp, sp) - np.where(hn, kn, sn) - q) ** 2
    if mode == "partners":
        hp, hn = hp & ~hn, hn & ~hp
    if mode != "off":
        err = err + hp * sq[kp] + hn * sq[kn]
    return float(np.sum(w * err))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(0, 2), st.floats(0.05, 0.6),
       st.sampled_from(["off", "partners", "all"]))
def test_each_output_takes_the_least_cost_transform_and_pairs_are_assigned_exactly(
    seed: int, m: int, spare: int, rate: float, noise: str
) -> None:
    rng = np.random.default_rng(seed)
    pairs = m + spare
    plan = plan_of(rng.normal(size=(1, 5, m)), tile_rows=6, tile_cols=2 * pairs)
    device = Cell(level_rms_error=NEUROSIM_RMS)
    sq = np.asarray(NEUROSIM_RMS) ** 2
    ctx = chip_of(plan, random_stuck(1, 6, 2 * pairs, rate, seed), device=device)
    placed, _ = run_chip(plan, ctx, "place")
    out, log = run_chip(plan, ctx, f"transform{{noise={noise}}}", placed)
    p = out.placements[0]
    q = block_q(plan, 0).astype(np.int64)
    w = block_weights(plan, ctx, 0)
    st_ = ctx.stuck[0][p.phys_rows]
    np.testing.assert_array_equal(p.phys_rows, placed.placements[0].phys_rows)  # rows in order

    def cost(j: int, pos: int, neg: int, high: bool) -> float:
        return transform_cost(q[:, j], w[:, j], st_[:, pos], st_[:, neg], high, noise, sq)

    best = np.array([[min(cost(j, a, b, h) for a, b in ((2 * k, 2 * k + 1), (2 * k + 1, 2 * k))
                          for h in (False, True)) for k in range(pairs)] for j in range(m)])
    chosen = [cost(j, int(p.pos[j]), int(p.neg[j]), bool(p.high[j])) for j in range(m)]
    for j in range(m):
        assert abs(int(p.pos[j]) - int(p.neg[j])) == 1 and min(p.pos[j], p.neg[j]) % 2 == 0
        assert chosen[j] == pytest.approx(best[j, min(p.pos[j], p.neg[j]) // 2], abs=1e-9)
    optimum = min(sum(best[j, k] for j, k in enumerate(ks))
                  for ks in itertools.permutations(range(pairs), m))
    assert sum(chosen) == pytest.approx(optimum, rel=1e-6, abs=1e-9)
    assert log[0]["cost_after"] == pytest.approx(sum(chosen), rel=1e-6, abs=1e-9)


def test_a_stuck_on_idle_cell_is_absorbed_by_the_high_common_mode() -> None:
    """Positive weights, + column stuck at the top: high common mode idles the + cell there."""
    plan = plan_of(np.array([[[1.0], [0.5], [0.25]]]), tile_rows=3, tile_cols=2)
    stuck = np.full((1, 3, 2), np.nan, np.float32)
    stuck[0, :, 0] = TOP
    ctx = chip_of(plan, stuck)
    out, log = run_chip(plan, ctx, "place,transform")
    p = out.placements[0]
    assert (int(p.pos[0]), int(p.neg[0]), bool(p.high[0])) == (0, 1, True)
    assert log[-1]["cost_after"] == 0.0


def test_mt_weighs_programming_error_by_default_on_a_device(tiny_model: str) -> None:
    """With an error table, transform's default is noise=all; noise=off switches it off."""
    dev = Cell(levels=16, level_rms_error=NEUROSIM_RMS)
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6, device=dev)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.3, (5, 1), 2)
    mt = "place{{order=assign}},transform{},program{{scheme=transform}}"
    default = api.build(plan, fm, strategy="mt")
    alls = api.build(plan, fm, pipeline=mt.format("{noise=all}"))
    off = api.build(plan, fm, pipeline=mt.format("{noise=off}"))
    for t, lv in default.mapping.levels.items():
        np.testing.assert_array_equal(alls.mapping.levels[t], lv)
    assert any(not np.array_equal(off.mapping.levels[t], lv)
               for t, lv in default.mapping.levels.items())
    high = [p.high.mean() for p in off.mapping.placements]
    high_default = [p.high.mean() for p in default.mapping.placements]
    assert sum(high_default) <= sum(high)  # fewer pairs parked at the costly high common mode
