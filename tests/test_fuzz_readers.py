"""Fuzzing the image and fault-map readers: any input loads to a valid object or raises the
reader's own error (:class:`BadImage`, :class:`BadFaultMap`), never any other exception.

Inputs start from real files (an image and a fault map made in code) and are truncated, bit-
flipped, given crafted section lengths, crafted record JSON and array tables (with valid
checksums, so the checks behind the checksum are reached), crafted ``.npy`` headers and zip
members. Example counts keep the whole file within a few seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rcompile import faultmap as F
from rcompile import image as rimg
from rcompile.errors import BadFaultMap, BadImage
from tests.test_image import make_image

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

GOOD_IMAGE = rimg.encode(make_image(np.random.default_rng(5), n_layers=2, n_tiles=2))


def decodes_or_bad_image(raw: bytes) -> None:
    try:
        img = rimg.decode(raw, source="fuzz.rimg")
    except BadImage as e:
        msg = str(e)
        assert msg.startswith("fuzz.rimg: ") and "\n" not in msg, msg
        return
    # What loads is a valid image: it encodes, and reads back the same (unknown meta keys,
    # which readers ignore by the format's versioning rule, are the only thing not kept).
    again = rimg.decode(rimg.encode(img), source="again.rimg")
    assert again.header == img.header and again.graph == img.graph
    assert [t.tile for t in again.tiles] == [t.tile for t in img.tiles]


def sections(raw: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, tag, payload) of every section of a valid image."""
    out, pos = [], 12
    while pos < len(raw):
        tag, n = struct.unpack_from("<4sQ", raw, pos)
        out.append((pos, tag, raw[pos + 12: pos + 12 + n]))
        pos += 12 + n + 32
    return out


def replace_payload(raw: bytes, index: int, payload: bytes) -> bytes:
    """``raw`` with section ``index``'s payload replaced, framing and checksum made valid."""
    pos, tag, old = sections(raw)[index]
    end = pos + 12 + len(old) + 32
    sec = struct.pack("<4sQ", tag, len(payload)) + payload + hashlib.sha256(payload).digest()
    return raw[:pos] + sec + raw[end:]


def record_parts(payload: bytes) -> tuple[Any, bytes]:
    (j,) = struct.unpack_from("<I", payload, 0)
    base = -(-(4 + j) // 8) * 8
    return json.loads(payload[4: 4 + j]), payload[base:]


def record(head: bytes, data: bytes) -> bytes:
    pad = -(-(4 + len(head)) // 8) * 8 - 4 - len(head)
    return struct.pack("<I", len(head)) + head + bytes(pad) + data


RECORD_SECTIONS = [i for i, (_, tag, _) in enumerate(sections(GOOD_IMAGE))
                   if tag in (b"HEAD", b"LAYR", b"TILE")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.integers(0, len(GOOD_IMAGE) - 1))
def test_image_truncated_anywhere(n: int) -> None:
    with pytest.raises(BadImage):
        rimg.decode(GOOD_IMAGE[:n], source="fuzz.rimg")


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD_IMAGE) - 1), st.integers(0, 7)),
                min_size=1, max_size=4))
def test_image_bit_flips(flips: list[tuple[int, int]]) -> None:
    raw = bytearray(GOOD_IMAGE)
    for at, bit in flips:
        raw[at] ^= 1 << bit
    decodes_or_bad_image(bytes(raw))


@FUZZ
@given(st.sampled_from(range(len(sections(GOOD_IMAGE)))),
       st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 4096)))
def test_image_crafted_section_length(index: int, length: int) -> None:
    pos = sections(GOOD_IMAGE)[index][0]
    raw = GOOD_IMAGE[:pos + 4] + struct.pack("<Q", length) + GOOD_IMAGE[pos + 12:]
    decodes_or_bad_image(raw)


@FUZZ
@given(st.sampled_from(RECORD_SECTIONS), json_values, st.data())
def test_image_crafted_record_json(index: int, value: Any, data: st.DataObject) -> None:
    """A record header replaced by any JSON value, or its meta / array table edited."""
    head, area = record_parts(sections(GOOD_IMAGE)[index][2])
    choice = data.draw(st.sampled_from(["whole", "meta", "entry", "table"]))
    if choice == "whole":
        head = value
    elif choice == "meta" and isinstance(value, dict):
        head["meta"].update(value)
    elif choice == "entry" and head["arrays"]:
        entry = data.draw(st.sampled_from(head["arrays"]))
        field = data.draw(st.integers(0, 4))
        entry[field] = data.draw(st.one_of(
            st.integers(-(2**63), 2**64), st.lists(st.integers(-1, 2**40), max_size=4),
            st.sampled_from(["<f4", "|u1", "<i8", "|O", ">f4", "<c8", "V8", ""]), json_values))
    else:
        head["arrays"] = value
    text = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    decodes_or_bad_image(replace_payload(GOOD_IMAGE, index, record(text, area)))


@settings(FUZZ, max_examples=40)
@given(st.sampled_from(RECORD_SECTIONS), st.integers(0, 50_000), st.sampled_from("[{"),
       st.binary(max_size=64))
def test_image_crafted_json_text(index: int, depth: int, bracket: str, junk: bytes) -> None:
    """Deep nesting, non-UTF-8 bytes, numbers that overflow to infinity, duplicate keys."""
    close = "]" if bracket == "[" else "}"
    inner = (bracket + ('"k":' if bracket == "{" else "")) * depth + "1" + close * depth
    texts = [
        b'{"meta":' + inner.encode() + b',"arrays":[]}',
        b'{"meta":{"x":1e999},"arrays":[]}',
        b'{"meta":{},"meta":{},"arrays":[]}',
        junk,
        b'{"meta":{"x":"' + junk.replace(b'"', b"") + b'"},"arrays":[]}',
    ]
    _, area = record_parts(sections(GOOD_IMAGE)[index][2])
    for text in texts:
        decodes_or_bad_image(replace_payload(GOOD_IMAGE, index, record(text, area)))


# ------------------------------------------------------------------------------------------
# Fault maps
# ------------------------------------------------------------------------------------------


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


def zipped(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression=method) as zf:
        warnings.simplefilter("ignore", UserWarning)
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


GOOD_MAP = F.to_npz_bytes(F.synth(2, 8, 8, rate=0.2, seed=1))


@pytest.fixture(scope="module")
def mapfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "chip.npz"


def loads_or_bad_map(path: Path, raw: bytes) -> None:
    path.write_bytes(raw)
    try:
        fm = F.load(path)
    except BadFaultMap as e:
        msg = str(e)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
        return
    assert fm.faults.ndim == 3 and int(fm.faults.max()) <= 2 and fm.faults.shape[2] % 2 == 0
    assert F.load(path).digest() == fm.digest()


FUZZ_MAP = settings(FUZZ, max_examples=80,
                    suppress_health_check=[*FUZZ.suppress_health_check,
                                           HealthCheck.function_scoped_fixture])


@FUZZ_MAP
@given(st.integers(0, len(GOOD_MAP) - 1))
def test_faultmap_truncated_anywhere(mapfile: Path, n: int) -> None:
    mapfile.write_bytes(GOOD_MAP[:n])
    with pytest.raises(BadFaultMap):
        F.load(mapfile)


@FUZZ_MAP
@given(st.lists(st.tuples(st.integers(0, len(GOOD_MAP) - 1), st.integers(0, 7)),
                min_size=1, max_size=4))
def test_faultmap_bit_flips(mapfile: Path, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(GOOD_MAP)
    for at, bit in flips:
        raw[at] ^= 1 << bit
    loads_or_bad_map(mapfile, bytes(raw))


dims = st.integers(0, 2**40) | st.integers(0, 9)
descrs = st.sampled_from(["|u1", "<u2", "<f4", "<f8", "|b1", "<i8", ">u4", "|O", "<U4", "|S3",
                          "<c8", "V4", "[('a', '|u1')]", "<M8[s]", "nonsense"])


@FUZZ_MAP
@given(st.lists(dims, max_size=4), descrs, st.booleans(), st.integers(0, 2000),
       st.sampled_from(["faults", "stuck_g", "levels", "chip_id", "g_min"]),
       st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_faultmap_crafted_npy_header(mapfile: Path, shape: list[int], descr: str,
                                     fortran: bool, data_len: int, key: str,
                                     method: int) -> None:
    """A member whose header declares any shape and dtype over any number of data bytes."""
    header = ("{'descr': " + (descr if descr.startswith("[") else repr(descr))
              + f", 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}")
    header += " " * (-(len(header) + 11) % 64) + "\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    member += bytes(data_len)
    members = [("faults.npy", npy(F.synth(2, 8, 8, 0.1).faults))] if key != "faults" else []
    members.append((f"{key}.npy", member))
    loads_or_bad_map(mapfile, zipped(members, method))


arrays = st.one_of(
    st.builds(lambda s, v: np.full(s, v, np.uint8),
              st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 6)),
              st.integers(0, 4)),
    st.builds(lambda s, v: np.full(s, v, np.float32),
              st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 6)),
              st.sampled_from([0.0, 1.0, np.nan, np.inf, -1.0, 200.0])),
    st.builds(np.array, st.integers(-3, 300) | st.floats() | st.text(max_size=4)),
)


@FUZZ_MAP
@given(st.lists(st.tuples(st.sampled_from(["faults", "stuck_g", "chip_id", "g_min", "g_max",
                                           "levels", "faults", "other", "dir/faults"]),
                          arrays), max_size=5))
@example([("faults", np.full((1, 2, 2), 1, np.uint8)), ("faults", np.zeros((1, 2, 2), np.uint8))])
def test_faultmap_crafted_members(mapfile: Path, members: list[tuple[str, np.ndarray]]) -> None:
    """Any combination of (possibly repeated, unknown) keys holding arrays of any content;
    a repeated key is always refused (a reader must not pick one of two ``faults``)."""
    raw = zipped([(f"{k}.npy", npy(a)) for k, a in members])
    keys = [k for k, _ in members]
    if len(set(keys)) < len(keys):
        mapfile.write_bytes(raw)
        with pytest.raises(BadFaultMap):
            F.load(mapfile)
    else:
        loads_or_bad_map(mapfile, raw)
