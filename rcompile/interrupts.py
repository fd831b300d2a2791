"""SIGINT and SIGTERM end a command with one stderr line, exit 130 / 143, no partial output.

:func:`catching` turns both signals into :class:`Interrupted` (a ``BaseException``, so no
``except Exception`` of a library swallows it, and ``finally`` blocks and
:func:`rcompile.fileio.atomic_write` clean up on the way out); :func:`stop` prints the line,
removes the temporaries still being written and exits ``128 + signal``. :func:`main` is the
console entry point: it takes the signals before the (slow) imports of the command line, so an
interrupt during start-up is also one line.

Worker processes (a lot's chips, a chip's blocks) leave the decision to their parent: they
ignore SIGINT, die on SIGTERM, die with the parent however it ends (:func:`worker_started`),
and the parent kills them when it is interrupted (:func:`kill_pool`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # not imported at start-up: the handlers go in before anything slow
    from concurrent.futures import ProcessPoolExecutor

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process got SIGINT or SIGTERM; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_PENDING: list[int] = []
"""Signals received and not yet ended the process (see :func:`check`)."""


def _raise(signum: int, frame: FrameType | None) -> None:
    _PENDING.append(signum)
    raise Interrupted(signum)


def check() -> None:
    """Raise :class:`Interrupted` for a signal whose exception was lost: Python ignores an
    exception raised inside some callbacks (``__del__``, at-fork hooks), so :func:`catching`'s
    callers check once more when their work is done."""
    if _PENDING:
        raise Interrupted(_PENDING[0])


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (they arrive, and raise, right after it).

    Around ``fork``: an exception raised in an at-fork hook is lost, and a child forked with
    the signals blocked starts with them blocked (:func:`worker_started` unblocks them).
    """
    if (threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "pthread_sigmask")):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextmanager
def catching() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted`; the previous handlers
    come back after it. Outside the main thread (where Python cannot set handlers) nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop(e: Interrupted) -> NoReturn:
    """End the process for ``e``: further signals ignored, own temporaries removed, one line,
    then ``os._exit`` (no interpreter shutdown)."""
    from rcompile.fileio import remove_own_temporaries

    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    _PENDING.clear()
    remove_own_temporaries()
    name = signal.Signals(e.signum).name
    sys.stderr.write(f"rcompile: interrupted by {name}; stopped without a partial output\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # End here, not through the interpreter's shutdown: there, the management thread of a pool
    # just killed (kill_pool) can still write to its closed wake-up pipe and print "Exception
    # ignored ... Bad file descriptor" after the one line.
    os._exit(e.exit_code)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_started(parent: int) -> None:
    """Run first in every worker process of ``parent`` (a pool ``initializer``).

    SIGINT is ignored (a terminal's Ctrl-C reaches the whole process group; the parent stops
    the work), SIGTERM is the default (die), and the worker ends when ``parent`` ends, however
    it ends, SIGKILL included: on Linux the kernel does it (``prctl(PR_SET_PDEATHSIG,
    SIGKILL)``); elsewhere a daemon thread polls the parent twice a second.
    """
    from rcompile.fileio import alive

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _PENDING.clear()
    if hasattr(signal, "pthread_sigmask"):  # forked inside deferred()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if not alive(parent):  # it died before the request was in place
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while alive(parent):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="rcompile-parent-watch", daemon=True).start()


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """Kill ``pool``'s worker processes now (no chip or block goes on in the background), drop
    its queued work, and wait until the workers are gone."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        try:
            p.kill()
        except (OSError, ValueError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.join(timeout=10)
        except (OSError, ValueError, AssertionError):
            pass


def main() -> None:
    """Console entry point: the signals are taken first, then the command line is imported."""
    try:
        with catching():
            from rcompile.cliprogress import announce

            announce(sys.argv[1:], sys.stderr)  # before the slow imports
            from rcompile.cli import main as cli_main

            cli_main()
    except Interrupted as e:
        stop(e)
