"""The objective every per-chip pass minimises (``passes/_objective.py``): optimal levels of one
pair, its cost tables, and the device-aware variant."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes._objective import (
    best_levels,
    cell_codes,
    code_table,
    error_table,
    pair_cost_by_state,
    pair_error,
    stuck_codes,
    whole_codes,
)

from rcompile.pipeline import parse, render

TOP = 15

#: Per-level RMS programming error of the neurosim preset (level steps), rounded.
NEUROSIM_RMS = (0, .35, .40, .50, .65, .85, 1.0, 1.09, 1.08, 1.06, .92, .83, .61, .57, .63, .28)


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


@given(st.integers(-TOP, TOP), st.floats(0, TOP), st.floats(0, TOP))
def test_two_stuck_cells_realise_their_difference_whatever_is_written(
    q: int, fp: float, fn: float
) -> None:
    kp, kn, e = best_levels(np.array([q]), np.array([fp]), np.array([fn]), TOP)
    assert e[0] == pytest.approx(fp - fn - q)
    assert (int(kp[0]), int(kn[0])) == (round(fp), round(fn))  # a stuck cell keeps its level


def test_cell_codes_and_the_code_table_agree_with_best_levels() -> None:
    stuck = np.array([np.nan, 0.0, 15.0, 6.6], np.float32)
    np.testing.assert_array_equal(cell_codes(stuck), [0, 1, 16, 8])
    table = code_table(TOP)
    assert table.shape == (TOP + 2, TOP + 2, 2 * TOP + 1) and not table.flags.writeable
    for a, b in [(0, 0), (0, 1), (16, 0), (3, 9), (16, 16)]:
        want = error_table(np.array([a]), np.array([b]), TOP)[0]
        np.testing.assert_array_equal(table[a, b], want)
    assert not table[0, 0].any()  # a healthy pair realises every q exactly


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0))
def test_stuck_codes_give_the_true_error_of_every_pair(seed: int, fractional: float) -> None:
    """On any stuck levels (whole, or between levels as measured conductances give), the error
    of two coded cells is best_levels' own; on whole levels the codes are cell_codes and the
    errors code_table's, bit for bit."""
    rng = np.random.default_rng(seed)
    shape = (2, 40)
    level = np.where(rng.random(shape) < fractional, rng.uniform(0, TOP, shape),
                     rng.integers(0, TOP + 1, shape))
    stuck = np.where(rng.random(shape) < 0.6, level, np.nan).astype(np.float32)
    sc = stuck_codes(stuck, TOP)
    q = rng.integers(-TOP, TOP + 1, shape[1])
    err = pair_error(sc, sc.codes[0], sc.codes[1], q + TOP)
    _, _, want = best_levels(q, stuck[0], stuck[1], TOP)
    np.testing.assert_array_equal(err, want**2)
    whole = np.isnan(stuck) | (stuck == np.rint(stuck))
    np.testing.assert_array_equal(sc.codes[whole], cell_codes(stuck)[whole])
    if whole.all():
        np.testing.assert_array_equal(err, code_table(TOP)[sc.codes[0], sc.codes[1], q + TOP])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 5), st.integers(1, 7))
def test_pair_cost_by_state_is_the_dense_sum(seed: int, n: int, m: int, places: int) -> None:
    rng = np.random.default_rng(seed)
    q = rng.integers(-TOP, TOP + 1, size=(n, m))
    w = rng.uniform(0, 2, size=(n, m))
    codes = np.where(rng.random((2, places, m)) < 0.4, rng.integers(1, TOP + 2, (2, places, m)), 0)
    got = pair_cost_by_state(q, w, codes[0], codes[1], whole_codes(codes, TOP))
    table = code_table(TOP)
    want = np.array([[sum(w[i, j] * table[codes[0, x, j], codes[1, x, j], q[i, j] + TOP]
                          for j in range(m)) for x in range(places)] for i in range(n)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


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
