"""calibrate: per-slice gain by weighted least squares and an offset cancelling the mean error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.place import block_q

from rcompile import api
from rcompile.ir import ChipMapping, Plan, RowStats
from rcompile.pipeline import ChipContext
from tests.passes.conftest import chip_of, plan_of, random_stuck, run_chip


def held(mapping: ChipMapping, ctx: ChipContext, b: int) -> np.ndarray:
    """``D``: the level differences block ``b``'s pairs really hold, ``[n, m]``."""
    p = mapping.placements[b]
    lv = np.where(np.isnan(ctx.stuck[p.tile]), mapping.levels[p.tile], ctx.stuck[p.tile])
    lv = lv[p.phys_rows].astype(np.float64)
    return lv[:, p.pos] - lv[:, p.neg]


def stats_of(plan: Plan, seed: int) -> tuple[RowStats, ...]:
    """Random ``E[x^2]``, ``E[x]`` per layer row, consistent (``E[x]^2 <= E[x^2]``)."""
    rng = np.random.default_rng(seed)
    out = []
    for layer in plan.layers:
        g, rows, _ = layer.q.shape
        mean = rng.normal(size=(g, rows))
        out.append(RowStats((mean**2 + rng.uniform(0, 2, (g, rows))).astype(np.float32),
                            mean.astype(np.float32)))
    return tuple(out)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.7), st.booleans(), st.booleans())
def test_gain_never_raises_the_weighted_error_and_bias_cancels_the_mean_error(
    seed: int, rate: float, with_calib: bool, whole_tile_stuck: bool
) -> None:
    rng = np.random.default_rng(seed)
    plan = plan_of(rng.normal(size=(2, int(rng.integers(2, 12)), int(rng.integers(1, 6)))),
                   tile_rows=8, tile_cols=8, passes="quantize,tile,pack")
    stuck = random_stuck(plan.tiles_needed(), 8, 8, rate, seed)
    if whole_tile_stuck:
        stuck[0] = 0.0  # every cell of the tile at level 0: D = 0, nothing to fit
    calib = stats_of(plan, seed) if with_calib else None
    ctx = chip_of(plan, stuck, calib=calib)
    programmed, _ = run_chip(plan, ctx, "place,permute,program")
    out, log = run_chip(plan, ctx, "calibrate", programmed)
    shift = 0.0
    for b, (p0, p1) in enumerate(zip(programmed.placements, out.placements, strict=True)):
        blk = plan.blocks[b]
        assert np.isfinite(p1.scale).all() and np.isfinite(p1.offset).all()
        assert np.all(p1.scale > 0)
        q, d = block_q(plan, b).astype(np.float64), held(programmed, ctx, b)
        s0, s1 = p0.scale.astype(np.float64), p1.scale.astype(np.float64)
        r = calib[blk.layer].power[blk.group][blk.rows] if calib else np.ones(len(blk.rows))
        before = r @ (d * s0 - q * s0) ** 2
        after = r @ (d * s1 - q * s0) ** 2
        assert np.all(after <= before * (1 + 1e-5) + 1e-12)  # per output
        num, den = r @ (q * d), r @ (d * d)
        fit = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)  # the least-squares gain
        np.testing.assert_allclose(s1, np.where(fit > 0, s0 * fit, s0), rtol=1e-5)
        if calib:
            mean = calib[blk.layer].mean[blk.group][blk.rows].astype(np.float64)
            err = mean @ (d * s1 - q * s0)
            np.testing.assert_allclose(err + p1.offset, 0.0, atol=1e-5 * (1 + np.abs(err).max()))
            shift += float(np.abs(err).sum())
        else:
            assert not p1.offset.any()  # no data, no mean to cancel
    assert log[0]["bias_shift"] == pytest.approx(shift, rel=1e-4, abs=1e-6)


def test_a_gain_that_would_flip_the_sign_is_refused() -> None:
    """A pair stuck at (0, 15) holds -15 whatever q wants: the best fit is negative, so the
    output keeps its scale (a negative gain would turn the weights over)."""
    plan = plan_of(np.array([[[1.0], [0.4]]]), tile_rows=2, tile_cols=2)
    stuck = np.zeros((1, 2, 2), np.float32)
    stuck[0, :, 1] = 15.0
    ctx = chip_of(plan, stuck)
    programmed, _ = run_chip(plan, ctx, "place,program")
    out, _ = run_chip(plan, ctx, "calibrate", programmed)
    assert held(programmed, ctx, 0).tolist() == [[-15.0], [-15.0]]
    np.testing.assert_array_equal(out.placements[0].scale, programmed.placements[0].scale)


def test_gain_and_bias_can_be_switched_off() -> None:
    plan = plan_of(np.random.default_rng(1).normal(size=(1, 8, 3)), tile_rows=8, tile_cols=8)
    ctx = chip_of(plan, random_stuck(1, 8, 8, 0.3, 1), calib=stats_of(plan, 1))
    programmed, _ = run_chip(plan, ctx, "place,program")
    p0 = programmed.placements[0]
    gain, _ = run_chip(plan, ctx, "calibrate{bias=false}", programmed)
    bias, _ = run_chip(plan, ctx, "calibrate{gain=false}", programmed)
    assert not gain.placements[0].offset.any() and not np.array_equal(gain.placements[0].scale,
                                                                       p0.scale)
    np.testing.assert_array_equal(bias.placements[0].scale, p0.scale)
    assert bias.placements[0].offset.any()


def test_a_healthy_chip_needs_no_correction(tiny_plan: Plan) -> None:
    ctx = chip_of(tiny_plan, np.full((tiny_plan.tiles_needed(), 16, 6), np.nan))
    programmed, _ = run_chip(tiny_plan, ctx, "place,program")
    out, log = run_chip(tiny_plan, ctx, "calibrate", programmed)
    for p0, p1 in zip(programmed.placements, out.placements, strict=True):
        np.testing.assert_allclose(p1.scale, p0.scale, rtol=1e-6)
        assert not p1.offset.any()
    assert log[0]["bias_shift"] == 0.0


def test_real_calibration_statistics_cancel_the_mean_error(tiny_plan: Plan) -> None:
    """Statistics of the model's real activations (onnxruntime on random inputs)."""
    x = np.random.default_rng(2).normal(size=(64, 4, 6, 6)).astype(np.float32)
    calib = api.calib_stats(tiny_plan.model, tiny_plan.ops, {"x": x}, "random inputs")
    ctx = chip_of(tiny_plan, random_stuck(tiny_plan.tiles_needed(), 16, 6, 0.1, 3), calib=calib)
    programmed, _ = run_chip(tiny_plan, ctx, "place,permute,program")
    out, log = run_chip(tiny_plan, ctx, "calibrate", programmed)
    assert log[0]["bias_shift"] > 0
    for b, (p0, p1) in enumerate(zip(programmed.placements, out.placements, strict=True)):
        blk = tiny_plan.blocks[b]
        q, d = block_q(tiny_plan, b).astype(np.float64), held(programmed, ctx, b)
        mean = calib[blk.layer].mean[blk.group][blk.rows].astype(np.float64)
        err = mean @ (d * p1.scale.astype(np.float64) - q * p0.scale.astype(np.float64))
        np.testing.assert_allclose(err + p1.offset, 0.0, atol=1e-5)
