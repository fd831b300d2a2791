"""Loading: the file, external data, sparse initializers, opsets, the ONNX checker and strict
shape inference (the rules in :mod:`rcompile.frontend`)."""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from rcompile.errors import BadModel
from rcompile.frontend.graph import STANDARD, checkable, one_line
from rcompile.frontend.normalise import Frontend, normalise

#: Oldest ``ai.onnx`` opset accepted (onnxruntime's oldest supported; the emulator's nodes).
MIN_OPSET = 7
MAX_MODEL_BYTES = 1 << 31
"""Largest ONNX file (and densified sparse initializer) the frontend reads: 2 GiB, protobuf's
own limit."""


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
        raise BadModel(f"{path}: not an ONNX model ({one_line(exc)})") from None
    if len(model.graph.node) == 0:
        raise BadModel(f"{path}: the ONNX graph has no nodes; expected a model")
    digest = hashlib.sha256(raw)
    _load_external_data(model, path, digest)
    for sp in model.graph.sparse_initializer:  # shape inference does not see sparse ones
        model.graph.initializer.append(_densify(sp, path))
    del model.graph.sparse_initializer[:]
    _check_runtime_opsets(model, path)
    try:
        onnx.checker.check_model(checkable(model))
    except Exception as exc:
        raise BadModel(f"{path}: fails the ONNX checker: {one_line(exc)}") from None
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise BadModel(f"{path}: shape inference failed: {one_line(exc)}") from None
    return normalise(model, path, digest.hexdigest())


def _check_runtime_opsets(model: onnx.ModelProto, path: str) -> None:
    """BadModel unless onnxruntime runs every opset ``model`` imports (asked of onnxruntime,
    with an empty graph of the same imports) and the ``ai.onnx`` opset is at least
    :data:`MIN_OPSET`."""
    import onnxruntime as ort

    imports = list(model.opset_import)
    default = next((o.version for o in imports if o.domain in STANDARD), None)
    if default is not None and default < MIN_OPSET:
        raise BadModel(f"{path}: declares ONNX opset {default}; expected opset {MIN_OPSET} or "
                       f"newer (the oldest onnxruntime supports)")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([], "opsets", [x], [x]), opset_imports=imports)
    probe.ir_version = model.ir_version
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: errors reach the user as our one line
    try:
        ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = " ".join(str(exc).split())
        found = re.search(r"domain (\S+) is till opset (\d+)", text)
        if found is None:  # e.g. an IR version too new: onnxruntime's reason, its C++ frame cut
            why = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (/\S+:\d+ .*?\)\s+(?=[A-Z]))?", "",
                         text)
            raise BadModel(f"{path}: onnxruntime {ort.__version__} cannot load it: "
                           f"{one_line(ValueError(why))}") from None
        domain, top = found.group(1), int(found.group(2))
        have = next((o.version for o in imports if (o.domain or "ai.onnx") == domain), "?")
        raise BadModel(f"{path}: declares opset {have} of domain '{domain}', which onnxruntime "
                       f"{ort.__version__} cannot run; expected opset {top} or older") from None


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
                f"which cannot be read: {one_line(exc)}"
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


def _densify(sp: onnx.SparseTensorProto, path: str) -> onnx.TensorProto:
    name = sp.values.name
    try:
        values = numpy_helper.to_array(sp.values)
        idx = numpy_helper.to_array(sp.indices).astype(np.int64)
    except Exception as exc:  # onnx raises ValueError/TypeError on inconsistent tensors
        raise BadModel(f"{path}: sparse initializer {name!r} is malformed: {one_line(exc)}"
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
                       f"{list(dims)} ({one_line(exc)})") from None
    return numpy_helper.from_array(dense, name)
