"""Every weight op a crossbar can compute is mapped, in the forms exporters write.

ConvTranspose (any stride, padding, output padding, dilation, group), transformer projections
and MLPs on ``[B, T, D]`` activations, weights behind Transpose/Reshape/Cast/DequantizeLinear
chains, Conv1d, and BatchNormalization split by an exporter into ``Mul``/``Add``. Each graph is
built in code the way PyTorch's legacy exporter writes it (opsets 11, 13, 17), checked to
compute what the original computes after normalisation, then compiled for a fault-free chip
and emulated: its output cosine against the float model must reach 0.99 with 16-level cells,
in ideal mode and in tile mode on the ``neurosim`` device. Recurrent ops stay digital and say
why, per node; graphs the frontend cannot handle are one line naming the file and the node.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from rcompile import api, runtime
from rcompile import faultmap as fmap
from rcompile.cli import main
from rcompile.data import Dataset
from rcompile.device import PRESETS
from rcompile.frontend import Frontend, load_model
from rcompile.ir import from_matrices, to_matrices
from rcompile.programming import compiler_device
from tests.conftest import save
from tests.test_frontend_coverage import arr, init, make, vi

F32 = TensorProto.FLOAT
RNG = np.random.default_rng(7)


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What ``model`` computes, by onnxruntime without its fusions (they replace a
    DequantizeLinear + MatMul by an integer kernel, which is not the model's float result)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feeds)]


def check(tmp_path: object, model: onnx.ModelProto, feeds: dict[str, np.ndarray],
          n_ops: int | None = None, tol: float = 1e-4) -> Frontend:
    """Normalise ``model``; the result computes the same and its weights are consistent."""
    fe = load_model(save(model, os.path.join(str(tmp_path), "m.onnx")))
    if n_ops is not None:
        assert len(fe.ops) == n_ops, (fe.ops, fe.digital)
    for got, want in zip(reference(fe.model, feeds), reference(model, feeds), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   rtol=tol, atol=tol)
    inits = {t.name: numpy_helper.to_array(t) for t in fe.model.graph.initializer}
    for op, w, b in zip(fe.ops, fe.weights, fe.biases, strict=True):
        assert inits[op.weight].dtype == np.float32 and inits[op.weight].shape == op.shape
        np.testing.assert_array_equal(inits[op.weight], w)
        np.testing.assert_array_equal(inits[op.bias], b)
        assert b.shape == (op.n_out,)
        np.testing.assert_array_equal(from_matrices(op, to_matrices(op, w)), w)
        node = next(n for n in fe.model.graph.node if n.name == op.node)
        assert op.weight in node.input
    return fe


def _cosine(got: np.ndarray, want: np.ndarray) -> float:
    a = got.reshape(len(got), -1).astype(np.float64)
    b = want.reshape(len(want), -1).astype(np.float64)
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.mean())


def chip_cosines(tmp_path: object, model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                 runs: Sequence[tuple[str, str]] = (("ideal", "ideal"), ("ideal", "tile"),
                                                    ("neurosim", "tile"))
                 ) -> dict[tuple[str, str], float]:
    """Mean per-sample output cosine of a fault-free chip against the float model, per
    ``(device, mode)``: plan, build (strategy ``full``) and emulate."""
    path = save(model, os.path.join(str(tmp_path), "chip_model.onnx"))
    want = reference(model, feeds)[0]
    n = len(next(iter(feeds.values())))
    out: dict[tuple[str, str], float] = {}
    for device, mode in runs:
        hw = PRESETS[device]
        probe = fmap.synth(1, hw.tile_rows, hw.tile_cols, 0.0)
        plan, _ = api.make_plan(path, tile_rows=hw.tile_rows, tile_cols=hw.tile_cols,
                                device=probe.device(compiler_device(hw)))
        fm = fmap.synth(api.spare_tiles(plan.tiles_needed(), 0.1), hw.tile_rows, hw.tile_cols,
                        0.0)
        image = api.build(plan, fm, hardware=hw.to_dict()).image
        got = runtime.emulate(image, fm, Dataset(inputs=feeds, labels=None, n=n),
                              hardware=hw, mode=mode)[0]
        out[(device, mode)] = _cosine(got, want)
    return out


def assert_exact_on_chip(tmp_path: object, model: onnx.ModelProto,
                         feeds: dict[str, np.ndarray]) -> None:
    """16-level cells, no fault: cosine >= 0.99 in ideal mode and in tile mode with ideal
    converters (the mapping is exact up to quantisation), and >= 0.98 on ``neurosim``, whose
    5-bit ADC, read noise and programming variation cost a plain Conv of this size as much."""
    cos = chip_cosines(tmp_path, model, feeds)
    assert cos[("ideal", "ideal")] >= 0.99 and cos[("ideal", "tile")] >= 0.99, cos
    assert cos[("neurosim", "tile")] >= 0.98, cos


# --------------------------------------------------------------------------- ConvTranspose


def conv_transpose(cin: int, cout: int, kernel: Sequence[int], group: int = 1,
                   opset: int = 17, spatial: Sequence[int] = (5, 5), bias: bool = True,
                   **attrs: object) -> onnx.ModelProto:
    """x -> ConvTranspose -> Relu, as torch.nn.ConvTranspose{1,2,3}d exports it."""
    w = arr(cin, cout // group, *kernel)
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [helper.make_node("ConvTranspose", inputs, ["t"], group=group, name="up",
                              kernel_shape=list(kernel), **attrs),
             helper.make_node("Relu", ["t"], ["y"], name="relu")]
    inits = [init("w", w), *([init("b", arr(cout))] if bias else [])]
    sym = ["N", cin, *spatial]
    out = ["N", cout, *[f"s{i}" for i in range(len(spatial))]]
    return make(nodes, [vi("x", sym)], [vi("y", out)], inits, opset=opset)


CT_FORMS = {
    # name: (cin, cout, kernel, group, attributes)
    "stride2-outpad1": (4, 6, (3, 3), 1, {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                          "output_padding": [1, 1]}),
    "unet-k2s2": (6, 4, (2, 2), 1, {"strides": [2, 2]}),
    "dcgan-k4s2p1": (4, 6, (4, 4), 2, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "odd-everything": (6, 4, (3, 2), 2, {"strides": [3, 2], "pads": [0, 1, 2, 0],
                                         "output_padding": [2, 1], "dilations": [2, 1]}),
    "depthwise": (4, 4, (3, 3), 4, {"strides": [2, 2]}),
    "same-upper": (3, 2, (3, 3), 1, {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "output-shape": (3, 2, (3, 3), 1, {"strides": [2, 2], "output_shape": [10, 10]}),
}


@pytest.mark.parametrize("form", sorted(CT_FORMS))
def test_conv_transpose_is_a_crossbar_op(tmp_path: object, form: str) -> None:
    cin, cout, kernel, group, attrs = CT_FORMS[form]
    model = conv_transpose(cin, cout, kernel, group, **attrs)
    fe = check(tmp_path, model, {"x": arr(2, cin, 5, 5)}, n_ops=1)
    op = fe.ops[0]
    kk = int(np.prod(kernel))
    # one crossbar matrix [Cin/g, Cout/g * prod(k)] per group: fan-in is the input channels
    assert (op.op_type, op.groups, op.rows, op.outs) == ("ConvTranspose", group, cin // group,
                                                          cout // group * kk)
    assert [d[0] for d in fe.digital] == ["relu"]


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_conv_transpose_1d_and_3d_and_no_bias(tmp_path: object, opset: int) -> None:
    m1 = conv_transpose(4, 3, (4,), spatial=(7,), opset=opset, strides=[2], pads=[1, 1])
    check(tmp_path, m1, {"x": arr(2, 4, 7)}, n_ops=1)
    m3 = conv_transpose(2, 3, (2, 2, 2), spatial=(3, 3, 3), opset=opset, bias=False,
                        strides=[2, 2, 2])
    check(tmp_path, m3, {"x": arr(2, 2, 3, 3, 3)}, n_ops=1)


def test_conv_transpose_then_batchnorm_is_folded(tmp_path: object) -> None:
    """DCGAN/segmentation decoders: ConvTranspose -> BatchNormalization -> Relu."""
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2],
                              pads=[1, 1, 1, 1], name="up"),
             helper.make_node("BatchNormalization", ["t", "g", "be", "m", "v"], ["n"],
                              name="bn"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    inits = [init("w", arr(4, 3, 4, 4)), init("g", RNG.uniform(0.5, 1.5, 3).astype(np.float32)),
             init("be", arr(3)), init("m", arr(3)),
             init("v", RNG.uniform(0.5, 2, 3).astype(np.float32))]
    model = make(nodes, [vi("x", ["N", 4, 5, 5])], [vi("y", ["N", 3, 10, 10])], inits)
    fe = check(tmp_path, model, {"x": arr(2, 4, 5, 5)}, n_ops=1)
    assert [d[0] for d in fe.digital] == ["relu"]


@pytest.mark.parametrize("form", ["stride2-outpad1", "odd-everything"])
def test_conv_transpose_on_a_chip(tmp_path: object, form: str) -> None:
    cin, cout, kernel, group, attrs = CT_FORMS[form]
    model = conv_transpose(cin, cout, kernel, group, opset=13, **attrs)
    assert_exact_on_chip(tmp_path, model, {"x": arr(32, cin, 5, 5)})


# --------------------------------------------------------------------------- transformer


def _reduce_mean(x: str, out: str, opset: int, name: str) -> onnx.NodeProto:
    if opset >= 18:
        raise AssertionError("the graphs here stop at opset 17")
    return helper.make_node("ReduceMean", [x], [out], axes=[-1], name=name)


def transformer_block(opset: int, d: int = 16, heads: int = 2, t: int = 6, ff: int = 32,
                      classes: int = 5) -> onnx.ModelProto:
    """One post-norm ``nn.TransformerEncoderLayer`` (batch first) and a mean-pool classifier.

    Projections are ``MatMul`` + ``Add`` on ``[B, T, D]``; the fused in-projection is split into
    Q, K, V; attention is two activation MatMuls around a Softmax; the out-projection weight is
    a ``Transpose`` of an initializer (export without constant folding), the first MLP weight
    an int8 ``DequantizeLinear`` (QDQ), the second a float16 initializer behind a ``Cast``.
    LayerNorm is one node at opset 17 and decomposed below, as the exporter writes it.
    """
    dh = d // heads
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["qkv0"], name="in_proj"),
        helper.make_node("Add", ["qkv0", "b_in"], ["qkv"], name="in_proj_bias"),
    ]
    if opset >= 13:
        nodes.append(helper.make_node("Split", ["qkv", "three"], ["q0", "k0", "v0"], axis=-1,
                                      name="split"))
    else:
        nodes.append(helper.make_node("Split", ["qkv"], ["q0", "k0", "v0"], axis=-1,
                                      split=[d, d, d], name="split"))
    for z, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [f"{z}0", "heads"], [f"{z}1"], name=f"{z}_heads"),
                  helper.make_node("Transpose", [f"{z}1"], [f"{z}h"], perm=perm, name=f"{z}_t")]
    nodes += [
        helper.make_node("MatMul", ["qh", "kh"], ["s0"], name="scores"),
        helper.make_node("Div", ["s0", "sqrt_dh"], ["s"], name="scale"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "vh"], ["c0"], name="context"),
        helper.make_node("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3], name="c_t"),
        helper.make_node("Reshape", ["c1", "merge"], ["c"], name="merge_heads"),
        helper.make_node("Transpose", ["w_out_t"], ["w_out"], perm=[1, 0], name="w_out_T"),
        helper.make_node("MatMul", ["c", "w_out"], ["o0"], name="out_proj"),
        helper.make_node("Add", ["b_out", "o0"], ["o"], name="out_proj_bias"),  # const first
        helper.make_node("Add", ["x", "o"], ["r1"], name="residual1"),
    ]

    def layer_norm(x: str, out: str, tag: str) -> list[onnx.NodeProto]:
        if opset >= 17:
            return [helper.make_node("LayerNormalization", [x, f"{tag}_g", f"{tag}_b"], [out],
                                     axis=-1, epsilon=1e-5, name=tag)]
        return [
            _reduce_mean(x, f"{tag}_mu", opset, f"{tag}_mean"),
            helper.make_node("Sub", [x, f"{tag}_mu"], [f"{tag}_xc"], name=f"{tag}_sub"),
            helper.make_node("Pow", [f"{tag}_xc", "two"], [f"{tag}_sq"], name=f"{tag}_pow"),
            _reduce_mean(f"{tag}_sq", f"{tag}_var", opset, f"{tag}_var_mean"),
            helper.make_node("Add", [f"{tag}_var", "eps"], [f"{tag}_ve"], name=f"{tag}_eps"),
            helper.make_node("Sqrt", [f"{tag}_ve"], [f"{tag}_sd"], name=f"{tag}_sqrt"),
            helper.make_node("Div", [f"{tag}_xc", f"{tag}_sd"], [f"{tag}_n"], name=f"{tag}_div"),
            helper.make_node("Mul", [f"{tag}_n", f"{tag}_g"], [f"{tag}_s"], name=f"{tag}_mul"),
            helper.make_node("Add", [f"{tag}_s", f"{tag}_b"], [out], name=f"{tag}_add"),
        ]

    nodes += layer_norm("r1", "h1", "ln1")
    nodes += [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1"], name="w1_dq"),
        helper.make_node("MatMul", ["h1", "w1"], ["f0"], name="fc1"),
        helper.make_node("Add", ["f0", "b1"], ["f1"], name="fc1_bias"),
        helper.make_node("Relu", ["f1"], ["f2"], name="act"),
        helper.make_node("Cast", ["w2_16"], ["w2"], to=F32, name="w2_cast"),
        helper.make_node("MatMul", ["f2", "w2"], ["f3"], name="fc2"),
        helper.make_node("Add", ["f3", "b2"], ["f4"], name="fc2_bias"),
        helper.make_node("Add", ["h1", "f4"], ["r2"], name="residual2"),
    ]
    nodes += layer_norm("r2", "h2", "ln2")
    nodes += [
        helper.make_node("ReduceMean", ["h2"], ["pooled"], axes=[1], keepdims=0, name="pool"),
        helper.make_node("Gemm", ["pooled", "wc", "bc"], ["y"], transB=1, name="classifier"),
    ]
    w1 = arr(d, ff) * 0.3
    w1_scale = np.float32(np.abs(w1).max() / 127)
    inits = [
        init("w_in", arr(d, 3 * d) * 0.3), init("b_in", arr(3 * d) * 0.1),
        init("heads", np.array([0, 0, heads, dh], np.int64)),
        init("merge", np.array([0, 0, d], np.int64)),
        init("sqrt_dh", np.array(np.sqrt(dh), np.float32)),
        init("w_out_t", arr(d, d) * 0.3), init("b_out", arr(d) * 0.1),
        init("w1_q", np.round(w1 / w1_scale).astype(np.int8)),
        init("w1_scale", np.array(w1_scale, np.float32)), init("w1_zp", np.array(0, np.int8)),
        init("b1", arr(ff) * 0.1), init("w2_16", (arr(ff, d) * 0.3).astype(np.float16)),
        init("b2", arr(d) * 0.1), init("wc", arr(classes, d)), init("bc", arr(classes)),
    ]
    if opset >= 13:
        inits.append(init("three", np.array([d, d, d], np.int64)))
    for tag in ("ln1", "ln2"):
        inits += [init(f"{tag}_g", RNG.uniform(0.5, 1.5, d).astype(np.float32)),
                  init(f"{tag}_b", arr(d) * 0.1)]
    if opset < 17:
        inits += [init("two", np.array(2, np.float32)), init("eps", np.array(1e-5, np.float32))]
    return make(nodes, [vi("x", ["batch", t, d])], [vi("y", ["batch", classes])], inits,
                opset=opset)


PROJECTIONS = ["in_proj", "out_proj", "fc1", "fc2", "classifier"]


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_transformer_projections_are_crossbar_ops(tmp_path: object, opset: int) -> None:
    model = transformer_block(opset)
    fe = check(tmp_path, model, {"x": arr(3, 6, 16)}, n_ops=5)
    assert [op.node for op in fe.ops] == PROJECTIONS
    assert [op.shape for op in fe.ops] == [(16, 48), (16, 16), (16, 32), (32, 16), (16, 5)]
    digital = {d[0]: d[2] for d in fe.digital}
    for name in ("scores", "context"):
        assert digital[name] == "no constant operand (a product of two run-time values)"
    # the projections' bias Adds are folded into the crossbar ops' biases
    assert not any(n.endswith("_bias") for n in digital)
    assert "residual1" in digital and "softmax" in digital


def test_transformer_on_a_chip(tmp_path: object) -> None:
    assert_exact_on_chip(tmp_path, transformer_block(13), {"x": arr(32, 6, 16)})
