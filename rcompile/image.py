"""Programming image v1 (``.rimg``): in-memory records and the binary container.

The image is what a factory programmer needs to write one chip and what the verifying runtime
needs to emulate it: a header (chip, model, compiler, options, device), the digital graph with
its crossbar weights stripped, the per-layer intent, and per used physical tile the target level
of every cell plus the slices that say which logical rows and outputs sit where.
The byte layout is specified in ``docs/image-format.md``; in short::

    MAGIC (8 bytes) | u32 version | section* ;  section = tag(4) | u64 n | payload(n) | sha256(32)
    sections, in order: HEAD, GRPH, LAYR x layers, TILE x used tiles (increasing index), END.

HEAD, LAYR and TILE payloads are *records*: ``u32 J | JSON(J) | pad to 8 | arrays`` where the
JSON ``{"meta": {...}, "arrays": [[name, dtype, shape, offset, nbytes], ...]}`` places every
little-endian C-order array in the data area. All integers are little-endian, all JSON is
canonical (sorted keys, no spaces, ASCII), so one :class:`Image` always encodes to the same bytes.

:func:`encode` / :func:`decode` convert between an :class:`Image` and bytes, :func:`write` /
:func:`read` do the same atomically on files, :func:`describe` / :func:`summary_dict` render an
image for ``rcompile inspect``. :func:`decode` trusts nothing: every structural and semantic
defect becomes one :class:`~rcompile.errors.BadImage` line naming the file and the defect.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from rcompile import jsonbound
from rcompile.errors import BadImage
from rcompile.fileio import atomic_write
from rcompile.ir import LAYOUT_CONV, LAYOUT_KN, WeightOp

MAGIC = b"RCIMG\x00\r\n"
VERSION = 1

MAX_IMAGE_BYTES = 1 << 31
"""Largest image file :func:`read` accepts (2 GiB, the protobuf limit of the graph it carries)."""
MAX_JSON_BYTES = 16 << 20
"""Largest JSON document (record header or END.) inside an image; nesting depth and number
rules are :mod:`rcompile.jsonbound`'s."""


@dataclass(frozen=True)
class SliceRecord:
    """A block of one layer placed on a tile: logical rows/outputs -> physical rows/columns.

    The slice contributes ``scale[j] * (level[phys_rows[i], pos[j]] - level[phys_rows[i], neg[j]])``
    to weight matrix entry ``[group, rows[i], outs[j]]`` of layer ``layer``; contributions of all
    slices of a layer add up.
    """

    layer: int
    group: int
    rows: np.ndarray  # int32 [n]  logical matrix rows
    outs: np.ndarray  # int32 [m]  outputs within the group
    phys_rows: np.ndarray  # int32 [n]
    pos: np.ndarray  # int32 [m]  physical column of G+
    neg: np.ndarray  # int32 [m]  physical column of G-
    scale: np.ndarray  # float32 [m]  weight units per level step
    offset: np.ndarray  # float32 [m]  digital correction added to each output (calibration)


@dataclass(frozen=True)
class TileRecord:
    """One used physical tile."""

    tile: int
    levels: np.ndarray  # uint8 [R, C] target level of every cell (unused cells: 0)
    slices: tuple[SliceRecord, ...]


@dataclass(frozen=True)
class LayerRecord:
    """One crossbar layer: where its weight lives in the graph and what it is meant to be."""

    op: WeightOp
    bias: np.ndarray  # float32 [n_out] digital bias (after calibration)
    q: np.ndarray  # int8 [groups, rows, outs] intended levels difference (fault-free chip)
    scale: np.ndarray  # float32 [groups, outs] intended scale


@dataclass(frozen=True)
class Image:
    header: dict[str, Any]
    """chip_id, faultmap_sha256, model_sha256, compiler_version, strategy, options, device
    (Device fields), geometry {tiles, rows, cols}."""
    layers: tuple[LayerRecord, ...]
    tiles: tuple[TileRecord, ...]
    graph: bytes
    """Serialized ONNX ModelProto of the digital graph, crossbar weight and bias initializers
    removed (the runtime re-inserts them under ``op.weight`` / ``op.bias``)."""


# --------------------------------------------------------------------------------------------
# Container constants
# --------------------------------------------------------------------------------------------

TAG_HEAD = b"HEAD"
"""Header record: ``meta = {"header": {...}, "layers": n_layers, "tiles": n_tiles}``."""
TAG_GRPH = b"GRPH"
"""Raw serialized ONNX ModelProto of the digital graph."""
TAG_LAYR = b"LAYR"
"""One per crossbar layer, in layer order: ``meta = {"index", "op"}``, arrays bias, q, scale."""
TAG_TILE = b"TILE"
"""One per used physical tile, increasing tile index: ``meta = {"tile", "slices"}``, arrays
``levels`` and ``s<k>.rows|outs|phys_rows|pos|neg|scale|offset`` per slice ``k``."""
TAG_END = b"END."
"""Canonical JSON (not a record) of the section counts, e.g. ``{"GRPH":1,"HEAD":1,...}``."""

TAGS = (TAG_HEAD, TAG_GRPH, TAG_LAYR, TAG_TILE, TAG_END)

PREAMBLE = struct.Struct("<8sI")  # magic, version
SECTION_HEAD = struct.Struct("<4sQ")  # tag, payload length
DIGEST_BYTES = 32  # SHA-256 of the payload
ALIGN = 8  # record header and every array start on a multiple of 8 inside the payload

#: Which section may follow which (``None`` = start of file).
_NEXT: dict[bytes | None, tuple[bytes, ...]] = {
    None: (TAG_HEAD,),
    TAG_HEAD: (TAG_GRPH,),
    TAG_GRPH: (TAG_LAYR, TAG_TILE, TAG_END),
    TAG_LAYR: (TAG_LAYR, TAG_TILE, TAG_END),
    TAG_TILE: (TAG_TILE, TAG_END),
}

#: dtype strings an array may carry (little-endian or byte-order-free, numeric).
_DTYPES = frozenset(
    ["|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"]
)

#: Per-slice arrays in a TILE record and their dtype; ``rows``/``phys_rows`` have length n,
#: the others length m.
_SLICE_ARRAYS = (
    ("rows", np.dtype(np.int32)),
    ("outs", np.dtype(np.int32)),
    ("phys_rows", np.dtype(np.int32)),
    ("pos", np.dtype(np.int32)),
    ("neg", np.dtype(np.int32)),
    ("scale", np.dtype(np.float32)),
    ("offset", np.dtype(np.float32)),
)
_LAYER_ARRAYS = (
    ("bias", np.dtype(np.float32)),
    ("q", np.dtype(np.int8)),
    ("scale", np.dtype(np.float32)),
)
_LEVELS_DTYPE = np.dtype(np.uint8)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _jsonable(x: Any, where: str) -> Any:
    """A JSON-native copy of ``x`` (numpy scalars become Python numbers, tuples lists)."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(x, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if x is None or isinstance(x, str | bool):
        return x
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        if not math.isfinite(float(x)):
            raise ValueError(f"{where}: {x} is not finite")
        return float(x)
    raise ValueError(f"{where}: {type(x).__name__} is not a JSON value")


def _coerce(a: Any, dtype: np.dtype[Any], what: str) -> np.ndarray:
    """``a`` as ``dtype``; refuses any conversion that would change a value."""
    arr = np.asarray(a)
    if arr.dtype == dtype:
        return arr
    try:
        out = arr.astype(dtype)
        back = out.astype(arr.dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: cannot store {arr.dtype} as {dtype}: {e}") from None
    same = np.array_equal(back, arr, equal_nan=arr.dtype.kind in "fc")
    if not same:
        raise ValueError(f"{what}: {arr.dtype} values do not fit {dtype} exactly")
    return out


def _encode_record(meta: dict[str, Any], arrays: list[tuple[str, np.ndarray]]) -> bytes:
    """Record payload: ``u32 J | JSON(J) | pad | arrays`` (see module docstring)."""
    table: list[list[Any]] = []
    blobs: list[bytes] = []
    offset = 0
    for name, a in arrays:
        le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        blob = le.tobytes(order="C")
        table.append([name, le.dtype.str, [int(s) for s in le.shape], offset, len(blob)])
        blobs.append(blob + bytes(_align(len(blob)) - len(blob)))
        offset += _align(len(blob))
    head = _canonical_json({"meta": meta, "arrays": table})
    if len(head) > MAX_JSON_BYTES or jsonbound.depth(head) > jsonbound.MAX_DEPTH:
        raise ValueError("record header exceeds the JSON limits of docs/limits.md")
    start = _align(4 + len(head))
    return struct.pack("<I", len(head)) + head + bytes(start - 4 - len(head)) + b"".join(blobs)


def _section(tag: bytes, payload: bytes) -> bytes:
    return SECTION_HEAD.pack(tag, len(payload)) + payload + hashlib.sha256(payload).digest()


def _slice_arrays(k: int, s: SliceRecord) -> list[tuple[str, np.ndarray]]:
    return [(f"s{k}.{name}", getattr(s, name)) for name, _ in _SLICE_ARRAYS]


def _normalised(image: Image) -> Image:
    """``image`` with a JSON-native header and every array in its documented dtype."""

    def slice_(t: int, k: int, s: SliceRecord) -> SliceRecord:
        a = {n: _coerce(getattr(s, n), dt, f"tile {t} slice {k} {n}") for n, dt in _SLICE_ARRAYS}
        return SliceRecord(layer=int(s.layer), group=int(s.group), **a)

    layers = tuple(
        LayerRecord(
            op=rec.op,
            bias=_coerce(rec.bias, np.dtype(np.float32), f"layer {i} bias"),
            q=_coerce(rec.q, np.dtype(np.int8), f"layer {i} q"),
            scale=_coerce(rec.scale, np.dtype(np.float32), f"layer {i} scale"),
        )
        for i, rec in enumerate(image.layers)
    )
    tiles = tuple(
        TileRecord(
            tile=int(t.tile),
            levels=_coerce(t.levels, _LEVELS_DTYPE, f"tile {t.tile} levels"),
            slices=tuple(slice_(t.tile, k, s) for k, s in enumerate(t.slices)),
        )
        for t in image.tiles
    )
    header = _jsonable(image.header, "header")
    return Image(header=header, layers=layers, tiles=tiles, graph=bytes(image.graph))


def encode(image: Image) -> bytes:
    """The image as ``.rimg`` bytes; the same image always gives the same bytes.

    Arrays are stored in their documented dtypes (a conversion that would change a value is
    refused) and the image is checked as :func:`decode` would check it, so nothing written here
    fails to read back. Raises ``ValueError`` for an image the compiler should never build.
    """
    img = _normalised(image)
    try:
        _check_image(img, "image to encode")
    except BadImage as e:
        raise ValueError(str(e)) from None
    n_layers, n_tiles = len(img.layers), len(img.tiles)
    parts = [PREAMBLE.pack(MAGIC, VERSION)]
    head = {"header": img.header, "layers": n_layers, "tiles": n_tiles}
    parts.append(_section(TAG_HEAD, _encode_record(head, [])))
    parts.append(_section(TAG_GRPH, img.graph))
    for i, rec in enumerate(img.layers):
        meta = {"index": i, "op": rec.op.to_dict()}
        arrays = [("bias", rec.bias), ("q", rec.q), ("scale", rec.scale)]
        parts.append(_section(TAG_LAYR, _encode_record(meta, arrays)))
    for t in img.tiles:
        meta = {"tile": t.tile, "slices": [{"layer": s.layer, "group": s.group} for s in t.slices]}
        arrays = [("levels", t.levels)]
        for k, s in enumerate(t.slices):
            arrays += _slice_arrays(k, s)
        parts.append(_section(TAG_TILE, _encode_record(meta, arrays)))
    counts = {"HEAD": 1, "GRPH": 1, "LAYR": n_layers, "TILE": n_tiles}
    parts.append(_section(TAG_END, _canonical_json(counts)))
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Section:
    tag: bytes
    label: str
    """``HEAD``, ``GRPH``, ``LAYR[i]``, ``TILE[i]`` or ``END.`` (i counts sections of that tag)."""
    offset: int
    """File offset of the section's tag."""
    payload: memoryview


def _tag_name(tag: bytes) -> str:
    return tag.decode("ascii") if tag in TAGS else repr(tag)


def _sections(buf: memoryview, fail: Callable[[str], BadImage]) -> Iterator[_Section]:
    """Container level: magic, version, section framing, order, checksums, END, trailing bytes."""
    size = len(buf)
    if size < len(MAGIC) and MAGIC.startswith(bytes(buf)):
        raise fail(
            f"truncated in the preamble: expected {PREAMBLE.size} bytes (magic + version), "
            f"{size} present"
            if size
            else "empty file, not an rcompile image"
        )
    if bytes(buf[: len(MAGIC)]) != MAGIC:
        raise fail(f"not an rcompile image (magic {bytes(buf[:8])!r}, expected {MAGIC!r})")
    if size < PREAMBLE.size:
        raise fail(
            f"truncated in the preamble: expected {PREAMBLE.size} bytes (magic + version), "
            f"{size} present"
        )
    _, version = PREAMBLE.unpack_from(buf, 0)
    if version != VERSION:
        raise fail(f"unsupported image version {version}; this rcompile reads version {VERSION}")
    pos = PREAMBLE.size
    prev: bytes | None = None
    seen: dict[bytes, int] = {}
    while True:
        left = size - pos
        if left == 0:
            after = f"after section {_tag_name(prev)}" if prev else "before any section"
            raise fail(f"missing END. section: the file ends {after} at offset {pos}")
        if left < SECTION_HEAD.size:
            raise fail(
                f"truncated in a section header at offset {pos}: expected {SECTION_HEAD.size} "
                f"bytes, {left} present"
            )
        tag, n = SECTION_HEAD.unpack_from(buf, pos)
        if tag not in TAGS:
            raise fail(f"unknown section tag {tag!r} at offset {pos}")
        allowed = _NEXT[prev]
        if tag not in allowed:
            expected = " or ".join(_tag_name(t) for t in allowed)
            raise fail(
                f"section {_tag_name(tag)} at offset {pos} is out of order: expected {expected}"
            )
        k = seen.get(tag, 0)
        seen[tag] = k + 1
        label = f"{_tag_name(tag)}[{k}]" if tag in (TAG_LAYR, TAG_TILE) else _tag_name(tag)
        body = pos + SECTION_HEAD.size
        need = n + DIGEST_BYTES
        if size - body < need:
            raise fail(
                f"truncated in section {label} at offset {pos}: expected {need} bytes "
                f"({n}-byte payload + {DIGEST_BYTES}-byte checksum), {size - body} present"
            )
        payload = buf[body : body + n]
        digest = bytes(buf[body + n : body + need])
        if hashlib.sha256(payload).digest() != digest:
            raise fail(f"checksum mismatch in section {label} (section at offset {pos})")
        yield _Section(tag, label, pos, payload)
        pos = body + need
        prev = tag
        if tag == TAG_END:
            if pos != size:
                raise fail(f"{size - pos} trailing bytes after the END. section (offset {pos})")
            return


def _json(raw: bytes | memoryview, where: str, fail: Callable[[str], BadImage]) -> Any:
    try:
        return jsonbound.loads(raw, max_bytes=MAX_JSON_BYTES)
    except ValueError as e:
        raise fail(f"{where}: {e}; expected canonical JSON within docs/limits.md") from None


def _is_int(x: Any) -> bool:
    return type(x) is int


def _decode_record(
    sec: _Section, fail: Callable[[str], BadImage]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Record level: JSON header and the array table, each array checked against its bytes."""
    where = f"section {sec.label}"
    p = sec.payload
    if len(p) < 4:
        raise fail(f"{where}: record payload of {len(p)} bytes has no header length")
    (j,) = struct.unpack_from("<I", p, 0)
    if 4 + j > len(p):
        raise fail(f"{where}: record header of {j} bytes overruns the {len(p)}-byte payload")
    head = _json(p[4 : 4 + j], where, fail)
    if not (
        isinstance(head, dict)
        and set(head) == {"meta", "arrays"}
        and isinstance(head.get("meta"), dict)
        and isinstance(head.get("arrays"), list)
    ):
        raise fail(f'{where}: record header must be {{"meta": {{...}}, "arrays": [...]}}')
    base = _align(4 + j)
    data_len = len(p) - base
    arrays: dict[str, np.ndarray] = {}
    end = 0
    for entry in head["arrays"]:
        if not (
            isinstance(entry, list)
            and len(entry) == 5
            and isinstance(entry[0], str)
            and isinstance(entry[1], str)
            and isinstance(entry[2], list)
            and all(_is_int(s) and s >= 0 for s in entry[2])
            and _is_int(entry[3])
            and _is_int(entry[4])
        ):
            raise fail(f"{where}: malformed array entry {json.dumps(entry)[:80]}")
        name, dts, shape, offset, nbytes = entry
        what = f"{where}: array {name!r}"
        if name in arrays:
            raise fail(f"{what} appears twice")
        if dts not in _DTYPES:
            raise fail(f"{what} has dtype {dts!r}; expected one of {', '.join(sorted(_DTYPES))}")
        dt = np.dtype(dts)
        count = math.prod(shape)
        if count * dt.itemsize != nbytes:
            raise fail(
                f"{what}: shape {shape} of {dts} needs {count * dt.itemsize} bytes, "
                f"nbytes says {nbytes}"
            )
        if offset % ALIGN or offset < end:
            raise fail(
                f"{what}: offset {offset} is not 8-aligned after the previous array (ends {end})"
            )
        if offset + nbytes > data_len:
            raise fail(
                f"{what}: bytes {offset}..{offset + nbytes} lie beyond the {data_len}-byte "
                "data area"
            )
        a = np.frombuffer(p, dtype=dt, count=count, offset=base + offset)
        arrays[name] = a.reshape(shape).astype(dt.newbyteorder("="), copy=True)
        end = _align(offset + nbytes)
    if data_len != end:
        raise fail(f"{where}: data area is {data_len} bytes, the arrays account for {end}")
    return head["meta"], arrays


def _take(
    arrays: dict[str, np.ndarray], names: list[str], where: str, fail: Callable[[str], BadImage]
) -> list[np.ndarray]:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise fail(f"{where}: missing array {missing[0]!r}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise fail(f"{where}: unexpected array {extra[0]!r}")
    return [arrays[n] for n in names]


def _decode_layer(i: int, sec: _Section, fail: Callable[[str], BadImage]) -> LayerRecord:
    meta, arrays = _decode_record(sec, fail)
    where = f"section {sec.label}"
    if meta.get("index") != i:
        raise fail(f"{where}: meta index {meta.get('index')!r}, expected {i}")
    try:
        op = WeightOp.from_dict(meta["op"])
    except (KeyError, TypeError, ValueError) as e:
        raise fail(f"{where}: bad weight op {json.dumps(meta.get('op'))[:80]} ({e!r})") from None
    bias, q, scale = _take(arrays, [n for n, _ in _LAYER_ARRAYS], where, fail)
    return LayerRecord(op=op, bias=bias, q=q, scale=scale)


def _decode_tile(sec: _Section, fail: Callable[[str], BadImage]) -> TileRecord:
    meta, arrays = _decode_record(sec, fail)
    where = f"section {sec.label}"
    tile, slices = meta.get("tile"), meta.get("slices")
    ok = isinstance(slices, list) and all(
        isinstance(s, dict) and _is_int(s.get("layer")) and _is_int(s.get("group")) for s in slices
    )
    if not (_is_int(tile) and ok):
        raise fail(f'{where}: meta must be {{"tile": int, "slices": [{{"layer", "group"}}, ...]}}')
    assert isinstance(slices, list) and isinstance(tile, int)
    if len(slices) > len(arrays):  # cheap bound before the array names are listed
        raise fail(f"{where}: {len(slices)} slices need {1 + len(_SLICE_ARRAYS) * len(slices)} "
                   f"arrays, the record holds {len(arrays)}")
    names = ["levels"] + [f"s{k}.{n}" for k in range(len(slices)) for n, _ in _SLICE_ARRAYS]
    got = _take(arrays, names, where, fail)
    recs = []
    for k, s in enumerate(slices):
        per = len(_SLICE_ARRAYS)
        rows, outs, phys_rows, pos, neg, scale, offset = got[1 + per * k : 1 + per * (k + 1)]
        recs.append(
            SliceRecord(
                layer=s["layer"],
                group=s["group"],
                rows=rows,
                outs=outs,
                phys_rows=phys_rows,
                pos=pos,
                neg=neg,
                scale=scale,
                offset=offset,
            )
        )
    return TileRecord(tile=tile, levels=got[0], slices=tuple(recs))


def decode(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> Image:
    """Parse and check ``.rimg`` bytes; any defect raises :class:`BadImage` naming ``source``."""

    def fail(msg: str) -> BadImage:
        return BadImage(f"{source}: {msg}")

    buf = memoryview(data).cast("B")
    secs = list(_sections(buf, fail))
    head_sec, graph_sec, end_sec = secs[0], secs[1], secs[-1]
    layer_secs = [s for s in secs if s.tag == TAG_LAYR]
    tile_secs = [s for s in secs if s.tag == TAG_TILE]
    counts = {"HEAD": 1, "GRPH": 1, "LAYR": len(layer_secs), "TILE": len(tile_secs)}
    declared = _json(end_sec.payload, "section END.", fail)
    if declared != counts:
        raise fail(
            f"section END. declares sections {_canonical_json(declared).decode()}, "
            f"the file holds {_canonical_json(counts).decode()}"
        )
    meta, arrays = _decode_record(head_sec, fail)
    _take(arrays, [], "section HEAD", fail)
    header = meta.get("header")
    if not isinstance(header, dict):
        raise fail('section HEAD: meta must hold a "header" object')
    if meta.get("layers") != counts["LAYR"] or meta.get("tiles") != counts["TILE"]:
        raise fail(
            f"section HEAD declares {meta.get('layers')!r} layers and {meta.get('tiles')!r} "
            f"tiles, the file holds {counts['LAYR']} and {counts['TILE']}"
        )
    image = Image(
        header=header,
        layers=tuple(_decode_layer(i, s, fail) for i, s in enumerate(layer_secs)),
        tiles=tuple(_decode_tile(s, fail) for s in tile_secs),
        graph=bytes(graph_sec.payload),
    )
    _check_image(image, source)
    return image


# --------------------------------------------------------------------------------------------
# Semantic checks (shared by encode and decode)
# --------------------------------------------------------------------------------------------


def _geometry(header: dict[str, Any], fail: Callable[[str], BadImage]) -> tuple[int, int, int]:
    g = header.get("geometry")
    vals: list[Any] = [g.get(k) for k in ("tiles", "rows", "cols")] if isinstance(g, dict) else []
    if len(vals) != 3 or not all(_is_int(v) and v > 0 for v in vals):
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
    if not (_is_int(levels) and 2 <= levels <= 256):
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


def _check_image(image: Image, source: str) -> None:
    """Every invariant a reader relies on; raises :class:`BadImage` naming ``source``."""

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
        _expect(rec.q, np.dtype(np.int8), (op.groups, op.rows, op.outs), f"{where} q", fail)
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
        _expect(t.levels, _LEVELS_DTYPE, (n_rows, n_cols), f"{where} levels", fail)
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
            if not 0 <= s.group < op.groups:
                raise fail(f"{sw}: group {s.group} out of range 0..{op.groups - 1}")
            for name, dt in _SLICE_ARRAYS:
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


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write(image: Image, path: str | os.PathLike[str]) -> None:
    """Write ``image`` to ``path`` atomically (:func:`rcompile.fileio.atomic_write`): ``path``
    is either the old file or the complete new image, never a partial one. An OS error becomes
    :class:`BadImage` naming the path (the CLI's one-line error contract)."""
    atomic_write(path, encode(image), what="image", error=BadImage)


def read(path: str | os.PathLike[str]) -> Image:
    """Read and check an image file; any defect raises :class:`BadImage` naming ``path``."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_IMAGE_BYTES:
                raise BadImage(f"{path}: {size} bytes; expected an image of at most "
                               f"{MAX_IMAGE_BYTES} bytes (docs/limits.md)")
            data = f.read()
    except OSError as e:
        raise BadImage(f"{path}: cannot read image ({e.strerror or e})") from e
    return decode(data, source=str(path))


# --------------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------------


def _used_mask(t: TileRecord) -> np.ndarray:
    """bool ``[R, C]``: cells some slice of the tile reads (its rows x its pos/neg columns)."""
    mask = np.zeros(t.levels.shape, dtype=bool)
    for s in t.slices:
        cols = np.concatenate([s.pos, s.neg])
        mask[np.ix_(s.phys_rows, cols)] = True
    return mask


def _short(h: Any) -> str:
    return str(h)[:12] if h else "-"


def summary_dict(image: Image) -> dict[str, Any]:
    """JSON-ready summary for ``rcompile inspect --json`` (same content as :func:`describe`)."""
    header = image.header
    geo = header.get("geometry", {})
    dev = header.get("device", {}) if isinstance(header.get("device"), dict) else {}
    n_levels = int(dev.get("levels", 0)) or max(
        [int(t.levels.max()) + 1 for t in image.tiles if t.levels.size] or [1]
    )
    layer_tiles: list[set[int]] = [set() for _ in image.layers]
    tiles = []
    used_total = nonzero_total = 0
    for t in image.tiles:
        mask = _used_mask(t)
        used = t.levels[mask]
        hist = np.bincount(used, minlength=n_levels)
        used_total += int(used.size)
        nonzero_total += int(np.count_nonzero(used))
        slices = []
        for s in t.slices:
            layer_tiles[s.layer].add(t.tile)
            slices.append(
                {
                    "layer": s.layer,
                    "node": image.layers[s.layer].op.node,
                    "group": s.group,
                    "rows": len(s.rows),
                    "outs": len(s.outs),
                }
            )
        tiles.append(
            {
                "tile": t.tile,
                "slices": slices,
                "cells_used": int(used.size),
                "cells_nonzero": int(np.count_nonzero(used)),
                "mean_level": float(used.mean()) if used.size else 0.0,
                "level_histogram": [int(c) for c in hist],
            }
        )
    layers = [
        {
            "index": i,
            "node": rec.op.node,
            "op_type": rec.op.op_type,
            "weight_shape": list(rec.op.shape),
            "groups": rec.op.groups,
            "tiles": len(layer_tiles[i]),
        }
        for i, rec in enumerate(image.layers)
    ]
    return {
        "format_version": VERSION,
        "header": header,
        "graph_bytes": len(image.graph),
        "layers": layers,
        "tiles": tiles,
        "totals": {
            "tiles_used": len(image.tiles),
            "tiles_on_chip": geo.get("tiles"),
            "cells_programmed": used_total,
            "cells_nonzero": nonzero_total,
        },
    }


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def describe(image: Image) -> str:
    """Human-readable text for ``rcompile inspect``: header, layers, tiles, totals."""
    d = summary_dict(image)
    h = image.header
    geo = h.get("geometry", {})
    dev = h.get("device")
    dev_text = (
        " ".join(f"{k}={v}" for k, v in sorted(dev.items())) if isinstance(dev, dict) else "-"
    )
    options = _canonical_json(h.get("options", {})).decode()
    lines = [f"rcompile image, format version {VERSION}"]
    lines += _table(
        [
            ["chip id", str(h.get("chip_id", "-"))],
            ["model sha256", _short(h.get("model_sha256"))],
            ["fault map sha256", _short(h.get("faultmap_sha256"))],
            ["compiler version", str(h.get("compiler_version", "-"))],
            ["strategy", str(h.get("strategy", "-"))],
            ["options", options],
            ["device", dev_text],
            [
                "geometry",
                f"{geo.get('tiles')} tiles x {geo.get('rows')} rows x {geo.get('cols')} cols",
            ],
            ["digital graph", f"{len(image.graph)} bytes"],
        ]
    )
    lines.append(f"layers ({len(d['layers'])})")
    if d["layers"]:
        rows = [["#", "node", "op", "weight shape", "groups", "tiles"]]
        rows += [
            [
                str(x["index"]),
                x["node"],
                x["op_type"],
                "x".join(map(str, x["weight_shape"])),
                str(x["groups"]),
                str(x["tiles"]),
            ]
            for x in d["layers"]
        ]
        lines += _table(rows)
    lines.append(f"tiles ({len(d['tiles'])} used of {geo.get('tiles')})")
    for t in d["tiles"]:
        used = t["cells_used"]
        hist = t["level_histogram"]
        at0 = hist[0] / used if used else 0.0
        top = hist[-1] / used if used else 0.0
        lines.append(
            f"  tile {t['tile']}: {len(t['slices'])} slices, {used} cells used, "
            f"mean level {t['mean_level']:.2f}, {at0:.0%} at level 0, "
            f"{top:.0%} at level {len(hist) - 1}"
        )
        for s in t["slices"]:
            lines.append(
                f"    layer {s['layer']} {s['node']} group {s['group']}: "
                f"{s['rows']} rows x {s['outs']} outs"
            )
    tot = d["totals"]
    lines.append(
        f"totals: {tot['tiles_used']} tiles used of {tot['tiles_on_chip']}, "
        f"{tot['cells_programmed']} cells programmed ({tot['cells_nonzero']} at a non-zero level)"
    )
    return "\n".join(lines) + "\n"
