"""Build the shipped examples with two versions of the compiler and compare the images.

For every shipped model (``examples/mnist``, ``examples/mobilenet``, ``examples/dense``), every
strategy and a grid of synthetic chips (fault rates, SA1:SA0 ratios, seeds), both versions build
a programming image; the script reports, per build, whether the image bytes are identical and,
when they are not, the objective of ``passes/_objective.py`` (weighted squared level error) of
every block under each version: how many blocks got better, equal or worse, and the totals.

``OLD`` is a git revision (default ``main``); ``NEW`` is the working tree this script sits in
(uncommitted changes included), or another revision with ``--new``. Each version runs in its
own subprocess from an exported copy of its sources, so the two never share a module.

Usage: ``python benchmarks/compare.py [--old REV] [--new REV] [--quick] [--json FILE]``.
Exit status 1 when some block got worse.

:func:`time_version` is the same export used for timing: ``make bench`` measures the per-chip
passes of an older revision next to this tree's (``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODELS = {
    "mnist": ("examples/mnist/mnist_cnn.onnx", "examples/mnist/calib.npz"),
    "mnist-pruned": ("examples/mnist/mnist_cnn_pruned.onnx", "examples/mnist/calib.npz"),
    "mobilenet": ("examples/mobilenet/mobilenet.onnx", None),
    "dense": ("examples/dense/dense_cnn.onnx", "examples/dense/calib.npz"),
}
STRATEGIES = ("two-column", "differential", "mt", "full")
RATES = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5)
RATIOS = ((5.0, 1.0), (1.0, 5.0))
SEEDS = (1, 2, 3)


def export(rev: str | None, dest: str) -> str:
    """Sources of ``rev`` (None: this working tree) laid out as an importable ``rcompile``."""
    src = os.path.join(dest, "src")
    if rev is None:
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", "out"))
    else:
        os.makedirs(src)
        tar = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", src], input=tar.stdout, check=True)
    pkg = os.path.join(dest, "pkg")
    shutil.copytree(os.path.join(src, "rcompile"), os.path.join(pkg, "rcompile"))
    shutil.copytree(os.path.join(src, "passes"), os.path.join(pkg, "rcompile", "passes"))
    return pkg


def worker(out_dir: str, quick: bool) -> None:
    """(Subprocess) build every case with the ``rcompile`` on ``sys.path``; write the images
    and one JSON of per-block costs."""
    import numpy as np
    from rcompile.passes._objective import best_levels
    from rcompile.passes.place import block_q, block_weights

    import rcompile
    from rcompile import api, image
    from rcompile import faultmap as fmap

    costs: dict[str, list[float]] = {}
    for name, (model, calib_path) in MODELS.items():
        plan, _ = api.make_plan(os.path.join(ROOT, model))
        calib = api.load_calib_stats(plan, os.path.join(ROOT, calib_path)) if calib_path else None
        tiles = api.spare_tiles(plan.tiles_needed(), 0.10)
        for rate in RATES[1::2] if quick else RATES:
            for ratio in RATIOS:
                for seed in SEEDS[:1] if quick else SEEDS:
                    fm = fmap.synth(tiles, plan.tile_rows, plan.tile_cols, rate, ratio, seed)
                    for strategy in STRATEGIES:
                        res = api.build(plan, fm, strategy=strategy, calib=calib)
                        key = f"{name}_p{rate}_{ratio[0]:g}-{ratio[1]:g}_s{seed}_{strategy}"
                        with open(os.path.join(out_dir, key + ".rimg"), "wb") as f:
                            f.write(image.encode(res.image))
                        ctx_stuck = fm.stuck_levels(api.chip_device(plan, fm))
                        top = plan.device.max_level
                        per_block = []
                        for pl in res.mapping.placements:
                            q = block_q(plan, pl.block)
                            st = ctx_stuck[pl.tile][pl.phys_rows]
                            _, _, e = best_levels(q, st[:, pl.pos], st[:, pl.neg], top)
                            per_block.append(float(np.sum(block_weights(plan, _Ctx(calib),
                                                                        pl.block)
                                                          * e**2)))
                        costs[key] = per_block
    with open(os.path.join(out_dir, "costs.json"), "w") as f:
        json.dump({"version_file": rcompile.__file__, "costs": costs}, f)


class _Ctx:
    """The one field of ``ChipContext`` that ``block_weights`` reads."""

    def __init__(self, calib: Any) -> None:
        self.calib = calib


def time_worker(model: str, rate: float, runs: int) -> None:
    """(Subprocess) median seconds of every per-chip pass and of the whole build, for
    ``two-column`` and ``full`` on one synthetic chip (``rate``, SA1:SA0 = 5:1, seed 1, 10 %
    spare tiles); prints them as one JSON line."""
    import statistics
    import time

    from rcompile import api
    from rcompile import faultmap as fmap

    plan, _ = api.make_plan(model)
    fm = fmap.synth(api.spare_tiles(plan.tiles_needed(), 0.10), plan.tile_rows,
                    plan.tile_cols, rate, (5.0, 1.0), 1)
    out: dict[str, Any] = {}
    for strategy in ("two-column", "full"):
        totals, passes = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            res = api.build(plan, fm, strategy=strategy)
            totals.append(time.perf_counter() - t0)
            passes.append({e["pass"]: e["seconds"] for e in res.log})
        out[strategy] = {"total_s": statistics.median(totals), "runs": totals,
                         "passes": {k: statistics.median(p[k] for p in passes)
                                    for k in passes[0]}}
    print(json.dumps(out))


def time_version(rev: str, model: str, rate: float, runs: int) -> dict[str, Any]:
    """:func:`time_worker` run on revision ``rev`` of the compiler (exported to a temporary
    directory, run in a subprocess)."""
    with tempfile.TemporaryDirectory(prefix="rcompile-baseline-") as tmp:
        pkg = export(rev, tmp)
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--time", model, str(rate), str(runs)],
            check=True, env=dict(os.environ, PYTHONPATH=pkg), cwd=tmp, capture_output=True,
            text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_version(rev: str | None, tmp: str, tag: str, quick: bool) -> str:
    pkg = export(rev, os.path.join(tmp, tag))
    out = os.path.join(tmp, tag, "images")
    os.makedirs(out)
    env = dict(os.environ, PYTHONPATH=pkg)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", out]
                   + (["--quick"] if quick else []), check=True, env=env, cwd=tmp)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="main", help="git revision of the old version")
    ap.add_argument("--new", default=None, help="git revision of the new one (default: this tree)")
    ap.add_argument("--quick", action="store_true", help="fewer rates and one seed")
    ap.add_argument("--json", help="write the per-build comparison to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--time", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time:
        time_worker(args.time[0], float(args.time[1]), int(args.time[2]))
        return 0
    if args.worker:
        worker(args.worker, args.quick)
        return 0
    with tempfile.TemporaryDirectory(prefix="rcompile-compare-") as tmp:
        old = run_version(args.old, tmp, "old", args.quick)
        new = run_version(args.new, tmp, "new", args.quick)
        with open(os.path.join(old, "costs.json")) as f:
            c_old = json.load(f)
        with open(os.path.join(new, "costs.json")) as f:
            c_new = json.load(f)
        print(f"old: {args.old} ({c_old['version_file']})")
        print(f"new: {args.new or 'working tree'} ({c_new['version_file']})")
        rows = []
        worse_any = False
        for key in sorted(c_old["costs"]):
            with open(os.path.join(old, key + ".rimg"), "rb") as f:
                a = f.read()
            with open(os.path.join(new, key + ".rimg"), "rb") as f:
                b = f.read()
            co, cn = c_old["costs"][key], c_new["costs"][key]
            better = sum(n < o * (1 - 1e-12) - 1e-15 for o, n in zip(co, cn, strict=True))
            worse = sum(n > o * (1 + 1e-12) + 1e-15 for o, n in zip(co, cn, strict=True))
            worse_any |= worse > 0
            rows.append({"build": key, "identical": a == b, "blocks": len(co),
                         "better": better, "worse": worse, "cost_old": sum(co),
                         "cost_new": sum(cn)})
        same = sum(r["identical"] for r in rows)
        print(f"{same} of {len(rows)} images byte-identical")
        for r in rows:
            if not r["identical"]:
                print(f"  differs: {r['build']:<40} blocks {r['blocks']:3d}: better "
                      f"{r['better']:3d}, worse {r['worse']:3d}; cost {r['cost_old']:.6g} -> "
                      f"{r['cost_new']:.6g}")
        print("every block equal or better" if not worse_any else "SOME BLOCK GOT WORSE")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    return 1 if worse_any else 0


if __name__ == "__main__":
    sys.exit(main())
