"""The binary container: :func:`encode` / :func:`decode` and the files, :func:`write` /
:func:`read` (the layout in ``docs/image-format.md``)."""

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
from rcompile.image.check import check_image
from rcompile.image.records import (
    ALIGN,
    DIGEST_BYTES,
    DTYPES,
    LAYER_ARRAYS,
    LEVELS_DTYPE,
    MAGIC,
    MAX_IMAGE_BYTES,
    MAX_JSON_BYTES,
    NEXT,
    PREAMBLE,
    SECTION_HEAD,
    SLICE_ARRAYS,
    TAG_END,
    TAG_GRPH,
    TAG_HEAD,
    TAG_LAYR,
    TAG_TILE,
    TAGS,
    VERSION,
    VERSIONS,
    Image,
    LayerRecord,
    SliceRecord,
    TileRecord,
    align,
    canonical_json,
    is_int,
    version_of,
    version_q_dtype,
)
from rcompile.ir import WeightOp

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
        blobs.append(blob + bytes(align(len(blob)) - len(blob)))
        offset += align(len(blob))
    head = canonical_json({"meta": meta, "arrays": table})
    if len(head) > MAX_JSON_BYTES or jsonbound.depth(head) > jsonbound.MAX_DEPTH:
        raise ValueError("record header exceeds the JSON limits of docs/limits.md")
    start = align(4 + len(head))
    return struct.pack("<I", len(head)) + head + bytes(start - 4 - len(head)) + b"".join(blobs)


def _section(tag: bytes, payload: bytes) -> bytes:
    return SECTION_HEAD.pack(tag, len(payload)) + payload + hashlib.sha256(payload).digest()


def _slice_arrays(k: int, s: SliceRecord) -> list[tuple[str, np.ndarray]]:
    return [(f"s{k}.{name}", getattr(s, name)) for name, _ in SLICE_ARRAYS]


def _slice_meta(s: SliceRecord, version: int) -> dict[str, int]:
    """A slice's entry in its TILE record's ``meta.slices``; ``digit`` from version 2 on."""
    meta = {"layer": s.layer, "group": s.group}
    return meta if version == VERSION else {**meta, "digit": s.digit}


def _normalised(image: Image, version: int) -> Image:
    """``image`` with a JSON-native header and every array in its documented dtype."""

    def slice_(t: int, k: int, s: SliceRecord) -> SliceRecord:
        a = {n: _coerce(getattr(s, n), dt, f"tile {t} slice {k} {n}") for n, dt in SLICE_ARRAYS}
        return SliceRecord(layer=int(s.layer), group=int(s.group), digit=int(s.digit), **a)

    layers = tuple(
        LayerRecord(
            op=rec.op,
            bias=_coerce(rec.bias, np.dtype(np.float32), f"layer {i} bias"),
            q=_coerce(rec.q, version_q_dtype(version), f"layer {i} q"),
            scale=_coerce(rec.scale, np.dtype(np.float32), f"layer {i} scale"),
        )
        for i, rec in enumerate(image.layers)
    )
    tiles = tuple(
        TileRecord(
            tile=int(t.tile),
            levels=_coerce(t.levels, LEVELS_DTYPE, f"tile {t.tile} levels"),
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
    version = version_of(image)
    img = _normalised(image, version)
    try:
        check_image(img, "image to encode", version)
    except BadImage as e:
        raise ValueError(str(e)) from None
    n_layers, n_tiles = len(img.layers), len(img.tiles)
    parts = [PREAMBLE.pack(MAGIC, version)]
    head = {"header": img.header, "layers": n_layers, "tiles": n_tiles}
    parts.append(_section(TAG_HEAD, _encode_record(head, [])))
    parts.append(_section(TAG_GRPH, img.graph))
    for i, rec in enumerate(img.layers):
        meta = {"index": i, "op": rec.op.to_dict()}
        arrays = [("bias", rec.bias), ("q", rec.q), ("scale", rec.scale)]
        parts.append(_section(TAG_LAYR, _encode_record(meta, arrays)))
    for t in img.tiles:
        meta = {"tile": t.tile, "slices": [_slice_meta(s, version) for s in t.slices]}
        arrays = [("levels", t.levels)]
        for k, s in enumerate(t.slices):
            arrays += _slice_arrays(k, s)
        parts.append(_section(TAG_TILE, _encode_record(meta, arrays)))
    counts = {"HEAD": 1, "GRPH": 1, "LAYR": n_layers, "TILE": n_tiles}
    parts.append(_section(TAG_END, canonical_json(counts)))
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Section:
    tag: bytes
    label: str
    """``HEAD``, ``GRPH``, ``LAYR[i]``, ``TILE[i]`` or ``END.`` (i counts sections of that tag)."""
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
    if version not in VERSIONS:
        raise fail(f"unsupported image version {version}; this rcompile reads versions "
                   f"{', '.join(map(str, VERSIONS))} (docs/image-format.md §8)")
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
        allowed = NEXT[prev]
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
        yield _Section(tag, label, payload)
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
    base = align(4 + j)
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
            and all(is_int(s) and s >= 0 for s in entry[2])
            and is_int(entry[3])
            and is_int(entry[4])
        ):
            raise fail(f"{where}: malformed array entry {json.dumps(entry)[:80]}")
        name, dts, shape, offset, nbytes = entry
        what = f"{where}: array {name!r}"
        if name in arrays:
            raise fail(f"{what} appears twice")
        if dts not in DTYPES:
            raise fail(f"{what} has dtype {dts!r}; expected one of {', '.join(sorted(DTYPES))}")
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
        end = align(offset + nbytes)
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
    bias, q, scale = _take(arrays, [n for n, _ in LAYER_ARRAYS], where, fail)
    return LayerRecord(op=op, bias=bias, q=q, scale=scale)


def _decode_tile(sec: _Section, fail: Callable[[str], BadImage], version: int) -> TileRecord:
    meta, arrays = _decode_record(sec, fail)
    where = f"section {sec.label}"
    tile, slices = meta.get("tile"), meta.get("slices")
    keys = ("layer", "group") if version == VERSION else ("layer", "group", "digit")
    ok = isinstance(slices, list) and all(
        isinstance(s, dict) and all(is_int(s.get(k)) for k in keys) for s in slices
    )
    if not (is_int(tile) and ok):
        raise fail(f'{where}: meta must be {{"tile": int, "slices": [{{'
                   f'{", ".join(repr(k) for k in keys)}}}, ...]}} (version {version})')
    assert isinstance(slices, list) and isinstance(tile, int)
    if len(slices) > len(arrays):  # cheap bound before the array names are listed
        raise fail(f"{where}: {len(slices)} slices need {1 + len(SLICE_ARRAYS) * len(slices)} "
                   f"arrays, the record holds {len(arrays)}")
    names = ["levels"] + [f"s{k}.{n}" for k in range(len(slices)) for n, _ in SLICE_ARRAYS]
    got = _take(arrays, names, where, fail)
    recs = []
    for k, s in enumerate(slices):
        per = len(SLICE_ARRAYS)
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
                digit=int(s.get("digit", 0)) if version != VERSION else 0,
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
            f"section END. declares sections {canonical_json(declared).decode()}, "
            f"the file holds {canonical_json(counts).decode()}"
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
    version = int(PREAMBLE.unpack_from(buf, 0)[1])
    image = Image(
        header=header,
        layers=tuple(_decode_layer(i, s, fail) for i, s in enumerate(layer_secs)),
        tiles=tuple(_decode_tile(s, fail, version) for s in tile_secs),
        graph=bytes(graph_sec.payload),
    )
    check_image(image, source, version)
    return image


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
