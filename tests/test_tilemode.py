"""Tile mode builds one grouped product per layer; its three ways of summing the columns back
into outputs (dense product, weighted sum over row blocks, gather) compute the same thing."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from rcompile import api, runtime
from rcompile import faultmap as fmap
from rcompile.data import dataset_from_arrays, input_specs, load_data
from rcompile.device import PRESETS, Converters
from rcompile.runtime import execute, tilemode
from rcompile.runtime.tilemode import circuit, layout
from tests.conftest import MODEL, ROOT, TEST_DATA


@pytest.fixture(scope="module")
def chip() -> tuple[object, fmap.FaultMap, object]:
    plan, _ = api.make_plan(MODEL)
    fm = fmap.synth(api.spare_tiles(plan.tiles_needed(), 0.1), 128, 128, 0.05, (5, 1), 3)
    image = api.build(plan, fm).image
    data = load_data(TEST_DATA, input_specs(plan.model))
    small = data.take(slice(0, 64))
    return image, fm, small


def emulate(chip: tuple[object, fmap.FaultMap, object], hw: object) -> np.ndarray:
    image, fm, data = chip
    return runtime.emulate(image, fm, data, hardware=hw, mode="tile")[0]  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["ideal", "neurosim"])
def test_the_three_column_sums_agree(chip: tuple[object, fmap.FaultMap, object], device: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    image = chip[0]
    hw = runtime.image_hardware(image) if device == "ideal" else PRESETS["neurosim"]  # type: ignore[arg-type]
    if device == "ideal":  # ideal converters: tile mode is ideal mode
        hw = replace(hw, converters=Converters())
    dense = emulate(chip, hw)
    monkeypatch.setattr(layout, "COMBINE_DENSE_RATIO", 0)  # the row-block sum (fc1: 7 blocks)
    blocks = emulate(chip, hw)
    monkeypatch.setattr(tilemode.LayerLayout, "_regular", lambda self: None)  # the gather
    gathered = emulate(chip, hw)
    scale = float(np.abs(dense).max())
    for other in (blocks, gathered):
        close = np.isclose(other, dense, rtol=1e-4, atol=1e-4 * scale)
        if device == "ideal":
            assert close.all()
        else:  # the sums round differently in float32: a current on an ADC code edge may land
            # on the next code (4 of 640 outputs on this chip); every other output agrees
            assert close.mean() >= 0.98, f"{(~close).sum()} of {close.size} outputs differ"
    if device == "ideal":
        image, fm, data = chip
        ideal = runtime.emulate(image, fm, data, hardware=hw, mode="ideal")[0]  # type: ignore[arg-type]
        np.testing.assert_allclose(dense, ideal, rtol=1e-4, atol=1e-4 * scale)


def test_a_large_layer_runs_in_smaller_batches(chip: tuple[object, fmap.FaultMap, object],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    whole = emulate(chip, PRESETS["neurosim"])
    monkeypatch.setattr(circuit, "TILE_BATCH_FLOATS", 1)  # one sample per run
    one_by_one = emulate(chip, PRESETS["neurosim"])
    assert one_by_one.shape == whole.shape
    # the ADC ranges and noise draws do not depend on the batch: the same chip, the same result
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())


def test_both_modes_measure_the_same_energy(chip: tuple[object, fmap.FaultMap, object]) -> None:
    """Ideal mode divides per-sample sums by the full scale, tile mode divides the inputs: the
    same cell energy per layer (the MNIST example has Conv and Gemm layers)."""
    image, fm, data = chip
    hw = replace(runtime.image_hardware(image), converters=Converters())  # type: ignore[arg-type]
    a = runtime.verify(image, fm, data, hardware=hw, mode="ideal")  # type: ignore[arg-type]
    b = runtime.verify(image, fm, data, hardware=hw, mode="tile")  # type: ignore[arg-type]
    for x, y in zip(a.energy, b.energy, strict=True):
        assert x["cell_j"] == pytest.approx(y["cell_j"], rel=1e-4)
    assert a.energy_per_inference_j == pytest.approx(b.energy_per_inference_j, rel=1e-4)


@pytest.mark.parametrize("mode", ["ideal", "tile"])
def test_energy_is_measured_on_samples_spread_over_the_data(
        chip: tuple[object, fmap.FaultMap, object], mode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    image, fm, _ = chip
    d = np.load(TEST_DATA)
    specs = runtime.image_input_specs(image)  # type: ignore[arg-type]
    n = 300
    data = dataset_from_arrays({"input": d["input"][:n], "labels": d["labels"][:n]}, specs)
    pick = execute._energy_first(n, execute.ENERGY_SAMPLES)
    assert pick is not None and pick.size == n  # a reordering of all the samples
    spread = np.sort(pick[: execute.ENERGY_SAMPLES])
    assert spread[0] == 0 and spread[-1] == n - 1  # from the first sample to the last
    subset = dataset_from_arrays({"input": d["input"][spread]}, specs)
    a = runtime.verify(image, fm, data, mode=mode)  # type: ignore[arg-type]
    b = runtime.verify(image, fm, subset, mode=mode)  # type: ignore[arg-type]
    assert a.energy_per_inference_j == pytest.approx(b.energy_per_inference_j, rel=1e-6)
    # running the spread samples first changes nothing else: outputs come back in order
    monkeypatch.setattr(execute, "ENERGY_SAMPLES", 10 * n)
    c = runtime.verify(image, fm, data, mode=mode)  # type: ignore[arg-type]
    assert a.accuracy is not None and (a.accuracy, a.agreement) == (c.accuracy, c.agreement)
    assert a.output_cosine == pytest.approx(c.output_cosine, abs=1e-9)


def _rounded(opset: int, xs: np.ndarray, lo: float, hi: float, clip: bool) -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])
    graph = helper.make_graph([], "r", [x], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    g = tilemode.GraphWriter(model)
    y = g.clip_round("x", lo, hi) if clip else g.round("x", lo, hi)
    model.graph.node.extend(g.nodes)
    model.graph.initializer.extend(g.inits)
    model.graph.output.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [None]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": xs})[0]


@pytest.mark.parametrize("lo, hi", [(0.0, 2.0**23 - 1), (-255.0, 255.0),
                                    (-(2.0**23 - 1), 2.0**23 - 1)])
def test_rounding_before_opset_11_is_round_half_to_even(lo: float, hi: float) -> None:
    rng = np.random.default_rng(0)
    xs = np.concatenate([
        rng.uniform(lo, hi, 4000), np.arange(lo, min(hi, lo + 40)) + 0.5,  # ties
        np.arange(max(lo, hi - 40), hi) + 0.5, [lo, hi, 0.0, 0.49999997, -0.49999997, 2.5],
        np.nextafter(np.float32(np.arange(lo, lo + 20) + 0.5), np.float32(np.inf)),
    ]).astype(np.float32)
    xs = xs[(xs >= lo) & (xs <= hi)]
    want = np.round(xs)  # numpy rounds half to even, as ONNX Round does
    for opset in (7, 10):
        np.testing.assert_array_equal(_rounded(opset, xs, lo, hi, clip=False), want)
    wide = np.concatenate([xs, [lo - 3.7, hi + 9.2]]).astype(np.float32)
    np.testing.assert_array_equal(_rounded(7, wide, lo, hi, clip=True),
                                  _rounded(11, wide, lo, hi, clip=True))


@pytest.mark.parametrize("combine", ["blocks", "gather"])
def test_old_opsets_sum_the_columns_alike(combine: str, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: object) -> None:
    """The row-block sum and the gather (ReduceSum's axes an attribute before opset 13) give
    what opset 13 gives, bit for bit, reading columns or pairs (float codes before opset 13,
    uint8 codes with the pair's zero code in their zero points from 13)."""
    import os

    import onnx

    from tests.test_opsets import cnn

    monkeypatch.setattr(layout, "COMBINE_DENSE_RATIO", 0)
    if combine == "gather":
        monkeypatch.setattr(tilemode.LayerLayout, "_regular", lambda self: None)
    xs = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    ns = PRESETS["neurosim"]
    dynamic = replace(ns, converters=replace(ns.converters, adc_range="dynamic",
                                             dac_range="dynamic"))
    outs = {}
    for opset in (7, 9, 12, 13):
        path = os.path.join(str(tmp_path), f"m{opset}.onnx")
        onnx.save(cnn(opset, "N"), path)
        plan, _ = api.make_plan(path)
        fm = fmap.synth(api.spare_tiles(plan.tiles_needed(), 0.1), 128, 128, 0.05, (5, 1), 3)
        image = api.build(plan, fm).image
        data = dataset_from_arrays({"x": xs}, input_specs(plan.model))
        outs[opset] = [runtime.emulate(image, fm, data, hardware=hw, mode="tile")[0]
                       for hw in (ns, dynamic, *(replace(h, converters=replace(
                           h.converters, adc="pair")) for h in (ns, dynamic)))]
    for opset in (7, 9, 12):
        for a, b in zip(outs[opset], outs[13], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op, opset, runs", [
    ("Round", 10, False), ("Round", 11, True), ("Round", 22, True),
    ("RandomUniformLike", 21, True), ("RandomUniformLike", 22, None),
    ("QuantizeLinear", 25, True), ("QuantizeLinear", 28, None),
])
def test_kernel_table_says_what_onnxruntime_runs(op: str, opset: int, runs: bool | None) -> None:
    """``_has_kernel`` against a real session of the op (None: whatever onnxruntime says)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if opset > __import__("onnx").defs.onnx_opset_version():
        pytest.skip("onnx does not know this opset")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    extra = ({"dtype": TensorProto.FLOAT} if op == "RandomUniformLike" else {})
    inputs = ["x", "s"] if op == "QuantizeLinear" else ["x"]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [1.0])]
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], **extra)], "k", [x],
                              [helper.make_empty_tensor_value_info("y")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        loads = True
    except Exception:
        loads = False
    assert tilemode.has_kernel(op, opset) == loads
    if runs is not None:
        assert loads == runs


def test_random_draws_without_random_generators_have_the_right_moments() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])
    model = helper.make_model(helper.make_graph([], "r", [x], []),
                              opset_imports=[helper.make_opsetid("", 22)])
    g = tilemode.GraphWriter(model)
    u = g.uniform(g.dims("x", 0, 1), 5, "u")
    z = g.normal_like("x", 6, "z")
    model.graph.node.extend(g.nodes)
    model.graph.initializer.extend(g.inits)
    assert {n.op_type for n in g.nodes}.isdisjoint({"RandomUniformLike", "RandomNormalLike"})
    model.graph.output.extend([helper.make_empty_tensor_value_info(u),
                               helper.make_empty_tensor_value_info(z)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    uu, zz = sess.run(None, {"x": np.zeros((20000, 3), np.float32)})
    assert uu.shape == (20000,) and zz.shape == (20000, 3)
    assert 0 <= uu.min() and uu.max() < 1 and np.unique(uu).size > 19000
    assert abs(uu.mean() - 0.5) < 0.01 and abs(uu.var() - 1 / 12) < 0.003
    assert abs(zz.mean()) < 0.02 and abs(zz.var() - 1) < 0.03
    assert abs(np.corrcoef(zz[:, 0], zz[:, 1])[0, 1]) < 0.03  # independent draws


@pytest.fixture(scope="module")
def unet() -> tuple[object, fmap.FaultMap, object]:
    """A third-party graph (Conv and ConvTranspose) on a faulty chip, and its samples."""
    path = os.path.join(ROOT, "tests", "data", "compat", "unet_convtranspose-legacy17-fixed")
    plan, _ = api.make_plan(path + ".onnx")
    fm = fmap.synth(api.spare_tiles(plan.tiles_needed(), 0.1), 128, 128, 0.05, (5, 1), 2)
    return api.build(plan, fm).image, fm, load_data(path + ".npz", input_specs(plan.model))


@pytest.mark.parametrize("adc", ["column", "pair"])
def test_both_adc_reads_equal_ideal_mode_on_a_third_party_graph(
        unet: tuple[object, fmap.FaultMap, object], adc: str) -> None:
    """Ideal converters: reading each column or each pair is the ideal chip, to float32
    rounding, on a graph nobody here trained."""
    image, fm, data = unet
    hw = runtime.image_hardware(image)  # type: ignore[arg-type]
    hw = replace(hw, converters=replace(hw.converters, adc=adc))
    ideal = runtime.emulate(image, fm, data, hardware=hw, mode="ideal")  # type: ignore[arg-type]
    tile = runtime.emulate(image, fm, data, hardware=hw, mode="tile")  # type: ignore[arg-type]
    for a, b in zip(tile, ideal, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
