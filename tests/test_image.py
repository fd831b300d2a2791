"""Programming image container: exact round trip, determinism, and every corruption refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rcompile import fileio
from rcompile import image as rimg
from rcompile.errors import BadImage
from rcompile.image import MAGIC, VERSION, Image, LayerRecord, SliceRecord, TileRecord
from rcompile.image.container import _encode_record
from rcompile.ir import LAYOUT_CONV, LAYOUT_KN, WeightOp, q_dtype

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "read_image_standalone.py"
DOC = ROOT / "docs" / "image-format.md"


# ------------------------------------------------------------------------------------------
# Building images in code
# ------------------------------------------------------------------------------------------


def make_header(tiles: int, rows: int, cols: int, levels: int) -> dict[str, Any]:
    return {
        "chip_id": "chïp-0042",
        "faultmap_sha256": hashlib.sha256(b"faults").hexdigest(),
        "model_sha256": hashlib.sha256(b"model").hexdigest(),
        "compiler_version": "0.1.0",
        "strategy": "full",
        "options": {"rounds": 3, "calib": None, "weights": [0.1, 1e-300, -0.0], "mt": True},
        "device": {"levels": levels, "g_min_us": 1.0, "g_max_us": 100.0, "read_v": 0.2},
        "geometry": {"tiles": tiles, "rows": rows, "cols": cols},
    }


def make_op(rng: np.random.Generator, i: int) -> WeightOp:
    if rng.random() < 0.5:
        groups = int(rng.integers(1, 3))
        cout = groups * int(rng.integers(1, 4))
        k = int(rng.integers(1, 4))
        shape: tuple[int, ...] = (cout, int(rng.integers(1, 3)), k, k)
        return WeightOp(f"conv{i}", "Conv", f"w{i}", f"b{i}", shape, LAYOUT_CONV, groups)
    shape = (int(rng.integers(1, 20)), int(rng.integers(1, 10)))
    return WeightOp(f"gemm{i}", "Gemm", f"w{i}", f"b{i}", shape, LAYOUT_KN, 1)


def make_image(
    rng: np.random.Generator,
    *,
    rows: int = 8,
    cols: int = 8,
    tiles: int = 6,
    levels: int = 16,
    n_layers: int = 2,
    n_tiles: int = 3,
    max_slices: int = 3,
) -> Image:
    layers = []
    for i in range(n_layers):
        op = make_op(rng, i)
        top = levels - 1
        layers.append(
            LayerRecord(
                op=op,
                bias=rng.standard_normal(op.n_out).astype(np.float32),
                q=rng.integers(-top, top + 1, (op.groups, op.rows, op.outs)).astype(
                    q_dtype(top)),
                scale=rng.random((op.groups, op.outs)).astype(np.float32),
            )
        )
    tile_recs = []
    for t in sorted(rng.choice(tiles, min(n_tiles, tiles), replace=False).tolist()):
        slices = []
        for _ in range(int(rng.integers(0, max_slices + 1)) if layers else 0):
            layer = int(rng.integers(len(layers)))
            op = layers[layer].op
            n = int(rng.integers(0, min(op.rows, rows) + 1))
            m = int(rng.integers(0, min(op.outs, cols // 2) + 1))
            pair = rng.permutation(cols)[: 2 * m].astype(np.int32)
            slices.append(
                SliceRecord(
                    layer=layer,
                    group=int(rng.integers(op.groups)),
                    rows=np.sort(rng.choice(op.rows, n, replace=False)).astype(np.int32),
                    outs=np.sort(rng.choice(op.outs, m, replace=False)).astype(np.int32),
                    phys_rows=rng.choice(rows, n, replace=False).astype(np.int32),
                    pos=pair[:m],
                    neg=pair[m:],
                    scale=rng.random(m).astype(np.float32),
                    offset=rng.normal(size=m).astype(np.float32),
                )
            )
        levels_arr = rng.integers(0, levels, (rows, cols)).astype(np.uint8)
        tile_recs.append(TileRecord(tile=t, levels=levels_arr, slices=tuple(slices)))
    return Image(
        header=make_header(tiles, rows, cols, levels),
        layers=tuple(layers),
        tiles=tuple(tile_recs),
        graph=rng.bytes(int(rng.integers(0, 300))),
    )


def assert_same(a: Image, b: Image) -> None:
    assert a.header == b.header
    assert a.graph == b.graph
    assert len(a.layers) == len(b.layers) and len(a.tiles) == len(b.tiles)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.op == lb.op
        for name in ("bias", "q", "scale"):
            x, y = getattr(la, name), getattr(lb, name)
            assert x.shape == y.shape and np.array_equal(x, y)
            if name == "q" and x.dtype != y.dtype:
                # the one narrowing the format makes: an int16 q whose values all fit int8 (a
                # 256-level cell's weights drawn small) is stored as int8, in a version-1 image
                assert (x.dtype, y.dtype) == (np.int16, np.int8)
                assert x.size == 0 or (x.min() >= -128 and x.max() <= 127)
            else:
                assert x.dtype == y.dtype
    for ta, tb in zip(a.tiles, b.tiles, strict=True):
        assert ta.tile == tb.tile
        assert ta.levels.dtype == tb.levels.dtype and np.array_equal(ta.levels, tb.levels)
        assert len(ta.slices) == len(tb.slices)
        for sa, sb in zip(ta.slices, tb.slices, strict=True):
            assert (sa.layer, sa.group) == (sb.layer, sb.group)
            for name in ("rows", "outs", "phys_rows", "pos", "neg", "scale"):
                x, y = getattr(sa, name), getattr(sb, name)
                assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


@pytest.fixture
def img() -> Image:
    return make_image(np.random.default_rng(7), n_layers=3, n_tiles=4)


# ------------------------------------------------------------------------------------------
# An independent section walker (written from docs/image-format.md, not from rcompile/image/)
# ------------------------------------------------------------------------------------------


def walk(data: bytes) -> list[tuple[bytes, int, int]]:
    """(tag, offset of the section, payload length) of every section."""
    out, pos = [], 12
    while pos < len(data):
        tag, n = struct.unpack_from("<4sQ", data, pos)
        out.append((tag, pos, n))
        pos += 12 + n + 32
    assert pos == len(data)
    return out


def labels(data: bytes) -> list[str]:
    seen: dict[bytes, int] = {}
    out = []
    for tag, _, _ in walk(data):
        k = seen.get(tag, 0)
        seen[tag] = k + 1
        name = tag.decode()
        out.append(f"{name}[{k}]" if tag in (b"LAYR", b"TILE") else name)
    return out


def assemble(sections: list[tuple[bytes, bytes]], version: int = VERSION) -> bytes:
    body = b"".join(
        struct.pack("<4sQ", t, len(p)) + p + hashlib.sha256(p).digest() for t, p in sections
    )
    return MAGIC + struct.pack("<I", version) + body


def payloads(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(t, data[o + 12 : o + 12 + n]) for t, o, n in walk(data)]


def bad(data: bytes, *patterns: str, source: str = "chip.rimg") -> str:
    with pytest.raises(BadImage) as e:
        rimg.decode(data, source=source)
    msg = str(e.value)
    assert msg.startswith(f"{source}: ") and "\n" not in msg
    for p in patterns:
        assert re.search(p, msg), (p, msg)
    return msg


# ------------------------------------------------------------------------------------------
# Round trip and determinism
# ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 12),
    cols=st.integers(2, 12),
    tiles=st.integers(1, 8),
    levels=st.sampled_from([2, 4, 16, 64, 256]),
    n_layers=st.integers(0, 3),
    n_tiles=st.integers(0, 5),
)
@example(seed=8, rows=1, cols=2, tiles=1, levels=256, n_layers=1, n_tiles=0)  # q narrowed to int8
def test_round_trip_is_exact(
    seed: int, rows: int, cols: int, tiles: int, levels: int, n_layers: int, n_tiles: int
) -> None:
    rng = np.random.default_rng(seed)
    image = make_image(
        rng, rows=rows, cols=cols, tiles=tiles, levels=levels, n_layers=n_layers, n_tiles=n_tiles
    )
    data = rimg.encode(image)
    back = rimg.decode(data)
    assert_same(image, back)
    assert rimg.encode(back) == data
    assert rimg.encode(image) == data


def test_layout_follows_the_spec(img: Image) -> None:
    data = rimg.encode(img)
    assert data[:8] == MAGIC and struct.unpack_from("<I", data, 8) == (VERSION,)
    tags = [t for t, _, _ in walk(data)]
    assert tags == [b"HEAD", b"GRPH"] + [b"LAYR"] * 3 + [b"TILE"] * 4 + [b"END."]
    for tag, payload in payloads(data):
        if tag == b"END.":
            assert json.loads(payload) == {"HEAD": 1, "GRPH": 1, "LAYR": 3, "TILE": 4}
        elif tag == b"GRPH":
            assert payload == img.graph
        else:  # a record: canonical JSON, 8-aligned data area, exact length
            (j,) = struct.unpack_from("<I", payload)
            head = json.loads(payload[4 : 4 + j])
            canon = json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            assert payload[4 : 4 + j] == canon.encode()
            base = -(-(4 + j) // 8) * 8
            end = 0
            for _, dtype, shape, off, nbytes in head["arrays"]:
                assert off % 8 == 0 and nbytes == int(np.prod(shape)) * np.dtype(dtype).itemsize
                assert dtype[0] in "<|"
                end = -(-(off + nbytes) // 8) * 8
            assert len(payload) == base + end


def test_same_image_same_bytes_whatever_the_dict_order(img: Image) -> None:
    shuffled = dict(reversed(list(img.header.items())))
    shuffled["options"] = dict(reversed(list(img.header["options"].items())))
    other = Image(header=shuffled, layers=img.layers, tiles=img.tiles, graph=img.graph)
    assert rimg.encode(other) == rimg.encode(img)


def test_encode_stores_documented_dtypes_and_refuses_lossy_ones(img: Image) -> None:
    t = img.tiles[0]
    wide = TileRecord(tile=t.tile, levels=t.levels.astype(np.int64), slices=t.slices)
    back = rimg.decode(rimg.encode(Image(img.header, img.layers, (wide,), img.graph)))
    assert back.tiles[0].levels.dtype == np.uint8
    assert np.array_equal(back.tiles[0].levels, t.levels)
    lossy = TileRecord(tile=t.tile, levels=t.levels + 0.5, slices=t.slices)
    with pytest.raises(ValueError, match="levels"):
        rimg.encode(Image(img.header, img.layers, (lossy,), img.graph))


def test_encode_refuses_an_image_it_could_not_read_back(img: Image) -> None:
    t = next(t for t in img.tiles if t.slices and len(t.slices[0].pos))
    s = t.slices[0]
    cols = img.header["geometry"]["cols"]
    broken = SliceRecord(
        s.layer, s.group, s.rows, s.outs, s.phys_rows, s.pos + cols, s.neg, s.scale, s.offset
    )
    tile = TileRecord(t.tile, t.levels, (broken,) + t.slices[1:])
    with pytest.raises(ValueError, match="pos.*out of range"):
        rimg.encode(Image(img.header, img.layers, (tile,), img.graph))
    with pytest.raises(ValueError, match="not finite"):
        rimg.encode(Image({**img.header, "x": float("nan")}, img.layers, img.tiles, img.graph))


def test_write_read_through_a_file(img: Image, tmp_path: Path) -> None:
    path = tmp_path / "chip.rimg"
    rimg.write(img, path)
    assert_same(img, rimg.read(path))
    assert path.read_bytes() == rimg.encode(img)
    rimg.write(img, path)  # overwriting is fine and leaves no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.rimg"]


# ------------------------------------------------------------------------------------------
# Atomic write
# ------------------------------------------------------------------------------------------


def test_write_to_missing_directory_raises_and_leaves_nothing(img: Image, tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "chip.rimg"
    with pytest.raises(BadImage, match=r"chip\.rimg: cannot write image"):
        rimg.write(img, path)
    assert not path.exists() and not path.parent.exists()


def test_write_onto_a_directory_raises_and_cleans_up(img: Image, tmp_path: Path) -> None:
    target = tmp_path / "chip.rimg"
    target.mkdir()
    with pytest.raises(BadImage, match="cannot write image"):
        rimg.write(img, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.rimg"]
    assert target.is_dir()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_write_to_read_only_directory_raises(img: Image, tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(BadImage, match="cannot write image"):
            rimg.write(img, d / "chip.rimg")
        assert list(d.iterdir()) == []
    finally:
        d.chmod(0o700)


def test_failed_write_keeps_the_old_file(
    img: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "chip.rimg"
    path.write_bytes(b"old image")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", broken_fsync)  # the writer images go through
    with pytest.raises(BadImage, match="No space left"):
        rimg.write(img, path)
    assert path.read_bytes() == b"old image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.rimg"]


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadImage, match=r"nope\.rimg: cannot read image"):
        rimg.read(tmp_path / "nope.rimg")


# ------------------------------------------------------------------------------------------
# Corruption: every defect is one BadImage line naming the file
# ------------------------------------------------------------------------------------------


def test_flipped_payload_byte_names_the_section(img: Image, tmp_path: Path) -> None:
    data = rimg.encode(img)
    for (_tag, off, n), label in zip(walk(data), labels(data), strict=True):
        if n == 0:
            continue
        for where in (off + 12, off + 12 + n // 2, off + 12 + n - 1, off + 12 + n + 5):
            broken = bytearray(data)
            broken[where] ^= 0x40
            path = tmp_path / "chip.rimg"
            path.write_bytes(bytes(broken))
            with pytest.raises(BadImage) as e:
                rimg.read(path)
            msg = str(e.value)
            assert msg.startswith(str(path)) and "\n" not in msg
            assert f"checksum mismatch in section {label} " in msg
            assert f"offset {off}" in msg


@pytest.mark.parametrize(
    "cut, pattern",
    [
        (0, r"empty file"),
        (5, r"truncated in the preamble: expected 12 bytes .*, 5 present"),
        (10, r"truncated in the preamble: expected 12 bytes .*, 10 present"),
        (12, r"missing END\. section: the file ends before any section"),
        (17, r"truncated in a section header at offset 12: expected 12 bytes, 5 present"),
        (30, r"truncated in section HEAD at offset 12: expected \d+ bytes .* 6 present"),
    ],
)
def test_truncated_in_the_first_bytes(img: Image, cut: int, pattern: str) -> None:
    bad(rimg.encode(img)[:cut], pattern)


def test_truncated_at_every_section_boundary_and_inside_each(img: Image) -> None:
    data = rimg.encode(img)
    secs = walk(data)
    for (_tag, off, n), label in zip(secs, labels(data), strict=True):
        name = re.escape(label)
        if off > 12:
            bad(data[:off], r"missing END\. section: the file ends after section")
        bad(data[: off + 12 + n // 2], rf"truncated in section {name} at offset {off}")
        need = n + 32
        bad(data[: off + 12 + n], rf"expected {need} bytes \({n}-byte payload .*\), {n} present")
    _, _, n_end = secs[-1]
    bad(data[:-1], rf"truncated in section END\. .*, {n_end + 31} present")


def test_dropped_tile_section_is_detected(img: Image) -> None:
    secs = payloads(rimg.encode(img))
    without = [s for i, s in enumerate(secs) if i != 6]  # a TILE in the middle
    bad(assemble(without), r"END\. declares sections .*\"TILE\":4.*\"TILE\":3")


def test_wrong_magic_version_and_trailing_bytes(img: Image) -> None:
    data = rimg.encode(img)
    bad(b"PK\x03\x04" + data[4:], r"not an rcompile image")
    bad(b"\x89PNG", r"not an rcompile image")
    v3 = data[:8] + struct.pack("<I", 3) + data[12:]
    bad(v3, r"unsupported image version 3; this rcompile reads versions 1, 2")
    v2 = data[:8] + struct.pack("<I", 2) + data[12:]  # a version-1 body: no digit, int8 q
    bad(v2, r"TILE\[0\]: meta must be .*'digit'.* \(version 2\)")
    bad(data + b"\x00garbage", r"8 trailing bytes after the END\. section")


def test_unknown_and_out_of_order_sections(img: Image) -> None:
    data = rimg.encode(img)
    _, off, _ = walk(data)[1]
    bad(data[:off] + b"XXXX" + data[off + 4 :], rf"unknown section tag b'XXXX' at offset {off}")
    secs = payloads(data)
    swapped = [secs[0], secs[1], secs[5], secs[2], secs[3], secs[4]] + secs[6:]
    bad(assemble(swapped), r"section LAYR at offset \d+ is out of order: expected TILE or END\.")
    bad(assemble([secs[1], secs[0]] + secs[2:]), r"section GRPH .* expected HEAD")
    bad(assemble(secs[:-1] + [secs[-1], secs[-1]]), r"trailing bytes after the END\. section")


def replace_payload(data: bytes, index: int, payload: bytes) -> bytes:
    secs = payloads(data)
    secs[index] = (secs[index][0], payload)
    return assemble(secs)


def test_record_json_and_array_table_are_checked(img: Image) -> None:
    data = rimg.encode(img)
    head = b'{"meta": {"header": '  # cut short: valid checksum, broken JSON
    bad(replace_payload(data, 0, struct.pack("<I", len(head)) + head), r"HEAD: JSON not parseable")
    bad(replace_payload(data, 0, struct.pack("<I", 999) + b"{}"), r"HEAD: record header .* overr")
    meta = {"tile": 0, "slices": []}
    levels = np.zeros((8, 8), np.uint8)
    good = _encode_record(meta, [("levels", levels)])
    (j,) = struct.unpack_from("<I", good)
    lie = good[4 : 4 + j].replace(b",64]]", b",65]]")  # nbytes no longer matches the shape
    bad(
        replace_payload(data, 5, struct.pack("<I", j) + lie + good[4 + j :]),
        r"TILE\[0\]: array 'levels': shape \[8, 8\] of \|u1 needs 64 bytes, nbytes says 65",
    )
    bad(replace_payload(data, 5, good + bytes(8)), r"TILE\[0\]: data area is 72 bytes")
    nan = _encode_record({"header": {"x": 1}, "layers": 3, "tiles": 4}, [])
    nan = nan.replace(b'"x":1', b'"x":N')
    bad(replace_payload(data, 0, nan), r"HEAD: JSON not parseable")


def test_levels_dtype_and_shape_are_checked(img: Image) -> None:
    data = rimg.encode(img)
    meta = {"tile": img.tiles[0].tile, "slices": []}
    as_i4 = _encode_record(meta, [("levels", np.zeros((8, 8), np.int32))])
    bad(replace_payload(data, 5, as_i4), r"levels is int32 \[8, 8\]; expected uint8 \[8, 8\]")
    short = _encode_record(meta, [("levels", np.zeros((8, 7), np.uint8))])
    bad(replace_payload(data, 5, short), r"levels is uint8 \[8, 7\]; expected uint8 \[8, 8\]")
    high = _encode_record(meta, [("levels", np.full((8, 8), 16, np.uint8))])
    bad(replace_payload(data, 5, high), r"levels\[0, 0\] = 16 exceeds the top level 15")
    missing = _encode_record(meta, [])
    bad(replace_payload(data, 5, missing), r"TILE\[0\]: missing array 'levels'")


def slice_tile(img: Image, **changes: Any) -> bytes:
    """The image with its first tile replaced by one slice of layer 0 with ``changes``."""
    op = img.layers[0].op
    fields: dict[str, Any] = {
        "rows": np.array([0], np.int32),
        "outs": np.array([0], np.int32),
        "phys_rows": np.array([3], np.int32),
        "pos": np.array([0], np.int32),
        "neg": np.array([1], np.int32),
        "scale": np.array([0.5], np.float32),
        "offset": np.array([0.0], np.float32),
        "layer": 0,
        "group": op.groups - 1,
    }
    fields.update(changes)
    meta = {
        "tile": img.tiles[0].tile,
        "slices": [{"layer": fields["layer"], "group": fields["group"]}],
    }
    arrays = [("levels", img.tiles[0].levels)]
    names = ("rows", "outs", "phys_rows", "pos", "neg", "scale", "offset")
    arrays += [(f"s0.{n}", fields[n]) for n in names]
    return replace_payload(rimg.encode(img), 5, _encode_record(meta, arrays))


def test_slice_indices_are_checked_against_the_geometry(img: Image) -> None:
    rimg.decode(slice_tile(img))  # the unchanged slice is valid
    i32 = np.int32
    bad(slice_tile(img, phys_rows=np.array([8], i32)), r"slice 0 phys_rows\[0\] = 8 .* 0\.\.7")
    bad(slice_tile(img, pos=np.array([-1], i32)), r"slice 0 pos\[0\] = -1 is out of range 0\.\.7")
    bad(slice_tile(img, neg=np.array([8], i32)), r"slice 0 neg\[0\] = 8 is out of range 0\.\.7")
    rows = img.layers[0].op.rows
    bad(slice_tile(img, rows=np.array([rows], i32)), rf"rows\[0\] = {rows} is out of range")
    bad(slice_tile(img, layer=7), r"slice 0: layer 7 out of range 0\.\.2")
    bad(slice_tile(img, group=5), r"slice 0: group 5 out of range")
    bad(slice_tile(img, pos=np.array([0, 2], i32)), r"pos has 2 entries; outs has 1")
    bad(slice_tile(img, pos=np.array([0], np.int64)), r"pos is int64 \[1\]; expected 1-D int32")


def test_tile_order_and_range_are_checked(img: Image) -> None:
    secs = payloads(rimg.encode(img))
    tiles = secs[5:9]
    bad(assemble(secs[:5] + tiles[::-1] + secs[9:]), r"tile \d+ is out of order or out of range")
    meta = {"tile": 6, "slices": []}
    beyond = _encode_record(meta, [("levels", img.tiles[0].levels)])
    bad(replace_payload(assemble(secs), 8, beyond), r"tile 6 .* stay below 6")


# ------------------------------------------------------------------------------------------
# Inspection
# ------------------------------------------------------------------------------------------


def test_describe_and_summary(img: Image) -> None:
    text = rimg.describe(img)
    h = img.header
    assert "chïp-0042" in text and h["model_sha256"][:12] in text
    assert h["faultmap_sha256"][:12] in text and "6 tiles x 8 rows x 8 cols" in text
    for rec in img.layers:
        assert rec.op.node in text
    for t in img.tiles:
        assert f"tile {t.tile}:" in text
    d = rimg.summary_dict(img)
    json.dumps(d)  # JSON-ready
    assert d["totals"]["tiles_used"] == len(img.tiles)
    used = sum(int(rimg.used_mask(t).sum()) for t in img.tiles)
    assert d["totals"]["cells_programmed"] == used
    assert f"{used} cells programmed" in text
    for t, s in zip(img.tiles, d["tiles"], strict=True):
        assert sum(s["level_histogram"]) == s["cells_used"]
        assert len(s["slices"]) == len(t.slices)
    layer_tiles = [{t.tile for t in img.tiles for s in t.slices if s.layer == i} for i in range(3)]
    assert [x["tiles"] for x in d["layers"]] == [len(s) for s in layer_tiles]


# ------------------------------------------------------------------------------------------
# The standalone reader of the docs
# ------------------------------------------------------------------------------------------


def test_docs_carry_the_standalone_example_verbatim() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert EXAMPLE.read_text(encoding="utf-8") in blocks


def test_standalone_reader_programs_every_tile(img: Image, tmp_path: Path) -> None:
    path = tmp_path / "chip.rimg"
    rimg.write(img, path)
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    expected = [f"chip {img.header['chip_id']}, 16 levels"]
    expected += [f"tile {t.tile}: 64 cells, level sum {int(t.levels.sum())}" for t in img.tiles]
    expected += [f"end {len(img.tiles)} tiles"]
    assert run.stdout.splitlines() == expected

    data = bytearray(path.read_bytes())
    _, off, _ = walk(bytes(data))[6]
    data[off + 20] ^= 1
    path.write_bytes(bytes(data))
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), str(path)], capture_output=True, text=True, check=False
    )
    assert run.returncode != 0 and "checksum mismatch" in run.stderr


def test_layer_records_are_checked(img: Image) -> None:
    data = rimg.encode(img)
    rec = img.layers[0]
    op = {**rec.op.to_dict(), "shape": []}
    arrays = [("bias", rec.bias), ("q", rec.q), ("scale", rec.scale)]
    payload = _encode_record({"index": 0, "op": op}, arrays)
    bad(replace_payload(data, 2, payload), r"layer 0 .*: weight shape \[\] does not fit layout")
    payload = _encode_record({"index": 1, "op": rec.op.to_dict()}, arrays)
    bad(replace_payload(data, 2, payload), r"LAYR\[0\]: meta index 1, expected 0")
    q = rec.q.astype(np.int16)
    payload = _encode_record({"index": 0, "op": rec.op.to_dict()}, arrays[:1] + [("q", q)])
    bad(replace_payload(data, 2, payload), r"LAYR\[0\]: missing array 'scale'")
    payload = _encode_record({"index": 0, "op": rec.op.to_dict()}, [*arrays[::2], ("q", q)])
    bad(replace_payload(data, 2, payload), r"layer 0 .* q is int16 .*; expected int8")
