"""The executors that run :func:`~rcompile.provision.chip.compile_chip` for every chip: local
worker processes that survive a dying worker (:func:`run_local`) or a ``dask.distributed``
cluster (:func:`run_dask`). Both yield each chip's report line as it is done."""

from __future__ import annotations

import os
from collections.abc import Generator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from rcompile import interrupts
from rcompile.errors import RcompileError
from rcompile.provision.chip import ChipTask, LotState, compile_chip, one_line

_WORKER: dict[str, Any] = {}


def _init_worker(state: LotState, parent: int, started: Any) -> None:
    interrupts.worker_started(parent)  # stopped by the parent only, never outliving it
    _WORKER["state"] = state
    _WORKER["started"] = started


def _local_chip(task: ChipTask, index: int) -> dict[str, Any]:
    _WORKER["started"][index] = 1  # so the parent knows who was in flight if this worker dies
    return compile_chip(_WORKER["state"], task)


def run_local(state: LotState, tasks: list[ChipTask], jobs: int
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
                                   f"{one_line(str(e))}")
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
        return _error_line(task, f"worker failed: {type(e).__name__}: {one_line(str(e))}")


def run_dask(state: LotState, tasks: list[ChipTask], scheduler: str | None,
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


