"""The OR-Tools wrappers (``rcompile/solvers.py``): exact assignments and order-keeping forks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcompile import solvers
from rcompile.errors import SolverError
from rcompile.solvers import assign, assign_sparse


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


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.integers(0, 6), st.integers(0, 10_000), st.floats(0.0, 0.8))
def test_sparse_assignment_keeps_the_dense_optimum(n: int, extra: int, seed: int, drop: float
                                                   ) -> None:
    """Over any arc set holding a dense optimum, the sparse solve has the dense optimal cost."""
    rng = np.random.default_rng(seed)
    m = n + extra
    cost = rng.uniform(0, 100, size=(n, m))
    best = assign(cost)
    keep = rng.random((n, m)) >= drop
    keep[np.arange(n), best] = True
    left, right = np.nonzero(keep)
    got = assign_sparse(n, m, left, right, cost[left, right], float(cost.max()))
    assert len(set(got.tolist())) == n and keep[np.arange(n), got].all()
    assert cost[np.arange(n), got].sum() == pytest.approx(cost[np.arange(n), best].sum(), rel=1e-6)


def test_assignment_edge_cases() -> None:
    with pytest.raises(SolverError, match="3 items to 2 places"):
        assign(np.ones((3, 2)))
    with pytest.raises(SolverError, match="3 items to 2 places"):
        assign_sparse(3, 2, np.zeros(1), np.zeros(1), np.ones(1), 1.0)
    assert assign(np.zeros((0, 4))).shape == (0,)
    assert sorted(assign(np.zeros((3, 3))).tolist()) == [0, 1, 2]  # all ties: still a bijection


def test_integer_costs_map_the_largest_cost_to_the_safe_range() -> None:
    cost = np.array([[0.0, 1.0], [0.5, 2.0]])
    ic = solvers.integer_costs(cost)
    assert ic.dtype == np.int64 and ic.max() == 2**40 and ic[1, 0] == 2**38
    assert not solvers.integer_costs(np.zeros((2, 2))).any()
    assert solvers.int_range(1448) == 2**40  # unchanged up to 1448 nodes per side
    n = 45_000
    assert solvers.int_range(n) * 3 * n**2 < 2**63 and solvers.int_range(n) >= 2**30


def _squares(offset: int, items: list[int]) -> list[int]:
    return [offset + i * i for i in items]


def test_fork_map_keeps_order_for_any_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(40))
    want = [7 + i * i for i in items]
    with solvers.serial():
        assert solvers.jobs() == 1
        assert solvers.fork_map(_squares, 7, items) == want
    monkeypatch.setenv("RCOMPILE_JOBS", "2")
    assert solvers.jobs() == 2
    assert solvers.fork_map(_squares, 7, items, min_items=2) == want
