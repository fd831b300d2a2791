"""Thin, checked wrappers around the assignment solvers: numpy costs in, numpy permutations out.

:func:`assign` and :func:`assign_sparse` call OR-Tools on integer costs; :func:`assign_from`
calls the compiled shortest-augmenting-path solver of :mod:`rcompile.lsap` on float costs,
warm-started from a current assignment (the per-chip permutation moves, which are many, small
and start next to their optimum).
"""

from __future__ import annotations

import contextlib
import contextvars
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np
from ortools.graph.python import linear_sum_assignment

from rcompile import interrupts
from rcompile.errors import SolverError

T = TypeVar("T")

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


def assign_from(cost: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of every row of ``cost`` [n, m] (n <= m, finite, >= 0) to a
    distinct column, exact on float64, warm-started from ``start`` (int ``[n]``: the current
    column of each row, -1 for none). Rows whose start column is already a cheapest column of
    theirs keep it when that is consistent with an optimum. Returns int32 ``[n]``.
    """
    n, m = cost.shape
    if n > m:
        raise SolverError(f"assignment of {n} items to {m} places is infeasible")
    if len(start) != n:
        raise SolverError(f"assignment start has {len(start)} entries for {n} items")
    if n == 0:
        return np.zeros(0, np.int32)
    from rcompile.lsap import assign_warm

    return assign_warm(np.ascontiguousarray(cost, np.float64),  # type: ignore[no-any-return]
                       np.asarray(start, np.int64))


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
    """Worker processes a per-chip pass may use: 1 inside :func:`serial`, else
    ``RCOMPILE_JOBS`` if set, else every core this process may run on.

    Parallelism never changes a result: work is split into independent blocks whose answers
    are put back in order.
    """
    forced = _JOBS.get()
    if forced is not None:
        return forced
    raw = os.environ.get("RCOMPILE_JOBS", "").strip()
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Using every core inside one per-chip pass
# --------------------------------------------------------------------------------------------

_JOBS: contextvars.ContextVar[int | None] = contextvars.ContextVar("rcompile_jobs", default=None)
_SHARED: dict[str, Any] = {}
"""What :func:`fork_map` hands its forked workers (set just before the fork)."""


@contextlib.contextmanager
def limited(n: int) -> Iterator[None]:
    """Run per-chip passes on at most ``n`` worker processes (``n`` = 0: :func:`jobs`'s
    default, ``RCOMPILE_JOBS`` or every core)."""
    token = _JOBS.set(n if n >= 1 else None)
    try:
        yield
    finally:
        _JOBS.reset(token)


def serial() -> contextlib.AbstractContextManager[None]:
    """Run per-chip passes on this thread only (for callers that parallelise over chips)."""
    return limited(1)


def fork_map(fn: Callable[[Any, list[int]], list[T]], shared: Any, items: list[int],
             min_items: int = 16) -> list[T]:
    """``[r for chunk in chunks(items) for r in fn(shared, chunk)]``, the chunks spread over
    :func:`jobs` forked worker processes when there are at least ``min_items`` items.

    ``shared`` reaches the workers by ``fork`` (copy-on-write, never pickled); only the results
    travel back, in order, so the answer is the same for any number of workers. Without
    ``fork`` (not Linux), inside :func:`serial`, or in a daemonic worker, everything runs here.
    """
    n = jobs()
    if (n <= 1 or len(items) < max(min_items, 2) or "fork" not in mp.get_all_start_methods()
            or mp.current_process().daemon):  # a daemonic pool worker may not have children
        return fn(shared, items)
    size = max(1, -(-len(items) // (n * 8)))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    _SHARED["work"] = (fn, shared)
    pool = ProcessPoolExecutor(max_workers=min(n, len(chunks)), mp_context=mp.get_context("fork"),
                               initializer=interrupts.worker_started, initargs=(os.getpid(),))
    try:
        with interrupts.deferred():  # the workers are forked here
            results = pool.map(_run_shared, chunks)
        parts = list(results)
    except BaseException:  # interrupted: no block goes on solving in the background
        interrupts.kill_pool(pool)
        raise
    finally:
        pool.shutdown()
        _SHARED.clear()
    return [r for part in parts for r in part]


def _run_shared(chunk: list[int]) -> list[Any]:
    fn, shared = _SHARED["work"]
    with serial():
        return fn(shared, chunk)  # type: ignore[no-any-return]
