"""The lot: its fault maps and outputs, its one plan, and :func:`provision`, which runs every
chip through an executor and keeps the report (the steps in :mod:`rcompile.provision`)."""

from __future__ import annotations

import json
import os
import secrets
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from rcompile import api, solvers
from rcompile import faultmap as fmap
from rcompile.data import input_specs, load_data
from rcompile.device import Hardware
from rcompile.errors import RcompileError
from rcompile.fileio import atomic_write, refuse_overwrite, remove_stale_temporaries
from rcompile.pipeline import SolverOptions
from rcompile.provision.chip import ChipTask, LotState
from rcompile.provision.keys import json_default, lot_key, verify_key
from rcompile.provision.pool import run_dask, run_local
from rcompile.provision.report import REPORT, LotSummary, bin_chip, merge_line, read_report

EXECUTORS = ("local", "dask")


def find_faultmaps(directory: str) -> list[str]:
    """Every ``*.npz`` in ``directory``, in name order; an empty lot is an error."""
    p = Path(directory)
    if not p.is_dir():
        raise RcompileError(f"{directory}: not a directory of fault maps")
    maps = sorted(str(f) for f in p.iterdir() if f.suffix == ".npz" and f.is_file())
    if not maps:
        raise RcompileError(f"{directory}: no fault maps (*.npz) in the lot directory")
    return maps


def check_writable(out_dir: str) -> None:
    """Create ``out_dir`` if needed and prove a file can be written there."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = Path(out_dir) / f".rcompile-probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RcompileError(f"{out_dir}: output directory is not writable "
                            f"({e.strerror or e})") from e


def image_path(out_dir: str, faultmap: str) -> str:
    """Where chip ``NAME.npz`` gets its image: ``OUTDIR/NAME.rimg``."""
    return os.path.join(out_dir, Path(faultmap).stem + ".rimg")


def check_outputs(model: str, maps: list[str], out_dir: str, *, plan_path: str | None = None,
                  calib_path: str | None = None, verify_data: str | None = None,
                  device_file: str | None = None) -> None:
    """Refuse a lot whose report or an image would be written over one of its inputs."""
    outputs = [("-o", os.path.join(out_dir, REPORT))]
    outputs += [("-o", image_path(out_dir, m)) for m in maps]
    inputs: list[tuple[str, str | None]] = [
        ("MODEL", model), ("--plan", plan_path), ("--calib", calib_path),
        ("--data", verify_data), ("--device", device_file)]
    inputs += [("--faultmap-dir", m) for m in maps]
    refuse_overwrite(outputs, inputs)


def lot_family(path: str) -> tuple[int, int, int | None] | None:
    """``(rows, cols, levels)`` a fault map declares, read from its member headers alone
    (levels None if the map records none); None if they cannot be read: the chip's own load
    then reports why."""
    try:
        with zipfile.ZipFile(path) as zf:
            shape, _ = _npy_header(zf, "faults.npy")
            if len(shape) != 3:
                return None
            levels = None
            if "levels.npy" in zf.namelist():
                lshape, ldtype = _npy_header(zf, "levels.npy")
                if lshape != () or ldtype.kind not in "iu":
                    return None
                with zf.open("levels.npy") as f:
                    levels = int(np.lib.format.read_array(f, allow_pickle=False)[()])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, RuntimeError):
        return None
    return (int(shape[1]), int(shape[2]), levels)


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    with zf.open(name) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    return tuple(shape), dtype


def lot_plan(model: str, maps: list[str], *, plan_path: str | None = None,
             calib_path: str | None = None,
             hardware: Hardware | None = None, moments: bool = False) -> api.LotPlan:
    """The lot's plan (:func:`rcompile.api.plan_lot`): read from ``plan_path`` (checked against
    ``model``), or made from the model for the tile geometry and levels most maps of the lot
    declare (:func:`lot_family`; a tie goes to the family whose first map sorts first), taken
    from the first map of that family that loads (and for the cell of ``hardware`` when given:
    its levels, conductances and programming error table). A map of another family is then that
    chip's error alone. ``moments``: also the input moments of the ``covariance`` pass."""
    if plan_path is not None:  # checked against the model here, against each chip on its own
        return api.plan_lot(model, None, hardware=hardware, plan_path=plan_path,
                            calib_path=calib_path)
    families = [lot_family(m) for m in maps]
    votes = Counter(f for f in families if f is not None)
    rank: dict[Any, tuple[int, int]] = {f: (-n, families.index(f)) for f, n in votes.items()}
    order = sorted(range(len(maps)), key=lambda i: (
        rank.get(families[i], (0, len(maps))), i))  # the winning family first, then the rest
    first = None
    for path in (maps[i] for i in order):
        try:
            first = fmap.load(path)
            break
        except RcompileError:
            continue
    if first is None:
        raise RcompileError(f"{os.path.dirname(maps[0]) or '.'}: no fault map in the lot loads")
    return api.plan_lot(model, first, hardware=hardware, calib_path=calib_path, moments=moments)


def provision(
    model: str,
    faultmaps: str,
    out_dir: str,
    *,
    jobs: int = 0,
    strategy: str = api.DEFAULT_STRATEGY,
    plan_path: str | None = None,
    calib_path: str | None = None,
    verify_data: str | None = None,
    solver: SolverOptions | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    client: Any = None,
    connect_timeout_s: float = 20.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    hardware: Hardware | None = None,
    mode: str = "auto",
    noise_seed: int = 0,
    min_accuracy: float | None = None,
) -> LotSummary:
    """Compile every chip of the lot in ``faultmaps`` into ``out_dir`` (the steps in
    :mod:`rcompile.provision`).

    ``jobs`` local worker processes (0: one per core); ``executor="dask"`` sends the chips to
    the ``dask.distributed`` scheduler at ``scheduler`` (or to an existing ``client``), giving
    up after ``connect_timeout_s`` if it does not answer.
    ``progress`` is called with each chip's report line as it arrives. ``hardware`` is the
    lot's device model (``build --device`` for every chip); ``mode`` and ``noise_seed``: how
    every image is verified (``verify --mode --noise-seed``). ``min_accuracy`` (needs
    ``verify_data``) bins every verified chip (:func:`bin_chip`).
    """
    if strategy not in api.STRATEGIES:
        raise RcompileError(f"unknown strategy {strategy!r}; known: {sorted(api.STRATEGIES)}")
    if executor not in EXECUTORS:
        raise RcompileError(f"unknown executor {executor!r}; expected one of {EXECUTORS}")
    if min_accuracy is not None and verify_data is None:
        raise RcompileError("--min-accuracy bins chips by their verified accuracy; give "
                            "--verify-data too")
    t0 = time.perf_counter()
    maps = find_faultmaps(faultmaps)
    check_outputs(model, maps, out_dir, plan_path=plan_path, calib_path=calib_path,
                  verify_data=verify_data)
    check_writable(out_dir)
    remove_stale_temporaries(out_dir)  # what a killed run left: images, report, probe
    saved = lot_plan(model, maps, plan_path=plan_path, calib_path=calib_path, hardware=hardware,
                     moments=api.needs_moments(api.STRATEGIES[strategy]))
    solver = solver or SolverOptions()
    verify = None
    if verify_data is not None:
        verify = load_data(verify_data, input_specs(saved.plan.model))
    report = os.path.join(out_dir, REPORT)
    previous = read_report(report)
    done = {k: v for k, v in previous.items() if v.get("status") in ("ok", "skipped")}
    state = LotState(saved, strategy, solver, verify, hardware, done,
                     lot_key(saved, strategy, solver, hardware),
                     None if verify is None else verify_key(verify, hardware, mode, noise_seed),
                     model, mode, noise_seed)
    tasks = [ChipTask(m, image_path(out_dir, m)) for m in maps]
    lines: dict[str, dict[str, Any]] = {}
    summary = LotSummary(chips=len(tasks), report=report)
    n_jobs = jobs if jobs >= 1 else solvers.jobs()
    results = (run_local(state, tasks, n_jobs) if executor == "local"
               else run_dask(state, tasks, scheduler, client, connect_timeout_s))
    try:
        with closing(results), open(report, "a+", encoding="utf-8") as rep:
            if rep.tell() > 0:
                rep.seek(rep.tell() - 1)
                if rep.read(1) != "\n":
                    rep.write("\n")  # a line torn by a crash stays alone on its line
            for got in results:
                status = got["status"]
                setattr(summary, "errors" if status == "error" else status,
                        getattr(summary, "errors" if status == "error" else status) + 1)
                line = bin_chip(merge_line(done.get(got["faultmap"]), got), min_accuracy)
                summary.passed += line.get("bin") == "pass"
                summary.failed += line.get("bin") == "fail"
                if line is not done.get(got["faultmap"]):
                    rep.write(json.dumps(line, sort_keys=True, default=json_default) + "\n")
                    rep.flush()
                lines[line["faultmap"]] = line
                if progress is not None:
                    progress(line)
    except OSError as e:
        raise RcompileError(f"{report}: cannot write report ({e.strerror or e})") from e
    except BaseException:  # interrupted: the workers are gone (closing); so are their temporaries
        remove_stale_temporaries(out_dir)
        raise
    final = [lines[os.path.basename(t.faultmap)] for t in tasks]
    body = "".join(json.dumps(x, sort_keys=True, default=json_default) + "\n" for x in final)
    atomic_write(report, body.encode("utf-8"), what="report")
    summary.lines = final
    summary.seconds = time.perf_counter() - t0
    return summary


