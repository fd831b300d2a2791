"""Reports on a fault map: a PNG heat map and a text summary."""

from __future__ import annotations

import os

from rcompile.faultmap.format import FaultMap

MAX_HEATMAP_TILES = 64
"""Tiles drawn by :func:`render_heatmap`; larger chips show the first ones and say so."""


def render_heatmap(fm: FaultMap, path: str | os.PathLike[str]) -> None:
    """Write the heat map of ``fm`` (:func:`rcompile.plots.heatmap_figure`) to ``path``, PNG or
    SVG by extension, atomically."""
    from rcompile import plots

    plots.save(plots.heatmap_figure(fm), path, what="heat map")


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
