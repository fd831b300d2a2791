"""Pass protocol, contexts and the pipeline that runs passes in order.

A pass is a frozen dataclass with a kebab-case ``name``, a ``stage`` and its options as fields.
Chip-independent passes see a :class:`PlanContext` (no fault map exists in it); per-chip passes
see a :class:`ChipContext` that adds one chip's stuck levels. Passes never print, never exit and
never mutate their input. Each pass declares the facts it ``requires`` and ``ensures``
(:data:`FACTS`); options are typed fields (``bool``, ``int``, ``float``, ``Literal[...]``).
:func:`parse` rejects a bad string (unknown pass or option, a value of the wrong type or choice, a
pass of the other stage, a requirement no earlier pass ensures) before anything runs; :func:`run`
checks requirements before each pass and its guarantees and the stage invariants after it, times
it, and wraps a failure in an error naming the pass and the passes that already ran.

Pipelines are strings like ``place{order=assign},permute{rounds=3},program`` that parse and
print back identically.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from rcompile.device import Cell, Geometry
from rcompile.errors import RcompileError
from rcompile.ir import ChipMapping, Plan, RowStats, chip_view
from rcompile.progress import Event, ProgressFn, notify

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
class PassTiming:
    """The wall time of one pass that ran."""

    name: str
    """The pass's spec name (``permute``)."""
    seconds: float
    """Its wall time, seconds."""


def pass_timings(log: list[dict[str, Any]]) -> tuple[PassTiming, ...]:
    """The timing of every entry of a :func:`run` log, in order."""
    return tuple(PassTiming(str(e["pass"]), float(e["seconds"])) for e in log)


@dataclass(frozen=True)
class PlanContext:
    """What a chip-independent pass may see: the chip family, never one chip."""

    tile_rows: int
    tile_cols: int
    device: Cell


@dataclass(frozen=True)
class ChipContext:
    """What a per-chip pass may see: the family plus one chip's measured faults."""

    geometry: Geometry
    device: Cell
    stuck: np.ndarray
    """float32 ``[T, R, C]``: level each stuck cell is frozen at; NaN for healthy cells."""
    chip_id: str
    solver: SolverOptions = field(default_factory=SolverOptions)
    calib: tuple[RowStats, ...] | None = None


class PlanPass(Protocol):
    """A chip-independent pass: ``run(plan, ctx) -> (plan, stats)``."""

    name: ClassVar[str]
    stage: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    ensures: ClassVar[frozenset[str]]

    def run(self, plan: Plan, ctx: PlanContext) -> tuple[Plan, dict[str, Any]]: ...


class ChipPass(Protocol):
    """A per-chip pass: ``run(plan, mapping, ctx) -> (mapping, stats)``; the plan is read-only."""

    name: ClassVar[str]
    stage: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    ensures: ClassVar[frozenset[str]]

    def run(
        self, plan: Plan, mapping: ChipMapping, ctx: ChipContext
    ) -> tuple[ChipMapping, dict[str, Any]]: ...


class PassFailed(RcompileError):
    """A pass raised; the message names it and the passes that ran before it."""


class BadPipeline(RcompileError):
    """A pipeline string names an unknown pass or option, a bad option value, a pass of the
    other stage, or passes in an order whose requirements no earlier pass ensures."""

    exit_code = 10


#: What each fact means, and the check the pipeline runs after a pass that ensures it.
FACTS: dict[str, str] = {
    "quantised": "every crossbar op has its cell-level weights (quantize)",
    "blocks": "every non-zero weight lies in exactly one logical block (tile)",
    "packed": "every block has a bin, its future physical tile (pack)",
    "placements": "every block sits on a physical tile, rows and column pairs (place)",
    "levels": "every used tile has a target level for every cell (program)",
    "calibrated": "every slice has its digital gain and offset (calibrate)",
}


def _holds(fact: str, plan: Plan, mapping: ChipMapping | None) -> bool:
    if fact == "quantised":
        return len(plan.layers) == len(plan.ops)
    if fact == "blocks":
        return bool(plan.blocks) or not any(np.any(layer.q) for layer in plan.layers)
    if fact == "packed":
        return len(plan.bin_of) == len(plan.blocks)
    if mapping is None:
        return False
    if fact == "placements":
        return len(mapping.placements) == len(plan.blocks)
    if fact == "levels":
        return {p.tile for p in mapping.placements} <= set(mapping.levels)
    if fact == "calibrated":
        return all(np.isfinite(p.offset).all() and np.isfinite(p.scale).all()
                   for p in mapping.placements)
    raise AssertionError(f"unknown fact {fact!r}")


def plan_facts(plan: Plan) -> frozenset[str]:
    """The facts a (finished or partial) plan already holds; a per-chip pipeline starts here."""
    return frozenset(f for f in ("quantised", "blocks", "packed") if _holds(f, plan, None))


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a pass available to pipeline strings by its ``name``.

    The class must declare ``name``, ``stage`` (:data:`PLAN` or :data:`CHIP`), ``requires`` and
    ``ensures`` (sets of :data:`FACTS`)."""
    for attr in ("name", "stage", "requires", "ensures"):
        if not hasattr(cls, attr):
            raise TypeError(f"pass {cls.__name__} does not declare {attr!r}")
    if cls.stage not in (PLAN, CHIP):  # type: ignore[attr-defined]
        raise TypeError(f"pass {cls.__name__}: stage must be {PLAN!r} or {CHIP!r}")
    unknown = (cls.requires | cls.ensures) - set(FACTS)  # type: ignore[attr-defined]
    if unknown:
        raise TypeError(f"pass {cls.__name__}: unknown facts {sorted(unknown)}")
    _REGISTRY[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def registry() -> dict[str, type]:
    import rcompile.passes  # noqa: F401  (registers the shipped passes)

    return dict(_REGISTRY)


_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*(?:\{([^}]*)\})?\s*(?:,|$)")


def parse(spec: str, stage: str | None = None, have: frozenset[str] | None = None) -> list[Any]:
    """Parse ``name{k=v,...},name,...`` into pass instances, checking everything a string can
    get wrong before any pass runs: unknown passes and options, option values of the wrong type
    or outside their ``Literal`` choices, a pass of the other ``stage`` (when given) and, when
    ``have`` (the facts already established) is given, a pass whose ``requires`` no earlier pass
    ensures. Every problem is one :class:`BadPipeline` line."""
    passes: list[Any] = []
    reg = registry()
    pos = 0
    spec = spec.strip()
    if not spec:
        raise BadPipeline("pipeline: empty; expected name{k=v,...},name,...")
    while pos < len(spec):
        m = _ITEM.match(spec, pos)
        if not m or m.end() == pos:
            raise BadPipeline(f"pipeline: cannot parse {spec[pos:]!r}; expected name{{k=v,...}}")
        name, body = m.group(1), m.group(2)
        if name not in reg:
            raise BadPipeline(f"pipeline: unknown pass {name!r}; known: {', '.join(sorted(reg))}")
        cls = reg[name]
        if stage is not None and cls.stage != stage:  # type: ignore[attr-defined]
            same = sorted(n for n, c in reg.items() if c.stage == stage)  # type: ignore[attr-defined]
            raise BadPipeline(
                f"pipeline: pass {name!r} is {cls.stage}; a {stage} pipeline takes only "  # type: ignore[attr-defined]
                f"{', '.join(same)}"
            )
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for item in filter(None, (x.strip() for x in (body or "").split(","))):
            key, eq, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in fields:
                known = ", ".join(f.replace("_", "-") for f in fields) or "none"
                raise BadPipeline(
                    f"pipeline: pass {name!r} has no option {key!r}; options: {known}")
            if not eq:
                raise BadPipeline(f"pipeline: pass {name!r} option {key!r} has no value; "
                                  f"expected {key}=VALUE")
            kwargs[key] = _coerce(name, key, raw.strip(), hints[key])
        passes.append(cls(**kwargs))
        pos = m.end()
    if have is not None:
        check_order(passes, have)
    return passes


def _coerce(name: str, key: str, raw: str, hint: Any) -> Any:
    """``raw`` as a value of the option's declared type: bool, int, float or a Literal."""
    where = f"pipeline: pass {name!r} option {key!r}"
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if raw not in choices:
            raise BadPipeline(f"{where}: {raw!r} is not one of {', '.join(choices)}")
        return raw
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise BadPipeline(f"{where}: {raw!r} is not a boolean; expected true or false")
    for kind, word in ((int, "an integer"), (float, "a number")):
        if hint is kind:
            try:
                value = kind(raw)
            except ValueError:
                raise BadPipeline(f"{where}: {raw!r} is not {word}") from None
            if not math.isfinite(value):
                raise BadPipeline(f"{where}: {raw!r} is not a finite number")
            return value
    if hint is str:
        return raw
    raise TypeError(f"{where}: options of type {hint!r} cannot be parsed")


def check_order(passes: list[Any], have: frozenset[str]) -> frozenset[str]:
    """The facts after ``passes``, starting from ``have``; a pass whose ``requires`` are not
    all established by then is a :class:`BadPipeline` naming what is missing and who ensures it."""
    facts = set(have)
    for i, p in enumerate(passes):
        missing = p.requires - facts
        if missing:
            who = sorted(n for n, c in registry().items() if c.ensures & missing)  # type: ignore[attr-defined]
            ran = ", ".join(q.name for q in passes[:i]) or "none"
            raise BadPipeline(
                f"pipeline: pass {p.name!r} requires {', '.join(sorted(missing))} "
                f"({'; '.join(FACTS[f] for f in sorted(missing))}); passes before it: {ran}; "
                f"add {' or '.join(repr(w) for w in who)} before it"
            )
        facts |= p.ensures
    return frozenset(facts)


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


def run(
    passes: list[PlanPass] | list[ChipPass],
    plan: Plan,
    ctx: PlanContext | ChipContext,
    mapping: ChipMapping | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Plan, ChipMapping | None, list[dict[str, Any]]]:
    """Run the passes of one stage in order: chip-independent ones on ``plan`` with a
    :class:`PlanContext`, per-chip ones on ``mapping`` with a :class:`ChipContext`.

    Before each pass its ``requires`` must hold; after it its ``ensures`` and the stage
    invariants (:func:`check_plan`, :func:`check_mapping`) are checked; each pass is timed. A
    failure names the pass and the passes that already ran. ``progress`` hears of every pass
    as it starts and as it finishes (stage ``plan`` or ``chip``, :mod:`rcompile.progress`)."""
    log: list[dict[str, Any]] = []
    facts = plan_facts(plan) | _mapping_facts(plan, mapping)
    for p in passes:
        missing = p.requires - facts
        if missing:
            raise BadPipeline(_failure(p, log, f"requires {', '.join(sorted(missing))}, "
                                       "which no earlier pass ensured"))
        stage = "plan" if p.stage == PLAN else "chip"
        notify(progress, Event(stage, p.name, len(log), len(passes)))
        t0 = time.perf_counter()
        try:
            if p.stage == PLAN:
                assert isinstance(ctx, PlanContext), f"pass {p.name!r} needs a PlanContext"
                plan, stats = typing.cast(PlanPass, p).run(plan, ctx)
                check_plan(plan)
            else:
                assert isinstance(ctx, ChipContext) and mapping is not None, (
                    f"pass {p.name!r} needs a ChipContext and a mapping")
                mapping, stats = typing.cast(ChipPass, p).run(chip_view(plan, mapping), mapping,
                                                              ctx)
                view = chip_view(plan, mapping)  # a pass may re-cut the blocks of this chip
                if mapping.blocks:
                    check_plan(view)
                check_mapping(view, mapping, ctx.geometry)
            broken = sorted(f for f in p.ensures if not _holds(
                f, plan if mapping is None else chip_view(plan, mapping), mapping))
            if broken:
                raise AssertionError(f"it does not ensure {', '.join(broken)}")
        except RcompileError:
            raise
        except Exception as exc:
            raise PassFailed(_failure(p, log, f"{type(exc).__name__}: {exc}")) from exc
        facts |= p.ensures
        seconds = time.perf_counter() - t0
        log.append({"pass": p.name, "seconds": seconds, **stats})
        notify(progress, Event(stage, p.name, len(log), len(passes), seconds))
    return plan, mapping, log


def _mapping_facts(plan: Plan, mapping: ChipMapping | None) -> frozenset[str]:
    if mapping is None or not mapping.placements:
        return frozenset()
    return frozenset(f for f in ("placements", "levels") if _holds(f, plan, mapping))


def _failure(p: Any, log: list[dict[str, Any]], what: str) -> str:
    ran = ", ".join(e["pass"] for e in log) or "none"
    return f"pass {p.name!r} failed ({what}); passes already run: {ran}"


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
