"""One chip of a lot, on a worker: what every worker shares (:class:`LotState`), the chip's
task, and :func:`compile_chip`, which turns one fault map into an image and a report line."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rcompile import api, planfile, solvers
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile.data import Dataset
from rcompile.device import Hardware
from rcompile.errors import BadImage, RcompileError
from rcompile.fileio import atomic_write, file_sha256
from rcompile.pipeline import SolverOptions
from rcompile.provision.keys import chip_key


@dataclass(frozen=True)
class LotState:
    """What every worker needs, the same for all chips of the lot."""

    saved: api.LotPlan
    strategy: str = api.DEFAULT_STRATEGY
    solver: SolverOptions = field(default_factory=SolverOptions)
    verify: Dataset | None = None
    hardware: Hardware | None = None
    """The chips' device model (``--device``): recorded in every image, emulated by verify."""
    done: Mapping[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)
    """Lines of the existing report that say ``ok`` or ``skipped``, by fault-map file name:
    only their images may be skipped, so an image whose report line a crash lost is built
    again (same bytes)."""
    key: str = ""
    """:func:`lot_key` of this lot: a chip's image is reusable only if its line records it."""
    verify_key: str | None = None
    """What the verification depends on besides the image (data, device); None without."""
    model: str = ""
    """Path of the lot's model."""
    mode: str = "auto"
    """Emulation mode of every verification (``verify --mode``)."""
    noise_seed: int = 0
    """Seed of programming variation and read noise in every verification."""


@dataclass(frozen=True)
class ChipTask:
    faultmap: str
    """Path of the chip's fault map."""
    image: str
    """Path of the chip's image."""



def compile_chip(state: LotState, task: ChipTask) -> dict[str, Any]:
    """Compile one chip of the lot; always returns its report line, never raises for the chip.

    Keys: ``chip_id``, ``faultmap``, ``file`` (image), ``status`` (ok / skipped / error),
    ``faults`` (``{"sa0", "sa1", "rate"}``), ``predicted_error`` (the last per-chip pass's
    ``cost_after``: the objective of ``docs/mapping.md``, weighted squared weight error, or
    null when the strategy solves nothing), ``seconds``, ``accuracy`` / ``agreement`` (with
    verification data), ``message`` (errors), ``build_key`` and ``image_sha256`` (what a rerun
    compares to skip the chip), ``verify_key``.

    A skipped chip whose previous line was verified on other data (or not at all) is verified
    again; its line then carries the new ``accuracy`` / ``agreement`` / ``mode``.
    """
    t0 = time.perf_counter()
    line: dict[str, Any] = {"faultmap": os.path.basename(task.faultmap),
                            "file": os.path.basename(task.image), "chip_id": None}
    try:
        fm = fmap.load(task.faultmap)
        counts = fm.counts()
        line["chip_id"] = fm.chip_id
        line["faults"] = {"sa0": counts["sa0"], "sa1": counts["sa1"],
                          "rate": round(float(counts["rate"]), 6)}
        planfile.check_chip(state.saved, fm)
        hw = state.hardware
        if hw is not None:
            hw.check_tiles(fm.geometry.rows, fm.geometry.cols, task.faultmap)
        key = chip_key(state.key, fm)
        old = state.done.get(os.path.basename(task.faultmap))
        if old is not None and old.get("build_key") == key and (
                old.get("image_sha256") == _file_sha256(task.image)):
            line.update(status="skipped", build_key=key, image_sha256=old["image_sha256"])
            if state.verify is not None and old.get("verify_key") != state.verify_key:
                _verify(line, rimg.read(task.image), fm, state, task)
            line["seconds"] = time.perf_counter() - t0
            return line
        with solvers.serial():  # one chip per worker: the workers already fill the cores
            res = api.compile_chip(state.model, fm, lot=state.saved, strategy=state.strategy,
                                   solver=state.solver, hardware=hw)
        data = rimg.encode(res.image)
        atomic_write(task.image, data, what="image", error=BadImage)
        line["predicted_error"] = _predicted(res.log)
        line["tiles_used"] = len(res.image.tiles)
        line["build_key"] = key
        line["image_sha256"] = hashlib.sha256(data).hexdigest()
        if state.verify is not None:
            _verify(line, res.image, fm, state, task)
        line.update(status="ok", seconds=time.perf_counter() - t0)
    except RcompileError as e:
        line.update(status="error", message=one_line(str(e)), seconds=time.perf_counter() - t0)
    except Exception as e:  # a bug must not stop the lot; the line says what happened
        line.update(status="error", message=f"internal error: {type(e).__name__}: "
                    f"{one_line(str(e))}", seconds=time.perf_counter() - t0)
    return line


def _verify(line: dict[str, Any], image: rimg.Image, fm: fmap.FaultMap, state: LotState,
            task: ChipTask) -> None:
    from rcompile import runtime

    assert state.verify is not None
    rep = runtime.verify(image, fm, state.verify, image_source=task.image, mode=state.mode,
                         noise_seed=state.noise_seed)
    line.update(accuracy=rep.accuracy, mode=rep.mode, agreement=rep.agreement,
                verify_key=state.verify_key)


def _file_sha256(path: str) -> str | None:
    """The file's SHA-256, None if it cannot be read (a rerun then rebuilds the chip)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _predicted(log: list[dict[str, Any]]) -> float | None:
    costs = [float(e["cost_after"]) for e in log if "cost_after" in e]
    return costs[-1] if costs else None


def one_line(text: str) -> str:
    """The first line of an error message, for a report line (never empty)."""
    text = text.strip()
    return text.splitlines()[0] if text else "(no message)"


