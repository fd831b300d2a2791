"""The finished points of a sweep, kept in a results file so a stopped sweep resumes.

``rcompile sweep --results FILE`` (by default next to ``--plot``) keeps every measurement the
moment it is made, the way ``provision`` keeps its report (``docs/provisioning.md``): a rerun
with the same arguments measures only what is missing and gives the same table and plot as a
run that was never stopped. The file is JSON lines, rewritten whole through a temporary file
and a rename after every measurement (:func:`rcompile.fileio.atomic_write`), so a killed sweep
leaves the previous complete file, never half a line.

- line 1, the header: ``{"rcompile_sweep_results": 1, "key": SHA-256, "arguments": {...}}``;
  ``arguments`` (:func:`arguments`) is everything besides the point itself that changes a
  measurement: the rcompile version, the SHA-256 of the model, data and calibration files,
  ``--prune``, ``--device`` (its parameters), ``--mode``, ``--pattern``, ``--rows``,
  ``--cols``, ``--spare`` and the solver options. A file of other arguments is refused with
  one line naming what differs (it is another sweep's work; nothing is overwritten);
- one line per measurement: a point (``rate``, ``ratio``, ``seed``, ``strategy`` and its
  per-chip ``pipeline``) with what it measured, or a fault-free chip on the device
  (``floor_seed``). Rates, ratios, seeds and strategies are not in the key: a rerun with more
  of them reuses the points it shares with the first run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Any

import rcompile
from rcompile import jsonbound
from rcompile.device import Hardware
from rcompile.errors import RcompileError
from rcompile.fileio import atomic_write, file_sha256
from rcompile.pipeline import SolverOptions

FORMAT = 1
"""Version of the results file; a file of another version is refused."""
MAX_BYTES = 64 << 20
"""Largest results file read (a sweep of 10,000 measurements is about 3 MB)."""

#: What a user changes to change each argument: named when a file's arguments differ.
_OPTION = {"rcompile_version": "the rcompile version", "model_sha256": "MODEL",
           "data_sha256": "--data", "calib_sha256": "--calib", "prune": "--prune",
           "device": "--device", "mode": "--mode", "pattern": "--pattern", "rows": "--rows",
           "cols": "--cols", "spare": "--spare", "solver": "--time-limit/--solver-seed"}

Point = tuple[float, str, int, str, str]
"""What identifies one measurement: rate, ratio (``SA1:SA0``), seed, strategy, its pipeline."""


def _sha256(path: str | None) -> str | None:
    return None if path is None else file_sha256(path)


def arguments(model_path: str, data_path: str, calib_path: str | None, prune: str | None,
              hardware: Hardware | None, mode: str, pattern: str, rows: int, cols: int,
              spare: float, solver: SolverOptions) -> dict[str, Any]:
    """Everything besides the point itself that changes a sweep's measurement."""
    return {"rcompile_version": rcompile.__version__, "model_sha256": _sha256(model_path),
            "data_sha256": _sha256(data_path), "calib_sha256": _sha256(calib_path),
            "prune": prune, "device": None if hardware is None else hardware.to_dict(),
            "mode": mode, "pattern": pattern, "rows": rows, "cols": cols, "spare": spare,
            "solver": asdict(solver)}


def _digest(doc: Any) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SweepStore:
    """The measurements of one sweep's arguments, in memory and, with a ``path``, on disk."""

    def __init__(self, path: str | None, args: dict[str, Any]) -> None:
        self.path = path
        self.args = args
        self.key = _digest(args)
        self.points: dict[Point, dict[str, Any]] = {}
        self.floors: dict[int, float] = {}
        self.resumed = 0
        """Measurements read from the file when the sweep started."""
        if path is not None and os.path.exists(path):
            self._read(path)
            self.resumed = len(self.points) + len(self.floors)

    def point(self, key: Point) -> dict[str, Any] | None:
        return self.points.get(key)

    def add_point(self, key: Point, measured: dict[str, Any]) -> None:
        self.points[key] = measured
        self._write()

    def add_floor(self, seed: int, accuracy: float) -> None:
        self.floors[seed] = accuracy
        self._write()

    # ------------------------------------------------------------------------ the file

    def _write(self) -> None:
        if self.path is None:
            return
        lines = [{"rcompile_sweep_results": FORMAT, "key": self.key, "arguments": self.args}]
        lines += [{"floor_seed": s, "accuracy": a} for s, a in self.floors.items()]
        lines += [{"rate": k[0], "ratio": k[1], "seed": k[2], "strategy": k[3], "pipeline": k[4],
                   **v} for k, v in self.points.items()]
        body = "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines)
        atomic_write(self.path, body.encode("utf-8"), what="sweep results")

    def _read(self, path: str) -> None:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise RcompileError(f"{path}: {size} bytes; expected sweep results of at most "
                                f"{MAX_BYTES} bytes")
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        try:
            docs = [jsonbound.loads(line, max_bytes=MAX_BYTES) for line in raw.splitlines()
                    if line.strip()]
        except ValueError as e:
            raise RcompileError(f"{path}: not a sweep results file ({e}); give another "
                                "--results or remove it") from None
        head = docs[0] if docs else None
        if not isinstance(head, dict) or head.get("rcompile_sweep_results") != FORMAT:
            raise RcompileError(f"{path}: not a sweep results file of format {FORMAT} (no "
                                "header line); give another --results or remove it")
        if head.get("key") != self.key:
            raise RcompileError(f"{path}: results of a sweep with other arguments "
                                f"({self._differences(head.get('arguments'))}); give another "
                                "--results or remove the file")
        for n, doc in enumerate(docs[1:], 2):
            try:
                self._take(doc)
            except (KeyError, TypeError, ValueError):
                raise RcompileError(f"{path}:{n}: not a measurement of a sweep (expected a "
                                    "point or a floor_seed line)") from None

    def _take(self, doc: dict[str, Any]) -> None:
        if "floor_seed" in doc:
            self.floors[int(doc["floor_seed"])] = float(doc["accuracy"])
            return
        key = (float(doc.pop("rate")), str(doc.pop("ratio")), int(doc.pop("seed")),
               str(doc.pop("strategy")), str(doc.pop("pipeline")))
        float(doc["accuracy"])  # every point measured an accuracy
        self.points[key] = doc

    def _differences(self, theirs: Any) -> str:
        if not isinstance(theirs, dict):
            return "unknown arguments"
        names = [_OPTION.get(k, k) for k in self.args if theirs.get(k) != self.args[k]]
        return "other " + ", ".join(names) if names else "another key"
