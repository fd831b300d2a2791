"""Exact rectangular linear assignment by shortest augmenting paths, compiled with numba.

The algorithm is the one of Crouse, "On implementing 2D rectangular assignment algorithms"
(IEEE TAES 2016), which SciPy's ``linear_sum_assignment`` also implements: rows are added one at
a time, each by a Dijkstra search over reduced costs ``c[i, j] - u[i] - v[j]`` to the nearest
unassigned column, after which the duals are updated and the path flipped. It is exact on
float64 costs (no integer scaling).

Warm start: ``u[i] = min_j c[i, j]`` and ``v = 0`` are feasible duals, and any row whose start
column attains its row minimum may keep it (its arc is tight); then any other row may take its
first cheapest column when nobody holds it. Only the remaining rows are augmented. The per-chip
passes start every move from the current mapping, where nearly every row already sits at a
zero-cost place, so a move costs a few short searches instead of a full solve. Which optimum is
returned among equal ones depends on the start; it is deterministic.

Invariants kept throughout (the conditions of the algorithm's optimality proof): every reduced
cost of an assigned row is >= 0 (up to rounding), assigned arcs have reduced cost 0, and the
dual ``v`` of a column nobody holds stays 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def assign_warm(cost: np.ndarray, start: np.ndarray) -> np.ndarray:  # pragma: no cover - jit
    """Minimum-cost assignment of every row of ``cost`` [n, m] (n <= m, finite) to a distinct
    column, warm-started from ``start`` int ``[n]`` (a column per row, or -1). Returns int32
    ``[n]``, the column of each row."""
    n, m = cost.shape
    u = np.empty(n)
    for i in range(n):
        u[i] = cost[i].min() if m else 0.0
    v = np.zeros(m)
    col4row = np.full(n, -1, np.int64)
    row4col = np.full(m, -1, np.int64)
    for i in range(n):  # rows whose start column is one of their cheapest keep it
        j = start[i]
        if 0 <= j < m and row4col[j] == -1 and cost[i, j] <= u[i]:
            col4row[i] = j
            row4col[j] = i
    for i in range(n):  # any other row takes its first cheapest column if nobody holds it
        if col4row[i] == -1:
            j = np.argmin(cost[i])
            if row4col[j] == -1:
                col4row[i] = j
                row4col[j] = i
    dist = np.empty(m)
    path = np.empty(m, np.int64)
    remaining = np.empty(m, np.int64)
    in_rows = np.zeros(n, np.bool_)
    in_cols = np.zeros(m, np.bool_)
    for cur in range(n):
        if col4row[cur] != -1:
            continue
        dist[:] = np.inf
        path[:] = -1
        in_rows[:] = False
        in_cols[:] = False
        for j in range(m):
            remaining[j] = m - 1 - j
        left = m
        low = 0.0
        i = cur
        sink = -1
        while sink == -1:
            in_rows[i] = True
            index = -1
            lowest = np.inf
            base = low - u[i]
            for it in range(left):
                j = remaining[it]
                r = base + cost[i, j] - v[j]
                if r < dist[j]:
                    path[j] = i
                    dist[j] = r
                d = dist[j]
                if d < lowest or (d == lowest and row4col[j] == -1):
                    lowest = d
                    index = it
            low = lowest
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            in_cols[j] = True
            left -= 1
            remaining[index] = remaining[left]
        u[cur] += low
        for i in range(n):
            if in_rows[i] and i != cur:
                u[i] += low - dist[col4row[i]]
        for j in range(m):
            if in_cols[j]:
                v[j] -= low - dist[j]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            nxt = col4row[i]
            col4row[i] = j
            j = nxt
            if i == cur:
                break
    return col4row.astype(np.int32)
