"""Reports on a fault map: a PNG heat map and a text summary."""

from __future__ import annotations

import io
import math
import os

from rcompile.faultmap.format import STATE_NAMES, FaultMap
from rcompile.fileio import atomic_write

MAX_HEATMAP_TILES = 64
"""Tiles drawn by :func:`render_heatmap`; larger chips show the first ones and say so."""


def render_heatmap(fm: FaultMap, path: str | os.PathLike[str]) -> None:
    """Write a PNG heat map of ``fm``: one panel per tile, SA0 blue, SA1 red, healthy light.

    At most :data:`MAX_HEATMAP_TILES` tiles are drawn (a note in the title says how many of
    how many). Uses matplotlib's Agg renderer without pyplot (no global state, no display);
    the file is written atomically.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    geo = fm.geometry
    shown = min(geo.tiles, MAX_HEATMAP_TILES)
    ncols = math.ceil(math.sqrt(shown))
    nrows = math.ceil(shown / ncols)
    panel = 2.2
    aspect = geo.rows / geo.cols
    fig = Figure(figsize=(ncols * panel, nrows * panel * aspect + 1.2), dpi=100)
    colors = ("#f2f2f2", "#1f5fbf", "#d62728")  # healthy, SA0, SA1
    cmap = ListedColormap(list(colors))
    per_tile = fm.per_tile_counts()
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= shown:
            ax.set_axis_off()
            continue
        ax.imshow(fm.faults[i], cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        tile_rate = (per_tile[i, 1] + per_tile[i, 2]) / (geo.rows * geo.cols)
        ax.set_title(f"tile {i}  {tile_rate:.1%}", fontsize=8)
    c = fm.counts()
    title = (
        f"{fm.chip_id}: {geo.tiles} x {geo.rows} x {geo.cols}, fault rate {c['rate']:.2%} "
        f"(SA0 {c['sa0']}, SA1 {c['sa1']})"
    )
    if shown < geo.tiles:
        title += f"\nshowing the first {shown} of {geo.tiles} tiles"
    fig.suptitle(title, fontsize=10)
    fig.legend(
        handles=[
            Patch(color=col, label=name) for col, name in zip(colors, STATE_NAMES, strict=True)
        ],
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write(path, buf.getvalue(), what="heat map")


def summary_text(fm: FaultMap) -> str:
    """A compact table: identity and geometry, totals per state, then counts and rate per tile."""
    geo = fm.geometry
    c = fm.counts()
    cells = geo.tiles * geo.rows * geo.cols
    lines = [
        f"chip     {fm.chip_id}",
        f"source   {fm.source}",
        f"sha256   {fm.digest()}",
        f"geometry {geo.tiles} tiles x {geo.rows} rows x {geo.cols} cols = {cells:,} cells",
    ]
    overrides = fm.device_overrides()
    if overrides:
        lines.append("device   " + ", ".join(f"{k}={v:g}" for k, v in overrides.items()))
    lines.append(f"stuck_g  {'measured' if fm.stuck_g is not None else 'absent'}")
    lines.append("")
    lines.append(f"{'state':<8} {'cells':>12} {'share':>8}")
    for name, key in (("healthy", "healthy"), ("SA0", "sa0"), ("SA1", "sa1")):
        lines.append(f"{name:<8} {c[key]:>12,} {c[key] / cells:>8.3%}")
    lines.append(f"{'faulty':<8} {c['sa0'] + c['sa1']:>12,} {c['rate']:>8.3%}")
    lines.append("")
    lines.append(f"{'tile':>5} {'healthy':>9} {'SA0':>7} {'SA1':>7} {'rate':>8}")
    per_cell = geo.rows * geo.cols
    for t, (h, s0, s1) in enumerate(fm.per_tile_counts().tolist()):
        lines.append(f"{t:>5} {h:>9} {s0:>7} {s1:>7} {(s0 + s1) / per_cell:>8.3%}")
    return "\n".join(lines)
