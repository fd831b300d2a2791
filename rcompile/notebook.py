"""The notebook API: compile, verify and sweep in a few calls, paths or objects alike.

Every function here accepts a file path or the object it holds: a model as a path or an
``onnx.ModelProto``; a fault map as a path or a :class:`~rcompile.faultmap.FaultMap`; an image
as a path, an :class:`~rcompile.image.Image` or a :class:`Compiled`; data as a path, a
:class:`~rcompile.data.Dataset` or a mapping of arrays (one per model input, optional
``labels``); a device as a :class:`~rcompile.device.Hardware`, a preset name or a ``.toml``
file. Results are small objects with ``to_dict()`` (JSON-ready) and ``plot(kind=...)``, which
returns a :class:`matplotlib.figure.Figure` without touching pyplot or the backend
(:mod:`rcompile.plots`); ``plot(kind, path=...)`` also writes it (PNG or SVG by extension).
Errors are the library's own (:class:`~rcompile.errors.RcompileError` and its kinds), with
the same one-line messages as the CLI. A worked example: ``docs/api.md``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import onnx

from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile import plots
from rcompile.data import Dataset
from rcompile.device import Hardware
from rcompile.errors import RcompileError
from rcompile.faultmap import FaultMap
from rcompile.image import Image
from rcompile.progress import ProgressFn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rcompile import api, runtime

PathLike: TypeAlias = "str | os.PathLike[str]"
ModelLike: TypeAlias = "str | os.PathLike[str] | onnx.ModelProto"
FaultMapLike: TypeAlias = "str | os.PathLike[str] | FaultMap"
ImageLike: TypeAlias = "str | os.PathLike[str] | Image | Compiled"
DataLike: TypeAlias = "str | os.PathLike[str] | Dataset | Mapping[str, np.ndarray]"
HardwareLike: TypeAlias = "str | os.PathLike[str] | Hardware"


# -------------------------------------------------------------------------------- loading


def load_faultmap(path: PathLike) -> FaultMap:
    """The fault map in the ``.npz`` file at ``path`` (validated)."""
    return fmap.load(path)


def synth_faultmap(
    tiles: int | None = None,
    rows: int = 128,
    cols: int = 128,
    *,
    rate: float = 0.01,
    ratio: tuple[float, float] = (5.0, 1.0),
    seed: int = 0,
    kind: str = "uniform",
    model: ModelLike | None = None,
    spare: float = 0.10,
    chip_id: str | None = None,
) -> FaultMap:
    """A synthetic chip with fault rate ``rate`` and ``SA1:SA0 = ratio`` (see
    :func:`rcompile.faultmap.synth` for the ``kind`` s). Give ``tiles``, or ``model`` to size
    the chip for it: the tiles its plan needs plus a ``spare`` fraction."""
    if tiles is None:
        if model is None:
            raise RcompileError("synth_faultmap: give tiles, or a model to size the chip for")
        from rcompile import api

        with _model_path(model) as path:
            tiles = api.spare_tiles(api.tiles_needed(path, rows, cols), spare)
    return fmap.synth(tiles, rows, cols, rate, ratio, seed, kind, chip_id)


def load_image(path: PathLike) -> Image:
    """The programming image (``.rimg``) at ``path`` (validated)."""
    return rimg.read(path)


def load_hardware(spec: HardwareLike) -> Hardware:
    """A device model: a :class:`~rcompile.device.Hardware` as is, a preset name or a TOML file."""
    if isinstance(spec, Hardware):
        return spec
    from rcompile.device import load_hardware as load

    return load(spec)


def load_lot(path: PathLike) -> Lot:
    """The report of a provisioned lot (``OUTDIR/report.jsonl``, or ``OUTDIR`` itself)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "report.jsonl")
    return Lot(plots.read_lot(p), p)


# -------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Compiled:
    """One chip's compile: the image, the chip it is for, and what the compiler did."""

    image: Image
    faultmap: FaultMap
    build: api.BuildResult

    @property
    def warnings(self) -> list[str]:
        return self.build.warnings

    def save(self, path: PathLike) -> None:
        """Write the image to ``path`` (atomically; same image, same bytes)."""
        rimg.write(self.image, path)

    def to_dict(self) -> dict[str, Any]:
        """The image summary of ``rcompile inspect --json`` plus the build's ``warnings``,
        per-pass ``log`` and ``plan_seconds`` / ``chip_seconds``."""
        return {**rimg.summary_dict(self.image), "warnings": list(self.build.warnings),
                "log": self.build.log, "plan_seconds": self.build.plan_seconds,
                "chip_seconds": self.build.chip_seconds}

    def plot(self, kind: str = "placement", path: PathLike | None = None) -> Figure:
        """``placement`` (tiles used, utilisation, over the fault map), ``levels`` (histogram
        of the programmed levels) or ``faults`` (the chip's heat map)."""
        figures = {
            "placement": lambda: plots.placement_figure(self.image, self.faultmap),
            "levels": lambda: plots.levels_figure(self.image),
            "faults": lambda: plots.heatmap_figure(self.faultmap),
        }
        return _draw(figures, kind, path)


@dataclass(frozen=True)
class Verified:
    """What verifying one chip found (:class:`rcompile.runtime.Report`)."""

    report: runtime.Report

    @property
    def accuracy(self) -> float | None:
        return self.report.accuracy

    @property
    def fault_free_accuracy(self) -> float | None:
        return self.report.fault_free_accuracy

    def to_dict(self) -> dict[str, Any]:
        """The report as ``rcompile verify --json`` prints it."""
        return self.report.to_dict()

    def plot(self, kind: str = "layers", path: PathLike | None = None) -> Figure:
        """``layers`` (relative weight error per layer) or ``energy`` (energy per layer,
        stacked by cells, ADC, DAC and digital periphery)."""
        doc = self.to_dict()
        figures = {
            "layers": lambda: plots.layer_error_figure(doc),
            "energy": lambda: plots.energy_figure(doc),
        }
        return _draw(figures, kind, path)


@dataclass(frozen=True)
class Swept:
    """Accuracy against fault rate per strategy (``rcompile sweep --json``'s document)."""

    result: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.result

    def table(self) -> str:
        """The Markdown table ``rcompile sweep`` prints."""
        from rcompile.sweep import table

        return table(self.result)

    def plot(self, kind: str = "sweep", path: PathLike | None = None) -> Figure:
        """``sweep``: accuracy against fault rate (:func:`rcompile.plots.sweep_figure`)."""
        return _draw({"sweep": lambda: plots.sweep_figure(self.result)}, kind, path)


@dataclass(frozen=True)
class Lot:
    """A provisioned lot's report: one line per chip (``docs/provisioning.md``)."""

    lines: list[dict[str, Any]]
    source: str = "<memory>"

    def to_dict(self) -> dict[str, Any]:
        statuses = [x.get("status") for x in self.lines]
        bins = [x.get("bin") for x in self.lines]
        return {"report": self.source, "chips": len(self.lines),
                "ok": statuses.count("ok"), "skipped": statuses.count("skipped"),
                "errors": statuses.count("error"), "passed": bins.count("pass"),
                "failed": bins.count("fail"), "lines": self.lines}

    def plot(self, kind: str = "lot", path: PathLike | None = None, *,
             min_accuracy: float | None = None) -> Figure:
        """``lot``: accuracy histogram and chips per outcome against ``min_accuracy`` (default:
        the threshold the report records)."""
        return _draw({"lot": lambda: plots.lot_figure(self.lines, min_accuracy)}, kind, path)


def _draw(figures: Mapping[str, Any], kind: str, path: PathLike | None) -> Figure:
    if kind not in figures:
        raise ValueError(f"unknown plot kind {kind!r}; expected one of {', '.join(figures)}")
    fig: Figure = figures[kind]()
    if path is not None:
        plots.save(fig, path, what=f"{kind} plot")
    return fig


# -------------------------------------------------------------------------------- the work


def compile(
    model: ModelLike,
    faultmap: FaultMapLike,
    *,
    strategy: str = "full",
    hardware: HardwareLike | None = None,
    calib: DataLike | None = None,
    plan: PathLike | None = None,
    prune: str | None = None,
    pipeline: str | None = None,
    time_limit_s: float = 10.0,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Compiled:
    """Compile ``model`` for the chip ``faultmap`` (``rcompile build``): ``strategy`` one of
    :data:`rcompile.api.STRATEGIES` (or a custom per-chip ``pipeline``), ``calib`` the
    calibration data of ``full``, ``plan`` a saved plan (``rcompile plan``), ``prune`` as
    ``MODE:AMOUNT``, ``time_limit_s`` and ``seed`` the solver's; ``progress`` is called with
    each :class:`rcompile.progress.Event` (a pass starting and finishing)."""
    from rcompile import api
    from rcompile.pipeline import SolverOptions

    fm = faultmap if isinstance(faultmap, FaultMap) else load_faultmap(faultmap)
    hw = None if hardware is None else load_hardware(hardware)
    with _model_path(model) as path, _data_path(calib, "calib") as calib_path:
        res = api.compile_chip(path, fm, plan_path=None if plan is None else os.fspath(plan),
                               calib_path=calib_path, prune=prune, strategy=strategy,
                               pipeline=pipeline, hardware=hw, progress=progress,
                               solver=SolverOptions(time_limit_s=time_limit_s, seed=seed))
    return Compiled(res.image, fm, res)


def verify(
    image: ImageLike,
    faultmap: FaultMapLike,
    data: DataLike,
    *,
    hardware: HardwareLike | None = None,
    mode: str = "auto",
    noise_seed: int = 0,
    model: ModelLike | None = None,
    allow_remeasured: bool = False,
) -> Verified:
    """Emulate the chip ``faultmap`` programmed with ``image`` on ``data`` (``rcompile
    verify``): ``hardware`` the device (default: the one the image records), ``mode`` one of
    ``auto``, ``ideal``, ``tile``; ``model``, the original float model, adds its accuracy."""
    from rcompile import runtime
    from rcompile.data import dataset_from_arrays, load_data

    source = None
    if isinstance(image, Compiled):
        img = image.image
    elif isinstance(image, Image):
        img = image
    else:
        source = os.fspath(image)
        img = load_image(source)
    fm = faultmap if isinstance(faultmap, FaultMap) else load_faultmap(faultmap)
    specs = runtime.image_input_specs(img)
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, Mapping):
        dataset = dataset_from_arrays(data, specs)
    else:
        dataset = load_data(data, specs)
    reference = None
    if model is not None:
        from rcompile.frontend import load_model

        with _model_path(model) as path:
            fe = load_model(path)
        if fe.sha256 != img.header.get("model_sha256"):
            raise RcompileError(f"{_name(model)}: not the model the image was compiled from")
        reference = fe.model
    rep = runtime.verify(img, fm, dataset, allow_remeasured=allow_remeasured,
                         reference_model=reference, image_source=source,
                         hardware=None if hardware is None else load_hardware(hardware),
                         mode=mode, noise_seed=noise_seed)
    return Verified(rep)


def sweep(
    model: ModelLike,
    data: DataLike,
    *,
    rates: Sequence[float] = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5),
    ratios: Sequence[tuple[float, float]] = ((5.0, 1.0), (1.0, 5.0)),
    strategies: Sequence[str] = ("two-column", "differential", "mt", "full"),
    seeds: int = 3,
    spare: float = 0.10,
    rows: int = 128,
    cols: int = 128,
    calib: DataLike | None = None,
    prune: str | None = None,
    hardware: HardwareLike | None = None,
    mode: str = "auto",
    **options: Any,
) -> Swept:
    """Accuracy against fault rate (``rcompile sweep``): for every rate, ratio and seed one
    synthetic chip, every strategy compiled for it and verified on ``data`` (which needs
    ``labels``). Further ``options`` go to :func:`rcompile.sweep.run_sweep`."""
    from rcompile.api import STRATEGIES
    from rcompile.sweep import run_sweep

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise RcompileError(f"unknown strategy {unknown[0]!r}; known: {', '.join(STRATEGIES)}")
    with (_model_path(model) as path, _data_path(data, "data") as data_path,
          _data_path(calib, "calib") as calib_path):
        assert data_path is not None
        result = run_sweep(path, data_path, rates=list(rates), ratios=list(ratios),
                           strategies=list(strategies), seeds=seeds, spare=spare, rows=rows,
                           cols=cols, calib_path=calib_path, prune=prune,
                           hardware=None if hardware is None else load_hardware(hardware),
                           mode=mode, **options)
    return Swept(result)


# -------------------------------------------------------------------------------- objects -> files


def _name(obj: Any) -> str:
    return os.fspath(obj) if isinstance(obj, str | os.PathLike) else "<in-memory model>"


@contextmanager
def _model_path(model: ModelLike) -> Iterator[str]:
    """A path to ``model``: its own, or a temporary file holding an in-memory ModelProto."""
    if isinstance(model, str | os.PathLike):
        yield os.fspath(model)
        return
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"model: got {type(model).__name__}; expected a path or onnx.ModelProto")
    with tempfile.TemporaryDirectory(prefix="rcompile-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        yield path


@contextmanager
def _data_path(data: DataLike | None, what: str) -> Iterator[str | None]:
    """A path to ``data``: its own, or a temporary ``.npz`` of in-memory arrays."""
    if data is None or isinstance(data, str | os.PathLike):
        yield None if data is None else os.fspath(data)
        return
    arrays = dict(data.inputs) if isinstance(data, Dataset) else dict(data)
    if isinstance(data, Dataset) and data.labels is not None:
        arrays["labels"] = data.labels
    with tempfile.TemporaryDirectory(prefix="rcompile-") as tmp:
        path = os.path.join(tmp, f"{what}.npz")
        np.savez(path, **arrays)  # type: ignore[arg-type]
        yield path


__all__ = [
    "Compiled",
    "Lot",
    "Swept",
    "Verified",
    "compile",
    "load_faultmap",
    "load_hardware",
    "load_image",
    "load_lot",
    "sweep",
    "synth_faultmap",
    "verify",
]
