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
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from typing import Any

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist,dense")
    ap.add_argument("--rates", default="0,0.01,0.05,0.1")
    ap.add_argument("--ratios", default="5:1,1:5")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="solver worker processes")
    ap.add_argument("--out", default="/tmp/slicing")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",")]
    ratios = [tuple(float(x) for x in r.split(":")) for r in args.ratios.split(",")]
    with solvers.limited(args.jobs):
        for name in args.models.split(","):
            res = run_model(name, rates, ratios, args.seeds, args.out)  # type: ignore[arg-type]
            print(table(name, res), flush=True)
            print(flush=True)


if __name__ == "__main__":
    main()
