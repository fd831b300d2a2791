"""The graph view the normalisation rules work on, and the helpers the rules share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from rcompile.errors import BadModel
from rcompile.ir import WeightOp

#: Domains whose ops the compiler knows.
STANDARD = ("", "ai.onnx")
#: Elementwise ops whose constant operand may be folded into a crossbar op before them (rule 5):
#: that operand is evaluated only where the result is no larger than the constants it reads.
AFFINE = ("Mul", "Add", "Sub", "Div")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
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


def is_float(dtype: np.dtype) -> bool:
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


class Graph:
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
                if node.domain not in STANDARD or len(node.output) != 1:
                    continue
                value: np.ndarray | None = None
                if node.op_type == "Constant":
                    value = _constant_value(node)
                elif node.op_type == "Identity" and node.input[0] in self.consts:
                    value = self.consts[node.input[0]]
                elif node.op_type == "Cast" and node.input[0] in self.consts:
                    to = helper.tensor_dtype_to_np_dtype(int(node_attrs(node)["to"]))  # type: ignore[call-overload]
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
        used |= subgraph_inputs(self.g)
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
        if is_float(value.dtype) and not np.all(np.isfinite(value.astype(np.float64))):
            raise BadModel(
                f"{self.path}: node {node.name!r} ({node.op_type}): {what} {name!r} contains "
                "NaN or Inf; expected finite values"
            )
        return value


def subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes of subgraphs (If/Loop/Scan bodies) of ``graph``, outer scope included."""
    names: set[str] = set()
    for node in graph.node:
        for a in node.attribute:
            subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                names |= {i for n in sub.node for i in n.input} | subgraph_inputs(sub)
    return names


def node_attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class Mapped:
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
