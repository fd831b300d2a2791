"""ONNX frontend: load, check, infer shapes, normalise, and find the crossbar ops.

Loading (:func:`load_model`), in order: the file; the external data of every tensor that keeps
its data outside the file (an unreadable one is named in the error); sparse initializers made
dense; the ONNX checker; strict shape inference. The model digest covers the file *and* every
external data blob, so two models that differ only in an external weight file get different
digests.

Normalisation rules, in order (the digital graph that the image carries is the result):

1. every node has a unique name (``<op_type>_<index>`` where the exporter left none);
2. ``Constant`` nodes (any ``value*`` attribute) and ``Identity``/``Cast`` of constants become
   initializers, repeatedly, so chains resolve;
3. a weight, bias or BatchNormalization parameter that is computed from constants only
   (``Transpose``, ``Reshape``, ``DequantizeLinear``, ... of initializers) is evaluated once
   with onnxruntime and becomes an initializer. A node outside the standard ONNX domain (and not
   a function the model defines) on the weight path of a Conv, ConvTranspose, Gemm or MatMul is
   an error: the compiler cannot know what it computes. A constant operand of ``Mul``, ``Add``,
   ``Sub`` or ``Div`` computed from constants is evaluated too (so rule 5 can fold it), but only
   kept where it is no larger than the constants it is computed from;
4. each crossbar op is rewritten to read its own weight initializer ``<node>.rc_weight`` and
   bias initializer ``<node>.rc_bias`` (zeros where the model had none); the node keeps its name:

   * **Conv** (any kernel rank, stride, padding, dilation, groups incl. depthwise; Conv1d is
     kernel rank 1): weight ``[Cout, Cin/g, *k]`` as in the model, layout ``conv``;
   * **ConvTranspose** (any kernel rank, stride, padding, output padding, dilation, group,
     ``auto_pad``, ``output_shape``): a transposed convolution multiplies every input pixel's
     ``Cin/g`` vector by a ``[Cin/g, Cout/g * prod(k)]`` matrix and adds the products up where
     they overlap. The crossbar node is a 1x1 ``Conv`` (``group`` g, layout ``conv``, weight
     ``[Cout * prod(k), Cin/g, 1, ...]``, output ``c * prod(k) + j`` = channel ``c`` at kernel
     position ``j``); the overlap-add (col2im) is a digital ``ConvTranspose`` with the model's
     attributes, ``group = Cout`` and a 0/1 kernel, which also adds the model's bias. Exact;
     every downstream stage sees an ordinary Conv;
   * **Gemm**: ``alpha`` and ``transB`` are folded into a ``[K, N]`` weight (layout ``kn``),
     ``beta`` into the bias; ``transA`` stays. A ``C`` that is not per-output (``[M, N]``, or
     computed at run time) is added by a digital ``Add`` after the crossbar;
   * **MatMul** ``X @ W`` with a constant 2-D ``W[K, N]`` (``X`` of any rank: transformer
     projections and MLPs on ``[B, T, D]``): weight as is (``kn``), a bias ``Add`` is appended.
     A weight ``[1, ..., K, N]`` whose leading axes broadcast away is the same 2-D product;
   * **MatMul** ``W @ X`` with a constant 2-D ``W[M, K]`` (left-constant, transformer and
     Conv1d-as-MatMul style): computed as ``(X^T @ W^T)^T``. The weight is stored as ``[K, M]``
     (``kn``: fan-in ``K`` drives the rows, as for every other op), and digital ``Transpose``
     nodes swap the last two axes of ``X`` and of the result. The node's first input is then
     the (transposed) activation, like every other crossbar op's;
   * **Einsum** of an activation and a constant 2-D weight whose equation is that product
     (``...k,kn->...n``, ``btd,nd->btn``, either operand first) becomes a MatMul first;
   * **QLinearConv** / **QLinearMatMul** (QOperator int8 models) with constant weight, scale
     and zero point and a per-tensor activation scale: ``DequantizeLinear`` -> the float op
     with the weight dequantized once -> ``QuantizeLinear``; the result is within one output
     code of the integer kernel (ConvInteger and MatMulInteger stay digital);
   * **LinearRegressor** / **LinearClassifier** (ONNX-ML, sklearn's linear models through
     skl2onnx): the scores ``X @ coefficients^T + intercepts`` are a Gemm; a post-transform and
     a classifier's labels stay in the node, which then reads the scores with identity
     coefficients;
   * an op whose weights are float16, bfloat16 or float64 computes in float32 between ``Cast``
     nodes, so every tensor outside it keeps its type; an op whose weights are all zero has
     nothing to program and stays digital;
5. a node that computes ``k * y + c`` per output channel of a crossbar op's result ``y``, where
   ``y`` feeds nothing else, is folded into the op's weight and bias, repeatedly, so chains
   fold: a ``BatchNormalization`` (inference mode, on the op's output axis), and a ``Mul``,
   ``Add``, ``Sub`` (``y - c`` or ``c - y``) or ``Div`` (``y / c``) by a float constant with
   one value per output channel or one for all (an exporter's split BatchNorm, a separate bias
   ``Add``, an attention scale) that leaves the result's shape unchanged, also across a
   ``Transpose`` that alone reads the result (ConvNeXt's layer scale after its channels-last
   Linear layers). After a ConvTranspose ``c`` goes into the overlap-add's bias;
6. unused initializers and stale shape annotations are dropped (an IR 3 model lists the new
   initializers among its graph inputs, as IR 3 requires); the result must pass the ONNX checker
   with strict shape inference.

Everything else runs on the digital periphery and is listed in :attr:`Frontend.digital` with the
reason (integer ops, MatMul of two activations, a weight computed at run time, ...). LSTM, GRU
and RNN stay digital: their gate weights are applied inside onnxruntime's fused recurrent
kernel, step by step, and a programming image does not describe a gate loop on the periphery.

Bad input is :class:`~rcompile.errors.BadModel`, one line naming the file and the node: a file
that is missing or not ONNX, unreadable external data, a graph the checker or shape inference
rejects, a weight that is a graph input (the exporter left the weights out), a custom-domain op
on a weight path, an empty weight, NaN or Inf in a weight, bias or folded BatchNormalization,
a Conv or ConvTranspose whose input channels (where the shapes fix them), bias or
``kernel_shape`` disagree with its weight.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper, shape_inference
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from rcompile.errors import BadModel
from rcompile.ir import LAYOUT_CONV, LAYOUT_KN, WeightOp

#: Oldest ``ai.onnx`` opset accepted (onnxruntime's oldest supported; the emulator's nodes).
MIN_OPSET = 7
MAX_MODEL_BYTES = 1 << 31
"""Largest ONNX file (and densified sparse initializer) the frontend reads: 2 GiB, protobuf's
own limit."""
#: Domains whose ops the compiler knows.
_STANDARD = ("", "ai.onnx")
#: Ops whose output is not a function of their inputs: never folded to constants.
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli"}
)
#: Inputs that hold parameters (weights, biases, statistics), by op type.
_PARAM_INPUTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
    "Einsum": (0, 1),
    "BatchNormalization": (1, 2, 3, 4),
}
#: Elementwise ops whose constant operand may be folded into a crossbar op before them (rule 5):
#: that operand is evaluated only where the result is no larger than the constants it reads.
_AFFINE = ("Mul", "Add", "Sub", "Div")
#: Why ops that carry weights stay digital.
_RECURRENT = (
    "{op}: its W (input) and R (recurrent) gate weights are applied inside onnxruntime's fused "
    "{op} kernel, one time step after another; the chip would need the gate loop on its "
    "periphery and a crossbar read per step, which a programming image does not describe; "
    "runs digitally"
)
_NO_CONSTANT = "no constant operand (a product of two run-time values)"
#: Ops that carry weights but stay digital, and why.
_DIGITAL_WEIGHT_OPS = {
    "ConvInteger": "integer (quantised) op; runs digitally",
    "MatMulInteger": "integer (quantised) op; runs digitally",
    "Einsum": "Einsum with a constant operand that is not a product X[..., k] @ W[k, n] "
              "(its equation contracts otherwise); runs digitally",
    "LSTM": _RECURRENT.format(op="LSTM"),
    "GRU": _RECURRENT.format(op="GRU"),
    "RNN": _RECURRENT.format(op="RNN"),
}


@dataclass(frozen=True)
class Frontend:
    """Result of :func:`load_model`."""

    model: onnx.ModelProto
    """Normalised graph (rules in the module docstring)."""
    ops: tuple[WeightOp, ...]
    """Crossbar ops, in graph order."""
    weights: tuple[np.ndarray, ...]
    """Per op, float32 weight in graph layout (BatchNorm folded), equal to its initializer."""
    biases: tuple[np.ndarray, ...]
    """Per op, float32 ``[n_out]`` bias, equal to its initializer."""
    digital: tuple[tuple[str, str, str], ...]
    """``(node, op_type, reason)`` of every node of the normalised graph that is not a crossbar
    op and was there in the model (helper nodes the rules add are not listed)."""
    sha256: str
    """Digest of the model file and its external data."""


def load_model(path: str) -> Frontend:
    """Load, check and normalise the model at ``path``; raise :class:`BadModel` on any defect."""
    if not os.path.isfile(path):
        raise BadModel(f"{path}: no such model file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MODEL_BYTES:
                raise BadModel(f"{path}: {size} bytes; expected an ONNX file of at most "
                               f"{MAX_MODEL_BYTES} bytes (the protobuf limit; larger weights "
                               "belong in external data)")
            raw = f.read()
    except OSError as e:
        raise BadModel(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        model = onnx.load_model_from_string(raw)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise BadModel(f"{path}: not an ONNX model ({_one_line(exc)})") from None
    if len(model.graph.node) == 0:
        raise BadModel(f"{path}: the ONNX graph has no nodes; expected a model")
    digest = hashlib.sha256(raw)
    _load_external_data(model, path, digest)
    for sp in model.graph.sparse_initializer:  # shape inference does not see sparse ones
        model.graph.initializer.append(_densify(sp, path))
    del model.graph.sparse_initializer[:]
    _check_runtime_opsets(model, path)
    try:
        onnx.checker.check_model(_checkable(model))
    except Exception as exc:
        raise BadModel(f"{path}: fails the ONNX checker: {_one_line(exc)}") from None
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise BadModel(f"{path}: shape inference failed: {_one_line(exc)}") from None
    return normalise(model, path, digest.hexdigest())


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy for the ONNX checker in which graph inputs and outputs declared
    without any shape (unknown rank: valid for shape inference and onnxruntime, but the checker
    wants the field) carry an empty one."""
    infos = [*model.graph.input, *model.graph.output]
    if all(vi.type.tensor_type.HasField("shape") for vi in infos
           if vi.type.HasField("tensor_type")):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output]:
        if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.shape.SetInParent()
    return out


def _check_runtime_opsets(model: onnx.ModelProto, path: str) -> None:
    """BadModel unless onnxruntime runs every opset ``model`` imports (asked of onnxruntime,
    with an empty graph of the same imports) and the ``ai.onnx`` opset is at least
    :data:`MIN_OPSET`."""
    import onnxruntime as ort

    imports = list(model.opset_import)
    default = next((o.version for o in imports if o.domain in _STANDARD), None)
    if default is not None and default < MIN_OPSET:
        raise BadModel(f"{path}: declares ONNX opset {default}; expected opset {MIN_OPSET} or "
                       f"newer (the oldest onnxruntime supports)")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([], "opsets", [x], [x]), opset_imports=imports)
    probe.ir_version = model.ir_version
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = " ".join(str(exc).split())
        found = re.search(r"domain (\S+) is till opset (\d+)", text)
        if found is None:  # e.g. an IR version too new: onnxruntime's reason, its C++ frame cut
            why = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (/\S+:\d+ .*?\)\s+(?=[A-Z]))?", "",
                         text)
            raise BadModel(f"{path}: onnxruntime {ort.__version__} cannot load it: "
                           f"{_one_line(ValueError(why))}") from None
        domain, top = found.group(1), int(found.group(2))
        have = next((o.version for o in imports if (o.domain or "ai.onnx") == domain), "?")
        raise BadModel(f"{path}: declares opset {have} of domain '{domain}', which onnxruntime "
                       f"{ort.__version__} cannot run; expected opset {top} or older") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``graph``: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _all_tensors(a.g)
            for sub in a.graphs:
                yield from _all_tensors(sub)


def _load_external_data(model: onnx.ModelProto, path: str, digest: hashlib._Hash) -> None:
    base = os.path.dirname(os.path.abspath(path))
    for t in _all_tensors(model.graph):
        if not uses_external_data(t):
            continue
        where = next((e.value for e in t.external_data if e.key == "location"), "")
        try:
            _check_external_size(t, base, where)
            load_external_data_for_tensor(t, base)
        except Exception as exc:
            users = [n.name or n.op_type for n in model.graph.node if t.name in n.input]
            used = f" (used by node {users[0]!r})" if users else ""
            raise BadModel(
                f"{path}: tensor {t.name!r}{used} keeps its data in external file {where!r}, "
                f"which cannot be read: {_one_line(exc)}"
            ) from None
        digest.update(t.name.encode())
        digest.update(t.raw_data)


def _check_external_size(t: onnx.TensorProto, base: str, where: str) -> None:
    """ValueError unless the external file holds the bytes the tensor declares, within
    :data:`MAX_MODEL_BYTES` (checked before anything is read: no /dev/zero, no huge dims)."""
    info = {e.key: e.value for e in t.external_data}
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    need = math.prod(int(d) for d in t.dims) * itemsize
    offset = int(info.get("offset", 0) or 0)
    length = int(info.get("length", need) or need)
    have = os.stat(os.path.join(base, where)).st_size - offset
    if not 0 <= need <= MAX_MODEL_BYTES or length != need or need > have:
        raise ValueError(f"dims {list(t.dims)} need {need} bytes, the entry says {length} and "
                         f"the file holds {max(have, 0)} after offset {offset}")


def _is_float(dtype: np.dtype) -> bool:
    """float16/32/64 and the ml_dtypes floats (bfloat16, float8 ...)."""
    return dtype.kind == "f" or (dtype.kind == "V" and "float" in dtype.name)


def _numpy_native(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf" and dtype.type.__module__ == "numpy"


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node, or None for sparse and string values."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
    return None


def _densify(sp: onnx.SparseTensorProto, path: str) -> onnx.TensorProto:
    name = sp.values.name
    try:
        values = numpy_helper.to_array(sp.values)
        idx = numpy_helper.to_array(sp.indices).astype(np.int64)
    except Exception as exc:  # onnx raises ValueError/TypeError on inconsistent tensors
        raise BadModel(f"{path}: sparse initializer {name!r} is malformed: {_one_line(exc)}"
                       ) from None
    dims = tuple(int(d) for d in sp.dims)
    size = math.prod(dims) * values.dtype.itemsize if all(d >= 0 for d in dims) else -1
    if not 0 <= size <= MAX_MODEL_BYTES:
        raise BadModel(f"{path}: sparse initializer {name!r} declares dims {list(dims)}; "
                       f"expected a dense size of at most {MAX_MODEL_BYTES} bytes")
    dense = np.zeros(dims, values.dtype)
    try:
        if idx.ndim == 2:  # [nnz, rank] coordinates
            dense[tuple(idx.T)] = values
        else:  # [nnz] linear indices
            dense.reshape(-1)[idx] = values
    except (IndexError, ValueError) as exc:
        raise BadModel(f"{path}: sparse initializer {name!r}: indices do not fit dims "
                       f"{list(dims)} ({_one_line(exc)})") from None
    return numpy_helper.from_array(dense, name)


class _Graph:
    """Mutable view of a graph used while normalising."""

    def __init__(self, model: onnx.ModelProto, path: str) -> None:
        self.model = model
        self.path = path
        self.g = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in self.g.initializer
        }
        self.names: set[str] = {t.name for t in self.g.initializer}
        self.names |= {v.name for v in [*self.g.input, *self.g.output, *self.g.value_info]}
        self.names |= {o for n in self.g.node for o in n.output}
        node_names: set[str] = set()
        for i, node in enumerate(self.g.node):
            if not node.name or node.name in node_names:
                node.name = self._unique(f"{node.op_type}_{i}", node_names)
            node_names.add(node.name)
        self.node_names = node_names
        self._resolve_constant_producers()

    @staticmethod
    def _unique(base: str, taken: set[str]) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def fresh(self, base: str) -> str:
        """A tensor name not used anywhere in the graph yet."""
        name = self._unique(base, self.names)
        self.names.add(name)
        return name

    def fresh_node(self, base: str) -> str:
        name = self._unique(base, self.node_names)
        self.node_names.add(name)
        return name

    def _resolve_constant_producers(self) -> None:
        """Turn Constant nodes and Identity/Cast chains of constants into initializers."""
        outputs = {o.name for o in self.g.output}
        changed = True
        while changed:
            changed = False
            for node in list(self.g.node):
                if node.domain not in _STANDARD or len(node.output) != 1:
                    continue
                value: np.ndarray | None = None
                if node.op_type == "Constant":
                    value = _constant_value(node)
                elif node.op_type == "Identity" and node.input[0] in self.consts:
                    value = self.consts[node.input[0]]
                elif node.op_type == "Cast" and node.input[0] in self.consts:
                    to = helper.tensor_dtype_to_np_dtype(int(_attrs(node)["to"]))  # type: ignore[call-overload]
                    src = self.consts[node.input[0]]
                    if _numpy_native(np.dtype(to)) and _numpy_native(src.dtype):
                        value = src.astype(to)  # else left to constant-path folding
                if value is None or node.output[0] in outputs:
                    continue
                self.set_const(node.output[0], np.asarray(value))
                self.g.node.remove(node)
                changed = True

    def set_const(self, name: str, value: np.ndarray) -> None:
        self.consts[name] = value
        self.names.add(name)
        for i, t in enumerate(self.g.initializer):
            if t.name == name:
                self.g.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
                return
        self.g.initializer.append(numpy_helper.from_array(value, name))

    def drop_unused(self) -> None:
        """Drop initializers nothing reads and shape annotations of values that are gone."""
        used = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
        used |= _subgraph_inputs(self.g)
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)
        graph_inputs = [i for i in self.g.input if i.name in used or i.name not in self.consts]
        for name in [n for n in self.consts if n not in used]:
            del self.consts[name]
        if self.model.ir_version < 4:  # IR 3 lists every initializer among the graph inputs
            listed = {i.name for i in graph_inputs}
            graph_inputs += [
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in self.g.initializer if t.name not in listed
            ]
        del self.g.input[:]
        self.g.input.extend(graph_inputs)
        produced = {o for n in self.g.node for o in n.output}
        info = [v for v in self.g.value_info if v.name in produced]
        del self.g.value_info[:]
        self.g.value_info.extend(info)

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.g.node if name in n.output), None)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if name in n.input]

    def is_graph_input(self, name: str) -> bool:
        return name not in self.consts and any(i.name == name for i in self.g.input)

    def rank(self, name: str) -> int | None:
        """Rank of a value from the graph's (shape-inferred) type annotations, if known."""
        if name in self.consts:
            return self.consts[name].ndim
        for v in [*self.g.input, *self.g.value_info, *self.g.output]:
            if v.name == name and v.type.HasField("tensor_type"):
                tt = v.type.tensor_type
                return len(tt.shape.dim) if tt.HasField("shape") else None
        return None

    def elem(self, name: str) -> int | None:
        """Element type of a value from the graph's annotations, if known."""
        for v in [*self.g.input, *self.g.value_info, *self.g.output]:
            if v.name == name and v.type.HasField("tensor_type"):
                return int(v.type.tensor_type.elem_type)
        return None

    def dim(self, name: str, axis: int) -> int | None:
        """Static size of axis ``axis`` of a value, if the annotations fix it."""
        for v in [*self.g.input, *self.g.value_info, *self.g.output]:
            if v.name == name and v.type.HasField("tensor_type"):
                dims = v.type.tensor_type.shape.dim
                if axis < len(dims) and dims[axis].HasField("dim_value"):
                    return int(dims[axis].dim_value)
        return None

    def check_channels(self, node: onnx.NodeProto, expected: int, layout: str) -> None:
        """A Conv-like node's input must have ``expected`` channels on axis 1 where known."""
        got = self.dim(node.input[0], 1)
        if got is not None and got != expected:
            raise BadModel(
                f"{self.path}: node {node.name!r} ({node.op_type}): input "
                f"{node.input[0]!r} has {got} channels but the weight ({layout}) expects "
                f"{expected}"
            )

    def const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        """The constant at input ``index`` of ``node`` (None if absent or not constant).

        Raises :class:`BadModel` for an empty tensor or NaN/Inf in a floating one.
        """
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.consts:
            return None
        value = self.consts[name]
        if value.size == 0:
            raise BadModel(
                f"{self.path}: node {node.name!r} ({node.op_type}): {what} {name!r} is an empty "
                f"tensor of shape {list(value.shape)}; expected at least one element"
            )
        if _is_float(value.dtype) and not np.all(np.isfinite(value.astype(np.float64))):
            raise BadModel(
                f"{self.path}: node {node.name!r} ({node.op_type}): {what} {name!r} contains "
                "NaN or Inf; expected finite values"
            )
        return value


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes of subgraphs (If/Loop/Scan bodies) of ``graph``, outer scope included."""
    names: set[str] = set()
    for node in graph.node:
        for a in node.attribute:
            subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                names |= {i for n in sub.node for i in n.input} | _subgraph_inputs(sub)
    return names


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class _Mapped:
    """A crossbar op while normalising."""

    op: WeightOp
    weight: np.ndarray
    """float32, graph layout."""
    bias: np.ndarray
    """float32 ``[n_out]``."""
    out: str
    """Tensor that carries the op's full result (after bias, transposes and casts)."""
    channel_axis: int | None
    """Axis of ``out`` that indexes the op's outputs, if known."""
    rank: int | None = None
    """Rank of ``out``, if known."""
    fan: int = 1
    """Crossbar outputs per channel of ``out`` (a ConvTranspose: one per kernel position)."""
    post_bias: str | None = None
    """Initializer of a per-channel bias added digitally after the crossbar op's own result
    (a ConvTranspose's bias, added after the overlap-add), or None."""

    @property
    def channels(self) -> int:
        return self.op.n_out // self.fan


def normalise(model: onnx.ModelProto, path: str, sha256: str) -> Frontend:
    """Apply the normalisation rules of this module's docstring; see :class:`Frontend`."""
    gr = _Graph(model, path)  # rules 1 and 2
    _fold_constant_paths(gr)  # rule 3
    original = [(n.name, n.op_type, n.domain) for n in gr.g.node]
    reasons: dict[str, str] = {}
    mapped: list[_Mapped] = []
    for node in list(gr.g.node):  # rule 4
        name, op_type = node.name, node.op_type
        try:
            found = _map_node(gr, node)
        except BadModel:
            raise
        except Exception as exc:  # a form no rule foresaw: name it rather than crash
            raise BadModel(
                f"{path}: node {name!r} ({op_type}) cannot be mapped: {_one_line(exc)}; "
                "expected a node the ONNX specification allows"
            ) from None
        if isinstance(found, str):
            reasons[node.name] = found
        else:
            mapped.append(found)
    folded = _fold_into_crossbar(gr, mapped, reasons)  # rule 5
    gr.drop_unused()  # rule 6
    try:  # the checker's full check, which is its check and strict shape inference
        onnx.checker.check_model(_checkable(gr.model))
        shape_inference.infer_shapes(gr.model, check_type=True, strict_mode=True)
    except Exception as exc:  # a normalisation bug, but say which model it happened on
        raise BadModel(
            f"{path}: normalised graph fails the ONNX checker: {_one_line(exc)}"
        ) from None
    crossbar = {m.op.node for m in mapped}
    digital = tuple(
        (name, op_type, reasons.get(name, "not a weight op"))
        for name, op_type, _ in original
        if name not in crossbar and name not in folded
    )
    return Frontend(
        gr.model,
        tuple(m.op for m in mapped),
        tuple(m.weight for m in mapped),
        tuple(m.bias for m in mapped),
        digital,
        sha256,
    )


# --------------------------------------------------------------------------- rule 3


def _fold_constant_paths(gr: _Graph) -> None:
    """Evaluate every parameter input computed from constants only; see rule 3."""
    derived = set(gr.consts)
    for node in gr.g.node:  # graph order is topological (the checker enforces it)
        if node.op_type in _NONDETERMINISTIC or any(
            a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute
        ):
            continue
        if all(not i or i in derived for i in node.input):
            derived.update(o for o in node.output if o)
    outputs = {o.name for o in gr.g.output}
    producers = {o: n for n in gr.g.node for o in n.output if o}
    local = {(f.domain, f.name) for f in gr.model.functions}  # model-local functions
    targets: list[str] = []
    small: set[str] = set()  # operands of elementwise ops: kept only if no larger than the cone
    cone_nodes: set[str] = set()
    for node in gr.g.node:
        if node.domain not in _STANDARD:
            continue
        affine = node.op_type in _AFFINE
        for i in (0, 1) if affine else _PARAM_INPUTS.get(node.op_type, ()):
            name = node.input[i] if i < len(node.input) else ""
            if not name or name in gr.consts or name not in derived or name in outputs:
                continue
            if name in targets:
                continue
            cone = _cone(name, producers, gr.consts)
            custom = next((n for n in cone if n.domain not in _STANDARD
                           and (n.domain, n.op_type) not in local), None)
            if affine:
                if custom is not None:
                    continue
                small.add(name)
            elif custom is not None:
                if node.op_type == "BatchNormalization":
                    continue  # the BatchNormalization just stays digital
                raise BadModel(
                    f"{gr.path}: node {node.name!r} ({node.op_type}) takes its weight {name!r} "
                    f"from node {custom.name!r} ({custom.op_type}) of custom domain "
                    f"{custom.domain!r}, which the compiler cannot evaluate; expected a weight "
                    "computed by standard ONNX ops (or store it as an initializer)"
                )
            targets.append(name)
            cone_nodes |= {n.name for n in cone}
    if not targets:
        return
    found: list[tuple[str, np.ndarray]] = []
    weights = [t for t in targets if t not in small]
    if weights:  # must evaluate: the error names the weight op
        cone_w = {n.name for t in weights for n in _cone(t, producers, gr.consts)}
        nodes = [n for n in gr.g.node if n.name in cone_w]
        found += zip(weights, _evaluate(gr, nodes, weights), strict=True)
    found += _evaluate_optional(gr, [t for t in targets if t in small], producers)
    for name, value in found:
        # a new name: the producer may have other outputs that stay in use
        folded = gr.fresh(f"{name}.rc_folded")
        gr.set_const(folded, np.asarray(value))
        for n in gr.g.node:
            for i, inp in enumerate(n.input):
                if inp == name:
                    n.input[i] = folded
    # remove what is left of the folded paths once nothing reads it
    changed = True
    while changed:
        changed = False
        read = {i for n in gr.g.node for i in n.input} | outputs | _subgraph_inputs(gr.g)
        for n in list(gr.g.node):
            if n.name in cone_nodes and not any(o in read for o in n.output if o):
                gr.g.node.remove(n)
                changed = True


def _evaluate_optional(gr: _Graph, targets: list[str], producers: dict[str, onnx.NodeProto]
                       ) -> list[tuple[str, np.ndarray]]:
    """Values of ``targets`` that onnxruntime can compute and that are no larger than the
    constants they read (an expanded constant stays computed); the rest are left out."""
    cones = {t: _cone(t, producers, gr.consts) for t in targets}

    def run(names: list[str]) -> list[np.ndarray]:
        inside = {n.name for t in names for n in cones[t]}
        return _evaluate(gr, [n for n in gr.g.node if n.name in inside], names)

    try:
        values = run(targets) if targets else []
    except BadModel:  # find the ones that fail
        values = []
        for t in targets:
            try:
                values += run([t])
            except BadModel:
                values.append(np.zeros(0))  # left out below: an empty constant is not read
    out = []
    for t, v in zip(targets, values, strict=True):
        n_read = sum(gr.consts[i].size for n in cones[t] for i in n.input if i in gr.consts)
        if 0 < v.size <= n_read:
            out.append((t, v))
    return out


def _cone(name: str, producers: dict[str, onnx.NodeProto], consts: dict[str, np.ndarray]
          ) -> list[onnx.NodeProto]:
    """Nodes that compute ``name`` from constants."""
    seen: dict[str, onnx.NodeProto] = {}
    stack = [name]
    while stack:
        v = stack.pop()
        if not v or v in consts or v not in producers:
            continue
        p = producers[v]
        if p.name not in seen:
            seen[p.name] = p
            stack.extend(p.input)
    return list(seen.values())


def _evaluate(gr: _Graph, nodes: list[onnx.NodeProto], targets: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    needed = {i for n in nodes for i in n.input if i in gr.consts}
    graph = helper.make_graph(
        nodes, "constant_paths", [], [onnx.ValueInfoProto(name=t) for t in targets],
        [numpy_helper.from_array(gr.consts[i], i) for i in sorted(needed)],
    )
    model = helper.make_model(graph, opset_imports=list(gr.model.opset_import))
    model.ir_version = gr.model.ir_version
    model.functions.extend(gr.model.functions)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        return [np.asarray(v) for v in sess.run(None, {})]
    except Exception as exc:
        users = sorted({n.name for n in gr.g.node for t in targets if t in n.input})
        raise BadModel(
            f"{gr.path}: cannot evaluate the constant nodes that compute the weights of "
            f"{', '.join(repr(u) for u in users)}: {_one_line(exc)}"
        ) from None


# --------------------------------------------------------------------------- rule 4


def _map_node(gr: _Graph, node: onnx.NodeProto) -> str | _Mapped:
    """Rewrite one mappable node in place; return the reason when it stays digital."""
    if any((f.domain, f.name) == (node.domain, node.op_type) for f in gr.model.functions):
        return "model-local function; runs digitally"
    if node.domain == "ai.onnx.ml":
        if node.op_type in ("LinearRegressor", "LinearClassifier"):
            return _map_linear_ml(gr, node)
        return "not a weight op"
    if node.domain not in _STANDARD:
        return f"custom domain {node.domain!r}"
    if node.op_type == "Conv":
        return _map_conv(gr, node)
    if node.op_type == "ConvTranspose":
        return _map_conv_transpose(gr, node)
    if node.op_type == "Gemm":
        return _map_gemm(gr, node)
    if node.op_type == "MatMul":
        return _map_matmul(gr, node)
    if node.op_type in ("QLinearConv", "QLinearMatMul"):
        why = _dequantize_qlinear(gr, node)
        if why is not None:
            return why
        return (_map_conv if node.op_type == "Conv" else _map_matmul)(gr, node, _QLINEAR[
            node.op_type])
    if node.op_type == "Einsum":
        if not any(i in gr.consts for i in node.input):
            return _NO_CONSTANT
        if _einsum_as_matmul(gr, node):
            return _map_matmul(gr, node, "Einsum")
    return _DIGITAL_WEIGHT_OPS.get(node.op_type, "not a weight op")


#: The integer op each float op was rewritten from (for the crossbar listing).
_QLINEAR = {"Conv": "QLinearConv", "MatMul": "QLinearMatMul"}
#: Inputs of QLinearConv / QLinearMatMul: activation, its scale and zero point, weight, ...
_Q_X, _Q_XS, _Q_XZ, _Q_W, _Q_WS, _Q_WZ, _Q_YS, _Q_YZ, _Q_B = range(9)


def _dequantize_qlinear(gr: _Graph, node: onnx.NodeProto) -> str | None:
    """Rewrite a QLinearConv / QLinearMatMul (QOperator int8 models) in place as
    ``DequantizeLinear -> Conv/MatMul -> QuantizeLinear`` with the weight dequantized once (and
    a QLinearConv's int32 bias scaled by ``x_scale * w_scale``): the crossbar computes the real
    product the integer kernel approximates; requantizing the result rounds as the kernel does.
    Return why it stays integer instead."""
    ins = list(node.input) + [""] * (9 - len(node.input))
    conv = node.op_type == "QLinearConv"
    wi, xi = _Q_W, _Q_X
    if not conv and ins[_Q_W] not in gr.consts and ins[_Q_X] in gr.consts:
        wi, xi = _Q_X, _Q_W  # the weight is input a: W @ X
    params = [ins[wi], ins[wi + 1], ins[wi + 2]]
    if not all(p in gr.consts for p in params) or (ins[_Q_B] and ins[_Q_B] not in gr.consts):
        return "integer (quantised) op whose weight, scale or zero point is computed at run time"
    x_scale = gr.consts.get(ins[xi + 1])
    if x_scale is None or x_scale.size != 1 or gr.consts.get(ins[_Q_YS], np.ones(1)).size != 1:
        return "integer (quantised) op with a per-row or run-time activation scale"
    w, ws, wz = (gr.consts[p] for p in params)
    axis = 0 if conv or wi == _Q_X else 1  # per output channel, column (b) or row (a)
    shape = [1] * w.ndim
    shape[axis] = -1
    wf = (w.astype(np.float64) - wz.astype(np.float64).reshape(shape)) * ws.astype(
        np.float64).reshape(shape)
    nodes = []
    xf = gr.fresh(f"{node.name}.rc_x")
    rank = gr.rank(ins[xi])
    if rank is not None:  # the float op's input keeps its rank (a left MatMul needs it)
        gr.g.value_info.append(helper.make_tensor_value_info(xf, TensorProto.FLOAT,
                                                             [None] * rank))
    nodes.append(helper.make_node("DequantizeLinear", [ins[xi], ins[xi + 1], ins[xi + 2]],
                                  [xf], name=gr.fresh_node(f"{node.name}.rc_dequantize")))
    w_name = gr.fresh(f"{node.name}.rc_float_weight")
    gr.set_const(w_name, wf.astype(np.float32))
    yf = gr.fresh(f"{node.name}.rc_y")
    if conv:
        inputs = [xf, w_name]
        if ins[_Q_B]:
            b_name = gr.fresh(f"{node.name}.rc_float_bias")
            scale = float(x_scale.reshape(-1)[0]) * ws.astype(np.float64).reshape(-1)
            gr.set_const(b_name, (gr.consts[ins[_Q_B]].astype(np.float64) * scale
                                  ).astype(np.float32))
            inputs.append(b_name)
        core = helper.make_node("Conv", inputs, [yf], name=node.name)
        core.attribute.extend(node.attribute)
    else:
        core = helper.make_node("MatMul", [xf, w_name] if wi == _Q_W else [w_name, xf], [yf],
                                name=node.name)
    nodes.append(core)
    nodes.append(helper.make_node("QuantizeLinear", [yf, ins[_Q_YS], ins[_Q_YZ]],
                                  [node.output[0]], name=gr.fresh_node(f"{node.name}.rc_quantize")))
    idx = list(gr.g.node).index(node)
    gr.g.node.remove(node)
    for k, n in enumerate(nodes):
        gr.g.node.insert(idx + k, n)
    node.CopyFrom(core)
    return None


def _einsum_as_matmul(gr: _Graph, node: onnx.NodeProto) -> bool:
    """Rewrite ``node`` in place as ``MatMul(X, W[K, N])`` if its equation is that product:
    ``X``'s subscripts end in ``k``, the 2-D constant's are ``kn`` or ``nk``, and the output is
    ``X``'s subscripts with ``k`` replaced by ``n`` (``...`` allowed in front)."""
    raw = _attrs(node).get("equation", b"")
    eq = (raw.decode() if isinstance(raw, bytes) else str(raw)).replace(" ", "")
    if len(node.input) != 2 or "->" not in eq:
        return False
    terms, out = eq.split("->")
    ops = terms.split(",")
    if len(ops) != 2 or (node.input[0] in gr.consts) == (node.input[1] in gr.consts):
        return False
    wi = 0 if node.input[0] in gr.consts else 1
    w, xs, ws = gr.consts[node.input[wi]], ops[1 - wi], ops[wi]
    if w.ndim != 2 or len(ws) != 2 or "." in ws or not _is_float(w.dtype):
        return False
    letters = xs.replace("...", "")
    if not letters or len(set(letters)) != len(letters) or not letters.isalpha():
        return False
    k, n = letters[-1], ws.replace(letters[-1], "", 1)
    if k not in ws or len(n) != 1 or n in xs or out != xs[:-1] + n:
        return False
    wk = w if ws == k + n else w.T
    name = gr.fresh(f"{node.name}.rc_einsum_weight")
    gr.set_const(name, np.ascontiguousarray(wk))
    x = node.input[1 - wi]
    del node.input[:]
    node.input.extend([x, name])
    del node.attribute[:]
    node.op_type = "MatMul"
    return True


def _map_linear_ml(gr: _Graph, node: onnx.NodeProto) -> str | _Mapped:
    """ONNX-ML ``LinearRegressor``/``LinearClassifier`` (sklearn linear models): the float32
    scores ``X @ coefficients^T + intercepts`` are a Gemm on the crossbar; a post-transform, and
    a classifier's labels, stay in the node, which then reads the scores with identity
    coefficients."""
    a = _attrs(node)
    x = node.input[0]
    elem = gr.elem(x)
    if gr.rank(x) != 2 or elem not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        return f"{node.op_type} on a {gr.rank(x)}-D input of type {elem}; the crossbar takes " \
               "a 2-D float input"
    if not any(o.domain in _STANDARD for o in gr.model.opset_import):
        return "the model imports no standard ONNX opset for the crossbar's Gemm"
    coef = np.asarray(a.get("coefficients", []), np.float64)
    bias = np.asarray(a.get("intercepts", []), np.float64)
    feats = gr.dim(x, 1)
    if feats is not None and feats > 0 and coef.size % feats == 0:
        outs = coef.size // feats
    elif node.op_type == "LinearRegressor":
        outs = int(a.get("targets", 1))  # type: ignore[call-overload]
    else:
        outs = bias.size
    if coef.size == 0 or outs == 0 or coef.size % outs or bias.size not in (0, outs):
        raise BadModel(
            f"{gr.path}: node {node.name!r} ({node.op_type}): {coef.size} coefficients and "
            f"{bias.size} intercepts do not make {outs} rows; expected [outputs x features] "
            "coefficients and one intercept per output"
        )
    w = gr.fresh(f"{node.name}.rc_coefficients")
    b = gr.fresh(f"{node.name}.rc_intercepts")
    gr.set_const(w, coef.reshape(outs, -1).T.astype(np.float32))
    gr.set_const(b, (bias if bias.size else np.zeros(outs)).astype(np.float32))
    raw = a.get("post_transform", b"NONE")
    post = raw.decode() if isinstance(raw, bytes) else str(raw)
    idx = list(gr.g.node).index(node)
    if elem == TensorProto.DOUBLE:  # the node computes and outputs float32 scores
        x32 = gr.fresh(f"{node.name}.rc_x32")
        gr.g.node.insert(idx, helper.make_node("Cast", [x], [x32], to=TensorProto.FLOAT,
                                               name=gr.fresh_node(f"{node.name}.rc_cast")))
        x, idx = x32, idx + 1
    if node.op_type == "LinearRegressor" and post == "NONE":
        gemm = helper.make_node("Gemm", [x, w, b], [node.output[0]], name=node.name)
        gr.g.node.remove(node)
    else:  # the node keeps its post-transform and labels, reading the scores as they are
        scores = gr.fresh(f"{node.name}.rc_scores")
        gemm = helper.make_node("Gemm", [x, w, b], [scores], name=node.name)
        node.name = gr.fresh_node(f"{node.name}.rc_post")
        node.input[0] = scores
        for attr in node.attribute:
            if attr.name == "coefficients":
                attr.CopyFrom(helper.make_attribute("coefficients",
                                                    np.eye(outs).reshape(-1).tolist()))
            elif attr.name == "intercepts":
                attr.CopyFrom(helper.make_attribute("intercepts", [0.0] * outs))
    gr.g.node.insert(idx, gemm)
    return _map_gemm(gr, gemm, node.op_type)


def _not_constant(gr: _Graph, node: onnx.NodeProto, index: int, what: str) -> str:
    """Reason a weight input is not constant; a weight that is a graph input is an error."""
    name = node.input[index]
    if gr.is_graph_input(name):
        raise BadModel(
            f"{gr.path}: node {node.name!r} ({node.op_type}): {what} {name!r} is a graph input, "
            "not a constant; a crossbar is programmed once, so expected the weights inside the "
            "model as initializers (e.g. torch.onnx.export(..., export_params=True))"
        )
    return f"{what} {name!r} is computed at run time"


def _weight_reason(w: np.ndarray) -> str | None:
    """Why a constant weight is not mapped, or None."""
    if not _is_float(w.dtype):
        return f"{w.dtype} weights are not mapped; crossbars take floating-point weights"
    if not np.any(w):
        return "every weight is zero: nothing to program; runs digitally (its output is its bias)"
    return None


def _map_conv(gr: _Graph, node: onnx.NodeProto, op_type: str = "Conv") -> str | _Mapped:
    w = gr.const(node, 1, "weight")
    if w is None:
        return _not_constant(gr, node, 1, "weight")
    if (why := _weight_reason(w)) is not None:
        return why
    if w.ndim < 3:
        raise BadModel(
            f"{gr.path}: node {node.name!r}: Conv weight has rank {w.ndim}; expected >= 3"
        )
    groups = int(_attrs(node).get("group", 1))  # type: ignore[call-overload]
    if groups < 1:
        raise BadModel(f"{gr.path}: node {node.name!r}: Conv group={groups}; expected >= 1")
    if w.shape[0] % groups:
        raise BadModel(
            f"{gr.path}: node {node.name!r}: {w.shape[0]} output channels not divisible by "
            f"group={groups}"
        )
    gr.check_channels(node, w.shape[1] * groups, f"[Cout, Cin/group, *kernel], group={groups}")
    b = gr.const(node, 2, "bias")
    if len(node.input) > 2 and node.input[2] and b is None:
        return f"bias {node.input[2]!r} is not a constant"
    bias = np.zeros(w.shape[0]) if b is None else b.reshape(-1).astype(np.float64)
    op = _weight_op(gr, node, op_type, w.shape, LAYOUT_CONV, groups)
    attrs = list(node.attribute)
    seq = _Seq(gr, node, _elem(w))
    x = seq.to_float32(node.input[0])
    out = seq.core("Conv", [x, op.weight, op.bias], attrs)
    return seq.finish(out, op, w, bias, channel_axis=1, rank=w.ndim)


def _map_conv_transpose(gr: _Graph, node: onnx.NodeProto) -> str | _Mapped:
    """ConvTranspose as a 1x1 crossbar Conv and a digital overlap-add (col2im).

    Every input pixel's ``Cin/g`` vector times the ``[Cin/g, Cout/g * prod(k)]`` matrix of its
    group gives one value per output channel and kernel position; a ConvTranspose with the
    model's own attributes and a 0/1 kernel (one group per output channel, kernel position
    ``j`` of channel ``c`` read from channel ``c * prod(k) + j``) adds them up where they
    overlap. Exact for every stride, padding, output padding, dilation, group and output shape.
    """
    w = gr.const(node, 1, "weight")
    if w is None:
        return _not_constant(gr, node, 1, "weight")
    if (why := _weight_reason(w)) is not None:
        return why
    if w.ndim < 3:
        raise BadModel(
            f"{gr.path}: node {node.name!r}: ConvTranspose weight has rank {w.ndim}; "
            "expected >= 3 ([Cin, Cout/group, *kernel])"
        )
    a = _attrs(node)
    groups = int(a.get("group", 1))  # type: ignore[call-overload]
    cin, og, kernel = w.shape[0], w.shape[1], tuple(int(k) for k in w.shape[2:])
    if groups < 1 or cin % groups:
        raise BadModel(
            f"{gr.path}: node {node.name!r}: ConvTranspose weight has {cin} input channels, "
            f"not divisible by group={groups}; expected [Cin, Cout/group, *kernel]"
        )
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel:  # type: ignore[arg-type]
        raise BadModel(
            f"{gr.path}: node {node.name!r}: ConvTranspose kernel_shape "
            f"{list(a['kernel_shape'])} differs from its weight's kernel {list(kernel)}; expected "  # type: ignore[call-overload]
            "them equal"
        )
    gr.check_channels(node, cin, "[Cin, Cout/group, *kernel]")
    cout, kk = og * groups, int(np.prod(kernel))
    b = gr.const(node, 2, "bias")
    if len(node.input) > 2 and node.input[2] and b is None:
        return f"bias {node.input[2]!r} is not a constant"
    post = np.zeros(cout, np.float32) if b is None else b.reshape(-1).astype(np.float32)
    if post.size != cout:
        raise BadModel(
            f"{gr.path}: node {node.name!r}: ConvTranspose bias has {post.size} values; "
            f"expected one per output channel ({cout})"
        )
    # [g*Cin/g, Cout/g, kk] -> [g, Cout/g, kk, Cin/g] -> [Cout*kk, Cin/g, 1, ...]
    w1 = (w.reshape(groups, cin // groups, og, kk).transpose(0, 2, 3, 1)
          .reshape(cout * kk, cin // groups, *([1] * len(kernel))))
    op = _weight_op(gr, node, "ConvTranspose", w1.shape, LAYOUT_CONV, groups)
    seq = _Seq(gr, node, _elem(w))
    x = seq.to_float32(node.input[0])
    z = seq.core("Conv", [x, op.weight, op.bias],
                 [helper.make_attribute("kernel_shape", [1] * len(kernel)),
                  helper.make_attribute("group", groups)])
    onehot = np.zeros((cout, kk, kk), np.float32)
    onehot[:, np.arange(kk), np.arange(kk)] = 1.0
    spread = gr.fresh(f"{node.name}.rc_col2im")
    gr.set_const(spread, onehot.reshape(cout * kk, 1, *kernel))
    post_name = gr.fresh(f"{node.name}.rc_post_bias")
    gr.set_const(post_name, post)
    y = gr.fresh(f"{node.name}.rc_overlap")
    keep = {k: v for k, v in a.items() if k not in ("group", "kernel_shape")}
    seq.append("ConvTranspose", [z, spread, post_name], y, group=cout, **keep)
    return seq.finish(y, op, w1, np.zeros(cout * kk), channel_axis=1, rank=w.ndim, fan=kk,
                      post_bias=post_name)


def _map_gemm(gr: _Graph, node: onnx.NodeProto, op_type: str = "Gemm") -> str | _Mapped:
    w = gr.const(node, 1, "weight (input B)")
    if w is None and gr.const(node, 0, "input A") is not None:
        return ("constant input A times a run-time input B (the weight on the left); "
                "runs digitally")
    if w is None:
        return _not_constant(gr, node, 1, "weight (input B)")
    if (why := _weight_reason(w)) is not None:
        return why
    a = _attrs(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))  # type: ignore[arg-type]
    trans_a = int(a.get("transA", 0))  # type: ignore[call-overload]
    wk = (w.T if int(a.get("transB", 0)) else w).astype(np.float64) * alpha  # type: ignore[call-overload]
    n = wk.shape[1]
    c_name = node.input[2] if len(node.input) > 2 else ""
    c = gr.const(node, 2, "bias (input C)")
    extra: str | None = None  # a C added digitally after the crossbar
    if not c_name or beta == 0.0:
        bias = np.zeros(n)
    elif c is not None and c.size in (1, n) and c.shape[-1:] in ((), (1,), (n,)) and (
        c.ndim <= 1 or c.size == c.shape[-1]
    ):
        bias = np.broadcast_to(c.reshape(-1).astype(np.float64), (n,)) * beta
    else:
        bias, extra = np.zeros(n), c_name
    op = _weight_op(gr, node, op_type, wk.shape, LAYOUT_KN)
    seq = _Seq(gr, node, _elem(w))
    if extra is not None and c is not None:  # constant [M, N]: scaled once
        extra = gr.fresh(f"{node.name}.rc_c")
        gr.set_const(extra, (c.astype(np.float64) * beta).astype(c.dtype))
    elif extra is not None and beta != 1.0:  # run-time C: scaled digitally
        beta_name = gr.fresh(f"{node.name}.rc_beta")
        gr.set_const(beta_name, np.array(beta, w.dtype))
        scaled = gr.fresh(f"{node.name}.rc_c")
        seq.append("Mul", [extra, beta_name], scaled)
        extra = scaled
    x = seq.to_float32(node.input[0])
    out = seq.core("Gemm", [x, op.weight, op.bias], [helper.make_attribute("transA", trans_a)])
    # BatchNormalization is not folded across a digital C: it would have to scale C as well
    return seq.finish(out, op, wk, bias, channel_axis=1 if extra is None else None, rank=2,
                      add=extra)


def _map_matmul(gr: _Graph, node: onnx.NodeProto, op_type: str = "MatMul") -> str | _Mapped:
    right = gr.const(node, 1, "weight")
    left = gr.const(node, 0, "weight") if right is None else None
    if right is None and left is None:
        return _NO_CONSTANT
    w = right if right is not None else left
    assert w is not None
    side = "right" if right is not None else "left"
    x_name = node.input[0] if right is not None else node.input[1]
    rank = gr.rank(x_name)
    if w.ndim > 2 and all(d == 1 for d in w.shape[:-2]) and rank is not None and rank >= w.ndim:
        w = w.reshape(w.shape[-2:])  # leading ones broadcast away: the same 2-D product
    if w.ndim != 2:
        what = "a vector" if w.ndim == 1 else "a batch of matrices"
        return (f"constant {side} operand has rank {w.ndim} ({what}); only 2-D weights map to "
                "crossbars")
    if (why := _weight_reason(w)) is not None:
        return why
    if right is None and rank is None:
        return "constant left operand, but the rank of the right operand is unknown"
    wk = w if right is not None else w.T  # [K, outputs]
    op = _weight_op(gr, node, op_type, wk.shape, LAYOUT_KN)
    bias = np.zeros(wk.shape[1])
    seq = _Seq(gr, node, _elem(w))
    x = seq.to_float32(x_name)
    swap: list[int] | None = None
    if right is None and rank is not None and rank >= 2:  # W @ X = (X^T @ W^T)^T
        swap = [*range(rank - 2), rank - 1, rank - 2]
        xt = gr.fresh(f"{node.name}.rc_xt")
        seq.append("Transpose", [x], xt, perm=swap)
        x = xt
    mm = seq.core("MatMul", [x, op.weight], [])
    out = gr.fresh(f"{node.name}.rc_biased")
    seq.append("Add", [mm, op.bias], out)
    if swap is not None:
        back = gr.fresh(f"{node.name}.rc_yt")
        seq.append("Transpose", [out], back, perm=swap)
        out = back
    if rank is None:
        axis = None
    elif rank == 1:
        axis = 0
    else:
        axis = rank - 1 if right is not None else rank - 2
    return seq.finish(out, op, wk, bias, channel_axis=axis, rank=rank)


def _weight_op(gr: _Graph, node: onnx.NodeProto, op_type: str, shape: tuple[int, ...],
               layout: str, groups: int = 1) -> WeightOp:
    return WeightOp(node.name, op_type, gr.fresh(f"{node.name}.rc_weight"),
                    gr.fresh(f"{node.name}.rc_bias"), tuple(int(s) for s in shape), layout, groups)


def _elem(w: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(w.dtype)


class _Seq:
    """Builds the nodes that replace one crossbar node, and splices them in."""

    def __init__(self, gr: _Graph, node: onnx.NodeProto, elem: int) -> None:
        self.gr, self.node, self.elem = gr, node, elem
        self.nodes: list[onnx.NodeProto] = []

    def append(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> None:
        name = self.gr.fresh_node(f"{self.node.name}.rc_{op_type.lower()}")
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))

    def to_float32(self, x: str) -> str:
        if self.elem == TensorProto.FLOAT:
            return x
        y = self.gr.fresh(f"{self.node.name}.rc_in")
        self.append("Cast", [x], y, to=TensorProto.FLOAT)
        return y

    def core(self, op_type: str, inputs: list[str], attrs: list[onnx.AttributeProto]) -> str:
        """The crossbar node itself; it keeps the original node's name."""
        out = self.gr.fresh(f"{self.node.name}.rc_out")
        n = helper.make_node(op_type, inputs, [out], name=self.node.name)
        n.attribute.extend(attrs)
        self.nodes.append(n)
        return out

    def finish(self, out: str, op: WeightOp, w: np.ndarray, bias: np.ndarray,
               channel_axis: int | None, rank: int | None, add: str | None = None,
               fan: int = 1, post_bias: str | None = None) -> _Mapped:
        """Cast back, add ``add`` if given, give the result the original output name, splice
        the nodes in place of the original one and store the weight and bias."""
        if self.elem != TensorProto.FLOAT:
            back = self.gr.fresh(f"{self.node.name}.rc_cast")
            self.append("Cast", [out], back, to=self.elem)
            out = back
        if add is not None:
            summed = self.gr.fresh(f"{self.node.name}.rc_sum")
            self.append("Add", [out, add], summed)
            out = summed
        self.nodes[-1].output[0] = self.node.output[0]
        w32, b32 = _finite(self.gr, self.node, w, bias)
        self.gr.set_const(op.weight, w32)
        self.gr.set_const(op.bias, b32)
        idx = list(self.gr.g.node).index(self.node)
        self.gr.g.node.remove(self.node)
        for k, n in enumerate(self.nodes):
            self.gr.g.node.insert(idx + k, n)
        return _Mapped(op, w32, b32, self.node.output[0], channel_axis, rank, fan, post_bias)


def _finite(gr: _Graph, node: onnx.NodeProto, w: np.ndarray, bias: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    w32 = np.asarray(w, np.float64).astype(np.float32)
    b32 = np.asarray(bias, np.float64).astype(np.float32)
    if not (np.all(np.isfinite(w32)) and np.all(np.isfinite(b32))):
        raise BadModel(
            f"{gr.path}: node {node.name!r} ({node.op_type}): its weight or bias is not finite "
            "in float32 after folding (alpha, beta or BatchNormalization); expected finite values"
        )
    return w32, b32


# --------------------------------------------------------------------------- rule 5


def _fold_into_crossbar(gr: _Graph, mapped: list[_Mapped], reasons: dict[str, str]) -> set[str]:
    """Fold per-output affine nodes into the crossbar op before them (rule 5); return them."""
    folded: set[str] = set()
    outputs = {o.name for o in gr.g.output} | _subgraph_inputs(gr.g)
    changed = True
    while changed:
        changed = False
        for m in mapped:
            users = gr.consumers(m.out)
            if len(users) != 1 or m.out in outputs or users[0].domain not in _STANDARD:
                continue
            nxt = users[0]
            if nxt.op_type == "BatchNormalization":
                if _bn_blocker(gr, nxt, m, outputs) is not None:
                    continue
                k, c = _bn_affine(gr, nxt)
            elif nxt.op_type in _AFFINE:
                if m.channel_axis is None or m.rank is None:
                    continue
                kc = _elementwise_affine(gr, nxt, m.out, m.rank, m.channel_axis, m.channels)
                if kc is None:
                    continue
                k, c = kc
            elif nxt.op_type == "Transpose":  # channels-last blocks: Linear, Permute, scale
                aff = _affine_after_transpose(gr, nxt, m, outputs)
                if aff is not None:
                    _scale_op(gr, m, aff[0], aff[1], aff[2])
                    nxt.output[0] = aff[0].output[0]
                    gr.g.node.remove(aff[0])
                    folded.add(aff[0].name)
                    changed = True
                continue
            else:
                continue
            _scale_op(gr, m, nxt, k, c)
            last = next(n for n in gr.g.node if m.out in n.output)
            last.output[0] = nxt.output[0]
            m.out = nxt.output[0]
            gr.g.node.remove(nxt)
            folded.add(nxt.name)
            changed = True
    for bn in [n for n in gr.g.node if n.op_type == "BatchNormalization"]:
        if bn.domain in _STANDARD:
            before = next((m for m in mapped if m.out == bn.input[0]), None)
            why = _bn_blocker(gr, bn, before, outputs)
            reasons[bn.name] = f"BatchNormalization not folded: {why}"
    return folded


def _bn_affine(gr: _Graph, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    """``BN(y) = k * y + c`` per channel."""
    scale, shift, mean, var = (
        np.asarray(gr.const(bn, i, "BatchNormalization parameter"), np.float64).reshape(-1)
        for i in range(1, 5)
    )
    eps = float(_attrs(bn).get("epsilon", 1e-5))  # type: ignore[arg-type]
    if np.any(var + eps <= 0):
        raise BadModel(
            f"{gr.path}: node {bn.name!r} (BatchNormalization): variance + epsilon <= 0 "
            "gives NaN; expected a positive variance"
        )
    k = scale / np.sqrt(var + eps)
    return k, shift - mean * k


def _affine_after_transpose(gr: _Graph, tr: onnx.NodeProto, m: _Mapped, outputs: set[str]
                            ) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray] | None:
    """The affine node (and its ``k``, ``c``) that alone reads the Transpose ``tr`` of ``m``'s
    result, per channel on the axis the channels moved to, or None."""
    if m.channel_axis is None or m.rank is None:
        return None
    perm = [int(p) for p in _attrs(tr).get("perm", range(m.rank - 1, -1, -1))]  # type: ignore[attr-defined]
    users = gr.consumers(tr.output[0])
    if (sorted(perm) != list(range(m.rank)) or len(users) != 1 or tr.output[0] in outputs
            or users[0].op_type not in _AFFINE or users[0].domain not in _STANDARD):
        return None
    kc = _elementwise_affine(gr, users[0], tr.output[0], m.rank, perm.index(m.channel_axis),
                             m.channels)
    return None if kc is None else (users[0], kc[0], kc[1])


def _elementwise_affine(gr: _Graph, node: onnx.NodeProto, y: str, rank: int, axis: int,
                        channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``node(y) = k * y + c`` per channel (axis ``axis`` of the rank-``rank`` ``y``), or None
    if it is not that (the other operand is not a constant with one value per channel, or one
    for all)."""
    if len(node.input) != 2:
        return None
    first = node.input[1] == y  # the constant is the first operand
    other = node.input[0] if first else node.input[1]
    if other == y or other not in gr.consts:
        return None
    vec = _per_channel(gr.consts[other], rank, axis, channels)
    if vec is None:
        return None
    ones, zeros = np.ones_like(vec), np.zeros_like(vec)
    if node.op_type == "Mul":
        return vec, zeros
    if node.op_type == "Add":
        return ones, vec
    if node.op_type == "Sub":
        return (-ones, vec) if first else (ones, -vec)
    if first or np.any(vec == 0):  # Div: c / y is not affine, y / 0 is not finite
        return None
    return 1.0 / vec, zeros


def _per_channel(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """float64 ``[channels]`` if ``value`` broadcasts against a rank-``rank`` tensor along
    ``axis`` only (or is one value for all) and leaves its shape unchanged, else None."""
    if not _is_float(value.dtype) or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()


def _scale_op(gr: _Graph, m: _Mapped, node: onnx.NodeProto, k: np.ndarray, c: np.ndarray
              ) -> None:
    """Make ``m`` compute ``k * y + c`` per channel itself (``node`` is what did it)."""
    kf = np.repeat(k, m.fan)  # per crossbar output
    w = m.weight.astype(np.float64)
    if m.op.layout == LAYOUT_CONV:
        w = w * kf.reshape(-1, *([1] * (w.ndim - 1)))
    else:
        w = w * kf[None, :]
    b = m.bias.astype(np.float64) * kf
    if m.post_bias is not None:
        post = gr.consts[m.post_bias].astype(np.float64) * k + c
        gr.set_const(m.post_bias, _finite(gr, node, w, post)[1])
    else:
        b = b + c
    m.weight, m.bias = _finite(gr, node, w, b)
    gr.set_const(m.op.weight, m.weight)
    gr.set_const(m.op.bias, m.bias)


def _bn_blocker(gr: _Graph, bn: onnx.NodeProto, m: _Mapped | None, outputs: set[str]
                ) -> str | None:
    """Why ``bn`` cannot be folded into the crossbar op ``m`` it follows, or None."""
    if m is None or bn.input[0] != m.out:
        return "its input is not the result of a crossbar op"
    if int(_attrs(bn).get("training_mode", 0)):  # type: ignore[call-overload]
        return "training mode (normalises with batch statistics)"
    if any(o for o in bn.output[1:]):
        return "its running statistics are graph outputs (training mode)"
    if m.channel_axis != 1:
        return f"axis 1 is not known to be the output axis of crossbar op {m.op.node!r}"
    if m.out in outputs or len(gr.consumers(m.out)) != 1:
        return f"the result of {m.op.node!r} also feeds other nodes"
    params = [gr.const(bn, i, "BatchNormalization parameter") for i in range(1, 5)]
    if any(p is None for p in params):
        return "its parameters are not constants"
    if any(p is not None and p.size != m.channels for p in params):
        return f"its parameters do not have one entry per output of {m.op.node!r}"
    return None
