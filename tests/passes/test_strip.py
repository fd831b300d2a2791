"""strip: global row assignment over a column strip."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from rcompile.passes.strip import _assign_rows

from rcompile import api, runtime
from rcompile import faultmap as fmap
from rcompile.pipeline import parse, render

BASE = "place{order=assign},permute,program"
STRIP = "place{order=assign},permute,strip,program"


def matmul_mlp(path: str, seed: int = 0) -> str:
    """x[N,40] -> MatMul(40x6) -> Relu -> MatMul(6x4), opset 9, no node names (as old
    exporters wrote them): the first layer cuts into strips of three 14-row blocks on 16x6
    tiles, the second is one block."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(40, 6)).astype(np.float32)
    w2 = rng.normal(size=(6, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), path)
    return path


def weight_error(plan: object, res: api.BuildResult, fm: fmap.FaultMap) -> float:
    """Squared error of the weights the verifying runtime rebuilds, against the quantised ones."""
    got = runtime.effective_weights(res.image, fm)
    want = runtime.intended_weights(res.image)
    return float(sum(np.sum((g.astype(np.float64) - w) ** 2) for g, w in zip(got, want,
                                                                             strict=True)))


def test_pipeline_string_round_trips() -> None:
    spec = "place{order=assign},permute,strip{rounds=3,candidates=8},program"
    assert render(parse(spec)) == spec


def test_fault_free_chip_realises_the_quantised_weights(tmp_path: object) -> None:
    plan, _ = api.make_plan(matmul_mlp(f"{tmp_path}/m.onnx"), tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 1, 16, 6, 0.0, (1, 1), 0)
    res = api.build(plan, fm, pipeline=STRIP + ",calibrate")
    assert weight_error(plan, res, fm) == pytest.approx(0.0, abs=1e-10)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.sampled_from([0.1, 0.3, 0.5]),
       kind=st.sampled_from(["uniform", "lines"]))
def test_strip_never_worsens_what_the_runtime_rebuilds(
    tmp_path_factory: pytest.TempPathFactory, seed: int, rate: float, kind: str
) -> None:
    path = matmul_mlp(str(tmp_path_factory.mktemp("m") / "m.onnx"), seed % 3)
    plan, _ = api.make_plan(path, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 1, 16, 6, rate, (1, 5), seed, kind=kind)
    base = api.build(plan, fm, pipeline=BASE)
    strip = api.build(plan, fm, pipeline=STRIP)
    log = {e["pass"]: e for e in strip.log}["strip"]
    assert log["strips_solved"] >= 1
    assert log["cost_after"] <= log["cost_before"] + 1e-9
    # the runtime (which never imports passes/) sees the same or a smaller weight error
    assert weight_error(plan, strip, fm) <= weight_error(plan, base, fm) * (1 + 1e-6) + 1e-12
    # each logical weight of the strip's layer is read from exactly one slice
    count = np.zeros(plan.layers[0].q.shape[1:], int)
    for tile in strip.image.tiles:
        for s in tile.slices:
            if s.layer == 0:
                count[np.ix_(s.rows, s.outs)] += 1
    assert np.all(count == 1)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(0, 3), st.integers(0, 10_000))
def test_row_assignment_with_every_slot_offered_is_optimal(n: int, extra: int, seed: int) -> None:
    cost = np.random.default_rng(seed).uniform(0, 100, size=(n, n + extra))
    got = _assign_rows(cost, np.arange(n), candidates=n + extra)
    assert len(set(got.tolist())) == n
    best = min(
        sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n + extra), n)
    )
    assert cost[np.arange(n), got].sum() == pytest.approx(best, rel=1e-6)


def test_row_assignment_with_few_candidates_keeps_the_current_slot_feasible() -> None:
    rng = np.random.default_rng(4)
    cost = rng.uniform(0, 1, size=(6, 8))
    cost[:, 0] = 0.0  # every row's cheapest slot is the same one
    got = _assign_rows(cost, np.arange(6), candidates=1)
    assert len(set(got.tolist())) == 6
    assert cost[np.arange(6), got].sum() <= cost[np.arange(6), np.arange(6)].sum() + 1e-9
