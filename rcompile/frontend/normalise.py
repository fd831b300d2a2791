"""Normalisation: the rules of :mod:`rcompile.frontend` in order, and rule 3 (weights computed
from constants become initializers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper, shape_inference

from rcompile.errors import BadModel
from rcompile.frontend.fold import fold_into_crossbar
from rcompile.frontend.graph import (
    AFFINE,
    STANDARD,
    Graph,
    Mapped,
    checkable,
    one_line,
    subgraph_inputs,
)
from rcompile.frontend.ops import map_node
from rcompile.ir import WeightOp

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


@dataclass(frozen=True)
class Frontend:
    """Result of :func:`load_model`."""

    model: onnx.ModelProto
    """Normalised graph (rules in :mod:`rcompile.frontend`)."""
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


def normalise(model: onnx.ModelProto, path: str, sha256: str) -> Frontend:
    """Apply the normalisation rules of :mod:`rcompile.frontend`; see :class:`Frontend`."""
    gr = Graph(model, path)  # rules 1 and 2
    _fold_constant_paths(gr)  # rule 3
    original = [(n.name, n.op_type, n.domain) for n in gr.g.node]
    reasons: dict[str, str] = {}
    mapped: list[Mapped] = []
    for node in list(gr.g.node):  # rule 4
        name, op_type = node.name, node.op_type
        try:
            found = map_node(gr, node)
        except BadModel:
            raise
        except Exception as exc:  # a form no rule foresaw: name it rather than crash
            raise BadModel(
                f"{path}: node {name!r} ({op_type}) cannot be mapped: {one_line(exc)}; "
                "expected a node the ONNX specification allows"
            ) from None
        if isinstance(found, str):
            reasons[node.name] = found
        else:
            mapped.append(found)
    folded = fold_into_crossbar(gr, mapped, reasons)  # rule 5
    gr.drop_unused()  # rule 6
    try:  # the checker's full check, which is its check and strict shape inference
        onnx.checker.check_model(checkable(gr.model))
        shape_inference.infer_shapes(gr.model, check_type=True, strict_mode=True)
    except Exception as exc:  # a normalisation bug, but say which model it happened on
        raise BadModel(
            f"{path}: normalised graph fails the ONNX checker: {one_line(exc)}"
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


def _fold_constant_paths(gr: Graph) -> None:
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
        if node.domain not in STANDARD:
            continue
        affine = node.op_type in AFFINE
        for i in (0, 1) if affine else _PARAM_INPUTS.get(node.op_type, ()):
            name = node.input[i] if i < len(node.input) else ""
            if not name or name in gr.consts or name not in derived or name in outputs:
                continue
            if name in targets:
                continue
            cone = _cone(name, producers, gr.consts)
            custom = next((n for n in cone if n.domain not in STANDARD
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
        read = {i for n in gr.g.node for i in n.input} | outputs | subgraph_inputs(gr.g)
        for n in list(gr.g.node):
            if n.name in cone_nodes and not any(o in read for o in n.output if o):
                gr.g.node.remove(n)
                changed = True


def _evaluate_optional(gr: Graph, targets: list[str], producers: dict[str, onnx.NodeProto]
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


def _evaluate(gr: Graph, nodes: list[onnx.NodeProto], targets: list[str]) -> list[np.ndarray]:
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
    opts.log_severity_level = 4  # fatal only: errors reach the user as our one line
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        return [np.asarray(v) for v in sess.run(None, {})]
    except Exception as exc:
        users = sorted({n.name for n in gr.g.node for t in targets if t in n.input})
        raise BadModel(
            f"{gr.path}: cannot evaluate the constant nodes that compute the weights of "
            f"{', '.join(repr(u) for u in users)}: {one_line(exc)}"
        ) from None
