"""Provisioning a production lot: plan once, compile every chip in parallel, resumably.

:func:`provision` is what ``rcompile provision`` runs (spec: ``docs/provisioning.md``):

1. the lot is every ``*.npz`` fault map in one directory, in name order; chip ``NAME.npz``
   gets the image ``OUTDIR/NAME.rimg``;
2. the chip-independent plan is made once (or read with ``--plan``) and handed to every worker;
3. each chip is one call of :func:`compile_chip` on a worker of a local process pool or of a
   ``dask.distributed`` cluster: load the fault map, build, write the image atomically
   (temporary file + rename, so a crash never leaves half an image), optionally verify;
4. a chip whose image already exists, decodes, and records this fault map's and this model's
   SHA-256 is skipped, so a lot that was stopped resumes where it was;
5. every chip gets one JSON line in ``OUTDIR/report.jsonl``, appended as soon as the chip is
   done; at the end the report is rewritten (atomically) with exactly one line per chip, in
   name order, so a resumed lot never lists a chip twice.

A chip that fails (a bad or mismatched fault map, a model that does not fit, a solver failure)
gets a line with ``"status": "error"`` and its message; the lot goes on. The dask executor
runs the same function; its workers must see the lot and output directories (one shared
filesystem), as the local workers do.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rcompile import api, planfile, solvers
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile.data import Dataset, input_specs, load_data
from rcompile.device import Hardware
from rcompile.errors import BadPlan, RcompileError
from rcompile.fileio import atomic_write
from rcompile.pipeline import SolverOptions

REPORT = "report.jsonl"
EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class LotState:
    """What every worker needs, the same for all chips of the lot."""

    saved: planfile.SavedPlan
    strategy: str = api.DEFAULT_STRATEGY
    solver: SolverOptions = field(default_factory=SolverOptions)
    verify: Dataset | None = None
    out_dir: str = "."
    hardware: Hardware | None = None
    """The chips' device model (``--device``): recorded in every image, emulated by verify."""
    reported: frozenset[str] = frozenset()
    """Fault maps (file names) the existing report lists as done: only their images may be
    skipped, so an image whose report line a crash lost is built again (same bytes)."""


@dataclass(frozen=True)
class ChipTask:
    faultmap: str
    """Path of the chip's fault map."""
    image: str
    """Path of the chip's image."""


@dataclass
class LotSummary:
    chips: int = 0
    ok: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    report: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"chips": self.chips, "ok": self.ok, "skipped": self.skipped,
                "errors": self.errors, "seconds": self.seconds, "report": self.report}


# --------------------------------------------------------------------------------------------
# One chip (runs on a worker)
# --------------------------------------------------------------------------------------------


def compile_chip(state: LotState, task: ChipTask) -> dict[str, Any]:
    """Compile one chip of the lot; always returns its report line, never raises for the chip.

    Keys: ``chip_id``, ``faultmap``, ``file`` (image), ``status`` (ok / skipped / error),
    ``faults`` (``{"sa0", "sa1", "rate"}``), ``predicted_error`` (the last per-chip pass's
    ``cost_after``: the objective of ``docs/mapping.md``, weighted squared weight error, or
    null when the strategy solves nothing), ``seconds``, ``accuracy`` / ``agreement`` (with
    verification data), ``message`` (errors).
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
        if os.path.basename(task.faultmap) in state.reported and _done(task.image, fm, state):
            line.update(status="skipped", seconds=time.perf_counter() - t0)
            return line
        with solvers.serial():  # one chip per worker: the workers already fill the cores
            res = api.build(state.saved.plan, fm, strategy=state.strategy,
                            solver=state.solver, calib=state.saved.calib,
                            hardware=None if hw is None else hw.to_dict())
        rimg.write(res.image, task.image)
        line["predicted_error"] = _predicted(res.log)
        line["tiles_used"] = len(res.image.tiles)
        if state.verify is not None:
            from rcompile import runtime

            rep = runtime.verify(res.image, fm, state.verify, image_source=task.image)
            line["accuracy"] = rep.accuracy
            line["mode"] = rep.mode
            line["agreement"] = rep.agreement
        line.update(status="ok", seconds=time.perf_counter() - t0)
    except RcompileError as e:
        line.update(status="error", message=_one_line(str(e)), seconds=time.perf_counter() - t0)
    except Exception as e:  # a bug must not stop the lot; the line says what happened
        line.update(status="error", message=f"internal error: {type(e).__name__}: "
                    f"{_one_line(str(e))}", seconds=time.perf_counter() - t0)
    return line


def _done(path: str, fm: fmap.FaultMap, state: LotState) -> bool:
    """True if ``path`` holds a valid image of this chip and this model, built with the lot's
    strategy for the lot's device (a rerun with other settings rebuilds)."""
    if not os.path.exists(path):
        return False
    try:
        head = rimg.read(path).header
    except RcompileError:
        return False
    hw = None if state.hardware is None else state.hardware.to_dict()
    return bool(head.get("faultmap_sha256") == fm.digest()
                and head.get("model_sha256") == state.saved.plan.model_sha256
                and head.get("strategy") == state.strategy
                and head.get("hardware") == hw)


def _predicted(log: list[dict[str, Any]]) -> float | None:
    costs = [float(e["cost_after"]) for e in log if "cost_after" in e]
    return costs[-1] if costs else None


def _one_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "(no message)"


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------

_WORKER: dict[str, LotState] = {}


def _init_worker(state: LotState) -> None:
    _WORKER["state"] = state


def _local_chip(task: ChipTask) -> dict[str, Any]:
    return compile_chip(_WORKER["state"], task)


def _run_local(state: LotState, tasks: list[ChipTask], jobs: int
               ) -> Iterator[dict[str, Any]]:
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield compile_chip(state, t)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), initializer=_init_worker,
                             initargs=(state,)) as pool:
        futures = {pool.submit(_local_chip, t): t for t in tasks}
        for fut in as_completed(futures):
            yield _result(fut, futures[fut])


def _result(fut: Any, task: ChipTask) -> dict[str, Any]:
    """The chip's line, or an error line if its worker died (out of memory, killed)."""
    try:
        return fut.result()  # type: ignore[no-any-return]
    except Exception as e:
        return {"faultmap": os.path.basename(task.faultmap), "chip_id": None,
                "file": os.path.basename(task.image), "status": "error", "seconds": 0.0,
                "message": f"worker failed: {type(e).__name__}: {_one_line(str(e))}"}


def _run_dask(state: LotState, tasks: list[ChipTask], scheduler: str | None,
              client: Any = None, timeout_s: float = 20.0) -> Iterator[dict[str, Any]]:
    try:
        from dask.distributed import Client
        from dask.distributed import as_completed as dask_completed
    except ImportError as e:
        raise RcompileError("--executor dask needs dask.distributed: "
                            "pip install 'rcompile[dask]'") from e
    own = client is None
    if own:
        if not scheduler:
            raise RcompileError("--executor dask needs --scheduler ADDRESS "
                                "(e.g. tcp://10.0.0.5:8786)")
        try:
            client = Client(scheduler, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError) as e:
            raise RcompileError(f"dask scheduler {scheduler}: cannot connect ({e})") from e
    try:
        shared = client.scatter(state, broadcast=True)
        futures = {client.submit(compile_chip, shared, t, pure=False): t for t in tasks}
        for fut in dask_completed(list(futures)):
            yield _result(fut, futures[fut])
    finally:
        if own:
            client.close()


# --------------------------------------------------------------------------------------------
# The lot
# --------------------------------------------------------------------------------------------


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
        probe = Path(out_dir) / f".rcompile-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RcompileError(f"{out_dir}: output directory is not writable "
                            f"({e.strerror or e})") from e


def lot_plan(model: str, maps: list[str], *, plan_path: str | None = None,
             calib_path: str | None = None,
             hardware: Hardware | None = None) -> planfile.SavedPlan:
    """The lot's plan: read from ``plan_path`` (checked against ``model``), or made from the
    model for the geometry and levels of the first fault map that loads (and for the cell of
    ``hardware`` when given: its levels, conductances and programming error table)."""
    if plan_path is not None:
        saved = planfile.read(plan_path)
        planfile.check_model(saved, model)
        if calib_path is not None and saved.calib is None:
            raise BadPlan(f"{plan_path}: made without --calib; pass --calib to 'rcompile plan'")
        if hardware is not None and hardware.cell.levels != saved.plan.device.levels:
            raise BadPlan(f"{plan_path}: plan is quantised for {saved.plan.device.levels} levels "
                          f"but device {hardware.name} has {hardware.cell.levels}: make a plan "
                          f"with --levels {hardware.cell.levels}")
        return saved
    first = None
    for path in maps:
        try:
            first = fmap.load(path)
            break
        except RcompileError:
            continue
    if first is None:
        raise RcompileError(f"{os.path.dirname(maps[0]) or '.'}: no fault map in the lot loads")
    geo = first.geometry
    from rcompile.programming import compiler_device

    plan, _ = api.make_plan(model, tile_rows=geo.rows, tile_cols=geo.cols,
                            device=first.device(compiler_device(hardware)))
    calib = None
    if calib_path is not None:
        calib = api.load_calib_stats(plan, calib_path)
    return planfile.SavedPlan(plan, calib, source=f"plan of {model}")


def read_report(path: str) -> dict[str, dict[str, Any]]:
    """Lines of an existing report by fault-map file name (last wins; torn lines ignored)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for raw in f:
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if isinstance(line, dict) and isinstance(line.get("faultmap"), str):
                    out[line["faultmap"]] = line
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RcompileError(f"{path}: cannot read report ({e.strerror or e})") from e
    return out


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
) -> LotSummary:
    """Compile every chip of the lot in ``faultmaps`` into ``out_dir`` (see module docstring).

    ``jobs`` local worker processes (0: one per core); ``executor="dask"`` sends the chips to
    the ``dask.distributed`` scheduler at ``scheduler`` (or to an existing ``client``), giving
    up after ``connect_timeout_s`` if it does not answer.
    ``progress`` is called with each chip's report line as it arrives. ``hardware`` is the
    lot's device model (``build --device`` for every chip).
    """
    if strategy not in api.STRATEGIES:
        raise RcompileError(f"unknown strategy {strategy!r}; known: {sorted(api.STRATEGIES)}")
    if executor not in EXECUTORS:
        raise RcompileError(f"unknown executor {executor!r}; expected one of {EXECUTORS}")
    t0 = time.perf_counter()
    maps = find_faultmaps(faultmaps)
    check_writable(out_dir)
    saved = lot_plan(model, maps, plan_path=plan_path, calib_path=calib_path, hardware=hardware)
    verify = None
    if verify_data is not None:
        verify = load_data(verify_data, input_specs(saved.plan.model))
    report = os.path.join(out_dir, REPORT)
    previous = read_report(report)
    reported = frozenset(k for k, v in previous.items() if v.get("status") in ("ok", "skipped"))
    state = LotState(saved, strategy, solver or SolverOptions(), verify, out_dir, hardware,
                     reported)
    tasks = [ChipTask(m, os.path.join(out_dir, Path(m).stem + ".rimg")) for m in maps]
    lines: dict[str, dict[str, Any]] = {}
    summary = LotSummary(chips=len(tasks), report=report)
    n_jobs = jobs if jobs >= 1 else solvers.jobs()
    results: Iterable[dict[str, Any]] = (
        _run_local(state, tasks, n_jobs) if executor == "local"
        else _run_dask(state, tasks, scheduler, client, connect_timeout_s)
    )
    _remove_stale_temporaries(out_dir)
    try:
        with open(report, "a+", encoding="utf-8") as rep:
            if rep.tell() > 0:
                rep.seek(rep.tell() - 1)
                if rep.read(1) != "\n":
                    rep.write("\n")  # a line torn by a crash stays alone on its line
            for got in results:
                status = got["status"]
                setattr(summary, "errors" if status == "error" else status,
                        getattr(summary, "errors" if status == "error" else status) + 1)
                old = previous.get(got["faultmap"])
                keep = status == "skipped" and old is not None and old.get("status") in (
                    "ok", "skipped")
                line = old if keep and old is not None else got  # done before: keep that line
                if not keep:
                    rep.write(json.dumps(line, sort_keys=True, default=_json_default) + "\n")
                    rep.flush()
                lines[line["faultmap"]] = line
                if progress is not None:
                    progress(line)
    except OSError as e:
        raise RcompileError(f"{report}: cannot write report ({e.strerror or e})") from e
    final = [lines[os.path.basename(t.faultmap)] for t in tasks]
    body = "".join(json.dumps(x, sort_keys=True, default=_json_default) + "\n" for x in final)
    atomic_write(report, body.encode("utf-8"), what="report")
    summary.lines = final
    summary.seconds = time.perf_counter() - t0
    return summary


def _remove_stale_temporaries(out_dir: str) -> None:
    """Delete temporary image files (``.NAME.rimg.PID.HEX.tmp``) left by a killed run."""
    for f in Path(out_dir).glob(".*.rimg.*.tmp"):
        parts = f.name.split(".")
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue  # another run is writing it right now
        f.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


__all__ = ["ChipTask", "LotState", "LotSummary", "compile_chip", "provision", "REPORT"]
