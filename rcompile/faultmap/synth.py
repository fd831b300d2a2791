"""Synthetic fault maps: uniform, clustered and whole-line faults as real testers see them."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from rcompile.errors import BadFaultMap
from rcompile.faultmap.format import (
    STATE_HEALTHY,
    STATE_SA0,
    STATE_SA1,
    FaultMap,
    check_geometry,
)

SynthKind = Literal["uniform", "clustered", "lines"]
SYNTH_KINDS: tuple[str, ...] = ("uniform", "clustered", "lines")


def synth(
    tiles: int,
    rows: int,
    cols: int,
    rate: float,
    ratio: tuple[float, float] = (5, 1),
    seed: int = 0,
    kind: str = "uniform",
    chip_id: str | None = None,
) -> FaultMap:
    """A synthetic fault map with expected fault rate ``rate`` and ``SA1:SA0 = ratio``.

    Every kind draws from ``numpy.random.Generator(PCG64(seed))`` and is deterministic in its
    arguments. Each faulty cell is SA1 with probability ``a / (a + b)`` for ``ratio = (a, b)``;
    the expected fraction of faulty cells over the whole map is ``rate`` for every kind:

    - ``"uniform"``: each cell is faulty independently with probability ``rate``
      (docs/design.md §1).
    - ``"clustered"``: faults concentrate in Gaussian blobs (forming defects, particles): each
      tile gets ``1 + Poisson(3)`` blobs of random centre and width over a weak uniform
      background; the per-cell probability is that intensity scaled (and capped at 1) so that
      its mean over the map is ``rate``.
    - ``"lines"``: whole rows and whole columns stuck (word-/bit-line defects) plus a uniform
      background. Each row and each column of a tile is a stuck line with probability ``q``
      chosen so lines carry about 30 % of the faults; one line's cells share one state; the
      background rate makes the total expectation exactly ``rate``.

    ``chip_id`` defaults to ``f"synth-{kind}-p{rate}-s{seed}"``.
    Invalid arguments raise :class:`~rcompile.errors.BadFaultMap` (source ``synth``).
    """
    _check_synth_args(tiles, rows, cols, rate, ratio, kind)
    a, b = (float(x) for x in ratio)
    p_sa1 = a / (a + b)
    rng = np.random.Generator(np.random.PCG64(seed))
    shape = (tiles, rows, cols)
    if kind == "uniform":
        faulty = rng.random(shape, dtype=np.float32) < np.float32(rate)
        is_sa1 = rng.random(shape, dtype=np.float32) < np.float32(p_sa1)
    elif kind == "clustered":
        prob = _cluster_probability(rng, shape, rate)
        faulty = rng.random(shape, dtype=np.float32) < prob
        is_sa1 = rng.random(shape, dtype=np.float32) < np.float32(p_sa1)
    else:  # lines
        faulty, is_sa1 = _line_faults(rng, shape, rate, p_sa1)
    faults = np.where(faulty, np.where(is_sa1, STATE_SA1, STATE_SA0), STATE_HEALTHY)
    cid = chip_id if chip_id is not None else f"synth-{kind}-p{rate}-s{seed}"
    return FaultMap(faults.astype(np.uint8), chip_id=cid, source="synth")


def _check_synth_args(
    tiles: int, rows: int, cols: int, rate: float, ratio: tuple[float, float], kind: str
) -> None:
    check_geometry("synth", tiles, rows, cols)
    if not 0.0 <= float(rate) <= 1.0:
        raise BadFaultMap(f"synth: rate={rate}; expected a fault probability in [0, 1]")
    if len(ratio) != 2 or min(ratio) < 0 or not sum(ratio) > 0:
        raise BadFaultMap(f"synth: ratio={ratio}; expected SA1:SA0 as two numbers >= 0, not both 0")
    if kind not in SYNTH_KINDS:
        raise BadFaultMap(f"synth: kind={kind!r}; expected one of {', '.join(SYNTH_KINDS)}")


def _cluster_probability(
    rng: np.random.Generator, shape: tuple[int, int, int], rate: float
) -> np.ndarray:
    """Per-cell fault probability, float32 ``shape``: Gaussian blobs whose mean is ``rate``."""
    tiles, rows, cols = shape
    background = np.float32(0.05)
    intensity = np.full(shape, background, dtype=np.float32)
    r_idx = np.arange(rows, dtype=np.float32)
    c_idx = np.arange(cols, dtype=np.float32)
    side = float(min(rows, cols))
    for t in range(tiles):
        for _ in range(1 + int(rng.poisson(3.0))):
            r0, c0 = rng.uniform(0, rows), rng.uniform(0, cols)
            sigma = max(1.0, rng.uniform(0.04, 0.18) * side)
            weight = rng.uniform(0.5, 1.5)
            gr = np.exp(-0.5 * ((r_idx - r0) / sigma) ** 2).astype(np.float32)
            gc = np.exp(-0.5 * ((c_idx - c0) / sigma) ** 2).astype(np.float32)
            intensity[t] += np.float32(weight) * np.outer(gr, gc)
    if rate <= 0.0:
        return np.zeros(shape, dtype=np.float32)
    if rate >= 1.0:
        return np.ones(shape, dtype=np.float32)
    # Find the scale s with mean(min(1, s * intensity)) == rate; the mean rises monotonically
    # with s from 0 to 1 (the background keeps every cell's intensity > 0), so bisect.
    lo, hi = 0.0, rate / float(intensity.mean())
    while float(np.minimum(1.0, hi * intensity).mean()) < rate:
        lo, hi = hi, hi * 2.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if float(np.minimum(1.0, mid * intensity).mean()) < rate:
            lo = mid
        else:
            hi = mid
    return np.minimum(np.float32(1.0), np.float32(0.5 * (lo + hi)) * intensity)


def _line_faults(
    rng: np.random.Generator, shape: tuple[int, int, int], rate: float, p_sa1: float
) -> tuple[np.ndarray, np.ndarray]:
    """(faulty, is_sa1) bool ``shape``: stuck whole rows/columns plus a uniform background.

    A cell is healthy iff neither its row nor its column is a line and the background spares
    it: ``(1 - q)**2 * (1 - bg) = 1 - rate`` with ``1 - (1 - q)**2 = share * rate``.
    """
    share = 0.3
    q = 1.0 - math.sqrt(1.0 - share * rate)
    bg = 1.0 - (1.0 - rate) / (1.0 - share * rate) if rate < 1.0 else 1.0
    tiles, rows, cols = shape
    row_line = rng.random((tiles, rows)) < q
    col_line = rng.random((tiles, cols)) < q
    row_sa1 = rng.random((tiles, rows)) < p_sa1
    col_sa1 = rng.random((tiles, cols)) < p_sa1
    background = rng.random(shape, dtype=np.float32) < np.float32(bg)
    bg_sa1 = rng.random(shape, dtype=np.float32) < np.float32(p_sa1)
    in_row = np.broadcast_to(row_line[:, :, None], shape)
    in_col = np.broadcast_to(col_line[:, None, :], shape)
    faulty = in_row | in_col | background
    # Priority when sources overlap: row line, then column line, then background. Each source
    # picks SA1 independently with p_sa1, so every faulty cell is SA1 with p_sa1.
    is_sa1 = np.where(
        in_row,
        row_sa1[:, :, None],
        np.where(in_col, col_sa1[:, None, :], bg_sa1),
    )
    return faulty, is_sa1
