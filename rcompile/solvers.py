"""Thin, checked wrappers around OR-Tools: numpy costs in, numpy permutations out."""

from __future__ import annotations

import os

import numpy as np
from ortools.graph.python import linear_sum_assignment

from rcompile.errors import SolverError

_INT_RANGE = float(2**40)
#: OR-Tools' cost-scaling assignment refuses (``POSSIBLE_OVERFLOW``) once the largest integer
#: cost times ``3 n^2`` (n nodes per side) nears ``2**63``. Up to ``n = 1448`` the historical
#: range ``2**40`` is safe and kept (same integer costs, same solutions); above it the range
#: shrinks to ``2**61 / n^2`` (still >= 2**30 for 45,000 nodes).
_SAFE_PRODUCT = float(2**61)


def int_range(n: int) -> float:
    """Largest integer cost an assignment with ``n`` nodes per side is given."""
    return min(_INT_RANGE, _SAFE_PRODUCT / float(max(n, 1)) ** 2)


def integer_costs(cost: np.ndarray, top: float | None = None, n: int = 0) -> np.ndarray:
    """Scale non-negative float costs to int64 so that ``top`` (default: their largest entry)
    becomes :func:`int_range` of ``n`` (``2**40`` for problems of up to 1448 nodes per side)."""
    if top is None:
        top = float(cost.max()) if cost.size else 0.0
    if top <= 0.0:
        return np.zeros(cost.shape, np.int64)
    return np.rint(cost * (int_range(n) / top)).astype(np.int64)


def assign(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of every row of ``cost`` [n, m] (n <= m) to a distinct column.

    Solved exactly with OR-Tools ``SimpleLinearSumAssignment`` on integer costs (see
    :func:`integer_costs`); a rectangular problem is padded with zero-cost dummy rows.
    Returns int32 ``[n]``: the column of each row.
    """
    n, m = cost.shape
    if n > m:
        raise SolverError(f"assignment of {n} items to {m} places is infeasible")
    if n == 0:
        return np.zeros(0, np.int32)
    icost = np.zeros((m, m), np.int64)
    icost[:n] = integer_costs(np.asarray(cost, np.float64), n=m)
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    left, right = _square_arcs(m)
    solver.add_arcs_with_cost(left, right, icost.ravel())
    return _solve(solver, n, f"linear assignment {n}x{m}")


def assign_sparse(
    n: int, m: int, left: np.ndarray, right: np.ndarray, cost: np.ndarray, top: float
) -> np.ndarray:
    """Minimum-cost assignment of rows ``0..n-1`` to distinct columns ``0..m-1`` over the given
    arcs only (``left[k] -> right[k]`` costs ``cost[k]``; ``top`` is the largest cost of the
    whole problem the arcs were taken from, so integer costs match :func:`assign`'s).

    The caller guarantees that the arcs contain an optimal assignment of the dense problem;
    rows ``n..m-1`` are zero-cost dummies joined to every column. Returns int32 ``[n]``.
    """
    if n > m:
        raise SolverError(f"assignment of {n} items to {m} places is infeasible")
    if n == 0:
        return np.zeros(0, np.int32)
    dl, dr = np.divmod(np.arange((m - n) * m, dtype=np.int64), m)
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    solver.add_arcs_with_cost(
        np.concatenate([np.asarray(left, np.int64), dl + n]),
        np.concatenate([np.asarray(right, np.int64), dr]),
        np.concatenate([integer_costs(np.asarray(cost, np.float64), top, m),
                        np.zeros(len(dl), np.int64)]),
    )
    return _solve(solver, n, f"sparse linear assignment {n}x{m} ({len(left)} arcs)")


_ARCS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _square_arcs(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Tail and head of every arc of the complete ``m x m`` bipartite graph (cached)."""
    arcs = _ARCS.get(m)
    if arcs is None:
        arcs = np.divmod(np.arange(m * m), m)
        if m <= 512:
            _ARCS[m] = arcs
    return arcs


def _solve(solver: linear_sum_assignment.SimpleLinearSumAssignment, n: int, what: str
           ) -> np.ndarray:
    status = solver.solve()
    if status != solver.OPTIMAL:
        raise SolverError(f"{what} failed with status {status}")
    return np.fromiter((solver.right_mate(i) for i in range(n)), np.int32, n)


def jobs() -> int:
    """Worker processes a per-chip pass may use: ``RCOMPILE_JOBS`` (default: every core).

    Parallelism never changes a result: work is split into independent blocks whose answers
    are put back in order. ``rcompile provision`` sets it to 1 in its own workers, which
    already keep every core busy with one chip each.
    """
    raw = os.environ.get("RCOMPILE_JOBS", "")
    try:
        n = int(raw) if raw.strip() else 0
    except ValueError:
        n = 0
    return n if n >= 1 else max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                else (os.cpu_count() or 1))
