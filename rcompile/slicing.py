"""Bit-sliced weights: a weight wider than one cell, spread over several cells per polarity.

A cell with ``Cell.weight_bits`` set quantises every weight to ``|q| <= 2^weight_bits - 1``
(``passes/quantize``) and holds it as ``n = Cell.n_slices`` digits of ``Cell.slice_bits`` bits,
digit ``k`` of significance ``base^k`` (``base = 2^slice_bits``), each on a differential column
pair of its own: ``q = sum_k base^k * d_k`` with ``d_k = sign(q) * (|q| // base^k mod base)``.

The per-chip stage runs on the *sliced view* of the plan (:func:`chip_plan`): every layer
becomes ``n`` digit layers whose scale is the layer's times ``base^k``, every block ``n`` digit
blocks on tiles of their own. The shipped passes then need no change and minimise the right
thing: their objective ``r_i * scale_j^2 * (realised - q)^2`` weighs a digit's squared error by
its significance squared, so placement puts the high digits on the cleanest tiles and
permutation keeps their stuck cells on zeros first. Two steps are slice-aware
(docs/slicing.md):

* after each ``program{scheme=compensate}``, a stuck high digit is compensated by the digit
  below it (:func:`compensate`): its target is moved by ``base`` times the error above, as far
  as its own range and stuck cells allow, never to a worse rebuilt weight;
* ``calibrate`` fits one gain per output over the rebuilt weight ``sum_k base^k D_k`` (all
  digits together) instead of one per digit, which would undo the compensation.

At the end every chip block goes back to its real layer with its ``digit``
(:func:`fold`); the image's slices then add up to the weight like any other slices do
(docs/image-format.md), so the verifying runtime needs no slicing logic of its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rcompile import pipeline as pl
from rcompile.ir import Block, ChipMapping, Layer, Plan, RowStats, chip_view
from rcompile.progress import ProgressFn

# --------------------------------------------------------------------------- digits


def split(q: np.ndarray, base: int, n: int) -> np.ndarray:
    """Signed digits ``[n, *q.shape]`` of ``q``, digit ``k`` of significance ``base^k``.

    Every digit carries the sign of its weight, so both polarities use the same column of the
    pair for every digit. Exact inverse: :func:`unslice` (for ``|q| < base^n``)."""
    mag = np.abs(q.astype(np.int64))
    if mag.size and int(mag.max()) >= base**n:
        raise ValueError(f"|q| up to {int(mag.max())} does not fit {n} digits of base {base}")
    sign = np.sign(q.astype(np.int64))
    digits = np.stack([sign * ((mag // base**k) % base) for k in range(n)])
    return digits.astype(np.int8 if base <= 128 else np.int16)


def unslice(digits: np.ndarray, base: int) -> np.ndarray:
    """``sum_k base^k * digits[k]`` (int64 for integer digits, float64 otherwise)."""
    kind = np.int64 if digits.dtype.kind in "iu" else np.float64
    weights = np.array([base**k for k in range(digits.shape[0])], kind)
    return np.tensordot(weights, digits.astype(kind), axes=1)


def compensated_target(
    lower: np.ndarray, want: np.ndarray, realise: Any, top: int
) -> np.ndarray:
    """The lower digit's new target: of ``lower`` and the integers either side of ``want``
    (clipped to ``-top..top``), the one whose realised value (``realise(target)``) is closest
    to ``want``; ``lower`` itself on ties, so the rebuilt weight never gets worse.

    ``want = lower + base * (target_above - realised_above)``: the value the lower digit would
    need to hold for the weight to be exact."""
    best = lower.astype(np.float64)
    best_err = np.abs(realise(best) - want)
    for cand in (np.floor(want), np.ceil(want)):
        c = np.clip(cand, -top, top)
        err = np.abs(realise(c) - want)
        better = err < best_err
        best = np.where(better, c, best)
        best_err = np.where(better, err, best_err)
    return best


# --------------------------------------------------------------------------- the sliced view


def is_sliced(plan: Plan) -> bool:
    return plan.device.n_slices > 1


def _origin(plan: Plan) -> tuple[int, int]:
    """(slices per weight, base) of a plan's cell."""
    return plan.device.n_slices, 2**plan.device.slice_bits


def chip_plan(plan: Plan) -> Plan:
    """The sliced view: digit layer ``l*n + k`` holds digit ``k`` of layer ``l`` at scale
    ``scale * base^k`` (the layer's bias on digit 0); digit block ``b*n + k`` covers block ``b``'s
    rows and outputs in digit layer ``l*n + k``; bin ``B`` of the plan becomes bins ``B*n + k``.
    Its cell is the plain cell (one digit per pair), so the per-chip passes see ordinary
    layers."""
    n, base = _origin(plan)
    layers: list[Layer] = []
    for layer in plan.layers:
        digits = split(layer.q, base, n)
        for k in range(n):
            bias = layer.bias if k == 0 else np.zeros_like(layer.bias)
            scale = (layer.scale.astype(np.float64) * base**k).astype(np.float32)
            layers.append(Layer(op=layer.op, q=digits[k], scale=scale, bias=bias))
    blocks = tuple(Block(layer=b.layer * n + k, group=b.group, rows=b.rows, outs=b.outs)
                   for b in plan.blocks for k in range(n))
    bins = plan.bin_of or tuple(range(len(plan.blocks)))
    return replace(
        plan,
        device=replace(plan.device, weight_bits=0, cell_bits=0),
        ops=tuple(op for op in plan.ops for _ in range(n)),
        float_mats=tuple(lay.q.astype(np.float32) * lay.scale[:, None, :] for lay in layers),
        biases=tuple(lay.bias for lay in layers),
        layers=tuple(layers),
        blocks=blocks,
        bin_of=tuple(int(bins[b]) * n + k for b in range(len(plan.blocks)) for k in range(n)),
    )


class _DigitCalib(tuple):  # type: ignore[type-arg]
    """The calibration statistics of the real layers, indexed by digit layer (``v // n``);
    reads go through the real tuple, so its read tracking still sees them."""

    source: Sequence[RowStats]
    n: int

    def __new__(cls, source: Sequence[RowStats], n: int) -> _DigitCalib:
        self = super().__new__(cls, (s for s in source for _ in range(n)))
        self.source, self.n = source, n
        return self

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, int):
            return self.source[i // self.n]
        return super().__getitem__(i)


# --------------------------------------------------------------------------- per-chip driver


def run_chip(
    passes: Sequence[Any], plan: Plan, ctx: pl.ChipContext, *, compensate_digits: bool = True,
    progress: ProgressFn | None = None,
) -> tuple[ChipMapping, list[dict[str, Any]]]:
    """The per-chip ``passes`` on the sliced view of ``plan``, with the two slice-aware steps
    (module docstring); returns the mapping folded back to ``plan``'s layers.
    ``compensate_digits=False`` leaves out the compensation (to measure what it buys);
    ``progress`` hears of each pipeline pass as :func:`rcompile.pipeline.run` reports it."""
    n, base = _origin(plan)
    view = chip_plan(plan)
    vctx = replace(ctx, calib=None if ctx.calib is None else _DigitCalib(ctx.calib, n))
    mapping = ChipMapping(placements=())
    log: list[dict[str, Any]] = []
    for p in passes:
        t0 = time.perf_counter()
        if p.name == "calibrate":
            mapping, stats = _guarded("calibrate", log, calibrate, plan, view, mapping, ctx,
                                      gain=p.gain, bias=p.bias)
            log.append({"pass": "calibrate", "seconds": time.perf_counter() - t0, **stats})
            continue
        _, out, entry = pl.run([p], view, vctx, mapping, progress=progress)
        assert out is not None
        mapping = out
        log += entry
        if compensate_digits and p.name == "program" and getattr(p, "scheme", "") == "compensate":
            t0 = time.perf_counter()
            view, mapping, stats = _guarded("slice-compensate", log, compensate, view, mapping,
                                            vctx, p, n, base)
            log.append({"pass": "slice-compensate", "seconds": time.perf_counter() - t0,
                        **stats})
    return fold(view, mapping, n), log


def _guarded(name: str, log: list[dict[str, Any]], step: Any, *args: Any, **kwargs: Any) -> Any:
    """``step(*args, **kwargs)``, a failure becoming :class:`pipeline.PassFailed` naming the
    step and the passes already run, as ``pipeline.run`` reports a failing pass."""
    try:
        return step(*args, **kwargs)
    except pl.RcompileError:
        raise
    except Exception as exc:
        ran = ", ".join(e["pass"] for e in log) or "none"
        raise pl.PassFailed(f"pass {name!r} failed ({type(exc).__name__}: {exc}); passes "
                            f"already run: {ran}") from exc


def _digit_maps(view: Plan, mapping: ChipMapping, ctx: pl.ChipContext, v: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For digit layer ``v``: the level difference every weight's pair realises (in the digit's
    own steps), the stuck level of its ``+`` and ``-`` cell (NaN healthy) and whether a block
    holds it."""
    from rcompile.passes._kernels import realised_differences

    layer = view.layers[v]
    shape = layer.q.shape
    real = np.zeros(shape)
    sp, sn = np.full(shape, np.nan), np.full(shape, np.nan)
    held = np.zeros(shape, bool)
    blocks = chip_view(view, mapping).blocks
    for pl_ in mapping.placements:
        blk = blocks[pl_.block]
        if blk.layer != v:
            continue
        st = ctx.stuck[pl_.tile]
        d = realised_differences(mapping.levels[pl_.tile], st, pl_.phys_rows, pl_.pos, pl_.neg)
        unit = layer.scale[blk.group][blk.outs].astype(np.float64)
        ratio = np.divide(pl_.scale, unit, out=np.ones_like(unit), where=unit != 0)
        idx = np.ix_(blk.rows, blk.outs)
        real[blk.group][idx] += d * ratio[None, :]
        r = pl_.phys_rows[:, None]
        sp[blk.group][idx], sn[blk.group][idx] = st[r, pl_.pos], st[r, pl_.neg]
        held[blk.group][idx] = True
    return real, sp, sn, held


def compensate(
    view: Plan, mapping: ChipMapping, ctx: pl.ChipContext, program: Any, n: int, base: int
) -> tuple[Plan, ChipMapping, dict[str, Any]]:
    """From the top digit down: move each lower digit's target by ``base`` times the error the
    digit above it realises (:func:`compensated_target`), then program again with the moved
    targets. Returns the view with the new targets (what later passes must aim at)."""
    from rcompile.passes._objective import best_levels

    top = ctx.device.max_level
    moved = 0
    for k in range(n - 1, 0, -1):
        layers = list(view.layers)
        before = moved
        for li in range(len(view.layers) // n):
            hi, lo = li * n + k, li * n + k - 1
            real, _, _, held = _digit_maps(view, mapping, ctx, hi)
            _, sp, sn, held_lo = _digit_maps(view, mapping, ctx, lo)
            miss = held & held_lo & (real != view.layers[hi].q)
            if not miss.any():
                continue
            lower = view.layers[lo].q
            want = lower[miss] + base * (view.layers[hi].q[miss] - real[miss])

            def realise(t: np.ndarray, a: np.ndarray = sp[miss], b: np.ndarray = sn[miss]
                        ) -> np.ndarray:
                return t + best_levels(t, a, b, top)[2]

            new = lower.copy()
            new[miss] = compensated_target(lower[miss], want, realise, top).astype(lower.dtype)
            moved += int(np.count_nonzero(new != lower))
            layers[lo] = replace(layers[lo], q=new)
        if moved > before:
            view = replace(view, layers=tuple(layers))
            _, out, _ = pl.run([program], view, ctx, mapping)
            assert out is not None
            mapping = out
    return view, mapping, {"moved_digits": moved}


def calibrate(
    plan: Plan, view: Plan, mapping: ChipMapping, ctx: pl.ChipContext, *, gain: bool, bias: bool
) -> tuple[ChipMapping, dict[str, Any]]:
    """``calibrate`` over the rebuilt weight: per output of every real layer, with ``D`` the
    realised ``sum_k base^k D_k`` in the layer's level steps, the gain
    ``sum_i r_i q_ij D_ij / sum_i r_i D_ij^2`` scales every digit's pair alike (kept if
    positive); with calibration data the known mean error goes to one digit's offset."""
    n, _ = _origin(plan)
    placements = list(mapping.placements)
    blocks = chip_view(view, mapping).blocks
    shift = 0.0
    for li, layer in enumerate(plan.layers):
        rebuilt = sum(_digit_maps(view, mapping, ctx, li * n + k)[0] * view.layers[li * n + k]
                      .scale[:, None, :].astype(np.float64) for k in range(n))
        s = layer.scale.astype(np.float64)  # [groups, outs]
        d = np.divide(rebuilt, s[:, None, :], out=np.zeros_like(rebuilt), where=s[:, None, :] != 0)
        q = layer.q.astype(np.float64)
        stats = None if ctx.calib is None else ctx.calib[li]
        power = np.ones(q.shape[:2]) if stats is None else stats.power.astype(np.float64)
        ratio = np.ones(s.shape)
        if gain:
            num = np.einsum("gi,gij,gij->gj", power, q, d)
            den = np.einsum("gi,gij,gij->gj", power, d, d)
            ratio = np.divide(num, den, out=np.ones_like(num), where=den > 0)
            ratio = np.where(ratio > 0, ratio, 1.0)
        err = None
        if bias and stats is not None:
            err = np.einsum("gi,gij->gj", stats.mean.astype(np.float64),
                            d * (s * ratio)[:, None, :] - q * s[:, None, :])
            shift += float(np.abs(err).sum())
        done = np.zeros(s.shape, bool)
        for i, pl_ in enumerate(placements):
            blk = blocks[pl_.block]
            if blk.layer // n != li:
                continue
            g, outs = blk.group, blk.outs
            offset = pl_.offset.astype(np.float64)
            if err is not None:
                first = ~done[g][outs]
                offset = offset - np.where(first, err[g][outs], 0.0)
                done[g][outs] = True
            placements[i] = replace(pl_, scale=(pl_.scale * ratio[g][outs]).astype(np.float32),
                                    offset=offset.astype(np.float32))
    return replace(mapping, placements=tuple(placements)), {"bias_shift": shift}


def fold(view: Plan, mapping: ChipMapping, n: int) -> ChipMapping:
    """The view's mapping on the real layers: every chip block back on layer ``v // n`` with
    digit ``v % n``, every layer's bias the sum of its digit layers' (digit 0 holds it)."""
    blocks = tuple(replace(b, layer=b.layer // n, digit=b.layer % n)
                   for b in chip_view(view, mapping).blocks)
    bias = tuple(np.asarray(np.sum([mapping.bias[li * n + k] for k in range(n)], axis=0),
                            np.float32) for li in range(len(mapping.bias) // n))
    return replace(mapping, blocks=blocks, bias=bias)
