"""Write-verify programming of ReRAM cells with NeuroSim's non-linear weight update.

The physics (NeuroSim ``RealDevice::Write``): a cell's conductance moves along a curve of the
pulse number ``x`` in ``0..P`` (``P`` = :attr:`~rcompile.device.Programming.pulses`)::

    G(x) = g_min + B * (1 - exp(-x / A)),    B = (g_max - g_min) / (1 - exp(-P / A))

with ``A > 0`` for potentiation (LTP: steep near ``g_min``, saturating near ``g_max``) and
``A < 0`` for depression (LTD: the mirror image). ``A = a(NL) * P`` where the normalised ``a`` of
a non-linearity label ``NL`` is the one whose curve bends at most ``0.099 * |NL|`` of the range
away from the straight line (:func:`param_a`; this reproduces NeuroSim's ``getParamA`` table,
e.g. ``a(1) = 1.2517``, ``a(4) = 0.2691``). A write step of ``n`` pulses moves ``x`` by ``n`` on
the curve of its direction and adds cycle-to-cycle noise ``N(0, (c2c_sigma * range)^2 * n)``.

Write-verify (:func:`program`): every cell starts from a full reset at ``g_min``; each
iteration reads the cell (with read noise), accepts it when the reading is within
``tolerance_levels`` of the target, and otherwise applies the pulse count a *linear* device
would need, ``round(|error| / range * P)`` (at least one). The non-linearity makes that count
over- or undershoot; the next iteration corrects it. Cells still outside the window after
``max_iterations`` keep whatever the last write left. Everything is vectorised over cells and
seeded, so one seed gives one realised chip.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import numpy as np

from rcompile.device import Device, Hardware, Programming

#: Maximum deviation of the normalised LTP curve from the straight line per unit of
#: non-linearity label (NeuroSim's labels scale this way; ``0.07 * sqrt(2)``).
NL_DEVIATION_PER_LABEL = 0.07 * math.sqrt(2.0)


def _max_deviation(a: float) -> float:
    """Max of ``g(x) - x`` on ``[0, 1]`` for ``g(x) = (1 - exp(-x/a)) / (1 - exp(-1/a))``."""
    u = -math.expm1(-1.0 / a)
    x_star = -a * math.log(a * u)
    return (1.0 - a * u) / u - x_star


@functools.lru_cache(maxsize=64)
def param_a(nl: float) -> float:
    """Normalised NeuroSim parameter ``A / P`` of a non-linearity label (sign kept; inf if 0)."""
    if nl == 0:
        return math.inf
    want = NL_DEVIATION_PER_LABEL * abs(nl)
    lo, hi = math.log(1e-4), math.log(1e7)  # deviation falls as a grows
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _max_deviation(math.exp(mid)) > want:
            lo = mid
        else:
            hi = mid
    return math.copysign(math.exp(0.5 * (lo + hi)), nl)


class _Curve:
    """One update direction's conductance-vs-pulse curve, in microsiemens and pulses."""

    def __init__(self, cell: Device, pulses: int, nl: float) -> None:
        self.g0 = cell.g_min_us
        self.rng = cell.g_max_us - cell.g_min_us
        self.p = float(pulses)
        self.a = param_a(nl) * pulses
        self.linear = math.isinf(self.a)
        if not self.linear:
            self.b = self.rng / -math.expm1(-self.p / self.a)

    def g(self, x: np.ndarray) -> np.ndarray:
        if self.linear:
            return self.g0 + self.rng * x / self.p
        return self.g0 - self.b * np.expm1(-x / self.a)

    def x(self, g: np.ndarray) -> np.ndarray:
        if self.linear:
            return (g - self.g0) / self.rng * self.p
        return -self.a * np.log1p(-(g - self.g0) / self.b)


def program(
    target: np.ndarray,
    cell: Device,
    prog: Programming,
    rng: np.random.Generator,
    read_noise_rel: float = 0.0,
) -> np.ndarray:
    """Realised (fractional) levels, float64, of cells written to integer ``target`` levels.

    Ideal programming (``prog.pulses == 0``) returns the targets exactly.
    """
    tgt_levels = np.asarray(target)
    if prog.ideal:
        return tgt_levels.astype(np.float64)
    shape = tgt_levels.shape
    step = cell.step_us
    tgt = cell.g_min_us + tgt_levels.reshape(-1).astype(np.float64) * step
    g = np.full(tgt.shape, cell.g_min_us)
    ltp = _Curve(cell, prog.pulses, prog.nl_ltp)
    ltd = _Curve(cell, prog.pulses, prog.nl_ltd)
    span = cell.g_max_us - cell.g_min_us
    tol = prog.tolerance_levels * step
    c2c = prog.c2c_sigma * span
    # the cells still being written, compacted after every verify
    idx, ga, ta = np.arange(tgt.size), g.copy(), tgt
    for _ in range(prog.max_iterations):
        seen = ga
        if read_noise_rel > 0:  # the verify read is a read like any other
            seen = ga * (1.0 + read_noise_rel * rng.standard_normal(ga.size))
        err = ta - seen
        todo = np.abs(err) > tol
        if not todo.all():
            g[idx[~todo]] = ga[~todo]
            idx, ga, ta, err = idx[todo], ga[todo], ta[todo], err[todo]
        if idx.size == 0:
            break
        n = np.maximum(1.0, np.rint(np.abs(err) * (prog.pulses / span)))
        up = err > 0
        new = np.where(up, ltp.g(ltp.x(ga) + n), ltd.g(ltd.x(ga) - n))
        if c2c > 0:
            new += c2c * np.sqrt(n) * rng.standard_normal(ga.size)
        ga = np.clip(new, cell.g_min_us, cell.g_max_us)
    g[idx] = ga
    return ((g - cell.g_min_us) / step).reshape(shape)


def level_error_table(
    cell: Device, prog: Programming, read_noise_rel: float = 0.0, samples: int = 2000,
    seed: int = 0,
) -> tuple[float, ...]:
    """Per target level, the RMS error (level steps) of write-verify, by seeded Monte Carlo."""
    if prog.ideal:
        return ()
    target = np.repeat(np.arange(cell.levels), samples)
    got = program(target, cell, prog, np.random.default_rng(seed), read_noise_rel)
    err = (got - target).reshape(cell.levels, samples)
    return tuple(round(float(v), 6) for v in np.sqrt(np.mean(err**2, axis=1)))


def compiler_device(hw: Hardware) -> Device:
    """The cell the compiler should quantise for on ``hw``: its levels and conductances plus the
    expected programming error of every level (:attr:`Device.level_rms_error`)."""
    table = level_error_table(hw.cell, hw.programming, hw.read.noise_rel)
    return replace(hw.cell, level_rms_error=table)
