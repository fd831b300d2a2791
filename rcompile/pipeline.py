"""Pass protocol, contexts and the pipeline that runs passes in order.

A pass is a frozen dataclass with a kebab-case ``name``, a ``stage`` and its options as fields.
Chip-independent passes see a :class:`PlanContext` (no fault map exists in it); per-chip passes
see a :class:`ChipContext` that adds one chip's stuck levels. Passes never print, never exit and
never mutate their input. The pipeline times each pass, checks the stage invariants after it,
and wraps a failure in an error naming the pass and the passes that already ran.

Pipelines are strings like ``place{order=assign},permute{rounds=3},program`` that parse and
print back identically.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from rcompile.device import Device, Geometry
from rcompile.errors import RcompileError
from rcompile.ir import ChipMapping, Plan, chip_view

PLAN = "chip-independent"
CHIP = "per-chip"


@dataclass(frozen=True)
class SolverOptions:
    """Limits every OR-Tools call obeys."""

    time_limit_s: float = 10.0
    """Wall-clock limit of one CP-SAT solve, seconds."""
    workers: int = 1
    """CP-SAT worker threads."""
    seed: int = 0
    """Random seed of every solver."""


@dataclass(frozen=True)
class PlanContext:
    """What a chip-independent pass may see: the chip family, never one chip."""

    tile_rows: int
    tile_cols: int
    device: Device


@dataclass(frozen=True)
class ChipContext:
    """What a per-chip pass may see: the family plus one chip's measured faults."""

    geometry: Geometry
    device: Device
    stuck: np.ndarray
    """float32 ``[T, R, C]``: level each stuck cell is frozen at; NaN for healthy cells."""
    chip_id: str
    solver: SolverOptions = field(default_factory=SolverOptions)
    calib: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None


class PlanPass(Protocol):
    name: ClassVar[str]
    stage: ClassVar[str]

    def run(self, plan: Plan, ctx: PlanContext) -> tuple[Plan, dict[str, Any]]: ...


class ChipPass(Protocol):
    name: ClassVar[str]
    stage: ClassVar[str]

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]: ...


class PassFailed(RcompileError):
    """A pass raised; the message names it and the passes that ran before it."""


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a pass available to pipeline strings by its ``name``."""
    _REGISTRY[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def registry() -> dict[str, type]:
    import rcompile.passes  # noqa: F401  (registers the shipped passes)

    return dict(_REGISTRY)


_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*(?:\{([^}]*)\})?\s*(?:,|$)")


def parse(spec: str) -> list[Any]:
    """Parse ``name{k=v,...},name,...`` into pass instances."""
    passes: list[Any] = []
    reg = registry()
    pos = 0
    spec = spec.strip()
    while pos < len(spec):
        m = _ITEM.match(spec, pos)
        if not m:
            raise RcompileError(f"pipeline: cannot parse {spec[pos:]!r}; expected name{{k=v,...}}")
        name, body = m.group(1), m.group(2)
        if name not in reg:
            raise RcompileError(f"pipeline: unknown pass {name!r}; known: {', '.join(sorted(reg))}")
        cls = reg[name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for item in filter(None, (body or "").split(",")):
            key, _, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in fields:
                raise RcompileError(f"pipeline: pass {name!r} has no option {key!r}")
            kwargs[key] = _coerce(raw.strip(), fields[key].default)
        passes.append(cls(**kwargs))
        pos = m.end()
    return passes


def _coerce(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def render(passes: list[Any]) -> str:
    """Print passes back as a pipeline string; ``parse(render(p))`` equals ``p``."""
    out = []
    for p in passes:
        opts = [
            f"{f.name.replace('_', '-')}={_fmt(getattr(p, f.name))}"
            for f in dataclasses.fields(p)
            if getattr(p, f.name) != f.default
        ]
        out.append(p.name + (f"{{{','.join(opts)}}}" if opts else ""))
    return ",".join(out)


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def run_plan(passes: list[Any], plan: Plan, ctx: PlanContext) -> tuple[Plan, list[dict[str, Any]]]:
    """Run chip-independent passes, checking the plan invariants after each."""
    log: list[dict[str, Any]] = []
    for p in passes:
        t0 = time.perf_counter()
        try:
            plan, stats = p.run(plan, ctx)
            check_plan(plan)
        except RcompileError:
            raise
        except Exception as exc:
            raise PassFailed(_failure(p, log, exc)) from exc
        log.append({"pass": p.name, "seconds": time.perf_counter() - t0, **stats})
    return plan, log


def run_chip(
    passes: list[Any], plan: Plan, mapping: ChipMapping, ctx: ChipContext
) -> tuple[ChipMapping, list[dict[str, Any]]]:
    """Run per-chip passes, checking the mapping invariants after each. Each pass sees the plan
    with the mapping's own blocks once a pass has re-cut them (:func:`rcompile.ir.chip_view`)."""
    log: list[dict[str, Any]] = []
    for p in passes:
        t0 = time.perf_counter()
        try:
            mapping, stats = p.run(chip_view(plan, mapping), mapping, ctx)
            view = chip_view(plan, mapping)
            if mapping.blocks:
                check_plan(view)
            check_mapping(view, mapping, ctx.geometry)
        except RcompileError:
            raise
        except Exception as exc:
            raise PassFailed(_failure(p, log, exc)) from exc
        log.append({"pass": p.name, "seconds": time.perf_counter() - t0, **stats})
    return mapping, log


def _failure(p: Any, log: list[dict[str, Any]], exc: Exception) -> str:
    ran = ", ".join(e["pass"] for e in log) or "none"
    return f"pass {p.name!r} failed ({type(exc).__name__}: {exc}); passes already run: {ran}"


def check_plan(plan: Plan) -> None:
    """Invariant: every non-zero quantised weight lies in exactly one block."""
    for li, layer in enumerate(plan.layers):
        cover = np.zeros(layer.q.shape, np.int32)
        for b in plan.blocks:
            if b.layer == li:
                if len(b.rows) > plan.tile_rows or len(b.outs) > plan.tile_cols // 2:
                    raise AssertionError(f"block of layer {li} exceeds the tile")
                cover[b.group][np.ix_(b.rows, b.outs)] += 1
        if plan.blocks and (np.any(cover > 1) or np.any((layer.q != 0) & (cover == 0))):
            raise AssertionError(f"layer {layer.op.node!r}: blocks do not cover its weights once")


def check_mapping(plan: Plan, mapping: ChipMapping, geometry: Geometry) -> None:
    """Invariants: placements are injective within each tile and inside the geometry."""
    used: dict[int, tuple[set[int], set[int]]] = {}
    for pl in mapping.placements:
        if not 0 <= pl.tile < geometry.tiles:
            raise AssertionError(f"block {pl.block} placed on tile {pl.tile} outside the chip")
        rows, cols = used.setdefault(pl.tile, (set(), set()))
        pr = set(pl.phys_rows.tolist())
        pc = set(pl.pos.tolist()) | set(pl.neg.tolist())
        if len(pr) != len(pl.phys_rows) or len(pc) != 2 * len(pl.pos):
            raise AssertionError(f"block {pl.block}: physical rows or columns repeat")
        if pr & rows and pc & cols:
            raise AssertionError(f"block {pl.block} overlaps another block on tile {pl.tile}")
        if max(pr, default=0) >= geometry.rows or max(pc, default=0) >= geometry.cols:
            raise AssertionError(f"block {pl.block}: row or column outside the tile")
        rows |= pr
        cols |= pc
