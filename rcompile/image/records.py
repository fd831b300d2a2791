"""The records an image holds, and the container layout constants."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from rcompile.ir import WeightOp

MAGIC = b"RCIMG\x00\r\n"
VERSION = 1
"""Format of every image whose weights sit on one cell pair each."""
SLICED_VERSION = 2
"""Format of an image with bit-sliced weights (a slice ``digit`` > 0, or a layer ``q`` beyond
int8): ``q`` is int16 and every slice names its digit (docs/image-format.md §8)."""
VERSIONS = (VERSION, SLICED_VERSION)
MAX_DIGIT = 15
"""Highest slice digit an image may name (16 slices per weight polarity)."""

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
    digit: int = 0
    """Which slice of a bit-sliced weight this is (significance ``base^digit``, already in
    ``scale``); 0 on one cell per polarity. Recorded from version 2 on."""


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
    q: np.ndarray  # int8 [groups, rows, outs] intended levels difference (fault-free chip);
    # int16 in a version-2 image (bit-sliced, or weights beyond int8: more than 128 levels)
    scale: np.ndarray  # float32 [groups, outs] intended scale


@dataclass(frozen=True)
class Image:
    header: dict[str, Any]
    """The HEAD record's header object as read (any writer's: unknown keys kept, only
    ``geometry`` required). The compiler writes :meth:`rcompile.image.ImageHeader.to_dict`:
    chip_id, faultmap_sha256, model_sha256, compiler_version, strategy, pipeline,
    plan_pipeline, options, device (Cell fields), geometry {tiles, rows, cols}, hardware."""
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
NEXT: dict[bytes | None, tuple[bytes, ...]] = {
    None: (TAG_HEAD,),
    TAG_HEAD: (TAG_GRPH,),
    TAG_GRPH: (TAG_LAYR, TAG_TILE, TAG_END),
    TAG_LAYR: (TAG_LAYR, TAG_TILE, TAG_END),
    TAG_TILE: (TAG_TILE, TAG_END),
}

#: dtype strings an array may carry (little-endian or byte-order-free, numeric).
DTYPES = frozenset(
    ["|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"]
)

#: Per-slice arrays in a TILE record and their dtype; ``rows``/``phys_rows`` have length n,
#: the others length m.
SLICE_ARRAYS = (
    ("rows", np.dtype(np.int32)),
    ("outs", np.dtype(np.int32)),
    ("phys_rows", np.dtype(np.int32)),
    ("pos", np.dtype(np.int32)),
    ("neg", np.dtype(np.int32)),
    ("scale", np.dtype(np.float32)),
    ("offset", np.dtype(np.float32)),
)
LAYER_ARRAYS = (
    ("bias", np.dtype(np.float32)),
    ("q", np.dtype(np.int8)),
    ("scale", np.dtype(np.float32)),
)
"""The arrays of a LAYR record; ``q`` is int16 instead in a version-2 image
(:func:`version_q_dtype`)."""
LEVELS_DTYPE = np.dtype(np.uint8)


def version_q_dtype(version: int) -> np.dtype[Any]:
    """dtype of a layer's ``q`` in an image of ``version``: int8; int16 in version 2 (sliced
    images and weights beyond int8, e.g. a 256-level cell)."""
    return np.dtype(np.int8) if version == VERSION else np.dtype(np.int16)


def version_of(image: Image) -> int:
    """The format version ``image`` needs: :data:`SLICED_VERSION` when a slice holds a digit
    above 0 or a layer's ``q`` leaves int8, else :data:`VERSION` (so unsliced images keep
    their bytes)."""
    lim = np.iinfo(np.int8)
    wide = any(r.q.size and (int(np.min(r.q)) < lim.min or int(np.max(r.q)) > lim.max)
               for r in image.layers)
    sliced = any(s.digit for t in image.tiles for s in t.slices)
    return SLICED_VERSION if wide or sliced else VERSION


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def is_int(x: Any) -> bool:
    return type(x) is int
