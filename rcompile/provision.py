"""Provisioning a production lot: plan once, compile every chip in parallel, resumably.

:func:`provision` is what ``rcompile provision`` runs (spec: ``docs/provisioning.md``):

1. the lot is every ``*.npz`` fault map in one directory, in name order; chip ``NAME.npz``
   gets the image ``OUTDIR/NAME.rimg``; no output may be one of the inputs;
2. the chip-independent plan is made once (or read with ``--plan``) for the tile geometry and
   levels most of the lot's maps declare, and handed to every worker;
3. each chip is one call of :func:`compile_chip` on a worker of a local process pool or of a
   ``dask.distributed`` cluster: load the fault map, build, write the image atomically
   (temporary file + rename, so a crash never leaves half an image), optionally verify;
4. a chip is skipped when its line in the existing report is ``ok`` or ``skipped``, records
   this build's key (:func:`lot_key`: everything that can change an image's bytes) and the
   SHA-256 of the image file that is there now, so a lot that was stopped resumes where it was
   and a rerun with other options rebuilds;
5. every chip gets one JSON line in ``OUTDIR/report.jsonl``, appended as soon as the chip is
   done; at the end the report is rewritten (atomically) with exactly one line per chip, in
   name order, so a resumed lot never lists a chip twice.

A chip that fails (a bad or mismatched fault map, a model that does not fit, a solver failure)
gets a line with ``"status": "error"`` and its message; the lot goes on. Local workers die with
the parent process (even a SIGKILL of it) and are killed when the lot is interrupted; temporary
files of dead writers are removed at the start and on an interrupt. The dask executor runs the
same function; its workers must see the lot and output directories (one shared filesystem), as
the local workers do.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import rcompile
from rcompile import api, interrupts, planfile, solvers
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile.data import Dataset, input_specs, load_data
from rcompile.device import Hardware
from rcompile.errors import BadImage, RcompileError
from rcompile.fileio import atomic_write, refuse_overwrite, remove_stale_temporaries
from rcompile.pipeline import SolverOptions

REPORT = "report.jsonl"
EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class LotState:
    """What every worker needs, the same for all chips of the lot."""

    saved: api.LotPlan
    strategy: str = api.DEFAULT_STRATEGY
    solver: SolverOptions = field(default_factory=SolverOptions)
    verify: Dataset | None = None
    out_dir: str = "."
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


@dataclass
class LotSummary:
    chips: int = 0
    ok: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    report: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)
    passed: int = 0
    """Chips whose verified accuracy met ``min_accuracy`` (0 without the gate)."""
    failed: int = 0
    """Chips built and verified below ``min_accuracy``: binned ``fail``, their image kept."""

    def to_dict(self) -> dict[str, Any]:
        return {"chips": self.chips, "ok": self.ok, "skipped": self.skipped,
                "errors": self.errors, "passed": self.passed, "failed": self.failed,
                "seconds": self.seconds, "report": self.report}


# --------------------------------------------------------------------------------------------
# One chip (runs on a worker)
# --------------------------------------------------------------------------------------------


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
        line.update(status="error", message=_one_line(str(e)), seconds=time.perf_counter() - t0)
    except Exception as e:  # a bug must not stop the lot; the line says what happened
        line.update(status="error", message=f"internal error: {type(e).__name__}: "
                    f"{_one_line(str(e))}", seconds=time.perf_counter() - t0)
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
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# What makes an image: the skip key
# --------------------------------------------------------------------------------------------


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
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _predicted(log: list[dict[str, Any]]) -> float | None:
    costs = [float(e["cost_after"]) for e in log if "cost_after" in e]
    return costs[-1] if costs else None


def _one_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "(no message)"


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(state: LotState, parent: int, started: Any) -> None:
    interrupts.worker_started(parent)  # stopped by the parent only, never outliving it
    _WORKER["state"] = state
    _WORKER["started"] = started


def _local_chip(task: ChipTask, index: int) -> dict[str, Any]:
    _WORKER["started"][index] = 1  # so the parent knows who was in flight if this worker dies
    return compile_chip(_WORKER["state"], task)


def _run_local(state: LotState, tasks: list[ChipTask], jobs: int
               ) -> Generator[dict[str, Any], None, None]:
    """Every chip's line, from ``jobs`` worker processes.

    A worker that dies (killed, out of memory) breaks its pool: the chips it left unfinished go
    to a new pool, except those that had started, which run one by one, each in a pool of its
    own; a chip whose worker dies while it runs alone gets the error line. So one chip that
    kills its worker fails alone, and the lot goes on.
    """
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield compile_chip(state, t)
        return
    pending = list(tasks)
    suspects: list[ChipTask] = []
    while pending or suspects:
        batch = [suspects.pop(0)] if suspects else pending
        if batch is pending:
            pending = []
        unfinished, started = yield from _pool_run(state, batch, min(jobs, len(batch)))
        if len(batch) == 1 and unfinished:
            yield _worker_died(batch[0])
            continue
        if not started:  # broken before any chip began: alone, each chip ends the loop
            started = set(unfinished)
        suspects += [t for t in unfinished if t in started]
        pending += [t for t in unfinished if t not in started]


def _pool_run(state: LotState, batch: list[ChipTask], jobs: int
              ) -> Generator[dict[str, Any], None, tuple[list[ChipTask], set[ChipTask]]]:
    """Yield the lines of ``batch`` from a pool of ``jobs`` workers; return the chips left
    unfinished by a dead worker (in lot order) and the chips that had started."""
    import multiprocessing as mp

    flags = mp.Array("b", len(batch), lock=False)  # started[i], set by the worker
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker,
                               initargs=(state, os.getpid(), flags))
    finished = False
    broken: set[ChipTask] = set()
    try:
        futures = {}
        with interrupts.deferred():  # the workers are forked here
            for i, t in enumerate(batch):
                try:
                    futures[pool.submit(_local_chip, t, i)] = t
                except BrokenProcessPool:  # a worker died already: the rest is unfinished
                    broken.add(t)
        for fut in as_completed(futures):
            try:
                line = fut.result()
            except BrokenProcessPool:
                broken.add(futures[fut])
                continue
            except Exception as e:
                line = _error_line(futures[fut], f"worker failed: {type(e).__name__}: "
                                   f"{_one_line(str(e))}")
            yield line
        finished = True
    finally:
        if finished:
            pool.shutdown()
        else:  # interrupted, or the consumer stopped: no chip may go on in the background
            interrupts.kill_pool(pool)
    started = {t for i, t in enumerate(batch) if flags[i]}
    return [t for t in batch if t in broken], started


def _worker_died(task: ChipTask) -> dict[str, Any]:
    return _error_line(task, "worker died while compiling this chip (killed, or out of "
                       "memory); the rest of the lot went on")


def _error_line(task: ChipTask, message: str) -> dict[str, Any]:
    return {"faultmap": os.path.basename(task.faultmap), "chip_id": None,
            "file": os.path.basename(task.image), "status": "error", "seconds": 0.0,
            "message": message}


def _result(fut: Any, task: ChipTask) -> dict[str, Any]:
    """The chip's line, or an error line if its worker failed."""
    try:
        return fut.result()  # type: ignore[no-any-return]
    except Exception as e:
        return _error_line(task, f"worker failed: {type(e).__name__}: {_one_line(str(e))}")


def _run_dask(state: LotState, tasks: list[ChipTask], scheduler: str | None,
              client: Any = None, timeout_s: float = 20.0
              ) -> Generator[dict[str, Any], None, None]:
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
    mode: str = "auto",
    noise_seed: int = 0,
    min_accuracy: float | None = None,
) -> LotSummary:
    """Compile every chip of the lot in ``faultmaps`` into ``out_dir`` (see module docstring).

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
    state = LotState(saved, strategy, solver, verify, out_dir, hardware, done,
                     lot_key(saved, strategy, solver, hardware),
                     None if verify is None else verify_key(verify, hardware, mode, noise_seed),
                     model, mode, noise_seed)
    tasks = [ChipTask(m, image_path(out_dir, m)) for m in maps]
    lines: dict[str, dict[str, Any]] = {}
    summary = LotSummary(chips=len(tasks), report=report)
    n_jobs = jobs if jobs >= 1 else solvers.jobs()
    results = (_run_local(state, tasks, n_jobs) if executor == "local"
               else _run_dask(state, tasks, scheduler, client, connect_timeout_s))
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
                line = bin_chip(_merge(done.get(got["faultmap"]), got), min_accuracy)
                summary.passed += line.get("bin") == "pass"
                summary.failed += line.get("bin") == "fail"
                if line is not done.get(got["faultmap"]):
                    rep.write(json.dumps(line, sort_keys=True, default=_json_default) + "\n")
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
    body = "".join(json.dumps(x, sort_keys=True, default=_json_default) + "\n" for x in final)
    atomic_write(report, body.encode("utf-8"), what="report")
    summary.lines = final
    summary.seconds = time.perf_counter() - t0
    return summary


def bin_chip(line: dict[str, Any], min_accuracy: float | None) -> dict[str, Any]:
    """The chip's line binned against ``min_accuracy``: a built chip whose verified accuracy is
    at least the threshold gets ``"bin": "pass"``, one below it ``"bin": "fail"`` (its image
    stays, so a lower threshold can pass it again without a rebuild), both with the
    threshold as ``min_accuracy``. Without a threshold an earlier run's bin is dropped; a chip
    in error or without an accuracy is not binned (``line`` itself when nothing changes)."""
    acc = line.get("accuracy")
    if min_accuracy is None and "bin" in line:
        return {k: v for k, v in line.items() if k not in ("bin", "min_accuracy")}
    if min_accuracy is None or line.get("status") == "error" or acc is None:
        return line
    binned = {**line, "bin": "pass" if acc >= min_accuracy else "fail",
              "min_accuracy": min_accuracy}
    return line if binned == line else binned


def _merge(old: dict[str, Any] | None, got: dict[str, Any]) -> dict[str, Any]:
    """The report line of a chip: a skipped chip keeps its earlier line (``old`` itself, or a
    copy with the new verification when it was verified again); any other result is new."""
    if got["status"] != "skipped" or old is None:
        return got
    keys = ("accuracy", "agreement", "mode", "verify_key")
    fresh: dict[str, Any] = {k: got[k] for k in keys if k in got}
    return {**old, **fresh} if fresh else old


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


__all__ = ["ChipTask", "LotState", "LotSummary", "bin_chip", "compile_chip", "provision",
           "REPORT"]
