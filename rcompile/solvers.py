"""Thin, checked wrappers around OR-Tools: numpy costs in, numpy permutations out."""

from __future__ import annotations

import numpy as np
from ortools.graph.python import linear_sum_assignment

from rcompile.errors import SolverError

_INT_RANGE = float(2**40)


def integer_costs(cost: np.ndarray) -> np.ndarray:
    """Scale non-negative float costs to int64 so their largest entry is 2**40."""
    top = float(cost.max()) if cost.size else 0.0
    if top <= 0.0:
        return np.zeros(cost.shape, np.int64)
    return np.rint(cost * (_INT_RANGE / top)).astype(np.int64)


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
    icost[:n] = integer_costs(np.asarray(cost, np.float64))
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    left, right = np.divmod(np.arange(m * m), m)
    solver.add_arcs_with_cost(left, right, icost.ravel())
    status = solver.solve()
    if status != solver.OPTIMAL:
        raise SolverError(f"linear assignment {n}x{m} failed with status {status}")
    return np.fromiter((solver.right_mate(i) for i in range(n)), np.int32, n)
