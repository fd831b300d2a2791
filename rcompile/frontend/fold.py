"""Rule 5 of :mod:`rcompile.frontend`: BatchNormalization and per-channel affine nodes folded
into the crossbar op before them."""

from __future__ import annotations

import numpy as np
import onnx

from rcompile.errors import BadModel
from rcompile.frontend.graph import (
    AFFINE,
    STANDARD,
    Graph,
    Mapped,
    is_float,
    node_attrs,
    subgraph_inputs,
)
from rcompile.frontend.ops import finite
from rcompile.ir import LAYOUT_CONV


def fold_into_crossbar(gr: Graph, mapped: list[Mapped], reasons: dict[str, str]) -> set[str]:
    """Fold per-output affine nodes into the crossbar op before them (rule 5); return them."""
    folded: set[str] = set()
    outputs = {o.name for o in gr.g.output} | subgraph_inputs(gr.g)
    changed = True
    while changed:
        changed = False
        for m in mapped:
            users = gr.consumers(m.out)
            if len(users) != 1 or m.out in outputs or users[0].domain not in STANDARD:
                continue
            nxt = users[0]
            if nxt.op_type == "BatchNormalization":
                if _bn_blocker(gr, nxt, m, outputs) is not None:
                    continue
                k, c = _bn_affine(gr, nxt)
            elif nxt.op_type in AFFINE:
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
        if bn.domain in STANDARD:
            before = next((m for m in mapped if m.out == bn.input[0]), None)
            why = _bn_blocker(gr, bn, before, outputs)
            reasons[bn.name] = f"BatchNormalization not folded: {why}"
    return folded


def _bn_affine(gr: Graph, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    """``BN(y) = k * y + c`` per channel."""
    scale, shift, mean, var = (
        np.asarray(gr.const(bn, i, "BatchNormalization parameter"), np.float64).reshape(-1)
        for i in range(1, 5)
    )
    eps = float(node_attrs(bn).get("epsilon", 1e-5))  # type: ignore[arg-type]
    if np.any(var + eps <= 0):
        raise BadModel(
            f"{gr.path}: node {bn.name!r} (BatchNormalization): variance + epsilon <= 0 "
            "gives NaN; expected a positive variance"
        )
    k = scale / np.sqrt(var + eps)
    return k, shift - mean * k


def _affine_after_transpose(gr: Graph, tr: onnx.NodeProto, m: Mapped, outputs: set[str]
                            ) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray] | None:
    """The affine node (and its ``k``, ``c``) that alone reads the Transpose ``tr`` of ``m``'s
    result, per channel on the axis the channels moved to, or None."""
    if m.channel_axis is None or m.rank is None:
        return None
    perm = [int(p) for p in node_attrs(tr).get("perm", range(m.rank - 1, -1, -1))]  # type: ignore[attr-defined]
    users = gr.consumers(tr.output[0])
    if (sorted(perm) != list(range(m.rank)) or len(users) != 1 or tr.output[0] in outputs
            or users[0].op_type not in AFFINE or users[0].domain not in STANDARD):
        return None
    kc = _elementwise_affine(gr, users[0], tr.output[0], m.rank, perm.index(m.channel_axis),
                             m.channels)
    return None if kc is None else (users[0], kc[0], kc[1])


def _elementwise_affine(gr: Graph, node: onnx.NodeProto, y: str, rank: int, axis: int,
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
    if not is_float(value.dtype) or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()


def _scale_op(gr: Graph, m: Mapped, node: onnx.NodeProto, k: np.ndarray, c: np.ndarray
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
        gr.set_const(m.post_bias, finite(gr, node, w, post)[1])
    else:
        b = b + c
    m.weight, m.bias = finite(gr, node, w, b)
    gr.set_const(m.op.weight, m.weight)
    gr.set_const(m.op.bias, m.bias)


def _bn_blocker(gr: Graph, bn: onnx.NodeProto, m: Mapped | None, outputs: set[str]
                ) -> str | None:
    """Why ``bn`` cannot be folded into the crossbar op ``m`` it follows, or None."""
    if m is None or bn.input[0] != m.out:
        return "its input is not the result of a crossbar op"
    if int(node_attrs(bn).get("training_mode", 0)):  # type: ignore[call-overload]
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
