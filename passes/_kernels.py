"""Compiled (numba) loops of the permutation moves: the objective of one block and its cost
matrices, summed over the cells that hold a stuck code only.

Every function reads the same inputs: ``levels`` and ``alone`` are those of
:class:`_objective.StuckCodes` (stuck level of every code; squared level error of a pair with one
stuck cell, for every q), ``top`` the highest level, ``qi`` int ``[n, m]`` is ``q + top`` (the
tables' q index), ``w`` float ``[n, m]`` the objective's weights, ``codes`` int ``[R, S]`` the
cell codes of the block's strip (0 = healthy). A pair with two healthy cells costs nothing, so
every loop skips to the stuck cells: work is proportional to stuck cells times the block's other
side. The error of a pair is :func:`_objective.pair_error`'s, the same numbers.
Imported on first use (numba's import costs a fraction of a second; commands that build
nothing never pay it). Compiled once per machine (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def pair_error(levels: np.ndarray, alone: np.ndarray, top: int, a: int, b: int, qi: int
               ) -> float:
    """Squared level error of the pair of codes ``a`` (``+``) / ``b`` (``-``) holding
    ``qi - top``."""
    if a != 0 and b != 0:
        d = (levels[a] - levels[b]) - float(qi - top)
        return d * d
    if b == 0:
        return alone[0, a, qi]
    return alone[1, b, qi]


@njit(cache=True, nogil=True)
def block_cost(levels: np.ndarray, alone: np.ndarray, top: int, qi: np.ndarray, w: np.ndarray,
               codes: np.ndarray, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """``sum_ij w[i, j] * E(codes[rows[i], pos[j]], codes[rows[i], neg[j]], qi[i, j])``."""
    n, m = qi.shape
    total = 0.0
    for i in range(n):
        r = rows[i]
        for j in range(m):
            a = codes[r, pos[j]]
            b = codes[r, neg[j]]
            if a != 0 or b != 0:
                total += w[i, j] * pair_error(levels, alone, top, a, b, qi[i, j])
    return total


@njit(cache=True, nogil=True)
def row_costs(levels: np.ndarray, alone: np.ndarray, top: int, qi: np.ndarray, w: np.ndarray,
              codes: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``cost[i, r]``: logical row ``i`` on physical row ``r``, columns fixed. ``[n, R]``."""
    n, m = qi.shape
    rr = codes.shape[0]
    cost = np.zeros((n, rr))
    for r in range(rr):
        for j in range(m):
            a = codes[r, pos[j]]
            b = codes[r, neg[j]]
            if a != 0 and b != 0:
                diff = levels[a] - levels[b]
                for i in range(n):
                    d = diff - float(qi[i, j] - top)
                    cost[i, r] += w[i, j] * (d * d)
            elif a != 0:
                for i in range(n):
                    cost[i, r] += w[i, j] * alone[0, a, qi[i, j]]
            elif b != 0:
                for i in range(n):
                    cost[i, r] += w[i, j] * alone[1, b, qi[i, j]]
    return cost


@njit(cache=True, nogil=True)
def pair_costs(levels: np.ndarray, alone: np.ndarray, top: int, qi: np.ndarray, w: np.ndarray,
               codes: np.ndarray, rows: np.ndarray, a: np.ndarray, b: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``fwd[j, p]`` / ``rev[j, p]``: output ``j`` on the pair ``(a[p], b[p])`` with ``+`` on
    ``a[p]`` / on ``b[p]``, rows fixed. ``[m, P]`` each."""
    n, m = qi.shape
    pairs = a.shape[0]
    fwd = np.zeros((m, pairs))
    rev = np.zeros((m, pairs))
    for p in range(pairs):
        for i in range(n):
            x = codes[rows[i], a[p]]
            y = codes[rows[i], b[p]]
            if x != 0 or y != 0:
                for j in range(m):
                    fwd[j, p] += w[i, j] * pair_error(levels, alone, top, x, y, qi[i, j])
                    rev[j, p] += w[i, j] * pair_error(levels, alone, top, y, x, qi[i, j])
    return fwd, rev


@njit(cache=True, nogil=True)
def side_costs(levels: np.ndarray, alone: np.ndarray, top: int, qi: np.ndarray, w: np.ndarray,
               codes: np.ndarray, rows: np.ndarray, fixed: np.ndarray, free: np.ndarray,
               move_is_pos: bool) -> np.ndarray:
    """``cost[j, k]``: output ``j``'s moving cell (``+`` if ``move_is_pos``) on column
    ``free[k]``, its other cell on ``fixed[j]``, rows fixed. ``[m, len(free)]``: the cost with a
    healthy moving cell, plus a correction on each row where the candidate column is stuck."""
    n, m = qi.shape
    nf = free.shape[0]
    base = np.zeros(m)
    for i in range(n):
        for j in range(m):
            f = codes[rows[i], fixed[j]]
            if f != 0:
                base[j] += w[i, j] * (alone[1, f, qi[i, j]] if move_is_pos
                                      else alone[0, f, qi[i, j]])
    cost = np.empty((m, nf))
    for k in range(nf):
        for j in range(m):
            cost[j, k] = base[j]
        for i in range(n):
            c = codes[rows[i], free[k]]
            if c != 0:
                for j in range(m):
                    f = codes[rows[i], fixed[j]]
                    q = qi[i, j]
                    if move_is_pos:
                        cost[j, k] += w[i, j] * (pair_error(levels, alone, top, c, f, q)
                                                 - alone[1, f, q])
                    else:
                        cost[j, k] += w[i, j] * (pair_error(levels, alone, top, f, c, q)
                                                 - alone[0, f, q])
    return cost


# The reference solver's cost matrices, compiled: the numbers of its numpy definitions
# (``_objective.pair_cost_by_state``, ``pair._side_costs_numpy``, ``BlockProblem.cost_numpy``)
# bit for bit, so its moves, ties and images are those of the numpy code. That needs numpy's
# order of summation: ``np.sum`` of a contiguous array is its pairwise sum (:func:`_pairwise`),
# ``np.add.reduceat`` of a segment (along either axis) is its first term plus the pairwise sum
# of the others, and ``sum(axis=0)`` adds one row at a time (of a single column: pairwise).


@njit(cache=True, nogil=True)
def _pairwise_block(a: np.ndarray, lo: int, n: int) -> float:
    """numpy's ``pairwise_sum`` of ``a[lo : lo + n]`` for ``n <= 128``: eight running sums."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        b = lo + i
        r0 += a[b]
        r1 += a[b + 1]
        r2 += a[b + 2]
        r3 += a[b + 3]
        r4 += a[b + 4]
        r5 += a[b + 5]
        r6 += a[b + 6]
        r7 += a[b + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True, nogil=True)
def _pairwise(a: np.ndarray, lo: int, n: int) -> float:
    """Sum of ``a[lo : lo + n]`` in numpy's order: blocks of at most 128 summed by
    :func:`_pairwise_block`, longer runs split in two (the first half a multiple of 8) and the
    halves added. Evaluated with an explicit stack (numba compiles no recursion here)."""
    if n <= 128:
        return _pairwise_block(a, lo, n)
    task_lo = np.empty(128, np.int64)
    task_n = np.empty(128, np.int64)  # -1: add the two values on top of the value stack
    values = np.empty(128)
    tasks = 1
    top = 0
    task_lo[0], task_n[0] = lo, n
    while tasks:
        tasks -= 1
        start, size = task_lo[tasks], task_n[tasks]
        if size < 0:
            top -= 1
            values[top - 1] = values[top - 1] + values[top]
        elif size <= 128:
            values[top] = _pairwise_block(a, start, size)
            top += 1
        else:
            half = size // 2
            half -= half % 8
            task_lo[tasks], task_n[tasks] = 0, -1
            task_lo[tasks + 1], task_n[tasks + 1] = start + half, size - half
            task_lo[tasks + 2], task_n[tasks + 2] = start, half
            tasks += 3
    return values[0]


@njit(cache=True, nogil=True)
def _segment_sum(a: np.ndarray, n: int) -> float:
    """``np.add.reduceat`` of one segment ``a[:n]`` (n >= 1)."""
    return a[0] + _pairwise(a, 1, n - 1)


@njit(cache=True, nogil=True)
def block_cost_ref(levels: np.ndarray, alone: np.ndarray, top: int, qi: np.ndarray,
                   w: np.ndarray, codes: np.ndarray, rows: np.ndarray, pos: np.ndarray,
                   neg: np.ndarray) -> float:
    """:func:`block_cost` summed in ``BlockProblem.cost_numpy``'s order."""
    n, m = qi.shape
    terms = np.zeros(n * m)
    for i in range(n):
        r = rows[i]
        for j in range(m):
            a = codes[r, pos[j]]
            b = codes[r, neg[j]]
            if a != 0 or b != 0:
                terms[i * m + j] = w[i, j] * pair_error(levels, alone, top, a, b, qi[i, j])
    return _pairwise(terms, 0, n * m)


@njit(cache=True, nogil=True)
def row_costs_ref(levels: np.ndarray, alone: np.ndarray, top: int, qi: np.ndarray,
                  w: np.ndarray, codes: np.ndarray, pos: np.ndarray, neg: np.ndarray
                  ) -> np.ndarray:
    """:func:`row_costs` summed in ``pair_cost_by_state``'s order."""
    n, m = qi.shape
    rr = codes.shape[0]
    cost = np.zeros((n, rr))
    terms = np.empty((n, m))  # [i, t]: the t-th stuck pair of the physical row
    for r in range(rr):
        t = 0
        for j in range(m):
            a = codes[r, pos[j]]
            b = codes[r, neg[j]]
            if a == 0 and b == 0:
                continue
            for i in range(n):
                terms[i, t] = w[i, j] * pair_error(levels, alone, top, a, b, qi[i, j])
            t += 1
        if t:
            for i in range(n):
                cost[i, r] = _segment_sum(terms[i], t)
    return cost


@njit(cache=True, nogil=True)
def pair_costs_ref(levels: np.ndarray, alone: np.ndarray, top: int, qi: np.ndarray,
                   w: np.ndarray, codes: np.ndarray, rows: np.ndarray, a: np.ndarray,
                   b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pair_costs` summed in ``pair_cost_by_state``'s order."""
    n, m = qi.shape
    pairs = a.shape[0]
    fwd = np.zeros((m, pairs))
    rev = np.zeros((m, pairs))
    tf = np.empty((m, n))  # [j, t]: the t-th row holding a stuck cell of the pair
    tr = np.empty((m, n))
    for p in range(pairs):
        t = 0
        for i in range(n):
            x = codes[rows[i], a[p]]
            y = codes[rows[i], b[p]]
            if x == 0 and y == 0:
                continue
            for j in range(m):
                tf[j, t] = w[i, j] * pair_error(levels, alone, top, x, y, qi[i, j])
                tr[j, t] = w[i, j] * pair_error(levels, alone, top, y, x, qi[i, j])
            t += 1
        if t:
            for j in range(m):
                fwd[j, p] = _segment_sum(tf[j], t)
                rev[j, p] = _segment_sum(tr[j], t)
    return fwd, rev


@njit(cache=True, nogil=True)
def side_costs_ref(levels: np.ndarray, alone: np.ndarray, top: int, qi: np.ndarray,
                   w: np.ndarray, codes: np.ndarray, rows: np.ndarray, fixed: np.ndarray,
                   free: np.ndarray, move_is_pos: bool) -> np.ndarray:
    """:func:`side_costs` summed in ``pair._side_costs_numpy``'s order: the healthy cost down
    the rows, then each candidate column's corrections down its stuck rows, added to it."""
    n, m = qi.shape
    nf = free.shape[0]
    healthy = np.empty((n, m))
    terms = np.empty((m, n))  # w * healthy, one output per row
    for i in range(n):
        for j in range(m):
            f = codes[rows[i], fixed[j]]
            healthy[i, j] = alone[1, f, qi[i, j]] if move_is_pos else alone[0, f, qi[i, j]]
            terms[j, i] = w[i, j] * healthy[i, j]
    base = np.zeros(m)
    for j in range(m):  # numpy's sum down a single column is a pairwise sum
        if m == 1:
            base[j] = _pairwise(terms[j], 0, n)
        else:
            for i in range(n):
                base[j] += terms[j, i]
    cost = np.empty((m, nf))
    deltas = np.empty((m, n))  # per output, the correction of each stuck row of the candidate
    for k in range(nf):
        t = 0
        for i in range(n):
            c = codes[rows[i], free[k]]
            if c == 0:
                continue
            for j in range(m):
                f = codes[rows[i], fixed[j]]
                e = (pair_error(levels, alone, top, c, f, qi[i, j]) if move_is_pos
                     else pair_error(levels, alone, top, f, c, qi[i, j]))
                deltas[j, t] = w[i, j] * (e - healthy[i, j])
            t += 1
        for j in range(m):
            cost[j, k] = base[j] if t == 0 else base[j] + _segment_sum(deltas[j], t)
    return cost


@njit(cache=True, nogil=True)
def compensate_levels(lv: np.ndarray, q: np.ndarray, stuck: np.ndarray, rows: np.ndarray,
                      pos: np.ndarray, neg: np.ndarray, top: int) -> None:
    """Write into ``lv`` (uint8 ``[R, C]``) the levels of :func:`_objective.best_levels` for
    block weights ``q`` on the pairs ``(rows[i], pos[j] / neg[j])`` of a tile whose stuck levels
    are ``stuck`` (NaN = healthy); the same numbers, element by element."""
    n, m = q.shape
    for i in range(n):
        r = rows[i]
        for j in range(m):
            sp = stuck[r, pos[j]]
            sn = stuck[r, neg[j]]
            qq = float(q[i, j])
            hp = np.isnan(sp)
            hn = np.isnan(sn)
            fp = 0.0 if hp else float(sp)
            fn = 0.0 if hn else float(sn)
            if hp:
                kp = max(qq, 0.0) if hn else min(max(np.rint(qq + fn), 0.0), float(top))
            else:
                kp = np.rint(fp)
            if hn:
                kn = max(-qq, 0.0) if hp else min(max(np.rint(fp - qq), 0.0), float(top))
            else:
                kn = np.rint(fn)
            lv[r, pos[j]] = np.uint8(kp)
            lv[r, neg[j]] = np.uint8(kn)


@njit(cache=True, nogil=True)
def realised_differences(levels: np.ndarray, stuck: np.ndarray, rows: np.ndarray,
                         pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``D[i, j]``: level difference the pair ``(rows[i], pos[j] / neg[j])`` really holds
    (programmed level, or the stuck level of a stuck cell). float64 ``[n, m]``."""
    n, m = rows.shape[0], pos.shape[0]
    d = np.empty((n, m))
    for i in range(n):
        r = rows[i]
        for j in range(m):
            a = stuck[r, pos[j]]
            b = stuck[r, neg[j]]
            x = float(levels[r, pos[j]]) if np.isnan(a) else float(a)
            y = float(levels[r, neg[j]]) if np.isnan(b) else float(b)
            d[i, j] = x - y
    return d
