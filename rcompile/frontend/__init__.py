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

The package, in processing order: :mod:`~rcompile.frontend.load` (loading),
:mod:`~rcompile.frontend.normalise` (the rules in order, and rule 3),
:mod:`~rcompile.frontend.ops` (rule 4), :mod:`~rcompile.frontend.fold` (rule 5), and
:mod:`~rcompile.frontend.graph`, the graph view the rules share (rules 1 and 2).
"""

from rcompile.frontend.load import MAX_MODEL_BYTES, MIN_OPSET, load_model
from rcompile.frontend.normalise import Frontend, normalise

__all__ = ["MAX_MODEL_BYTES", "MIN_OPSET", "Frontend", "load_model", "normalise"]
