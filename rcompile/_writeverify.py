"""Compiled (numba) steps of the write-verify loop of :func:`rcompile.programming.program_tiles`.

One iteration of write-verify over the cells still being written is two fused passes, each one
loop over those cells instead of a dozen whole-array NumPy operations and the copies that
compact the arrays: :func:`verify_pass` reads every cell (its read-noise draw given), accepts
the ones within tolerance and compacts the rest; :func:`write_pass` applies one write step to
every remaining cell (its cycle-to-cycle draw given). The random draws stay with NumPy's
generators (drawn by the caller, group by group, exactly as many as before), and every
operation is the float32 operation NumPy performs on the arrays, in the same order: the
result is the same bytes. The one transcendental, ``exp(-n / A)`` of a whole pulse count
``n``, comes from a table NumPy itself computed (:func:`exp_table`), so it is NumPy's
``exp`` to the bit.

Imported on first use (numba's import costs a fraction of a second; small programming jobs
never pay it). Compiled once per machine (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


def exp_table(a: float, sign: float, size: int) -> np.ndarray:
    """float32 ``exp((sign * n) * (-1 / a))`` for ``n = 0 .. size - 1``, computed by NumPy on
    float32 exactly as :meth:`rcompile.programming._Curve.after` computes it."""
    n = np.arange(size, dtype=np.float32)
    if sign < 0:
        n = -n
    return np.exp(n * (-1.0 / a))


@njit(cache=True, nogil=True)
def verify_pass(idx: np.ndarray, ga: np.ndarray, ta: np.ndarray, err: np.ndarray,
                z: np.ndarray, noisy: bool, rel: np.float32, tol: np.float32,
                g: np.ndarray, count: int) -> int:
    """Verify the first ``count`` active cells: ``err = ta - ga`` (minus ``ga * rel * z``, the
    read noise, when ``noisy``); a cell with ``|err| <= tol`` is accepted (``g[idx] = ga``),
    the others are moved to the front of ``idx``, ``ga``, ``ta`` with their ``err``, in order.
    Returns how many remain."""
    k = 0
    for i in range(count):
        gi = ga[i]
        e = ta[i] - gi
        if noisy:
            e = e - gi * (rel * z[i])
        if abs(e) > tol:
            idx[k] = idx[i]
            ga[k] = gi
            ta[k] = ta[i]
            err[k] = e
            k += 1
        else:
            g[idx[i]] = gi
    return k


@njit(cache=True, nogil=True)
def write_pass(ga: np.ndarray, err: np.ndarray, z: np.ndarray, count: int, ppu: np.float32,
               curves: np.ndarray, exp_ltp: np.ndarray, exp_ltd: np.ndarray, c2c: np.float32,
               g0: np.float32, g1: np.float32) -> bool:
    """One write step of the first ``count`` cells: ``n = max(1, rint(|err| * ppu))`` pulses
    along the LTP curve (``err > 0``) or the LTD one, plus ``c2c * sqrt(n) * z`` (when ``c2c >
    0``), clipped to ``[g0, g1]``. ``curves`` float32 ``[2, 2]``, per direction (LTP, LTD):
    ``(top, 0)`` of a non-linear curve, which moves ``g`` to ``top - (top - g) * exp[n]``
    (``exp_ltp`` / ``exp_ltd``, :func:`exp_table`), or ``(nan, step)`` of a linear one, which
    moves it by ``step * (+-n)``. Returns False (nothing written) if a pulse count falls outside
    a table."""
    one = np.float32(1.0)
    top_ltp, top_ltd = curves[0, 0], curves[1, 0]
    step_ltp, step_ltd = curves[0, 1], curves[1, 1]
    lin_ltp, lin_ltd = np.isnan(top_ltp), np.isnan(top_ltd)
    for i in range(count):
        n = np.rint(abs(err[i]) * ppu)
        if (err[i] > 0 and not lin_ltp and n >= exp_ltp.size) or (
                err[i] <= 0 and not lin_ltd and n >= exp_ltd.size):
            return False
    for i in range(count):
        e = err[i]
        n = np.float32(np.rint(abs(e) * ppu))
        if n < one:
            n = one
        gi = ga[i]
        if e > 0:
            if lin_ltp:
                new = gi + step_ltp * n
            else:
                new = top_ltp - (top_ltp - gi) * exp_ltp[int(n)]
        elif lin_ltd:
            new = gi + step_ltd * (-n)
        else:
            new = top_ltd - (top_ltd - gi) * exp_ltd[int(n)]
        if c2c > 0:
            new = new + c2c * np.float32(np.sqrt(n)) * z[i]
        ga[i] = min(max(new, g0), g1)
    return True
