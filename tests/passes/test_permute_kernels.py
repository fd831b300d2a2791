"""permute and pair: the compiled assignment and cost loops against their definitions, and the
reference fallback never leaving a block worse than the reference solver alone."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes import _kernels as k
from rcompile.passes._objective import cell_codes, pair_cost_by_state, stuck_codes
from rcompile.passes.pair import BlockProblem, _side_costs_numpy
from rcompile.passes.permute import solve_block

from rcompile import api
from rcompile import faultmap as fmap
from rcompile.device import Cell
from rcompile.image.container import write as write_image
from rcompile.solvers import assign_from

TOP = 15


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 3), st.integers(0, 10_000), st.booleans())
def test_warm_assignment_matches_brute_force(n: int, extra: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    m = n + extra
    cost = rng.integers(0, 3, (n, m)).astype(float) if ties else rng.uniform(0, 100, (n, m))
    start = np.where(rng.random(n) < 0.7, rng.permutation(m)[:n], -1)
    got = assign_from(cost, start)
    assert len(set(got.tolist())) == n and got.max() < m
    best = min(sum(cost[i, p[i]] for i in range(n))
               for p in itertools.permutations(range(m), n))
    assert cost[np.arange(n), got].sum() == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_warm_start_keeps_an_optimal_start() -> None:
    cost = np.ones((4, 6))
    cost[np.arange(4), [5, 3, 1, 0]] = 0.0
    assert assign_from(cost, np.array([5, 3, 1, 0])).tolist() == [5, 3, 1, 0]


def _block(seed: int, rate: float, fractional: bool = False) -> BlockProblem:
    """A 12 x 5 block on a 16 x 14 strip; with ``fractional``, stuck cells read levels between
    whole ones (as a measured conductance gives) half of the time."""
    rng = np.random.default_rng(seed)
    n, m, rows, cols = 12, 5, 16, 14
    stuck = fmap.synth(1, rows, cols, rate, (1, 1), seed).stuck_levels(Cell())[0]
    if fractional:
        stuck = np.where(rng.random(stuck.shape) < 0.5, rng.uniform(0, TOP, stuck.shape), stuck)
        stuck = np.where(np.isnan(stuck), np.nan, stuck).astype(np.float32)
    return BlockProblem(q=rng.integers(-TOP, TOP + 1, size=(n, m)),
                        w=rng.uniform(0.1, 2.0, (n, m)),
                        codes=cell_codes(stuck), top=TOP, cols=np.arange(cols),
                        cells=stuck_codes(stuck, TOP))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.6), st.booleans())
def test_compiled_cost_loops_equal_the_numpy_definitions(seed: int, rate: float,
                                                         fractional: bool) -> None:
    bp = _block(seed, rate, fractional)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(16)[:12].astype(np.int32)
    perm = rng.permutation(14).astype(np.int32)
    pos, neg = perm[:5], perm[5:10]
    assert bp.cost(rows, pos, neg) == pytest.approx(bp.cost_numpy(rows, pos, neg), abs=1e-9)
    codes = bp.sc.codes
    got = k.row_costs(*bp.kernel_args(), pos, neg)
    want = pair_cost_by_state(bp.q, bp.w, codes[:, pos], codes[:, neg], bp.sc)
    np.testing.assert_allclose(got, want, atol=1e-9)
    fwd, rev = k.pair_costs(*bp.kernel_args(), rows, pos, neg)
    sub = codes[rows]
    np.testing.assert_allclose(fwd, pair_cost_by_state(bp.q.T, bp.w.T, sub[:, pos].T,
                                                       sub[:, neg].T, bp.sc), atol=1e-9)
    np.testing.assert_allclose(rev, pair_cost_by_state(bp.q.T, bp.w.T, sub[:, neg].T,
                                                       sub[:, pos].T, bp.sc), atol=1e-9)
    free = np.setdiff1d(np.arange(14), neg).astype(np.int32)
    for side in (True, False):
        np.testing.assert_allclose(
            k.side_costs(*bp.kernel_args(), rows, neg, free, side),
            _side_costs_numpy(bp, rows, neg, free, side), atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.6))
def test_both_solvers_never_worsen_a_block(seed: int, rate: float) -> None:
    bp = _block(seed, rate)
    begin = (np.arange(12), np.arange(0, 10, 2), np.arange(1, 10, 2))
    restarts = [replace(bp, restart=k, seed=seed) for k in (1, 2, 3)]
    for problem in (bp, replace(bp, reference=True), *restarts):
        rows, pos, neg, start, cost, hit = solve_block(problem, *begin, 6, True)
        assert not hit and cost <= start + 1e-12
        assert len(set(rows.tolist())) == 12
        assert len(set(pos.tolist()) | set(neg.tolist())) == 10


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(0, 3), st.integers(0, 10_000), st.integers(1, 3))
def test_restart_moves_are_exact(n: int, extra: int, seed: int, restart: int) -> None:
    """A restart's move (from scratch, its places shuffled from restart 2 on) is still an
    optimal assignment, whatever the start."""
    rng = np.random.default_rng(seed)
    m = n + extra
    cost = rng.integers(0, 3, (n, m)).astype(float)  # many ties
    bp = replace(_block(seed, 0.2), restart=restart, seed=seed)
    got = bp.solve(cost, rng.permutation(m)[:n])
    assert len(set(got.tolist())) == n and 0 <= got.min() and got.max() < m
    best = min(sum(cost[i, p[i]] for i in range(n))
               for p in itertools.permutations(range(m), n))
    assert cost[np.arange(n), got].sum() == best


SK_MLP = Path(__file__).parents[1] / "data" / "compat" / "sk_mlp_classifier-skl2onnx13-dynamic.onnx"


@pytest.mark.parametrize("graph", ["tiny", "sk_mlp"])
def test_restarts_keep_the_cheapest_search(tiny_model: str, tmp_path: Path, graph: str) -> None:
    """``restarts`` never ends a chip above the warm search alone, writes the same bytes twice,
    and at this fault rate finds a cheaper mapping somewhere: on a graph built here and on
    skl2onnx's export of an sklearn MLP."""
    path = tiny_model if graph == "tiny" else str(SK_MLP)
    plan, _ = api.make_plan(path, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.1, (5, 1), 3)  # restarts reach 0 here
    costs = {}
    for spec in ("permute{reference=false}", "permute{reference=false,restarts=3}"):
        written = []
        for run in range(2):
            res = api.build(plan, fm, pipeline=f"place{{order=assign}},{spec},program")
            write_image(res.image, tmp_path / f"{run}.rimg")
            written.append((tmp_path / f"{run}.rimg").read_bytes())
        assert written[0] == written[1]
        costs[spec] = next(e for e in res.log if e["pass"] == "permute")["cost_after"]
    warm, restarted = costs.values()
    assert restarted < warm


def test_permute_reference_fallback_is_never_worse(tiny_model: str) -> None:
    """The default ``permute`` ends every block at or below the reference solver alone."""
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.3, (5, 1), 3)
    log = {}
    for spec in ("permute", "permute{reference=false}"):
        res = api.build(plan, fm, pipeline=f"place{{order=assign}},{spec},program")
        log[spec] = next(e for e in res.log if e["pass"] == "permute")
    both, fast = log["permute"], log["permute{reference=false}"]
    assert both["reference_solved"] > 0
    assert both["cost_after"] <= fast["cost_after"] + 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.9), st.booleans(), st.integers(1, 40),
       st.integers(1, 24))
def test_reference_cost_loops_are_the_numpy_definitions_bit_for_bit(
        seed: int, rate: float, fractional: bool, n: int, m: int) -> None:
    """The reference solver's compiled loops sum in numpy's order: same floats, same moves."""
    rng = np.random.default_rng(seed)
    lines, strip = n + int(rng.integers(0, 4)), 2 * m + int(rng.integers(0, 4))
    level = np.where(rng.random((lines, strip)) < 0.5, rng.choice([0.0, TOP], (lines, strip)),
                     rng.uniform(0, TOP, (lines, strip)) if fractional
                     else rng.integers(0, TOP + 1, (lines, strip)))
    stuck = np.where(rng.random((lines, strip)) < rate, level, np.nan).astype(np.float32)
    bp = BlockProblem(q=rng.integers(-TOP, TOP + 1, (n, m)), w=rng.uniform(0, 2, (n, m)),
                      codes=cell_codes(stuck), top=TOP, cols=np.arange(strip),
                      cells=stuck_codes(stuck, TOP))
    rows = rng.permutation(lines)[:n].astype(np.int32)
    perm = rng.permutation(strip).astype(np.int32)
    pos, neg = perm[:m], perm[m : 2 * m]
    codes, sub = bp.sc.codes, bp.sc.codes[rows]
    assert k.block_cost_ref(*bp.kernel_args(), rows, pos, neg) == bp.cost_numpy(rows, pos, neg)
    np.testing.assert_array_equal(
        k.row_costs_ref(*bp.kernel_args(), pos, neg),
        pair_cost_by_state(bp.q, bp.w, codes[:, pos], codes[:, neg], bp.sc))
    fwd, rev = k.pair_costs_ref(*bp.kernel_args(), rows, pos, neg)
    np.testing.assert_array_equal(fwd, pair_cost_by_state(bp.q.T, bp.w.T, sub[:, pos].T,
                                                          sub[:, neg].T, bp.sc))
    np.testing.assert_array_equal(rev, pair_cost_by_state(bp.q.T, bp.w.T, sub[:, neg].T,
                                                          sub[:, pos].T, bp.sc))
    free = np.setdiff1d(np.arange(strip), neg).astype(np.int32)
    for side in (True, False):
        np.testing.assert_array_equal(k.side_costs_ref(*bp.kernel_args(), rows, neg, free, side),
                                      _side_costs_numpy(bp, rows, neg, free, side))
