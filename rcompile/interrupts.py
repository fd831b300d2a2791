"""SIGINT and SIGTERM end a command with one stderr line, exit 130 / 143, no partial output.

:func:`catching` turns both signals into :class:`Interrupted` (a ``BaseException``, so no
``except Exception`` of a library swallows it, and ``finally`` blocks and
:func:`rcompile.fileio.atomic_write` clean up on the way out); :func:`stop` prints the line,
removes the temporaries still being written and exits ``128 + signal``. :func:`main` is the
console entry point: it takes the signals before the (slow) imports of the command line, so an
interrupt during start-up is also one line.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process got SIGINT or SIGTERM; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


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
    """End the process for ``e``: further signals ignored, own temporaries removed, one line."""
    from rcompile.fileio import remove_own_temporaries

    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    remove_own_temporaries()
    name = signal.Signals(e.signum).name
    sys.stderr.write(f"rcompile: interrupted by {name}; stopped without a partial output\n")
    sys.stderr.flush()
    sys.exit(e.exit_code)


def main() -> None:
    """Console entry point: the signals are taken first, then the command line is imported."""
    try:
        with catching():
            from rcompile.cli import main as cli_main

            cli_main()
    except Interrupted as e:
        stop(e)
