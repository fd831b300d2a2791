"""Accuracy against fault rate, per strategy, on synthetic chips (``rcompile sweep``).

The plan is made once; for every (rate, ratio, seed) one synthetic chip is drawn and every
strategy is compiled for that same chip, then checked by the verifying runtime on the labelled
data. Means and spreads are over seeds. The float model's accuracy is the fault-free line.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from typing import Any

import click
import numpy as np
import onnx

from rcompile import api, runtime
from rcompile import faultmap as fmap
from rcompile.data import input_specs, load_data
from rcompile.device import Hardware
from rcompile.errors import BadData
from rcompile.fileio import atomic_write
from rcompile.programming import compiler_device


def run_sweep(
    model_path: str,
    data_path: str,
    *,
    rates: list[float],
    ratios: list[tuple[float, float]],
    strategies: list[str],
    seeds: int = 3,
    spare: float = 0.10,
    rows: int = 128,
    cols: int = 128,
    calib_path: str | None = None,
    plan_pipeline: str = api.PLAN_PIPELINE,
    progress: bool = False,
    hardware: Hardware | None = None,
    mode: str = "auto",
) -> dict[str, Any]:
    """``hardware`` (a device model) is what the compiler quantises for and what every chip is
    verified on, in ``mode``; the programming noise seed is the fault-map seed. None: the ideal
    cell, as before device models existed."""
    device = compiler_device(hardware) if hardware is not None else None
    plan, plan_log = api.make_plan(
        model_path, tile_rows=rows, tile_cols=cols, pipeline=plan_pipeline, device=device
    )
    data = load_data(data_path, input_specs(plan.model))
    if data.labels is None:
        raise BadData(f"{data_path}: sweep needs 'labels' to measure accuracy")
    stats = None
    if calib_path is not None:
        stats = api.load_calib_stats(plan, calib_path)
    float_out = runtime.run(onnx.load(model_path), data)[0]
    float_acc = float(np.mean(np.argmax(float_out.reshape(len(float_out), -1), 1) == data.labels))
    tiles = api.spare_tiles(plan.tiles_needed(), spare)
    points = [(r, a, s) for r in rates for a in ratios for s in range(seeds)]
    raw: dict[tuple[str, float, str], list[tuple[float, float, float]]] = {}
    fault_free: list[float] = []
    sink = sys.stderr if progress else io.StringIO()
    with click.progressbar(points, label="sweep", file=sink) as bar:
        for rate, ratio, seed in bar:
            fm = fmap.synth(tiles, rows, cols, rate, ratio, seed)
            for strategy in strategies:
                t0 = time.perf_counter()
                res = api.build(plan, fm, strategy=strategy, calib=stats)
                seconds = time.perf_counter() - t0
                rep = runtime.verify(res.image, fm, data, hardware=hardware, mode=mode,
                                     noise_seed=seed)
                assert rep.accuracy is not None
                key = (strategy, rate, f"{ratio[0]:g}:{ratio[1]:g}")
                raw.setdefault(key, []).append(
                    (rep.accuracy, seconds, rep.energy_per_inference_j or 0.0)
                )
                if rep.fault_free_accuracy is not None:
                    fault_free.append(rep.fault_free_accuracy)
    rowsout = []
    for (strategy, rate, ratio_text), vals in raw.items():
        accs = np.array([v[0] for v in vals])
        rowsout.append(
            {
                "strategy": strategy,
                "rate": rate,
                "ratio": ratio_text,
                "accuracy_mean": float(accs.mean()),
                "accuracy_std": float(accs.std()),
                "accuracy_min": float(accs.min()),
                "build_seconds_median": float(np.median([v[1] for v in vals])),
                "energy_per_inference_j_mean": float(np.mean([v[2] for v in vals])),
                "seeds": len(vals),
            }
        )
    result = {
        "model": os.path.basename(model_path),
        "data": os.path.basename(data_path),
        "n_samples": data.n,
        "tiles": tiles,
        "plan_pipeline": plan_pipeline,
        "plan": plan_log,
        "device": hardware.name if hardware is not None else "ideal",
        "mode": mode,
        "float_accuracy": float_acc,
        "quantised_accuracy": float(np.mean(fault_free)) if fault_free else None,
        "points": rowsout,
    }
    result["tolerated"] = tolerated(result)
    return result


def tolerated(result: dict[str, Any], within: float = 0.01) -> list[dict[str, Any]]:
    """Per (strategy, ratio): the highest swept p whose mean accuracy stays within ``within``
    of the fault-free chip's accuracy, with every lower swept p also within (DESIGN §7)."""
    ref = result["quantised_accuracy"]
    out = []
    pts = result["points"]
    for strategy in dict.fromkeys(p["strategy"] for p in pts):
        for ratio in dict.fromkeys(p["ratio"] for p in pts):
            best = None
            for p in sorted(
                (p for p in pts if p["strategy"] == strategy and p["ratio"] == ratio),
                key=lambda p: p["rate"],
            ):
                if p["accuracy_mean"] < ref - within:
                    break
                best = p["rate"]
            out.append({"strategy": strategy, "ratio": ratio, "tolerated_rate": best})
    return out


def table(result: dict[str, Any]) -> str:
    """Markdown table: one row per (ratio, rate), one column per strategy (mean ± std %)."""
    pts = result["points"]
    strategies = list(dict.fromkeys(p["strategy"] for p in pts))
    keys = sorted({(p["ratio"], p["rate"]) for p in pts}, key=lambda k: (k[0], k[1]))
    by = {(p["strategy"], p["ratio"], p["rate"]): p for p in pts}
    lines = [
        f"float model {100 * result['float_accuracy']:.2f} %, fault-free chip (quantised) "
        f"{100 * (result['quantised_accuracy'] or math.nan):.2f} %, {result['n_samples']} samples, "
        f"{result['tiles']} tiles, device {result.get('device', 'ideal')} "
        f"({result.get('mode', 'auto')} mode)",
        "",
        "| SA1:SA0 | p | " + " | ".join(strategies) + " |",
        "|---|---|" + "---|" * len(strategies),
    ]
    for ratio, rate in keys:
        cells = []
        for s in strategies:
            p = by.get((s, ratio, rate))
            cells.append(
                ""
                if p is None
                else f"{100 * p['accuracy_mean']:.2f} ± {100 * p['accuracy_std']:.2f}"
            )
        lines.append(f"| {ratio} | {100 * rate:g} % | " + " | ".join(cells) + " |")
    lines += ["", "Tolerated fault rate (highest p within 1 point of the fault-free chip):"]
    for t in result.get("tolerated", []):
        rate = "none" if t["tolerated_rate"] is None else f"{100 * t['tolerated_rate']:g} %"
        lines.append(f"  {t['strategy']:<12} {t['ratio']:>4}  {rate}")
    return "\n".join(lines)


def render_plot(result: dict[str, Any], path: str) -> None:
    """Accuracy vs fault rate (log x), one panel per ratio, fault-free accuracy as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    ratios = list(dict.fromkeys(p["ratio"] for p in pts))
    fig, axes = plt.subplots(1, len(ratios), figsize=(5.5 * len(ratios), 4), squeeze=False)
    for ax, ratio in zip(axes[0], ratios, strict=True):
        for s in dict.fromkeys(p["strategy"] for p in pts):
            sel = sorted(
                (p for p in pts if p["strategy"] == s and p["ratio"] == ratio),
                key=lambda p: p["rate"],
            )
            x = [p["rate"] for p in sel]
            y = np.array([100 * p["accuracy_mean"] for p in sel])
            e = np.array([100 * p["accuracy_std"] for p in sel])
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=s)
        ax.axhline(100 * result["float_accuracy"], color="k", ls="--", lw=1, label="fault-free")
        ax.set_xscale("log")
        ax.set_xlabel("fault rate p")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{result['model']}  SA1:SA0 = {ratio}")
        ax.set_ylim(0, 100)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue(), what="plot")
