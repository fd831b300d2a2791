"""Progress on stderr for the long commands: one status line on a terminal, ``--verbose`` lines.

Every long command (``build``, ``plan``, ``verify``, ``sweep``, ``provision``, ``faultmap
import``, ``faultmap synth``) takes ``-q/--quiet`` and ``-v/--verbose``
(:func:`progress_options`) and hands a :class:`Reporter` to the library as its
:data:`~rcompile.progress.ProgressFn`:

- on a terminal, and unless ``--quiet``, one status line on stderr, redrawn in place twice a
  second so the elapsed time moves during a long pass: the command's outer unit (sweep points,
  provisioned chips, with an ETA from this run's own pace) and the step running now
  (``chip 4/5 permute 12 s``); it is erased when the command ends, so nothing of it stays in a
  terminal's scrollback or a captured stderr;
- with ``--verbose``, also when stderr is not a terminal, one line per finished step: the
  stage, the step's name and its time.

stdout, and with it ``--json``, is never touched. Click's own progress bar is not used: it
redraws only when a step ends, so a pass of 40 s would show a frozen line; a thread that
redraws one line is less code than another dependency.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

import click

from rcompile.progress import Event

#: Stages that count the command's own units; shown first, with an ETA.
OUTER = ("sweep", "provision", "import")
#: Outer stages that resume: a first event with units already done says how many, as a note.
RESUMED = {"sweep": "points"}
REDRAW_S = 0.5
"""Seconds between two redraws of the status line."""
#: The commands that take ``--quiet``/``--verbose`` (``faultmap import`` by its last word;
#: ``synth`` only plans with ``--like``, but says so at once all the same).
LONG_COMMANDS = ("build", "plan", "verify", "sweep", "provision", "import", "synth")
_ANNOUNCED: dict[str, float] = {}
"""The line :func:`announce` drew (``width``) and when (``t0``): the first :class:`Reporter`
draws over it and counts its clock from then."""


def announce(argv: list[str], stream: TextIO) -> None:
    """On a terminal, name the long command that starts at once, before the command line's
    imports (onnx alone takes about a second), so a user sees it began. Nothing for other
    commands, ``--quiet``, ``--help`` or ``--version``."""
    words = argv[:2] if argv[:1] == ["faultmap"] else argv[:1]
    if (words and words[-1] in LONG_COMMANDS and _is_tty(stream)
            and not {"-q", "--quiet", "-h", "--help", "--version"} & set(argv)):
        text = f"rcompile {' '.join(words)} 00:00:00 | starting"
        stream.write("\r" + text)
        stream.flush()
        _ANNOUNCED.update(width=len(text), t0=time.monotonic())


def erase_announcement(stream: TextIO) -> None:
    """Erase what :func:`announce` drew if no :class:`Reporter` took the line over (a command
    that failed before its work began): its error line then starts at the margin."""
    width = int(_ANNOUNCED.pop("width", 0))
    _ANNOUNCED.pop("t0", None)
    if width:
        stream.write("\r" + " " * width + "\r")
        stream.flush()


def progress_options(f: Any) -> Any:
    """``-q/--quiet`` and ``-v/--verbose``, the same on every long command."""
    f = click.option("-v", "--verbose", is_flag=True,
                     help="Print each step (pass, point, chip) and its time on stderr as it "
                     "finishes, also when stderr is not a terminal.")(f)
    f = click.option("-q", "--quiet", is_flag=True,
                     help="No progress on stderr (warnings and errors still print).")(f)
    return f


def reporter(command: str, quiet: bool, verbose: bool) -> Reporter:
    """The :class:`Reporter` of a command's ``--quiet``/``--verbose``; both at once is a usage
    error."""
    if quiet and verbose:
        raise click.BadParameter("--quiet and --verbose contradict each other; give one",
                                 param_hint="'--quiet'")
    return Reporter(command, sys.stderr, live=not quiet and _is_tty(sys.stderr), verbose=verbose)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def clock(seconds: float) -> str:
    """``HH:MM:SS`` of a duration."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def duration(seconds: float) -> str:
    """A step's time as a person reads it: ``12.3 ms``, ``4.56 s``, ``00:02:10``."""
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s" if seconds < 60 else clock(seconds)


def eta_seconds(t0: float, done0: int, last: float, done: int, total: int,
                now: float) -> float | None:
    """Seconds left at this run's own pace: the units finished since ``t0`` (when ``done0``
    were done, e.g. resumed from a file, which never count) took ``last - t0``; the rest take
    as long each, less the time already spent since the last one finished. None before a unit
    finished in this run, or when none is left."""
    if done <= done0 or done >= total:
        return None
    return max(0.0, (last - t0) / (done - done0) * (total - done) - (now - last))


class Reporter:
    """A :data:`~rcompile.progress.ProgressFn` that draws progress on ``stream``.

    Use it as a context manager: entering shows the status line at once (on a terminal), leaving
    stops the redraw thread and erases the line, however the command ends."""

    def __init__(self, command: str, stream: TextIO, *, live: bool, verbose: bool) -> None:
        self.command = command
        self.stream = stream
        self.live = live
        self.verbose = verbose
        self._t0 = time.monotonic()
        self._stages: dict[str, tuple[Event, float]] = {}
        """Per stage, its latest event and when it came."""
        self._origin: dict[str, tuple[float, int]] = {}
        """Per outer stage, when and at which ``done`` its first event came (the ETA's base)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = 0

    def __enter__(self) -> Reporter:
        if self.live and _ANNOUNCED:  # take over the line announce() drew, and its clock
            self._drawn = int(_ANNOUNCED.pop("width"))
            self._t0 = _ANNOUNCED.pop("t0")
        if self.live:
            self._draw()
            self._thread = threading.Thread(target=self._redraw, name="rcompile-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._erase()

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        with self._lock:
            if event.stage in OUTER and event.stage not in self._origin:
                self._origin[event.stage] = (now, event.done)
                if event.stage in RESUMED and event.done and not event.finished:
                    self._note(f"resuming: {event.done} of {event.total} "
                               f"{RESUMED[event.stage]} already done")
            self._stages[event.stage] = (event, now)
            if self.verbose and event.finished:
                self._erase()
                self.stream.write(self._line(event, now) + "\n")
                self.stream.flush()
            if self.live:
                self._draw_locked(now)

    def note(self, text: str) -> None:
        """One line of information (e.g. what a resumed sweep found), unless ``--quiet``."""
        with self._lock:
            self._note(text)

    def _note(self, text: str) -> None:
        if self.live or self.verbose:
            self._erase()
            self.stream.write(f"rcompile: {self.command}: {text}\n")
            self.stream.flush()

    def eta(self, stage: str, now: float) -> float | None:
        """Seconds left in ``stage`` (:func:`eta_seconds`), None before a unit finished here."""
        if stage not in self._origin or stage not in self._stages:
            return None
        (t0, done0), (event, last) = self._origin[stage], self._stages[stage]
        return eta_seconds(t0, done0, last, event.done, event.total, now)

    # ------------------------------------------------------------------------ drawing

    def _line(self, event: Event, now: float) -> str:
        """The ``--verbose`` line of a finished step."""
        assert event.seconds is not None
        if event.stage not in OUTER:
            return f"rcompile: {event.stage:<6} {event.name:<14} {duration(event.seconds)}"
        text = (f"rcompile: {event.stage} {event.done}/{event.total} {event.name} "
                f"{duration(event.seconds)}")
        eta = self.eta(event.stage, now)
        return text if eta is None or event.done >= event.total else f"{text} (ETA {clock(eta)})"

    def status(self, now: float) -> str:
        """The status line: the outer units with their ETA, then the step running now."""
        parts = []
        for stage in OUTER:
            if stage in self._stages:
                event, _ = self._stages[stage]
                eta = self.eta(stage, now)
                parts.append(f"{stage} {event.done}/{event.total}"
                             + ("" if eta is None else f" ETA {clock(eta)}"))
        inner = [(e, t) for s, (e, t) in self._stages.items() if s not in OUTER]
        if inner:
            event, since = max(inner, key=lambda x: x[1])
            if not event.finished:
                parts.append(f"{event.stage} {event.done + 1}/{event.total} {event.name} "
                             f"{now - since:.0f} s")
            else:
                parts.append(f"{event.stage} {event.done}/{event.total} {event.name} done")
        head = f"rcompile {self.command} {clock(now - self._t0)}"
        return " | ".join([head, *(parts or ["starting"])])

    def _redraw(self) -> None:
        while not self._stop.wait(REDRAW_S):
            with self._lock:
                self._draw_locked(time.monotonic())

    def _draw(self) -> None:
        with self._lock:
            self._draw_locked(time.monotonic())

    def _draw_locked(self, now: float) -> None:
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        text = self.status(now)[:width]
        self.stream.write("\r" + text + " " * max(0, self._drawn - len(text)))
        self.stream.flush()
        self._drawn = len(text)

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0
