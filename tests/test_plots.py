"""The pictures: real files (PNG and SVG), the artists engineers look for, no global state."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import onnx
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rcompile import api, plots, runtime
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile import provision as prov
from rcompile.data import dataset_from_arrays, input_specs
from rcompile.errors import RcompileError
from rcompile.sweep import render_plot, run_sweep
from tests.conftest import conv_bn_gemm, rcompile

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A model nobody trained, its data, one 16x16-tile chip, its image and verify report."""
    tmp = tmp_path_factory.mktemp("plots")
    model = conv_bn_gemm(seed=4)
    path = str(tmp / "m.onnx")
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(40, 4, 6, 6)).astype(np.float32),
              "labels": rng.integers(0, 5, 40).astype(np.int64)}
    np.savez(tmp / "data.npz", **arrays)
    tiles = api.spare_tiles(api.tiles_needed(path, 16, 16), 0.2)
    fm = fmap.synth(tiles, 16, 16, 0.08, (5, 1), 1)
    res = api.compile_chip(path, fm, strategy="mt")
    rep = runtime.verify(res.image, fm, dataset_from_arrays(arrays, input_specs(model)))
    return {"tmp": tmp, "model": path, "data": str(tmp / "data.npz"), "fm": fm,
            "image": res.image, "report": rep.to_dict()}


@pytest.fixture(scope="module")
def swept(chip: dict[str, Any]) -> dict[str, Any]:
    return run_sweep(chip["model"], chip["data"], rates=[0.02, 0.2], ratios=[(5, 1), (1, 5)],
                     strategies=["two-column", "mt"], seeds=1, rows=16, cols=16)


def _labels(fig: Figure) -> set[str]:
    return {h.get_label() for ax in fig.axes for h in ax.get_legend_handles_labels()[0]}


def _check_files(fig: Figure, base: Path, *, twice: bool = False) -> None:
    """PNG and SVG by extension (``twice``: and reproducible byte for byte)."""
    for ext, magic in ((".png", PNG), (".svg", b"<svg")):
        path = base.with_suffix(ext)
        plots.save(fig, path)
        data = path.read_bytes()
        assert data.startswith(magic) if ext == ".png" else magic in data[:500]
        if twice:
            plots.save(fig, path)
            assert path.read_bytes() == data


def test_sweep_figure_shows_the_reference_band_p0_and_fixed_colours(
        swept: dict[str, Any], tmp_path: Path) -> None:
    fig = plots.sweep_figure(swept)
    assert len(fig.axes) == 4                     # two ratios, full row and zoomed row
    labels = _labels(fig)
    assert {"two-column", "mt", "float model", "fault-free chip", "within 1 point"} <= labels
    ax = fig.axes[0]
    assert ax.get_xlim()[0] == 0.0 and ax.get_xscale() == "symlog"   # p = 0 on the axis
    for line in ax.get_lines():
        if line.get_label() in plots.STRATEGY_COLOURS:
            assert line.get_color() == plots.STRATEGY_COLOURS[line.get_label()]
            assert line.get_xdata()[0] == 0.0     # each line starts at the fault-free chip
    band = [p for p in ax.patches if p.get_label() == "within 1 point"]
    assert len(band) == 1
    ref = 100 * swept["quantised_accuracy"]
    low, high = band[0].get_path().get_extents(band[0].get_patch_transform()).intervaly
    assert (low, high) == pytest.approx((ref - 1, ref), abs=1e-6) or band[0].get_bbox()
    lowest = min(100 * (p["accuracy_mean"] - p["accuracy_std"]) for p in swept["points"]
                 if p["ratio"] == "5:1")
    assert ax.get_ylim()[0] >= max(0.0, lowest - 3) - 1e-9   # y range follows the data
    assert fig.axes[2].get_ylim()[1] - fig.axes[2].get_ylim()[0] <= 6.5   # zoomed row
    render_plot(swept, str(tmp_path / "via-sweep.svg"))
    assert b"<svg" in (tmp_path / "via-sweep.svg").read_bytes()[:500]


def test_heatmap_selects_tiles_and_keeps_the_title_inside(chip: dict[str, Any],
                                                          tmp_path: Path) -> None:
    fm = chip["fm"]
    fig = plots.heatmap_figure(fm, tiles=[0, 2])
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in shown][:2] == [t for t in (
        ax.get_title() for ax in shown) if t.startswith(("tile 0 ", "tile 2 "))]
    assert len(shown) == 2
    FigureCanvasAgg(fig).draw()
    title = fig._suptitle
    assert title is not None and "selected" in title.get_text()
    box, page = title.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1   # not cropped
    with pytest.raises(RcompileError, match=r"tile\(s\) \[99\] selected"):
        plots.heatmap_figure(fm, tiles=[99])
    _check_files(fig, tmp_path / "heat")
    overview = plots.overview_figure(fm)
    assert len(overview.axes[0].texts) == fm.geometry.tiles
    _check_files(overview, tmp_path / "overview", twice=True)


def test_placement_levels_layer_error_and_energy(chip: dict[str, Any], tmp_path: Path) -> None:
    image, fm, report = chip["image"], chip["fm"], chip["report"]
    fig = plots.placement_figure(image, fm)
    assert len(fig.axes[0].texts) == len(image.tiles)          # one label per used tile
    outlined = [p for p in fig.axes[1].patches if not p.get_fill()]
    assert len(outlined) == len(image.tiles)
    usage = plots.tile_usage(image)
    summary = rimg.summary_dict(image)
    cells = fm.geometry.rows * fm.geometry.cols
    assert [u["utilisation"] for u in usage] == [t["cells_used"] / cells
                                                 for t in summary["tiles"]]
    plots.save(fig, tmp_path / "placement.png")

    levels = plots.levels_figure(image)
    heights = [b.get_height() for b in levels.axes[0].patches]
    assert sum(heights) == summary["totals"]["cells_programmed"]
    assert heights == list(np.sum([t["level_histogram"] for t in summary["tiles"]], axis=0))

    err = plots.layer_error_figure(report)
    assert len(err.axes[0].patches) == len(report["layers"])
    assert [t.get_text() for t in err.axes[0].get_yticklabels()] == [
        layer["node"] for layer in report["layers"]]

    energy = plots.energy_figure(report)
    ax = energy.axes[0]
    assert [c.get_label() for c in ax.containers] == ["cells", "ADC", "DAC", "digital"]
    stacked = np.sum([[b.get_width() for b in c] for c in ax.containers], axis=0)
    assert stacked == pytest.approx([1e9 * (r["cell_j"] + r["adc_j"] + r["dac_j"]
                                            + r["digital_j"]) for r in report["energy"]])
    plots.save(energy, tmp_path / "energy.svg")


def test_drawing_changes_no_global_state(chip: dict[str, Any], swept: dict[str, Any],
                                         tmp_path: Path) -> None:
    backend = matplotlib.rcParams._get_backend_or_none()  # type: ignore[attr-defined]
    had_pyplot = "matplotlib.pyplot" in sys.modules
    def settings() -> dict[str, Any]:  # reading "backend" itself would resolve it
        return {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != "backend"}

    params = settings()
    plots.save(plots.heatmap_figure(chip["fm"], tiles=[1]), tmp_path / "h.svg")
    render_plot(swept, str(tmp_path / "r.png"))
    assert matplotlib.rcParams._get_backend_or_none() == backend  # type: ignore[attr-defined]
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    assert settings() == params


def test_save_refuses_other_formats_and_writes_nothing(chip: dict[str, Any],
                                                       tmp_path: Path) -> None:
    with pytest.raises(RcompileError, match=r"x\.pdf: cannot write a figure of this type; "
                       r"expected a file name ending in \.png or \.svg"):
        plots.save(plots.levels_figure(chip["image"]), tmp_path / "x.pdf")
    assert list(tmp_path.iterdir()) == []


def test_lot_gate_bins_chips_and_the_lot_view_counts_them(chip: dict[str, Any],
                                                          tmp_path: Path) -> None:
    lot = tmp_path / "lot"
    lot.mkdir()
    tiles = chip["fm"].geometry.tiles
    for i, rate in enumerate((0.0, 0.05, 0.3)):
        fmap.save(fmap.synth(tiles, 16, 16, rate, (5, 1), i), lot / f"c{i}.npz")
    fmap.save(fmap.synth(1, 16, 16, 0.0, (5, 1), 0), lot / "small.npz")   # does not fit
    first = prov.provision(chip["model"], str(lot), str(tmp_path / "out"), jobs=1,
                           strategy="two-column", verify_data=chip["data"])
    accs = sorted(x["accuracy"] for x in first.lines if x.get("accuracy") is not None)
    assert len(accs) == 3 and all("bin" not in x for x in first.lines)
    gate = (accs[0] + accs[-1]) / 2 if accs[0] < accs[-1] else accs[0]
    again = prov.provision(chip["model"], str(lot), str(tmp_path / "out"), jobs=1,
                           strategy="two-column", verify_data=chip["data"], min_accuracy=gate)
    assert again.skipped == 3 and again.errors == 1                # binned without a rebuild
    bins = {x["faultmap"]: x.get("bin") for x in again.lines}
    assert bins["small.npz"] is None
    assert again.passed == sum(a >= gate for a in accs) >= 1
    assert again.failed == sum(a < gate for a in accs)
    assert again.to_dict()["passed"] == again.passed
    with open(tmp_path / "out" / "report.jsonl", encoding="utf-8") as f:
        lines = [json.loads(x) for x in f]
    assert [x.get("min_accuracy") for x in lines if x.get("bin")] == [gate] * 3
    fig = plots.lot_figure(plots.read_lot(tmp_path / "out" / "report.jsonl"))
    outcome = {t.get_text(): b.get_height() for t, b in
               zip(fig.axes[1].get_xticklabels(), fig.axes[1].patches, strict=True)}
    assert outcome == {"pass": again.passed, "fail": again.failed, "not verified": 0,
                       "error": 1}
    assert any(ln.get_label().startswith("min accuracy") for ln in fig.axes[0].get_lines())
    plots.save(fig, tmp_path / "lot.png")
    with pytest.raises(RcompileError, match="give --verify-data too"):
        prov.provision(chip["model"], str(lot), str(tmp_path / "out"), min_accuracy=0.5)


def test_plot_command_draws_every_kind_from_files(chip: dict[str, Any], swept: dict[str, Any],
                                                  tmp_path: Path) -> None:
    img, fm = tmp_path / "chip.rimg", tmp_path / "chip.npz"
    rimg.write(chip["image"], img)
    fmap.save(chip["fm"], fm)
    (tmp_path / "sweep.json").write_text(json.dumps(swept))
    (tmp_path / "verify.json").write_text(json.dumps(chip["report"]))
    runs = [("sweep", [tmp_path / "sweep.json"]), ("faults", [fm, "--tiles", "0,1"]),
            ("placement", [img, fm]), ("layers", [tmp_path / "verify.json"])]
    for kind, inputs in runs:
        out = tmp_path / f"{kind}.svg"
        res = rcompile("plot", kind, *map(str, inputs), "-o", str(out))
        assert res.returncode == 0, res.stderr
        assert b"<svg" in out.read_bytes()[:500]
    bad = rcompile("plot", "sweep", str(tmp_path / "verify.json"), "-o", str(tmp_path / "b.png"))
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "lacks points" in bad.stderr
    assert not (tmp_path / "b.png").exists()
    usage = rcompile("plot", "levels", str(img), "-o", str(tmp_path / "b.pdf"))
    assert usage.returncode == 2 and ".png or .svg" in usage.stderr
    same = rcompile("plot", "levels", str(img), "-o", str(img))
    assert same.returncode != 0 and img.read_bytes()[:4] != PNG[:4]
