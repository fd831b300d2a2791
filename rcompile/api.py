"""The Python API; the CLI is a thin shell over it.

One compile, model and fault map to image, is :func:`compile_chip`::

    fm = faultmap.load("chip.npz")
    res = compile_chip("model.onnx", fm, calib_path="calib.npz")     # plan + per-chip stage
    report = runtime.verify(res.image, fm, data)                     # independent check

A lot plans once and compiles every chip against that plan::

    lot = plan_lot("model.onnx", fm, calib_path="calib.npz")        # chip-independent, once a lot
    res = compile_chip("model.onnx", other_fm, lot=lot)              # per chip
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

import rcompile
from rcompile import pipeline as pl
from rcompile import slicing
from rcompile.device import Cell, Geometry, Hardware
from rcompile.errors import BadData, BadFaultMap, BadPlan, DoesNotFit
from rcompile.faultmap import FaultMap
from rcompile.frontend import load_model
from rcompile.image import BuildOptions, Image, ImageHeader, LayerRecord, SliceRecord, TileRecord
from rcompile.ir import LAYOUT_CONV, ChipMapping, Plan, RowStats, chip_view, to_matrices
from rcompile.progress import Event, ProgressFn, notify

#: Strategies by name: the per-chip pipeline each runs.
STRATEGIES: dict[str, str] = {
    "two-column": "place,program{scheme=two-column}",
    "differential": "place,program{scheme=differential}",
    "mt": "place{order=assign},transform,program{scheme=transform}",
    "full": "place{order=assign},permute,program,calibrate",
    # full without the reference search (no block-by-block guarantee against it), one restart
    # from scratch instead: for lots where throughput counts (docs/mapping.md)
    "full-fast": "place{order=assign},permute{reference=false,restarts=1},program,calibrate",
    # full plus spare tiles on the worst blocks and a row assignment over each column strip:
    # for dense layers that leave the permutation no room (docs/dense.md)
    "full-spare-strip": "place{order=assign},permute,spare,strip,program,calibrate",
    # full-spare-strip plus the pairs reprogrammed for the calibration data's input
    # covariance (docs/dense.md): the best measured on dense layers at high fault rates
    "dense": "place{order=assign},permute,spare,strip,program,covariance,calibrate",
}
DEFAULT_STRATEGY = "full"
PLAN_PIPELINE = "quantize,tile,pack"


def plan_pipeline(prune: str | None = None) -> str:
    """The chip-independent pipeline, with ``prune`` given as ``MODE:AMOUNT`` (e.g. rows:0.3)."""
    if not prune:
        return PLAN_PIPELINE
    mode, _, amount = prune.partition(":")
    return f"prune{{mode={mode},amount={float(amount or 0.5)}}},{PLAN_PIPELINE}"


@dataclass(frozen=True)
class Timing:
    """Where one chip's compile spent its wall time."""

    plan_seconds: float = 0.0
    """The chip-independent stage, seconds (0 when a lot's plan was reused)."""
    chip_seconds: float = 0.0
    """The per-chip stage and the image assembly, seconds (0 from :func:`build` alone)."""
    passes: tuple[pl.PassTiming, ...] = ()
    """Every pass that ran, in order (chip-independent ones first when the plan was made
    here)."""


@dataclass(frozen=True)
class BuildResult:
    """One chip's compile: its image, the mapping behind it, and what happened."""

    image: Image
    mapping: ChipMapping
    log: list[dict[str, Any]]
    """One entry per pass that ran (chip-independent ones first when the plan was made here):
    ``pass``, ``seconds`` and the pass's own statistics (the build report's ``passes``)."""
    warnings: list[str]
    """What an operator should know; the image is valid regardless."""
    header: ImageHeader
    """The image's header as typed values (``image.header`` is its JSON object)."""
    plan: Plan | None = None
    """The plan the chip was compiled against."""
    timing: Timing = Timing()

    @property
    def plan_seconds(self) -> float:
        """Time of the chip-independent stage (:attr:`Timing.plan_seconds`)."""
        return self.timing.plan_seconds

    @property
    def chip_seconds(self) -> float:
        """Time of the per-chip stage and the image assembly (:attr:`Timing.chip_seconds`)."""
        return self.timing.chip_seconds


@dataclass(frozen=True)
class LotPlan:
    """The chip-independent stage of a lot: made once, shared by every chip of the lot."""

    plan: Plan
    calib: Calib | None
    """Per crossbar op ``(E[x^2], E[x])`` of its matrix rows; None without calibration data."""
    log: tuple[dict[str, Any], ...] = ()
    """The plan passes' log (empty when the plan was read from a plan file)."""
    source: str = "<memory>"
    """Where the plan came from (a plan file, or ``plan of MODEL``): named in errors."""
    seconds: float = 0.0


Calib = tuple[RowStats, ...]


def plan_lot(
    model_path: str,
    fm: FaultMap | None,
    *,
    hardware: Hardware | None = None,
    plan_path: str | None = None,
    calib_path: str | None = None,
    prune: str | None = None,
    progress: ProgressFn | None = None,
    moments: bool = False,
) -> LotPlan:
    """The chip-independent stage for chips like ``fm``: read from ``plan_path`` (checked
    against the model, ``hardware``'s cell and, unless ``fm`` is None, the chip's geometry and
    levels), or made from the model for ``fm``'s tile geometry and levels and ``hardware``'s
    cell; with ``calib_path``, the calibration statistics of its data (with ``moments``, also
    the input moments of the ``covariance`` pass; a plan file holds none). ``progress`` hears
    of every plan pass and of the calibration statistics (:mod:`rcompile.progress`)."""
    from rcompile import planfile
    from rcompile.programming import compiler_device

    t0 = time.perf_counter()
    if plan_path is not None:
        if prune is not None:
            raise BadPlan(f"{plan_path}: a saved plan already fixes pruning; drop --prune")
        saved = planfile.read(plan_path)
        planfile.check_model(saved, model_path)
        if fm is not None:
            planfile.check_chip(saved, fm)
        if calib_path is not None and saved.calib is None:
            raise BadPlan(f"{plan_path}: made without --calib; pass --calib to 'rcompile plan'")
        if hardware is not None and hardware.cell.levels != saved.plan.device.levels:
            raise BadPlan(f"{plan_path}: plan is quantised for {saved.plan.device.levels} levels "
                          f"but device {hardware.name} has {hardware.cell.levels}: make a plan "
                          f"with --levels {hardware.cell.levels}")
        if hardware is not None and _slicing_of(hardware.cell) != _slicing_of(saved.plan.device):
            raise BadPlan(f"{plan_path}: plan is quantised for {_slicing_of(saved.plan.device)} "
                          f"but device {hardware.name} has {_slicing_of(hardware.cell)}: make "
                          "the plan for that cell (docs/slicing.md)")
        plan = saved.plan
        if hardware is not None:  # one cell for the whole image: the device's, as without a plan
            cell = compiler_device(hardware)
            assert cell is not None
            plan = replace(plan, device=cell)
        return LotPlan(plan, saved.calib, (), saved.source, time.perf_counter() - t0)
    if fm is None:
        raise ValueError("plan_lot: a plan made from the model needs a fault map (its geometry)")
    geo = fm.geometry
    plan, log = make_plan(model_path, tile_rows=geo.rows, tile_cols=geo.cols,
                          device=fm.device(compiler_device(hardware)),
                          pipeline=plan_pipeline(prune), progress=progress)
    calib = None
    if calib_path is not None:
        notify(progress, Event("calib", "statistics", 0, 1))
        t1 = time.perf_counter()
        calib = load_calib_stats(plan, calib_path, moments)
        notify(progress, Event("calib", "statistics", 1, 1, time.perf_counter() - t1))
    return LotPlan(plan, calib, tuple(log), f"plan of {model_path}", time.perf_counter() - t0)


def _slicing_of(cell: Cell) -> str:
    """A cell's weight precision in words, for errors (``weight_bits`` over ``cell_bits``)."""
    if cell.n_slices == 1 and not cell.weight_bits:
        return "one cell per weight polarity"
    return f"{cell.weight_bits}-bit weights on {cell.n_slices} cells of {cell.slice_bits} bits"


def needs_moments(spec: str) -> bool:
    """Whether the per-chip pipeline ``spec`` reads the calibration moments ``E[x x^T]`` (the
    ``covariance`` pass), which :func:`plan_lot` then has to make."""
    return reads_moments(pl.parse(spec, stage=pl.CHIP))


def reads_moments(passes: list[Any]) -> bool:
    """Whether parsed per-chip ``passes`` include the ``covariance`` pass."""
    return any(p.name == "covariance" for p in passes)


def compile_chip(
    model_path: str,
    fm: FaultMap,
    *,
    lot: LotPlan | None = None,
    plan_path: str | None = None,
    calib_path: str | None = None,
    prune: str | None = None,
    strategy: str = "full",
    pipeline: str | None = None,
    solver: pl.SolverOptions | None = None,
    hardware: Hardware | None = None,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """Compile the model at ``model_path`` for the chip whose fault map is ``fm``.

    ``lot`` is a plan made once for a whole lot (:func:`plan_lot`); without it the plan is made
    here (or read from ``plan_path``). ``hardware`` is the device model the chip is made in:
    the plan quantises for its cell and the image records it, so ``verify`` emulates it.
    ``progress`` hears of every pass as it starts and finishes (:mod:`rcompile.progress`)."""
    if pipeline is None and strategy not in STRATEGIES:
        raise pl.BadPipeline(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    passes = chip_pipeline(pipeline or STRATEGIES[strategy])   # checked before any work
    if hardware is not None:                                   # the device's tiles are the chip's
        hardware.check_tiles(fm.geometry.rows, fm.geometry.cols, fm.source)
    lot = lot or plan_lot(model_path, fm, hardware=hardware, plan_path=plan_path,
                          calib_path=calib_path, prune=prune,  # chip-independent stage
                          moments=reads_moments(passes),
                          progress=progress)
    t0 = time.perf_counter()
    res = build(lot.plan, fm, strategy=strategy, pipeline=pipeline, solver=solver,
                calib=lot.calib, hardware=None if hardware is None else hardware.to_dict(),
                passes=passes, progress=progress)              # per-chip passes and the image
    log = [*lot.log, *res.log]
    timing = Timing(plan_seconds=lot.seconds, chip_seconds=time.perf_counter() - t0,
                    passes=pl.pass_timings(log))
    return replace(res, log=log, plan=lot.plan, timing=timing)


def utilisation(plan: Plan, image: Image) -> list[dict[str, Any]]:
    """Per crossbar op: its blocks, the physical tiles it occupies and the fraction of those
    tiles' cells its blocks use (two cells per weight)."""
    cells = plan.tile_rows * plan.tile_cols
    tiles: list[set[int]] = [set() for _ in plan.ops]
    for tile in image.tiles:
        for sl in tile.slices:
            tiles[sl.layer].add(int(tile.tile))
    out = []
    for i, op in enumerate(plan.ops):
        blocks = [b for b in plan.blocks if b.layer == i]
        used = sum(2 * len(b.rows) * len(b.outs) for b in blocks)
        out.append({"node": op.node, "op_type": op.op_type, "shape": list(op.shape),
                    "groups": op.groups, "blocks": len(blocks), "tiles": len(tiles[i]),
                    "cell_utilisation": used / max(1, len(tiles[i]) * cells)})
    return out


def make_plan(
    model_path: str,
    *,
    tile_rows: int = 128,
    tile_cols: int = 128,
    device: Cell | None = None,
    pipeline: str = PLAN_PIPELINE,
    progress: ProgressFn | None = None,
) -> tuple[Plan, list[dict[str, Any]]]:
    """Chip-independent stage: load and normalise the model, quantise, tile, pack.

    Returns the plan and the log of its passes."""
    device = device or Cell()
    notify(progress, Event("model", "load", 0, 1))
    t0 = time.perf_counter()
    fe = load_model(model_path)
    notify(progress, Event("model", "load", 1, 1, time.perf_counter() - t0))
    mats = tuple(to_matrices(op, w) for op, w in zip(fe.ops, fe.weights, strict=True))
    plan = Plan(
        model=fe.model,
        model_sha256=fe.sha256,
        tile_rows=tile_rows,
        tile_cols=tile_cols,
        device=device,
        ops=fe.ops,
        float_mats=mats,
        biases=fe.biases,
        digital=fe.digital,
        options={"plan_pipeline": pipeline},
    )
    ctx = pl.PlanContext(tile_rows, tile_cols, device)
    passes = pl.parse(pipeline, stage=pl.PLAN, have=frozenset())
    plan, _, log = pl.run(passes, plan, ctx, progress=progress)
    return plan, log


def tiles_needed(model_path: str, rows: int, cols: int) -> int:
    """Crossbar tiles of ``rows`` x ``cols`` the model needs (one block per tile)."""
    plan, _ = make_plan(model_path, tile_rows=rows, tile_cols=cols)
    return plan.tiles_needed()


def spare_tiles(needed: int, spare: float) -> int:
    """Tiles for a chip that needs ``needed`` with a ``spare`` fraction on top.

    ``ceil(needed * (1 + spare))``, at least ``needed + 1`` when ``spare > 0``; rounded to 9
    decimals first so that, e.g., 10 tiles with 10 % spare give 11, not 12.
    """
    tiles = math.ceil(round(needed * (1.0 + spare), 9))
    return max(tiles, needed + 1) if spare > 0 else tiles


def chip_pipeline(spec: str, plan: Plan | None = None) -> list[pl.ChipPass]:
    """The per-chip passes of ``spec``, checked before any runs: per-chip passes only, each
    pass's requirements ensured by the plan (or, without one, by a finished plan) or an earlier
    pass, and an image's needs (placements and cell levels) ensured by the end."""
    have = pl.plan_facts(plan) if plan is not None else frozenset({"quantised", "blocks"})
    passes = pl.parse(spec, stage=pl.CHIP)
    missing = {"placements", "levels"} - pl.check_order(passes, have)
    if missing:
        raise pl.BadPipeline(
            f"pipeline: {spec!r} does not ensure {', '.join(sorted(missing))}, which an image "
            "needs; end it with 'program'" + ("" if "placements" not in missing
                                              else " and start it with 'place'"))
    return passes


def chip_device(plan: Plan, fm: FaultMap) -> Cell:
    """The plan's device with the fault map's measured scalars; levels must agree."""
    over = fm.device_overrides()
    if "levels" in over and int(over["levels"]) != plan.device.levels:
        raise BadFaultMap(
            f"{fm.source}: chip has {over['levels']} levels per cell but the plan was quantised "
            f"for {plan.device.levels}"
        )
    return replace(plan.device, **over)


def build(
    plan: Plan,
    fm: FaultMap,
    *,
    strategy: str = DEFAULT_STRATEGY,
    pipeline: str | None = None,
    solver: pl.SolverOptions | None = None,
    calib: Calib | None = None,
    hardware: dict[str, Any] | None = None,
    passes: list[pl.ChipPass] | None = None,
    progress: ProgressFn | None = None,
) -> BuildResult:
    """Per-chip stage: place, pair, permute, program and calibrate for one fault map.

    ``hardware`` (a :class:`rcompile.device.Hardware` as a dict) is recorded in the image header
    so that ``verify`` emulates the same device by default. ``passes``: the already checked
    passes of ``pipeline`` or ``strategy`` (:func:`chip_pipeline`). ``progress``: as in
    :func:`compile_chip`.
    """
    geo = fm.geometry
    if (geo.rows, geo.cols) != (plan.tile_rows, plan.tile_cols):
        raise BadFaultMap(
            f"{fm.source}: tiles are {geo.rows}x{geo.cols} but the plan was tiled for "
            f"{plan.tile_rows}x{plan.tile_cols}"
        )
    if plan.tiles_needed() > geo.tiles:  # bit-sliced weights need a tile per slice of a bin
        raise DoesNotFit(f"{fm.source}: the model needs {plan.tiles_needed()} tiles of "
                         f"{geo.rows}x{geo.cols} but chip {fm.chip_id} has {geo.tiles}")
    if strategy not in STRATEGIES and pipeline is None:
        raise ValueError(f"unknown strategy {strategy!r}")
    spec = pipeline if pipeline is not None else STRATEGIES[strategy]
    passes = chip_pipeline(spec, plan) if passes is None else passes
    device = chip_device(plan, fm)
    solver = solver or pl.SolverOptions()
    seen = None if calib is None else _ReadTracking(calib)
    ctx = pl.ChipContext(
        geometry=geo,
        device=device,
        stuck=fm.stuck_levels(device),
        chip_id=fm.chip_id,
        solver=solver,
        calib=seen,
    )
    if slicing.is_sliced(plan):  # the passes on one digit of every weight at a time
        mapping, log = slicing.run_chip(passes, plan, ctx, progress=progress)
    else:
        _, out, log = pl.run(passes, plan, ctx, ChipMapping(placements=()), progress=progress)
        assert out is not None
        mapping = out
    header = ImageHeader(
        chip_id=fm.chip_id,
        faultmap_sha256=fm.digest(),
        model_sha256=plan.model_sha256,
        compiler_version=rcompile.__version__,
        strategy=strategy if pipeline is None else "custom",
        pipeline=pl.render(passes),
        plan_pipeline=plan.options.get("plan_pipeline", PLAN_PIPELINE),
        options=BuildOptions(
            solver_time_limit_s=solver.time_limit_s,
            solver_workers=solver.workers,
            solver_seed=solver.seed,
            calibrated=seen is not None and seen.read,
        ),
        device=device,
        geometry=geo,
        hardware=hardware,
    )
    image = to_image(chip_view(plan, mapping), mapping, header.to_dict())
    return BuildResult(image, mapping, log, _warnings(mapping, log, ctx), header,
                       timing=Timing(passes=pl.pass_timings(log)))


class _ReadTracking(tuple):  # type: ignore[type-arg]
    """The calibration statistics, noting whether a pass read them (indexed them by layer), so
    the image header says ``calibrated`` only when the statistics changed what was done."""

    read = False

    def __getitem__(self, i: Any) -> Any:
        self.read = True
        return super().__getitem__(i)


def _warnings(mapping: ChipMapping, log: list[dict[str, Any]], ctx: pl.ChipContext) -> list[str]:
    """What an operator should know about this chip's build (the image is valid regardless)."""
    out = []
    hits = sum(int(p.get("time_limit_hits", 0)) for p in log)
    if hits:
        out.append(
            f"solver time limit ({ctx.solver.time_limit_s:g} s per block) hit on {hits} "
            "block(s); their mapping is valid but less optimised"
        )
    unseen = sum(int(p.get("layers_without_moments", 0)) for p in log)
    if unseen:
        out.append(f"covariance: {unseen} Gemm/MatMul layer(s) without calibration moments "
                   "(no --calib, or a plan file, which holds none) kept the diagonal objective")
    used = sorted({p.tile for p in mapping.placements})
    dead = [t for t in used if not np.isnan(ctx.stuck[t]).any()]
    if dead:
        out.append(f"chip {ctx.chip_id}: tile(s) {dead[:8]} in use have every cell stuck")
    return out


def to_image(plan: Plan, mapping: ChipMapping, header: dict[str, Any]) -> Image:
    """Assemble the programming image of a finished mapping."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(plan.model)
    drop = {n for op in plan.ops for n in (op.weight, op.bias)}
    keep = [t for t in stripped.graph.initializer if t.name not in drop]
    del stripped.graph.initializer[:]
    stripped.graph.initializer.extend(keep)
    layers = tuple(
        LayerRecord(op=layer.op, bias=mapping.bias[i], q=layer.q, scale=layer.scale)
        for i, layer in enumerate(plan.layers)
    )
    by_tile: dict[int, list[SliceRecord]] = {}
    for p in sorted(mapping.placements, key=lambda p: (p.tile, p.block)):
        blk = plan.blocks[p.block]
        by_tile.setdefault(p.tile, []).append(
            SliceRecord(
                layer=blk.layer,
                group=blk.group,
                rows=blk.rows.astype(np.int32),
                outs=blk.outs.astype(np.int32),
                phys_rows=p.phys_rows.astype(np.int32),
                pos=p.pos.astype(np.int32),
                neg=p.neg.astype(np.int32),
                scale=p.scale.astype(np.float32),
                offset=p.offset.astype(np.float32),
                digit=blk.digit,
            )
        )
    tiles = tuple(
        TileRecord(tile=t, levels=mapping.levels[t], slices=tuple(s))
        for t, s in sorted(by_tile.items())
    )
    return Image(header=header, layers=layers, tiles=tiles, graph=stripped.SerializeToString())


def load_calib_stats(plan: Plan, path: str, moments: bool = False) -> Calib:
    """:func:`calib_stats` of the calibration data file ``path`` for ``plan``'s model."""
    from rcompile.data import input_specs, load_calib

    data = load_calib(path, input_specs(plan.model))
    return calib_stats(plan.model, plan.ops, data.inputs, path, moments=moments)


def calib_stats(
    model: onnx.ModelProto, ops: tuple[Any, ...], data: dict[str, np.ndarray], source: str,
    moments: bool = False,
) -> Calib:
    """Per crossbar op, the :class:`~rcompile.ir.RowStats` ``E[x^2]``, ``E[x]`` of each matrix
    row ``[groups, rows]`` on ``data``; with ``moments``, also ``E[x x^T]`` of every Gemm/MatMul
    whose features are the last axis (the ``covariance`` pass's objective).

    A Conv row ``(c, ky, kx)`` takes the statistics of its input channel ``c`` over all
    positions (padding ignored); a Gemm/MatMul row those of its input feature.
    """
    from rcompile.data import fixed_batch, input_specs
    from rcompile.runtime.execute import batch_outputs, session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    node_input = {}
    for node in probe.graph.node:
        for op in ops:
            if node.name == op.node:
                node_input[op.node] = (node.input[0], node)
    existing = {o.name for o in probe.graph.output}
    for name, _ in node_input.values():
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    sess = session(probe, f"calibration probe of the model for {source}")
    feeds = {i.name for i in sess.get_inputs()}
    missing = feeds - set(data)
    if missing:
        raise BadData(f"{source}: calibration data lacks model input(s) {sorted(missing)}")
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(data.values())))
    fixed = fixed_batch(input_specs(model), source)
    inputs = {k: v for k, v in data.items() if k in feeds}
    sums: dict[str, list[Any]] = {}
    for _, _, got in batch_outputs(
            sess, inputs, n, 256, fixed,
            failed=lambda lo, hi: f"{source}: onnxruntime failed on calibration samples "
                                  f"{lo}..{hi - 1}"):
        _accumulate(sums, dict(zip(names, got, strict=True)), ops, node_input, moments)
    result = []
    for op in ops:
        p2, p1, cnt, outer = sums[op.node]
        power, mean = p2 / cnt, p1 / cnt
        moment = outer[None] / cnt if isinstance(outer, np.ndarray) else None
        if op.layout == LAYOUT_CONV:
            k = int(np.prod(op.shape[2:]))
            power = np.repeat(power.reshape(op.groups, -1), k, axis=1)
            mean = np.repeat(mean.reshape(op.groups, -1), k, axis=1)
        else:
            power, mean = power.reshape(1, -1), mean.reshape(1, -1)
        result.append(RowStats(power.astype(np.float32), mean.astype(np.float32), moment))
    return tuple(result)


def _accumulate(sums: dict[str, list[Any]], outs: dict[str, np.ndarray],
                ops: tuple[Any, ...], node_input: dict[str, Any], moments: bool) -> None:
    """Add one batch's sums of ``x^2``, ``x`` and counts over each op's input rows (with
    ``moments``, also ``x x^T`` of the rows of every Gemm/MatMul)."""
    for op in ops:
        x, node = node_input[op.node]
        xs = np.asarray(outs[x], np.float64)
        if op.layout == LAYOUT_CONV:
            axes: tuple[int, ...] = tuple(i for i in range(xs.ndim) if i != 1)
        elif node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            axes = (1,)
        else:
            axes = tuple(range(xs.ndim - 1))
        cnt = np.prod([xs.shape[a] for a in axes])
        acc = sums.setdefault(op.node, [0.0, 0.0, 0.0, 0.0])
        acc[0] = acc[0] + (xs**2).sum(axis=axes)
        acc[1] = acc[1] + xs.sum(axis=axes)
        acc[2] = acc[2] + cnt
        if moments and op.layout != LAYOUT_CONV and axes == tuple(range(xs.ndim - 1)):
            flat = xs.reshape(-1, xs.shape[-1])
            acc[3] = acc[3] + flat.T @ flat


__all__ = [
    "STRATEGIES",
    "BuildResult",
    "Timing",
    "Geometry",
    "LotPlan",
    "build",
    "calib_stats",
    "compile_chip",
    "make_plan",
    "plan_lot",
    "tiles_needed",
    "utilisation",
]
