"""Semantic checks of an :class:`Image`, shared by encode and decode."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from rcompile.errors import BadImage
from rcompile.image.records import (
    LEVELS_DTYPE,
    MAX_DIGIT,
    SLICE_ARRAYS,
    VERSION,
    Image,
    is_int,
    version_q_dtype,
)
from rcompile.ir import LAYOUT_CONV, LAYOUT_KN


def _geometry(header: dict[str, Any], fail: Callable[[str], BadImage]) -> tuple[int, int, int]:
    g = header.get("geometry")
    vals: list[Any] = [g.get(k) for k in ("tiles", "rows", "cols")] if isinstance(g, dict) else []
    if len(vals) != 3 or not all(is_int(v) and v > 0 for v in vals):
        raise fail(
            f"header geometry is {json.dumps(g)}; expected positive integers "
            '{"tiles": T, "rows": R, "cols": C}'
        )
    return int(vals[0]), int(vals[1]), int(vals[2])


def _device_levels(header: dict[str, Any], fail: Callable[[str], BadImage]) -> int | None:
    dev = header.get("device")
    if not isinstance(dev, dict) or "levels" not in dev:
        return None
    levels = dev["levels"]
    if not (is_int(levels) and 2 <= levels <= 256):
        raise fail(f"header device.levels is {levels!r}; expected an integer in 2..256")
    return int(levels)


def _expect(
    a: np.ndarray,
    dtype: np.dtype[Any],
    shape: tuple[int, ...] | None,
    what: str,
    fail: Callable[[str], BadImage],
) -> None:
    if a.dtype != dtype or (shape is not None and a.shape != shape):
        want = f"{dtype}" + (f" {list(shape)}" if shape is not None else "")
        raise fail(f"{what} is {a.dtype} {list(a.shape)}; expected {want}")


def _in_range(a: np.ndarray, hi: int, what: str, fail: Callable[[str], BadImage]) -> None:
    if a.size and (int(a.min()) < 0 or int(a.max()) >= hi):
        bad = int(np.flatnonzero((a < 0) | (a >= hi))[0])
        raise fail(f"{what}[{bad}] = {int(a[bad])} is out of range 0..{hi - 1}")


def _finite(a: np.ndarray, what: str, fail: Callable[[str], BadImage]) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise fail(f"{what}{list(at)} is {a[at]}; expected finite numbers")


def check_image(image: Image, source: str, version: int = VERSION) -> None:
    """Every invariant a reader relies on in an image of format ``version``; raises
    :class:`BadImage` naming ``source``."""

    def fail(msg: str) -> BadImage:
        return BadImage(f"{source}: {msg}")

    n_tiles, n_rows, n_cols = _geometry(image.header, fail)
    levels = _device_levels(image.header, fail)
    for i, rec in enumerate(image.layers):
        op, where = rec.op, f"layer {i} ({rec.op.node})"
        ndim_ok = len(op.shape) >= 3 if op.layout == LAYOUT_CONV else len(op.shape) == 2
        if op.layout not in (LAYOUT_CONV, LAYOUT_KN) or not ndim_ok or min(op.shape) < 1:
            raise fail(f"{where}: weight shape {list(op.shape)} does not fit layout {op.layout!r}")
        if op.groups < 1 or op.n_out % op.groups:
            raise fail(f"{where}: {op.n_out} outputs do not split into {op.groups} groups")
        _expect(rec.q, version_q_dtype(version), (op.groups, op.rows, op.outs), f"{where} q", fail)
        _expect(rec.scale, np.dtype(np.float32), (op.groups, op.outs), f"{where} scale", fail)
        _expect(rec.bias, np.dtype(np.float32), (op.n_out,), f"{where} bias", fail)
        _finite(rec.scale, f"{where} scale", fail)
        _finite(rec.bias, f"{where} bias", fail)
    prev = -1
    for t in image.tiles:
        where = f"tile {t.tile}"
        if not prev < t.tile < n_tiles:
            raise fail(
                f"{where} is out of order or out of range: tiles must increase from "
                f"{prev + 1} and stay below {n_tiles}"
            )
        prev = t.tile
        _expect(t.levels, LEVELS_DTYPE, (n_rows, n_cols), f"{where} levels", fail)
        if levels is not None and t.levels.size and int(t.levels.max()) >= levels:
            r, c = np.unravel_index(int(np.argmax(t.levels)), t.levels.shape)
            raise fail(
                f"{where} levels[{r}, {c}] = {int(t.levels[r, c])} exceeds the top level "
                f"{levels - 1} of the device"
            )
        for k, s in enumerate(t.slices):
            sw = f"{where} slice {k}"
            if not 0 <= s.layer < len(image.layers):
                raise fail(f"{sw}: layer {s.layer} out of range 0..{len(image.layers) - 1}")
            op = image.layers[s.layer].op
            top_digit = 0 if version == VERSION else MAX_DIGIT
            if not (is_int(s.digit) and 0 <= s.digit <= top_digit):
                raise fail(f"{sw}: digit {s.digit!r} out of range 0..{top_digit} "
                           f"(version {version})")
            if not 0 <= s.group < op.groups:
                raise fail(f"{sw}: group {s.group} out of range 0..{op.groups - 1}")
            for name, dt in SLICE_ARRAYS:
                a = getattr(s, name)
                if a.dtype != dt or a.ndim != 1:
                    raise fail(f"{sw} {name} is {a.dtype} {list(a.shape)}; expected 1-D {dt}")
            n, m = len(s.rows), len(s.outs)
            for name, like, length in (
                ("phys_rows", "rows", n),
                ("pos", "outs", m),
                ("neg", "outs", m),
                ("scale", "outs", m),
                ("offset", "outs", m),
            ):
                if len(getattr(s, name)) != length:
                    raise fail(
                        f"{sw} {name} has {len(getattr(s, name))} entries; {like} has {length}"
                    )
            _finite(s.scale, f"{sw} scale", fail)
            _finite(s.offset, f"{sw} offset", fail)
            _in_range(s.rows, op.rows, f"{sw} rows", fail)
            _in_range(s.outs, op.outs, f"{sw} outs", fail)
            _in_range(s.phys_rows, n_rows, f"{sw} phys_rows", fail)
            _in_range(s.pos, n_cols, f"{sw} pos", fail)
            _in_range(s.neg, n_cols, f"{sw} neg", fail)
