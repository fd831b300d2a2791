"""The pictures: every figure rcompile draws, as a :class:`matplotlib.figure.Figure`.

Rules every figure here keeps:

- it is built on ``matplotlib.figure.Figure`` directly, never through ``pyplot``: drawing one
  changes no global state (no backend switch, no current figure, no open-figure registry), so
  a notebook's own plots and backend are untouched;
- titles and labels are laid out by matplotlib's constrained layout, so none is cropped;
- each strategy has one colour in every figure (:data:`STRATEGY_COLOURS`);
- :func:`save` writes PNG or SVG by the file's extension, atomically and byte-reproducibly
  (no timestamps or software versions in the file, fixed SVG ids).

Inputs are the plain documents the commands write (``sweep --json``, ``verify --json``,
``report.jsonl``) or the objects they hold (:class:`~rcompile.faultmap.FaultMap`,
:class:`~rcompile.image.Image`), so a figure can be drawn from a file as well as in memory.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rcompile.errors import RcompileError
from rcompile.fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from rcompile.faultmap import FaultMap
    from rcompile.image import Image

FORMATS = {".png": "png", ".svg": "svg"}
"""File extensions :func:`save` writes, and the matplotlib format of each."""

STRATEGY_COLOURS = {
    "two-column": "#7f7f7f",
    "differential": "#1f77b4",
    "mt": "#ff7f0e",
    "full": "#2ca02c",
}
"""The colour of each shipped strategy; any other (a custom pipeline) takes one of
:data:`_EXTRA_COLOURS` by its name, so it too keeps its colour from figure to figure."""

_EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
STATE_COLOURS = ("#f2f2f2", "#1f5fbf", "#d62728")
"""Healthy, SA0, SA1 cells."""
ENERGY_PARTS = (("cell_j", "cells", "#2ca02c"), ("adc_j", "ADC", "#d62728"),
                ("dac_j", "DAC", "#1f77b4"), ("digital_j", "digital", "#7f7f7f"))
"""The parts of a layer's energy (key of a verify report's ``energy`` entry, label, colour)."""
TOLERANCE = 0.01
"""Accuracy a strategy may lose against the fault-free chip and still count as tolerating a
fault rate (one point; the sweep's tolerated rate uses the same)."""
MAX_TILES = 64
"""Tiles a heat map draws by default; larger chips show the first ones and say so."""


def strategy_colour(name: str) -> str:
    """The fixed colour of strategy ``name``."""
    if name in STRATEGY_COLOURS:
        return STRATEGY_COLOURS[name]
    return _EXTRA_COLOURS[sum(name.encode()) % len(_EXTRA_COLOURS)]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save(fig: Figure, path: str | os.PathLike[str], *, what: str = "figure") -> None:
    """Write ``fig`` to ``path`` as PNG or SVG (by extension), atomically: the file appears
    complete or not at all. Same figure, same bytes: the first save lays the figure out and
    fixes that layout (constrained layout moves axes a little on every draw). Another extension
    raises :class:`~rcompile.errors.RcompileError` before anything is written."""
    import matplotlib

    fmt = FORMATS.get(os.path.splitext(os.fspath(path))[1].lower())
    if fmt is None:
        raise RcompileError(f"{os.fspath(path)}: cannot write a {what} of this type; expected a "
                            f"file name ending in {' or '.join(FORMATS)}")
    if fig.get_layout_engine() is not None:
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    buf = io.BytesIO()
    metadata: dict[str, Any] = {"Software": None} if fmt == "png" else {"Date": None,
                                                                          "Creator": None}
    with matplotlib.rc_context({"svg.hashsalt": "rcompile", "svg.fonttype": "path"}):
        fig.savefig(buf, format=fmt, metadata=metadata)
    atomic_write(path, buf.getvalue(), what=what)


# -------------------------------------------------------------------------------- sweep


def sweep_figure(result: dict[str, Any]) -> Figure:
    """Accuracy against fault rate of a sweep (``rcompile sweep --json``): one column per
    SA1:SA0 ratio. The top row shows every point; the bottom row zooms on the fault-free chip,
    where strategies differ. Each strategy is its mean over seeds with the spread as error
    bars (dotted: the same builds on the ideal cell, for a device sweep); the fault-free chip
    is a solid black line with its one-point tolerance band shaded, and the float model a
    dashed line. The x axis is linear up to the smallest swept rate and logarithmic above, so
    p = 0 (the fault-free chip, drawn as its own point) is on the axis."""
    pts = result["points"]
    ratios = list(dict.fromkeys(p["ratio"] for p in pts)) or ["-"]
    strategies = list(dict.fromkeys(p["strategy"] for p in pts))
    ref = _sweep_reference(result)
    fig = _figure(5.5 * len(ratios), 7.0)
    axes = fig.subplots(2, len(ratios), squeeze=False)
    rates = sorted({float(p["rate"]) for p in pts if p["rate"] > 0}) or [1e-3]
    for col, ratio in enumerate(ratios):
        lows: list[float] = []
        for row in (0, 1):
            ax = axes[row][col]
            for s in strategies:
                sel = sorted((p for p in pts if p["strategy"] == s and p["ratio"] == ratio),
                             key=lambda p: p["rate"])
                if not sel:
                    continue
                x = [float(p["rate"]) for p in sel]
                y = np.array([100 * p["accuracy_mean"] for p in sel])
                e = np.array([100 * p["accuracy_std"] for p in sel])
                if ref is not None and x[0] > 0:  # the line starts at the fault-free chip
                    x, y, e = [0.0, *x], np.r_[100 * ref, y], np.r_[0.0, e]
                lows.extend(y - e)
                ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=3, label=s,
                            color=strategy_colour(s))
                if "ideal_accuracy_mean" in sel[0]:
                    yi = [100 * p["ideal_accuracy_mean"] for p in sel]
                    ax.plot([float(p["rate"]) for p in sel], yi, ls=":", marker=".",
                            color=strategy_colour(s), label=f"{s} (ideal cell)")
            _sweep_lines(ax, result, ref)
            ax.set_xscale("symlog", linthresh=rates[0], linscale=0.5)
            ax.set_xlim(0, rates[-1] * 1.3)
            ax.set_xlabel("fault rate p")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.grid(True, which="both", alpha=0.3)
        top = max([100 * result["float_accuracy"], *(100 * p["accuracy_mean"] for p in pts
                                                      if p["ratio"] == ratio)])
        low = min(lows, default=0.0)
        axes[0][col].set_ylim(max(0.0, low - 3), min(100.0, top + 2) + 0.5)
        axes[0][col].set_title(f"{result.get('model', 'model')}  SA1:SA0 = {ratio}")
        centre = 100 * (ref if ref is not None else result["float_accuracy"])
        axes[1][col].set_ylim(max(0.0, centre - 5), min(100.0, centre + 1.5))
        axes[1][col].set_title(f"near the fault-free chip (SA1:SA0 = {ratio})", fontsize=10)
    axes[0][0].legend(fontsize=8, loc="lower left")
    return fig


def _sweep_reference(result: dict[str, Any]) -> float | None:
    """The fault-free chip's accuracy: on the sweep's device if it has one, else quantised."""
    ref = result.get("device_fault_free_accuracy", result.get("quantised_accuracy"))
    return None if ref is None else float(ref)


def _sweep_lines(ax: Axes, result: dict[str, Any], ref: float | None) -> None:
    ax.axhline(100 * result["float_accuracy"], color="k", ls="--", lw=1, label="float model")
    if ref is None:
        return
    where = f" on {result['device']}" if "device_fault_free_accuracy" in result else ""
    ax.axhline(100 * ref, color="k", lw=1.2, label=f"fault-free chip{where}")
    ax.axhspan(100 * (ref - TOLERANCE), 100 * ref, color="k", alpha=0.08,
               label=f"within {100 * TOLERANCE:g} point")
    ax.plot([0.0], [100 * ref], marker="s", color="k", ls="none")


# -------------------------------------------------------------------------------- fault maps


def heatmap_figure(fm: FaultMap, tiles: Sequence[int] | None = None) -> Figure:
    """Cells of ``fm``, one panel per tile, SA0 blue, SA1 red, healthy light. ``tiles``
    selects which (default: the first :data:`MAX_TILES`; the title says how many of how
    many). An index outside the chip raises :class:`~rcompile.errors.RcompileError`."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from rcompile.faultmap import STATE_NAMES

    geo = fm.geometry
    shown = list(range(min(geo.tiles, MAX_TILES))) if tiles is None else [int(t) for t in tiles]
    bad = [t for t in shown if not 0 <= t < geo.tiles]
    if bad or not shown:
        raise RcompileError(f"{fm.source}: tile(s) {bad or 'none'} selected; expected indices "
                            f"in 0..{geo.tiles - 1}")
    ncols = math.ceil(math.sqrt(len(shown)))
    nrows = math.ceil(len(shown) / ncols)
    panel = 2.2
    fig = _figure(max(ncols * panel, 6.0), nrows * panel * geo.rows / geo.cols + 1.4)
    cmap = ListedColormap(list(STATE_COLOURS))
    per_tile = fm.per_tile_counts()
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(shown):
            ax.set_axis_off()
            continue
        t = shown[i]
        ax.imshow(fm.faults[t], cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        rate = (per_tile[t, 1] + per_tile[t, 2]) / (geo.rows * geo.cols)
        ax.set_title(f"tile {t}  {rate:.1%}", fontsize=8)
    c = fm.counts()
    title = (f"{fm.chip_id}: {geo.tiles} x {geo.rows} x {geo.cols}, fault rate {c['rate']:.2%} "
             f"(SA0 {c['sa0']}, SA1 {c['sa1']})")
    if tiles is None and len(shown) < geo.tiles:
        title += f"\nshowing the first {len(shown)} of {geo.tiles} tiles"
    elif tiles is not None:
        title += f"\nshowing {len(shown)} selected of {geo.tiles} tiles"
    fig.suptitle(title, fontsize=10)
    fig.legend(handles=[Patch(color=col, label=name)
                        for col, name in zip(STATE_COLOURS, STATE_NAMES, strict=True)],
               loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def overview_figure(fm: FaultMap) -> Figure:
    """The whole chip at a glance: every tile one square of a grid, coloured by its fault
    rate, with the SA1 share of its faults written in it when the grid is small enough."""
    geo = fm.geometry
    per_tile = fm.per_tile_counts()
    cells = geo.rows * geo.cols
    grid, ncols = _tile_grid(100 * (per_tile[:, 1] + per_tile[:, 2]) / cells)
    fig = _figure(min(2.0 + 0.6 * ncols, 14.0), min(1.6 + 0.6 * grid.shape[0], 12.0))
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="magma_r", vmin=0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="fault rate (%)")
    if geo.tiles <= 256:
        for t in range(geo.tiles):
            faulty = per_tile[t, 1] + per_tile[t, 2]
            share = per_tile[t, 2] / faulty if faulty else 0.0
            ax.text(t % ncols, t // ncols, f"{t}\n{share:.0%}", ha="center", va="center",
                    fontsize=6, color="k" if grid.flat[t] < 0.6 * np.nanmax(grid) else "w")
    _tile_axes(ax, ncols)
    c = fm.counts()
    ax.set_title(f"{fm.chip_id}: {geo.tiles} tiles of {geo.rows} x {geo.cols}, fault rate "
                 f"{c['rate']:.2%}\n(per tile: index and SA1 share of its faults)", fontsize=9)
    return fig


def _tile_grid(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values`` (one per tile) laid out row-major on a near-square grid, NaN-padded."""
    n = len(values)
    ncols = max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    grid = np.full(nrows * ncols, np.nan)
    grid[:n] = values
    return grid.reshape(nrows, ncols), ncols


def _tile_axes(ax: Axes, ncols: int) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"tile index, row-major ({ncols} per row)")


# -------------------------------------------------------------------------------- images


def tile_usage(image: Image) -> list[dict[str, Any]]:
    """Per physical tile the image uses: ``tile``, ``layers`` (crossbar layers with a slice
    there) and ``utilisation`` (share of the tile's cells that hold a weight, two per weight)."""
    from rcompile.image import used_mask

    out = []
    for tile in image.tiles:
        out.append({"tile": int(tile.tile), "layers": sorted({int(s.layer) for s in tile.slices}),
                    "utilisation": float(used_mask(tile).mean())})
    return out


def placement_figure(image: Image, fm: FaultMap | None = None) -> Figure:
    """Where the image put the model: left, every physical tile of the chip coloured by the
    crossbar layer it holds (grey: unused; a tile shared by layers takes the colour of its
    first), with its layers and cell utilisation written in it (up to 256 tiles); right (with
    the chip's fault map), the fault rate of every tile with the used ones outlined."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    n_tiles = int(image.header["geometry"]["tiles"])
    usage = tile_usage(image)
    layer_of = np.full(n_tiles, np.nan)
    for u in usage:
        layer_of[u["tile"]] = u["layers"][0]
    n_layers = max(1, len(image.layers))
    grid, ncols = _tile_grid(layer_of)
    panels = 2 if fm is not None else 1
    fig = _figure(min(2.5 + 0.65 * ncols, 9.0) * panels + 1.5, min(2.0 + 0.65 * grid.shape[0], 11))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    palette = [_EXTRA_COLOURS[i % len(_EXTRA_COLOURS)] if i >= 10 else f"C{i}"
               for i in range(n_layers)]
    ax = axes[0]
    ax.set_facecolor("#e6e6e6")
    ax.imshow(np.ma.masked_invalid(grid), cmap=ListedColormap(palette), vmin=-0.5,
              vmax=n_layers - 0.5, interpolation="nearest")
    for u in usage if n_tiles <= 256 else ():  # beyond that the labels would overlap
        t = u["tile"]
        layers = "+".join(str(i) for i in u["layers"])
        ax.text(t % ncols, t // ncols, f"L{layers}\n{u['utilisation']:.0%}", ha="center",
                va="center", fontsize=6)
    _tile_axes(ax, ncols)
    mean_util = float(np.mean([u["utilisation"] for u in usage])) if usage else 0.0
    ax.set_title(f"placement: {len(usage)} of {n_tiles} tiles used, mean utilisation "
                 f"{mean_util:.0%}", fontsize=9)
    ax.legend(handles=[Patch(color=palette[i], label=f"{i}: {rec.op.node}"[:40])
                       for i, rec in enumerate(image.layers)],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    if fm is not None:
        per_tile = fm.per_tile_counts()
        geo = fm.geometry
        rates = 100 * (per_tile[:, 1] + per_tile[:, 2]) / (geo.rows * geo.cols)
        fgrid, fcols = _tile_grid(rates)
        ax2 = axes[1]
        im = ax2.imshow(fgrid, cmap="magma_r", vmin=0, interpolation="nearest")
        fig.colorbar(im, ax=ax2, label="fault rate (%)")
        for u in usage:
            t = u["tile"]
            ax2.add_patch(Rectangle((t % fcols - 0.5, t // fcols - 0.5), 1, 1, fill=False,
                                    edgecolor="#2ca02c", lw=2))
        _tile_axes(ax2, fcols)
        ax2.set_title(f"{fm.chip_id}: fault rate per tile (outlined: used)", fontsize=9)
    fig.suptitle(f"image of chip {image.header.get('chip_id')} "
                 f"({image.header.get('strategy')})", fontsize=10)
    return fig


def levels_figure(image: Image) -> Figure:
    """Histogram of the programmed target levels over every cell that holds a weight."""
    from rcompile.image import used_mask

    levels = int(image.header.get("device", {}).get("levels", 16))
    counts = np.zeros(levels, np.int64)
    for tile in image.tiles:
        lv = tile.levels[used_mask(tile)]
        counts += np.bincount(lv.astype(np.int64), minlength=levels)[:levels]
    fig = _figure(6.5, 3.8)
    ax = fig.subplots()
    ax.bar(np.arange(levels), counts, color="#1f77b4", width=0.85)
    ax.set_xlabel("programmed level")
    ax.set_ylabel("cells")
    ax.set_xticks(np.arange(0, levels, max(1, levels // 16)))
    total = int(counts.sum())
    low = counts[0] / total if total else 0.0
    ax.set_title(f"chip {image.header.get('chip_id')}: levels of {total:,} used cells "
                 f"({low:.0%} at level 0)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


# -------------------------------------------------------------------------------- verify reports


def layer_error_figure(report: dict[str, Any]) -> Figure:
    """Per crossbar layer of a verify report: its relative weight error (faulty chip against
    the fault-free chip), with the stuck cells among its weights written beside each bar."""
    layers = report["layers"]
    names = [_short_node(x["node"]) for x in layers]
    err = [100 * (x["weight_rel_error"] or 0.0) for x in layers]
    fig = _figure(7.5, 1.6 + 0.35 * max(1, len(layers)))
    ax = fig.subplots()
    y = np.arange(len(layers))
    ax.barh(y, err, color="#d62728")
    for i, x in enumerate(layers):
        text = "n/a" if x["weight_rel_error"] is None else f"{err[i]:.2f} %"
        ax.text(err[i], i, f"  {text}, {x['stuck_cells']} stuck", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(err, default=0.0) * 1.5 or 1.0)
    ax.set_xlabel("relative weight error ||W_chip - W_intended|| / ||W_intended|| (%)")
    ax.set_title(_report_title(report, "weight error per layer"), fontsize=9)
    return fig


def energy_figure(report: dict[str, Any]) -> Figure:
    """Energy of one inference per layer of a verify report, stacked by where it is spent
    (cells, ADC, DAC, digital periphery), in nanojoules."""
    rows = report["energy"]
    names = [_short_node(x["node"]) for x in rows]
    fig = _figure(7.5, 1.8 + 0.35 * max(1, len(rows)))
    ax = fig.subplots()
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for key, label, colour in ENERGY_PARTS:
        v = np.array([1e9 * float(x.get(key, 0.0)) for x in rows])
        ax.barh(y, v, left=left, color=colour, label=label)
        left += v
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("energy per inference (nJ)")
    total = report.get("energy_per_inference_j") or 0.0
    ax.set_title(_report_title(report, f"energy {1e9 * total:.3f} nJ per inference"), fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _short_node(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _report_title(report: dict[str, Any], what: str) -> str:
    acc = report.get("accuracy")
    acc_text = "" if acc is None else f", accuracy {100 * acc:.2f} %"
    return (f"chip {report.get('chip_id')}: {what}\n(device {report.get('device', 'ideal')}, "
            f"{report.get('mode', 'ideal')} mode{acc_text})")


# -------------------------------------------------------------------------------- lots


def read_lot(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The chip lines of a provisioning report (``report.jsonl``), in file order."""
    from rcompile.provision import read_report

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise RcompileError(f"{p}: no such report; expected the report.jsonl of a provisioned lot")
    return list(read_report(p).values())


def lot_figure(lines: Iterable[dict[str, Any]], min_accuracy: float | None = None) -> Figure:
    """A provisioned lot: the histogram of its verified chips' accuracy, split into passing and
    failing chips against ``min_accuracy`` (default: the threshold the report records, if
    any), and the count of chips per outcome (pass, fail, not verified, error)."""
    lines = list(lines)
    if min_accuracy is None:
        recorded = {x["min_accuracy"] for x in lines if x.get("min_accuracy") is not None}
        min_accuracy = min(recorded) if recorded else None
    acc = np.array([100 * x["accuracy"] for x in lines
                    if x.get("status") != "error" and x.get("accuracy") is not None])
    errors = sum(1 for x in lines if x.get("status") == "error")
    unverified = len(lines) - errors - len(acc)
    fig = _figure(10.0, 4.0)
    ax, bx = fig.subplots(1, 2, width_ratios=(3, 1))
    bins = np.histogram_bin_edges(acc, bins=20) if len(acc) else np.linspace(0, 100, 21)
    if min_accuracy is None:
        ax.hist(acc, bins=bins, color="#1f77b4", label="verified chips")
        outcome = {"verified": len(acc)}
    else:
        gate = 100 * min_accuracy
        ax.hist([acc[acc >= gate], acc[acc < gate]], bins=bins, stacked=True,
                color=["#2ca02c", "#d62728"], label=["pass", "fail"])
        ax.axvline(gate, color="k", ls="--", lw=1, label=f"min accuracy {gate:g} %")
        outcome = {"pass": int((acc >= gate).sum()), "fail": int((acc < gate).sum())}
    outcome |= {"not verified": unverified, "error": errors}
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_ylabel("chips")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.set_title(f"lot of {len(lines)} chips", fontsize=10)
    colours = {"pass": "#2ca02c", "fail": "#d62728", "verified": "#1f77b4",
               "not verified": "#bbbbbb", "error": "#000000"}
    names = list(outcome)
    bars = bx.bar(names, [outcome[k] for k in names], color=[colours[k] for k in names])
    bx.bar_label(bars, fontsize=8)
    bx.yaxis.get_major_locator().set_params(integer=True)
    bx.tick_params(axis="x", labelsize=7, rotation=30)
    bx.set_title("chips per outcome", fontsize=10)
    return fig


__all__ = [
    "FORMATS",
    "STRATEGY_COLOURS",
    "energy_figure",
    "heatmap_figure",
    "layer_error_figure",
    "levels_figure",
    "lot_figure",
    "overview_figure",
    "placement_figure",
    "read_lot",
    "save",
    "strategy_colour",
    "sweep_figure",
    "tile_usage",
]
