"""Builds one synthetic chip on request with whichever ``rcompile`` is first on ``sys.path``.

``benchmarks/run.py`` starts this script with ``PYTHONPATH`` set to an older revision's export
(``benchmarks/compare.py``'s :func:`export`) and asks it for one build at a time, between its
own builds of the same chip: both versions are timed under the same machine load. It reads
only ``rcompile.api`` and ``rcompile.faultmap``, which every revision since the first image
format has, so any such revision can be the baseline.

Protocol (one JSON object per line): on start, plan ``MODEL``, synthesise its chip (``RATE``,
SA1:SA0 = 5:1, fault-map seed 1, 10 % spare tiles, as ``run.py``), build it once with each
strategy, untimed (the exported sources have no compiled-kernel cache: the first build of a
chip compiles what it needs, as this tree's cached kernels need not), and print
``{"ready": true}``; then for every line
``STRATEGY`` on stdin build once and print ``{"s": seconds, "passes": {pass: seconds}}``; end
of input ends it.

Usage: ``python benchmarks/baseline_worker.py MODEL RATE STRATEGY [STRATEGY ...]``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rcompile import api
from rcompile import faultmap as fmap


def chip(model: str, rate: float) -> tuple[Any, fmap.FaultMap]:
    """The plan of ``model`` and its synthetic chip."""
    plan, _ = api.make_plan(model)
    tiles = api.spare_tiles(plan.tiles_needed(), 0.10)
    return plan, fmap.synth(tiles, plan.tile_rows, plan.tile_cols, rate, (5.0, 1.0), 1)


def main(model: str, rate: float, strategies: list[str]) -> None:
    plan, fm = chip(model, rate)
    for strategy in strategies:
        api.build(plan, fm, strategy=strategy)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        t0 = time.perf_counter()
        res = api.build(plan, fm, strategy=line.strip())
        s = time.perf_counter() - t0
        print(json.dumps({"s": s, "passes": {e["pass"]: e["seconds"] for e in res.log}}),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3:])
