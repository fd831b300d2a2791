"""Rule 4 of :mod:`rcompile.frontend`: each crossbar op (Conv, ConvTranspose, Gemm, MatMul,
Einsum, QLinearConv/QLinearMatMul, ONNX-ML linear models) rewritten to read its own weight and
bias initializers."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from rcompile.errors import BadModel
from rcompile.frontend.graph import STANDARD, Graph, Mapped, is_float, node_attrs
from rcompile.ir import LAYOUT_CONV, LAYOUT_KN, WeightOp

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


def map_node(gr: Graph, node: onnx.NodeProto) -> str | Mapped:
    """Rewrite one mappable node in place; return the reason when it stays digital."""
    if any((f.domain, f.name) == (node.domain, node.op_type) for f in gr.model.functions):
        return "model-local function; runs digitally"
    if node.domain == "ai.onnx.ml":
        if node.op_type in ("LinearRegressor", "LinearClassifier"):
            return _map_linear_ml(gr, node)
        return "not a weight op"
    if node.domain not in STANDARD:
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


def _dequantize_qlinear(gr: Graph, node: onnx.NodeProto) -> str | None:
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


def _einsum_as_matmul(gr: Graph, node: onnx.NodeProto) -> bool:
    """Rewrite ``node`` in place as ``MatMul(X, W[K, N])`` if its equation is that product:
    ``X``'s subscripts end in ``k``, the 2-D constant's are ``kn`` or ``nk``, and the output is
    ``X``'s subscripts with ``k`` replaced by ``n`` (``...`` allowed in front)."""
    raw = node_attrs(node).get("equation", b"")
    eq = (raw.decode() if isinstance(raw, bytes) else str(raw)).replace(" ", "")
    if len(node.input) != 2 or "->" not in eq:
        return False
    terms, out = eq.split("->")
    ops = terms.split(",")
    if len(ops) != 2 or (node.input[0] in gr.consts) == (node.input[1] in gr.consts):
        return False
    wi = 0 if node.input[0] in gr.consts else 1
    w, xs, ws = gr.consts[node.input[wi]], ops[1 - wi], ops[wi]
    if w.ndim != 2 or len(ws) != 2 or "." in ws or not is_float(w.dtype):
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


def _map_linear_ml(gr: Graph, node: onnx.NodeProto) -> str | Mapped:
    """ONNX-ML ``LinearRegressor``/``LinearClassifier`` (sklearn linear models): the float32
    scores ``X @ coefficients^T + intercepts`` are a Gemm on the crossbar; a post-transform, and
    a classifier's labels, stay in the node, which then reads the scores with identity
    coefficients."""
    a = node_attrs(node)
    x = node.input[0]
    elem = gr.elem(x)
    if gr.rank(x) != 2 or elem not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        return f"{node.op_type} on a {gr.rank(x)}-D input of type {elem}; the crossbar takes " \
               "a 2-D float input"
    if not any(o.domain in STANDARD for o in gr.model.opset_import):
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


def _not_constant(gr: Graph, node: onnx.NodeProto, index: int, what: str) -> str:
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
    if not is_float(w.dtype):
        return f"{w.dtype} weights are not mapped; crossbars take floating-point weights"
    if not np.any(w):
        return "every weight is zero: nothing to program; runs digitally (its output is its bias)"
    return None


def _kernel_weight(gr: Graph, node: onnx.NodeProto, expected: str) -> np.ndarray | str:
    """The constant weight (input 1) of a Conv or ConvTranspose, or why it stays digital; a
    weight of rank below 3 is bad input (``expected`` names the layout)."""
    w = gr.const(node, 1, "weight")
    if w is None:
        return _not_constant(gr, node, 1, "weight")
    if (why := _weight_reason(w)) is not None:
        return why
    if w.ndim < 3:
        raise BadModel(f"{gr.path}: node {node.name!r}: {node.op_type} weight has rank "
                       f"{w.ndim}; expected >= 3{expected}")
    return w


def _map_conv(gr: Graph, node: onnx.NodeProto, op_type: str = "Conv") -> str | Mapped:
    w = _kernel_weight(gr, node, "")
    if isinstance(w, str):
        return w
    groups = int(node_attrs(node).get("group", 1))  # type: ignore[call-overload]
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


def _map_conv_transpose(gr: Graph, node: onnx.NodeProto) -> str | Mapped:
    """ConvTranspose as a 1x1 crossbar Conv and a digital overlap-add (col2im).

    Every input pixel's ``Cin/g`` vector times the ``[Cin/g, Cout/g * prod(k)]`` matrix of its
    group gives one value per output channel and kernel position; a ConvTranspose with the
    model's own attributes and a 0/1 kernel (one group per output channel, kernel position
    ``j`` of channel ``c`` read from channel ``c * prod(k) + j``) adds them up where they
    overlap. Exact for every stride, padding, output padding, dilation, group and output shape.
    """
    w = _kernel_weight(gr, node, " ([Cin, Cout/group, *kernel])")
    if isinstance(w, str):
        return w
    a = node_attrs(node)
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


def _map_gemm(gr: Graph, node: onnx.NodeProto, op_type: str = "Gemm") -> str | Mapped:
    w = gr.const(node, 1, "weight (input B)")
    if w is None and gr.const(node, 0, "input A") is not None:
        return ("constant input A times a run-time input B (the weight on the left); "
                "runs digitally")
    if w is None:
        return _not_constant(gr, node, 1, "weight (input B)")
    if (why := _weight_reason(w)) is not None:
        return why
    a = node_attrs(node)
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


def _map_matmul(gr: Graph, node: onnx.NodeProto, op_type: str = "MatMul") -> str | Mapped:
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


def _weight_op(gr: Graph, node: onnx.NodeProto, op_type: str, shape: tuple[int, ...],
               layout: str, groups: int = 1) -> WeightOp:
    return WeightOp(node.name, op_type, gr.fresh(f"{node.name}.rc_weight"),
                    gr.fresh(f"{node.name}.rc_bias"), tuple(int(s) for s in shape), layout, groups)


def _elem(w: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(w.dtype)


class _Seq:
    """Builds the nodes that replace one crossbar node, and splices them in."""

    def __init__(self, gr: Graph, node: onnx.NodeProto, elem: int) -> None:
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
               fan: int = 1, post_bias: str | None = None) -> Mapped:
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
        w32, b32 = finite(self.gr, self.node, w, bias)
        self.gr.set_const(op.weight, w32)
        self.gr.set_const(op.bias, b32)
        idx = list(self.gr.g.node).index(self.node)
        self.gr.g.node.remove(self.node)
        for k, n in enumerate(self.nodes):
            self.gr.g.node.insert(idx + k, n)
        return Mapped(op, w32, b32, self.node.output[0], channel_axis, rank, fan, post_bias)


def finite(gr: Graph, node: onnx.NodeProto, w: np.ndarray, bias: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    w32 = np.asarray(w, np.float64).astype(np.float32)
    b32 = np.asarray(bias, np.float64).astype(np.float32)
    if not (np.all(np.isfinite(w32)) and np.all(np.isfinite(b32))):
        raise BadModel(
            f"{gr.path}: node {node.name!r} ({node.op_type}): its weight or bias is not finite "
            "in float32 after folding (alpha, beta or BatchNormalization); expected finite values"
        )
    return w32, b32
