"""Bounded JSON: the metadata of images and plans is parsed only within documented limits.

``json.loads`` recurses once per nesting level (100,000 nested ``[`` is a ``RecursionError``),
turns ``1e999`` into ``inf`` and accepts ``NaN``/``Infinity``. :func:`loads` refuses, with a
``ValueError`` whose text says what is wrong, any document that

* is larger than ``max_bytes`` or not UTF-8;
* nests arrays and objects deeper than :data:`MAX_DEPTH` (counted before parsing, by a
  linear scan that skips string contents);
* holds a non-finite number (``NaN``, ``Infinity``, or a literal that overflows to ``inf``);
* repeats a key inside one object.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects in any rcompile JSON document."""

# A string runs to its closing quote or, unterminated, to the end (so the scan stays linear).
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


def depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in ``raw``, ignoring brackets inside strings."""
    level = deepest = 0
    for m in _TOKENS.finditer(raw):
        tok = m.group()
        if tok in (b"[", b"{"):
            level += 1
            deepest = max(deepest, level)
        elif tok in (b"]", b"}"):
            level -= 1
    return deepest


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:20]} is not finite")
    return x


def _constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k[:40]!r} appears twice in one object")
        out[k] = v
    return out


def loads(raw: bytes | memoryview, *, max_bytes: int) -> Any:
    """Parse ``raw`` (UTF-8 JSON) within the limits above; ``ValueError`` otherwise."""
    data = bytes(raw)
    if len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes of JSON, more than the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"JSON is not UTF-8 ({e.reason} at byte {e.start})") from None
    d = depth(data)
    if d > MAX_DEPTH:
        raise ValueError(f"JSON nests {d} levels deep, more than the limit of {MAX_DEPTH}")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_constant,
                          object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ValueError(f"JSON not parseable ({e.msg} at char {e.pos})") from None
    except RecursionError:  # unreachable after the depth check; kept as a last guard
        raise ValueError("JSON nests too deep") from None
