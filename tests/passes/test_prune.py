"""prune: the ``amount`` fraction smallest (by magnitude, row norm or output norm) become 0."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.prune import Prune

from rcompile import pipeline as pl
from rcompile.device import Cell
from tests.passes.conftest import plan_of

CTX = pl.PlanContext(8, 6, Cell())


def pruned(w: np.ndarray, mode: str, amount: float) -> tuple[np.ndarray, float]:
    plan = plan_of(w, passes="")
    out, stats = Prune(mode=mode, amount=amount).run(plan, CTX)  # type: ignore[arg-type]
    np.testing.assert_array_equal(plan.float_mats[0], w)  # the input is left alone
    return out.float_mats[0], float(stats["sparsity"])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["magnitude", "rows", "cols"]),
       st.floats(0.0, 1.0), st.integers(1, 3), st.integers(1, 7), st.integers(1, 6))
def test_prune_zeroes_exactly_the_smallest_fraction(
    seed: int, mode: str, amount: float, groups: int, rows: int, outs: int
) -> None:
    w = np.random.default_rng(seed).normal(size=(groups, rows, outs)).astype(np.float32)
    out, sparsity = pruned(w, mode, amount)
    assert out.shape == w.shape and out.dtype == w.dtype
    assert np.all((out == w) | (out == 0))  # only entries set to 0
    zero = out == 0
    assert sparsity == pytest.approx(zero.mean())
    if mode == "magnitude":  # per layer, over every group
        assert zero.sum() == round(amount * w.size)
        if zero.any() and (~zero).any():
            assert np.abs(w[zero]).max() <= np.abs(w[~zero]).min()
        return
    along = 1 if mode == "rows" else 0  # a row's entries run along axis 1, an output's along 0
    for g in range(groups):
        norm = np.linalg.norm(w[g], axis=along)
        gone = np.all(zero[g], axis=along)
        assert gone.sum() == round(amount * norm.size)
        assert np.all(zero[g] == np.expand_dims(gone, along))  # whole rows / outputs only
        if gone.any() and (~gone).any():
            assert norm[gone].max() <= norm[~gone].min()


def test_ties_are_broken_by_index() -> None:
    w = np.ones((1, 4, 2), np.float32)
    out, _ = pruned(w, "magnitude", 0.5)
    np.testing.assert_array_equal(out[0], [[0, 0], [0, 0], [1, 1], [1, 1]])
    out, _ = pruned(w, "rows", 0.25)
    np.testing.assert_array_equal(out[0].any(axis=1), [False, True, True, True])
    out, _ = pruned(w, "cols", 0.5)
    np.testing.assert_array_equal(out[0].any(axis=0), [False, True])
    w[0, 0, 0] = -3.0  # magnitude, not sign
    out, _ = pruned(w, "magnitude", 0.5)
    np.testing.assert_array_equal(out[0], [[-3, 0], [0, 0], [0, 1], [1, 1]])


def test_pruned_rows_and_outputs_take_no_cells() -> None:
    w = np.random.default_rng(0).normal(size=(1, 16, 6)).astype(np.float32)
    for mode, rows_left, outs_left in (("rows", 8, 6), ("cols", 16, 3)):
        plan = plan_of(w, passes=f"prune{{mode={mode},amount=0.5}},quantize,tile")
        q = plan.layers[0].q[0]
        rows = set(np.concatenate([b.rows for b in plan.blocks]).tolist())
        outs = set(np.concatenate([b.outs for b in plan.blocks]).tolist())
        assert rows == set(np.flatnonzero(q.any(axis=1)).tolist()) and len(rows) == rows_left
        assert outs == set(np.flatnonzero(q.any(axis=0)).tolist()) and len(outs) == outs_left


def test_bad_mode_or_amount_is_a_value_error() -> None:
    plan = plan_of(np.ones((1, 2, 2)), passes="")
    with pytest.raises(ValueError, match="out of range; expected 0..1"):
        Prune(amount=1.5).run(plan, CTX)
    with pytest.raises(ValueError, match="unknown prune mode"):
        Prune(mode="blocks").run(plan, CTX)  # type: ignore[arg-type]
    with pytest.raises(pl.BadPipeline, match="'blocks' is not one of magnitude, rows, cols"):
        pl.parse("prune{mode=blocks}", stage=pl.PLAN)
