"""The one objective all per-chip passes minimise, and its vectorised cost matrices.

The error of one weight is ``scale * (realised - q)`` where ``realised`` is the level difference
the cell pair will really hold. With the fault map known, each pair is programmed optimally
(:func:`best_levels`): a healthy pair realises ``q`` exactly; a pair with one stuck cell at level
``f`` programs its healthy partner as close as the levels allow (``k_neg = clip(f - q)``); a pair
with two stuck cells realises ``f_pos - f_neg`` whatever is written. The layer objective is
``sum_ij r_i * scale_j^2 * (realised_ij - q_ij)^2`` with ``r_i = E[x_i^2]`` from calibration
data, or 1.

For cost matrices, stuck cells are coded as small integers (:class:`StuckCodes`: 0 = healthy,
``1 + level`` for a whole level, further codes for the distinct fractional levels a measured
conductance gives) with the stuck level of every code, so every cost is the objective exactly.
A pair with two healthy cells costs nothing, so a cost matrix is a sum over the pairs that hold
a stuck cell only: a gather and a grouped sum, with no dense products and no BLAS call (BLAS
threads on such small matrices only contend with the per-chip worker processes; see
``permute``). Work is proportional to the number of stuck cells, not to the tile size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np


def cell_codes(stuck: np.ndarray) -> np.ndarray:
    """int16 code of each cell: 0 healthy, ``1 + round(level)`` for a stuck cell.

    Rounded: with :func:`code_table`, the objective exactly only on whole stuck levels;
    :func:`stuck_codes` is exact on any."""
    return np.where(np.isnan(stuck), 0, np.rint(np.nan_to_num(stuck)) + 1).astype(np.int16)


def best_levels(
    q: np.ndarray, sp: np.ndarray, sn: np.ndarray, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal target levels of a pair and the level error it leaves.

    ``q``: wanted difference; ``sp``/``sn``: stuck level of the + / - cell (NaN = healthy).
    Returns uint8 ``k_pos``, uint8 ``k_neg`` and float ``realised - q``. Healthy pairs take the
    lowest common mode (least current). A stuck cell's own target is its stuck level, so the
    pair stays consistent if the cell were ever to read as programmed.
    """
    q = np.asarray(q, np.float64)
    sp, sn = np.asarray(sp, np.float64), np.asarray(sn, np.float64)  # exact for float32 levels
    hp, hn = np.isnan(sp), np.isnan(sn)
    fp, fn = np.where(hp, 0, sp), np.where(hn, 0, sn)  # nan_to_num for finite levels, faster
    kp = np.where(hp, np.where(hn, np.maximum(q, 0), np.clip(np.rint(q + fn), 0, top)),
                  np.rint(fp))
    kn = np.where(hn, np.where(hp, np.maximum(-q, 0), np.clip(np.rint(fp - q), 0, top)),
                  np.rint(fn))
    realised = np.where(hp, kp, fp) - np.where(hn, kn, fn)
    return kp.astype(np.uint8), kn.astype(np.uint8), realised - q


def error_table(codes_p: np.ndarray, codes_n: np.ndarray, top: int) -> np.ndarray:
    """Squared level error ``[len(codes), 2*top+1]`` of each code pair for every q in -top..top."""
    q = np.arange(-top, top + 1, dtype=np.float64)
    sp = np.where(codes_p == 0, np.nan, codes_p - 1.0)[:, None]
    sn = np.where(codes_n == 0, np.nan, codes_n - 1.0)[:, None]
    _, _, e = best_levels(q[None, :], sp, sn, top)
    return e**2


@lru_cache(maxsize=8)
def code_table(top: int) -> np.ndarray:
    """Squared level error ``[top+2, top+2, 2*top+1]`` of every (code+, code-) for every q.

    Row ``[a, b]`` equals ``error_table([a], [b], top)[0]``; read-only, cached per ``top``.
    """
    codes = np.arange(top + 2)
    pp, nn = np.meshgrid(codes, codes, indexing="ij")
    table = error_table(pp.ravel(), nn.ravel(), top).reshape(top + 2, top + 2, 2 * top + 1)
    table.flags.writeable = False
    return table


@dataclass(frozen=True)
class StuckCodes:
    """The stuck cells of one strip coded for the cost loops, with what every code costs.

    ``codes`` int32 ``[R, S]``: 0 healthy, ``k >= 1`` stuck at level ``levels[k]``; whole
    levels take code ``1 + level`` (as :func:`cell_codes`), each distinct fractional level a
    further code. ``alone`` float64 ``[2, K, 2*top+1]``: squared level error of a pair whose
    ``+`` (``alone[0, k]``) or ``-`` (``alone[1, k]``) cell is stuck at code ``k`` and whose
    other cell is healthy, for every ``q`` (index ``q + top``); code 0 costs nothing. A pair of
    two stuck cells realises ``levels[a] - levels[b]`` whatever is written (:func:`pair_error`).
    """

    codes: np.ndarray
    levels: np.ndarray  # float64 [K]: stuck level of each code (levels[0] is unused)
    alone: np.ndarray
    top: int
    table: np.ndarray | None = None
    """``[K, K, 2*top+1]``: :func:`pair_error` of every code pair, when ``K`` is small (a
    single gather for the numpy cost matrices); ``None`` otherwise."""


def stuck_codes(stuck: np.ndarray, top: int) -> StuckCodes:
    """:class:`StuckCodes` of stuck levels (NaN = healthy, else a level in ``[0, top]``)."""
    rounded = np.rint(stuck)
    whole = rounded == stuck  # False for NaN
    codes = np.where(whole, rounded + 1, 0).astype(np.int32)
    frac = ~whole & ~np.isnan(stuck)
    if not frac.any():
        return whole_codes(codes, top)
    values = stuck[frac].astype(np.float64)
    extra = np.unique(values)
    codes[frac] = np.searchsorted(extra, values).astype(np.int32) + top + 2
    levels = np.concatenate([[0.0], np.arange(top + 1, dtype=np.float64), extra])
    sc = StuckCodes(codes, levels, _alone_table(levels, top), top)
    if len(levels) > _TABLE_CODES:
        return sc
    k = np.arange(len(levels))
    qi = np.arange(2 * top + 1)
    return replace(sc, table=pair_error(sc, k[:, None, None], k[None, :, None], qi[None, None, :]))


_TABLE_CODES = 64
"""Most codes for which :class:`StuckCodes` holds the full pair table (64: 1 MB)."""


def whole_codes(codes: np.ndarray, top: int) -> StuckCodes:
    """:class:`StuckCodes` of :func:`cell_codes` (whole levels only)."""
    levels, alone = _whole_tables(top)
    return StuckCodes(np.asarray(codes, np.int32), levels, alone, top, code_table(top))


@lru_cache(maxsize=8)
def _whole_tables(top: int) -> tuple[np.ndarray, np.ndarray]:
    """Levels and ``alone`` table of the whole levels ``0..top`` (read-only, cached)."""
    levels = np.concatenate([[0.0], np.arange(top + 1, dtype=np.float64)])
    levels.flags.writeable = False
    return levels, _alone_table(levels, top)


def _alone_table(levels: np.ndarray, top: int) -> np.ndarray:
    """``[2, K, V]`` of :class:`StuckCodes`: one stuck cell of level ``levels[k]``, healthy
    partner, every q (row 0: nothing stuck)."""
    q = np.arange(-top, top + 1, dtype=np.float64)[None, :]
    lv = np.where(np.arange(len(levels)) == 0, np.nan, levels)[:, None]
    healthy = np.full_like(lv, np.nan)
    _, _, ep = best_levels(q, lv, healthy, top)
    _, _, en = best_levels(q, healthy, lv, top)
    table = np.stack([ep**2, en**2])
    table[:, 0] = 0.0
    table.flags.writeable = False
    return table


def pair_error(sc: StuckCodes, cp: np.ndarray, cn: np.ndarray, qi: np.ndarray) -> np.ndarray:
    """Squared level error of pairs of codes ``cp`` / ``cn`` holding ``q = qi - top`` (any
    broadcastable shapes); equals ``best_levels(...)[2] ** 2`` of their stuck levels."""
    if sc.table is not None:
        return sc.table[cp, cn, qi]  # type: ignore[no-any-return]
    both = (cp != 0) & (cn != 0)
    alone = np.where(cn == 0, sc.alone[0][cp, qi], sc.alone[1][cn, qi])
    d = (sc.levels[cp] - sc.levels[cn]) - (qi - sc.top).astype(np.float64)
    return np.where(both, d * d, alone)


def pair_cost_by_state(
    q: np.ndarray, w: np.ndarray, cp: np.ndarray, cn: np.ndarray, sc: StuckCodes
) -> np.ndarray:
    """Cost ``[n, X]``: ``cost[i, x] = sum_j w[i, j] * E(cp[x, j], cn[x, j], q[i, j])``, ``E``
    the squared error of :func:`pair_error` (codes of ``sc``).

    Generic contraction used by the permutation passes: ``x`` ranges over candidate places
    (physical rows, or column pairs), ``cp``/``cn`` ``[X, m]`` are the codes of the ``+`` and
    ``-`` cell each place offers output ``j``. Healthy pairs cost nothing, so only the places
    and outputs with a stuck cell are gathered (``nnz``) and summed per place.
    """
    n, places = q.shape[0], cp.shape[0]
    cost = np.zeros((n, places))
    x, j = np.nonzero((cp != 0) | (cn != 0))  # sorted by x, then j
    if x.size == 0:
        return cost
    qi = q.astype(np.int64) + sc.top
    err = pair_error(sc, cp[x, j].astype(np.int64)[None, :], cn[x, j].astype(np.int64)[None, :],
                     qi[:, j])  # [n, nnz]
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    cost[:, x[starts]] = np.add.reduceat(w[:, j] * err, starts, axis=1)
    return cost


def best_levels_noisy(
    q: np.ndarray, sp: np.ndarray, sn: np.ndarray, top: int, sq_err: np.ndarray,
    healthy_pairs: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`best_levels` on a device whose level ``k`` is programmed with expected squared
    error ``sq_err[k]`` (level steps squared): minimise ``(realised - q)^2`` plus the expected
    programming error of every healthy cell written. A stuck cell's partner trades exactness
    against a reliable level. A healthy pair picks the common mode whose two levels program
    best, or with ``healthy_pairs=False`` keeps the lowest common mode exactly as
    :func:`best_levels` (a raised common mode also costs read noise, ADC range and energy,
    which ``sq_err`` does not see).
    """
    q = np.asarray(q, np.int64)
    hp, hn = np.isnan(sp), np.isnan(sn)
    fp, fn = np.nan_to_num(sp), np.nan_to_num(sn)
    best = np.full(q.shape, np.inf)
    kp = np.zeros(q.shape, np.int64)
    kn = np.zeros(q.shape, np.int64)
    for c in range(top + 1):
        # both healthy: common mode c (when it fits; only the lowest without healthy_pairs),
        # exact difference q
        p_h, n_h = c + np.maximum(q, 0), c + np.maximum(-q, 0)
        if healthy_pairs:
            cost_hh = np.where(np.maximum(p_h, n_h) <= top,
                               sq_err[np.minimum(p_h, top)] + sq_err[np.minimum(n_h, top)],
                               np.inf)
        else:
            cost_hh = np.full(q.shape, 0.0 if c == 0 else np.inf)
        # + stuck: the - cell takes level c;  - stuck: the + cell takes level c
        cost_sp = (fp - c - q) ** 2 + sq_err[c]
        cost_sn = (c - fn - q) ** 2 + sq_err[c]
        cost = np.where(hp & hn, cost_hh, np.where(hn, cost_sp, np.where(hp, cost_sn, 0.0)))
        better = cost < best
        best = np.where(better, cost, best)
        kp = np.where(better, np.where(hp & hn, p_h, np.where(hp, c, np.rint(fp))), kp)
        kn = np.where(better, np.where(hp & hn, n_h, np.where(hn, c, np.rint(fn))), kn)
    return kp.astype(np.uint8), kn.astype(np.uint8)


#: Values of the ``noise`` option of ``program`` and ``transform``: how the device's per-level
#: programming error (``Cell.level_rms_error``) joins the objective.
NOISE_MODES = ("auto", "off", "partners", "all")


def noise_mode(option: str, level_rms_error: tuple[float, ...], auto: str = "off") -> str:
    """The effective noise mode: ``off``, ``partners`` or ``all``.

    ``off``: exact-level objective. ``partners``: only the healthy partner of a stuck cell weighs
    its level's expected programming error; healthy pairs keep the lowest common mode.
    ``all``: every healthy cell written weighs it (healthy pairs may move their common mode).
    ``auto``: the pass's measured default ``auto``. ``true`` and ``false`` are accepted for
    ``all`` and ``off``. Without an error table every mode is ``off``, so a build without a
    device is exactly the exact-level one.
    """
    mode = {"true": "all", "false": "off"}.get(option.lower(), option)
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {option!r}; expected one of {NOISE_MODES}")
    if not level_rms_error:
        return "off"
    return auto if mode == "auto" else mode
