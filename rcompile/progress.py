"""Progress events: how long work tells its caller where it is, without printing.

Library code never prints (the CLI is a thin shell over it, docs/design.md §6). A caller that
wants to show progress passes a :data:`ProgressFn`; the pipeline, the API and the sweep call it
with small :class:`Event` values when a step starts and when it finishes. The CLI turns them
into a status line and ``--verbose`` lines (:mod:`rcompile.cliprogress`); a notebook can
collect them or ignore them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Stage of the chip-independent passes (quantize, tile, pack, ...).
PLAN = "plan"
#: Stage of the per-chip passes (place, permute, program, ...).
CHIP = "chip"


@dataclass(frozen=True)
class Event:
    """One step of a stage started (``seconds is None``) or finished."""

    stage: str
    """What runs: ``plan`` or ``chip`` (passes), ``calib``, ``verify``, or a command's own
    unit (``sweep`` points, ``provision`` chips)."""
    name: str
    """The step: a pass name, a sweep point, a chip's fault map."""
    done: int
    """Steps of the stage finished so far (this one included once it finished)."""
    total: int
    """Steps the stage has."""
    seconds: float | None = None
    """None while the step runs; its wall-clock time, seconds, once it finished."""

    @property
    def finished(self) -> bool:
        return self.seconds is not None


ProgressFn = Callable[[Event], None]
"""What long work calls with every :class:`Event`; it must not raise unless it means to stop
the work (an exception propagates like any other)."""


def notify(progress: ProgressFn | None, event: Event) -> None:
    """Call ``progress`` with ``event`` when there is a caller listening."""
    if progress is not None:
        progress(event)
