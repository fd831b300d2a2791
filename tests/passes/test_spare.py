"""spare: spare tiles for the worst blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcompile import api
from rcompile import faultmap as fmap
from tests.passes.test_strip import matmul_mlp, weight_error

BASE = "place{order=assign},permute,program"


def test_fault_free_chip_uses_no_spare_tile(tmp_path: object) -> None:
    plan, _ = api.make_plan(matmul_mlp(f"{tmp_path}/m.onnx"), tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.0, (1, 1), 0)
    res = api.build(plan, fm, pipeline="place{order=assign},permute,spare,program,calibrate")
    assert {e["pass"]: e for e in res.log}["spare"]["blocks_split"] == 0
    assert len(res.image.tiles) == plan.tiles_needed()
    assert weight_error(plan, res, fm) == pytest.approx(0.0, abs=1e-10)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.sampled_from([0.2, 0.5]), spare=st.integers(1, 2),
       then_strip=st.booleans(), axis=st.sampled_from(["rows", "outs"]))
def test_spare_never_worsens_what_the_runtime_rebuilds(
    tmp_path_factory: pytest.TempPathFactory, seed: int, rate: float, spare: int,
    then_strip: bool, axis: str
) -> None:
    path = matmul_mlp(str(tmp_path_factory.mktemp("m") / "m.onnx"), seed % 3)
    plan, _ = api.make_plan(path, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + spare, 16, 6, rate, (5, 1), seed)
    pipe = f"place{{order=assign}},permute,spare{{tiles=1,axis={axis}}}"
    pipe += ",strip" if then_strip else ""
    res = api.build(plan, fm, pipeline=pipe + ",program")
    log = {e["pass"]: e for e in res.log}["spare"]
    assert log["blocks_split"] <= 1
    assert log["cost_after"] <= log["cost_before"] + 1e-9
    assert len(res.image.tiles) <= plan.tiles_needed() + 1
    assert weight_error(plan, res, fm) <= weight_error(
        plan, api.build(plan, fm, pipeline=BASE), fm) * (1 + 1e-6) + 1e-12
    for li, layer in enumerate(plan.layers):  # every weight read from exactly one slice
        count = np.zeros(layer.q.shape[1:], int)
        for tile in res.image.tiles:
            for s in tile.slices:
                if s.layer == li:
                    count[np.ix_(s.rows, s.outs)] += 1
        assert np.all(count == 1)
