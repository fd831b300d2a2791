"""Tile mode against plain onnxruntime, per ADC read (``column``, ``pair``), side by side.

:func:`measure` times ``runtime.verify`` in ``tile`` mode on the ``neurosim`` device and on the
same device with ``adc = pair``, on MNIST (the test set five times: 5000 images) and on VGG-8
(256 random inputs), alternating the two reads call by call so both see the same load. Each row
gives medians of the report's own ``timing``: the plain run, the emulated run, the per-chip
setup and the two ratios ``emulation_ratio`` (run only) and ``total_ratio`` (with setup).
``benchmarks/run.py`` can call :func:`measure` and judge :data:`TARGETS`; run alone,
``python benchmarks/tilemode.py [--root TREE] [--runs N] [--no-vgg] [--json FILE]`` prints the
rows (``--root`` times another checkout's ``rcompile``, e.g. ``git archive main``, whose
devices may not know ``pair``: then only ``column`` is timed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TARGETS = {"run": 3.0, "with_setup": 5.0}
"""Tile mode with ``adc = pair``: at most this many plain onnxruntime runs, the emulated run
alone and with the per-chip setup."""

MNIST_COPIES = 5
VGG_SAMPLES = 256


def _devices() -> dict[str, Any]:
    from rcompile.device import PRESETS, Converters

    ns = PRESETS["neurosim"]
    out = {"column": ns}
    if "adc" in Converters.__dataclass_fields__:
        out["pair"] = replace(ns, converters=replace(ns.converters, adc="pair"))
    return out


def _chip(path: str) -> tuple[Any, Any]:
    from rcompile import api
    from rcompile import faultmap as fmap

    plan, _ = api.make_plan(path)
    fm = fmap.synth(api.spare_tiles(plan.tiles_needed(), 0.10), plan.tile_rows, plan.tile_cols,
                    0.01, (5.0, 1.0), 1)
    return api.build(plan, fm, strategy="full").image, fm


def _workloads(tmp: str, vgg: bool) -> list[tuple[str, str, Any]]:
    """``(name, model path, dataset)``: MNIST 5000 images, VGG-8 256 random inputs."""
    import onnx

    from rcompile.data import dataset_from_arrays, input_specs, load_data

    mnist = os.path.join(ROOT, "examples", "mnist", "mnist_cnn.onnx")
    five = os.path.join(tmp, "test_x5.npz")
    with np.load(os.path.join(ROOT, "examples", "mnist", "test.npz")) as d:
        np.savez(five, **{k: np.tile(v, (MNIST_COPIES,) + (1,) * (v.ndim - 1))
                          for k, v in d.items()})
    out = [("mnist", mnist, load_data(five, input_specs(onnx.load(mnist))))]
    if vgg:
        sys.path.insert(0, ROOT)
        from benchmarks import models

        m, _ = models.vgg8()
        path = os.path.join(tmp, "vgg8.onnx")
        onnx.save(m, path)
        x = np.random.default_rng(0).normal(size=(VGG_SAMPLES, 3, 32, 32)).astype(np.float32)
        out.append(("vgg8", path, dataset_from_arrays({"x": x}, input_specs(m))))
    return out


def measure(runs: int = 5, vgg: bool = True, vgg_runs: int = 3) -> list[dict[str, Any]]:
    """One row per workload and ADC read: medians over ``runs`` verify calls (VGG-8:
    ``vgg_runs``), the reads alternating call by call after one warm-up call each."""
    from rcompile import runtime

    rows = []
    devices = _devices()
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, data in _workloads(tmp, vgg):
            image, fm = _chip(path)
            timings: dict[str, list[dict[str, float]]] = {k: [] for k in devices}
            for hw in devices.values():
                runtime.verify(image, fm, data, hardware=hw, mode="tile")  # warm-up
            for _ in range(vgg_runs if name == "vgg8" else runs):
                for adc, hw in devices.items():
                    rep = runtime.verify(image, fm, data, hardware=hw, mode="tile")
                    timings[adc].append(rep.timing)
            for adc, t in timings.items():
                def med(key: str, t: list[dict[str, float]] = t) -> float:
                    return float(statistics.median(x[key] for x in t))

                rows.append({"model": name, "adc": adc, "samples": data.n, "runs": len(t),
                             **{k: med(k) for k in ("reference_s", "emulated_s", "setup_s",
                                                    "weights_s", "graph_s", "emulation_ratio",
                                                    "total_ratio")}})
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"  load average {os.getloadavg()[0]:.2f}")
    print("  model  adc     samples  plain s  emulated s  setup s (cells + graph)  run only"
          "  with setup")
    for r in rows:
        print(f"  {r['model']:<6} {r['adc']:<7} {r['samples']:6d} {r['reference_s']:9.3f} "
              f"{r['emulated_s']:10.3f} {r['setup_s']:8.3f} ({r['weights_s']:.3f} + "
              f"{r['graph_s']:.3f}) {r['emulation_ratio']:8.2f}x {r['total_ratio']:9.2f}x",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=ROOT, help="checkout whose rcompile is timed")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vgg-runs", type=int, default=3)
    ap.add_argument("--no-vgg", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    rows = measure(args.runs, not args.no_vgg, args.vgg_runs)
    print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
