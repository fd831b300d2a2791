"""Where the verifying runtime's per-chip set-up goes: one chip's stages timed one by one.

:func:`setup_breakdown` runs the set-up of :func:`rcompile.runtime.verify` stage by stage, in
its order, on one image and fault map: matching the fault map, realising the chip (the
programming simulation and the weight rebuild), the fault-free reference graph, the emulated
chip's graph (tile mode: the calibration graph, its run, the final graph) and the sessions of
the emulated graph; then, on a device that is not exact, the same for the fault-free chip on
that device (which ``verify`` also emulates). Sub-stages come from a profile of the stage that
holds them. :func:`main` builds VGG-8 (``benchmarks/models.py``) and the MNIST example, one chip
each at p = 1 %, and prints the medians of several runs in ``ideal`` mode (the image's own
device) and ``tile`` mode (``neurosim``).

Usage: ``python benchmarks/setup_time.py [--runs N] [--models vgg8,mnist] [--modes ideal,tile,pair]
[--no-verify] [--json FILE]``; mode ``pair`` is tile mode on ``neurosim`` read with one ADC per
column pair (``adc = pair``), ``tile`` the preset's own per-column reading.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rcompile import runtime  # noqa: E402
from rcompile.data import Dataset  # noqa: E402
from rcompile.device import Hardware  # noqa: E402
from rcompile.runtime import execute, weights  # noqa: E402

SUBSTAGES: dict[str, tuple[str, str]] = {
    "programming": ("weights.py", "prog"),
    "tile_layout": ("layout.py", "of"),
    "tile_build": ("circuit.py", "build"),
    "serialise": ("~", "<method 'SerializeToString' of 'google._upb._message.Message' objects>"),
    "session": ("onnxruntime_inference_collection.py", "_create_inference_session"),
    "ort_run": ("onnxruntime_inference_collection.py", "run"),
}
"""Sub-stages read off a stage's profile: label -> (file name ending, function name)."""


def cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its finished children so far."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _profiled(fn: Callable[[], Any]) -> tuple[Any, float, dict[str, float]]:
    """``fn()``, its wall seconds and the cumulative seconds of every :data:`SUBSTAGES` in it
    (and ``cpu``, its CPU seconds: on a shared machine the steadier figure)."""
    prof = cProfile.Profile()
    t0, c0 = time.perf_counter(), cpu_seconds()
    prof.enable()
    try:
        out = fn()
    finally:
        prof.disable()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    stats: Any = getattr(pstats.Stats(prof), "stats")  # noqa: B009 (untyped attribute)
    subs = dict.fromkeys(SUBSTAGES, 0.0)
    for (path, _, name), (_, _, _, cum, _) in stats.items():
        for label, (suffix, func) in SUBSTAGES.items():
            if name == func and path.endswith(suffix):
                subs[label] += cum
    subs["cpu"] = cpu
    return out, wall, subs


def _chip_setup(image: Any, faultmap: Any, dataset: Dataset, hw: Hardware, mode: str,
                noise_seed: int, prefix: str, out: dict[str, float]) -> None:
    """The set-up stages of one emulated chip, as :func:`runtime.verify` runs them, into ``out``
    under ``prefix``."""
    src = "image"

    def stage(name: str, fn: Callable[[], Any], subs: tuple[str, ...] = ()) -> Any:
        res, wall, found = _profiled(fn)
        out[f"{prefix}{name}"] = wall
        out[f"{prefix}{name}.cpu"] = found["cpu"]
        for s in subs:
            out[f"{prefix}{name}.{s}"] = found[s]
        return res

    chip = stage("weights", lambda: weights.realise_chip(image, faultmap, hw, noise_seed, src),
                 ("programming",))
    reference = stage("reference_graph", lambda: execute.emulated_model(
        image, weights.intended_weights(image)), ("serialise",))
    graph = stage("graph", lambda: execute.emulated_graph(
        image, mode, hw, chip, reference, dataset, 256, noise_seed, src),
        ("tile_layout", "tile_build", "session", "ort_run", "serialise"))
    stage("session", lambda: _session(graph.model, mode == "ideal", src), ("serialise",))


def _session(model: Any, optimize: bool, source: str) -> Any:
    """The onnxruntime session :func:`runtime.run` makes for ``model`` (its own helper where the
    tree has one, else the same options by hand)."""
    make = getattr(execute, "session", None)
    if make is not None:
        return make(model, source, optimize=optimize)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 2, 1, 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(execute.free_dims(model).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def setup_breakdown(image: Any, faultmap: Any, dataset: Dataset, hardware: Hardware | None = None,
                    mode: str = "auto", noise_seed: int = 0, *, verify: bool = True
                    ) -> dict[str, float]:
    """Seconds of every set-up stage of ``verify`` on one chip (see the module docstring), and
    (``verify``) those of a real ``verify`` call run next: its report's ``setup_s``
    (``weights_s + graph_s``) and the others, and its wall time."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    runtime.check_match(image, faultmap)
    hw = runtime.image_hardware(image, hardware, faultmap)
    mode = runtime.emulation_mode(mode, hw)
    out["match"] = time.perf_counter() - t0
    _chip_setup(image, faultmap, dataset, hw, mode, noise_seed, "", out)
    if not hw.exact:
        t0 = time.perf_counter()
        ff_image, ff_map = runtime.fault_free_chip(image, faultmap)
        out["fault_free.chip"] = time.perf_counter() - t0
        _chip_setup(ff_image, ff_map, dataset, hw, mode, noise_seed, "fault_free.", out)
    if not verify:
        return out
    t0 = time.perf_counter()
    rep = runtime.verify(image, faultmap, dataset, hardware=hardware, mode=mode,
                         noise_seed=noise_seed)
    out["verify_total"] = time.perf_counter() - t0
    for k in ("setup_s", "weights_s", "graph_s", "reference_s", "emulated_s"):
        out[f"report.{k}"] = float(rep.timing[k] or 0.0)
    return out


def workloads(directory: str) -> dict[str, tuple[Any, Any, Dataset]]:
    """VGG-8 (256 random CIFAR-shaped inputs) and the MNIST example (its 1000 test digits),
    one chip each at p = 1 % compiled with ``full``, as ``benchmarks/run.py`` section 4 makes
    them."""
    from benchmarks import models
    from benchmarks import run as bench
    from rcompile import api
    from rcompile.data import dataset_from_arrays, input_specs, load_data

    out = {}
    model, n = models.vgg8()
    vgg = models.write("vgg8", model, n, (3, 32, 32), directory)
    for name, path in (("vgg8", vgg.path), ("mnist", bench.MNIST)):
        plan, _ = api.make_plan(path)
        fm = bench.chip_for(plan, 0.01)  # p = 1 %, as the module docstring says
        img = api.build(plan, fm, strategy="full").image
        specs = input_specs(bench._model(path))
        if name == "vgg8":
            x = np.random.default_rng(0).normal(size=(256, 3, 32, 32)).astype(np.float32)
            data = dataset_from_arrays({"x": x}, specs)
        else:
            data = load_data(bench.MNIST_DATA, specs)
        out[name] = (img, fm, data)
    return out


MODES = {"ideal": "", "tile": "column", "pair": "pair"}
"""``--modes`` values: the image's own device, or tile mode on ``neurosim`` read per column or
per column pair (the reading of :func:`benchmarks.run.tile_devices`)."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", default="vgg8,mnist")
    ap.add_argument("--modes", default="ideal,tile,pair")
    ap.add_argument("--no-verify", action="store_true", help="the stages only, no verify call")
    ap.add_argument("--json", help="also write every run's figures to this JSON file")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if set(modes) - MODES.keys():
        ap.error(f"--modes {args.modes}: expected some of {', '.join(MODES)}")
    from benchmarks import run as bench
    result: dict[str, Any] = {}
    a, b, c = os.getloadavg()
    print(f"verify set-up breakdown, medians of {args.runs} runs; load average {a:.2f} {b:.2f} "
          f"{c:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="rcompile-setup-") as tmp:
        loads = workloads(tmp)
        for name in args.models.split(","):
            img, fm, data = loads[name]
            for picked in modes:
                hw = None if picked == "ideal" else bench.tile_devices()[MODES[picked]]
                mode = "ideal" if hw is None else "tile"
                runs = [setup_breakdown(img, fm, data, hw, mode, verify=not args.no_verify)
                        for _ in range(args.runs)]
                label = "ideal" if hw is None else f"tile {MODES[picked]}"
                result[f"{name} {label}"] = runs
                print(f"\n{name} {label} ({'neurosim' if hw else 'ideal device'}), "
                      f"{data.n} samples")
                for key in runs[0]:
                    med = statistics.median(r[key] for r in runs)
                    print(f"  {key:<38} {med:8.3f} s")
    a, b, c = os.getloadavg()
    print(f"\nload average {a:.2f} {b:.2f} {c:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
