"""Frontend: normalisation keeps the model's function; bad models get one clear error."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile.errors import BadModel
from rcompile.frontend import load_model
from rcompile.ir import from_matrices, to_matrices
from tests.conftest import conv_bn_gemm, save


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_normalised_graph_computes_the_same(tmp_path: str, groups: int) -> None:
    model = conv_bn_gemm(groups=groups)
    path = save(model, os.path.join(str(tmp_path), "m.onnx"))
    fe = load_model(path)
    assert [op.op_type for op in fe.ops] == ["Conv", "Gemm"]
    assert fe.ops[0].groups == groups
    assert not any(n.op_type == "BatchNormalization" for n in fe.model.graph.node)
    x = np.random.default_rng(1).normal(size=(3, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(fe.model, x), run(model, x), rtol=1e-4, atol=1e-4)


def test_matrix_views_are_exact_inverses() -> None:
    fe_model = conv_bn_gemm(groups=2)
    w = numpy_helper.to_array(fe_model.graph.initializer[0])
    from rcompile.ir import LAYOUT_CONV, WeightOp

    op = WeightOp("c", "Conv", "w", "b", tuple(w.shape), LAYOUT_CONV, groups=2)
    mats = to_matrices(op, w)
    assert mats.shape == (2, 2 * 9, 4)
    np.testing.assert_array_equal(from_matrices(op, mats), w)


def matmul_model(weight_as: str) -> onnx.ModelProto:
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    nodes = []
    inits = []
    if weight_as == "initializer":
        inits.append(numpy_helper.from_array(w, "w"))
        wname = "w"
    elif weight_as == "constant":
        nodes.append(helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)))
        wname = "w"
    else:  # behind Identity then Cast
        inits.append(numpy_helper.from_array(w.astype(np.float64), "w64"))
        nodes.append(helper.make_node("Identity", ["w64"], ["wi"]))
        nodes.append(helper.make_node("Cast", ["wi"], ["w"], to=TensorProto.FLOAT))
        wname = "w"
    nodes.append(helper.make_node("MatMul", ["x", wname], ["y"]))
    graph = helper.make_graph(
        nodes, "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("weight_as", ["initializer", "constant", "identity-cast"])
def test_matmul_weight_found_wherever_it_is_stored(tmp_path: str, weight_as: str) -> None:
    model = matmul_model(weight_as)
    fe = load_model(save(model, os.path.join(str(tmp_path), "mm.onnx")))
    assert len(fe.ops) == 1 and fe.ops[0].shape == (4, 3)
    x = np.random.default_rng(0).normal(size=(5, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(run(fe.model, x), run(model, x), rtol=1e-5, atol=1e-6)


def test_activation_matmul_stays_digital_with_reason(tmp_path: str) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="attn")], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fe = load_model(save(model, os.path.join(str(tmp_path), "a.onnx")))
    assert fe.ops == ()
    assert fe.digital == (
        ("attn", "MatMul", "no constant operand (a product of two run-time values)"),
    )


def test_missing_file(tmp_path: str) -> None:
    with pytest.raises(BadModel, match="no such model file"):
        load_model(os.path.join(str(tmp_path), "nope.onnx"))


def test_garbage_file(tmp_path: str) -> None:
    path = os.path.join(str(tmp_path), "junk.onnx")
    with open(path, "wb") as f:
        f.write(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(BadModel, match="junk.onnx"):
        load_model(path)


def test_checker_failure_names_the_file(tmp_path: str) -> None:
    model = conv_bn_gemm()
    model.graph.node[2].input[0] = "does_not_exist"
    path = save(model, os.path.join(str(tmp_path), "broken.onnx"))
    with pytest.raises(BadModel, match="broken.onnx"):
        load_model(path)


def test_nan_weight_is_rejected_naming_the_node(tmp_path: str) -> None:
    model = conv_bn_gemm()
    w = numpy_helper.to_array(model.graph.initializer[-2]).copy()
    w[0, 0] = np.nan
    model.graph.initializer[-2].CopyFrom(numpy_helper.from_array(w, "wg"))
    path = save(model, os.path.join(str(tmp_path), "nan.onnx"))
    with pytest.raises(BadModel, match="NaN or Inf"):
        load_model(path)
