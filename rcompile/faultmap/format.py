"""The fault-map format: :class:`FaultMap`, its checks, its digest, :func:`load` and
:func:`save` (the contract in :mod:`rcompile.faultmap`)."""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rcompile.device import Cell, Geometry
from rcompile.errors import BadDevice, BadFaultMap
from rcompile.fileio import atomic_write
from rcompile.npzio import read_npz

STATE_HEALTHY, STATE_SA0, STATE_SA1 = 0, 1, 2
"""State codes of :attr:`FaultMap.faults`."""

STATE_NAMES: tuple[str, str, str] = ("healthy", "SA0", "SA1")
"""Display name of each state code, indexed by code."""

REQUIRED_KEYS: tuple[str, ...] = ("faults",)
OPTIONAL_KEYS: tuple[str, ...] = ("stuck_g", "chip_id", "g_min", "g_max", "levels")
ALLOWED_KEYS: tuple[str, ...] = REQUIRED_KEYS + OPTIONAL_KEYS
"""Every key a fault-map ``.npz`` may hold, in the order :func:`save` writes them."""

MAX_LEVELS = 256
"""Largest ``levels`` a fault map may declare (same bound as :class:`~rcompile.device.Cell`)."""

MAX_CELLS = 1 << 26
"""Most cells (tiles x rows x cols) one chip may have: 67,108,864, e.g. 4,096 tiles of 128 x 128.
Every reader and generator of fault maps refuses more before allocating them."""

_DIGEST_MAGIC = b"rcompile.faultmap.v1\n"
_CANONICAL_NAN = np.array([0x7FC00000], dtype="<u4").view("<f4")[0]
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_EXPECT_FAULTS = "expected uint8 [tiles, rows, cols] with 0=healthy, 1=SA0, 2=SA1"


@dataclass(frozen=True, eq=False)
class FaultMap:
    """One chip's measured stuck-at faults (docs/design.md §4); validated on construction.

    Construct it through :func:`load`, :func:`synth` or :func:`import_csv`; building one directly
    runs the same checks and raises :class:`~rcompile.errors.BadFaultMap` naming ``source``.
    Two maps are the same chip content iff their :meth:`digest` values are equal.
    """

    faults: np.ndarray
    """uint8 ``[tiles, rows, cols]``: 0 = healthy, 1 = SA0 (stuck at g_min), 2 = SA1 (at g_max)."""
    stuck_g: np.ndarray | None = None
    """float32 ``[tiles, rows, cols]``: measured conductance of stuck cells in uS, NaN elsewhere;
    ``None`` when the tester recorded only the states."""
    chip_id: str = ""
    """Identity of the chip (one non-empty line); :func:`load` fills in a digest prefix."""
    g_min_us: float | None = None
    """Chip's measured lowest conductance in microsiemens, if the tester recorded it."""
    g_max_us: float | None = None
    """Chip's measured highest conductance in microsiemens, if the tester recorded it."""
    levels: int | None = None
    """Programmable conductance levels per cell, if the tester recorded it."""
    source: str = "<memory>"
    """Where the map came from (a path, ``synth`` or ``<memory>``); used only in messages and
    not part of the content or the digest."""

    def __post_init__(self) -> None:
        src = self.source
        faults = _check_faults(src, self.faults)
        object.__setattr__(self, "faults", faults)
        _check_scalars(src, self)
        if self.stuck_g is not None:
            object.__setattr__(self, "stuck_g", _check_stuck_g(src, self.stuck_g, faults, self))

    # -- shape and counts -------------------------------------------------------------------

    @property
    def geometry(self) -> Geometry:
        """Chip geometry, the shape of :attr:`faults`."""
        t, r, c = self.faults.shape
        return Geometry(tiles=int(t), rows=int(r), cols=int(c))

    def counts(self) -> dict[str, Any]:
        """Whole-chip totals: ``{"healthy": n, "sa0": n, "sa1": n, "rate": faulty / cells}``."""
        per_state = np.bincount(self.faults.ravel(), minlength=3)
        total = int(self.faults.size)
        healthy, sa0, sa1 = (int(x) for x in per_state[:3])
        return {"healthy": healthy, "sa0": sa0, "sa1": sa1, "rate": (sa0 + sa1) / total}

    def per_tile_counts(self) -> np.ndarray:
        """int64 ``[tiles, 3]``: cells per state code (healthy, SA0, SA1) in each tile."""
        flat = self.faults.reshape(self.faults.shape[0], -1)
        return np.stack([(flat == k).sum(axis=1) for k in range(3)], axis=1).astype(np.int64)

    # -- levels and device ------------------------------------------------------------------

    def stuck_levels(self, device: Cell) -> np.ndarray:
        """float32 ``[tiles, rows, cols]``: the level each stuck cell sits at, NaN if healthy.

        SA0 cells read ``0.0`` and SA1 cells ``device.levels - 1``. Where :attr:`stuck_g` was
        measured, the cell reads the fractional level ``(g - g_min) / (g_max - g_min) * (levels -
        1)`` of that conductance under ``device``, clipped to ``[0, levels - 1]``. Pass the device
        the chip is programmed with (see :meth:`device`), so levels and conductances agree.
        """
        top = float(device.levels - 1)
        out = np.full(self.faults.shape, np.nan, dtype=np.float32)
        out[self.faults == STATE_SA0] = 0.0
        out[self.faults == STATE_SA1] = top
        if self.stuck_g is not None:
            stuck = self.faults != STATE_HEALTHY
            g = self.stuck_g[stuck].astype(np.float64)
            frac = (g - device.g_min_us) / (device.g_max_us - device.g_min_us) * top
            out[stuck] = np.clip(frac, 0.0, top).astype(np.float32)
        return out

    def device_overrides(self) -> dict[str, Any]:
        """The device scalars this map records, as :class:`~rcompile.device.Cell` keywords.

        Only the keys present are returned (any of ``g_min_us``, ``g_max_us``, ``levels``), so
        ``Cell(**{**defaults, **fm.device_overrides()})`` builds the chip's device.
        """
        out: dict[str, Any] = {}
        if self.g_min_us is not None:
            out["g_min_us"] = self.g_min_us
        if self.g_max_us is not None:
            out["g_max_us"] = self.g_max_us
        if self.levels is not None:
            out["levels"] = self.levels
        return out

    def device(self, base: Cell | None = None) -> Cell:
        """``base`` (default :class:`~rcompile.device.Cell()`) with this map's overrides.

        A combination the cell cannot have (the map's ``g_max`` at or below the device's
        ``g_min``, say) raises :class:`~rcompile.errors.BadFaultMap` naming the map.
        """
        over = self.device_overrides()
        try:
            return replace(base if base is not None else Cell(), **over)
        except BadDevice as e:
            given = ", ".join(f"{k}={v:g}" for k, v in over.items())
            raise BadFaultMap(
                f"{self.source}: {given}: does not fit the device "
                f"({str(e).removeprefix('device: ')})"
            ) from None

    # -- identity ---------------------------------------------------------------------------

    def digest(self) -> str:
        """SHA-256 hex of the map's content, independent of how (or whether) it was saved.

        The hashed byte stream, in order (all integers little-endian):

        1. the magic ``b"rcompile.faultmap.v1\\n"``;
        2. the shape ``T, R, C`` as three uint64;
        3. ``faults`` as ``T*R*C`` uint8 bytes in C order;
        4. ``b"\\x00"`` if ``stuck_g`` is absent, else ``b"\\x01"`` and its float32 bytes in C
           order with every NaN replaced by the quiet NaN ``0x7FC00000`` and ``-0.0`` by ``0.0``;
        5. ``chip_id`` as a uint64 byte length and its UTF-8 bytes;
        6. ``g_min``, ``g_max``: each ``b"\\x00"`` if absent, else ``b"\\x01"`` and a float64;
        7. ``levels``: ``b"\\x00"`` if absent, else ``b"\\x01"`` and an int64.

        ``source`` is not part of the content. The value is cached (the map is immutable).
        """
        cached: str | None = self.__dict__.get("_digest")
        if cached is None:
            cached = _digest_of(self, self.chip_id)
            object.__setattr__(self, "_digest", cached)
        return cached

    def __repr__(self) -> str:
        g = self.geometry
        return (
            f"FaultMap(chip_id={self.chip_id!r}, tiles={g.tiles}, rows={g.rows}, cols={g.cols}, "
            f"rate={self.counts()['rate']:.4g}, stuck_g={self.stuck_g is not None}, "
            f"source={self.source!r})"
        )


# -- validation ---------------------------------------------------------------------------------


def _check_faults(src: str, value: object) -> np.ndarray:
    """The ``faults`` array as a read-only C-contiguous copy, or :class:`BadFaultMap`."""
    if not isinstance(value, np.ndarray):
        raise BadFaultMap(f"{src}: faults: got {type(value).__name__}; {_EXPECT_FAULTS}")
    if value.dtype != np.uint8:
        raise BadFaultMap(f"{src}: faults: dtype {value.dtype}; {_EXPECT_FAULTS}")
    if value.ndim != 3:
        raise BadFaultMap(
            f"{src}: faults: shape {value.shape} has {value.ndim} dimensions; "
            "expected 3 dimensions [tiles, rows, cols]"
        )
    if 0 in value.shape:
        raise BadFaultMap(
            f"{src}: faults: shape {value.shape} has an empty dimension; "
            "expected tiles, rows and cols >= 1"
        )
    if value.shape[2] % 2:
        raise BadFaultMap(
            f"{src}: faults: {value.shape[2]} columns per tile; expected an even column count "
            "(every output uses a differential pair of columns)"
        )
    bad = value > STATE_SA1
    if bad.any():
        n_bad = int(bad.sum())
        values = ", ".join(str(int(v)) for v in np.unique(value[bad])[:5])
        t, r, c = (int(i) for i in np.argwhere(bad)[0])
        raise BadFaultMap(
            f"{src}: faults: {n_bad} cell(s) hold codes outside {{0,1,2}} (value(s) {values}; "
            f"first at tile {t}, row {r}, col {c}); expected 0=healthy, 1=SA0, 2=SA1"
        )
    out = np.array(value, dtype=np.uint8, order="C", copy=True)
    out.flags.writeable = False
    return out


def _check_stuck_g(src: str, value: object, faults: np.ndarray, fm: FaultMap) -> np.ndarray:
    """The ``stuck_g`` array as a read-only copy, or :class:`BadFaultMap`."""
    expect = f"expected float32 {list(faults.shape)}, uS on stuck cells and NaN on healthy ones"
    if not isinstance(value, np.ndarray):
        raise BadFaultMap(f"{src}: stuck_g: got {type(value).__name__}; {expect}")
    if value.dtype != np.float32:
        raise BadFaultMap(f"{src}: stuck_g: dtype {value.dtype}; {expect}")
    if value.shape != faults.shape:
        raise BadFaultMap(
            f"{src}: stuck_g: shape {value.shape} differs from faults {faults.shape}; {expect}"
        )
    healthy = faults == STATE_HEALTHY
    measured = ~np.isnan(value)

    def first(mask: np.ndarray) -> str:
        t, r, c = (int(i) for i in np.argwhere(mask)[0])
        return f"first at tile {t}, row {r}, col {c}"

    wrong = healthy & measured
    if wrong.any():
        raise BadFaultMap(
            f"{src}: stuck_g: {int(wrong.sum())} healthy cell(s) carry a value ({first(wrong)}); "
            "expected NaN on every healthy cell"
        )
    stuck = ~healthy
    with np.errstate(invalid="ignore"):
        wrong = stuck & ~np.isfinite(value)
        if wrong.any():
            raise BadFaultMap(
                f"{src}: stuck_g: {int(wrong.sum())} stuck cell(s) have no finite value "
                f"({first(wrong)}); expected the measured conductance in uS on every stuck cell"
            )
        lo = fm.g_min_us if fm.g_min_us is not None else 0.0
        hi = fm.g_max_us if fm.g_max_us is not None else math.inf
        wrong = stuck & ((value < lo) | (value > hi))
        if wrong.any():
            vals = value[wrong]
            raise BadFaultMap(
                f"{src}: stuck_g: {int(wrong.sum())} stuck cell(s) lie outside [{lo:g}, {hi:g}] uS "
                f"(range {float(vals.min()):g}..{float(vals.max()):g}, {first(wrong)}); "
                "expected g_min <= stuck_g <= g_max (g_min defaults to 0)"
            )
    out = np.array(value, dtype=np.float32, order="C", copy=True)
    out.flags.writeable = False
    return out


def _is_real(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(
        x, bool | np.bool_
    )


def _check_scalars(src: str, fm: FaultMap) -> None:
    """Check and normalise ``chip_id``, ``g_min_us``, ``g_max_us``, ``levels`` in place."""
    if not isinstance(fm.chip_id, str) or not fm.chip_id or "\n" in fm.chip_id:
        raise BadFaultMap(f"{src}: chip_id: {fm.chip_id!r}; expected a non-empty one-line string")
    for key, val in (("g_min", fm.g_min_us), ("g_max", fm.g_max_us)):
        if val is None:
            continue
        if not _is_real(val) or not math.isfinite(float(val)) or float(val) < 0.0:
            raise BadFaultMap(f"{src}: {key}: {val!r}; expected a finite real number >= 0 (uS)")
        object.__setattr__(fm, f"{key}_us", float(val))
    if fm.g_min_us is not None and fm.g_max_us is not None and fm.g_min_us >= fm.g_max_us:
        raise BadFaultMap(
            f"{src}: g_min/g_max: g_min={fm.g_min_us:g} >= g_max={fm.g_max_us:g} uS; "
            "expected g_min < g_max"
        )
    if fm.levels is not None:
        if not isinstance(fm.levels, int | np.integer) or isinstance(fm.levels, bool | np.bool_):
            raise BadFaultMap(f"{src}: levels: {fm.levels!r}; expected an integer 2..{MAX_LEVELS}")
        if not 2 <= int(fm.levels) <= MAX_LEVELS:
            raise BadFaultMap(f"{src}: levels: {fm.levels}; expected an integer 2..{MAX_LEVELS}")
        object.__setattr__(fm, "levels", int(fm.levels))


# -- digest -------------------------------------------------------------------------------------


def _digest_of(fm: FaultMap, chip_id: str) -> str:
    """SHA-256 of the canonical encoding documented in :meth:`FaultMap.digest`."""
    h = hashlib.sha256(_DIGEST_MAGIC)
    h.update(struct.pack("<3Q", *fm.faults.shape))
    h.update(fm.faults.tobytes(order="C"))
    if fm.stuck_g is None:
        h.update(b"\x00")
    else:
        g = np.where(np.isnan(fm.stuck_g), _CANONICAL_NAN, fm.stuck_g + np.float32(0.0))
        h.update(b"\x01" + g.astype("<f4").tobytes(order="C"))
    raw_id = chip_id.encode("utf-8")
    h.update(struct.pack("<Q", len(raw_id)) + raw_id)
    for val in (fm.g_min_us, fm.g_max_us):
        h.update(b"\x00" if val is None else b"\x01" + struct.pack("<d", val))
    h.update(b"\x00" if fm.levels is None else b"\x01" + struct.pack("<q", fm.levels))
    return h.hexdigest()


# -- load / save --------------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> FaultMap:
    """Read and validate a fault-map ``.npz`` (see the module docstring for the contract).

    Raises :class:`~rcompile.errors.BadFaultMap` with a one-line ``"<path>: <key>: ..."`` message
    on any breach of the contract.
    """
    src = str(path)
    p = Path(path)
    if not p.exists():
        raise BadFaultMap(f"{src}: no such file; expected a fault-map .npz with key 'faults'")
    if p.is_dir():
        raise BadFaultMap(f"{src}: is a directory; expected a fault-map .npz file")
    try:
        is_zip = zipfile.is_zipfile(p)
    except OSError as e:
        raise BadFaultMap(
            f"{src}: cannot read ({e.strerror or e}); expected a readable .npz"
        ) from e
    if not is_zip:
        raise BadFaultMap(
            f"{src}: not an .npz (zip) archive; expected a fault-map .npz with key 'faults'"
        )
    arrays = read_npz(
        p,
        name=src,
        error=BadFaultMap,
        max_array_bytes=1 << 20,
        max_total_bytes=6 * MAX_CELLS,
        key_bytes={"faults": MAX_CELLS, "stuck_g": 4 * MAX_CELLS},
        allowed=lambda key: key in ALLOWED_KEYS,
        what="a fault-map .npz",
        expected=f"only the keys {', '.join(ALLOWED_KEYS)}",
    )
    if "faults" not in arrays:
        raise BadFaultMap(
            f"{src}: faults: key missing (found {', '.join(arrays) or 'no keys'}); "
            f"{_EXPECT_FAULTS}"
        )
    chip_id = _scalar_str(src, "chip_id", arrays.get("chip_id"))
    g_min = _scalar_real(src, "g_min", arrays.get("g_min"))
    g_max = _scalar_real(src, "g_max", arrays.get("g_max"))
    levels = _scalar_int(src, "levels", arrays.get("levels"))
    fm = FaultMap(
        arrays["faults"],
        arrays.get("stuck_g"),
        "-" if chip_id is None else chip_id,
        g_min,
        g_max,
        levels,
        src,
    )
    if chip_id is None:
        # Default identity: a digest prefix of the map without a chip id. Set on the fresh,
        # not yet shared object (its digest cache is still empty).
        object.__setattr__(fm, "chip_id", _digest_of(fm, "")[:12])
    return fm


def _scalar(src: str, key: str, value: np.ndarray, expect: str) -> Any:
    if value.ndim != 0:
        raise BadFaultMap(f"{src}: {key}: array of shape {value.shape}; expected {expect}")
    return value[()]


def _scalar_str(src: str, key: str, value: np.ndarray | None) -> str | None:
    if value is None:
        return None
    expect = "a string scalar"
    v = _scalar(src, key, value, expect)
    if value.dtype.kind == "S":
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadFaultMap(f"{src}: {key}: bytes are not UTF-8; expected {expect}") from e
    if value.dtype.kind != "U":
        raise BadFaultMap(f"{src}: {key}: dtype {value.dtype}; expected {expect}")
    return str(v)


def _scalar_real(src: str, key: str, value: np.ndarray | None) -> float | None:
    if value is None:
        return None
    expect = "a real scalar in uS"
    v = _scalar(src, key, value, expect)
    if value.dtype.kind not in "fiu":
        raise BadFaultMap(f"{src}: {key}: dtype {value.dtype}; expected {expect}")
    return float(v)


def _scalar_int(src: str, key: str, value: np.ndarray | None) -> int | None:
    if value is None:
        return None
    expect = f"an integer scalar 2..{MAX_LEVELS}"
    v = _scalar(src, key, value, expect)
    if value.dtype.kind not in "iu":
        raise BadFaultMap(f"{src}: {key}: dtype {value.dtype}; expected {expect}")
    return int(v)


def to_npz_bytes(fm: FaultMap) -> bytes:
    """The exact bytes :func:`save` writes: a deterministic ``.npz`` of the map's content.

    Keys are written in :data:`ALLOWED_KEYS` order, only those present (``chip_id`` always);
    every zip member carries the timestamp 1980-01-01 00:00:00, mode 0644 and Unix as creator,
    so the same content always gives the same bytes (for one zlib version).
    """
    entries: list[tuple[str, np.ndarray]] = [("faults", fm.faults)]
    if fm.stuck_g is not None:
        entries.append(("stuck_g", fm.stuck_g))
    entries.append(("chip_id", np.array(fm.chip_id, dtype=np.str_)))
    if fm.g_min_us is not None:
        entries.append(("g_min", np.array(fm.g_min_us, dtype=np.float64)))
    if fm.g_max_us is not None:
        entries.append(("g_max", np.array(fm.g_max_us, dtype=np.float64)))
    if fm.levels is not None:
        entries.append(("levels", np.array(fm.levels, dtype=np.int64)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in entries:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    return buf.getvalue()


def save(fm: FaultMap, path: str | os.PathLike[str]) -> None:
    """Write ``fm`` to ``path`` as a fault-map ``.npz``, atomically and byte-reproducibly.

    The file appears complete or not at all (a temporary file in the same directory is renamed
    over ``path``). :func:`load` of the result gives a map with the same :meth:`~FaultMap.digest`.
    """
    atomic_write(path, to_npz_bytes(fm), what="fault map")


def check_geometry(src: str, tiles: int, rows: int, cols: int) -> None:
    """A chip geometry a map may have: positive, even columns, at most :data:`MAX_CELLS`."""
    for name, n in (("tiles", tiles), ("rows", rows), ("cols", cols)):
        if not isinstance(n, int | np.integer) or n < 1:
            raise BadFaultMap(f"{src}: {name}={n!r}; expected an integer >= 1")
    if cols % 2:
        raise BadFaultMap(f"{src}: cols={cols}; expected an even column count (differential pairs)")
    if int(tiles) * int(rows) * int(cols) > MAX_CELLS:
        raise BadFaultMap(
            f"{src}: {tiles} x {rows} x {cols} = {int(tiles) * int(rows) * int(cols)} cells; "
            f"expected at most {MAX_CELLS} cells per chip (docs/limits.md)"
        )
