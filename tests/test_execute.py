"""onnxruntime sessions of the runtime (``rcompile.runtime.execute.session``): large initializers
handed over as arrays must compute exactly what the whole serialised model computes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile.runtime import execute
from tests.conftest import ROOT

COMPAT = os.path.join(ROOT, "tests", "data", "compat")
GRAPHS = sorted(f[:-5] for f in os.listdir(COMPAT) if f.endswith(".onnx"))


def _whole(model: onnx.ModelProto, optimize: bool) -> ort.InferenceSession:
    """The session of the whole model, serialised with its initializers in it."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(execute.free_dims(model).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _mlp(ir: int = 8) -> onnx.ModelProto:
    """x[N, 300] -> MatMul(300x300, 352 KB) -> Add -> Relu -> Gemm(300x7) -> y: one initializer
    above the hand-over size, the others below; ``ir < 4`` also lists them as graph inputs."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(300, 300)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=300).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(size=(300, 7)).astype(np.float32), "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 300])]
    if ir < 4:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in inits]
    graph = helper.make_graph(nodes, "mlp", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir
    return model


def _same_outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray], optimize: bool) -> None:
    before = model.SerializeToString()
    got = execute.session(model, "test model", optimize).run(None, feed)
    want = _whole(model, optimize).run(None, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.array_equal(g, w, equal_nan=True)
    assert model.SerializeToString() == before  # the caller's model is left as it was


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.parametrize("ir", [3, 8])
def test_large_initializers_apart_compute_the_same(ir: int, optimize: bool) -> None:
    model = _mlp(ir)
    graph, names, values = execute._apart(model)
    assert names == ["W1"] and len(values) == 1  # only the one above APART_BYTES
    assert not graph.graph.initializer[0].HasField("raw_data")
    x = np.random.default_rng(4).normal(size=(5, 300)).astype(np.float32)
    _same_outputs(model, {"x": x}, optimize)


@pytest.mark.parametrize("name", GRAPHS)
def test_third_party_graphs_compute_the_same(name: str, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """Every raw initializer of the graph handed over (most of these graphs hold none of
    :data:`~rcompile.runtime.execute.APART_BYTES`), then the session run as the whole model."""
    model = onnx.load(os.path.join(COMPAT, name + ".onnx"))
    monkeypatch.setattr(execute, "APART_BYTES", 0)
    if any(t.HasField("raw_data") and t.data_type == TensorProto.FLOAT
           for t in model.graph.initializer):
        assert execute._apart(model)[1], "no initializer was handed over"
    data = np.load(os.path.join(COMPAT, name + ".npz"))
    n = execute._fixed_batch(model) or len(data[data.files[0]])  # a fixed batch: one batch
    feed = {i.name: data[i.name][:n] for i in model.graph.input if i.name in data.files}
    _same_outputs(model, feed, optimize=True)


def test_types_numpy_lacks_stay_in_the_model() -> None:
    """A large bfloat16 initializer stays inside the model, a float16 one is handed over; both
    compute as the whole model does."""
    rng = np.random.default_rng(7)
    w16 = rng.normal(size=(200, 200)).astype(np.float16)
    bits = rng.normal(size=(200, 200)).astype(np.float32).view(np.uint32) >> 16
    bf = helper.make_tensor("Wb", TensorProto.BFLOAT16, [200, 200],
                            bits.astype("<u2").tobytes(), raw=True)
    inits = [numpy_helper.from_array(w16, "Wh"), bf]
    nodes = [helper.make_node("Cast", ["Wh"], ["wh"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["Wb"], ["wb"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "wh"], ["h"]),
             helper.make_node("MatMul", ["h", "wb"], ["y"])]
    graph = helper.make_graph(
        nodes, "types", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 200])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 200])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert bf.HasField("raw_data") and bf.ByteSize() >= execute.APART_BYTES
    assert execute._apart(model)[1] == ["Wh"]
    x = rng.normal(size=(3, 200)).astype(np.float32)
    _same_outputs(model, {"x": x}, optimize=False)
