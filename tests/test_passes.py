"""Passes: the objective, the solvers and the invariants every pass must keep."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes._objective import best_levels, cell_codes
from rcompile.passes.pair import BlockProblem, improve_columns
from rcompile.passes.permute import move_rows

from rcompile import api
from rcompile import faultmap as fmap
from rcompile.device import Device
from rcompile.ir import Plan
from rcompile.pipeline import parse, render
from rcompile.solvers import assign

TOP = 15


@given(st.integers(-TOP, TOP))
def test_healthy_pair_reproduces_q(q: int) -> None:
    kp, kn, e = best_levels(np.array([q]), np.array([np.nan]), np.array([np.nan]), TOP)
    assert int(kp[0]) - int(kn[0]) == q and e[0] == 0
    assert min(kp[0], kn[0]) == 0  # lowest common mode


@given(st.integers(-TOP, TOP), st.floats(0, TOP), st.booleans())
def test_compensation_is_optimal_over_all_partner_levels(q: int, f: float, stuck_pos: bool) -> None:
    sp = np.array([f if stuck_pos else np.nan])
    sn = np.array([np.nan if stuck_pos else f])
    kp, kn, e = best_levels(np.array([q]), sp, sn, TOP)
    ks = np.arange(TOP + 1)
    brute = np.min(np.abs((f - ks - q) if stuck_pos else (ks - f - q)))
    assert abs(e[0]) == pytest.approx(brute)
    assert 0 <= kp[0] <= TOP and 0 <= kn[0] <= TOP


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 3), st.integers(0, 10_000))
def test_assignment_matches_brute_force(n: int, extra: int, seed: int) -> None:
    cost = np.random.default_rng(seed).uniform(0, 100, size=(n, n + extra))
    got = assign(cost)
    assert len(set(got.tolist())) == n
    best = min(
        sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n + extra), n)
    )
    assert cost[np.arange(n), got].sum() == pytest.approx(best, rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.6))
def test_permutation_moves_are_bijections_and_never_worsen(seed: int, rate: float) -> None:
    rng = np.random.default_rng(seed)
    n, m, rows, cols = 12, 5, 16, 14
    q = rng.integers(-TOP, TOP + 1, size=(n, m))
    fm = fmap.synth(1, rows, cols, rate, (1, 1), seed)
    codes = cell_codes(fm.stuck_levels(Device())[0])
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


def test_plan_blocks_cover_every_weight_once(tiny_model: str) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    for li, layer in enumerate(plan.layers):
        cover = np.zeros(layer.q.shape, int)
        for b in plan.blocks:
            if b.layer == li:
                assert len(b.rows) <= 16 and len(b.outs) <= 3
                cover[b.group][np.ix_(b.rows, b.outs)] += 1
        assert np.all(cover[layer.q != 0] == 1)


def realised_weights(plan: Plan, res: api.BuildResult, fm: fmap.FaultMap) -> list[np.ndarray]:
    st_ = fm.stuck_levels(Device())
    out = [np.zeros(layer.q.shape) for layer in plan.layers]
    for pl in res.mapping.placements:
        blk = plan.blocks[pl.block]
        lv = np.where(np.isnan(st_[pl.tile]), res.mapping.levels[pl.tile], st_[pl.tile])
        d = lv[pl.phys_rows][:, pl.pos] - lv[pl.phys_rows][:, pl.neg]
        out[blk.layer][blk.group][np.ix_(blk.rows, blk.outs)] += d * pl.scale
    return out


@pytest.mark.parametrize("strategy", sorted(api.STRATEGIES))
def test_fault_free_chip_realises_the_quantised_weights(tiny_model: str, strategy: str) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.0, (1, 1), 0)
    res = api.build(plan, fm, strategy=strategy)
    for layer, w in zip(plan.layers, realised_weights(plan, res, fm), strict=True):
        np.testing.assert_allclose(w, layer.q * layer.scale[:, None, :], rtol=1e-6, atol=1e-7)


def test_full_beats_two_column_on_weight_error(tiny_model: str) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.2, (5, 1), 3)
    errs = {}
    for strategy in ("two-column", "full"):
        res = api.build(plan, fm, strategy=strategy)
        errs[strategy] = sum(
            float(np.sum((w - layer.q * layer.scale[:, None, :]) ** 2))
            for layer, w in zip(plan.layers, realised_weights(plan, res, fm), strict=True)
        )
    assert errs["full"] < 0.25 * errs["two-column"]


def test_two_builds_give_identical_images(tiny_model: str) -> None:
    from rcompile import image

    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.1, (1, 5), 9)
    a = image.encode(api.build(plan, fm).image)
    b = image.encode(api.build(plan, fm).image)
    assert a == b


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_device_aware_programming_never_loses_to_plain(seed: int) -> None:
    """With exact levels it equals best_levels; with noisy levels its expected error is lower."""
    from rcompile.passes._objective import best_levels_noisy

    rng = np.random.default_rng(seed)
    q = rng.integers(-TOP, TOP + 1, 200)
    stuck = rng.random(200) < 0.4
    sp = np.where(stuck & (rng.random(200) < 0.5), rng.choice([0.0, TOP], 200), np.nan)
    sn = np.where(stuck & np.isnan(sp), rng.choice([0.0, TOP], 200), np.nan)

    def expected(kp: np.ndarray, kn: np.ndarray, sq: np.ndarray) -> float:
        real = np.where(np.isnan(sp), kp, sp) - np.where(np.isnan(sn), kn, sn)
        noise = np.isnan(sp) * sq[kp] + np.isnan(sn) * sq[kn]
        return float(np.sum((real - q) ** 2 + noise))

    zero = np.zeros(TOP + 1)
    kp, kn, _ = best_levels(q, sp, sn, TOP)
    assert expected(*best_levels_noisy(q, sp, sn, TOP, zero), zero) == expected(kp, kn, zero)
    sq = rng.uniform(0, 2, TOP + 1)
    sq[0] = 0.0
    assert expected(*best_levels_noisy(q, sp, sn, TOP, sq), sq) <= expected(kp, kn, sq) + 1e-9


#: Per-level RMS programming error of the neurosim preset (level steps), rounded.
NEUROSIM_RMS = (0, .35, .40, .50, .65, .85, 1.0, 1.09, 1.08, 1.06, .92, .83, .61, .57, .63, .28)


def test_partners_mode_keeps_healthy_pairs_at_the_lowest_common_mode() -> None:
    from rcompile.passes._objective import best_levels_noisy

    sq = np.asarray(NEUROSIM_RMS) ** 2
    q = np.arange(-TOP, TOP + 1)
    nan = np.full(q.shape, np.nan)
    kp0, kn0, _ = best_levels(q, nan, nan, TOP)
    kp, kn = best_levels_noisy(q, nan, nan, TOP, sq, healthy_pairs=False)
    np.testing.assert_array_equal(kp, kp0)
    np.testing.assert_array_equal(kn, kn0)
    # 'all' raises the common mode where the table favours it: q = 14 -> (15, 1), not (14, 0)
    kp, kn = best_levels_noisy(np.array([14]), nan[:1], nan[:1], TOP, sq)
    assert (int(kp[0]), int(kn[0])) == (15, 1)


@pytest.mark.parametrize("healthy_pairs", [False, True])
def test_stuck_partner_avoids_an_unreliable_level(healthy_pairs: bool) -> None:
    from rcompile.passes._objective import best_levels_noisy

    sq = np.zeros(TOP + 1)
    sq[5] = 4.0  # level 5 programs with an RMS error of 2 steps; its neighbours are exact
    q = np.array([5, 5, -5, 3])
    sp = np.array([np.nan, 0.0, np.nan, np.nan])  # pair 1: + stuck at 0
    sn = np.array([0.0, np.nan, np.nan, np.nan])  # pair 0: - stuck at 0
    kp, kn = best_levels_noisy(q, sp, sn, TOP, sq, healthy_pairs=healthy_pairs)
    assert int(kp[0]) in (4, 6)  # exact level 5 costs 4 in expectation, a neighbour costs 1
    assert int(kn[1]) == 0  # + stuck at 0 cannot reach +5; the partner already writes level 0
    assert (int(kp[3]), int(kn[3])) == (3, 0)  # healthy pair, nothing unreliable: exact


def test_noise_modes() -> None:
    from rcompile.passes import _objective as ob

    table = (0.0, 1.0)
    assert ob.noise_mode("off", table) == "off"
    assert ob.noise_mode("partners", table) == "partners"
    assert ob.noise_mode("all", table) == ob.noise_mode("true", table) == "all"
    assert ob.noise_mode("false", table) == "off"
    assert ob.noise_mode("auto", table) == "off"
    assert ob.noise_mode("auto", table, auto="all") == "all"
    for mode in ("auto", "all", "partners", "true"):
        assert ob.noise_mode(mode, ()) == "off"  # no error table: nothing to weigh
    with pytest.raises(ValueError, match="noise mode"):
        ob.noise_mode("maybe", table)
    for spec in ("program{noise=partners}", "transform{noise=all},program{scheme=transform}"):
        assert render(parse(spec)) == spec
    assert render(parse("program{noise=auto},transform{noise=auto}")) == "program,transform"


@pytest.mark.parametrize("mode", ["all", "partners", "off"])
@pytest.mark.parametrize("strategy", ["full", "mt"])
def test_noise_options_change_nothing_without_an_error_table(
    tiny_model: str, strategy: str, mode: str
) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.2, (1, 1), 4)
    base = api.build(plan, fm, strategy=strategy)
    pipes = {
        "full": f"place{{order=assign}},permute,program{{noise={mode}}},calibrate",
        "mt": f"place{{order=assign}},transform{{noise={mode}}},program{{scheme=transform}}",
    }
    other = api.build(plan, fm, pipeline=pipes[strategy])
    for t, lv in base.mapping.levels.items():
        np.testing.assert_array_equal(other.mapping.levels[t], lv)


def test_mt_weighs_programming_error_by_default_on_a_device(tiny_model: str) -> None:
    """With an error table, transform's default is noise=all; noise=off switches it off."""
    dev = Device(levels=16, level_rms_error=NEUROSIM_RMS)
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


@pytest.mark.parametrize("strategy", ["full", "mt"])
def test_partners_mode_equals_plain_on_a_healthy_chip(tiny_model: str, strategy: str) -> None:
    """Only partners of stuck cells weigh programming error, so a fault-free chip is unchanged."""
    dev = Device(levels=16, level_rms_error=NEUROSIM_RMS)
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6, device=dev)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.0, (1, 1), 0)
    pipes = {
        "full": "place{{order=assign}},permute,program{{noise={m}}},calibrate",
        "mt": "place{{order=assign}},transform{{noise={m}}},program{{scheme=transform}}",
    }
    off, partners = (
        api.build(plan, fm, pipeline=pipes[strategy].format(m=m)) for m in ("off", "partners")
    )
    for t, lv in off.mapping.levels.items():
        np.testing.assert_array_equal(partners.mapping.levels[t], lv)
    if strategy == "full":  # whereas 'all' raises some healthy pairs' common mode
        alls = api.build(plan, fm, pipeline=pipes["full"].format(m="all"))
        assert any(
            not np.array_equal(alls.mapping.levels[t], lv) for t, lv in off.mapping.levels.items()
        )
