"""ONNX frontend: load, check, infer shapes, normalise, and find the crossbar ops.

Normalisation rules (the digital graph that the image carries is the result):

* every node has a unique name (``<op_type>_<index>`` where the exporter left none);
* weights given as ``Constant`` nodes or behind ``Identity``/``Cast`` of a constant are resolved;
* a ``BatchNormalization`` whose input is produced only by a mappable ``Conv`` is folded into it;
* each crossbar op gets its own weight initializer ``<node>.rc_weight`` and bias initializer
  ``<node>.rc_bias`` (zeros where the model had none);
* Gemm: ``alpha`` and ``transB`` are folded into the weight, which is stored as ``[K, N]``;
  ``beta`` into the bias; ``transA`` stays;
* MatMul with a constant 2-D right operand: a bias ``Add`` is appended after it.

Mapped: Conv (any kernel, stride, padding, dilation, groups), Gemm and MatMul with a constant
weight. Everything else runs on the digital periphery and is reported with the reason.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from rcompile.errors import BadModel
from rcompile.ir import LAYOUT_CONV, LAYOUT_KN, WeightOp


@dataclass(frozen=True)
class Frontend:
    """Result of :func:`load_model`."""

    model: onnx.ModelProto
    ops: tuple[WeightOp, ...]
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    digital: tuple[tuple[str, str, str], ...]
    sha256: str


def load_model(path: str) -> Frontend:
    """Load, check and normalise the model at ``path``; raise :class:`BadModel` on any defect."""
    if not os.path.isfile(path):
        raise BadModel(f"{path}: no such model file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        model = onnx.load_model_from_string(raw)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise BadModel(f"{path}: not an ONNX model ({_one_line(exc)})") from None
    if len(model.graph.node) == 0:
        raise BadModel(f"{path}: the ONNX graph has no nodes; expected a model")
    base = os.path.dirname(os.path.abspath(path))
    try:
        onnx.load_external_data_for_model(model, base)
    except Exception as exc:
        raise BadModel(f"{path}: cannot load external weight data ({_one_line(exc)})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise BadModel(f"{path}: fails the ONNX checker: {_one_line(exc)}") from None
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise BadModel(f"{path}: shape inference failed: {_one_line(exc)}") from None
    return normalise(model, path, hashlib.sha256(raw).hexdigest())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


class _Graph:
    """Mutable view of a graph used while normalising."""

    def __init__(self, model: onnx.ModelProto, path: str) -> None:
        self.model = model
        self.path = path
        self.g = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in self.g.initializer
        }
        names: set[str] = set()
        for i, node in enumerate(self.g.node):
            if not node.name or node.name in names:
                node.name = f"{node.op_type}_{i}"
            names.add(node.name)
        self._resolve_constant_producers()

    def _resolve_constant_producers(self) -> None:
        """Turn Constant nodes and Identity/Cast chains of constants into initializers."""
        changed = True
        while changed:
            changed = False
            for node in list(self.g.node):
                if node.domain not in ("", "ai.onnx"):
                    continue
                value: np.ndarray | None = None
                if node.op_type == "Constant" and len(node.output) == 1:
                    attr = {a.name: a for a in node.attribute}
                    if "value" in attr:
                        value = numpy_helper.to_array(attr["value"].t)
                elif node.op_type == "Identity" and node.input[0] in self.consts:
                    value = self.consts[node.input[0]]
                elif node.op_type == "Cast" and node.input[0] in self.consts:
                    to = next(a.i for a in node.attribute if a.name == "to")
                    value = self.consts[node.input[0]].astype(helper.tensor_dtype_to_np_dtype(to))
                if value is None:
                    continue
                out = node.output[0]
                if any(o.name == out for o in self.g.output):
                    continue
                self.set_const(out, np.asarray(value))
                self.g.node.remove(node)
                changed = True

    def set_const(self, name: str, value: np.ndarray) -> None:
        self.consts[name] = value
        for i, t in enumerate(self.g.initializer):
            if t.name == name:
                self.g.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
                return
        self.g.initializer.append(numpy_helper.from_array(value, name))

    def drop_unused_consts(self) -> None:
        used = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)
        graph_inputs = [i for i in self.g.input if i.name in used or i.name not in self.consts]
        del self.g.input[:]
        self.g.input.extend(graph_inputs)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if name in n.input]

    def const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.consts:
            return None
        value = self.consts[name]
        if value.size == 0:
            raise BadModel(f"{self.path}: node {node.name!r}: {what} {name!r} is empty")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise BadModel(
                f"{self.path}: node {node.name!r}: {what} {name!r} contains NaN or Inf; "
                "expected finite values"
            )
        return value


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def normalise(model: onnx.ModelProto, path: str, sha256: str) -> Frontend:
    """Apply the normalisation rules of this module's docstring; see :class:`Frontend`."""
    gr = _Graph(model, path)
    _fold_batchnorm_all(gr)
    ops: list[WeightOp] = []
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    digital: list[tuple[str, str, str]] = []
    for node in list(gr.g.node):
        found = _map_node(gr, node)
        if isinstance(found, str):
            if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
                digital.append((node.name, node.op_type, found))
            else:
                digital.append((node.name, node.op_type, "not a weight op"))
            continue
        op, w, b = found
        ops.append(op)
        weights.append(w)
        biases.append(b)
    gr.drop_unused_consts()
    try:
        onnx.checker.check_model(gr.model)
    except Exception as exc:  # a normalisation bug, but say which model it happened on
        raise BadModel(f"{path}: normalised graph fails the ONNX checker: {_one_line(exc)}") from None
    return Frontend(gr.model, tuple(ops), tuple(weights), tuple(biases), tuple(digital), sha256)


def _fold_batchnorm_all(gr: _Graph) -> None:
    for bn in [n for n in gr.g.node if n.op_type == "BatchNormalization"]:
        producer = next((n for n in gr.g.node if bn.input[0] in n.output), None)
        if producer is None or producer.op_type != "Conv" or len(bn.output) != 1:
            continue
        if len(gr.consumers(bn.input[0])) != 1:
            continue
        if any(bn.input[0] == o.name for o in gr.g.output):
            continue
        w = gr.const(producer, 1, "weight")
        params = [gr.const(bn, i, "BatchNormalization parameter") for i in range(1, 5)]
        if w is None or any(p is None for p in params):
            continue
        scale, shift, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
        eps = float(_attrs(bn).get("epsilon", 1e-5))  # type: ignore[arg-type]
        b = gr.const(producer, 2, "bias")
        b64 = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
        k = scale / np.sqrt(var + eps)
        w_new = (w.astype(np.float64) * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        b_new = ((b64 - mean) * k + shift).astype(w.dtype)
        wname, bname = f"{producer.name}.bn_weight", f"{producer.name}.bn_bias"
        gr.set_const(wname, w_new)
        gr.set_const(bname, b_new)
        x = producer.input[0]
        del producer.input[:]
        producer.input.extend([x, wname, bname])
        producer.output[0] = bn.output[0]
        gr.g.node.remove(bn)


def _map_node(gr: _Graph, node: onnx.NodeProto) -> str | tuple[WeightOp, np.ndarray, np.ndarray]:
    """Rewrite one mappable node in place; return the reason when it stays digital."""
    if node.domain not in ("", "ai.onnx"):
        return f"custom domain {node.domain!r}"
    if node.op_type == "Conv":
        w = gr.const(node, 1, "weight")
        if w is None:
            return "weight is not a constant"
        if w.ndim < 3:
            raise BadModel(f"{gr.path}: node {node.name!r}: Conv weight has rank {w.ndim}; expected >= 3")
        groups = int(_attrs(node).get("group", 1))  # type: ignore[call-overload]
        if w.shape[0] % groups:
            raise BadModel(
                f"{gr.path}: node {node.name!r}: {w.shape[0]} output channels not divisible by "
                f"group={groups}"
            )
        b = gr.const(node, 2, "bias")
        if len(node.input) > 2 and node.input[2] and b is None:
            return "bias is not a constant"
        bias = np.zeros(w.shape[0], np.float32) if b is None else b.reshape(-1)
        op = WeightOp(node.name, "Conv", f"{node.name}.rc_weight", f"{node.name}.rc_bias",
                      tuple(int(s) for s in w.shape), LAYOUT_CONV, groups)
        _rewire(gr, node, op, w, bias, [node.input[0]])
        return op, w.astype(np.float32), bias.astype(np.float32)
    if node.op_type == "Gemm":
        w = gr.const(node, 1, "weight")
        if w is None:
            return "weight (input B) is not a constant"
        a = _attrs(node)
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))  # type: ignore[arg-type]
        wk = (w.T if int(a.get("transB", 0)) else w).astype(np.float64) * alpha  # type: ignore[call-overload]
        n = wk.shape[1]
        c = gr.const(node, 2, "bias")
        if len(node.input) > 2 and node.input[2] and c is None:
            return "bias (input C) is not a constant"
        if c is None:
            bias = np.zeros(n)
        elif c.size in (1, n) and (c.ndim <= 1 or c.shape[-1] in (1, n) and c.size == c.shape[-1]):
            bias = np.broadcast_to(c.reshape(-1).astype(np.float64), (n,)) * beta
        else:
            return f"bias C of shape {list(c.shape)} is not per-output"
        op = WeightOp(node.name, "Gemm", f"{node.name}.rc_weight", f"{node.name}.rc_bias",
                      tuple(int(s) for s in wk.shape), LAYOUT_KN)
        _rewire(gr, node, op, wk, bias, [node.input[0]])
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("transA", int(a.get("transA", 0)))])  # type: ignore[call-overload]
        return op, wk.astype(np.float32), bias.astype(np.float32)
    if node.op_type == "MatMul":
        w = gr.const(node, 1, "weight")
        if w is None:
            return "no constant 2-D right-hand weight"
        if w.ndim != 2:
            return f"constant weight has rank {w.ndim}; only 2-D weights map to crossbars"
        out = node.output[0]
        mm_out = f"{node.name}.rc_matmul"
        op = WeightOp(node.name, "MatMul", f"{node.name}.rc_weight", f"{node.name}.rc_bias",
                      tuple(int(s) for s in w.shape), LAYOUT_KN)
        bias = np.zeros(w.shape[1], np.float32)
        _rewire(gr, node, op, w, bias, [node.input[0]], with_bias=False)
        node.output[0] = mm_out
        add = helper.make_node("Add", [mm_out, op.bias], [out], name=f"{node.name}.rc_add")
        idx = list(gr.g.node).index(node)
        gr.g.node.insert(idx + 1, add)
        return op, w.astype(np.float32), bias
    if node.op_type == "ConvTranspose":
        return "ConvTranspose is not mapped yet; runs digitally"
    return "not a weight op"


def _rewire(gr: _Graph, node: onnx.NodeProto, op: WeightOp, w: np.ndarray, bias: np.ndarray,
            head: list[str], with_bias: bool = True) -> None:
    if not np.issubdtype(w.dtype, np.floating):
        raise BadModel(f"{gr.path}: node {node.name!r}: weight dtype {w.dtype}; expected float")
    gr.set_const(op.weight, w.astype(np.float32))
    gr.set_const(op.bias, np.asarray(bias, np.float32))
    del node.input[:]
    node.input.extend([*head, op.weight] + ([op.bias] if with_bias else []))


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]
