"""quantize: ``scale_j = max_i |W_ij| / (L-1)``, ``q = round(W / scale)`` per output."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.quantize import Quantize

from rcompile import pipeline as pl
from rcompile.device import Cell
from rcompile.ir import Plan
from tests.passes.conftest import plan_of


def quantised(device: Cell, *mats: np.ndarray) -> tuple[Plan, Plan, float]:
    before = plan_of(*mats, device=device, passes="")
    after, stats = Quantize().run(before, pl.PlanContext(8, 6, device))
    return before, after, float(stats["rel_quant_error"])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([2, 3, 16, 64, 128, 129, 256]), st.integers(1, 3),
       st.integers(1, 6), st.integers(1, 6), st.floats(0.0, 0.5))
def test_levels_are_bounded_and_every_outputs_largest_weight_is_exact(
    seed: int, levels: int, groups: int, rows: int, outs: int, zero_frac: float
) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(groups, rows, outs)) * 10.0 ** rng.uniform(-4, 2, size=(groups, 1, outs))
    w[:, :, rng.random(outs) < zero_frac] = 0.0  # all-zero outputs (pruned)
    before, after, rel = quantised(Cell(levels=levels), w, w[:1, :, ::-1])
    top = levels - 1
    assert len(after.layers) == len(after.ops) == 2
    for op, layer, wf in zip(after.ops, after.layers, before.float_mats, strict=True):
        q, scale = layer.q.astype(np.int64), layer.scale.astype(np.float64)
        assert layer.op is op and layer.scale.dtype == np.float32
        assert layer.q.dtype == (np.int8 if levels <= 128 else np.int16)
        assert layer.q.shape == wf.shape and layer.scale.shape == (wf.shape[0], wf.shape[2])
        assert np.abs(q).max() <= top
        # the rule: q is the nearest level step, so no weight is off by more than half a step
        assert np.all(np.abs(q * scale[:, None, :] - wf) <= 0.5 * scale[:, None, :] * (1 + 1e-5))
        for g in range(wf.shape[0]):
            for j in range(wf.shape[2]):
                col = wf[g, :, j]
                if not col.any():  # an all-zero output: scale 1, q 0
                    assert scale[g, j] == 1.0 and not q[g, :, j].any()
                    continue
                i = int(np.argmax(np.abs(col)))
                assert abs(q[g, i, j]) == top
                assert q[g, i, j] * scale[g, j] == pytest.approx(float(col[i]), rel=1e-6)
    err = sum(float(np.sum((la.q * la.scale[:, None, :] - wf.astype(np.float64)) ** 2))
              for la, wf in zip(after.layers, before.float_mats, strict=True))
    total = sum(float(np.sum(wf.astype(np.float64) ** 2)) for wf in before.float_mats)
    assert rel == pytest.approx((err / total) ** 0.5 if total else 0.0, rel=1e-6, abs=1e-12)


def test_biases_are_carried_over_and_the_input_left_alone() -> None:
    w = np.arange(12, dtype=np.float32).reshape(1, 4, 3) - 6
    before, after, _ = quantised(Cell(), w)
    np.testing.assert_array_equal(after.layers[0].bias, before.biases[0])
    assert after.layers[0].bias.dtype == np.float32 and not before.layers
    np.testing.assert_array_equal(after.layers[0].q[0, :, 2], [-12, -3, 6, 15])  # -4,-1,2,5 / (1/3)


def test_a_256_level_device_keeps_its_largest_weight() -> None:
    w = np.array([[[1.0], [0.5]]])
    _, after, _ = quantised(Cell(levels=256), w)
    assert after.layers[0].q.dtype == np.int16  # beyond int8: stored wide, not wrapped
    assert int(after.layers[0].q[0, 0, 0]) == 255


def test_the_real_model_quantises_every_crossbar_op(tiny_plan: Plan) -> None:
    assert [la.op for la in tiny_plan.layers] == list(tiny_plan.ops)
    for la, wf in zip(tiny_plan.layers, tiny_plan.float_mats, strict=True):
        assert np.abs(la.q).max() == tiny_plan.device.max_level
        np.testing.assert_allclose(la.q * la.scale[:, None, :], wf,
                                   atol=float(la.scale.max()) / 2 * (1 + 1e-5))
