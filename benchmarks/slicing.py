"""What bit-sliced weights buy against faults and against quantisation error (docs/slicing.md).

For each model, one ``rcompile.sweep`` per cell (strategy ``full``, the calibration data, 10 %
spare tiles, ideal converters, 3 fault-map seeds per point):

* ``4b`` — 4-bit weights on one 16-level cell per polarity (the default cell);
* ``8b=2x4b`` — 8-bit weights on two 16-level cells per polarity, significance 16 and 1
  (``[cell] weight_bits = 8, cell_bits = 4``);
* ``8b=1x256`` — 8-bit weights on one 256-level cell per polarity (``[cell] levels = 256``).

Every chip is sized for its own cell (a sliced model needs twice the tiles), so ``p`` is the
same stuck fraction of a larger array. Prints one markdown table per model and writes every
sweep's JSON to ``--out``::

    python benchmarks/slicing.py --out /tmp/slicing            # MNIST and examples/dense
    python benchmarks/slicing.py --models mnist --rates 0,0.1 --seeds 1   # a quick look
    python benchmarks/slicing.py --detail --models mnist --rates 0,0.1,0.2,0.3
        # accuracy and weight error against the float weights, with and without compensation
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np

from rcompile import solvers
from rcompile.device import PRESETS, Cell, Hardware
from rcompile.sweep import run_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "mnist": ("examples/mnist/mnist_cnn.onnx", "examples/mnist/test.npz",
              "examples/mnist/calib.npz"),
    "dense": ("examples/dense/dense_cnn.onnx", "examples/dense/test.npz",
              "examples/dense/calib.npz"),
}


def cells() -> dict[str, Hardware]:
    """The three cells compared, each as an ideal device (exact programming, ideal converters)."""
    ideal = PRESETS["ideal"]
    return {
        "4b": replace(ideal, name="ideal-4b"),
        "8b=2x4b": replace(ideal, name="ideal-8b-2x4b",
                           cell=Cell(levels=16, weight_bits=8, cell_bits=4)),
        "8b=1x256": replace(ideal, name="ideal-8b-1x256", cell=Cell(levels=256)),
    }


def run_model(name: str, rates: list[float], ratios: list[tuple[float, float]], seeds: int,
              out: str) -> dict[str, dict[str, Any]]:
    model, data, calib = (os.path.join(ROOT, p) for p in MODELS[name])
    results = {}
    for label, hw in cells().items():
        t0 = time.perf_counter()
        res = run_sweep(model, data, rates=rates, ratios=ratios, strategies=["full"],
                          seeds=seeds, calib_path=calib, hardware=hw, mode="ideal")
        res["wall_seconds"] = time.perf_counter() - t0
        with open(os.path.join(out, f"{name}-{label}.json"), "w") as f:
            json.dump(res, f, indent=1, sort_keys=True)
        results[label] = res
        print(f"  {name} {label}: {res['wall_seconds']:.0f} s", flush=True)
    return results


def table(name: str, results: dict[str, dict[str, Any]]) -> str:
    """Markdown: accuracy mean ± std per (ratio, p) and cell, then tiles and build time."""
    labels = list(results)
    first = results[labels[0]]
    lines = [f"**{name}** ({first['model']}, {first['n_samples']} test digits, float "
             f"{100 * first['float_accuracy']:.2f} %)", "",
             "| SA1:SA0 | p | " + " | ".join(labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    keys = sorted({(p["ratio"], p["rate"]) for p in first["points"]},
                  key=lambda k: (k[1] > 0, k[0], k[1]))
    for ratio, rate in keys:
        if rate == 0 and ratio != keys[0][0]:
            continue  # p = 0 is the same chip at every ratio
        cells_txt = []
        for lab in labels:
            pt = next(p for p in results[lab]["points"]
                      if p["ratio"] == ratio and p["rate"] == rate)
            cells_txt.append(f"{100 * pt['accuracy_mean']:.2f} ± {100 * pt['accuracy_std']:.2f}")
        lines.append(f"| {'any' if rate == 0 else ratio} | {100 * rate:g} % | "
                     + " | ".join(cells_txt) + " |")
    lines.append("| chip tiles | | " + " | ".join(str(results[lab]["tiles"]) for lab in labels)
                 + " |")
    med = [f"{max(p['build_seconds_median'] for p in results[lab]['points']):.1f}"
           for lab in labels]
    lines.append("| slowest median build, s | | " + " | ".join(med) + " |")
    return "\n".join(lines)


def _float_error(lot: Any, image: Any, fm: Any) -> float:
    """``sqrt(sum r_i (W_chip - W_float)^2 / sum r_i W_float^2)`` over every crossbar layer,
    ``r_i = E[x_i^2]`` of each matrix row on the calibration data (the objective's weights): what
    quantisation and the stuck cells leave of the trained weights, where inputs reach them."""
    from rcompile import runtime
    from rcompile.ir import to_matrices

    got = runtime.effective_weights(image, fm)
    num = den = 0.0
    for g, op, w, stats in zip(got, lot.plan.ops, lot.plan.float_mats, lot.calib, strict=True):
        r = stats.power.astype(np.float64)[:, :, None]
        chip = to_matrices(op, np.asarray(g, np.float64))
        num += float(np.sum(r * (chip - w) ** 2))
        den += float(np.sum(r * w.astype(np.float64) ** 2))
    return (num / den) ** 0.5


def _uncompensated(lot: Any, fm: Any, header: dict[str, Any]) -> Any:
    """The ``full`` image of a sliced plan built without moving the low digits."""
    from rcompile import api, slicing
    from rcompile import pipeline as pl
    from rcompile.ir import chip_view

    plan = lot.plan
    device = api.chip_device(plan, fm)
    ctx = pl.ChipContext(geometry=fm.geometry, device=device, stuck=fm.stuck_levels(device),
                         chip_id=fm.chip_id, calib=lot.calib)
    mapping, _ = slicing.run_chip(api.chip_pipeline(api.STRATEGIES["full"], plan), plan, ctx,
                                  compensate_digits=False)
    return api.to_image(chip_view(plan, mapping), mapping, header)


def detail(name: str, rates: list[float], seeds: int) -> str:
    """Markdown: accuracy and weight error against the float weights per cell at SA1:SA0 = 5:1,
    with the sliced cell also built without compensation (same chips)."""
    from rcompile import api, runtime
    from rcompile import faultmap as fmap
    from rcompile.data import input_specs, load_data

    model, data_path, calib = (os.path.join(ROOT, p) for p in MODELS[name])
    hws = cells()
    family = fmap.FaultMap(np.zeros((1, 128, 128), np.uint8), chip_id="family")
    lots = {lab: api.plan_lot(model, family, hardware=hw, calib_path=calib)
            for lab, hw in hws.items()}
    data = load_data(data_path, input_specs(lots["4b"].plan.model))
    labels = ["4b", "8b=2x4b", "8b=2x4b no comp.", "8b=1x256"]
    rows = ["| p | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for rate in rates:
        acc: dict[str, list[float]] = {lab: [] for lab in labels}
        err: dict[str, list[float]] = {lab: [] for lab in labels}
        for seed in range(seeds):
            for lab in labels:
                cell = lab.removesuffix(" no comp.")
                lot = lots[cell]
                tiles = api.spare_tiles(lot.plan.tiles_needed(), 0.1)
                fm = fmap.synth(tiles, 128, 128, rate, (5.0, 1.0), seed)
                image = api.compile_chip(model, fm, lot=lot, strategy="full",
                                         hardware=hws[cell]).image
                if lab != cell:
                    image = _uncompensated(lot, fm, image.header)
                rep = runtime.verify(image, fm, data, mode="ideal")
                acc[lab].append(float(rep.accuracy or 0.0))
                err[lab].append(_float_error(lot, image, fm))
        rows.append(f"| {100 * rate:g} % | " + " | ".join(
            f"{100 * np.mean(acc[lab]):.2f} / {100 * np.mean(err[lab]):.2f}" for lab in labels)
            + " |")
        print(rows[-1], flush=True)
    return "\n".join([f"**{name}**, SA1:SA0 = 5:1, {seeds} seeds: accuracy % / weight error "
                      "against the float weights, weighted by E[x^2] of each row, %", "", *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist,dense")
    ap.add_argument("--rates", default="0,0.01,0.05,0.1")
    ap.add_argument("--ratios", default="5:1,1:5")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="solver worker processes")
    ap.add_argument("--out", default="/tmp/slicing")
    ap.add_argument("--detail", action="store_true",
                    help="accuracy and weight error against float, with and without "
                         "compensation (5:1)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",")]
    ratios = [tuple(float(x) for x in r.split(":")) for r in args.ratios.split(",")]
    with solvers.limited(args.jobs):
        for name in args.models.split(","):
            if args.detail:
                print(detail(name, rates, args.seeds), flush=True)
                continue
            res = run_model(name, rates, ratios, args.seeds, args.out)  # type: ignore[arg-type]
            print(table(name, res), flush=True)
            print(flush=True)


if __name__ == "__main__":
    main()
