"""The verifying runtime and the data loader, on tiny graphs and hand-built images."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from rcompile.data import Dataset, input_specs, load_calib, load_data
from rcompile.device import Cell
from rcompile.errors import BadData, BadImage
from rcompile.faultmap import FaultMap
from rcompile.image import Image, LayerRecord, SliceRecord, TileRecord
from rcompile.ir import LAYOUT_CONV, LAYOUT_KN, WeightOp, from_matrices
from rcompile.runtime import (
    check_match,
    chip_biases,
    effective_weights,
    emulated_model,
    image_input_specs,
    intended_weights,
    run,
    verify,
)

DEV = Cell(levels=16)
L1 = DEV.levels - 1
T, R, C = 2, 40, 16

# --------------------------------------------------------------------------- tiny models


def gemm_graph(k: int = 6, m: int = 4) -> onnx.ModelProto:
    """x[?, k] -> Gemm(W[k, m], b[m]) -> y[?, m]; W and b are not initializers (stripped)."""
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc")
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_graph() -> onnx.ModelProto:
    """x[?, 4, 5, 5] -> Conv(W[6, 2, 3, 3], b[6], group=2, pad 1) -> Flatten -> y[?, 150]."""
    conv = helper.make_node(
        "Conv", ["x", "Wc", "bc"], ["h"], name="conv", group=2, pads=[1, 1, 1, 1]
    )
    flat = helper.make_node("Flatten", ["h"], ["y"], name="flat")
    graph = helper.make_graph(
        [conv, flat],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 150])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


GEMM_OP = WeightOp("fc", "Gemm", "W", "b", (6, 4), LAYOUT_KN, 1)
CONV_OP = WeightOp("conv", "Conv", "Wc", "bc", (6, 2, 3, 3), LAYOUT_CONV, 2)


def layer_record(op: WeightOp, seed: int) -> LayerRecord:
    rng = np.random.default_rng(seed)
    q = rng.integers(-L1, L1 + 1, size=(op.groups, op.rows, op.outs)).astype(np.int8)
    q[rng.random(q.shape) < 0.2] = 0  # a few pruned weights
    scale = rng.uniform(0.01, 0.1, size=(op.groups, op.outs)).astype(np.float32)
    bias = rng.normal(size=op.n_out).astype(np.float32)
    return LayerRecord(op=op, bias=bias, q=q, scale=scale)


# --------------------------------------------------------------------------- hand-built images


def two_column(
    levels: np.ndarray, q: np.ndarray, phys_rows: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> None:
    """Program block ``q [n, m]`` two-column style: w > 0 on G+, w < 0 on G-, idle cell at 0."""
    levels[np.ix_(phys_rows, pos)] = np.maximum(q, 0)
    levels[np.ix_(phys_rows, neg)] = np.maximum(-q, 0)


def make_image(
    graph: onnx.ModelProto,
    layers: list[LayerRecord],
    fm: FaultMap,
    placement: dict[tuple[int, int], tuple[int, np.ndarray, np.ndarray, np.ndarray]] | None = None,
    chip_id: str | None = None,
) -> Image:
    """One slice per (layer, group) holding the whole group matrix.

    ``placement[(layer, group)] = (tile, phys_rows, pos, neg)``; default: layer's groups packed
    in order on tile ``layer``, rows and column pairs in identity order.
    """
    tiles: dict[int, tuple[np.ndarray, list[SliceRecord]]] = {}
    for li, rec in enumerate(layers):
        row0 = col0 = 0
        for g in range(rec.op.groups):
            n, m = rec.op.rows, rec.op.outs
            if placement and (li, g) in placement:
                t, pr, pos, neg = placement[(li, g)]
            else:
                t = li
                pr = np.arange(row0, row0 + n, dtype=np.int32)
                pos = np.arange(col0, col0 + 2 * m, 2, dtype=np.int32)
                neg = pos + 1
                row0, col0 = row0 + n, col0 + 2 * m
            lv, slices = tiles.setdefault(t, (np.zeros((R, C), np.uint8), []))
            two_column(lv, rec.q[g], pr, pos, neg)
            slices.append(
                SliceRecord(
                    layer=li,
                    group=g,
                    rows=np.arange(n, dtype=np.int32),
                    outs=np.arange(m, dtype=np.int32),
                    phys_rows=np.asarray(pr, np.int32),
                    pos=np.asarray(pos, np.int32),
                    neg=np.asarray(neg, np.int32),
                    scale=rec.scale[g].copy(),
                    offset=np.zeros(m, np.float32),
                )
            )
    header = {
        "chip_id": fm.chip_id if chip_id is None else chip_id,
        "faultmap_sha256": fm.digest(),
        "model_sha256": "0" * 64,
        "compiler_version": "test",
        "strategy": "two-column",
        "options": {},
        "device": DEV.to_dict(),
        "geometry": {"tiles": T, "rows": R, "cols": C},
    }
    recs = tuple(TileRecord(t, lv, tuple(sl)) for t, (lv, sl) in sorted(tiles.items()))
    return Image(header, tuple(layers), recs, graph.SerializeToString())


def healthy(chip: str = "chip-A", shape: tuple[int, int, int] = (T, R, C)) -> FaultMap:
    return FaultMap(np.zeros(shape, np.uint8), chip_id=chip)


def with_faults(cells: list[tuple[int, int, int, int]], chip: str = "chip-A") -> FaultMap:
    faults = np.zeros((T, R, C), np.uint8)
    for t, r, c, state in cells:
        faults[t, r, c] = state
    return FaultMap(faults, chip_id=chip)


def dataset(specs_model: onnx.ModelProto, n: int, seed: int = 0, labels: bool = False) -> Dataset:
    rng = np.random.default_rng(seed)
    inputs = {}
    for s in input_specs(specs_model):
        shape = [n] + [d for d in (s.shape or ())[1:] if isinstance(d, int)]
        inputs[s.name] = rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, 4, size=n).astype(np.int64) if labels else None
    return Dataset(inputs=inputs, labels=y, n=n)


def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, groups: int) -> np.ndarray:
    """Plain numpy grouped 3x3 conv, stride 1, pad 1 (NCHW)."""
    n, cin, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    og = cout // groups
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, cout, h, wd))
    for g in range(groups):
        xg = xp[:, g * cg : (g + 1) * cg]
        wg = w[g * og : (g + 1) * og].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                y[:, g * og : (g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", xg[:, :, i : i + h, j : j + wd], wg[:, :, i, j]
                )
    return y + b[None, :, None, None]


# --------------------------------------------------------------------------- fault-free chip


@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_fault_free_chip_realises_intended_weights_exactly(kind: str) -> None:
    graph, op = (gemm_graph(), GEMM_OP) if kind == "gemm" else (conv_graph(), CONV_OP)
    fm = healthy()
    image = make_image(graph, [layer_record(op, 1)], fm)
    eff, want = effective_weights(image, fm), intended_weights(image)
    assert len(eff) == len(want) == 1
    assert eff[0].dtype == np.float32 and eff[0].shape == op.shape
    assert np.array_equal(eff[0], want[0])

    report = verify(image, fm, dataset(graph, 16))
    assert report.agreement == 1.0
    assert report.output_cosine == 1.0
    assert report.relative_output_error == 0.0
    assert report.layers[0].weight_rel_error == 0.0 and report.layers[0].stuck_cells == 0
    assert report.accuracy is None and report.fault_free_accuracy is None
    json.dumps(report.to_dict())


def test_emulated_gemm_equals_numpy_matmul() -> None:
    fm = healthy()
    rec = layer_record(GEMM_OP, 2)
    image = make_image(gemm_graph(), [rec], fm)
    ds = dataset(gemm_graph(), 33)
    (w,) = intended_weights(image)
    (y,) = run(emulated_model(image, [w]), ds, batch_size=8)  # several batches + a ragged one
    want = ds.inputs["x"].astype(np.float64) @ w.astype(np.float64) + rec.bias
    assert y.shape == (33, 4)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_emulated_grouped_conv_equals_numpy_conv() -> None:
    fm = healthy()
    rec = layer_record(CONV_OP, 3)
    image = make_image(conv_graph(), [rec], fm)
    ds = dataset(conv_graph(), 5)
    (w,) = effective_weights(image, fm)
    (y,) = run(emulated_model(image, [w]), ds)
    want = conv_ref(ds.inputs["x"], w, rec.bias, groups=2).reshape(5, -1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- stuck cells


@pytest.mark.parametrize("side", ["pos", "neg"])
@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_sa1_cell_moves_exactly_its_weight(kind: str, side: str) -> None:
    graph, op = (gemm_graph(), GEMM_OP) if kind == "gemm" else (conv_graph(), CONV_OP)
    rec = layer_record(op, 4)
    clean = healthy()
    image = make_image(graph, [rec], clean)
    g, i, j = op.groups - 1, 2, 1  # last group, so packing offsets are exercised
    (sl,) = [s for s in image.tiles[0].slices if s.group == g]
    r, c = int(sl.phys_rows[i]), int((sl.pos if side == "pos" else sl.neg)[j])
    level = int(image.tiles[0].levels[r, c])
    fm = with_faults([(0, r, c, 2)])
    image = replace(image, header={**image.header, "faultmap_sha256": fm.digest()})

    (eff,) = effective_weights(image, fm)
    (want,) = intended_weights(image)
    sign = 1.0 if side == "pos" else -1.0
    expected = np.zeros((op.groups, op.rows, op.outs), np.float64)
    expected[g, i, j] = sign * float(rec.scale[g, j]) * (L1 - level)
    delta = eff.astype(np.float64) - want.astype(np.float64)
    np.testing.assert_allclose(delta, from_matrices(op, expected), rtol=1e-6, atol=1e-7)
    assert np.count_nonzero(delta) == (0 if level == L1 else 1)

    report = verify(image, fm, dataset(graph, 4))
    assert report.layers[0].stuck_cells == 1


def test_fault_on_unused_cell_does_no_harm() -> None:
    fm = with_faults([(1, R - 1, C - 1, 2), (0, R - 1, 0, 1)])
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 5)], fm)
    assert np.array_equal(effective_weights(image, fm)[0], intended_weights(image)[0])


def test_measured_stuck_conductance_gives_fractional_level() -> None:
    rec = layer_record(GEMM_OP, 6)
    faults = np.zeros((T, R, C), np.uint8)
    faults[0, 0, 1] = 2  # neg column of (row 0, out 0)
    g = np.full((T, R, C), np.nan, np.float32)
    g[0, 0, 1] = DEV.g_min_us + 7.5 * DEV.step_us
    fm = FaultMap(faults, stuck_g=g, chip_id="chip-A")
    image = make_image(gemm_graph(), [rec], fm)
    lv_neg = float(image.tiles[0].levels[0, 1])
    (eff,) = effective_weights(image, fm)
    (want,) = intended_weights(image)
    assert eff[0, 0] - want[0, 0] == pytest.approx(-rec.scale[0, 0] * (7.5 - lv_neg), rel=1e-5)


# --------------------------------------------------------------------------- permutation property


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_permuted_placement_gives_identical_outputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    graph, fm = conv_graph(), healthy()
    rec = layer_record(CONV_OP, 7)
    base = make_image(graph, [rec], fm)
    # each group on a random tile, on random distinct rows and column pairs of that tile
    rows = {t: rng.permutation(R) for t in range(T)}
    cols = {t: rng.permutation(C) for t in range(T)}
    free = {t: (0, 0) for t in range(T)}
    placement = {}
    for g in range(CONV_OP.groups):
        n, m = CONV_OP.rows, CONV_OP.outs
        t = int(rng.integers(T))
        r0, c0 = free[t]
        pr, pair = rows[t][r0 : r0 + n], cols[t][c0 : c0 + 2 * m]
        placement[(0, g)] = (t, pr, pair[:m], pair[m:])
        free[t] = (r0 + n, c0 + 2 * m)
    moved = make_image(graph, [rec], fm, placement)
    ds = dataset(graph, 3, seed=seed % 1000)
    y0 = run(emulated_model(base, effective_weights(base, fm)), ds)
    y1 = run(emulated_model(moved, effective_weights(moved, fm)), ds)
    assert all(np.array_equal(a, b) for a, b in zip(y0, y1, strict=True))


# --------------------------------------------------------------------------- image vs fault map


def test_chip_id_mismatch_is_bad_image() -> None:
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 8)], healthy("chip-A"))
    other = FaultMap(np.zeros((T, R, C), np.uint8), chip_id="chip-B", source="b.npz")
    with pytest.raises(BadImage, match=r"image a\.rimg was compiled for chip chip-A .* b\.npz"):
        check_match(image, other, image_source="a.rimg")


def test_geometry_mismatch_is_bad_image() -> None:
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 8)], healthy())
    small = FaultMap(np.zeros((1, R, C), np.uint8), chip_id="chip-A", source="small.npz")
    with pytest.raises(BadImage, match=r"a\.rimg.*2x40x16.*small\.npz is 1x40x16"):
        verify(image, small, dataset(gemm_graph(), 2), image_source="a.rimg")


def test_remeasured_map_needs_permission() -> None:
    rec = layer_record(GEMM_OP, 9)
    image = make_image(gemm_graph(), [rec], healthy())
    aged = with_faults([(0, 0, 0, 2)])  # same chip id, new fault
    with pytest.raises(BadImage, match="sha256"):
        check_match(image, aged)
    assert check_match(image, aged, allow_remeasured=True) is True
    report = verify(image, aged, dataset(gemm_graph(), 8, labels=True), allow_remeasured=True)
    assert report.remeasured and report.chip_id == "chip-A"
    assert report.layers[0].stuck_cells == 1


def test_out_of_range_slice_is_bad_image() -> None:
    fm = healthy()
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 10)], fm)
    sl = image.tiles[0].slices[0]
    bad = replace(sl, pos=sl.pos + C)
    image = replace(image, tiles=(replace(image.tiles[0], slices=(bad,)),))
    with pytest.raises(BadImage, match="pos out of range"):
        effective_weights(image, fm)


# --------------------------------------------------------------------------- report


def test_report_with_labels_and_float_model() -> None:
    fm = with_faults([(0, 1, 0, 2), (0, 3, 3, 2), (0, 5, 6, 1)])
    rec = layer_record(GEMM_OP, 11)
    image = make_image(gemm_graph(), [rec], fm)
    float_model = gemm_graph()
    w_float = intended_weights(image)[0] + np.float32(0.001)
    float_model.graph.initializer.extend(
        [numpy_helper.from_array(w_float, "W"), numpy_helper.from_array(rec.bias, "b")]
    )
    ds = dataset(gemm_graph(), 64, labels=True)
    rep = verify(image, fm, ds, reference_model=float_model)
    d = json.loads(json.dumps(rep.to_dict()))
    for key in ("accuracy", "fault_free_accuracy", "float_accuracy", "agreement"):
        assert isinstance(d[key], float) and 0.0 <= d[key] <= 1.0
    assert d["n_samples"] == 64 and d["chip_id"] == "chip-A"
    assert d["layers"][0]["node"] == "fc" and d["layers"][0]["weight_rel_error"] > 0
    assert d["relative_output_error"] > 0 and d["output_cosine"] < 1.0
    assert d["layers"][0]["stuck_cells"] == 3
    assert set(d["timing"]) >= {"reference_s", "emulated_s"}


def test_runtime_does_not_import_passes() -> None:
    # every module of the rcompile.runtime package, found by walking it (a new module is covered)
    code = (
        "import importlib, pkgutil, sys, rcompile.runtime as v\n"
        "mods = [m.name for m in pkgutil.walk_packages(v.__path__, 'rcompile.runtime.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "assert {'rcompile.runtime.weights', 'rcompile.runtime.tilemode.circuit'} <= set(mods)\n"
        "bad = [m for m in sys.modules if m == 'passes' or m.startswith(('rcompile.passes', "
        "'passes.'))]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --------------------------------------------------------------------------- data loader

CONV_SPECS = input_specs(
    helper.make_model(
        helper.make_graph(
            [],
            "specs",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
            [],
        )
    )
)


def save(tmp_path: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


def x(n: int = 3, dtype: type = np.float32) -> np.ndarray:
    return np.zeros((n, 1, 4, 4), dtype)


def test_input_specs_skip_initializers_and_keep_dynamic_dims() -> None:
    m = gemm_graph()
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [6, 4]))
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((6, 4), np.float32), "W"))
    (spec,) = input_specs(m)
    assert spec.name == "x" and spec.dtype == np.float32 and spec.shape_text() == "(?, 6)"


def test_load_data_accepts_good_file_and_casts_float64(tmp_path: Path) -> None:
    p = save(tmp_path, x=x(5, np.float64), labels=np.arange(5))
    ds = load_data(p, CONV_SPECS)
    assert ds.n == 5 and ds.inputs["x"].dtype == np.float32
    assert ds.labels is not None and ds.labels.tolist() == [0, 1, 2, 3, 4]
    assert load_calib(p, CONV_SPECS).labels is None


@pytest.mark.parametrize(
    "arrays, pattern",
    [
        ({"y": x()}, r"model input 'x' is missing; the file has keys \['y'\]"),
        ({"x": x(), "extra": x()}, r"unexpected array\(s\) \['extra'\]"),
        ({"x": np.zeros((3, 4, 4), np.float32)}, r"'x' has shape \(3, 4, 4\).*\(\?, 1, 4, 4\)"),
        ({"x": np.zeros((3, 2, 4, 4), np.float32)}, r"expected \(\?, 1, 4, 4\) \(axis 1 must be 1"),
        ({"x": x(3), "labels": np.arange(4)}, r"'labels' has 4 entries .* 3 samples"),
        ({"x": x(3), "labels": np.zeros(3, np.float32)}, r"'labels' has dtype float32"),
        ({"x": x(0)}, r"holds 0 samples"),
        ({"x": x(3, np.int64)}, r"'x' has dtype int64; expected float32"),
        ({"x": np.full((2, 1, 4, 4), np.nan, np.float32)}, r"'x' has 32 NaN/Inf"),
    ],
)
def test_load_data_rejects(tmp_path: Path, arrays: dict[str, np.ndarray], pattern: str) -> None:
    p = save(tmp_path, "bad.npz", **arrays)
    with pytest.raises(BadData, match=pattern) as e:
        load_data(p, CONV_SPECS)
    assert str(e.value).startswith(str(p))


def test_load_data_rejects_inconsistent_sample_counts(tmp_path: Path) -> None:
    two = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2]),
    ]
    specs = input_specs(helper.make_model(helper.make_graph([], "two", two, [])))
    p = save(tmp_path, a=np.zeros((3, 2), np.float32), b=np.zeros((4, 2), np.float32))
    with pytest.raises(BadData, match=r"data\.npz: input 'b' has 4 samples but 'a' has 3"):
        load_data(p, specs)


def test_load_data_rejects_missing_and_non_npz_files(tmp_path: Path) -> None:
    with pytest.raises(BadData, match=r"nope\.npz: no such data file"):
        load_data(tmp_path / "nope.npz", CONV_SPECS)
    txt = tmp_path / "data.txt"
    txt.write_text("1,2,3\n")
    with pytest.raises(BadData, match=r"data\.txt: not an \.npz archive"):
        load_data(txt, CONV_SPECS)


def test_image_input_specs_ignore_crossbar_names_listed_as_inputs() -> None:
    graph = gemm_graph()  # an old-style graph that lists the stripped weight as an input
    graph.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [6, 4]))
    fm = healthy()
    image = make_image(graph, [layer_record(GEMM_OP, 12)], fm)
    assert [s.name for s in image_input_specs(image)] == ["x"]
    assert verify(image, fm, dataset(gemm_graph(), 4)).agreement == 1.0


def test_slice_offsets_add_to_the_chip_bias_only() -> None:
    fm = healthy()
    rec = layer_record(CONV_OP, 13)
    image = make_image(conv_graph(), [rec], fm)
    sl = image.tiles[0].slices[1]  # group 1: outputs 3..5 of the layer
    off = np.array([0.0, 0.25, -0.5], np.float32)
    moved = replace(image.tiles[0], slices=(image.tiles[0].slices[0], replace(sl, offset=off)))
    image = replace(image, tiles=(moved,))
    (b,) = chip_biases(image)
    np.testing.assert_allclose(b - rec.bias, [0, 0, 0, 0, 0.25, -0.5], atol=1e-6)
    ds = dataset(conv_graph(), 2)
    (w,) = intended_weights(image)
    (ref,) = run(emulated_model(image, [w]), ds)
    (emu,) = run(emulated_model(image, [w], [b]), ds)
    shift = (emu - ref).reshape(2, 6, 25)
    np.testing.assert_allclose(
        shift, np.broadcast_to(b - rec.bias, (2, 25, 6)).transpose(0, 2, 1), atol=1e-6
    )
    err = verify(image, fm, ds).relative_output_error
    assert err is not None and err > 0


def test_default_report_is_the_ideal_device_with_energy_and_timing() -> None:
    fm = healthy()
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 1)], fm)
    rep = verify(image, fm, dataset(gemm_graph(), 8))
    assert (rep.mode, rep.device, rep.noise_seed) == ("ideal", "ideal", 0)
    assert rep.relative_output_error == 0.0
    assert rep.energy_per_inference_j is not None and rep.energy_per_inference_j > 0
    assert rep.latency_per_inference_s is not None and rep.latency_per_inference_s > 0
    assert [c["node"] for c in rep.energy] == ["fc", "<digital periphery>"]
    assert rep.timing["emulation_ratio"] is not None and rep.timing["graph_s"] is not None
    json.dumps(rep.to_dict())


def test_timing_reports_setup_and_both_ratios() -> None:
    fm = healthy()
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 1)], fm)
    t = verify(image, fm, dataset(gemm_graph(), 8)).timing
    keys = ("weights_s", "graph_s", "setup_s", "reference_s", "emulated_s", "emulation_ratio",
            "total_ratio")
    assert all(isinstance(t[k], float) and t[k] >= 0 for k in keys)
    assert t["float_s"] is None  # no float model given
    assert t["setup_s"] == pytest.approx(t["weights_s"] + t["graph_s"])
    assert t["emulation_ratio"] == pytest.approx(t["emulated_s"] / t["reference_s"])
    assert t["total_ratio"] == pytest.approx((t["setup_s"] + t["emulated_s"]) / t["reference_s"])


def test_run_without_graph_optimisations_computes_the_same() -> None:
    fm = healthy()
    image = make_image(conv_graph(), [layer_record(CONV_OP, 2)], fm)
    model = emulated_model(image, intended_weights(image))
    ds = dataset(conv_graph(), 16)
    (a,), (b,) = run(model, ds), run(model, ds, optimize=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


# --------------------------------------------------------------------------- batch declarations


def _mlp(batch: object) -> onnx.ModelProto:
    """x[batch, 3] -> MatMul(W[3, 2]) -> y, W an initializer (runs as it is)."""
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])], [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


@pytest.mark.parametrize("batch", [-1, 0, None, "N", "p2o.DynamicDimension.0"])
def test_non_positive_and_symbolic_batch_dims_are_free(batch: object) -> None:
    model = _mlp(batch)
    (spec,) = input_specs(model)
    assert spec.fixed_batch is None and spec.shape_text() == "(?, 3)"
    xs = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    out = run(model, Dataset({"x": xs}, None, 7), batch_size=3)[0]
    np.testing.assert_allclose(out, xs @ np.arange(6, dtype=np.float32).reshape(3, 2), rtol=1e-6)


@pytest.mark.parametrize("fixed, n", [(4, 7), (1, 5), (8, 3), (2, 6)])
def test_a_fixed_batch_runs_any_sample_count(fixed: int, n: int, tmp_path: Path) -> None:
    model = _mlp(fixed)
    xs = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32)
    p = save(tmp_path, x=xs)
    data = load_data(p, input_specs(model))  # no multiple of the batch needed
    out = run(model, data, batch_size=256)[0]
    assert out.shape == (n, 2)
    np.testing.assert_allclose(out, xs @ np.arange(6, dtype=np.float32).reshape(3, 2), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), step=st.integers(1, 12), fixed=st.one_of(st.none(), st.integers(1, 9)),
       first=st.integers(0, 45))
def test_batches_cover_every_sample_once(n: int, step: int, fixed: int | None, first: int) -> None:
    from rcompile.data import batches, unpad

    xs = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    got, bounds = [], []
    for lo, hi, feed in batches({"x": xs}, n, step, fixed, first):
        assert feed["x"].shape[0] == (fixed or hi - lo) and 0 < hi - lo <= (fixed or step)
        np.testing.assert_array_equal(feed["x"][hi - lo:], feed["x"][hi - lo - 1:hi - lo]
                                      .repeat(feed["x"].shape[0] - (hi - lo), 0))
        got.append(unpad(feed["x"], hi - lo, fixed))
        bounds.append((lo, hi))
    np.testing.assert_array_equal(np.concatenate(got), xs)
    if not fixed and 0 < first < n:  # no batch straddles ``first``
        assert all(not lo < first < hi for lo, hi in bounds)


@pytest.mark.parametrize("mode", ["ideal", "tile"])
def test_a_short_fixed_batch_counts_its_padding_once(mode: str, tmp_path: Path) -> None:
    """A model fixed at batch 4 on 7 samples runs them as 8, the last repeated: its report is
    the free-batch model's on those 8 samples (energy per inference included), its outputs the
    first 7."""
    from rcompile import api
    from rcompile import faultmap as fmap
    from rcompile.data import dataset_from_arrays
    from rcompile.runtime import emulate
    from tests.test_opsets import FINE, cnn

    xs = np.random.default_rng(3).normal(size=(7, 1, 8, 8)).astype(np.float32)
    runs = {}
    for batch, x8 in (("fixed", xs), ("N", np.concatenate([xs, xs[-1:]]))):
        path = str(tmp_path / f"{batch}.onnx")
        onnx.save(cnn(11, batch), path)
        plan, _ = api.make_plan(path)
        fm = fmap.synth(api.spare_tiles(plan.tiles_needed(), 0.1), 128, 128, 0.02, (5, 1), 2)
        image = api.build(plan, fm).image
        data = dataset_from_arrays({"x": x8}, image_input_specs(image))
        hw = FINE if mode == "tile" else None
        runs[batch] = (verify(image, fm, data, hardware=hw, mode=mode),
                       emulate(image, fm, data, hardware=hw, mode=mode)[0])
    (fixed, out_fixed), (free, out_free) = runs["fixed"], runs["N"]
    assert fixed.n_samples == 7 and out_fixed.shape == (7, 10)
    np.testing.assert_allclose(out_fixed, out_free[:7], rtol=1e-5, atol=1e-6)
    assert fixed.energy_per_inference_j == pytest.approx(free.energy_per_inference_j, rel=1e-5)
