"""Third-party graphs of the compatibility matrix (docs/compatibility.md) through the real CLI.

Each graph in ``tests/data/compat/`` was exported by ``benchmarks/compat.py`` (PyTorch's legacy
and dynamo exporters, skl2onnx) from an architecture nobody here wrote, with a few of its random
input samples beside it. Every one must go through ``faultmap synth`` -> ``build`` -> ``verify``
with the default options, and the fault-free chip must stay within cosine 0.99 of onnxruntime on
the float graph (16-level cells).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile import runtime
from rcompile.cli import cli
from rcompile.data import load_data
from tests.conftest import ROOT

DATA = os.path.join(ROOT, "tests", "data", "compat")

GRAPHS = {  # graph -> op types that must reach a crossbar
    "lstm_classifier-legacy11-dynamic": {"Gemm"},
    "gru_classifier-dynamo18-fixed": {"Gemm"},
    "transformer_encoder-legacy14-dynamic": {"MatMul", "Gemm"},
    "unet_convtranspose-legacy17-fixed": {"Conv", "ConvTranspose"},
    "sk_mlp_classifier-skl2onnx13-dynamic": {"MatMul"},
    "sk_logistic_regression-skl2onnx11-dynamic": {"LinearClassifier"},
}


def _invoke(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, f"rcompile {' '.join(args)}: {res.output} {res.exception!r}"
    return res.output


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.mean(np.sum(a64 * b64, axis=1) / np.where(den == 0, 1.0, den)))


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_graph_builds_verifies_and_stays_close_to_float(name: str, tmp_path: str) -> None:
    model, data = os.path.join(DATA, name + ".onnx"), os.path.join(DATA, name + ".npz")
    chip, image = os.path.join(tmp_path, "chip.npz"), os.path.join(tmp_path, "chip.rimg")
    _invoke("faultmap", "synth", "--like", model, "--rate", "0", "-o", chip)
    report = json.loads(_invoke("build", model, "--faultmap", chip, "-o", image, "--json"))
    assert GRAPHS[name] <= {c["op_type"] for c in report["crossbar"]}, report["crossbar"]
    rep = json.loads(_invoke("verify", image, "--faultmap", chip, "--data", data, "--json"))
    assert rep["n_samples"] == len(np.load(data)[onnx.load(model).graph.input[0].name])

    img, fm = rimg.read(image), fmap.load(chip)
    ds = load_data(data, runtime.image_input_specs(img))
    chip_out = runtime.run(runtime.emulated_model(img, runtime.effective_weights(img, fm)), ds)
    float_out = runtime.run(onnx.load(model), ds)
    pairs = [(a, b) for a, b in zip(chip_out, float_out, strict=True)
             if np.issubdtype(b.dtype, np.floating)]  # skl2onnx classifiers: label, scores
    assert _cosine(*pairs[0]) >= 0.99


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_a_saved_plan_builds_the_same_image(name: str, tmp_path: str) -> None:
    """``plan`` then ``build --plan`` gives the image ``build`` gives, also where the front end
    rewrote the graph (a LinearClassifier's Gemm, a ConvTranspose's 1x1 Conv, a bias moved onto
    an Add): the saved plan's graph check must accept its own plan."""
    model = os.path.join(DATA, name + ".onnx")
    chip, plan = os.path.join(tmp_path, "chip.npz"), os.path.join(tmp_path, "model.plan")
    _invoke("faultmap", "synth", "--like", model, "--rate", "0.05", "-o", chip)
    _invoke("plan", model, "-o", plan)
    images = [os.path.join(tmp_path, f"{k}.rimg") for k in ("planned", "direct")]
    _invoke("build", model, "--faultmap", chip, "--plan", plan, "-o", images[0])
    _invoke("build", model, "--faultmap", chip, "-o", images[1])
    with open(images[0], "rb") as a, open(images[1], "rb") as b:
        assert a.read() == b.read()
