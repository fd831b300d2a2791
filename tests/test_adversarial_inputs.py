"""An adversarial corpus of broken input files, run through the real commands in-process.

Every case writes one broken file next to good ones (a tiny model built in code, its fault
map, data, device file, plan and image, made once per module) and runs one ``rcompile``
command on it through the console entry point :func:`rcompile.cli.main` inside click's
``CliRunner`` isolation. Each must end the way ``docs/limits.md`` promises: a non-zero exit,
exactly one line on stderr that names the broken file, no traceback, and no output file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import conv_bn_gemm, rcompile

ROWS, COLS, TILES = 64, 32, 10
N = 12  # samples in the data files


# ------------------------------------------------------------------------------------------
# Running a command as a user does, in-process
# ------------------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    crash: BaseException | None


def run(*args: str) -> Run:
    """``rcompile ARGS`` through the console entry point (:func:`tests.conftest.rcompile`); a
    Python exception escaping it is a crash."""
    try:
        r = rcompile(*args)
    except BaseException as e:  # noqa: BLE001 - any exception past the entry point is the defect
        return Run(-1, "", "", e)
    return Run(r.returncode, r.stdout, r.stderr, None)


# ------------------------------------------------------------------------------------------
# Good inputs, made once
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    dir: Path
    model: str
    faultmap: str
    data: str
    image: str
    plan: str
    device: str


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    d = tmp_path_factory.mktemp("good")
    (d / "w.bin").write_bytes(bytes(16))  # a short external weight file
    model = str(d / "model.onnx")
    onnx.save(conv_bn_gemm(), model)
    fm = str(d / "chip.npz")
    r = run("faultmap", "synth", "--tiles", str(TILES), "--rows", str(ROWS), "--cols", str(COLS),
            "--rate", "0.02", "--seed", "3", "-o", fm)
    assert r.code == 0, r.stderr
    rng = np.random.default_rng(0)
    data = str(d / "data.npz")
    np.savez(data, x=rng.normal(size=(N, 4, 6, 6)).astype(np.float32),
             labels=rng.integers(0, 5, N))
    device = str(d / "dev.toml")
    Path(device).write_text(f'base = "ideal"\ntile_rows = {ROWS}\ntile_cols = {COLS}\n')
    plan = str(d / "model.rplan")
    r = run("plan", model, "--rows", str(ROWS), "--cols", str(COLS), "-o", plan)
    assert r.code == 0, r.stderr
    image = str(d / "chip.rimg")
    r = run("build", model, "--faultmap", fm, "--strategy", "two-column", "-o", image)
    assert r.code == 0, r.stderr
    r = run("verify", image, "--faultmap", fm, "--data", data)
    assert r.code == 0, r.stderr
    return Good(d, model, fm, data, image, plan, device)


# ------------------------------------------------------------------------------------------
# File crafting
# ------------------------------------------------------------------------------------------


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=True)
    return buf.getvalue()


def npz(path: Path, members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> None:
    path.write_bytes(zipped(members, method))


def npy_lying(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """An ``.npy`` whose header declares ``shape`` but whose data are ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def good_faults() -> np.ndarray:
    f = np.zeros((TILES, ROWS, COLS), np.uint8)
    f[0, 0, :4] = [1, 2, 1, 2]
    return f


def faultmap_members(**over: Any) -> list[tuple[str, bytes]]:
    arrays: dict[str, Any] = {"faults": good_faults(), "chip_id": np.array("adv")}
    arrays.update(over)
    return [(f"{k}.npy", npy(np.asarray(v))) for k, v in arrays.items() if v is not None]


def stuck_g(value: float, where: str = "stuck") -> np.ndarray:
    f = good_faults()
    g = np.full(f.shape, np.nan, np.float32)
    g[f > 0] = 50.0
    if where == "stuck":
        g[0, 0, 0] = value
    else:
        g[1, 1, 1] = value
    return g


# --- images: sections and records, rewritten with valid checksums -------------------------


def split(raw: bytes) -> tuple[bytes, list[list[Any]]]:
    pos, secs = 12, []
    while pos < len(raw):
        tag, n = struct.unpack_from("<4sQ", raw, pos)
        secs.append([tag, bytearray(raw[pos + 12: pos + 12 + n])])
        pos += 12 + n + 32
    return raw[:12], secs


def join(pre: bytes, secs: list[list[Any]]) -> bytes:
    out = [pre]
    for tag, p in secs:
        out.append(struct.pack("<4sQ", tag, len(p)) + bytes(p) + hashlib.sha256(p).digest())
    return b"".join(out)


def record(payload: bytearray) -> tuple[dict[str, Any], int]:
    (j,) = struct.unpack_from("<I", payload, 0)
    return json.loads(bytes(payload[4: 4 + j])), -(-(4 + j) // 8) * 8


def with_head_json(payload: bytearray, head: bytes) -> bytearray:
    _, base = record(payload)
    data = payload[base:]
    pad = -(-(4 + len(head)) // 8) * 8 - 4 - len(head)
    return bytearray(struct.pack("<I", len(head)) + head + bytes(pad) + data)


def set_value(payload: bytearray, array: str, value: float) -> None:
    head, base = record(payload)
    entry = next(e for e in head["arrays"] if e[0] == array)
    view = np.frombuffer(payload, dtype=np.dtype(entry[1]), count=1, offset=base + entry[3])
    view.setflags(write=True)
    view[0] = value


def image_edit(good_image: str, edit: Callable[[list[list[Any]]], None]) -> bytes:
    pre, secs = split(Path(good_image).read_bytes())
    edit(secs)
    return join(pre, secs)


def first(secs: list[list[Any]], tag: bytes) -> bytearray:
    sec: bytearray = next(s for s in secs if s[0] == tag)[1]
    return sec


def edit_head(change: Callable[[dict[str, Any]], None]) -> Callable[[list[list[Any]]], None]:
    def edit(secs: list[list[Any]]) -> None:
        p = first(secs, b"HEAD")
        head, _ = record(p)
        change(head)
        raw = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
        secs[0][1] = with_head_json(p, raw)
    return edit


def head_json(raw: bytes) -> Callable[[list[list[Any]]], None]:
    def edit(secs: list[list[Any]]) -> None:
        secs[0][1] = with_head_json(first(secs, b"HEAD"), raw)
    return edit


def set_array(tag: bytes, array: str, value: float) -> Callable[[list[list[Any]]], None]:
    def edit(secs: list[list[Any]]) -> None:
        set_value(first(secs, tag), array, value)
    return edit


def flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at % len(b)] ^= 0x10
    return bytes(b)


# --- plans ---------------------------------------------------------------------------------


def plan_members(good_plan: str) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(good_plan) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def plan_with(good_plan: str, **change: bytes | None) -> list[tuple[str, bytes]]:
    out = []
    for name, data in plan_members(good_plan):
        key = name.removesuffix(".npy")
        if key in change:
            new = change[key]
            if new is not None:
                out.append((name, new))
        else:
            out.append((name, data))
    return out


def plan_meta(good_plan: str) -> dict[str, Any]:
    raw = dict(plan_members(good_plan))["meta.npy"]
    arr = np.lib.format.read_array(io.BytesIO(raw))
    meta: dict[str, Any] = json.loads(arr.tobytes())
    return meta


def meta_npy(meta: Any) -> bytes:
    return npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))


# --- models --------------------------------------------------------------------------------


def model_with(change: Callable[[onnx.ModelProto], None]) -> bytes:
    m = conv_bn_gemm()
    change(m)
    return m.SerializeToString()


def nan_weight(m: onnx.ModelProto) -> None:
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w.flat[0] = np.nan
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))


def sparse(dims: list[int], indices: list[int]) -> Callable[[onnx.ModelProto], None]:
    def change(m: onnx.ModelProto) -> None:
        w = m.graph.initializer[0]
        name = w.name
        del m.graph.initializer[0]
        vals = numpy_helper.from_array(np.ones(len(indices), np.float32), name)
        idx = numpy_helper.from_array(np.array(indices, np.int64), name + "_idx")
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(vals, idx, dims))
    return change


def external(m: onnx.ModelProto) -> None:
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = TensorProto.EXTERNAL
    e = w.external_data.add()
    e.key, e.value = "location", "missing-weights.bin"


def external_to(n: int, location: str) -> Callable[[onnx.ModelProto], None]:
    """The first weight moved to the external file ``location``, declared to hold ``n``
    floats."""
    def change(m: onnx.ModelProto) -> None:
        w = m.graph.initializer[0]
        w.ClearField("raw_data")
        del w.float_data[:]
        del w.dims[:]
        w.dims.extend([n])
        w.data_location = TensorProto.EXTERNAL
        e = w.external_data.add()
        e.key, e.value = "location", location
    return change


def unknown_op(m: onnx.ModelProto) -> None:
    m.graph.node[2].op_type = "NoSuchOp"


def weight_as_input(m: onnx.ModelProto) -> None:
    i = next(i for i, t in enumerate(m.graph.initializer) if t.name == "wg")
    w = m.graph.initializer[i]
    m.graph.input.append(helper.make_tensor_value_info(w.name, TensorProto.FLOAT, list(w.dims)))
    del m.graph.initializer[i]


def dims_lie(m: onnx.ModelProto) -> None:
    w = m.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([1 << 20, 1 << 20, 3, 3])


def constant_lie(m: onnx.ModelProto) -> None:
    t = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    del t.dims[:]
    t.dims.extend([1 << 30, 1 << 30])
    m.graph.node.insert(0, helper.make_node("Constant", [], ["cst"], value=t))
    m.graph.node.append(helper.make_node("Identity", ["cst"], ["unused"]))


def relu_model() -> bytes:
    """Another valid model: one Relu."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph).SerializeToString()


def no_nodes(m: onnx.ModelProto) -> None:
    del m.graph.node[:]


# ------------------------------------------------------------------------------------------
# The corpus
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    suffix: str
    content: Callable[[Good], bytes]
    """The broken file's bytes, made from the good inputs."""
    command: Callable[[Good, str, str], list[str]]
    """Arguments of the command, given the good inputs, the broken file and an output path."""


def build_fm(g: Good, bad: str, out: str) -> list[str]:
    return ["build", g.model, "--faultmap", bad, "--strategy", "two-column", "-o", out]


def show_fm(g: Good, bad: str, out: str) -> list[str]:
    return ["faultmap", "show", bad, "--png", out]


def verify_fm(g: Good, bad: str, out: str) -> list[str]:
    return ["verify", g.image, "--faultmap", bad, "--data", g.data]


def import_csv(g: Good, bad: str, out: str) -> list[str]:
    return ["faultmap", "import", bad, "--tiles", "2", "--rows", "8", "--cols", "8", "-o", out]


def import_huge(g: Good, bad: str, out: str) -> list[str]:
    return ["faultmap", "import", bad, "--tiles", "1000000", "--rows", "1024", "--cols", "1024",
            "-o", out]


def verify_data(g: Good, bad: str, out: str) -> list[str]:
    return ["verify", g.image, "--faultmap", g.faultmap, "--data", bad]


def sweep_data(g: Good, bad: str, out: str) -> list[str]:
    return ["sweep", g.model, "--data", bad, "--rates", "0.01", "--seeds", "1", "--rows",
            str(ROWS), "--cols", str(COLS), "--strategies", "two-column", "--plot", out]


def plan_calib(g: Good, bad: str, out: str) -> list[str]:
    return ["plan", g.model, "--calib", bad, "--rows", str(ROWS), "--cols", str(COLS), "-o", out]


def synth_like(g: Good, bad: str, out: str) -> list[str]:
    return ["faultmap", "synth", "--like", bad, "--rate", "0.1", "-o", out]


def build_calib(g: Good, bad: str, out: str) -> list[str]:
    return ["build", g.model, "--faultmap", g.faultmap, "--calib", bad, "-o", out]


def build_device(g: Good, bad: str, out: str) -> list[str]:
    return ["build", g.model, "--faultmap", g.faultmap, "--device", bad, "-o", out]


def verify_device(g: Good, bad: str, out: str) -> list[str]:
    return ["verify", g.image, "--faultmap", g.faultmap, "--data", g.data, "--device", bad]


def build_plan(g: Good, bad: str, out: str) -> list[str]:
    return ["build", g.model, "--faultmap", g.faultmap, "--plan", bad, "-o", out]


def verify_image(g: Good, bad: str, out: str) -> list[str]:
    return ["verify", bad, "--faultmap", g.faultmap, "--data", g.data]


def inspect_image(g: Good, bad: str, out: str) -> list[str]:
    return ["inspect", bad]


def build_model(g: Good, bad: str, out: str) -> list[str]:
    return ["build", bad, "--faultmap", g.faultmap, "-o", out]


def plan_model(g: Good, bad: str, out: str) -> list[str]:
    return ["plan", bad, "-o", out]


def zipped(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression=method) as zf:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are the point
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def fm_bytes(**over: Any) -> Callable[[Good], bytes]:
    return lambda g: zipped(faultmap_members(**over))


def fm_raw(members: Callable[[], list[tuple[str, bytes]]],
           method: int = zipfile.ZIP_DEFLATED) -> Callable[[Good], bytes]:
    return lambda g: zipped(members(), method)


def trailing_member() -> list[tuple[str, bytes]]:
    return [("faults.npy", npy(good_faults()) + b"extra")]


def lying_header() -> list[tuple[str, bytes]]:
    return [("faults.npy", npy_lying((TILES, ROWS, COLS), "|u1", b"\x00" * 100))]


def zeros_zip(name: str, header: bytes, mib: int, with_crc: bool = True) -> bytes:
    """A real zip whose one deflated member is ``header`` and ``mib`` MiB of zeros.

    Made without ever holding the zeros: after a full flush deflate restarts, so every MiB of
    zeros compresses to the same bytes, computed once and repeated. ``with_crc=False`` leaves the
    CRC at 0 (a reader that refuses the member before reading it never sees the difference).
    """
    zero = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    body = head + block * mib + c.flush()
    crc = zlib.crc32(header) if with_crc else 0
    for _ in range(mib if with_crc else 0):
        crc = zlib.crc32(zero, crc)
    size, raw = len(header) + mib * len(zero), name.encode()
    fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(body), size)
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(raw), 0) + raw
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields
               + struct.pack("<HHHHHII", len(raw), 0, 0, 0, 0, 0, 0) + raw)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central),
                                         len(local) + len(body), 0)
    return local + body + central + end


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@functools.cache
def bomb_bytes() -> bytes:
    # 256 MiB of declared, real zeros: deflate packs them into ~255 KB.
    return zeros_zip("faults.npy", npy_header((1024, 512, 512), "|u1"), 256)


def duplicate_faults() -> list[tuple[str, bytes]]:
    # The tester's map first, an all-healthy copy second: numpy would pick the second.
    healthy = np.zeros((TILES, ROWS, COLS), np.uint8)
    return [("faults.npy", npy(good_faults())), ("faults.npy", npy(healthy))]


def npy_v3() -> list[tuple[str, bytes]]:
    raw = npy(good_faults())
    return [("faults.npy", raw[:6] + b"\x03\x00" + struct.pack("<I", 0) + raw[10:])]


def huge_header() -> list[tuple[str, bytes]]:
    return [("faults.npy", b"\x93NUMPY\x02\x00" + struct.pack("<I", 10**8) + b"{" * 64)]


def fm_bytes_id() -> Callable[[Good], bytes]:
    return lambda g: zipped(faultmap_members(chip_id=np.array(b"\xff\xfe")))


def good_fm_bytes(g: Good) -> bytes:
    return Path(g.faultmap).read_bytes()


FAULTMAP: list[Case] = [
    Case("fm-empty", ".npz", lambda g: b"", build_fm),
    Case("fm-garbage", ".npz", lambda g: b"this is no zip archive at all\n" * 4, build_fm),
    *(Case(f"fm-truncated-{f}", ".npz",
           lambda g, f=f: good_fm_bytes(g)[: int(len(good_fm_bytes(g)) * f)], build_fm)
      for f in (0.01, 0.1, 0.3, 0.6, 0.9)),
    Case("fm-truncated-tail", ".npz", lambda g: good_fm_bytes(g)[:-10], build_fm),
    Case("fm-duplicate-faults", ".npz", fm_raw(duplicate_faults), build_fm),
    Case("fm-duplicate-faults-verify", ".npz", fm_raw(duplicate_faults), verify_fm),
    Case("fm-duplicate-chip-id", ".npz",
         fm_raw(lambda: faultmap_members() + [("chip_id.npy", npy(np.array("other")))]),
         build_fm),
    Case("fm-unknown-member", ".npz", fm_bytes(extra=np.zeros(3)), build_fm),
    Case("fm-not-npy-member", ".npz",
         fm_raw(lambda: faultmap_members() + [("notes.txt", b"hello")]), build_fm),
    Case("fm-directory-member", ".npz",
         fm_raw(lambda: faultmap_members() + [("sub/", b"")]), build_fm),
    Case("fm-no-faults", ".npz", fm_bytes(faults=None), build_fm),
    Case("fm-faults-int64", ".npz", fm_bytes(faults=good_faults().astype(np.int64)), build_fm),
    Case("fm-faults-2d", ".npz", fm_bytes(faults=good_faults()[0]), build_fm),
    Case("fm-faults-4d", ".npz", fm_bytes(faults=good_faults()[None]), build_fm),
    Case("fm-odd-cols", ".npz", fm_bytes(faults=good_faults()[:, :, :-1]), build_fm),
    Case("fm-empty-dim", ".npz", fm_bytes(faults=good_faults()[:0]), build_fm),
    Case("fm-code-3", ".npz", fm_bytes(faults=good_faults() + 3), build_fm),
    Case("fm-bomb-256MiB", ".npz", lambda g: bomb_bytes(), build_fm),
    Case("fm-bomb-show", ".npz", lambda g: bomb_bytes(), show_fm),
    Case("fm-header-lies", ".npz", fm_raw(lying_header), build_fm),
    Case("fm-header-lies-stored", ".npz", fm_raw(lying_header, zipfile.ZIP_STORED), show_fm),
    Case("fm-trailing-bytes", ".npz", fm_raw(trailing_member), build_fm),
    Case("fm-npy-v3", ".npz", fm_raw(npy_v3), build_fm),
    Case("fm-npy-huge-header", ".npz", fm_raw(huge_header), build_fm),
    Case("fm-bzip2", ".npz", fm_raw(faultmap_members, zipfile.ZIP_BZIP2), build_fm),
    Case("fm-pickled", ".npz", fm_bytes(stuck_g=np.array([{"a": 1}], dtype=object)), build_fm),
    Case("fm-record-dtype", ".npz",
         fm_bytes(faults=np.zeros(3, dtype=[("a", "u1"), ("b", "f4")])), build_fm),
    Case("fm-stuck-g-float64", ".npz", fm_bytes(stuck_g=stuck_g(50.0).astype(np.float64)),
         build_fm),
    Case("fm-stuck-g-on-healthy", ".npz", fm_bytes(stuck_g=stuck_g(5.0, "healthy")), build_fm),
    Case("fm-stuck-g-nan", ".npz", fm_bytes(stuck_g=stuck_g(np.nan)), build_fm),
    Case("fm-stuck-g-inf", ".npz", fm_bytes(stuck_g=stuck_g(np.inf)), verify_fm),
    Case("fm-stuck-g-negative", ".npz", fm_bytes(stuck_g=stuck_g(-1.0)), build_fm),
    Case("fm-g-min-nan", ".npz", fm_bytes(g_min=np.float64(np.nan)), build_fm),
    Case("fm-g-max-inf", ".npz", fm_bytes(g_max=np.float64(np.inf)), build_fm),
    Case("fm-g-min-above-g-max", ".npz",
         fm_bytes(g_min=np.float64(50.0), g_max=np.float64(10.0)), build_fm),
    Case("fm-g-max-below-device", ".npz", fm_bytes(g_max=np.float64(0.5)), build_fm),
    Case("fm-levels-1", ".npz", fm_bytes(levels=np.int64(1)), build_fm),
    Case("fm-levels-1000", ".npz", fm_bytes(levels=np.int64(1000)), build_fm),
    Case("fm-levels-float", ".npz", fm_bytes(levels=np.float64(16.0)), build_fm),
    Case("fm-levels-array", ".npz", fm_bytes(levels=np.array([16, 16])), build_fm),
    Case("fm-chip-id-empty", ".npz", fm_bytes(chip_id=np.array("")), build_fm),
    Case("fm-chip-id-two-lines", ".npz", fm_bytes(chip_id=np.array("a\nb")), show_fm),
    Case("fm-chip-id-not-utf8", ".npz", fm_bytes_id(), build_fm),
    Case("fm-chip-id-number", ".npz", fm_bytes(chip_id=np.int64(7)), build_fm),
    Case("fm-too-small-for-model", ".npz",
         fm_bytes(faults=np.zeros((1, ROWS, COLS), np.uint8)), build_fm),
]


def csv_case(id: str, body: bytes, command: Callable[[Good, str, str], list[str]] = import_csv
             ) -> Case:
    return Case(id, ".csv", lambda g: body, command)


HEAD = b"tile,row,col,state\n"
CSV: list[Case] = [
    csv_case("csv-empty", b""),
    csv_case("csv-not-utf8", HEAD + b"0,0,0,\xff\xfe\n"),
    csv_case("csv-latin1-header", b"tile,r\xf6w,col,state\n"),
    csv_case("csv-bad-header", b"a,b,c,d\n0,0,0,1\n"),
    csv_case("csv-only-comments", b"# nothing here\n\n"),
    csv_case("csv-three-fields", HEAD + b"0,0,0\n"),
    csv_case("csv-five-fields", HEAD + b"0,0,0,1,1\n"),
    csv_case("csv-tile-out-of-range", HEAD + b"2,0,0,1\n"),
    csv_case("csv-negative-row", HEAD + b"0,-1,0,1\n"),
    csv_case("csv-col-not-integer", HEAD + b"0,0,x,1\n"),
    csv_case("csv-unicode-digit", HEAD + "0,0,\u0663,1\n".encode()),
    csv_case("csv-underscore-number", HEAD + b"0,0,1_0,1\n"),
    csv_case("csv-huge-number", HEAD + b"0,0," + b"9" * 5000 + b",1\n"),
    csv_case("csv-bad-state", HEAD + b"0,0,0,stuck\n"),
    csv_case("csv-conflicting-duplicate", HEAD + b"0,0,0,1\n0,0,0,2\n"),
    csv_case("csv-nul-byte", HEAD + b"0,0,0,1\x00\n"),
    csv_case("csv-huge-field", HEAD + b'"' + b"a" * 200_000 + b'",0,0,1\n'),
    csv_case("csv-huge-geometry", HEAD + b"0,0,0,1\n", import_huge),
]


def data_bytes(**arrays: Any) -> Callable[[Good], bytes]:
    def make(g: Good) -> bytes:
        rng = np.random.default_rng(1)
        base: dict[str, Any] = {"x": rng.normal(size=(N, 4, 6, 6)).astype(np.float32),
                                "labels": np.arange(N) % 5}
        base.update(arrays)
        return zipped([(f"{k}.npy", npy(np.asarray(v))) for k, v in base.items()
                       if v is not None])
    return make


def data_raw(members: Callable[[], list[tuple[str, bytes]]]) -> Callable[[Good], bytes]:
    return lambda g: zipped(members())


def x_nan() -> np.ndarray:
    a = np.zeros((N, 4, 6, 6), np.float32)
    a[3, 0, 0, 0] = np.nan
    return a


DATA: list[Case] = [
    Case("data-empty", ".npz", lambda g: b"", verify_data),
    Case("data-garbage", ".npz", lambda g: b"\x00" * 64, verify_data),
    Case("data-truncated", ".npz", lambda g: Path(g.data).read_bytes()[:300], verify_data),
    Case("data-missing-input", ".npz", data_bytes(x=None), verify_data),
    Case("data-extra-array", ".npz", data_bytes(y=np.zeros(N)), verify_data),
    Case("data-wrong-rank", ".npz", data_bytes(x=np.zeros((N, 4, 6), np.float32)), verify_data),
    Case("data-wrong-dim", ".npz", data_bytes(x=np.zeros((N, 3, 6, 6), np.float32)),
         verify_data),
    Case("data-int-input", ".npz", data_bytes(x=np.zeros((N, 4, 6, 6), np.int32)), verify_data),
    Case("data-scalar-input", ".npz", data_bytes(x=np.float32(1)), verify_data),
    Case("data-nan", ".npz", data_bytes(x=x_nan()), verify_data),
    Case("data-inf", ".npz", data_bytes(x=np.full((N, 4, 6, 6), np.inf, np.float32)),
         verify_data),
    Case("data-zero-samples", ".npz", data_bytes(x=np.zeros((0, 4, 6, 6), np.float32),
                                                  labels=np.zeros(0, np.int64)), verify_data),
    Case("data-labels-float", ".npz", data_bytes(labels=np.zeros(N, np.float32)), verify_data),
    Case("data-labels-bool", ".npz", data_bytes(labels=np.zeros(N, bool)), verify_data),
    Case("data-labels-negative", ".npz", data_bytes(labels=-np.ones(N, np.int64)), verify_data),
    Case("data-labels-2**64-1", ".npz",
         data_bytes(labels=np.full(N, 2**64 - 1, np.uint64)), verify_data),
    Case("data-labels-2d", ".npz", data_bytes(labels=np.zeros((N, 1), np.int64)), verify_data),
    Case("data-labels-count", ".npz", data_bytes(labels=np.zeros(N + 1, np.int64)), verify_data),
    Case("data-labels-beyond-classes", ".npz",
         data_bytes(labels=np.full(N, 5, np.int64)), verify_data),
    Case("data-object", ".npz", data_bytes(labels=np.array([None] * N, dtype=object)),
         verify_data),
    Case("data-duplicate-x", ".npz",
         data_raw(lambda: [("x.npy", npy(np.zeros((N, 4, 6, 6), np.float32))),
                           ("x.npy", npy(x_nan()))]), verify_data),
    Case("data-bomb", ".npz",
         lambda g: zeros_zip("x.npy", npy_header((1 << 16, 4, 6, 6 * 128), "<f4"), 1153,
                                   with_crc=False),
         verify_data),
    Case("data-key-with-newline", ".npz",
         data_raw(lambda: [("x\nevil.npy", npy(np.zeros((N, 4, 6, 6), np.float32)))]),
         verify_data),
    Case("data-bad-npy-key-newline", ".npz",
         data_raw(lambda: [("x\nevil.npy", b"\x93NUMPY\x09\x00")]), verify_data),
    Case("data-header-lies", ".npz",
         data_raw(lambda: [("x.npy", npy_lying((N, 4, 6, 6), "<f4", b"\x00" * 16))]),
         verify_data),
    Case("sweep-data-duplicate", ".npz",
         data_raw(lambda: [("x.npy", npy(np.zeros((N, 4, 6, 6), np.float32)))] * 2), sweep_data),
    Case("sweep-data-labels-2**64-1", ".npz",
         data_bytes(labels=np.full(N, 2**64 - 1, np.uint64)), sweep_data),
    Case("plan-calib-nan", ".npz", data_bytes(x=x_nan()), plan_calib),
    Case("calib-nan", ".npz", data_bytes(x=x_nan()), build_calib),
    Case("calib-wrong-dim", ".npz", data_bytes(x=np.zeros((N, 4, 5, 6), np.float32)),
         build_calib),
    Case("calib-garbage", ".npz", lambda g: b"PK\x03\x04 broken", build_calib),
    Case("calib-duplicate", ".npz",
         data_raw(lambda: [("x.npy", npy(np.zeros((N, 4, 6, 6), np.float32)))] * 2),
         build_calib),
]


def toml(text: str | bytes, command: Callable[[Good, str, str], list[str]] = build_device,
         ) -> Callable[[Good], bytes]:
    return lambda g: text if isinstance(text, bytes) else text.encode()


BASE = f'base = "ideal"\ntile_rows = {ROWS}\ntile_cols = {COLS}\n'
DEVICE: list[Case] = [
    Case("dev-not-utf8", ".toml", toml(BASE.encode() + b'name = "\xff\xfe"\n'), build_device),
    Case("dev-not-utf8-verify", ".toml", toml(b"\xff" + BASE.encode()), verify_device),
    Case("dev-latin1-comment", ".toml", toml(BASE.encode() + b"# r\xe9glage\n"), build_device),
    Case("dev-invalid-toml", ".toml", toml("tile_rows = = 3\n"), build_device),
    Case("dev-empty", ".toml", toml(""), build_device),
    Case("dev-unknown-key", ".toml", toml(BASE + "colour = 1\n"), build_device),
    Case("dev-unknown-section-key", ".toml", toml(BASE + "[cell]\nlevelz = 4\n"), build_device),
    Case("dev-levels-1", ".toml", toml(BASE + "[cell]\nlevels = 1\n"), build_device),
    Case("dev-levels-string", ".toml", toml(BASE + '[cell]\nlevels = "16"\n'), build_device),
    Case("dev-levels-bool", ".toml", toml(BASE + "[cell]\nlevels = true\n"), build_device),
    Case("dev-g-nan", ".toml", toml(BASE + "[cell]\ng_max_us = nan\n"), build_device),
    Case("dev-g-inf", ".toml", toml(BASE + "[cell]\ng_max_us = inf\n"), verify_device),
    Case("dev-g-min-above-max", ".toml",
         toml(BASE + "[cell]\ng_min_us = 200.0\ng_max_us = 100.0\n"), build_device),
    Case("dev-odd-cols", ".toml", toml('base = "ideal"\ntile_rows = 64\ntile_cols = 33\n'),
         build_device),
    Case("dev-tiles-differ", ".toml", toml('base = "ideal"\ntile_rows = 128\ntile_cols = 128\n'),
         build_device),
    Case("dev-levels-differ-verify", ".toml", toml(BASE + "[cell]\nlevels = 8\n"),
         verify_device),
    Case("dev-missing-fields", ".toml", toml("tile_rows = 64\ntile_cols = 32\n"), build_device),
    Case("dev-unknown-base", ".toml", toml('base = "nosuch"\n'), build_device),
    Case("dev-section-not-table", ".toml", toml(BASE.replace("\n", "\n", 1) + "cell = 3\n"),
         build_device),
    Case("dev-negative-noise", ".toml", toml(BASE + "[read]\nnoise_rel = -0.1\n"), build_device),
    Case("dev-nested-deep", ".toml", toml("x = " + "[" * 50_000 + "]" * 50_000 + "\n"),
         build_device),
    Case("dev-too-large", ".toml", toml(BASE + "# pad\n" * 200_000), build_device),
    Case("dev-name-two-lines", ".toml", toml(BASE + 'name = "a\\nb"\n[cell]\nlevels = 8\n'),
         verify_device),
]


def plan_case(id: str, change: Callable[[Good], list[tuple[str, bytes]]]) -> Case:
    return Case(id, ".rplan", lambda g: zipped(change(g), zipfile.ZIP_STORED), build_plan)


def meta_change(change: Callable[[dict[str, Any]], Any]) -> Callable[[Good], list[Any]]:
    def make(g: Good) -> list[tuple[str, bytes]]:
        meta = plan_meta(g.plan)
        new = change(meta)
        return plan_with(g.plan, meta=meta_npy(meta if new is None else new))
    return make


def scale_nan(g: Good) -> list[tuple[str, bytes]]:
    raw = dict(plan_members(g.plan))["L0.scale.npy"]
    a = np.lib.format.read_array(io.BytesIO(raw)).copy()
    a.flat[0] = np.nan
    return plan_with(g.plan, **{"L0.scale": npy(a)})


def plan_array(key: str, a: np.ndarray) -> Callable[[Good], list[tuple[str, bytes]]]:
    return lambda g: plan_with(g.plan, **{key: npy(a)})


def set_key(k: str, v: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.__setitem__(k, v)


def set_device(m: dict[str, Any]) -> None:
    m["device"]["levels"] = 1


PLAN: list[Case] = [
    Case("plan-empty", ".rplan", lambda g: b"", build_plan),
    Case("plan-garbage", ".rplan", lambda g: b"\x89PNG not a plan", build_plan),
    Case("plan-truncated", ".rplan", lambda g: Path(g.plan).read_bytes()[:1000], build_plan),
    Case("plan-bitflip", ".rplan", lambda g: flip(Path(g.plan).read_bytes(), 5000), build_plan),
    plan_case("plan-duplicate-meta",
              lambda g: plan_members(g.plan) + [("meta.npy", meta_npy({"format": "x"}))]),
    plan_case("plan-unknown-member", lambda g: plan_members(g.plan) + [("evil.npy", npy(
        np.zeros(3)))]),
    plan_case("plan-no-meta", lambda g: plan_with(g.plan, meta=None)),
    plan_case("plan-no-model", lambda g: plan_with(g.plan, model=None)),
    plan_case("plan-meta-not-json", lambda g: plan_with(
        g.plan, meta=npy(np.frombuffer(b"{nope", np.uint8)))),
    plan_case("plan-meta-not-utf8", lambda g: plan_with(
        g.plan, meta=npy(np.frombuffer(b'{"a": "\xff"}', np.uint8)))),
    plan_case("plan-meta-nested", lambda g: plan_with(
        g.plan, meta=npy(np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8)))),
    plan_case("plan-meta-list", meta_change(lambda m: [m])),
    plan_case("plan-meta-format", meta_change(set_key("format", "other"))),
    plan_case("plan-meta-version", meta_change(set_key("version", 99))),
    plan_case("plan-meta-compiler", meta_change(set_key("compiler_version", "0.0.0"))),
    plan_case("plan-meta-layers", meta_change(set_key("layers", 7))),
    plan_case("plan-meta-blocks", meta_change(set_key("blocks", 10**9))),
    plan_case("plan-meta-device", meta_change(set_device)),
    plan_case("plan-meta-ops", meta_change(set_key("ops", [{"node": 1}]))),
    plan_case("plan-meta-ops-not-list", meta_change(set_key("ops", 3))),
    plan_case("plan-scale-nan", scale_nan),
    plan_case("plan-q-wrong-dtype", plan_array("L0.q", np.zeros((1, 36, 8), np.float32))),
    plan_case("plan-q-wrong-shape", plan_array("L0.q", np.zeros((1, 3, 8), np.int8))),
    plan_case("plan-q-int16-for-16-levels", plan_array("L0.q", np.zeros((1, 36, 8), np.int16))),
    plan_case("plan-block-out-of-range",
              plan_array("blocks.row_ix", np.full(1000, 10**6, np.int32))),
    plan_case("plan-bins-gap", plan_array("blocks.bin", np.full(1, 5, np.int32))),
    plan_case("plan-model-empty", lambda g: plan_with(g.plan, model=npy(np.zeros(0, np.uint8)))),
    plan_case("plan-model-other-graph", lambda g: plan_with(g.plan, model=npy(np.frombuffer(
        relu_model(), np.uint8)))),
    plan_case("plan-float-wrong-shape", plan_array("L0.float", np.zeros((1, 3, 8), np.float32))),
    plan_case("plan-meta-digital", meta_change(set_key("digital", [[1]]))),
    plan_case("plan-meta-calibrated", meta_change(set_key("calibrated", True))),
    plan_case("plan-model-garbage", lambda g: plan_with(
        g.plan, model=npy(np.frombuffer(b"\xff" * 64, np.uint8)))),
    plan_case("plan-bomb", lambda g: [(n, d) for n, d in plan_members(g.plan)] + [
        ("L0.power.npy", npy_lying((1 << 40,), "<f4", b""))]),
]


def img(edit: Callable[[list[list[Any]]], None],
        command: Callable[[Good, str, str], list[str]] = verify_image) -> Callable[[Good], bytes]:
    return lambda g: image_edit(g.image, edit)


def raw_image(g: Good) -> bytes:
    return Path(g.image).read_bytes()


def drop_geometry(h: dict[str, Any]) -> None:
    h["meta"]["header"]["geometry"]["tiles"] = 1


def set_levels(h: dict[str, Any]) -> None:
    h["meta"]["header"]["device"]["levels"] = 300


def set_chip_shape(h: dict[str, Any]) -> None:
    h["meta"]["header"]["geometry"]["rows"] = ROWS * 2


def bad_dtype(secs: list[list[Any]]) -> None:
    p = first(secs, b"LAYR")
    head, _ = record(p)
    head["arrays"][0][1] = "|O"
    secs[2][1] = with_head_json(p, json.dumps(head).encode())


def bad_nbytes(secs: list[list[Any]]) -> None:
    p = first(secs, b"LAYR")
    head, _ = record(p)
    head["arrays"][0][4] += 8
    secs[2][1] = with_head_json(p, json.dumps(head).encode())


def end_counts(secs: list[list[Any]]) -> None:
    secs[-1][1] = bytearray(b'{"GRPH":1,"HEAD":1,"LAYR":2,"TILE":99}')


def record_overrun(secs: list[list[Any]]) -> None:
    p = first(secs, b"LAYR")
    struct.pack_into("<I", p, 0, len(p) + 100)


def nested(n: int) -> bytes:
    return b'{"meta":' + b"[" * n + b"]" * n + b',"arrays":[]}'


IMAGE: list[Case] = [
    Case("img-empty", ".rimg", lambda g: b"", verify_image),
    Case("img-garbage", ".rimg", lambda g: b"GIF89a" + bytes(100), verify_image),
    *(Case(f"img-truncated-{f}", ".rimg",
           lambda g, f=f: raw_image(g)[: max(1, int(len(raw_image(g)) * f))], verify_image)
      for f in (0.001, 0.01, 0.3, 0.6, 0.999)),
    *(Case(f"img-bitflip-{f}", ".rimg",
           lambda g, f=f: flip(raw_image(g), int(len(raw_image(g)) * f)), verify_image)
      for f in (0.0, 0.05, 0.3, 0.7, 0.99)),
    Case("img-trailing-bytes", ".rimg", lambda g: raw_image(g) + b"\x00", inspect_image),
    Case("img-version-2", ".rimg", lambda g: raw_image(g)[:8] + struct.pack("<I", 2)
         + raw_image(g)[12:], inspect_image),
    Case("img-layer-bias-nan", ".rimg", img(set_array(b"LAYR", "bias", np.nan)), verify_image),
    Case("img-layer-scale-inf", ".rimg", img(set_array(b"LAYR", "scale", np.inf)),
         verify_image),
    Case("img-layer-bias-nan-inspect", ".rimg", img(set_array(b"LAYR", "bias", np.nan)),
         inspect_image),
    Case("img-slice-scale-inf", ".rimg", img(set_array(b"TILE", "s0.scale", -np.inf)),
         verify_image),
    Case("img-slice-offset-nan", ".rimg", img(set_array(b"TILE", "s0.offset", np.nan)),
         verify_image),
    Case("img-level-out-of-range", ".rimg", img(set_array(b"TILE", "levels", 200)),
         verify_image),
    Case("img-slice-row-out-of-range", ".rimg", img(set_array(b"TILE", "s0.phys_rows", 10**6)),
         verify_image),
    Case("img-json-nested-100000", ".rimg", img(head_json(nested(100_000))), verify_image),
    Case("img-json-nested-inspect", ".rimg", img(head_json(nested(100_000))), inspect_image),
    Case("img-json-nested-40", ".rimg", img(head_json(nested(40))), verify_image),
    Case("img-json-1e999", ".rimg", img(head_json(b'{"meta":{"header":{"x":1e999}},"arrays":[]}')),
         verify_image),
    Case("img-json-nan", ".rimg", img(head_json(b'{"meta":{"header":{"x":NaN}},"arrays":[]}')),
         verify_image),
    Case("img-json-duplicate-key", ".rimg",
         img(head_json(b'{"meta":{"header":{}},"meta":{},"arrays":[]}')), verify_image),
    Case("img-json-not-utf8", ".rimg", img(head_json(b'{"meta":{"\xff":1},"arrays":[]}')),
         verify_image),
    Case("img-json-huge-int", ".rimg",
         img(head_json(b'{"meta":{"x":' + b"9" * 5000 + b'},"arrays":[]}')), verify_image),
    Case("img-json-not-object", ".rimg", img(head_json(b"[1,2,3]")), verify_image),
    Case("img-geometry-tiles", ".rimg", img(edit_head(drop_geometry)), verify_image),
    Case("img-geometry-rows", ".rimg", img(edit_head(set_chip_shape)), verify_image),
    Case("img-device-levels", ".rimg", img(edit_head(set_levels)), verify_image),
    Case("img-array-dtype-object", ".rimg", img(bad_dtype), inspect_image),
    Case("img-array-nbytes", ".rimg", img(bad_nbytes), verify_image),
    Case("img-end-counts", ".rimg", img(end_counts), verify_image),
    Case("img-record-overrun", ".rimg", img(record_overrun), verify_image),
]


MODEL: list[Case] = [
    Case("onnx-empty", ".onnx", lambda g: b"", build_model),
    Case("onnx-garbage", ".onnx", lambda g: b"\xff\xfe not protobuf " * 10, build_model),
    Case("onnx-truncated", ".onnx", lambda g: Path(g.model).read_bytes()[:500], build_model),
    Case("onnx-no-nodes", ".onnx", lambda g: model_with(no_nodes), build_model),
    Case("onnx-unknown-op", ".onnx", lambda g: model_with(unknown_op), build_model),
    Case("onnx-nan-weight", ".onnx", lambda g: model_with(nan_weight), build_model),
    Case("onnx-nan-weight-plan", ".onnx", lambda g: model_with(nan_weight), plan_model),
    Case("onnx-sparse-huge", ".onnx", lambda g: model_with(sparse([1 << 20, 1 << 20, 3, 3],
                                                                   [0])), build_model),
    Case("onnx-sparse-index-out-of-range", ".onnx",
         lambda g: model_with(sparse([8, 4, 3, 3], [10**6])), build_model),
    Case("onnx-external-missing", ".onnx", lambda g: model_with(external), build_model),
    Case("onnx-external-short", ".onnx",
         lambda g: model_with(external_to(1 << 40, str(g.dir / "w.bin"))), build_model),
    Case("onnx-external-dev-zero", ".onnx", lambda g: model_with(external_to(1 << 20, "/dev/zero")),
         build_model),
    Case("onnx-weight-is-input", ".onnx", lambda g: model_with(weight_as_input), build_model),
    Case("onnx-dims-lie", ".onnx", lambda g: model_with(dims_lie), build_model),
    Case("onnx-synth-like-garbage", ".onnx", lambda g: b"\x08\x07garbage", synth_like),
    Case("onnx-synth-like-sparse-huge", ".onnx",
         lambda g: model_with(sparse([1 << 20, 1 << 20, 3, 3], [0])), synth_like),
    Case("onnx-constant-dims-lie", ".onnx", lambda g: model_with(constant_lie), build_model),
]

CORPUS = FAULTMAP + CSV + DATA + DEVICE + PLAN + IMAGE + MODEL


def test_corpus_is_large_and_named_uniquely() -> None:
    assert len(CORPUS) >= 150
    assert len({c.id for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_broken_input_is_one_line(case: Case, good: Good, tmp_path: Path) -> None:
    bad = tmp_path / f"broken-{case.id}{case.suffix}"
    bad.write_bytes(case.content(good))
    out = tmp_path / "out.result"
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run(*case.command(good, str(bad), str(out)))
    assert r.crash is None, f"{type(r.crash).__name__}: {r.crash}"
    lines = r.stderr.strip("\n").split("\n")
    assert r.code not in (0, -1), r.stderr
    assert len(lines) == 1 and lines[0].startswith("rcompile: error: "), r.stderr
    assert str(bad) in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp file left either


# ------------------------------------------------------------------------------------------
# The defects this corpus was written for, each with the exact wrong behaviour it had
# ------------------------------------------------------------------------------------------


def test_duplicate_faults_member_is_refused_not_read_as_healthy(tmp_path: Path) -> None:
    from rcompile import faultmap
    from rcompile.errors import BadFaultMap

    p = tmp_path / "dup.npz"
    npz(p, duplicate_faults())
    with pytest.raises(BadFaultMap, match="appears more than once"):
        faultmap.load(p)


def test_declared_256_mib_is_refused_before_allocating(tmp_path: Path) -> None:
    import tracemalloc

    from rcompile import faultmap
    from rcompile.errors import BadFaultMap

    p = tmp_path / "bomb.npz"
    p.write_bytes(bomb_bytes())
    with zipfile.ZipFile(p) as zf, zf.open("faults.npy") as member:  # a real archive
        np.lib.format.read_magic(member)
        assert np.lib.format.read_array_header_1_0(member)[0] == (1024, 512, 512)
        assert not any(member.read(1 << 20))
    assert p.stat().st_size < 300_000
    tracemalloc.start()
    try:
        with pytest.raises(BadFaultMap, match="at most 64 MiB"):
            faultmap.load(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_image_with_nan_bias_or_inf_scale_is_refused(good: Good, tmp_path: Path) -> None:
    from rcompile import image as rimg
    from rcompile.errors import BadImage

    for array, value in (("bias", np.nan), ("scale", np.inf)):
        p = tmp_path / f"{array}.rimg"
        p.write_bytes(image_edit(good.image, set_array(b"LAYR", array, value)))
        with pytest.raises(BadImage, match="expected finite numbers"):
            rimg.read(p)


def test_json_nested_100000_deep_is_a_bad_image(good: Good, tmp_path: Path) -> None:
    from rcompile import image as rimg
    from rcompile.errors import BadImage

    p = tmp_path / "deep.rimg"
    p.write_bytes(image_edit(good.image, head_json(nested(100_000))))
    with pytest.raises(BadImage, match="nests 100001 levels deep"):
        rimg.read(p)


def test_non_utf8_device_toml_names_file_and_line(tmp_path: Path) -> None:
    from rcompile.device import load_hardware
    from rcompile.errors import BadDevice

    p = tmp_path / "dev.toml"
    p.write_bytes(b'base = "ideal"\nname = "\xff"\n')
    with pytest.raises(BadDevice, match=rf"^{p}:2: not UTF-8"):
        load_hardware(p)


def test_device_error_names_the_device_file(good: Good, tmp_path: Path) -> None:
    p = tmp_path / "wide.toml"
    p.write_text('base = "ideal"\ntile_rows = 128\ntile_cols = 128\n')
    r = run("build", good.model, "--faultmap", good.faultmap, "--device", str(p),
            "-o", str(tmp_path / "x.rimg"))
    assert r.code != 0 and f"device file {p} has 128x128 tiles" in r.stderr


def test_labels_of_2_64_minus_1_are_refused(tmp_path: Path) -> None:
    from rcompile.data import input_specs, load_data
    from rcompile.errors import BadData

    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((2, 4, 6, 6), np.float32), labels=np.full(2, 2**64 - 1, np.uint64))
    with pytest.raises(BadData, match="does not fit int64"):
        load_data(p, input_specs(conv_bn_gemm()))


def test_good_files_still_load_and_round_trip(good: Good) -> None:
    from rcompile import faultmap, planfile
    from rcompile import image as rimg

    assert faultmap.load(good.faultmap).geometry.tiles == TILES
    assert rimg.encode(rimg.read(good.image)) == Path(good.image).read_bytes()
    assert planfile.encode(*(lambda s: (s.plan, s.calib))(planfile.read(good.plan))) == \
        Path(good.plan).read_bytes()
