"""End to end through the real CLI on the shipped MobileNet-style example.

Depthwise-separable blocks with BatchNormalization left separate by the exporter and ReLU6 as
``Clip``: every BatchNormalization folds, every Conv and the Gemm go to crossbars, and a
fault-free 16-level chip stays close to the float model.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile import runtime
from rcompile.data import load_data
from tests.conftest import ROOT, rcompile

EXAMPLE = os.path.join(ROOT, "examples", "mobilenet")
MODEL = os.path.join(EXAMPLE, "mobilenet.onnx")
DATA = os.path.join(ROOT, "examples", "mnist", "test.npz")  # the same test split


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("mobilenet"))


def synth(work: str, rate: float) -> str:
    chip = os.path.join(work, f"chip-{rate}.npz")
    r = rcompile("faultmap", "synth", "--like", MODEL, "--rate", str(rate), "--ratio", "5:1",
                 "--seed", "1", "-o", chip)
    assert r.returncode == 0, r.stderr
    return chip


def test_shipped_files_are_small_and_keep_batchnorm_separate() -> None:
    assert os.path.getsize(DATA) <= 1024 * 1024
    model = onnx.load(MODEL)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("BatchNormalization") == 9
    assert sum(a.name == "group" and a.i > 1 for n in model.graph.node for a in n.attribute) == 4


def test_build_reports_what_went_where(work: str) -> None:
    chip = synth(work, 0.0)
    image = os.path.join(work, "clean.rimg")
    r = rcompile("build", MODEL, "--faultmap", chip, "-o", image)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "crossbar: 10 ops" in lines and "digital: 11 ops" in lines
    assert "  not a weight op: Clip x9, GlobalAveragePool, Flatten" in lines
    depthwise = [ln for ln in lines if " 64x1x3x3 " in ln]
    # 64 groups of one output each: packed several to a tile (column strips), not 64 tiles
    assert len(depthwise) == 2 and all(ln.split()[-3] == "64" for ln in depthwise)
    assert all(int(ln.split()[-2]) <= 2 for ln in depthwise)
    r = rcompile("build", MODEL, "--faultmap", chip, "-o", image, "--json")
    report = json.loads(r.stdout)
    assert [c["op_type"] for c in report["crossbar"]] == ["Conv"] * 9 + ["Gemm"]
    assert [c["groups"] for c in report["crossbar"] if c["groups"] > 1] == [16, 32, 64, 64]
    # packed layers share tiles: every used tile holds at least one layer
    assert sum(c["tiles"] for c in report["crossbar"]) >= report["tiles_used"]
    assert {d["op_type"] for d in report["digital"]} == {"Clip", "GlobalAveragePool", "Flatten"}


def test_fault_free_chip_stays_close_to_the_float_model(work: str) -> None:
    chip = synth(work, 0.0)
    image = os.path.join(work, "clean.rimg")
    assert rcompile("build", MODEL, "--faultmap", chip, "-o", image).returncode == 0
    r = rcompile("verify", image, "--faultmap", chip, "--data", DATA, "--model", MODEL, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["accuracy"] == rep["fault_free_accuracy"]
    assert rep["float_accuracy"] >= 0.97
    assert rep["accuracy"] >= rep["float_accuracy"] - 0.01
    # 16 levels, per-output-channel scales: the chip against the float model (not the
    # fault-free chip, which verify compares with and which is the chip itself here)
    img, fm = rimg.read(image), fmap.load(chip)
    data = load_data(DATA, runtime.image_input_specs(img))
    chip_out = runtime.run(runtime.emulated_model(img, runtime.effective_weights(img, fm)), data)
    float_out = runtime.run(onnx.load(MODEL), data)
    a, b = chip_out[0].astype(np.float64), float_out[0].astype(np.float64)
    cosine = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.mean() >= 0.95


def test_faulty_chip_with_the_full_strategy(work: str) -> None:
    chip = synth(work, 0.1)
    image = os.path.join(work, "faulty.rimg")
    r = rcompile("build", MODEL, "--faultmap", chip, "-o", image)
    assert r.returncode == 0, r.stderr
    r = rcompile("verify", image, "--faultmap", chip, "--data", DATA, "--json")
    rep = json.loads(r.stdout)
    assert rep["accuracy"] >= rep["fault_free_accuracy"] - 0.02
    assert rep["output_cosine"] >= 0.95
