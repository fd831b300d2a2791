"""The input-covariance objective of one layer's outputs, and its coordinate descent.

The diagonal objective of ``_objective`` weighs each weight's error alone by ``E[x_i^2]``. An
output's error is ``s_j * sum_i x_i e_ij``, so its expected square is ``s_j^2 e_j^T M e_j``
with ``M = E[x x^T]``; after the bias calibration removes the mean error, ``M`` is the input
covariance. Correlated inputs let the error of a stuck pair be cancelled by its neighbours:
a healthy pair in a correlated row is programmed off its target so the output comes out
closer. With only a few hundred calibration samples ``M`` is singular, so it is shrunk
towards its diagonal (``shrink = 1`` is the diagonal objective, where every weight's best
level is its own).

Each pair can realise ``D = off + t`` for an integer ``t`` in ``[tlo, thi]`` (a healthy pair
any level difference, a pair with one stuck cell the levels of its healthy partner, a pair
with two stuck cells one value). Coordinate descent moves one weight at a time to its exact
best realisable value given the others, so the objective never increases.
Compiled with numba (``cache=True``), imported on first use.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def shrunk_moment(moment: np.ndarray, mean: np.ndarray, center: bool, shrink: float
                  ) -> np.ndarray:
    """``(1 - shrink) * M + shrink * diag(M)`` of ``M = E[x x^T]`` (minus ``E[x] E[x]^T``
    with ``center``), float64 ``[n, n]``."""
    m = moment - np.outer(mean, mean) if center else moment.copy()
    diag = np.diag(m).copy()
    m *= 1.0 - shrink
    m[np.diag_indices_from(m)] = diag
    return np.ascontiguousarray(m)


def realisable(sp: np.ndarray, sn: np.ndarray, top: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``off``, ``tlo``, ``thi`` of every pair from its stuck levels (NaN = healthy): the pair
    realises ``off + t`` for the integers ``tlo <= t <= thi``."""
    hp, hn = np.isnan(sp), np.isnan(sn)
    fp, fn = np.nan_to_num(sp), np.nan_to_num(sn)
    off = np.where(hp, 0.0, fp) - np.where(hn, 0.0, fn)
    tlo = np.where(hp & hn, -top, np.where(hp, 0, np.where(hn, -top, 0)))
    thi = np.where(hp & hn, top, np.where(hp, top, 0))
    return off, tlo.astype(np.int64), thi.astype(np.int64)


def pair_levels(t: np.ndarray, sp: np.ndarray, sn: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Target levels of the ``+`` and ``-`` cells that realise ``off + t`` (lowest common mode
    for a healthy pair; a stuck cell keeps its stuck level)."""
    hp, hn = np.isnan(sp), np.isnan(sn)
    kp = np.where(hp, np.where(hn, np.maximum(t, 0), t), np.rint(np.nan_to_num(sp)))
    kn = np.where(hn, np.where(hp, np.maximum(-t, 0), -t), np.rint(np.nan_to_num(sn)))
    return kp.astype(np.uint8), kn.astype(np.uint8)


def column_costs(sigma: np.ndarray, err: np.ndarray) -> np.ndarray:
    """``e_j^T sigma e_j`` of every column of ``err`` ``[n, m]``."""
    return np.einsum("ij,ij->j", err, sigma @ err)


@njit(cache=True, nogil=True)
def descend(sigma: np.ndarray, d: np.ndarray, g: np.ndarray, off: np.ndarray,
            tlo: np.ndarray, thi: np.ndarray, sweeps: int) -> tuple[np.ndarray, int]:
    """Coordinate descent on ``sum_j (d_j - q_j)^T sigma (d_j - q_j)`` over ``d = off + t``.

    One output per row (``[m, n]``, transposed so that each output's problem, independent of
    the others, is contiguous): ``d`` (realisable) is updated in place and returned with the
    number of weights moved; ``g = (d - q) @ sigma`` (half the gradient) is kept up to date in
    place. Each move sets one weight to the exact minimiser of the objective in that coordinate
    (the realisable value nearest to the unconstrained one); an output stops after a sweep that
    moves nothing.
    """
    m, n = d.shape
    moved = 0
    for j in range(m):
        dj, gj, oj, lo, hi = d[j], g[j], off[j], tlo[j], thi[j]
        for _ in range(sweeps):
            changed = 0
            for i in range(n):
                sii = sigma[i, i]
                if lo[i] == hi[i] or sii <= 0.0:
                    continue
                t = min(max(np.rint(dj[i] - gj[i] / sii - oj[i]), lo[i]), hi[i])
                delta = oj[i] + t - dj[i]
                if delta != 0.0:
                    dj[i] += delta
                    row = sigma[i]
                    for k in range(n):
                        gj[k] += row[k] * delta
                    changed += 1
            moved += changed
            if changed == 0:
                break
    return d, moved
