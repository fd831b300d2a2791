"""The closing table of ``make bench``: one row per target, its value and PASS / MISS.

A row is judged (``PASS`` / ``MISS`` against its target), reported (a figure with no target of
its own), or ``n/a: why`` (the feature it needs does not exist yet, or the run could not
measure it). ``--json`` writes the same rows, so the README can quote them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Row:
    """One line of the closing table (and of ``--json``)."""

    name: str
    value: float | None
    unit: str
    target: str
    """``<= 3``, ``>= 3600`` or empty (reported, not judged)."""
    status: str
    """``PASS``, ``MISS``, ``report`` (no target) or ``n/a: why``."""
    how: str
    """What was timed, on what, how many runs."""
    command: str = ""
    """The command line of the run that measured it."""


def judged(name: str, value: float, unit: str, op: str, limit: float, how: str) -> Row:
    """PASS when ``value op limit`` holds (``op`` is ``<=`` or ``>=``), else MISS."""
    ok = value <= limit if op == "<=" else value >= limit
    return Row(name, value, unit, f"{op} {limit:g}", "PASS" if ok else "MISS", how)


def reported(name: str, value: float, unit: str, how: str) -> Row:
    return Row(name, value, unit, "", "report", how)


def missing(name: str, unit: str, op: str, limit: float, why: str) -> Row:
    return Row(name, None, unit, f"{op} {limit:g}", f"n/a: {why}", "")


def averages(a: tuple[float, ...]) -> str:
    return " ".join(f"{x:.2f}" for x in a)


def print_table(rows: list[Row], before: tuple[float, ...], after: tuple[float, ...],
                wall: float, cpu: float, quick: bool) -> None:
    """The table, headed by the load average before and after and the run's own cost; the
    reason of every ``n/a`` once below it."""
    print(f"\ntargets{' (QUICK: smoke sizes, one run: not the targets)' if quick else ''}; "
          f"load average before {averages(before)}, after {averages(after)}, "
          f"{os.cpu_count()} cores; this run {wall:.0f} s wall, {cpu:.0f} s CPU (its own "
          "processes)")
    print(f"  {'status':<7} {'figure':<52} {'value':>16} {'target':>12}")
    for r in rows:
        value = "-" if r.value is None else f"{r.value:.3g} {r.unit}"
        status = r.status.split(":")[0]
        target = f"{r.target} {r.unit}" if r.target else ""
        print(f"  {status:<7} {r.name:<52} {value:>16} {target:>12}".rstrip())
    for why in dict.fromkeys(r.status for r in rows if r.status.startswith("n/a")):
        names = [r.name for r in rows if r.status == why]
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        print(f"  {why}: {names[0]}{more}")
