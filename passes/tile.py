"""tile — split every quantised layer into logical blocks of <= R rows x <= C/2 outputs.

Rules: per group, rows and outputs whose quantised weights are all zero (pruned) take no cells;
the remaining rows and outputs are cut into the fewest chunks that fit, of balanced sizes, so
every block leaves as many spare rows and column pairs as possible for the per-chip passes.
Requires: ``layers``. Guarantees: every non-zero q lies in exactly one block.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from rcompile.ir import Block, Plan
from rcompile.pipeline import PLAN, PlanContext, register


def _chunks(index: np.ndarray, limit: int) -> list[np.ndarray]:
    if len(index) == 0:
        return []
    n = -(-len(index) // limit)
    return [c.astype(np.int32) for c in np.array_split(index, n)]


@register
@dataclass(frozen=True)
class Tile:
    name: ClassVar[str] = "tile"
    stage: ClassVar[str] = PLAN
    requires: ClassVar[frozenset[str]] = frozenset({"quantised"})
    ensures: ClassVar[frozenset[str]] = frozenset({"blocks"})
    skip_zero: bool = True
    """Give all-zero rows and outputs no cells."""

    def run(self, plan: Plan, ctx: PlanContext) -> tuple[Plan, dict[str, Any]]:
        blocks: list[Block] = []
        used = 0
        for li, layer in enumerate(plan.layers):
            for g in range(layer.q.shape[0]):
                q = layer.q[g]
                if self.skip_zero:
                    rows = np.flatnonzero(np.any(q != 0, axis=1))
                    outs = np.flatnonzero(np.any(q != 0, axis=0))
                else:
                    rows, outs = np.arange(q.shape[0]), np.arange(q.shape[1])
                for r in _chunks(rows, ctx.tile_rows):
                    for o in _chunks(outs, ctx.tile_cols // 2):
                        blocks.append(Block(layer=li, group=g, rows=r, outs=o))
                        used += len(r) * len(o) * 2
        cells = len(blocks) * ctx.tile_rows * ctx.tile_cols
        return replace(plan, blocks=tuple(blocks)), {
            "blocks": len(blocks),
            "cell_utilisation": used / cells if cells else 0.0,
        }
