"""``permute`` variants against ``full`` on one model, block by block.

Builds the same synthetic chips (5:1, 10 % spare tiles, fault-map seeds 200, 201, ...) with
``full`` and with ``place{order=assign},permute{VARIANT},program,calibrate`` for every
variant, serially (``solvers.serial``: per-chip CPU time), and prints per variant the median
seconds a chip, the total block cost, the blocks at zero cost and the blocks at / above
``full``'s. Every block's final cost is recorded by wrapping ``permute._solve_one`` (the
function every solved block goes through) and summed the reference way
(``BlockProblem(reference=True).cost``), so all variants are judged on the same numbers.

Usage: ``python benchmarks/permute_variants.py [--model M] [--rate P] [--chips N]
[VARIANT ...]``, e.g. ``reference=false reference=false,restarts=1``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rcompile.passes import permute  # noqa: E402

from rcompile import api, solvers  # noqa: E402
from rcompile import faultmap as fmap  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(os.path.dirname(HERE), "examples", "dense",
                                                    "dense_cnn.onnx"))
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument("variants", nargs="*", default=["reference=false",
                                                     "reference=false,restarts=1"])
    args = ap.parse_args()
    plan, _ = api.make_plan(args.model)
    tiles = api.spare_tiles(plan.tiles_needed(), 0.10)
    blocks: list[float] = []
    solve_one = permute._solve_one

    def recorded(*a: Any, **k: Any) -> Any:
        out = solve_one(*a, **k)
        blocks.append(replace(a[1], reference=True).cost(*out[0][:3]))
        return out

    permute._solve_one = recorded  # type: ignore[assignment]
    names = ["full", *args.variants]
    secs: dict[str, list[float]] = {k: [] for k in names}
    costs: dict[str, list[float]] = {k: [] for k in names}
    a, b, c = os.getloadavg()
    print(f"{os.path.basename(args.model)}, p = {args.rate:g}, {args.chips} chips, serial; "
          f"load average {a:.2f} {b:.2f} {c:.2f}")
    with solvers.serial():
        for seed in range(args.chips):
            fm = fmap.synth(tiles, plan.tile_rows, plan.tile_cols, args.rate, (5.0, 1.0),
                            200 + seed)
            for name in names:  # alternated chip by chip
                blocks.clear()
                t0 = time.perf_counter()
                if name == "full":
                    api.build(plan, fm, strategy="full")
                else:
                    api.build(plan, fm, pipeline=f"place{{order=assign}},permute{{{name}}},"
                                                 "program,calibrate")
                secs[name].append(time.perf_counter() - t0)
                costs[name] += blocks
    full = np.array(costs["full"])
    for name in names:
        got = np.array(costs[name])
        print(f"  {name:<32} {statistics.median(secs[name]):7.3f} s/chip  cost {got.sum():.5f}"
              f"  zero {int((got == 0).sum())}/{len(got)}  <= full {int((got <= full).sum())}"
              f"  > full {int((got > full).sum())}")
    a, b, c = os.getloadavg()
    print(f"load average {a:.2f} {b:.2f} {c:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
