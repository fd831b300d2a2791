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
