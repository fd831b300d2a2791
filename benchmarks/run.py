"""``make bench``: every speed and memory target of the compiler, measured side by side, judged.

Every number is measured in this run, on this machine; a ratio compares two things measured in
the same run on the same inputs; every timed figure is the median of at least 3 runs. The run
ends with one table: each target, its measured value and PASS / MISS (``n/a`` where the feature
it needs does not exist yet), with the load average before and after (docs/design.md §7).

1. per-chip stage: ``full`` and ``two-column`` on one chip of MNIST and VGG-8 (p = 1 %) and of
   the dense example (``examples/dense``, p = 5 %), the median time of every pass; then the
   same chips built by revision ``--baseline`` (exported from git, ``baseline_worker.py`` in a
   subprocess, one build after each of this tree's so both see the same load), per pass
   before -> now;
2. ``full`` time against weight count, VGG-8 at 1x / 4x / 16x weights: log-log slope;
3. peak memory of planning and building VGG-8 with ``full`` in a fresh process (report only);
4. the verifying runtime against plain onnxruntime (``runtime.verify``'s own timing): ideal
   mode, and tile mode on ``neurosim`` with ``adc = column`` (today's NeuroSim reading) and
   ``adc = pair`` (measured once the device has the option), on MNIST 5,000 images and VGG-8,
   the run alone and with the per-chip set-up; the set-up broken down;
5. provisioning throughput: lots of the dense example at p = 5 % through ``provision``.

What is trimmed to stay under 10 minutes on 2 cores: 3 runs per figure (not 5), no warm-up
call on VGG-8 in tile mode (the MNIST calls before it warm imports and kernels; the median of
3 drops a slow first call), VGG-8 tile mode on 256 random inputs (there is no CIFAR-10 data in
the repository), 3 lots of 6 chips, ResNet-18 only with ``--resnet``. The table's header gives
the run's wall time and the CPU seconds of its own processes (wall time on a shared machine
also counts the others' work).

Chips are synthetic: uniform faults, SA1:SA0 = 5:1, fault-map seed 1, 10 % spare tiles.
Workloads are written to a temporary directory (``benchmarks/models.py``), never committed.

Usage: ``python benchmarks/run.py [--quick] [--baseline REV] [--json FILE] [--resnet]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from benchmarks import models  # noqa: E402
from benchmarks.table import Row, averages, judged, missing, print_table, reported  # noqa: E402
from rcompile import api, runtime  # noqa: E402
from rcompile import faultmap as fmap  # noqa: E402
from rcompile.data import Dataset, dataset_from_arrays, input_specs, load_data  # noqa: E402
from rcompile.device import PRESETS, Hardware  # noqa: E402

MNIST = os.path.join(ROOT, "examples", "mnist", "mnist_cnn.onnx")
MNIST_DATA = os.path.join(ROOT, "examples", "mnist", "test.npz")
DENSE = os.path.join(ROOT, "examples", "dense", "dense_cnn.onnx")
RATE, DENSE_RATE, RATIO, SPARE, SEED = 0.01, 0.05, (5.0, 1.0), 0.10, 1
RUNS = 3
"""Runs per timed figure (the median is reported)."""
BASELINE = "6d8d122"
"""Revision whose per-chip stage is timed next to this tree's: main at the start of the session
that added the table (before that session's permutation speed-up, ``adc`` option and faster
verify set-up). ``--baseline 0067e35`` gives the compiler before the compiled solver."""
LOT_CHIPS, LOTS = 6, 3
VGG_SAMPLES = 256
"""Random 3x32x32 inputs VGG-8 is emulated on in tile mode."""

T_CHIP_S, T_CHIP_RATIO, T_BASELINE_RATIO = 3.0, 6.0, 2.0
T_CHIPS_HOUR, T_SLOPE = 3600.0, 1.05
T_TILE, T_TILE_SETUP, T_SETUP_S, T_IDEAL = 3.0, 5.0, 3.0, 1.5


def load() -> str:
    return f"load average {averages(os.getloadavg())} on {os.cpu_count()} cores"


# ------------------------------------------------------------------------------ 1. per chip


def chip_for(plan: Any, rate: float, seed: int = SEED) -> fmap.FaultMap:
    tiles = api.spare_tiles(plan.tiles_needed(), SPARE)
    return fmap.synth(tiles, plan.tile_rows, plan.tile_cols, rate, RATIO, seed)


STRATEGIES = ("two-column", "full")


class Baseline:
    """``benchmarks/baseline_worker.py`` on one chip, run with an older revision's compiler
    (exported from git into ``pkg``): one build per :meth:`build`, so its builds interleave with
    this tree's and both see the same machine load."""

    def __init__(self, pkg: str, path: str, rate: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "baseline_worker.py"), path, str(rate),
             *STRATEGIES],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(pkg),
            env=dict(os.environ, PYTHONPATH=pkg))

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise OSError(f"baseline worker ended (exit {self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def ready(self) -> None:
        self._answer()

    def build(self, strategy: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(strategy + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def export_baseline(rev: str, tmp: str) -> str | None:
    """``rev``'s compiler as an importable package under ``tmp`` (None, with a note, when git
    cannot export it: no checkout, unknown revision)."""
    from benchmarks import compare

    try:
        return compare.export(rev, os.path.join(tmp, "baseline"))
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"  baseline {rev} not exported ({type(e).__name__}: {e})")
        return None


def build_once(plan: Any, fm: fmap.FaultMap, strategy: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = api.build(plan, fm, strategy=strategy)
    return {"s": time.perf_counter() - t0, "passes": {e["pass"]: e["seconds"] for e in res.log}}


def medians(builds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median total and median seconds of every pass of ``builds``; every total."""
    return {"s": statistics.median(b["s"] for b in builds), "runs": [b["s"] for b in builds],
            "passes": {k: statistics.median(b["passes"][k] for b in builds)
                       for k in builds[0]["passes"]}}


def per_chip(name: str, path: str, weights: int, runs: int, rate: float,
             base_pkg: str | None = None) -> dict[str, Any]:
    """``two-column`` and ``full`` on one synthetic chip of ``path``, ``runs`` each; with
    ``base_pkg``, the baseline's build of the same chip after each of this tree's."""
    old = Baseline(base_pkg, path, rate) if base_pkg else None
    try:
        t0 = time.perf_counter()
        plan, _ = api.make_plan(path)
        plan_s = time.perf_counter() - t0
        fm = chip_for(plan, rate)
        if old is not None:
            old.ready()
        now: dict[str, list[dict[str, Any]]] = {s: [] for s in STRATEGIES}
        before: dict[str, list[dict[str, Any]]] = {s: [] for s in STRATEGIES}
        for _ in range(runs):
            for strategy in STRATEGIES:
                now[strategy].append(build_once(plan, fm, strategy))
                if old is not None:
                    before[strategy].append(old.build(strategy))
    finally:
        if old is not None:
            old.close()
    two, full = medians(now["two-column"]), medians(now["full"])
    row = {"model": name, "path": path, "weights": weights, "rate": rate,
           "blocks": len(plan.blocks), "tiles": fm.geometry.tiles, "plan_s": plan_s,
           "two_column_s": two["s"], "full_s": full["s"], "ratio": full["s"] / two["s"],
           "full_runs": full["runs"], "two_column_runs": two["runs"],
           "full_passes": full["passes"], "two_column_passes": two["passes"]}
    print(f"  {name:<10} {weights / 1e6:6.2f} M {rate:4.0%} {len(plan.blocks):6d} "
          f"{fm.geometry.tiles:5d} {plan_s:7.2f} {two['s']:12.3f} {full['s']:8.3f} "
          f"{row['ratio']:6.1f}x  runs {[round(t, 2) for t in full['runs']]}", flush=True)
    print(f"  {'':<10} full per pass: {passes_text(full['passes'])}", flush=True)
    if old is not None:
        row["before"] = before_text(row, medians(before["two-column"]), medians(before["full"]))
    return row


def before_text(now: dict[str, Any], two: dict[str, Any], full: dict[str, Any]
                ) -> dict[str, Any]:
    """Print the baseline's medians next to this tree's, per pass; return them."""
    of, ot = full["s"], two["s"]
    print(f"  {'':<10} before: two-column {ot:.3f} s, full {of:.3f} s ({of / ot:.1f}x) "
          f"runs {[round(t, 2) for t in full['runs']]}; now / before: full "
          f"{now['full_s'] / of:.2f}, two-column {now['two_column_s'] / ot:.2f}", flush=True)
    for k in dict.fromkeys([*full["passes"], *now["full_passes"]]):
        b, a = full["passes"].get(k), now["full_passes"].get(k)
        print(f"  {'':<10}   {k:<10} {_s(b)} -> {_s(a)}", flush=True)
    return {"two_column_s": ot, "full_s": of, "full_runs": full["runs"],
            "two_column_runs": two["runs"], "full_passes": full["passes"],
            "slowdown": now["full_s"] / of}


def passes_text(passes: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in passes.items())


def _s(x: float | None) -> str:
    return f"{x:8.3f} s" if x is not None else "       - "


def slope(points: list[tuple[float, float]]) -> float:
    x = np.log([p[0] for p in points])
    y = np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


# ------------------------------------------------------------------------------ 3. memory


def memory_probe(path: str) -> None:
    """(Subprocess) plan and build ``path`` with ``full``; print peak RSS in bytes as JSON."""
    plan, _ = api.make_plan(path)
    api.build(plan, chip_for(plan, RATE), strategy="full")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"main_bytes": own, "worker_bytes": workers}))


def peak_memory(path: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-probe", path],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {"main_gb": got["main_bytes"] / 1e9, "worker_gb": got["worker_bytes"] / 1e9}


# ------------------------------------------------------------------------------ 4. emulation


def tile_devices() -> dict[str, Hardware | None]:
    """The ``neurosim`` preset read per column and per column pair. Until
    :class:`~rcompile.device.Converters` has an ``adc`` field the preset is today's per-column
    reading and ``pair`` is None; from then on both are set explicitly on the preset."""
    base = PRESETS["neurosim"]
    if "adc" not in {f.name for f in dataclasses.fields(base.converters)}:
        return {"column": base, "pair": None}
    return {adc: dataclasses.replace(
        base, converters=dataclasses.replace(base.converters, adc=adc))  # type: ignore[call-arg]
        for adc in ("column", "pair")}


KNOWN_TIMING = ("weights_s", "graph_s", "setup_s", "reference_s", "emulated_s", "float_s",
                "emulation_ratio", "total_ratio")


@functools.cache
def full_chip(path: str) -> tuple[Any, fmap.FaultMap]:
    """The ``full`` image of one synthetic chip of ``path`` (p = 1 %) and its fault map."""
    plan, _ = api.make_plan(path)
    fm = chip_for(plan, RATE)
    return api.build(plan, fm, strategy="full").image, fm


def emulation(name: str, path: str, data: Dataset, mode: str, label: str,
              hw: Hardware | None, runs: int, warm: bool) -> dict[str, Any]:
    """``runtime.verify`` of one ``full`` chip of ``path`` (p = 1 %): medians over ``runs`` of
    the report's own timing (plain onnxruntime on the fault-free chip and the emulated chip in
    the same call). ``warm``: one untimed call first."""
    img, fm = full_chip(path)
    if warm:
        runtime.verify(img, fm, data, hardware=hw, mode=mode)
    t = [runtime.verify(img, fm, data, hardware=hw, mode=mode).timing for _ in range(runs)]
    keys = [k for k, v in t[0].items() if isinstance(v, (int, float))]
    row: dict[str, Any] = {k: float(statistics.median(float(x[k]) for x in t)) for k in keys}
    row |= {"model": name, "mode": label, "samples": data.n, "runs": runs,
            "emulation_ratios": [x["emulation_ratio"] for x in t]}
    extra = [k for k in keys if k not in KNOWN_TIMING]
    parts = f"cells {row['weights_s']:.2f} + graph {row['graph_s']:.2f}" + "".join(
        f" + {k.removesuffix('_s')} {row[k]:.2f}" for k in extra)
    print(f"  {name:<6} {label:<12} {data.n:6d} {row['reference_s']:8.3f} "
          f"{row['emulated_s']:10.3f} {row['setup_s']:8.3f} ({parts}) "
          f"{row['emulation_ratio']:7.2f}x {row['total_ratio']:7.2f}x", flush=True)
    return row


def emulation_rows(rows: list[dict[str, Any]], devices: dict[str, Hardware | None]
                   ) -> list[Row]:
    """Per model: ideal mode (the earlier 1.5x target), tile ``column`` reported, tile ``pair``
    judged (n/a until the device has it), and the VGG-8 verify set-up of each tile reading."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        what = f"{_label(model)} {mine[0]['samples']}"
        for r in mine:
            how = (f"runtime.verify timing, median of {r['runs']}: emulated run / plain "
                   "onnxruntime run, each with its session set-up; + set-up: (programming "
                   "simulation + graph + emulated run) / plain run")
            if r["mode"] == "ideal":
                out.append(judged(f"ideal mode run / onnxruntime, {what}", r["emulation_ratio"],
                                  "x", "<=", T_IDEAL, how))
                continue
            pick = judged if r["mode"] == "tile pair" else _reported_against
            out += [pick(f"{r['mode']} run / onnxruntime, {what}", r["emulation_ratio"], "x",
                         "<=", T_TILE, how),
                    pick(f"{r['mode']} + set-up / onnxruntime, {what}", r["total_ratio"], "x",
                         "<=", T_TILE_SETUP, how)]
            if model.startswith("vgg8"):
                out.append(judged(f"verify set-up, {what}, {r['mode']}", r["setup_s"], "s",
                                  "<=", T_SETUP_S, "runtime.verify timing setup_s (programming "
                                  f"simulation + graph build), median of {r['runs']}"))
        if devices["pair"] is None:
            why = "until adc=pair exists (Converters has no adc field)"
            out += [missing(f"tile pair run / onnxruntime, {what}", "x", "<=", T_TILE, why),
                    missing(f"tile pair + set-up / onnxruntime, {what}", "x", "<=",
                            T_TILE_SETUP, why)]
            if model.startswith("vgg8"):
                out.append(missing(f"verify set-up, {what}, tile pair", "s", "<=", T_SETUP_S,
                                   why))
    return out


def _reported_against(name: str, value: float, unit: str, op: str, limit: float, how: str
                      ) -> Row:
    """A figure measured and reported, not judged (the target is another configuration's)."""
    return reported(name, value, unit, how)


def _label(model: str) -> str:
    """Display name of a workload: ``VGG-8``, ``VGG-8 w0.25``, ``MNIST``, ``dense``."""
    if model == "vgg8":
        return "VGG-8"
    if model.startswith("vgg8-"):
        return f"VGG-8 {model[5:]}"
    return {"mnist": "MNIST"}.get(model, model)


def vgg_data(path: str, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    return dataset_from_arrays({"x": rng.normal(size=(n, 3, 32, 32)).astype(np.float32)},
                               input_specs(_model(path)))


def mnist_times(directory: str, times: int) -> Dataset:
    """The MNIST test set (1,000 real digits) repeated ``times`` over."""
    specs = input_specs(_model(MNIST))
    if times == 1:
        return load_data(MNIST_DATA, specs)
    path = os.path.join(directory, f"test_x{times}.npz")
    with np.load(MNIST_DATA) as d:
        np.savez(path, **{k: np.tile(v, (times,) + (1,) * (v.ndim - 1)) for k, v in d.items()})
    return load_data(path, specs)


# ------------------------------------------------------------------------------ 5. lots


def write_lot(model: str, chips: int, rate: float, lot: str) -> int:
    """``chips`` synthetic fault maps of ``model`` in ``lot``; returns the tiles per chip."""
    os.makedirs(lot)
    plan, _ = api.make_plan(model)
    tiles = api.spare_tiles(plan.tiles_needed(), SPARE)
    for i in range(chips):
        fm = fmap.synth(tiles, plan.tile_rows, plan.tile_cols, rate, RATIO, i,
                        chip_id=f"chip-{i}")
        fmap.save(fm, os.path.join(lot, f"chip{i:04d}.npz"))
    return int(tiles)


def throughput(model: str, lot: str, jobs: int, workdir: str, strategy: str = "full"
               ) -> dict[str, Any]:
    """One pass of the lot in ``lot`` through ``provision`` with ``strategy`` (plan once, chips
    on ``jobs`` workers, images written): chips per hour per core."""
    from rcompile import provision as prov

    out = os.path.join(workdir, "lot-out")
    if os.path.isdir(out):
        shutil.rmtree(out)
    t0 = time.perf_counter()
    s = prov.provision(model, lot, out, jobs=jobs, strategy=strategy)
    wall = time.perf_counter() - t0
    per_core = s.ok / wall * 3600 / jobs
    print(f"  {strategy}: {s.ok} ok, {s.errors} failed, {jobs} workers: {wall:.1f} s wall -> "
          f"{per_core:.0f} chips/hour/core", flush=True)
    return {"chips": s.chips, "ok": s.ok, "jobs": jobs, "wall_s": wall,
            "chips_per_hour_per_core": per_core}


# ------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke check (~1 minute): small models, one run, no baseline")
    ap.add_argument("--json", help="also write the table and every measurement to this file")
    ap.add_argument("--baseline", default=None,
                    help=f"git revision timed next to this tree (default {BASELINE}, none with "
                         "--quick; '' = none)")
    ap.add_argument("--resnet", action="store_true", help="also time ResNet-18 per chip")
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return 0
    rev = args.baseline if args.baseline is not None else ("" if args.quick else BASELINE)
    command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
    start, before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rcompile-bench-") as tmp:
        result, rows = measure(tmp, args.quick, rev, args.resnet)
    after, wall, cpu = os.getloadavg(), time.perf_counter() - start, cpu_seconds()
    for r in rows:
        r.command = command
    print_table(rows, before, after, wall, cpu, args.quick)
    if args.json:
        doc = {"command": command, "quick": args.quick, "baseline": rev,
               "load_before": before, "load_after": after, "cores": os.cpu_count(),
               "wall_s": wall, "cpu_s": cpu, "rows": [dataclasses.asdict(r) for r in rows],
               "measurements": result}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=float)
    return 0


def measure(tmp: str, quick: bool, rev: str, resnet: bool) -> tuple[dict[str, Any], list[Row]]:
    """Every section in order; returns the raw measurements and the table's rows."""
    runs = 1 if quick else RUNS
    scales = {"1x": 0.125, "4x": 0.25} if quick else models.SCALES
    w = models.write_all(tmp, scales, resnet=resnet and not quick)
    vgg = w["vgg8-4x"] if quick else w["vgg8"]
    result: dict[str, Any] = {}
    rows: list[Row] = []
    print(f"rcompile benchmarks ({'quick' if quick else 'full'}); {load()}")
    print(f"chips: uniform faults, SA1:SA0 = {RATIO[0]:g}:{RATIO[1]:g}, {SPARE:.0%} spare tiles, "
          f"fault-map seed {SEED}; medians of {runs} runs")

    pkg = export_baseline(rev, tmp) if rev else None
    print(f"\n1. per-chip stage, medians of {runs} after a warm-up build; "
          + (f"revision {rev} (before) builds the VGG-8 and dense chips in a subprocess, "
             "one build after each of this tree's (now), per pass before -> now; " if pkg
             else "") + load())
    print("  model      weights    p blocks tiles  plan s  two-column s   full s  ratio")
    warm_plan, _ = api.make_plan(MNIST)
    for strategy in STRATEGIES:  # compiled kernels and caches, untimed
        api.build(warm_plan, chip_for(warm_plan, RATE), strategy=strategy)
    chips = [per_chip("mnist", MNIST, _weights(MNIST), runs, RATE),
             per_chip(vgg.name, vgg.path, vgg.weights, runs, RATE, pkg),
             per_chip("dense", DENSE, _weights(DENSE), runs, DENSE_RATE, pkg)]
    if "resnet18" in w:
        chips.append(per_chip("resnet18", w["resnet18"].path, w["resnet18"].weights, runs,
                              RATE))
    result["per_chip"] = chips
    v = chips[1]
    how = f"api.build(strategy='full'), median of {runs}"
    vl = _label(vgg.name)
    rows += [judged(f"{vl} full per-chip, p = {RATE:g}", v["full_s"], "s", "<=", T_CHIP_S, how),
             judged(f"{vl} full / two-column, same chip", v["ratio"], "x", "<=", T_CHIP_RATIO,
                    f"median full / median two-column, {runs} runs each"),
             reported(f"dense example full per-chip, p = {DENSE_RATE:g}", chips[2]["full_s"],
                      "s", how)]
    name = f"{vl} full now / full at revision {rev or '-'}, same chip"
    rows.append(judged(name, v["before"]["slowdown"], "x", "<=", T_BASELINE_RATIO,
                       f"median now / median of revision {rev} (subprocess, builds "
                       f"interleaved), {runs} runs each") if "before" in v
                else missing(name, "x", "<=", T_BASELINE_RATIO,
                             "revision not exported" if rev else "no --baseline"))

    print(f"\n2. per-chip full time against weights (VGG-8 by channel width); {load()}")
    print("  model      weights    p blocks tiles  plan s  two-column s   full s  ratio")
    scaled = [per_chip(k, w[k].path, w[k].weights, runs, RATE)
              if w[k].path != vgg.path else v | {"model": k} for k in w if k.startswith("vgg8-")]
    s_full = slope([(r["weights"], r["full_s"]) for r in scaled])
    s_two = slope([(r["weights"], r["two_column_s"]) for r in scaled])
    print(f"  log-log slope: full {s_full:.2f}, two-column {s_two:.2f} (1.0 = linear)")
    result["scaling"] = {"rows": scaled, "slope_full": s_full, "slope_two_column": s_two}
    rows.append(judged(f"log-log slope of full time vs weights ({len(scaled)} VGG-8 widths)",
                       s_full, "", "<=", T_SLOPE, f"fit over medians of {runs}"))

    print(f"\n3. peak memory, plan + full build of {vgg.name} in a fresh process")
    mem = peak_memory(vgg.path)
    print(f"  main process {mem['main_gb']:.2f} GB, largest worker {mem['worker_gb']:.2f} GB")
    result["memory"] = mem
    rows.append(reported(f"peak memory, plan + full build of {vl} (main process)",
                         mem["main_gb"], "GB", "ru_maxrss of a fresh process, one run"))

    rows += emulation_section(tmp, quick, runs, vgg, result)
    rows += lot_section(tmp, quick, result)
    return result, rows


def emulation_section(tmp: str, quick: bool, runs: int, vgg: models.Workload,
                      result: dict[str, Any]) -> list[Row]:
    devices = tile_devices()
    print(f"\n4. verifying runtime vs plain onnxruntime (runtime.verify timing), medians of "
          f"{runs}; run = emulated run / plain run, with set-up = (programming simulation + "
          f"graph + emulated run) / plain run; the emulated graph's onnxruntime session set-up "
          f"is inside 'emulated s' (verify's timing does not give it apart; any further "
          f"timing key it gains is listed in the parts); {load()}")
    print("  model  mode         samples  plain s emulated s  set-up s (parts)"
          "                   run  with set-up")
    mnist = mnist_times(tmp, 1 if quick else 5)
    emus = [emulation("mnist", MNIST, mnist, "ideal", "ideal", None, runs, warm=True)]
    for adc, hw in devices.items():
        if hw is not None:
            emus.append(emulation("mnist", MNIST, mnist, "tile", f"tile {adc}", hw, runs,
                                  warm=True))
    data = vgg_data(vgg.path, 32 if quick else VGG_SAMPLES)
    for adc, hw in devices.items():
        if hw is not None:
            emus.append(emulation(vgg.name, vgg.path, data, "tile", f"tile {adc}", hw, runs,
                                  warm=False))
    result["emulation"] = emus
    return emulation_rows(emus, devices)


def lot_section(tmp: str, quick: bool, result: dict[str, Any]) -> list[Row]:
    """The dense lot through ``provision``: ``full`` (judged) and ``full-fast`` (reported: no
    reference search, so no block-by-block guarantee against it), their lots alternated."""
    chips, lots = (2, 1) if quick else (LOT_CHIPS, LOTS)
    jobs = os.cpu_count() or 1
    lot = os.path.join(tmp, "lot")
    tiles = write_lot(DENSE, chips, DENSE_RATE, lot)
    print(f"\n5. provision: the dense example, lots of {chips} chips (p = {DENSE_RATE:g}, "
          f"{tiles} tiles each), plan once, images written; lots of 'full' and 'full-fast' "
          f"alternated; {load()}")
    got: dict[str, list[dict[str, Any]]] = {"full": [], "full-fast": []}
    for _ in range(lots):
        for strategy, runs in got.items():
            runs.append(throughput(DENSE, lot, jobs, tmp, strategy))
    rate = {s: statistics.median(x["chips_per_hour_per_core"] for x in runs)
            for s, runs in got.items()}
    for s in got:
        print(f"  {s}: median of {lots} lots: {rate[s]:.0f} chips/hour/core")
    result["provision_dense"] = {"lots": got["full"], "median_chips_per_hour_per_core":
                                 rate["full"], "full_fast": got["full-fast"],
                                 "full_fast_median": rate["full-fast"]}
    how = f"provision of {chips} chips on {jobs} workers, median of {lots} lots"
    return [judged(f"dense example lot through provision, p = {DENSE_RATE:g}", rate["full"],
                   "chips/h/core", ">=", T_CHIPS_HOUR, how),
            reported("same lot, --strategy full-fast (no reference search)",
                     rate["full-fast"], "chips/h/core", how)]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children: what the run costs
    a machine nobody else loads (wall time on a shared one also counts others' work)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _model(path: str) -> Any:
    import onnx

    return onnx.load(path, load_external_data=False)


def _weights(path: str) -> int:
    plan, _ = api.make_plan(path)
    return int(sum(int(np.prod(op.shape)) for op in plan.ops))


if __name__ == "__main__":
    sys.exit(main())
