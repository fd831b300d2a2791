"""covariance: pairs reprogrammed for the calibration data's input covariance."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes._covariance import column_costs, descend, pair_levels, realisable

from rcompile import api, runtime
from rcompile import faultmap as fmap
from rcompile.data import input_specs, load_data
from tests.conftest import ROOT
from tests.passes.test_strip import matmul_mlp

BASE = "place{order=assign},permute,program"
COV = BASE + ",covariance"


def correlated_inputs(n: int, dim: int, seed: int) -> np.ndarray:
    """``[n, dim]`` inputs driven by three shared factors, so neighbouring rows correlate."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)) @ rng.normal(size=(3, dim))
            + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def stuck_pairs(top: int, shape: tuple[int, int], rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Stuck levels of random pairs, half the cells stuck (NaN = healthy)."""
    def cells() -> np.ndarray:
        lv = rng.integers(0, top + 1, size=shape).astype(np.float64)
        return np.where(rng.random(shape) < 0.5, lv, np.nan)
    return cells(), cells()


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 12), m=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_descent_never_raises_the_objective_and_stays_realisable(n: int, m: int,
                                                                 seed: int) -> None:
    rng = np.random.default_rng(seed)
    top = 15
    a = rng.normal(size=(n, n + 2))
    sigma = a @ a.T / n
    q = rng.integers(-top, top + 1, size=(n, m)).astype(np.float64)
    sp, sn = stuck_pairs(top, (n, m), rng)
    off, tlo, thi = realisable(sp, sn, top)
    d = off + np.clip(np.rint(q - off), tlo, thi)  # the per-weight optimum ``program`` writes
    before = column_costs(sigma, d - q)
    d2t, _ = descend(sigma, d.T.copy(), ((d - q).T @ sigma).copy(), off.T.copy(), tlo.T.copy(),
                     thi.T.copy(), 6)
    d2 = d2t.T
    assert np.all(column_costs(sigma, d2 - q) <= before + 1e-9)
    t = d2 - off
    assert np.array_equal(t, np.rint(t)) and np.all((t >= tlo) & (t <= thi))
    kp, kn = pair_levels(np.rint(t), sp, sn)  # the cells realise it, stuck ones at their level
    real = np.where(np.isnan(sp), kp, sp) - np.where(np.isnan(sn), kn, sn)
    assert np.allclose(real, d2)
    assert kp.max(initial=0) <= top and kn.max(initial=0) <= top


def _build(path: str, rate: float, seed: int, pipeline: str) -> tuple[api.BuildResult,
                                                                       fmap.FaultMap]:
    plan, _ = api.make_plan(path, tile_rows=16, tile_cols=6)
    calib = api.calib_stats(plan.model, plan.ops, {"x": correlated_inputs(64, 40, seed)},
                            "inputs", moments=True)
    fm = fmap.synth(plan.tiles_needed() + 1, 16, 6, rate, (1, 5), seed)
    return api.build(plan, fm, pipeline=pipeline, calib=calib), fm


@pytest.mark.parametrize("seed", [0, 1])
def test_covariance_lowers_the_output_error_the_runtime_sees(tmp_path: str, seed: int) -> None:
    path = matmul_mlp(os.path.join(tmp_path, "m.onnx"), seed)
    base, fm = _build(path, 0.4, seed, BASE)
    cov, _ = _build(path, 0.4, seed, COV)
    log = {e["pass"]: e for e in cov.log}["covariance"]
    assert log["weights_moved"] > 0 and log["cost_after"] < log["cost_before"]
    x = correlated_inputs(64, 40, seed).astype(np.float64)
    sigma = np.cov(x, rowvar=False, bias=True)

    def layer_error(res: api.BuildResult) -> float:  # what the runtime rebuilds, not the pass
        got = runtime.effective_weights(res.image, fm)[0].astype(np.float64)
        want = runtime.intended_weights(res.image)[0].astype(np.float64)
        return float(column_costs(sigma, got - want).sum())

    assert layer_error(cov) < layer_error(base)


def test_diagonal_objective_changes_nothing(tmp_path: str) -> None:
    path = matmul_mlp(os.path.join(tmp_path, "m.onnx"), 0)
    base, _ = _build(path, 0.4, 0, BASE)
    cov, _ = _build(path, 0.4, 0, COV.replace("covariance", "covariance{shrink=1}"))
    assert {e["pass"]: e for e in cov.log}["covariance"]["weights_moved"] == 0
    assert base.mapping.levels.keys() == cov.mapping.levels.keys()
    assert all(np.array_equal(base.mapping.levels[t], cov.mapping.levels[t])
               for t in base.mapping.levels)


def test_dense_strategy_on_a_third_party_mlp(tmp_path: str) -> None:
    """skl2onnx's MLP (MatMul layers), its own samples as calibration data: moments are made
    only for a pipeline that reads them, and the pass never raises its objective."""
    model = os.path.join(ROOT, "tests", "data", "compat", "sk_mlp_classifier-skl2onnx13-dynamic")
    plan, _ = api.make_plan(model + ".onnx", tile_rows=32, tile_cols=16)
    fm = fmap.synth(plan.tiles_needed() + 1, 32, 16, 0.3, (5, 1), 3)
    data = load_data(model + ".npz", input_specs(plan.model))
    lot = api.plan_lot(model + ".onnx", fm, calib_path=model + ".npz",
                       moments=api.needs_moments(api.STRATEGIES["dense"]))
    assert lot.calib is not None and all(s.moment is not None for s in lot.calib)
    res = api.compile_chip(model + ".onnx", fm, lot=lot, strategy="dense")
    log = {e["pass"]: e for e in res.log}["covariance"]
    assert log["cost_after"] <= log["cost_before"] + 1e-9
    assert runtime.verify(res.image, fm, data).n_samples == data.n
    plain = api.plan_lot(model + ".onnx", fm, calib_path=model + ".npz")
    assert plain.calib is not None and all(s.moment is None for s in plain.calib)
    again = api.compile_chip(model + ".onnx", fm, lot=plain, strategy="dense")
    assert any(w.startswith("covariance: ") for w in again.warnings), again.warnings
