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

:func:`program_tiles` writes several groups of cells (a chip's tiles) in one vectorised loop,
each group drawing from its own generator, in float32, with the curve step in closed form and
no work for cells whose target is the reset level when the first verify is sure to accept
them (:data:`RESET_ACCEPT_SIGMAS`); :func:`program` is the one-group case.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from rcompile.device import Cell, Hardware, Programming

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

    def __init__(self, cell: Cell, pulses: int, nl: float) -> None:
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

    def after(self, g: np.ndarray, n: np.ndarray) -> np.ndarray:
        """``g(x(g) + n)`` in closed form (no log): ``top - (top - g) * exp(-n / A)`` with
        ``top = g_min + B`` the curve's asymptote; keeps the dtype of ``g``."""
        if self.linear:
            return g + (self.rng / self.p) * n
        top = self.g0 + self.b
        return top - (top - g) * np.exp(n * (-1.0 / self.a))


def program(
    target: np.ndarray,
    cell: Cell,
    prog: Programming,
    rng: np.random.Generator,
    read_noise_rel: float = 0.0,
) -> np.ndarray:
    """Realised (fractional) levels, float64, of cells written to integer ``target`` levels.

    Ideal programming (``prog.pulses == 0``) returns the targets exactly.
    """
    return program_tiles([target], cell, prog, [rng], read_noise_rel)[0]


RESET_ACCEPT_SIGMAS = 8.0
"""A cell whose target is level 0 sits at its target after the reset; the first verify accepts
it unless the read noise moves the reading beyond the tolerance window, i.e. by more than
``tolerance / (g_min * noise_rel)`` sigmas. When that is at least this many sigmas (probability
below 1.3e-15 per cell) :func:`program_tiles` accepts such cells without drawing the read; else
they are written like every other cell. (For ``neurosim``: 10.4 sigmas.)"""


def program_tiles(
    targets: Sequence[np.ndarray],
    cell: Cell,
    prog: Programming,
    rngs: Sequence[np.random.Generator],
    read_noise_rel: float = 0.0,
) -> list[np.ndarray]:
    """Realised (fractional) levels, float64, of several groups of cells (a chip's tiles), group
    ``i`` written to its integer ``targets[i]`` with generator ``rngs[i]``.

    The write-verify model of :func:`program` (module docstring), for all groups in one
    vectorised loop; group ``i`` draws only from ``rngs[i]`` and only as much as its own cells
    need, so its result does not depend on the other groups. Pass only the cells that matter
    (e.g. not stuck ones). Reset-level targets the first verify is sure to accept
    (:data:`RESET_ACCEPT_SIGMAS`) come back as exactly 0 without any draw.
    """
    if len(targets) != len(rngs):
        raise ValueError(f"{len(targets)} target groups but {len(rngs)} generators")
    tgts = [np.asarray(t) for t in targets]
    if prog.ideal:
        return [t.astype(np.float64) for t in tgts]
    step, g0 = cell.step_us, cell.g_min_us
    tol = prog.tolerance_levels * step
    noisy_read = read_noise_rel > 0
    sure = not noisy_read or (g0 == 0 or tol / (g0 * read_noise_rel) >= RESET_ACCEPT_SIGMAS)
    flat = [t.reshape(-1) for t in tgts]
    write = [(f != 0) if sure else np.ones(f.shape, bool) for f in flat]
    picked = [f[w] for f, w in zip(flat, write, strict=True)]
    sizes = np.array([p.size for p in picked], np.int64)
    ends = np.cumsum(sizes)
    tgt = (g0 + np.concatenate([np.zeros(0, np.int64), *picked]).astype(np.float64) * step)
    loop = _write_verify_compiled if tgt.size >= COMPILED_CELLS else _write_verify
    g = loop(_Loop(cell, prog, read_noise_rel), tgt.astype(np.float32), ends, rngs)
    levels = (g.astype(np.float64) - g0) / step
    out = []
    for f, w, t, lo, hi in zip(flat, write, tgts, ends - sizes, ends, strict=True):
        got = f.astype(np.float64)
        got[w] = levels[lo:hi]
        out.append(got.reshape(t.shape))
    return out


COMPILED_CELLS = 1 << 18
"""Cells to write from which :func:`program_tiles` runs its loop compiled
(:mod:`rcompile._writeverify`, the same bytes): below it, importing numba costs more than the
loop."""


class _Loop:
    """The constants of one write-verify loop, in the float32 the loop computes in."""

    def __init__(self, cell: Cell, prog: Programming, read_noise_rel: float) -> None:
        f32 = np.float32
        span = cell.g_max_us - cell.g_min_us
        self.max_iterations = prog.max_iterations
        self.g0, self.g1 = f32(cell.g_min_us), f32(cell.g_max_us)
        self.tol = f32(prog.tolerance_levels * cell.step_us)
        self.noisy = read_noise_rel > 0
        self.rel = f32(read_noise_rel)
        self.c2c = f32(prog.c2c_sigma * span)
        self.pulses_per_us = f32(prog.pulses / span)
        self.ltp = _Curve(cell, prog.pulses, prog.nl_ltp)
        self.ltd = _Curve(cell, prog.pulses, prog.nl_ltd)


def _fill(out: np.ndarray, active: np.ndarray, ends: np.ndarray,
          rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Standard normal float32 draws for the ``active`` cells (ascending indices, so grouped by
    generator; group ``i`` ends before ``ends[i]``) into the front of ``out``: each group's
    draws from its own generator, in order."""
    counts = np.diff(np.searchsorted(active, ends), prepend=0)
    start = 0
    for rng, c in zip(rngs, counts.tolist(), strict=True):
        if c:
            rng.standard_normal(dtype=np.float32, out=out[start : start + c])
            start += c
    return out[:start]


def _write_verify(lp: _Loop, tgt: np.ndarray, ends: np.ndarray,
                  rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """The float32 conductances write-verify leaves in cells of targets ``tgt`` (float32 uS),
    in whole-array NumPy operations (the module docstring)."""
    f32 = np.float32
    g = np.full(tgt.shape, lp.g0, f32)
    z = np.empty(tgt.shape, f32)
    ltp, ltd, rel, c2c = lp.ltp, lp.ltd, lp.rel, lp.c2c
    # the cells still being written (indices into tgt, ascending, so grouped by generator)
    idx, ga, ta = np.arange(tgt.size), g.copy(), tgt
    for _ in range(lp.max_iterations):
        if idx.size == 0:
            break
        err = ta - ga
        if lp.noisy:  # the verify read is a read like any other
            err -= ga * (rel * _fill(z, idx, ends, rngs))
        todo = np.abs(err) > lp.tol
        if not todo.all():
            done = ~todo
            g[idx[done]] = ga[done]
            idx, ga, ta, err = idx[todo], ga[todo], ta[todo], err[todo]
            if idx.size == 0:
                break
        n = np.rint(np.abs(err) * lp.pulses_per_us)
        np.maximum(n, f32(1.0), out=n)
        up = err > 0  # potentiate along the LTP curve, else depress along the LTD one
        new = np.empty_like(ga)
        new[up] = ltp.after(ga[up], n[up])
        new[~up] = ltd.after(ga[~up], -n[~up])
        if c2c > 0:
            np.sqrt(n, out=n)
            new += c2c * n * _fill(z, idx, ends, rngs)
        ga = np.clip(new, lp.g0, lp.g1, out=new)
    g[idx] = ga
    return g


def _write_verify_compiled(lp: _Loop, tgt: np.ndarray, ends: np.ndarray,
                           rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """:func:`_write_verify` with each iteration's arithmetic in two compiled passes over the
    cells still being written (:mod:`rcompile._writeverify`): the same draws, the same float32
    operations, the same bytes."""
    from rcompile import _writeverify as wv

    f32 = np.float32
    g = np.full(tgt.shape, lp.g0, f32)
    idx, ga, ta = np.arange(tgt.size, dtype=np.int64), g.copy(), tgt.copy()
    err, z = np.empty(tgt.shape, f32), np.empty(tgt.shape, f32)
    curves = np.array([[np.nan, c.rng / c.p] if c.linear else [c.g0 + c.b, 0.0]
                       for c in (lp.ltp, lp.ltd)], f32)
    size = 2 * int(lp.pulses_per_us * (lp.g1 - lp.g0)) + 2  # pulse counts seen: 1 .. ~P
    tables = _exp_tables(lp, size)
    count = tgt.size
    for _ in range(lp.max_iterations):
        if count == 0:
            break
        if lp.noisy:
            _fill(z, idx[:count], ends, rngs)
        count = wv.verify_pass(idx, ga, ta, err, z, lp.noisy, lp.rel, lp.tol, g, count)
        if count == 0:
            break
        if lp.c2c > 0:
            _fill(z, idx[:count], ends, rngs)
        while not wv.write_pass(ga, err, z, count, lp.pulses_per_us, curves, *tables, lp.c2c,
                                lp.g0, lp.g1):  # a pulse count beyond the tables: widen them
            size = 2 * int(np.rint(np.abs(err[:count]).max() * lp.pulses_per_us)) + 2
            tables = _exp_tables(lp, size)
    g[idx[:count]] = ga[:count]
    return g


def _exp_tables(lp: _Loop, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``exp(-n / A)`` of pulse counts ``0 .. size - 1`` along the LTP and the LTD curve."""
    from rcompile import _writeverify as wv

    return tuple(np.zeros(1, np.float32) if c.linear else wv.exp_table(c.a, sign, size)
                 for c, sign in ((lp.ltp, 1.0), (lp.ltd, -1.0)))  # type: ignore[return-value]


def level_error_table(
    cell: Cell, prog: Programming, read_noise_rel: float = 0.0, samples: int = 2000,
    seed: int = 0,
) -> tuple[float, ...]:
    """Per target level, the RMS error (level steps) of write-verify, by seeded Monte Carlo."""
    if prog.ideal:
        return ()
    target = np.repeat(np.arange(cell.levels), samples)
    got = program(target, cell, prog, np.random.default_rng(seed), read_noise_rel)
    err = (got - target).reshape(cell.levels, samples)
    return tuple(round(float(v), 6) for v in np.sqrt(np.mean(err**2, axis=1)))


def compiler_device(hw: Hardware | None) -> Cell | None:
    """The cell the compiler should quantise for on ``hw``: its levels and conductances plus the
    expected programming error of every level (:attr:`Cell.level_rms_error`). None (no
    device model) gives None: the chip's own cell, as before device models existed."""
    if hw is None:
        return None
    table = level_error_table(hw.cell, hw.programming, hw.read.noise_rel)
    return replace(hw.cell, level_rms_error=table)
