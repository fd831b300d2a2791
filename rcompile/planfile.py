"""The plan file (``.rplan``): the chip-independent stage, saved once and reused for a whole lot.

``rcompile plan MODEL -o model.rplan`` writes it; ``rcompile build --plan`` and ``rcompile
provision --plan`` read it instead of loading, quantising and tiling the model again. The spec
is ``docs/provisioning.md``; in short, a ``.rplan`` is a numpy ``.npz`` (zip) archive read by
:func:`rcompile.npzio.read_npz` (no pickles, each member once, sizes bounded, see
``docs/limits.md``), every member a plain ``.npy`` array of the dtype below, stored
uncompressed with fixed timestamps so one plan always gives the same bytes:

=====================  =============================================================
member                 content
=====================  =============================================================
``meta``               uint8: UTF-8 canonical JSON, see :func:`_meta` (format, version,
                       compiler version, model digest, geometry, device, ops, options)
``model``              uint8: the normalised ONNX graph (serialized ModelProto)
``L<i>.float``         float32 ``[groups, rows, outs]``: trained weights of layer ``i``
``L<i>.fbias``         float32 ``[n_out]``: its trained bias
``L<i>.bias``          float32 ``[n_out]``: its digital bias
``L<i>.q``             int8 ``[groups, rows, outs]``: quantised levels difference (int16 when the
                       cell is bit-sliced and the weights do not fit int8)
``L<i>.scale``         float32 ``[groups, outs]``: weight per level step
``L<i>.power``,        float32 ``[groups, rows]``: ``E[x^2]`` and ``E[x]`` of every row on the
``L<i>.mean``          calibration data (only in a plan made with ``--calib``)
``blocks.head``        int32 ``[B, 2]``: layer and group of every block
``blocks.rows``,       int64 ``[B+1]``: where each block's rows / outputs start in
``blocks.outs``        ``blocks.row_ix`` / ``blocks.out_ix`` (CSR offsets)
``blocks.row_ix``,     int32: the logical rows and outputs of all blocks, concatenated
``blocks.out_ix``
``blocks.bin``         int32 ``[B]``: the bin (tile) of every block (``pack``; 0..k-1)
=====================  =============================================================

A plan is bound to the compiler that made it: :func:`read` refuses (:class:`BadPlan`) a plan of
another format version or another compiler version, and :func:`check_chip` one whose tile
geometry or cell levels differ from a chip's fault map, each with one line that says what to do.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

import rcompile
from rcompile import jsonbound
from rcompile.device import Cell
from rcompile.errors import BadPlan, RcompileError
from rcompile.faultmap import FaultMap
from rcompile.fileio import atomic_write
from rcompile.ir import Block, Layer, Plan, RowStats, WeightOp, q_dtype
from rcompile.npzio import read_npz

if TYPE_CHECKING:
    from rcompile.api import LotPlan

FORMAT = "rcompile-plan"
VERSION = 2
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

Calib = tuple[RowStats, ...]

MAX_PLAN_BYTES = 1 << 31
"""Largest plan file, and most bytes its arrays may hold together (2 GiB)."""
MAX_META_BYTES = 64 << 20
"""Largest ``meta`` JSON document of a plan."""

_MEMBER = re.compile(r"meta|model|L\d{1,6}\.(?:float|fbias|bias|q|scale|power|mean)"
                     r"|blocks\.(?:head|rows|outs|row_ix|out_ix|bin)")
"""Every member name a plan may hold."""
_DTYPES: dict[str, type] = {
    "meta": np.uint8, "model": np.uint8, "float": np.float32, "fbias": np.float32,
    "bias": np.float32, "q": np.int8, "scale": np.float32, "power": np.float32,
    "mean": np.float32, "blocks.head": np.int32, "blocks.rows": np.int64,
    "blocks.outs": np.int64, "blocks.row_ix": np.int32, "blocks.out_ix": np.int32,
    "blocks.bin": np.int32,
}
"""The dtype of each member (``L<i>.*`` by suffix); ``q`` may also be int16, when the plan's
weights exceed int8 (:func:`rcompile.ir.q_dtype`, checked in :func:`_rebuild`)."""


@dataclass(frozen=True)
class SavedPlan:
    """A plan as read back: the plan itself and the calibration statistics made with it."""

    plan: Plan
    calib: Calib | None
    """Per layer ``(E[x^2], E[x])``, each float32 ``[groups, rows]``; None without ``--calib``."""
    source: str = "<memory>"


def _meta(plan: Plan, calib: Calib | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "compiler_version": rcompile.__version__,
        "model_sha256": plan.model_sha256,
        "tile_rows": plan.tile_rows,
        "tile_cols": plan.tile_cols,
        "device": plan.device.to_dict(),
        "ops": [op.to_dict() for op in plan.ops],
        "digital": [list(d) for d in plan.digital],
        "options": plan.options,
        "layers": len(plan.layers),
        "blocks": len(plan.blocks),
        "calibrated": calib is not None,
    }


def encode(plan: Plan, calib: Calib | None = None) -> bytes:
    """The exact bytes :func:`write` stores for ``plan`` (and its calibration statistics)."""
    if len(plan.layers) != len(plan.ops) or not plan.blocks:
        raise RcompileError("plan: only a quantised and tiled plan can be saved")
    meta = json.dumps(_meta(plan, calib), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii")
    arrays: list[tuple[str, np.ndarray]] = [
        ("meta", np.frombuffer(meta, np.uint8)),
        ("model", np.frombuffer(plan.model.SerializeToString(), np.uint8)),
    ]
    for i, (layer, fm, fb) in enumerate(zip(plan.layers, plan.float_mats, plan.biases,
                                            strict=True)):
        arrays += [
            (f"L{i}.float", fm.astype(np.float32)),
            (f"L{i}.fbias", fb.astype(np.float32)),
            (f"L{i}.bias", layer.bias.astype(np.float32)),
            (f"L{i}.q", layer.q.astype(q_dtype(plan.device.weight_top))),
            (f"L{i}.scale", layer.scale.astype(np.float32)),
        ]
        if calib is not None:
            arrays += [(f"L{i}.power", calib[i].power.astype(np.float32)),
                       (f"L{i}.mean", calib[i].mean.astype(np.float32))]
    blocks = plan.blocks
    arrays += [
        ("blocks.head", np.array([[b.layer, b.group] for b in blocks], np.int32).reshape(-1, 2)),
        ("blocks.rows", np.cumsum([0] + [len(b.rows) for b in blocks]).astype(np.int64)),
        ("blocks.outs", np.cumsum([0] + [len(b.outs) for b in blocks]).astype(np.int64)),
        ("blocks.row_ix", np.concatenate([b.rows for b in blocks]).astype(np.int32)),
        ("blocks.out_ix", np.concatenate([b.outs for b in blocks]).astype(np.int32)),
        ("blocks.bin", np.asarray(plan.bin_of or range(len(blocks)), np.int32)),
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, a in arrays:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def write(path: str | Path, plan: Plan, calib: Calib | None = None) -> None:
    """Write ``plan`` to ``path`` atomically (temporary file + rename)."""
    atomic_write(path, encode(plan, calib), what="plan", error=BadPlan)


def read(path: str | Path) -> SavedPlan:
    """Read and check a plan file; any defect is one :class:`BadPlan` line naming ``path``."""
    src = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_PLAN_BYTES:
                raise BadPlan(f"{src}: {size} bytes; expected a plan of at most "
                              f"{MAX_PLAN_BYTES} bytes (docs/limits.md)")
            data = f.read()
    except OSError as e:
        raise BadPlan(f"{src}: cannot read plan ({e.strerror or e})") from e
    return decode(data, src)


def decode(data: bytes, src: str = "<bytes>") -> SavedPlan:
    """Check and rebuild a plan from the bytes of a ``.rplan``; any defect is one
    :class:`BadPlan` line naming ``src`` (limits: :data:`MAX_PLAN_BYTES`, ``docs/limits.md``)."""
    hint = "make one with 'rcompile plan MODEL -o FILE.rplan'"
    arrays = read_npz(data, name=src, error=BadPlan, max_array_bytes=MAX_PLAN_BYTES,
                      max_total_bytes=MAX_PLAN_BYTES,
                      allowed=lambda k: _MEMBER.fullmatch(k) is not None,
                      what=f"an rcompile plan ({hint})",
                      expected="only the members of docs/provisioning.md")
    if "meta" not in arrays:
        raise BadPlan(f"{src}: not an rcompile plan (no 'meta' member); {hint}")
    for key, a in arrays.items():
        want = _DTYPES[key.rpartition(".")[2] if key.startswith("L") else key]
        if key.endswith(".q") and a.dtype == np.int16:  # a bit-sliced plan's wide weights
            want = np.int16
        if a.dtype != want:
            raise BadPlan(f"{src}: {key}: dtype {a.dtype}; expected {np.dtype(want)}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise BadPlan(f"{src}: {key}: holds NaN or Inf; expected finite numbers")
    try:
        meta = jsonbound.loads(arrays["meta"].tobytes(), max_bytes=MAX_META_BYTES)
    except ValueError as e:
        raise BadPlan(f"{src}: meta: {e}; expected the plan's JSON metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadPlan(f"{src}: not an rcompile plan (format {meta.get('format')!r})"
                      if isinstance(meta, dict) else f"{src}: meta: expected a JSON object")
    if meta.get("version") != VERSION:
        raise BadPlan(f"{src}: plan format version {meta.get('version')!r}; this rcompile reads "
                      f"version {VERSION}: re-run 'rcompile plan'")
    if meta.get("compiler_version") != rcompile.__version__:
        raise BadPlan(f"{src}: plan made by rcompile {meta.get('compiler_version')}, this is "
                      f"rcompile {rcompile.__version__}: re-run 'rcompile plan'")
    try:
        return SavedPlan(*_rebuild(meta, arrays), source=src)
    except BadPlan:
        raise
    except RcompileError as e:  # a Cell field out of range
        raise BadPlan(f"{src}: meta: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
            DecodeError) as e:
        raise BadPlan(f"{src}: damaged plan ({type(e).__name__}: {e})") from None


def _rebuild(meta: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[Plan, Calib | None]:
    ops = tuple(WeightOp.from_dict(d) for d in meta["ops"])
    n = int(meta["layers"])
    if n != len(ops):
        raise ValueError(f"{n} layers but {len(ops)} ops")
    device = Cell(**meta["device"])
    q_type = q_dtype(device.weight_top)
    for i in range(n):
        if a[f"L{i}.q"].dtype != q_type:
            raise ValueError(f"layer {i}: q is {a[f'L{i}.q'].dtype}, a plan for weights up to "
                             f"{device.weight_top} level steps stores {q_type}")
    layers = tuple(
        Layer(op=ops[i], q=a[f"L{i}.q"], scale=a[f"L{i}.scale"], bias=a[f"L{i}.bias"])
        for i in range(n)
    )
    for i, op in enumerate(ops):
        want = {"q": (op.groups, op.rows, op.outs), "float": (op.groups, op.rows, op.outs),
                "scale": (op.groups, op.outs), "bias": (op.n_out,), "fbias": (op.n_out,)}
        if meta["calibrated"]:
            want |= {"power": (op.groups, op.rows), "mean": (op.groups, op.rows)}
        for name, shape in want.items():
            got = a[f"L{i}.{name}"].shape
            if got != shape:
                raise ValueError(f"layer {i}: {name} has shape {got}, op {op.node!r} needs "
                                 f"{shape}")
    head, ro, oo = a["blocks.head"], a["blocks.rows"], a["blocks.outs"]
    rix, oix = a["blocks.row_ix"], a["blocks.out_ix"]
    blocks = tuple(
        Block(layer=int(head[b, 0]), group=int(head[b, 1]), rows=rix[ro[b]:ro[b + 1]].copy(),
              outs=oix[oo[b]:oo[b + 1]].copy())
        for b in range(len(head))
    )
    if len(blocks) != int(meta["blocks"]) or not blocks:
        raise ValueError(f"{len(blocks)} blocks, meta says {meta['blocks']}")
    bin_of = tuple(int(k) for k in a["blocks.bin"])
    if len(bin_of) != len(blocks) or min(bin_of) < 0 or set(bin_of) != set(range(max(bin_of) + 1)):
        raise ValueError("blocks.bin must give every block a bin, bins numbered 0..k-1")
    for b, blk in enumerate(blocks):
        q = layers[blk.layer].q  # IndexError on a bad layer index
        if (blk.group >= q.shape[0] or blk.rows.size and blk.rows.max() >= q.shape[1]
                or blk.outs.size and blk.outs.max() >= q.shape[2]):
            raise ValueError(f"block {b} lies outside layer {blk.layer}")
    model = onnx.ModelProto()
    model.ParseFromString(a["model"].tobytes())
    _check_graph(model, ops)
    plan = Plan(
        model=model,
        model_sha256=str(meta["model_sha256"]),
        tile_rows=int(meta["tile_rows"]),
        tile_cols=int(meta["tile_cols"]),
        device=device,
        ops=ops,
        float_mats=tuple(a[f"L{i}.float"] for i in range(n)),
        biases=tuple(a[f"L{i}.fbias"] for i in range(n)),
        layers=layers,
        blocks=blocks,
        bin_of=bin_of,
        digital=tuple((str(x), str(y), str(z)) for x, y, z in meta["digital"]),
        options=dict(meta["options"]),
    )
    calib = (tuple(RowStats(a[f"L{i}.power"], a[f"L{i}.mean"]) for i in range(n))
             if meta["calibrated"] else None)
    return plan, calib


def _check_graph(model: onnx.ModelProto, ops: tuple[WeightOp, ...]) -> None:
    """ValueError unless ``model`` is the graph of ``ops``: every op is a node that reads its
    weight initializer, of the op's shape, and its bias is read by that node or by a node that
    reads its output. The node's type is not compared: the front end maps some ops onto another
    crossbar node (a LinearClassifier's scores are a Gemm, a ConvTranspose's a 1x1 Conv) and
    moves some biases onto an Add after the node."""
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    if not nodes:
        raise ValueError("the model member holds no graph")
    for op in ops:
        node = nodes.get(op.node)
        if node is None or op.weight not in node.input:
            raise ValueError(f"op {op.node!r} ({op.op_type}) is not in the saved graph")
        if inits.get(op.weight) != tuple(op.shape):
            raise ValueError(f"op {op.node!r}: weight {op.weight!r} is not a {list(op.shape)} "
                             "initializer of the saved graph")
        if op.bias and not _reads_bias(model, node, op.bias):
            raise ValueError(f"op {op.node!r}: bias {op.bias!r} is not read after the op in "
                             "the saved graph")


def _reads_bias(model: onnx.ModelProto, node: onnx.NodeProto, bias: str) -> bool:
    """Whether ``node`` or a node reading one of its outputs reads ``bias``."""
    if bias in node.input:
        return True
    outs = set(node.output)
    return any(bias in n.input and outs & set(n.input) for n in model.graph.node)


def check_chip(saved: SavedPlan | LotPlan, fm: FaultMap) -> None:
    """Refuse a chip whose tile geometry or cell levels differ from the plan's (a saved plan
    or a lot's plan: both carry ``plan`` and ``source``)."""
    plan, geo = saved.plan, fm.geometry
    if (geo.rows, geo.cols) != (plan.tile_rows, plan.tile_cols):
        raise BadPlan(
            f"{saved.source}: plan is for {plan.tile_rows}x{plan.tile_cols} tiles but fault map "
            f"{fm.source} has {geo.rows}x{geo.cols}: make a plan with --rows {geo.rows} "
            f"--cols {geo.cols}"
        )
    if fm.levels is not None and fm.levels != plan.device.levels:
        raise BadPlan(
            f"{saved.source}: plan is quantised for {plan.device.levels} levels but fault map "
            f"{fm.source} has {fm.levels}: make a plan with --levels {fm.levels}"
        )


def check_model(saved: SavedPlan, model_path: str) -> None:
    """Refuse a plan that was not made from the model at ``model_path``."""
    from rcompile.fileio import file_sha256

    try:
        digest = file_sha256(model_path)
    except OSError as e:
        raise BadPlan(f"{model_path}: cannot read model ({e.strerror or e})") from e
    if digest == saved.plan.model_sha256:
        return
    from rcompile.frontend import load_model  # external data: the digest covers it too

    if load_model(model_path).sha256 != saved.plan.model_sha256:
        raise BadPlan(f"{saved.source}: plan was made from another model than {model_path} "
                      "(model SHA-256 differs): re-run 'rcompile plan'")
