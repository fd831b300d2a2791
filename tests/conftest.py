"""Shared fixtures: tiny models built in code, and the shipped MNIST example."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from rcompile import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "mnist")
MODEL = os.path.join(EXAMPLE, "mnist_cnn.onnx")
TEST_DATA = os.path.join(EXAMPLE, "test.npz")
CALIB = os.path.join(EXAMPLE, "calib.npz")


def rcompile(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in-process, exactly as its console entry point does, and capture its output.

    ``rcompile.cli.main`` is called with ``sys.argv`` set (so its one-line error handling and
    exit codes are the ones a user meets) inside click's test isolation, which swaps the
    standard streams. Tests that need a real process (signals, the interpreter's own exit path)
    use :func:`rcompile_process`.
    """
    runner = CliRunner()
    here = os.getcwd()
    argv = sys.argv
    code = 0
    with runner.isolation() as (out, err, _):
        sys.argv = ["rcompile", *args]
        try:
            if cwd is not None:
                os.chdir(cwd)
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv = argv
            os.chdir(here)
        stdout = out.getvalue().decode(errors="replace")
        stderr = err.getvalue().decode(errors="replace")
    return subprocess.CompletedProcess(["rcompile", *args], code, stdout, stderr)


def rcompile_process(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (exit codes and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "rcompile", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def save(model: onnx.ModelProto, path: str) -> str:
    onnx.save(model, path)
    return path


def conv_bn_gemm(seed: int = 0, groups: int = 1) -> onnx.ModelProto:
    """x[N,4,6,6] -> Conv(4->8, 3x3, pad 1) -> BN -> Relu -> Flatten -> Gemm(288->5, transB)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, 8), rng.normal(size=8)
    mean, var = rng.normal(size=8), rng.uniform(0.5, 2, 8)
    wg = rng.normal(size=(5, 288)).astype(np.float32)
    bg = rng.normal(size=5).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        *(
            numpy_helper.from_array(a.astype(np.float32), n)
            for a, n in [(gamma, "g"), (beta, "be"), (mean, "m"), (var, "v")]
        ),
        numpy_helper.from_array(wg, "wg"),
        numpy_helper.from_array(bg, "bg"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=groups),
        helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"], epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1, alpha=0.5, beta=2.0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def tiny_model(tmp_path: object) -> str:
    return save(conv_bn_gemm(), os.path.join(str(tmp_path), "tiny.onnx"))
