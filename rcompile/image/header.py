"""The header the compiler writes into an image, as typed values.

An image's ``HEAD`` record holds one JSON object (``docs/image-format.md`` §4). Readers take it
as that object (:attr:`rcompile.image.Image.header`): writers may add keys, and ``verify`` and
``inspect`` must read an image of any writer. The compiler, though, always writes the same
fields, and those are :class:`ImageHeader` (with :class:`BuildOptions`): ``build`` makes one,
and :meth:`ImageHeader.to_dict` is the exact JSON object of today's images (so the bytes do not
depend on this type). :meth:`ImageHeader.from_dict` reads it back from an image ``build``
wrote, refusing one that lacks a field with one :class:`~rcompile.errors.BadImage` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcompile.device import Cell, Geometry
from rcompile.errors import BadDevice, BadImage


@dataclass(frozen=True)
class BuildOptions:
    """The compiler options that can change an image besides the strategy and the pipeline."""

    solver_time_limit_s: float
    """Wall-clock limit of one solver call, seconds (``--time-limit``)."""
    solver_workers: int
    """Worker threads of one solver call."""
    solver_seed: int
    """Random seed of every solver call (``--solver-seed``)."""
    calibrated: bool
    """A pass read the calibration statistics (``--calib``), so they shaped the image."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "solver_time_limit_s": self.solver_time_limit_s,
            "solver_workers": self.solver_workers,
            "solver_seed": self.solver_seed,
            "calibrated": self.calibrated,
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "image") -> BuildOptions:
        """The options of a header's ``options`` object; :class:`BadImage` if one is missing."""
        o = _object(d, "options", source)
        return cls(
            solver_time_limit_s=float(_get(o, "solver_time_limit_s", (int, float), source)),
            solver_workers=_get(o, "solver_workers", int, source),
            solver_seed=_get(o, "solver_seed", int, source),
            calibrated=_get(o, "calibrated", bool, source),
        )


@dataclass(frozen=True)
class ImageHeader:
    """What ``build`` records about one image: which chip, model, compiler, options and cell."""

    chip_id: str
    """The chip's identifier from its fault map ("" when the map has none)."""
    faultmap_sha256: str
    """Content digest of the fault map compiled against (:meth:`FaultMap.digest`), hex."""
    model_sha256: str
    """SHA-256 of the input ONNX model file, hex."""
    compiler_version: str
    """The rcompile version that wrote the image."""
    strategy: str
    """The strategy built (``full``, ``two-column``, ...) or ``custom`` for ``--pipeline``."""
    pipeline: str
    """The per-chip pipeline that ran, rendered (``place{order=assign},permute,...``)."""
    plan_pipeline: str
    """The chip-independent pipeline the plan was made with (``quantize,tile,pack``)."""
    options: BuildOptions
    device: Cell
    """The cell the image was compiled for, with the fault map's measured values."""
    geometry: Geometry
    """The chip's tiles, rows and columns (from the fault map)."""
    hardware: dict[str, Any] | None = None
    """The full device model (:meth:`rcompile.device.Hardware.to_dict`) with ``--device``;
    ``verify`` emulates it by default. None: the key is absent."""

    def to_dict(self) -> dict[str, Any]:
        """The header object of the image's ``HEAD`` record."""
        g = self.geometry
        d: dict[str, Any] = {
            "chip_id": self.chip_id,
            "faultmap_sha256": self.faultmap_sha256,
            "model_sha256": self.model_sha256,
            "compiler_version": self.compiler_version,
            "strategy": self.strategy,
            "pipeline": self.pipeline,
            "plan_pipeline": self.plan_pipeline,
            "options": self.options.to_dict(),
            "device": self.device.to_dict(),
            "geometry": {"tiles": g.tiles, "rows": g.rows, "cols": g.cols},
        }
        if self.hardware is not None:
            d["hardware"] = self.hardware
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "image") -> ImageHeader:
        """The header of an image ``build`` wrote; one :class:`BadImage` line naming ``source``
        and the field when a field is missing or of the wrong type (keys it does not know are
        ignored, as every reader ignores them)."""
        h = _object(d, "header", source)
        dev = _object(h.get("device"), "device", source)
        geo = _object(h.get("geometry"), "geometry", source)
        hardware = h.get("hardware")
        if hardware is not None and not isinstance(hardware, dict):
            raise BadImage(f"{source}: header hardware is {hardware!r}; expected an object")
        try:
            device = Cell(**dev)
        except (BadDevice, TypeError) as e:
            raise BadImage(f"{source}: header device is invalid ({e})") from None
        return cls(
            chip_id=_get(h, "chip_id", str, source),
            faultmap_sha256=_get(h, "faultmap_sha256", str, source),
            model_sha256=_get(h, "model_sha256", str, source),
            compiler_version=_get(h, "compiler_version", str, source),
            strategy=_get(h, "strategy", str, source),
            pipeline=_get(h, "pipeline", str, source),
            plan_pipeline=_get(h, "plan_pipeline", str, source),
            options=BuildOptions.from_dict(h.get("options"), source),
            device=device,
            geometry=Geometry(*(_get(geo, k, int, source) for k in ("tiles", "rows", "cols"))),
            hardware=hardware,
        )


def _object(d: Any, what: str, source: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise BadImage(f"{source}: header {what} is {d!r}; expected an object")
    return d


def _get(d: dict[str, Any], key: str, kind: Any, source: str) -> Any:
    """``d[key]`` if it is of ``kind`` (a bool is not an int here); else one BadImage line."""
    v = d.get(key)
    bool_for_int = isinstance(v, bool) and kind is not bool
    if not isinstance(v, kind) or bool_for_int:
        raise BadImage(f"{source}: header {key} is {v!r}; expected {_kind_name(kind)}")
    return v


def _kind_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({bool: "true/false", int: "an integer", float: "a number",
                        str: "a string"}[k] for k in kinds)
