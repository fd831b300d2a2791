"""What makes an image, as keys a rerun compares: :func:`lot_key` (everything but the chip),
:func:`chip_key` (plus the fault map) and :func:`verify_key` (what verification reads)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import numpy as np

import rcompile
from rcompile import api, planfile
from rcompile import faultmap as fmap
from rcompile.data import Dataset
from rcompile.device import Hardware
from rcompile.errors import RcompileError
from rcompile.pipeline import SolverOptions


def lot_key(saved: api.LotPlan, strategy: str, solver: SolverOptions,
            hardware: Hardware | None) -> str:
    """SHA-256 of everything, besides the chip's fault map, that can change an image's bytes.

    The compiler version; the plan as :func:`rcompile.planfile.encode` stores it (the model's
    normalised graph and SHA-256, tile rows and columns, the cell's levels and conductances,
    the plan pipeline with its pruning, quantised weights, blocks and their packing, and the
    calibration statistics, so the *content* of ``--calib`` counts, not its name); the strategy
    and the per-chip pipeline it stands for; every solver option (``--time-limit``, ``--seed``,
    worker threads); the device model (``--device``). :func:`chip_key` adds the fault map.
    """
    try:
        plan_sha = hashlib.sha256(planfile.encode(saved.plan, saved.calib)).hexdigest()
    except RcompileError:  # a plan that cannot be saved (nothing tiled): its identity instead
        plan_sha = hashlib.sha256(json.dumps(
            [saved.plan.model_sha256, saved.plan.tile_rows, saved.plan.tile_cols,
             saved.plan.device.to_dict(), saved.plan.options], sort_keys=True,
            default=str).encode()).hexdigest()
    doc = {"compiler_version": rcompile.__version__, "plan_sha256": plan_sha,
           "strategy": strategy, "pipeline": api.STRATEGIES[strategy],
           "solver": asdict(solver),
           "hardware": None if hardware is None else hardware.to_dict()}
    return _digest(doc)


def chip_key(key: str, fm: fmap.FaultMap) -> str:
    """The build key of one chip: the lot's key and the fault map's content digest."""
    return _digest({"lot": key, "faultmap_sha256": fm.digest()})


def verify_key(data: Dataset, hardware: Hardware | None, mode: str = "auto",
               noise_seed: int = 0) -> str:
    """SHA-256 of what verification depends on besides the image: the data's content, the
    device emulated, the emulation mode and noise seed."""
    h = hashlib.sha256()
    for name, arr in [*sorted(data.inputs.items()), ("labels", data.labels)]:
        h.update(name.encode() + b"\0")
        if arr is not None:
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return _digest({"data": h.hexdigest(), "mode": mode, "noise_seed": noise_seed,
                    "hardware": None if hardware is None else hardware.to_dict()})


def _digest(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_default(x: Any) -> Any:
    """numpy scalars as Python numbers, for the keys and the report's JSON lines."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


