"""program: target levels of every used cell, so that ``G+ - G-`` realises q (exactly on healthy
pairs; as closely as the levels allow beside a stuck cell with ``compensate``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.place import block_q

from rcompile import faultmap as fmap
from rcompile.ir import ChipMapping, Plan
from tests.passes.conftest import chip_of, plan_of, random_stuck, run_chip

TOP = 15


def pair_levels(plan: Plan, mapping: ChipMapping, b: int) -> tuple[np.ndarray, ...]:
    """Programmed levels of block ``b``'s + and - cells, and its q, all ``[n, m]``."""
    p = mapping.placements[b]
    lv = mapping.levels[p.tile].astype(np.int64)
    r = p.phys_rows[:, None]
    return lv[r, p.pos], lv[r, p.neg], block_q(plan, b).astype(np.int64)


def check_levels_cover_used_cells_only(plan: Plan, mapping: ChipMapping, ctx: object) -> None:
    used: dict[int, np.ndarray] = {}
    for p in mapping.placements:
        mask = used.setdefault(p.tile, np.zeros((8, 8), bool))
        mask[np.ix_(p.phys_rows, np.concatenate([p.pos, p.neg]))] = True
    assert set(mapping.levels) == set(used)  # every used tile, no other
    for t, lv in mapping.levels.items():
        assert lv.dtype == np.uint8 and lv.shape == (8, 8) and lv.max() <= TOP
        assert not lv[~used[t]].any()  # unused cells stay at level 0


#: Program options -> the common mode of healthy pairs (None: as ``transform`` chose, per output).
SCHEMES: dict[str, bool | None] = {
    "scheme=two-column": False,
    "scheme=differential,common=low": False,
    "scheme=differential,common=high": True,
    "scheme=transform": None,
    "scheme=compensate": False,
}


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(sorted(SCHEMES)))
def test_every_scheme_realises_q_on_healthy_pairs(seed: int, scheme: str) -> None:
    rng = np.random.default_rng(seed)
    plan = plan_of(rng.normal(size=(2, int(rng.integers(2, 12)), int(rng.integers(1, 7)))),
                   tile_rows=8, tile_cols=8, passes="quantize,tile,pack")
    ctx = chip_of(plan, np.full((plan.tiles_needed(), 8, 8), np.nan))
    placed, _ = run_chip(plan, ctx, "place")
    if SCHEMES[scheme] is None:  # the common mode transform would choose: here at random
        placed = dataclasses.replace(placed, placements=tuple(
            dataclasses.replace(p, high=rng.random(len(p.pos)) < 0.5) for p in placed.placements))
    mapping, log = run_chip(plan, ctx, f"program{{{scheme}}}", placed)
    check_levels_cover_used_cells_only(plan, mapping, ctx)
    assert log[0]["tiles_programmed"] == plan.tiles_needed()
    for b, p in enumerate(mapping.placements):
        kp, kn, q = pair_levels(plan, mapping, b)
        np.testing.assert_array_equal(kp - kn, q)  # G+ - G- = q
        want = SCHEMES[scheme]
        high = np.broadcast_to(p.high if want is None else np.array(want), q.shape[1:])
        np.testing.assert_array_equal(np.where(high, np.maximum(kp, kn), np.minimum(kp, kn)),
                                      np.where(high, TOP, 0) * np.ones_like(q))  # idle cell


@pytest.mark.parametrize("ratio, high", [((5, 1), True), ((1, 5), False)])
def test_differential_auto_sits_where_the_faults_favour(ratio: tuple[int, int], high: bool
                                                        ) -> None:
    """More stuck-on (SA1) cells than stuck-off: the common mode goes high, else low."""
    plan = plan_of(np.random.default_rng(0).normal(size=(1, 6, 3)), tile_rows=8, tile_cols=8)
    fm = fmap.synth(1, 8, 8, 0.3, ratio, 1)
    ctx = chip_of(plan, fm.stuck_levels(plan.device))
    mapping, _ = run_chip(plan, ctx, "place,program{scheme=differential}")
    kp, kn, _ = pair_levels(plan, mapping, 0)
    assert np.all(np.maximum(kp, kn) == TOP) if high else np.all(np.minimum(kp, kn) == 0)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.6))
def test_compensate_sets_a_stuck_cells_partner_as_close_as_the_levels_allow(seed: int,
                                                                            rate: float) -> None:
    rng = np.random.default_rng(seed)
    plan = plan_of(rng.normal(size=(1, int(rng.integers(2, 9)), int(rng.integers(1, 5)))),
                   tile_rows=8, tile_cols=8)
    stuck = random_stuck(1, 8, 8, rate, seed)
    stuck[0, 0, 0] = 6.4  # a fractional level (measured conductance) too
    ctx = chip_of(plan, stuck)
    mapping, _ = run_chip(plan, ctx, "place,permute,program")
    check_levels_cover_used_cells_only(plan, mapping, ctx)
    p = mapping.placements[0]
    kp, kn, q = pair_levels(plan, mapping, 0)
    sp, sn = (stuck[0][p.phys_rows[:, None], c] for c in (p.pos, p.neg))
    ks = np.arange(TOP + 1)
    for i, j in np.ndindex(q.shape):
        a, b = sp[i, j], sn[i, j]
        if np.isnan(a) and np.isnan(b):  # healthy: exact, lowest common mode
            assert kp[i, j] - kn[i, j] == q[i, j] and min(kp[i, j], kn[i, j]) == 0
        elif np.isnan(b):  # + stuck: - is the best level, + keeps its stuck level
            assert kp[i, j] == round(a)
            assert abs(a - kn[i, j] - q[i, j]) == pytest.approx(np.abs(a - ks - q[i, j]).min())
        elif np.isnan(a):
            assert kn[i, j] == round(b)
            assert abs(kp[i, j] - b - q[i, j]) == pytest.approx(np.abs(ks - b - q[i, j]).min())
        else:  # both stuck: nothing to choose; each cell's target is its stuck level
            assert (kp[i, j], kn[i, j]) == (round(a), round(b))


def test_compensation_beats_two_column_beside_stuck_cells() -> None:
    """Output 0 (q = 15, 6) with its - cell stuck at 4: two-column writes + = q and realises
    q - 4; compensate raises + by 4 where the levels allow (6 -> 10), to the top where not."""
    plan = plan_of(np.array([[[1.0, -1.0], [0.4, -0.4]]]), tile_rows=2, tile_cols=4)
    stuck = np.full((1, 2, 4), np.nan, np.float32)
    stuck[0, :, 1] = 4.0
    ctx = chip_of(plan, stuck)
    two, _ = run_chip(plan, ctx, "place,program{scheme=two-column}")
    comp, _ = run_chip(plan, ctx, "place,program")
    assert block_q(plan, 0)[:, 0].tolist() == [15, 6]
    assert two.levels[0][:, 0].tolist() == [15, 6] and comp.levels[0][:, 0].tolist() == [15, 10]
    assert comp.levels[0][:, 1].tolist() == [4, 4]  # the stuck cell's own target: its level
