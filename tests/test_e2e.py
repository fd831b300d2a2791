"""End to end through the real CLI on the shipped MNIST example."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from rcompile import api, runtime
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile.data import input_specs, load_data
from tests.conftest import CALIB, MODEL, TEST_DATA, rcompile


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("e2e"))


def synth(work: str, name: str, rate: float, ratio: str = "5:1", seed: int = 1) -> str:
    path = os.path.join(work, name)
    r = rcompile(
        "faultmap",
        "synth",
        "--like",
        MODEL,
        "--rate",
        str(rate),
        "--ratio",
        ratio,
        "--seed",
        str(seed),
        "-o",
        path,
    )
    assert r.returncode == 0, r.stderr
    return path


def build(work: str, chip: str, out: str, *extra: str) -> str:
    path = os.path.join(work, out)
    r = rcompile("build", MODEL, "--faultmap", chip, "-o", path, *extra)
    assert r.returncode == 0, r.stderr
    return path


def verify_json(image: str, chip: str, *extra: str) -> dict:
    r = rcompile("verify", image, "--faultmap", chip, "--data", TEST_DATA, "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def independent_quantised_reference() -> np.ndarray:
    """Fold BN and quantise per output channel with plain numpy; run on onnxruntime."""
    model = onnx.load(MODEL)
    g = model.graph
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        conv = next(n for n in g.node if n.output[0] == bn.input[0])
        gamma, beta, mean, var = (init[i] for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + eps)
        init[conv.input[1]] = init[conv.input[1]] * k[:, None, None, None]
        init[conv.input[2]] = (init[conv.input[2]] - mean) * k + beta
        conv.output[0] = bn.output[0]
        g.node.remove(bn)
    for node in g.node:
        if node.op_type in ("Conv", "Gemm"):
            w = init[node.input[1]]
            out_axis = 0  # Conv [Cout, ...]; Gemm here has transB=1: [out, in]
            flat = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1)
            scale = np.abs(flat).max(axis=1) / 15
            q = np.clip(np.rint(flat / scale[:, None]), -15, 15) * scale[:, None]
            init[node.input[1]] = q.reshape(w.shape)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in init.items())
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(TEST_DATA)["input"]
    return sess.run(None, {"input": x})[0]


def test_fault_free_chip_reproduces_the_quantised_model(work: str) -> None:
    chip = synth(work, "clean.npz", 0.0)
    image = build(work, chip, "clean.rimg")
    img = rimg.read(image)
    fm = fmap.load(chip)
    data = load_data(TEST_DATA, input_specs(onnx.load_model_from_string(img.graph)))
    emulated = runtime.run(runtime.emulated_model(img, runtime.effective_weights(img, fm)), data)[0]
    reference = independent_quantised_reference()
    assert np.mean(emulated.argmax(1) == reference.argmax(1)) == 1.0
    np.testing.assert_allclose(emulated, reference, rtol=1e-3, atol=1e-3)
    rep = verify_json(image, chip, "--model", MODEL)
    assert rep["agreement"] == 1.0
    assert abs(rep["accuracy"] - rep["float_accuracy"]) <= 0.005


def test_two_column_collapses_at_ten_percent_and_full_does_not(work: str) -> None:
    chip = synth(work, "p10.npz", 0.10, "5:1", seed=2)
    base = verify_json(build(work, chip, "p10_two.rimg", "--strategy", "two-column"), chip)
    full = verify_json(build(work, chip, "p10_full.rimg", "--calib", CALIB), chip)
    assert base["accuracy"] < base["fault_free_accuracy"] - 0.2  # the runtime sees the faults
    assert full["accuracy"] >= full["fault_free_accuracy"] - 0.01


def test_two_builds_give_identical_bytes(work: str) -> None:
    chip = synth(work, "p5.npz", 0.05, "1:5", seed=3)
    a = build(work, chip, "a.rimg", "--calib", CALIB)
    b = build(work, chip, "b.rimg", "--calib", CALIB)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_inspect_describes_the_image(work: str) -> None:
    chip = synth(work, "insp.npz", 0.01)
    image = build(work, chip, "insp.rimg")
    r = rcompile("inspect", image)
    assert r.returncode == 0 and "Gemm" in r.stdout
    r = rcompile("inspect", image, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)


# ---------------------------------------------------------------------------------------------
# Bad input: one stderr line naming the file, non-zero exit, no traceback, no output file.
# ---------------------------------------------------------------------------------------------


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_bad_models(work: str) -> None:
    chip = synth(work, "bm.npz", 0.01)
    out = os.path.join(work, "bm.rimg")
    one_line_error(
        rcompile("build", os.path.join(work, "missing.onnx"), "--faultmap", chip, "-o", out),
        "missing.onnx",
    )
    junk = write(os.path.join(work, "junk.onnx"), b"this is not onnx" * 20)
    one_line_error(rcompile("build", junk, "--faultmap", chip, "-o", out), "junk.onnx")
    assert not os.path.exists(out)


@pytest.mark.parametrize("case", ["wrong-key", "dtype", "codes", "shape", "odd-cols"])
def test_bad_fault_maps(work: str, case: str) -> None:
    path = os.path.join(work, f"bad-{case}.npz")
    faults = np.zeros((11, 128, 128), np.uint8)
    arrays: dict[str, np.ndarray] = {"faults": faults}
    if case == "wrong-key":
        arrays = {"fault": faults}
    elif case == "dtype":
        arrays = {"faults": faults.astype(np.int32)}
    elif case == "codes":
        faults[0, 0, 0] = 7
    elif case == "shape":
        arrays = {"faults": faults[0]}
    else:
        arrays = {"faults": np.zeros((11, 128, 127), np.uint8)}
    np.savez(path, **arrays)
    out = os.path.join(work, f"bad-{case}.rimg")
    one_line_error(rcompile("build", MODEL, "--faultmap", path, "-o", out), f"bad-{case}.npz")
    assert not os.path.exists(out)


def test_model_too_big_for_the_chip(work: str) -> None:
    small = os.path.join(work, "small.npz")
    r = rcompile("faultmap", "synth", "--tiles", "3", "--rate", "0.01", "-o", small)
    assert r.returncode == 0, r.stderr
    out = os.path.join(work, "small.rimg")
    needed = api.tiles_needed(MODEL, 128, 128)
    one_line_error(
        rcompile("build", MODEL, "--faultmap", small, "-o", out), f"needs {needed} tiles"
    )
    assert not os.path.exists(out)


def test_truncated_and_corrupted_images(work: str) -> None:
    chip = synth(work, "tc.npz", 0.02)
    image = build(work, chip, "tc.rimg")
    raw = open(image, "rb").read()
    cut = write(os.path.join(work, "cut.rimg"), raw[: len(raw) // 2])
    one_line_error(rcompile("verify", cut, "--faultmap", chip, "--data", TEST_DATA), "cut.rimg")
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    bad = write(os.path.join(work, "flip.rimg"), bytes(flipped))
    one_line_error(
        rcompile("verify", bad, "--faultmap", chip, "--data", TEST_DATA), "flip.rimg", "checksum"
    )
    one_line_error(rcompile("inspect", bad), "flip.rimg")


def test_image_verified_against_another_chip(work: str) -> None:
    chip_a = synth(work, "chipA.npz", 0.02, seed=10)
    chip_b = synth(work, "chipB.npz", 0.02, seed=11)
    image = build(work, chip_a, "chipA.rimg")
    one_line_error(
        rcompile("verify", image, "--faultmap", chip_b, "--data", TEST_DATA), "chipA.rimg"
    )


def test_data_that_does_not_match_the_model(work: str) -> None:
    chip = synth(work, "dm.npz", 0.01)
    image = build(work, chip, "dm.rimg")
    x = np.load(TEST_DATA)["input"]
    wrong_name = os.path.join(work, "wrong_name.npz")
    np.savez(wrong_name, images=x[:10])
    one_line_error(
        rcompile("verify", image, "--faultmap", chip, "--data", wrong_name),
        "wrong_name.npz",
        "input",
    )
    wrong_shape = os.path.join(work, "wrong_shape.npz")
    np.savez(wrong_shape, input=x[:10, :, :20, :20])
    one_line_error(
        rcompile("verify", image, "--faultmap", chip, "--data", wrong_shape), "wrong_shape.npz"
    )
    bad_calib = os.path.join(work, "bad_calib.npz")
    np.savez(bad_calib, input=x[:10].reshape(10, -1))
    out = os.path.join(work, "calib.rimg")
    one_line_error(
        rcompile("build", MODEL, "--faultmap", chip, "--calib", bad_calib, "-o", out),
        "bad_calib.npz",
    )
    assert not os.path.exists(out)
