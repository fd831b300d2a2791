"""Accuracy against fault rate, per strategy, on synthetic chips (``rcompile sweep``).

The plan is made once; for every (rate, ratio, seed) one synthetic chip is drawn and every
strategy is compiled for that same chip, then checked by the verifying runtime on the labelled
data. Means and spreads are over seeds. The float model's accuracy is the fault-free line.

With a device model every build is verified twice, on the device (programming variation, read
noise, converters; noise seed = fault-map seed) and on the ideal cell, so one sweep shows
accuracy against fault rate with and without the non-idealities. The reference of the device's
tolerated fault rate is then a fault-free chip *on that device* (one per seed, same noise
seeds), not the ideal quantised model: a non-ideal device should not count its own noise
floor as damage done by stuck cells.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import onnx

from rcompile import api, runtime
from rcompile import faultmap as fmap
from rcompile import pipeline as pl
from rcompile.data import input_specs, load_data
from rcompile.device import Hardware
from rcompile.errors import BadData
from rcompile.progress import Event, ProgressFn, notify
from rcompile.sweepstore import Point, SweepStore, arguments


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
    prune: str | None = None,
    progress: ProgressFn | None = None,
    hardware: Hardware | None = None,
    mode: str = "auto",
    pattern: str = "uniform",
    pipelines: dict[str, str] | None = None,
    solver: pl.SolverOptions | None = None,
    results: str | None = None,
) -> dict[str, Any]:
    """``hardware`` (a device model) is what the compiler quantises for and what every chip is
    verified on, in ``mode``; the programming noise seed is the fault-map seed. None: the ideal
    cell, as before device models existed. ``progress`` hears of the plan's passes, of every
    build's passes and verification, and of every point (a fault map compiled for every
    strategy and verified; stage ``sweep``), :mod:`rcompile.progress`. ``pattern`` is the fault-map
    kind of :func:`rcompile.faultmap.synth` (uniform, clustered, lines). ``pipelines`` names
    custom per-chip pipelines (name -> pipeline string); a strategy of that name runs its
    pipeline on the same chips as the named strategies.
    ``solver``: the options of every solver call (time limit, seed). ``results``: the file
    that keeps every finished measurement (:mod:`rcompile.sweepstore`); those already in it
    are not measured again, so a stopped sweep resumes."""
    pipelines = pipelines or {}
    solver = solver or pl.SolverOptions()
    family = fmap.FaultMap(np.zeros((1, rows, cols), np.uint8), chip_id="family",
                           source="sweep chip family")
    moments = any(api.needs_moments(pipelines.get(s) or api.STRATEGIES[s]) for s in strategies)
    lot = api.plan_lot(model_path, family, hardware=hardware, calib_path=calib_path,
                       prune=prune, moments=moments, progress=progress)
    plan, plan_log = lot.plan, list(lot.log)
    data = load_data(data_path, input_specs(plan.model))
    if data.labels is None:
        raise BadData(f"{data_path}: sweep needs 'labels' to measure accuracy")
    store = SweepStore(results, arguments(model_path, data_path, calib_path, prune, hardware,
                                          mode, pattern, rows, cols, spare, solver))
    float_out = runtime.run(onnx.load(model_path), data)[0]
    float_acc = float(np.mean(np.argmax(float_out.reshape(len(float_out), -1), 1) == data.labels))
    tiles = api.spare_tiles(plan.tiles_needed(), spare)
    chips = _Chips(model_path, lot, data, hardware, mode, solver, progress)
    points = [(r, a, s) for r in rates for a in ratios for s in range(seeds)]

    def keys(rate: float, ratio: tuple[float, float], seed: int) -> list[Point]:
        text = f"{ratio[0]:g}:{ratio[1]:g}"
        return [(rate, text, seed, s, pipelines.get(s, api.STRATEGIES.get(s, "")))
                for s in strategies]

    device_fault_free: list[float] = []
    if hardware is not None:  # the device's own noise floor: a fault-free chip per noise seed
        missing = [seed for seed in range(seeds) if seed not in store.floors]
        if missing:
            healthy = fmap.synth(tiles, rows, cols, 0.0, (1.0, 1.0), 0)
            image = api.compile_chip(model_path, healthy, lot=lot, strategy="two-column",
                                     solver=solver, progress=progress).image
            for seed in missing:
                store.add_floor(seed, chips.floor(image, healthy, seed))
        device_fault_free = [store.floors[seed] for seed in range(seeds)]
    finished = sum(all(store.point(k) for k in keys(*p)) for p in points)
    notify(progress, Event("sweep", "start", finished, len(points)))
    for rate, ratio, seed in points:
        todo = [k for k in keys(rate, ratio, seed) if store.point(k) is None]
        if not todo:
            continue
        t0 = time.perf_counter()
        fm = fmap.synth(tiles, rows, cols, rate, ratio, seed, kind=pattern)
        for key in todo:
            store.add_point(key, chips.measure(fm, key[3], pipelines.get(key[3]), seed))
        finished += 1
        label = f"p={100 * rate:g}% {ratio[0]:g}:{ratio[1]:g} seed {seed}"
        notify(progress, Event("sweep", label, finished, len(points), time.perf_counter() - t0))
    raw: dict[tuple[str, float, str], list[tuple[float, float, float, float]]] = {}
    fault_free: list[float] = []
    for point in points:  # in sweep order, however the measurements were made or resumed
        for key in keys(*point):
            got = store.point(key)
            assert got is not None
            raw.setdefault((key[3], key[0], key[1]), []).append(
                (got["accuracy"], got["seconds"], got["energy_per_inference_j"],
                 got["ideal_accuracy"]))
            if got["fault_free_accuracy"] is not None:
                fault_free.append(got["fault_free_accuracy"])
    rowsout = []
    for (strategy, rate, ratio_text), vals in raw.items():
        accs = np.array([v[0] for v in vals])
        row = {
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
        if hardware is not None:
            ideal_accs = np.array([v[3] for v in vals])
            row["ideal_accuracy_mean"] = float(ideal_accs.mean())
            row["ideal_accuracy_std"] = float(ideal_accs.std())
        rowsout.append(row)
    result: dict[str, Any] = {
        "model": os.path.basename(model_path),
        "data": os.path.basename(data_path),
        "n_samples": data.n,
        "tiles": tiles,
        "plan_pipeline": api.plan_pipeline(prune),
        "plan": plan_log,
        "device": hardware.name if hardware is not None else "ideal",
        "mode": mode,
        "pattern": pattern,
        "pipelines": pipelines,
        "float_accuracy": float_acc,
        "quantised_accuracy": float(np.mean(fault_free)) if fault_free else None,
        "points": rowsout,
    }
    if hardware is not None:
        result["device_fault_free_accuracy"] = float(np.mean(device_fault_free))
        result["device_fault_free_accuracy_std"] = float(np.std(device_fault_free))
        result["tolerated_ideal"] = tolerated(
            result, reference=result["quantised_accuracy"], key="ideal_accuracy_mean"
        )
    result["tolerated"] = tolerated(result)
    return result


class _Chips:
    """Compiles and verifies the chips of one sweep (everything but the chip is fixed)."""

    def __init__(self, model_path: str, lot: api.LotPlan, data: Any, hardware: Hardware | None,
                 mode: str, solver: pl.SolverOptions, progress: ProgressFn | None) -> None:
        self.model_path, self.lot, self.data = model_path, lot, data
        self.hardware, self.mode, self.solver, self.progress = hardware, mode, solver, progress

    def floor(self, image: Any, healthy: fmap.FaultMap, seed: int) -> float:
        """Accuracy of the fault-free ``image`` on the device with noise seed ``seed``."""
        rep = self._verify(f"fault-free seed {seed}", image, healthy, hardware=self.hardware,
                           mode=self.mode, noise_seed=seed)
        assert rep.accuracy is not None
        return rep.accuracy

    def measure(self, fm: fmap.FaultMap, strategy: str, pipeline: str | None,
                seed: int) -> dict[str, Any]:
        """Compile ``strategy`` for ``fm`` and verify it (on the device and, with one, on the
        ideal cell too): what one point of the sweep keeps."""
        t0 = time.perf_counter()
        res = api.compile_chip(self.model_path, fm, lot=self.lot, strategy=strategy,
                               pipeline=pipeline, solver=self.solver, progress=self.progress)
        seconds = time.perf_counter() - t0
        rep = self._verify(strategy, res.image, fm, hardware=self.hardware, mode=self.mode,
                           noise_seed=seed)
        assert rep.accuracy is not None
        ideal = rep.accuracy
        if self.hardware is not None:
            ideal_rep = self._verify(f"{strategy} ideal", res.image, fm, mode="ideal")
            assert ideal_rep.accuracy is not None
            ideal = ideal_rep.accuracy
        return {"accuracy": rep.accuracy, "seconds": seconds,
                "energy_per_inference_j": rep.energy_per_inference_j or 0.0,
                "ideal_accuracy": ideal, "fault_free_accuracy": rep.fault_free_accuracy}

    def _verify(self, what: str, image: Any, fm: fmap.FaultMap,
                **options: Any) -> runtime.Report:
        notify(self.progress, Event("verify", what, 0, 1))
        t0 = time.perf_counter()
        rep = runtime.verify(image, fm, self.data, **options)
        notify(self.progress, Event("verify", what, 1, 1, time.perf_counter() - t0))
        return rep


def tolerated(
    result: dict[str, Any],
    within: float = 0.01,
    *,
    reference: float | None = None,
    key: str = "accuracy_mean",
) -> list[dict[str, Any]]:
    """Per (strategy, ratio): the highest swept p whose mean accuracy (``key``) stays within
    ``within`` of the fault-free chip's accuracy, with every lower swept p also within
    (docs/design.md §7). The fault-free chip is the one on the sweep's device when there is one
    (``device_fault_free_accuracy``), else the quantised model; ``reference`` overrides."""
    ref = reference
    if ref is None:
        ref = result.get("device_fault_free_accuracy", result["quantised_accuracy"])
    out = []
    pts = result["points"]
    for strategy in dict.fromkeys(p["strategy"] for p in pts):
        for ratio in dict.fromkeys(p["ratio"] for p in pts):
            best = None
            for p in sorted(
                (p for p in pts if p["strategy"] == strategy and p["ratio"] == ratio),
                key=lambda p: p["rate"],
            ):
                if p[key] < ref - within:
                    break
                best = p["rate"]
            out.append({"strategy": strategy, "ratio": ratio, "tolerated_rate": best})
    return out


def table(result: dict[str, Any]) -> str:
    """Markdown table: one row per (ratio, rate), one column per strategy (mean ± std %); with a
    device each cell reads ``device / ideal``."""
    pts = result["points"]
    strategies = list(dict.fromkeys(p["strategy"] for p in pts))
    keys = sorted({(p["ratio"], p["rate"]) for p in pts}, key=lambda k: (k[0], k[1]))
    by = {(p["strategy"], p["ratio"], p["rate"]): p for p in pts}
    on_device = "device_fault_free_accuracy" in result
    device = result.get("device", "ideal")
    head = (
        f"float model {100 * result['float_accuracy']:.2f} %, fault-free chip (quantised) "
        f"{100 * (result['quantised_accuracy'] or math.nan):.2f} %"
    )
    if on_device:
        head += (
            f", fault-free chip on {device} {100 * result['device_fault_free_accuracy']:.2f} ± "
            f"{100 * result['device_fault_free_accuracy_std']:.2f} %"
        )
    pattern = result.get("pattern", "uniform")
    lines = [
        f"{head}, {result['n_samples']} samples, {result['tiles']} tiles, device {device} "
        f"({result.get('mode', 'auto')} mode)"
        + ("" if pattern == "uniform" else f", {pattern} faults"),
        "",
    ]
    if on_device:
        lines += [f"each cell: on {device} / on the ideal cell (same build, same chip)", ""]
    lines += [
        "| SA1:SA0 | p | " + " | ".join(strategies) + " |",
        "|---|---|" + "---|" * len(strategies),
    ]
    for ratio, rate in keys:
        cells = []
        for s in strategies:
            p = by.get((s, ratio, rate))
            cell = "" if p is None else _pm(p["accuracy_mean"], p["accuracy_std"])
            if p is not None and on_device:
                cell += " / " + _pm(p["ideal_accuracy_mean"], p["ideal_accuracy_std"])
            cells.append(cell)
        lines.append(f"| {ratio} | {100 * rate:g} % | " + " | ".join(cells) + " |")
    sets = [("", result.get("tolerated", []))]
    if on_device:
        sets = [(f" on {device}", result.get("tolerated", [])),
                (" on the ideal cell", result.get("tolerated_ideal", []))]
    for where, rows in sets:
        lines += ["", f"Tolerated fault rate{where} (highest p within 1 point of the fault-free "
                  f"chip{where}):"]
        for t in rows:
            rate = "none" if t["tolerated_rate"] is None else f"{100 * t['tolerated_rate']:g} %"
            lines.append(f"  {t['strategy']:<12} {t['ratio']:>4}  {rate}")
    return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def render_plot(result: dict[str, Any], path: str) -> None:
    """Write the accuracy-vs-fault-rate figure of ``result`` (:func:`rcompile.plots.sweep_figure`)
    to ``path``, PNG or SVG by extension, atomically."""
    from rcompile import plots

    plots.save(plots.sweep_figure(result), path, what="plot")
