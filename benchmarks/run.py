"""``make bench``: per-chip speed, scaling, memory, emulation cost and lot throughput, side by side.

Every number is measured in this run, on this machine; ratios compare two things measured in
the same run on the same inputs. Sections (docs/design.md §7):

1. per-chip stage of ``full`` and ``two-column`` on one chip per model (MNIST, VGG-8 and
   ResNet-18 at p = 1 %, the dense MNIST CNN at p = 5 %), median of several runs, their ratio
   and the median time of every pass; then the same chips built by the compiler of
   ``BASELINE`` (exported from git, run in a subprocess, in this same run): the time per pass
   before and after;
2. per-chip ``full`` time against weight count over VGG-8 scaled 1x / 4x / 16x, log-log slope;
3. peak memory of planning + building VGG-8 with ``full`` (a fresh subprocess, ru_maxrss);
4. verifying runtime against plain onnxruntime on the same model and data, ``ideal`` mode
   (default device) and ``tile`` mode (``neurosim``), on the MNIST test set and on it five
   times over: the emulated run alone and with the per-chip setup; the 1.5x / 3x targets are
   judged on the emulated run against the plain run (1000 test images), with the total
   including setup and both ratios on five times the data next to it;
5. provisioning throughput: the MNIST example (p = 1 %) and lots of the dense MNIST CNN at
   p = 5 % (median of several lots): chips per hour per core.

Chips are synthetic: uniform faults at p = 1 % unless said, SA1:SA0 = 5:1, 10 % spare tiles.
Workloads are written to a temporary directory (``benchmarks/models.py``), never committed. The
machine may be shared: the load average is printed next to the numbers, and every time is a
median.

Usage: ``python benchmarks/run.py [--quick] [--baseline REV] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from benchmarks import models  # noqa: E402
from rcompile import api, runtime  # noqa: E402
from rcompile import faultmap as fmap  # noqa: E402
from rcompile.data import dataset_from_arrays, input_specs, load_data  # noqa: E402

MNIST = os.path.join(ROOT, "examples", "mnist", "mnist_cnn.onnx")
MNIST_DATA = os.path.join(ROOT, "examples", "mnist", "test.npz")
RATE, RATIO, SPARE, SEED = 0.01, (5.0, 1.0), 0.10, 1
DENSE_RATE = 0.05
"""Fault rate of the dense-model chips (per-chip stage and lot throughput)."""
TARGET_S, TARGET_RATIO, TARGET_GB, TARGET_CHIPS = 3.0, 6.0, 2.0, 3600.0
TARGET_SLOPE = 1.05
BASELINE = "0067e35"
"""Revision whose per-chip passes are timed next to this tree's: the last one before the
permutation moves ran compiled (OR-Tools integer assignment on every move)."""


def median_time(fn: Callable[[], Any], runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def chip_for(plan: Any, seed: int = SEED, rate: float = RATE) -> fmap.FaultMap:
    tiles = api.spare_tiles(plan.tiles_needed(), SPARE)
    return fmap.synth(tiles, plan.tile_rows, plan.tile_cols, rate, RATIO, seed)


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} cores"


# ------------------------------------------------------------------------------------------------


def timed_builds(plan: Any, fm: fmap.FaultMap, strategy: str, runs: int
                 ) -> tuple[float, list[float], dict[str, float]]:
    """Median seconds of ``runs`` builds, every run, and the median seconds of each pass."""
    totals, logs = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = api.build(plan, fm, strategy=strategy)
        totals.append(time.perf_counter() - t0)
        logs.append({e["pass"]: e["seconds"] for e in res.log})
    passes = {k: statistics.median(log[k] for log in logs) for k in logs[0]}
    return statistics.median(totals), totals, passes


def passes_text(passes: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in passes.items())


def per_chip(name: str, path: str, weights: int, runs: int, rate: float = RATE
             ) -> dict[str, Any]:
    t0 = time.perf_counter()
    plan, _ = api.make_plan(path)
    plan_s = time.perf_counter() - t0
    fm = chip_for(plan, rate=rate)
    two, two_all, two_passes = timed_builds(plan, fm, "two-column", max(runs, 3))
    full, full_all, full_passes = timed_builds(plan, fm, "full", runs)
    row = {"model": name, "weights": weights, "rate": rate, "blocks": len(plan.blocks),
           "tiles": fm.geometry.tiles, "plan_s": plan_s, "two_column_s": two,
           "full_s": full, "ratio": full / two, "full_runs": full_all, "two_column_runs": two_all,
           "full_passes": full_passes, "two_column_passes": two_passes}
    print(f"  {name:<11} {weights / 1e6:6.2f} M {rate:5.0%} {len(plan.blocks):6d} {plan_s:7.2f} "
          f"{two:12.3f} {full:9.3f} {full / two:7.1f}x   runs {[round(t, 2) for t in full_all]}",
          flush=True)
    print(f"  {'':<11} full: {passes_text(full_passes)}", flush=True)
    return row


FAST_ONLY = "place{order=assign},permute{reference=false},program,calibrate"


def fast_only(path: str, runs: int, rate: float) -> dict[str, Any]:
    """``full`` without the reference fallback of ``permute`` (the compiled solver only)."""
    plan, _ = api.make_plan(path)
    fm = chip_for(plan, rate=rate)
    totals, logs = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = api.build(plan, fm, pipeline=FAST_ONLY)
        totals.append(time.perf_counter() - t0)
        logs.append({e["pass"]: e["seconds"] for e in res.log})
    med = statistics.median(totals)
    passes = {k: statistics.median(log[k] for log in logs) for k in logs[0]}
    print(f"  {'':<11} {FAST_ONLY}: {med:.3f} s ({3600 / med:.0f} chips/hour/core as a "
          f"bare build); {passes_text(passes)}", flush=True)
    return {"pipeline": FAST_ONLY, "s": med, "runs": totals, "passes": passes}


def baseline(rev: str, cases: list[tuple[str, str, float]], runs: int,
             now: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-pass medians of ``rev`` on the same chips as ``now`` (section 1), printed next to
    this tree's; empty (with a note) when ``rev`` cannot be exported (no git checkout)."""
    from benchmarks import compare

    out = []
    for name, path, rate in cases:
        try:
            old = compare.time_version(rev, path, rate, runs)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"  {name}: baseline {rev} not measured ({type(e).__name__})")
            return out
        new = next(r for r in now if r["model"] == name)
        of, ot = old["full"]["total_s"], old["two-column"]["total_s"]
        row = {"model": name, "rev": rev, "rate": rate, "full_s": of, "two_column_s": ot,
               "ratio": of / ot, "full_passes": old["full"]["passes"],
               "speedup_full": of / new["full_s"]}
        out.append(row)
        print(f"  {name:<11} {rate:5.0%} before: two-column {ot:.3f} s, full {of:.3f} s "
              f"({of / ot:.1f}x); now full {new['full_s']:.3f} s ({new['ratio']:.1f}x): "
              f"{of / new['full_s']:.1f}x faster", flush=True)
        for k, v in old["full"]["passes"].items():
            after = new["full_passes"].get(k, float("nan"))
            print(f"  {'':<11}   {k:<10} {v:8.3f} s -> {after:8.3f} s", flush=True)
    return out


def slope(points: list[tuple[float, float]]) -> float:
    x = np.log([p[0] for p in points])
    y = np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def memory_probe(path: str) -> None:
    """(Subprocess) plan and build ``path`` with ``full``; print peak RSS in bytes as JSON."""
    plan, _ = api.make_plan(path)
    api.build(plan, chip_for(plan), strategy="full")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"main_bytes": own, "worker_bytes": workers}))


def peak_memory(path: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", path],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {"main_gb": got["main_bytes"] / 1e9, "worker_gb": got["worker_bytes"] / 1e9}


EMULATION_TARGETS = {"ideal": 1.5, "tile": 3.0}
"""Issue target: ``verify`` costs at most this many plain onnxruntime runs, per mode."""


def emulation(name: str, path: str, datasets: list[Any], runs: int) -> list[dict[str, Any]]:
    """``runtime.verify`` of one chip in ``ideal`` mode (default device) and ``tile`` mode
    (``neurosim``) on each dataset: medians over ``runs`` of the report's own ``timing``, which
    times plain onnxruntime on the fault-free chip and the emulated chip in the same call."""
    from rcompile.device import PRESETS

    plan, _ = api.make_plan(path)
    fm = chip_for(plan)
    img = api.build(plan, fm, strategy="full").image
    rows = []
    for mode, hw in (("ideal", None), ("tile", PRESETS["neurosim"])):
        for data in datasets:
            runtime.verify(img, fm, data, hardware=hw, mode=mode)  # warm-up (imports, caches)
            t = [runtime.verify(img, fm, data, hardware=hw, mode=mode).timing
                 for _ in range(runs)]

            def med(key: str, t: list[dict[str, Any]] = t) -> float:
                return float(statistics.median(x[key] for x in t))

            row = {"model": name, "mode": mode, "device": "neurosim" if hw else "ideal",
                   "samples": data.n, "runs": runs, "reference_s": med("reference_s"),
                   "emulated_s": med("emulated_s"), "setup_s": med("setup_s"),
                   "weights_s": med("weights_s"), "graph_s": med("graph_s"),
                   "emulation_ratio": med("emulation_ratio"), "total_ratio": med("total_ratio"),
                   "target": EMULATION_TARGETS[mode]}
            rows.append(row)
            print(f"  {name:<6} {mode:<5} {row['device']:<8} {data.n:6d} "
                  f"{row['reference_s']:9.3f} {row['emulated_s']:9.3f} {row['setup_s']:8.3f} "
                  f"({row['weights_s']:.3f} + {row['graph_s']:.3f}) "
                  f"{row['emulation_ratio']:7.2f}x {row['total_ratio']:9.2f}x", flush=True)
    return rows


def emulation_checks(rows: list[dict[str, Any]], samples: int) -> list[tuple[str, bool, str]]:
    """Per mode, the issue target on ``samples`` images of MNIST: the emulated run against the
    plain run (the report's ``emulation_ratio``; each side includes its session set-up). Next to
    it, the total with the per-chip setup (programming simulation, graph build, converter
    calibration: a constant plain onnxruntime has no counterpart for) and both ratios on the
    largest MNIST set, where fixed costs weigh least."""
    out = []
    mnist = [r for r in rows if r["model"] == "mnist"]
    for r in mnist:
        if r["samples"] != samples:
            continue
        big = max((x for x in mnist if x["mode"] == r["mode"]), key=lambda x: x["samples"])
        out.append((f"{r['mode']} mode ({r['device']}) <= {r['target']:g}x onnxruntime, "
                    f"{samples} images", r["emulation_ratio"] <= r["target"],
                    f"{r['emulation_ratio']:.2f}x (with setup {r['total_ratio']:.2f}x; "
                    f"{big['samples']} images: {big['emulation_ratio']:.2f}x, with setup "
                    f"{big['total_ratio']:.2f}x)"))
    return out


def throughput(model: str, label: str, chips: int, jobs: int, workdir: str, rate: float = RATE
               ) -> dict[str, Any]:
    """One lot of ``chips`` synthetic chips of ``model`` through ``provision`` (plan once,
    chips on ``jobs`` workers, images written): chips per hour per core."""
    from rcompile import provision as prov

    lot, out = os.path.join(workdir, "lot"), os.path.join(workdir, "out")
    for d in (lot, out):
        if os.path.isdir(d):
            shutil.rmtree(d)
    os.makedirs(lot)
    plan, _ = api.make_plan(model)
    for i in range(chips):
        fm = fmap.synth(api.spare_tiles(plan.tiles_needed(), SPARE), 128, 128, rate, RATIO, i,
                        chip_id=f"chip-{i}")
        fmap.save(fm, os.path.join(lot, f"chip{i:04d}.npz"))
    t0 = time.perf_counter()
    s = prov.provision(model, lot, out, jobs=jobs)
    wall = time.perf_counter() - t0
    per_core = s.ok / wall * 3600 / jobs
    print(f"  {label} lot of {chips} chips (p = {rate:g}, {plan.tiles_needed()} tiles), {jobs} "
          f"workers: {wall:.1f} s wall ({s.ok} ok, {s.errors} failed) -> "
          f"{s.ok / wall * 3600:.0f} chips/hour, {per_core:.0f} chips/hour/core", flush=True)
    return {"model": label, "rate": rate, "chips": chips, "jobs": jobs, "wall_s": wall,
            "ok": s.ok, "chips_per_hour": s.ok / wall * 3600, "chips_per_hour_per_core": per_core}


# ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short version (~1 minute)")
    ap.add_argument("--json", help="also write every number to this JSON file")
    ap.add_argument("--baseline", default=BASELINE,
                    help=f"git revision timed next to this tree (default {BASELINE}; '' = none)")
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return 0
    quick = args.quick
    runs = 1 if quick else 3
    emu_runs = 3 if quick else 5
    result: dict[str, Any] = {"quick": quick, "load_before": os.getloadavg()}
    print(f"rcompile benchmarks ({'quick' if quick else 'full'}); {load()}")
    print(f"chips: uniform p={RATE:g}, SA1:SA0={RATIO[0]:g}:{RATIO[1]:g}, {SPARE:.0%} spare "
          f"tiles, 128x128 tiles, 16 levels")
    with tempfile.TemporaryDirectory(prefix="rcompile-bench-") as tmp:
        t0 = time.perf_counter()
        w = models.write_all(tmp, resnet=not quick)
        print(f"workloads written in {time.perf_counter() - t0:.1f} s")

        print(f"\n1. per-chip stage, median of runs (two-column >= 3 runs); {load()}")
        print("  model       weights     p blocks  plan s  two-column s    full s   ratio")
        dense = w["dense_mnist"]
        rows = [per_chip("mnist", MNIST, _weights(MNIST), max(runs, 3)),
                per_chip("vgg8", w["vgg8"].path, w["vgg8"].weights, runs),
                per_chip("dense_mnist", dense.path, dense.weights, max(runs, 3), DENSE_RATE)]
        if "resnet18" in w:
            rows.append(per_chip("resnet18", w["resnet18"].path, w["resnet18"].weights, 1))
        result["per_chip"] = rows
        fast = fast_only(dense.path, max(runs, 3), DENSE_RATE)
        result["dense_fast_only"] = fast
        if args.baseline:
            print(f"\n1b. the same chips built by revision {args.baseline} (before), medians "
                  f"of {runs} runs, per pass before -> now")
            result["baseline"] = baseline(
                args.baseline, [("vgg8", w["vgg8"].path, RATE),
                                ("dense_mnist", dense.path, DENSE_RATE)], runs, rows)

        print("\n2. per-chip full time against weights (VGG-8 scaled by channel width)")
        print("  model       weights     p blocks  plan s  two-column s    full s   ratio")
        scaled = [per_chip(k, w[k].path, w[k].weights, runs) for k in ("vgg8-1x", "vgg8-4x")]
        scaled.append(next(r for r in rows if r["model"] == "vgg8") | {"model": "vgg8-16x"})
        s_full = slope([(r["weights"], r["full_s"]) for r in scaled])
        s_two = slope([(r["weights"], r["two_column_s"]) for r in scaled])
        print(f"  log-log slope: full {s_full:.2f}, two-column {s_two:.2f} (1.0 = linear)")
        result["scaling"] = {"rows": scaled, "slope_full": s_full, "slope_two_column": s_two}

        print("\n3. peak memory, plan + full build of VGG-8 in a fresh process")
        mem = peak_memory(w["vgg8"].path)
        print(f"  main process {mem['main_gb']:.2f} GB, largest worker {mem['worker_gb']:.2f} GB")
        result["memory"] = mem

        print("\n4. verifying runtime against plain onnxruntime, same model and data: medians of "
              f"{emu_runs} verify calls; run only = emulated run / plain run, with setup = "
              "(programming simulation + graph build + calibration + emulated run) / plain run")
        print("  model  mode  device   samples  plain s  emulated s  setup s (cells + graph)"
              "     run only  with setup")
        specs = input_specs(_model(MNIST))
        mnist = load_data(MNIST_DATA, specs)
        five = os.path.join(tmp, "test_x5.npz")  # the test set five times: setup amortises
        with np.load(MNIST_DATA) as d:
            np.savez(five, **{k: np.tile(v, (5,) + (1,) * (v.ndim - 1)) for k, v in d.items()})
        mnist5 = load_data(five, specs)
        emus = emulation("mnist", MNIST, [mnist, mnist5], emu_runs)
        if not quick:
            rng = np.random.default_rng(0)
            vdata = dataset_from_arrays(
                {"x": rng.normal(size=(256, 3, 32, 32)).astype(np.float32)},
                input_specs(_model(w["vgg8"].path)))
            emus += emulation("vgg8", w["vgg8"].path, [vdata], 3)
        result["emulation"] = emus
        emu_checks = emulation_checks(emus, mnist.n)
        print("  targets compare the emulated run with the plain run on the 1000-image test set:")
        for text, ok, value in emu_checks:
            print(f"  {'PASS' if ok else 'FAIL'}  {text}: {value}")

        print("\n5. provisioning throughput (plan once, chips in parallel, images written); "
              f"{load()}")
        jobs = os.cpu_count() or 1
        result["provision"] = throughput(MNIST, "MNIST", 8 if quick else 40, jobs, tmp)
        lots = [throughput(dense.path, "dense MNIST", 6 if quick else 10, jobs, tmp, DENSE_RATE)
                for _ in range(1 if quick else 3)]
        dense_rate = statistics.median(x["chips_per_hour_per_core"] for x in lots)
        print(f"  dense MNIST: median of {len(lots)} lots {dense_rate:.0f} chips/hour/core")
        result["provision_dense"] = {"lots": lots, "median_chips_per_hour_per_core": dense_rate}

    vgg = next(r for r in rows if r["model"] == "vgg8")
    checks = [
        (f"VGG-8 full per-chip <= {TARGET_S:g} s (p = {RATE:g})", vgg["full_s"] <= TARGET_S,
         f"{vgg['full_s']:.2f} s (median of {len(vgg['full_runs'])})"),
        (f"VGG-8 full <= {TARGET_RATIO:g}x two-column", vgg["ratio"] <= TARGET_RATIO,
         f"{vgg['ratio']:.1f}x"),
        (f"log-log slope of full time vs weights <= {TARGET_SLOPE:g}", s_full <= TARGET_SLOPE,
         f"slope {s_full:.2f}"),
        (f"dense MNIST (p = {DENSE_RATE:g}) >= {TARGET_CHIPS:.0f} chips/hour/core",
         dense_rate >= TARGET_CHIPS, f"{dense_rate:.0f} (median of {len(lots)} lots)"),
        (f"VGG-8 peak memory <= {TARGET_GB:g} GB", mem["main_gb"] <= TARGET_GB,
         f"{mem['main_gb']:.2f} GB"),
        (f">= {TARGET_CHIPS:.0f} MNIST chips/hour/core",
         result["provision"]["chips_per_hour_per_core"] >= TARGET_CHIPS,
         f"{result['provision']['chips_per_hour_per_core']:.0f}"),
        *emu_checks,
    ]
    print(f"\ntargets ({load()})")
    for text, ok, value in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {text:<52} {value}")
    result["targets"] = [{"target": t, "met": ok, "value": v} for t, ok, v in checks]
    result["load_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
    return 0


def _model(path: str) -> Any:
    import onnx

    return onnx.load(path, load_external_data=False)


def _weights(path: str) -> int:
    plan, _ = api.make_plan(path)
    return int(sum(math.prod(op.shape) for op in plan.ops))


if __name__ == "__main__":
    sys.exit(main())
