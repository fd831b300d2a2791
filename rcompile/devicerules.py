"""Range rules of the device model's fields and the one-line error a value outside them gets.

Every section of :mod:`rcompile.device` declares ``_RULES`` (field -> :class:`Rule`) and
``_SECTION`` (its TOML table name); :func:`validate` checks an instance against them."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from rcompile.errors import BadDevice


@dataclass(frozen=True)
class Rule:
    """Allowed values of one field: a number in ``lo..hi`` (open ends where ``*_open``)."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()

    def text(self) -> str:
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        noun = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            return f"{noun} in {_num(self.lo)}..{_num(self.hi)}"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_num(self.hi)}")
        return f"{noun} " + " and ".join(parts) if parts else noun

    def ok(self, v: Any) -> bool:
        if self.kind is str:
            return isinstance(v, str) and v in self.choices
        if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real):
            return False
        if self.kind is int and not isinstance(v, numbers.Integral):
            return False
        x = float(v)
        if not math.isfinite(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bad(section: str, name: str, value: Any, expected: str) -> BadDevice:
    shown = value.item() if isinstance(value, np.generic) else value
    return BadDevice(f"device: {section}.{name} = {shown!r} is out of range; expected {expected}")


def validate(obj: Any) -> None:
    rules: dict[str, Rule] = obj._RULES
    for f in fields(obj):
        rule = rules.get(f.name)
        if rule is not None and not rule.ok(getattr(obj, f.name)):
            raise bad(obj._SECTION, f.name, getattr(obj, f.name), rule.text())
