"""An image rendered for ``rcompile inspect``: :func:`summary_dict` and :func:`describe`."""

from __future__ import annotations

from typing import Any

import numpy as np

from rcompile.image.records import (
    Image,
    TileRecord,
    canonical_json,
    version_of,
)


def used_mask(t: TileRecord) -> np.ndarray:
    """bool ``[R, C]``: cells some slice of the tile reads (its rows x its pos/neg columns)."""
    mask = np.zeros(t.levels.shape, dtype=bool)
    for s in t.slices:
        cols = np.concatenate([s.pos, s.neg])
        mask[np.ix_(s.phys_rows, cols)] = True
    return mask


def _short(h: Any) -> str:
    return str(h)[:12] if h else "-"


def summary_dict(image: Image) -> dict[str, Any]:
    """JSON-ready summary for ``rcompile inspect --json`` (same content as :func:`describe`)."""
    header = image.header
    geo = header.get("geometry", {})
    dev = header.get("device", {}) if isinstance(header.get("device"), dict) else {}
    n_levels = int(dev.get("levels", 0)) or max(
        [int(t.levels.max()) + 1 for t in image.tiles if t.levels.size] or [1]
    )
    layer_tiles: list[set[int]] = [set() for _ in image.layers]
    tiles = []
    used_total = nonzero_total = 0
    for t in image.tiles:
        mask = used_mask(t)
        used = t.levels[mask]
        hist = np.bincount(used, minlength=n_levels)
        used_total += int(used.size)
        nonzero_total += int(np.count_nonzero(used))
        slices = []
        for s in t.slices:
            layer_tiles[s.layer].add(t.tile)
            slices.append(
                {
                    "layer": s.layer,
                    "node": image.layers[s.layer].op.node,
                    "group": s.group,
                    "rows": len(s.rows),
                    "outs": len(s.outs),
                }
            )
        tiles.append(
            {
                "tile": t.tile,
                "slices": slices,
                "cells_used": int(used.size),
                "cells_nonzero": int(np.count_nonzero(used)),
                "mean_level": float(used.mean()) if used.size else 0.0,
                "level_histogram": [int(c) for c in hist],
            }
        )
    layers = [
        {
            "index": i,
            "node": rec.op.node,
            "op_type": rec.op.op_type,
            "weight_shape": list(rec.op.shape),
            "groups": rec.op.groups,
            "tiles": len(layer_tiles[i]),
        }
        for i, rec in enumerate(image.layers)
    ]
    return {
        "format_version": version_of(image),
        "header": header,
        "graph_bytes": len(image.graph),
        "layers": layers,
        "tiles": tiles,
        "totals": {
            "tiles_used": len(image.tiles),
            "tiles_on_chip": geo.get("tiles"),
            "cells_programmed": used_total,
            "cells_nonzero": nonzero_total,
        },
    }


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def describe(image: Image) -> str:
    """Human-readable text for ``rcompile inspect``: header, layers, tiles, totals."""
    d = summary_dict(image)
    h = image.header
    geo = h.get("geometry", {})
    dev = h.get("device")
    dev_text = (
        " ".join(f"{k}={v}" for k, v in sorted(dev.items())) if isinstance(dev, dict) else "-"
    )
    options = canonical_json(h.get("options", {})).decode()
    lines = [f"rcompile image, format version {d['format_version']}"]
    lines += _table(
        [
            ["chip id", str(h.get("chip_id", "-"))],
            ["model sha256", _short(h.get("model_sha256"))],
            ["fault map sha256", _short(h.get("faultmap_sha256"))],
            ["compiler version", str(h.get("compiler_version", "-"))],
            ["strategy", str(h.get("strategy", "-"))],
            ["options", options],
            ["device", dev_text],
            [
                "geometry",
                f"{geo.get('tiles')} tiles x {geo.get('rows')} rows x {geo.get('cols')} cols",
            ],
            ["digital graph", f"{len(image.graph)} bytes"],
        ]
    )
    lines.append(f"layers ({len(d['layers'])})")
    if d["layers"]:
        rows = [["#", "node", "op", "weight shape", "groups", "tiles"]]
        rows += [
            [
                str(x["index"]),
                x["node"],
                x["op_type"],
                "x".join(map(str, x["weight_shape"])),
                str(x["groups"]),
                str(x["tiles"]),
            ]
            for x in d["layers"]
        ]
        lines += _table(rows)
    lines.append(f"tiles ({len(d['tiles'])} used of {geo.get('tiles')})")
    for t in d["tiles"]:
        used = t["cells_used"]
        hist = t["level_histogram"]
        at0 = hist[0] / used if used else 0.0
        top = hist[-1] / used if used else 0.0
        lines.append(
            f"  tile {t['tile']}: {len(t['slices'])} slices, {used} cells used, "
            f"mean level {t['mean_level']:.2f}, {at0:.0%} at level 0, "
            f"{top:.0%} at level {len(hist) - 1}"
        )
        for s in t["slices"]:
            lines.append(
                f"    layer {s['layer']} {s['node']} group {s['group']}: "
                f"{s['rows']} rows x {s['outs']} outs"
            )
    tot = d["totals"]
    lines.append(
        f"totals: {tot['tiles_used']} tiles used of {tot['tiles_on_chip']}, "
        f"{tot['cells_programmed']} cells programmed ({tot['cells_nonzero']} at a non-zero level)"
    )
    return "\n".join(lines) + "\n"
