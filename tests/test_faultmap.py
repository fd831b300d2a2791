"""Fault-map contract (docs/design.md §4): load/save, rejections, synth, CSV import, reports,
CLI."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcompile import faultmap as F
from rcompile.api import spare_tiles
from rcompile.device import Cell
from rcompile.errors import BadFaultMap
from rcompile.faultmap_cli import faultmap as faultmap_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_map(stuck_g: bool = True, **kw: Any) -> F.FaultMap:
    """A 2x4x6 map with both fault kinds, measured conductances and all scalars."""
    faults = np.zeros((2, 4, 6), dtype=np.uint8)
    faults[0, 1, 2] = F.STATE_SA0
    faults[1, 3, 5] = F.STATE_SA1
    faults[1, 0, 0] = F.STATE_SA1
    g = None
    if stuck_g:
        g = np.full(faults.shape, np.nan, dtype=np.float32)
        g[0, 1, 2] = 1.5
        g[1, 3, 5] = 99.0
        g[1, 0, 0] = 50.5
    args: dict[str, Any] = dict(chip_id="chip-7", g_min_us=1.0, g_max_us=100.0, levels=16)
    args.update(kw)
    return F.FaultMap(faults, g, **args)


def write_npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


# -- load / save ----------------------------------------------------------------------------------


def test_round_trip_exact_and_bytes_stable(tmp_path: Path) -> None:
    fm = small_map()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    F.save(fm, a)
    F.save(fm, b)
    assert a.read_bytes() == b.read_bytes()
    back = F.load(a)
    assert back.digest() == fm.digest()
    np.testing.assert_array_equal(back.faults, fm.faults)
    assert back.stuck_g is not None and fm.stuck_g is not None
    np.testing.assert_array_equal(back.stuck_g, fm.stuck_g)  # NaNs compare equal here
    assert (back.chip_id, back.g_min_us, back.g_max_us, back.levels) == ("chip-7", 1.0, 100.0, 16)
    assert back.source == str(a)
    F.save(back, b)  # load -> save reproduces the bytes
    assert a.read_bytes() == b.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4).map(lambda n: 2 * n)),
    seed=st.integers(0, 2**32 - 1),
    with_g=st.booleans(),
    scalars=st.booleans(),
)
def test_round_trip_property(
    tmp_path: Path, shape: tuple[int, int, int], seed: int, with_g: bool, scalars: bool
) -> None:
    rng = np.random.default_rng(seed)
    faults = rng.integers(0, 3, size=shape, dtype=np.uint8)
    g = None
    if with_g:
        g = np.where(faults > 0, rng.uniform(2.0, 90.0, size=shape), np.nan).astype(np.float32)
    extra: dict[str, Any] = (
        dict(g_min_us=2.0, g_max_us=90.0, levels=int(rng.integers(2, 257))) if scalars else {}
    )
    fm = F.FaultMap(faults, g, chip_id=f"c{seed}", **extra)
    path = tmp_path / f"rt-{seed}.npz"
    F.save(fm, path)
    back = F.load(path)
    assert back.digest() == fm.digest()
    assert F.to_npz_bytes(back) == path.read_bytes()
    assert back.device_overrides() == fm.device_overrides()


def test_digest_ignores_zip_layout_and_default_chip_id(tmp_path: Path) -> None:
    fm = small_map()
    assert fm.stuck_g is not None
    arrays = dict(faults=fm.faults, stuck_g=fm.stuck_g, chip_id=np.array("chip-7"))
    arrays.update(g_min=np.array(1), g_max=np.array(100.0), levels=np.array(16, dtype=np.int32))
    other = write_npz(tmp_path / "numpy.npz", **arrays)  # numpy's own zip, int g_min
    assert F.load(other).digest() == fm.digest()
    bare = F.load(write_npz(tmp_path / "bare.npz", faults=fm.faults))
    assert len(bare.chip_id) == 12 and int(bare.chip_id, 16) >= 0
    assert bare.chip_id == F.load(write_npz(tmp_path / "bare2.npz", faults=fm.faults)).chip_id
    assert bare.chip_id != small_map(stuck_g=False, chip_id="x").digest()[:12]


def test_map_is_immutable() -> None:
    fm = small_map()
    with pytest.raises(ValueError):
        fm.faults[0, 0, 0] = 2


GOOD = np.zeros((2, 3, 4), dtype=np.uint8)
GOOD[0, 0, 0], GOOD[1, 2, 3] = 1, 2
GOOD_G = np.where(GOOD > 0, np.float32(50.0), np.float32(np.nan)).astype(np.float32)


def _with(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(faults=GOOD)
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def _g(**cells: float) -> np.ndarray:
    g = GOOD_G.copy()
    for key, v in cells.items():
        t, r, c = (int(x) for x in key[1:].split("_"))
        g[t, r, c] = v
    return g


REJECT: dict[str, tuple[dict[str, Any], str, str]] = {
    # case: (arrays, key the message must name, a phrase it must contain)
    "missing-faults": (dict(chip_id=np.array("x")), "faults", "missing"),
    "unknown-key": (_with(extra=np.zeros(2)), "extra", "expected only"),
    "dtype": (_with(faults=GOOD.astype(np.int64)), "faults", "uint8"),
    "ndim": (_with(faults=GOOD[0]), "faults", "3 dimensions"),
    "zero-size": (_with(faults=np.zeros((0, 3, 4), np.uint8)), "faults", "empty"),
    "odd-cols": (_with(faults=np.zeros((1, 3, 5), np.uint8)), "faults", "even"),
    "bad-code": (_with(faults=np.where(GOOD == 2, 7, GOOD).astype(np.uint8)), "faults", "7"),
    "g-dtype": (_with(stuck_g=GOOD_G.astype(np.float64)), "stuck_g", "float32"),
    "g-shape": (_with(stuck_g=GOOD_G[:1]), "stuck_g", "shape"),
    "g-on-healthy": (_with(stuck_g=_g(c0_1_1=3.0)), "stuck_g", "healthy"),
    "g-nan-on-stuck": (_with(stuck_g=_g(c0_0_0=np.nan)), "stuck_g", "stuck"),
    "g-out-of-range": (
        _with(stuck_g=_g(c1_2_3=150.0), g_min=np.array(1.0), g_max=np.array(100.0)),
        "stuck_g",
        "outside",
    ),
    "g-negative": (_with(stuck_g=_g(c1_2_3=-1.0)), "stuck_g", "outside"),
    "g-pickled": (_with(stuck_g=np.array([{"a": 1}], dtype=object)), "stuck_g", "read"),
    "chip-id-array": (_with(chip_id=np.array(["a", "b"])), "chip_id", "shape"),
    "chip-id-int": (_with(chip_id=np.array(3)), "chip_id", "string"),
    "chip-id-empty": (_with(chip_id=np.array("")), "chip_id", "non-empty"),
    "g-min-string": (_with(g_min=np.array("low")), "g_min", "real"),
    "g-min-array": (_with(g_min=np.array([1.0])), "g_min", "shape"),
    "g-min-negative": (_with(g_min=np.array(-1.0)), "g_min", ">= 0"),
    "g-max-nan": (_with(g_max=np.array(np.nan)), "g_max", "finite"),
    "g-min-ge-max": (_with(g_min=np.array(5.0), g_max=np.array(5.0)), "g_max", "g_min < g_max"),
    "levels-low": (_with(levels=np.array(1)), "levels", "2..256"),
    "levels-float": (_with(levels=np.array(16.0)), "levels", "integer"),
    "levels-bool": (_with(levels=np.array(True)), "levels", "integer"),
}


@pytest.mark.parametrize("case", sorted(REJECT))
def test_load_rejects(tmp_path: Path, case: str) -> None:
    arrays, key, phrase = REJECT[case]
    path = write_npz(tmp_path / f"chip-{case}.npz", **arrays)
    with pytest.raises(BadFaultMap) as exc:
        F.load(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: "), msg
    assert key in msg and phrase in msg and "expected" in msg, msg
    assert "\n" not in msg


def test_load_rejects_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("tile,row,col,state\n")
    npy = tmp_path / "single.npz"
    with npy.open("wb") as fh:
        np.save(fh, GOOD)
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("faults.npy", b"\x93NUMPY garbage")
    for path, phrase in [
        (tmp_path / "absent.npz", "no such file"),
        (text, "not an .npz"),
        (npy, "not an .npz"),
        (tmp_path, "directory"),
        (broken, "faults"),
    ]:
        with pytest.raises(BadFaultMap, match=phrase) as exc:
            F.load(path)
        assert str(path) in str(exc.value)


def test_constructor_validates_too() -> None:
    with pytest.raises(BadFaultMap, match="<memory>: faults: dtype"):
        F.FaultMap(GOOD.astype(np.int8), chip_id="x")
    with pytest.raises(BadFaultMap, match="chip_id"):
        F.FaultMap(GOOD)  # no chip id outside load()


# -- derived views --------------------------------------------------------------------------------


def test_counts_and_per_tile() -> None:
    fm = small_map()
    assert fm.counts() == {"healthy": 45, "sa0": 1, "sa1": 2, "rate": 3 / 48}
    np.testing.assert_array_equal(fm.per_tile_counts(), [[23, 1, 0], [22, 0, 2]])
    assert fm.geometry.tiles == 2 and fm.geometry.rows == 4 and fm.geometry.cols == 6


def test_stuck_levels_from_states() -> None:
    fm = small_map(stuck_g=False)
    lv = fm.stuck_levels(Cell(levels=16))
    assert lv.dtype == np.float32
    assert np.isnan(lv[fm.faults == 0]).all()
    assert lv[0, 1, 2] == 0.0 and lv[1, 3, 5] == 15.0 and lv[1, 0, 0] == 15.0


def test_stuck_levels_from_conductance_and_clipping() -> None:
    fm = small_map()
    lv = fm.stuck_levels(Cell(levels=16, g_min_us=1.0, g_max_us=100.0))
    assert np.isnan(lv[fm.faults == 0]).all()
    np.testing.assert_allclose(
        [lv[0, 1, 2], lv[1, 3, 5], lv[1, 0, 0]], [0.5 / 99 * 15, 98 / 99 * 15, 7.5], rtol=1e-5
    )
    # A narrower device clips measured conductances into [0, levels-1].
    lv = fm.stuck_levels(Cell(levels=4, g_min_us=10.0, g_max_us=60.0))
    np.testing.assert_allclose([lv[0, 1, 2], lv[1, 3, 5], lv[1, 0, 0]], [0.0, 3.0, 2.43])


def test_device_overrides() -> None:
    assert small_map().device_overrides() == {"g_min_us": 1.0, "g_max_us": 100.0, "levels": 16}
    bare = small_map(stuck_g=False, g_min_us=None, g_max_us=None, levels=None)
    assert bare.device_overrides() == {}
    dev = small_map(g_max_us=120.0, levels=8).device(Cell(read_v=0.3))
    assert (dev.levels, dev.g_max_us, dev.read_v) == (8, 120.0, 0.3)


# -- synth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", F.SYNTH_KINDS)
@pytest.mark.parametrize("ratio", [(5, 1), (1, 5)])
def test_synth_rate_and_ratio(kind: str, ratio: tuple[int, int]) -> None:
    fm = F.synth(64, 128, 128, 0.05, ratio=ratio, seed=3, kind=kind)
    c = fm.counts()
    assert c["rate"] == pytest.approx(0.05, rel=0.06), c
    # Whole lines share one state, so their SA1 share scatters more than per-cell draws.
    tol = 0.05 if kind == "lines" else 0.01
    assert c["sa1"] / (c["sa0"] + c["sa1"]) == pytest.approx(ratio[0] / sum(ratio), abs=tol)
    assert fm.chip_id == f"synth-{kind}-p0.05-s3"


def test_synth_kinds_have_their_shape() -> None:
    uni = F.synth(64, 64, 64, 0.05, kind="uniform")
    clu = F.synth(64, 64, 64, 0.05, kind="clustered")
    lin = F.synth(64, 64, 64, 0.05, kind="lines")

    def tile_spread(fm: F.FaultMap) -> float:
        return float(fm.per_tile_counts()[:, 1:].sum(axis=1).std())

    assert tile_spread(clu) > 3 * tile_spread(uni)  # faults bunch up
    full_rows = (lin.faults != 0).all(axis=2).sum() + (lin.faults != 0).all(axis=1).sum()
    assert full_rows >= 5
    assert (uni.faults != 0).all(axis=2).sum() == 0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**63), kind=st.sampled_from(F.SYNTH_KINDS))
def test_synth_deterministic(seed: int, kind: str) -> None:
    a = F.synth(2, 16, 16, 0.2, seed=seed, kind=kind)
    b = F.synth(2, 16, 16, 0.2, seed=seed, kind=kind)
    assert a.digest() == b.digest()
    c = F.synth(2, 16, 16, 0.2, seed=seed + 1, kind=kind)
    assert not np.array_equal(a.faults, c.faults)


@pytest.mark.parametrize("kind", F.SYNTH_KINDS)
def test_synth_extremes(kind: str) -> None:
    assert F.synth(2, 8, 8, 0.0, kind=kind).counts()["healthy"] == 128
    assert F.synth(2, 8, 8, 1.0, kind=kind).counts()["healthy"] == 0
    assert F.synth(2, 8, 8, 1.0, ratio=(0, 1), kind=kind).counts()["sa0"] == 128


@pytest.mark.parametrize(
    "kw",
    [dict(rate=1.5), dict(ratio=(0, 0)), dict(ratio=(-1, 2)), dict(kind="rings"), dict(cols=7)],
)
def test_synth_rejects(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = dict(tiles=1, rows=4, cols=4, rate=0.1)
    args.update(kw)
    with pytest.raises(BadFaultMap, match="synth: "):
        F.synth(**args)


# -- CSV import -----------------------------------------------------------------------------------


def test_import_csv(tmp_path: Path) -> None:
    path = tmp_path / "lot3-chip9.csv"
    text = (
        "\ufefftile,row,col,state\n# tester v2\n0,0,1,SA0\n\n1,3,2,sa1\n1,3,3,2\n0,2,2,0\n0,0,1,1\n"
    )
    path.write_text(text, encoding="utf-8")
    fm = F.import_csv(path, tiles=2, rows=4, cols=4)
    assert fm.chip_id == "lot3-chip9" and fm.source == str(path)
    assert fm.counts()["sa0"] == 1 and fm.counts()["sa1"] == 2
    assert fm.faults[0, 0, 1] == F.STATE_SA0 and fm.faults[1, 3, 2] == F.STATE_SA1


@pytest.mark.parametrize(
    "body, line, phrase",
    [
        ("tile,row,col,state\n0,0,0,SA1\n0,9,0,SA1\n", 3, "row"),
        ("tile,row,col,state\n0,0,x,SA0\n", 2, "col"),
        ("tile,row,col,state\n0,0,0,SA2\n", 2, "state"),
        ("tile,row,col,state\n0,0,0\n", 2, "fields"),
        ("tile,row,col,state\n0,0,0,SA0\n0,0,0,SA1\n", 3, "listed again"),
        ("t,r,c,s\n0,0,0,1\n", 1, "header"),
        ("", 1, "header"),
    ],
)
def test_import_csv_rejects(tmp_path: Path, body: str, line: int, phrase: str) -> None:
    path = tmp_path / "tester.csv"
    path.write_text(body)
    with pytest.raises(BadFaultMap) as exc:
        F.import_csv(path, tiles=1, rows=4, cols=4)
    assert str(exc.value).startswith(f"{path}:{line}: "), str(exc.value)
    assert phrase in str(exc.value)


def test_import_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadFaultMap, match="absent.csv: cannot open"):
        F.import_csv(tmp_path / "absent.csv", tiles=1, rows=4, cols=4)


# -- reports --------------------------------------------------------------------------------------


def test_heatmap_png(tmp_path: Path) -> None:
    out = tmp_path / "map.png"
    F.render_heatmap(F.synth(3, 16, 16, 0.1, kind="clustered"), out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    many = tmp_path / "many.png"
    F.render_heatmap(F.synth(F.MAX_HEATMAP_TILES + 3, 4, 4, 0.2), many)
    assert many.read_bytes()[:8] == PNG_MAGIC


def test_summary_text() -> None:
    text = F.summary_text(small_map())
    assert "chip-7" in text and small_map().digest() in text
    assert "g_min_us=1" in text and "measured" in text
    lines = text.splitlines()
    assert lines[-2].split() == ["0", "23", "1", "0", "4.167%"]
    assert lines[-1].split() == ["1", "22", "0", "2", "8.333%"]


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_synth_show_import(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "chip.npz"
    args = ["synth", "--tiles", "3", "--rows", "8", "--cols", "8", "--rate", "0.1"]
    res = runner.invoke(faultmap_cli, [*args, "--ratio", "1:5", "--seed", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists() and "synth-uniform-p0.1-s4" in res.output
    fm = F.load(out)
    assert (fm.geometry.tiles, fm.geometry.rows, fm.geometry.cols) == (3, 8, 8)
    first = out.read_bytes()
    assert (
        runner.invoke(
            faultmap_cli, [*args, "--ratio", "1:5", "--seed", "4", "-o", str(out)]
        ).exit_code
        == 0
    )
    assert out.read_bytes() == first  # running twice changes nothing

    png = tmp_path / "chip.png"
    res = runner.invoke(faultmap_cli, ["show", str(out), "--png", str(png)])
    assert res.exit_code == 0, res.output
    assert "synth-uniform-p0.1-s4" in res.output and png.read_bytes()[:8] == PNG_MAGIC
    res = runner.invoke(faultmap_cli, ["show", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["geometry"] == {"tiles": 3, "rows": 8, "cols": 8}
    assert len(doc["per_tile"]) == 3 and doc["sha256"] == fm.digest()

    csv_path = tmp_path / "t.csv"
    csv_path.write_text("tile,row,col,state\n0,1,1,SA1\n")
    imp = tmp_path / "t.npz"
    res = runner.invoke(
        faultmap_cli,
        ["import", str(csv_path), "--tiles", "1", "--rows", "4", "--cols", "4", "-o", str(imp)],
    )
    assert res.exit_code == 0, res.output
    assert F.load(imp).counts()["sa1"] == 1


@pytest.mark.parametrize(
    "extra",
    [
        ["--rate", "1.5", "--tiles", "1"],
        ["--rate", "0.1", "--tiles", "1", "--ratio", "5-1"],
        ["--rate", "0.1", "--tiles", "1", "--ratio", "0:0"],
        ["--rate", "0.1", "--tiles", "1", "--cols", "7"],
        ["--rate", "0.1", "--tiles", "1", "--kind", "rings"],
        ["--rate", "0.1", "--tiles", "1", "--spare", "0.2"],
        ["--rate", "0.1"],
        ["--rate", "0.1", "--tiles", "1", "--like", "MODEL"],
    ],
)
def test_cli_synth_usage_errors(tmp_path: Path, extra: list[str]) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    extra = [str(model) if a == "MODEL" else a for a in extra]
    res = CliRunner().invoke(faultmap_cli, ["synth", *extra, "-o", str(tmp_path / "x.npz")])
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "x.npz").exists()


def test_cli_synth_like(tmp_path: Path) -> None:
    from rcompile.api import tiles_needed
    from tests.conftest import conv_bn_gemm, save

    model = save(conv_bn_gemm(), str(tmp_path / "m.onnx"))
    needed = tiles_needed(model, 16, 8)  # a real model, tiled for small 16x8 tiles
    out = tmp_path / "like.npz"
    args = [
        "synth",
        "--like",
        model,
        "--rows",
        "16",
        "--cols",
        "8",
        "--rate",
        "0.01",
        "-o",
        str(out),
    ]
    res = CliRunner().invoke(faultmap_cli, args)
    assert res.exit_code == 0, res.output
    assert needed > 1
    assert F.load(out).geometry.tiles == spare_tiles(needed, 0.10)


def test_cli_show_bad_file_raises_domain_error(tmp_path: Path) -> None:
    bad = write_npz(tmp_path / "bad.npz", faults=GOOD.astype(np.int64))
    res = CliRunner().invoke(faultmap_cli, ["show", str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, BadFaultMap)
    assert "bad.npz: faults: dtype int64" in str(res.exception)


def test_spare_tiles() -> None:
    assert [spare_tiles(10, 0.1), spare_tiles(10, 0.3), spare_tiles(1, 0.1)] == [11, 13, 2]
    assert [spare_tiles(5, 0.0), spare_tiles(3, 1.0)] == [5, 6]
