"""Graphs as exporters of every era write them, opset 7 to the newest, with every way of
declaring the batch axis, through build and verify in both emulation modes: a fault-free chip
computes what the float model does."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile import runtime
from rcompile.data import dataset_from_arrays, input_specs
from rcompile.device import PRESETS, Converters
from rcompile.runtime import tilemode
from tests.conftest import rcompile

NEWEST = onnx.defs.onnx_opset_version()
OPSETS = tuple(sorted({7, 8, 9, 10, 11, 12, 13, 17, 21, 22, NEWEST}))
BATCHES = ("fixed", "N", "p2o.DynamicDimension.0", -1, 0, "absent", "no shape")
"""How the batch axis is declared: ``fixed`` at 4 (the data's 7 samples leave a short last
batch), a symbolic name, ``-1`` or ``0`` (paddle2onnx, old TF converters), a dimension with
neither value nor name, or an input without any shape."""
SAMPLES = 7
FINE = replace(
    PRESETS["ideal"], name="fine",
    converters=Converters(adc_bits=10, dac_bits=8, adc_range="dynamic", dac_range="dynamic"),
)
"""Exact cells and fine converters whose ranges follow every inference: tile mode's roundings
without neurosim's programming error and read noise, so the chip must match the float model."""


def _value_info(name: str, batch: object, rest: list[int]) -> onnx.ValueInfoProto:
    if batch == "no shape":
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    b = 4 if batch == "fixed" else None if batch == "absent" else batch
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [b, *rest])


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], opset: int, batch: object,
           x_rest: list[int], y_rest: list[int]) -> onnx.ModelProto:
    """A model stamped as an exporter of ``opset``'s time would: its IR version, and at IR 3
    every initializer also listed as a graph input."""
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    inputs = [_value_info("x", batch, x_rest)]
    ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if ir < 4:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in tensors]
    graph = helper.make_graph(nodes, f"opset{opset}", inputs, [_value_info("y", batch, y_rest)],
                              tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def _const(name: str, value: np.ndarray, opset: int, inits: dict[str, np.ndarray]
           ) -> list[onnx.NodeProto]:
    """A ``Constant`` node (an initializer for an integer before opset 9: Constant-1 is float)."""
    if opset < 9 and value.dtype != np.float32:
        inits[name] = value
        return []
    return [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))]


def _axes(op: str, x: str, y: str, axes: list[int], opset: int) -> list[onnx.NodeProto]:
    """Unsqueeze/Squeeze: axes an attribute before opset 13, an input from 13."""
    if opset < 13:
        return [helper.make_node(op, [x], [y], axes=axes)]
    return [*_const(y + "_axes", np.array(axes, np.int64), opset, {}),
            helper.make_node(op, [x, y + "_axes"], [y])]


def cnn(opset: int, batch: object, seed: int = 0) -> onnx.ModelProto:
    """Conv + BatchNormalization + Clip(0, 6) + MaxPool, a PyTorch ``view(x.size(0), -1)``
    (Shape, Gather, Unsqueeze, Concat, Reshape), Gemm + Relu + Dropout + Gemm: ``[B, 1, 8, 8]
    -> [B, 10]``, in the op forms of ``opset`` (BN ``spatial``, Clip and Dropout attributes)."""
    r = np.random.default_rng(seed)
    f32 = np.float32
    inits = {
        "w1": r.normal(0, 0.4, (4, 1, 3, 3)).astype(f32), "b1": r.normal(0, 0.1, 4).astype(f32),
        "gamma": r.uniform(0.5, 1.5, 4).astype(f32), "beta": r.normal(0, 0.2, 4).astype(f32),
        "mean": r.normal(0, 0.2, 4).astype(f32), "var": r.uniform(0.5, 2, 4).astype(f32),
        "w2": r.normal(0, 0.2, (16, 64)).astype(f32), "b2": r.normal(0, 0.1, 16).astype(f32),
        "w3": r.normal(0, 0.3, (10, 16)).astype(f32), "b3": r.normal(0, 0.1, 10).astype(f32),
    }
    bn = {"spatial": 1} if opset < 9 else {}
    clip = (helper.make_node("Clip", ["n"], ["c6"], min=0.0, max=6.0) if opset < 11 else
            helper.make_node("Clip", ["n", "lo", "hi"], ["c6"]))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"],
                         epsilon=1e-5, **bn),
        *([] if opset < 11 else [*_const("lo", np.array(0, f32), opset, inits),
                                 *_const("hi", np.array(6, f32), opset, inits)]),
        clip,
        helper.make_node("MaxPool", ["c6"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p"], ["ps"]),
        *_const("zero", np.array(0, np.int64), opset, inits),
        helper.make_node("Gather", ["ps", "zero"], ["n0"], axis=0),
        *_axes("Unsqueeze", "n0", "n1", [0], opset),
        *_const("minus1", np.array([-1], np.int64), opset, inits),
        helper.make_node("Concat", ["n1", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["p", "flat_shape"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["gr"]),
        helper.make_node("Dropout", ["gr"], ["d"], **({"ratio": 0.5} if opset < 12 else {})),
        helper.make_node("Gemm", ["d", "w3", "b3"], ["y"], transB=1),
    ]
    return _model(nodes, inits, opset, batch, [1, 8, 8], [10])


def mlp(opset: int, batch: object, seed: int = 1) -> onnx.ModelProto:
    """Slice (attributes before opset 10), Unsqueeze, MatMul + Add + Relu + MatMul + Add on a
    3-D activation, Squeeze: ``[B, 20] -> [B, 5]``."""
    r = np.random.default_rng(seed)
    f32 = np.float32
    inits = {"w1": r.normal(0, 0.3, (16, 12)).astype(f32), "b1": r.normal(0, 0.1, 12).astype(f32),
             "w2": r.normal(0, 0.3, (12, 5)).astype(f32), "b2": r.normal(0, 0.1, 5).astype(f32)}
    if opset < 10:
        head = [helper.make_node("Slice", ["x"], ["s"], axes=[1], starts=[0], ends=[16])]
    else:
        head = [*_const("st", np.array([0], np.int64), opset, inits),
                *_const("en", np.array([16], np.int64), opset, inits),
                *_const("ax", np.array([1], np.int64), opset, inits),
                helper.make_node("Slice", ["x", "st", "en", "ax"], ["s"])]
    nodes = [
        *head,
        *_axes("Unsqueeze", "s", "u", [1], opset),
        helper.make_node("MatMul", ["u", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["a2"]),
        *_axes("Squeeze", "a2", "y", [1], opset),
    ]
    return _model(nodes, inits, opset, batch, [20], [5])


NETS = {"cnn": (cnn, (1, 8, 8)), "mlp": (mlp, (20,))}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, 1) / norms))


def _cli(*args: str) -> str:
    res = rcompile(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout


CASES = [(net, opset, BATCHES[(i + 3 * j) % len(BATCHES)])
         for j, net in enumerate(NETS) for i, opset in enumerate(OPSETS)]
CASES += [("cnn", 11, b) for b in BATCHES] + [("mlp", 9, b) for b in BATCHES]
CASES = sorted(set(CASES), key=lambda c: (c[0], c[1], str(c[2])))


DEVICES = (("ideal", None, "ideal"), ("fine", FINE, "tile"),
           ("neurosim", PRESETS["neurosim"], "tile"))


def _chip(tmp: Path, model: onnx.ModelProto, x: np.ndarray) -> tuple[str, str, str]:
    """Model, fault-free chip and image files, through the CLI: synth, build, and verify in
    ideal mode and in tile mode (neurosim)."""
    m, c, img, d = (str(tmp / f) for f in ("m.onnx", "c.npz", "c.rimg", "d.npz"))
    onnx.save(model, m)
    np.savez(d, x=x)
    _cli("faultmap", "synth", "--like", m, "--rate", "0", "--seed", "1", "-o", c)
    _cli("build", m, "--faultmap", c, "-o", img)
    for extra in (["--mode", "ideal"], ["--device", "neurosim"]):
        rep = json.loads(_cli("verify", img, "--faultmap", c, "--data", d, "--json", *extra))
        assert rep["n_samples"] == SAMPLES
        assert rep["mode"] == ("ideal" if "ideal" in extra else "tile")
    return m, c, img


def _emulated(img: str, c: str, x: np.ndarray) -> dict[str, np.ndarray]:
    image, fm = rimg.read(img), fmap.load(c)
    data = dataset_from_arrays({"x": x}, runtime.image_input_specs(image))
    return {name: runtime.emulate(image, fm, data, hardware=hw, mode=mode)[0]
            for name, hw, mode in DEVICES}


def _data(net: str) -> np.ndarray:
    return np.random.default_rng(7).normal(0, 1, (SAMPLES, *NETS[net][1])).astype(np.float32)


@functools.cache
def _reference(net: str) -> dict[str, np.ndarray]:
    """The emulated outputs of ``net`` at opset 13 with a symbolic batch."""
    with tempfile.TemporaryDirectory() as tmp:
        _, c, img = _chip(Path(tmp), NETS[net][0](13, "N"), _data(net))
        return _emulated(img, c, _data(net))


@pytest.mark.parametrize(("net", "opset", "batch"), CASES)
def test_build_and_verify_every_opset_and_batch(tmp_path: Path, net: str, opset: int,
                                                batch: object) -> None:
    model = NETS[net][0](opset, batch)
    if batch != "no shape":  # (the ONNX checker wants a shape on every graph input)
        onnx.checker.check_model(model, full_check=True)
    x = _data(net)
    _, c, img = _chip(tmp_path, model, x)
    flt = runtime.run(model, dataset_from_arrays({"x": x}, input_specs(model)))[0]
    assert flt.shape[0] == SAMPLES
    got, ref = _emulated(img, c, x), _reference(net)
    same_draws = tilemode.has_kernel("RandomUniformLike", opset)
    for name, out in got.items():
        assert out.shape == flt.shape
        if name == "neurosim" and (batch == "fixed" or not same_draws):
            continue  # noise draws are picked per batch, and by other generators from opset 22
        # the same chip computes the same numbers whatever the opset and batch declaration
        assert np.array_equal(out, ref[name]), (name, float(np.abs(out - ref[name]).max()))
    assert cosine(got["ideal"], flt) >= 0.99
    assert cosine(got["fine"], flt) >= 0.99


@pytest.mark.parametrize(("domain", "version", "says"), [
    ("", 99, "opset 99 of domain 'ai.onnx'"), ("ai.onnx.ml", 99, "opset 99 of domain 'ai.onnx.ml'"),
    ("", 6, "ONNX opset 6; expected opset 7 or newer"), ("ir", 99, "IR version: 99"),
])
def test_a_model_onnxruntime_cannot_run_is_refused_at_build(tmp_path: Path, domain: str,
                                                            version: int, says: str) -> None:
    model = cnn(13, "N")
    if domain == "ir":
        model.ir_version = version
    elif domain:
        model.opset_import.append(helper.make_opsetid(domain, version))
    else:
        model.opset_import[0].version = version
    m, c, img = (str(tmp_path / f) for f in ("m.onnx", "c.npz", "c.rimg"))
    onnx.save(model, m)
    fmap.save(fmap.synth(8, 128, 128, 0.0, seed=1), c)
    res = rcompile("build", m, "--faultmap", c, "-o", img)
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.startswith(f"rcompile: error: {m}: ") and res.stderr.count("\n") == 1
    assert says in res.stderr, res.stderr
    assert not os.path.exists(img)


@pytest.mark.parametrize(("net", "opset", "batch"), [("mlp", 7, -1), ("cnn", 9, "fixed")])
def test_sweep_and_provision_run_old_opsets(tmp_path: Path, net: str, opset: int,
                                            batch: object) -> None:
    m, d, lot = str(tmp_path / "m.onnx"), str(tmp_path / "d.npz"), tmp_path / "lot"
    onnx.save(NETS[net][0](opset, batch), m)
    np.savez(d, x=_data(net), labels=np.arange(SAMPLES) % 5)
    rep = json.loads(_cli("sweep", m, "--data", d, "--rates", "0.05", "--seeds", "1",
                          "--ratios", "5:1", "--strategies", "full", "--device", "neurosim",
                          "--json"))
    assert rep["n_samples"] == SAMPLES and len(rep["points"]) == 1
    lot.mkdir()
    for seed in (1, 2):
        _cli("faultmap", "synth", "--like", m, "--rate", "0.05", "--seed", str(seed),
             "--chip-id", f"c{seed}", "-o", str(lot / f"c{seed}.npz"))
    out = tmp_path / "images"
    _cli("provision", m, "--faultmaps", str(lot), "-o", str(out), "--verify-data", d,
         "--device", "neurosim")
    lines = [json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()]
    assert [(x["status"], x["mode"]) for x in lines] == [("ok", "tile")] * 2, lines


@pytest.mark.parametrize("mode", ["ideal", "tile"])
def test_a_free_batch_fixed_at_one_inside_runs_sample_by_sample(mode: str, tmp_path: Path) -> None:
    """Old PyTorch exports declare a free batch but flatten with ``Reshape(x, [1, -1])``: the
    graph runs one sample at a time only. Calibration, verify and the float model all run it so,
    with nothing from onnxruntime on stderr."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1, name="fc")]
    inits = {"w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
             "b": rng.normal(size=4).astype(np.float32), "shape": np.array([1, -1], np.int64),
             "wg": rng.normal(size=(5, 64)).astype(np.float32),
             "bg": rng.normal(size=5).astype(np.float32)}
    model = _model(nodes, inits, 13, "N", [1, 6, 6], [5])
    path, data = str(tmp_path / "flat1.onnx"), str(tmp_path / "d.npz")
    onnx.save(model, path)
    x = rng.normal(size=(SAMPLES, 1, 6, 6)).astype(np.float32)
    np.savez(data, x=x, labels=rng.integers(0, 5, SAMPLES))
    chip, image = str(tmp_path / "chip.npz"), str(tmp_path / "chip.rimg")
    assert rcompile("faultmap", "synth", "--like", path, "--rate", "0", "-o", chip).returncode == 0
    built = rcompile("build", path, "--faultmap", chip, "--calib", data, "-o", image)
    assert built.returncode == 0 and built.stderr == "", built.stderr
    device: list[str] = []
    if mode == "tile":  # the FINE device as a file: tile mode's roundings, exact cells
        dev = tmp_path / "fine.toml"
        dev.write_text('name = "fine"\nbase = "ideal"\n[converters]\nadc_bits = 10\n'
                       'dac_bits = 8\nadc_range = "dynamic"\ndac_range = "dynamic"\n')
        device = ["--device", str(dev), "--mode", "tile"]
    rep = rcompile("verify", image, "--faultmap", chip, "--data", data, "--model", path,
                   "--json", *device)
    assert rep.returncode == 0 and rep.stderr == "", rep.stderr
    doc = json.loads(rep.stdout)
    assert doc["n_samples"] == SAMPLES and doc["output_cosine"] > 0.99, doc
