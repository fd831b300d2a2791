"""prune — optional post-training pruning of the trained weights (before ``quantize``).

Modes:
* ``magnitude``: per layer, the ``amount`` fraction of weights smallest in magnitude become 0;
* ``rows``: per layer and group, the ``amount`` fraction of fan-in rows with the smallest L2
  norm become 0 (whole crossbar rows freed);
* ``cols``: per layer and group, the ``amount`` fraction of outputs with the smallest L2 norm
  become 0 (whole column pairs freed; the output keeps its digital bias).
Ties are broken by index, so the result is deterministic. Zeros then take no cells in ``tile``
(all-zero rows and outputs) or absorb faults (zeros inside blocks).
Requires: float matrices. Guarantees: same shapes; only entries set to 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np

from rcompile.ir import Plan
from rcompile.pipeline import PLAN, PlanContext, register

MODES = ("magnitude", "rows", "cols")


def _smallest(score: np.ndarray, amount: float) -> np.ndarray:
    """Boolean mask of the ``round(amount * n)`` smallest entries (stable by index)."""
    k = int(round(amount * score.size))
    mask = np.zeros(score.size, bool)
    mask[np.argsort(score.ravel(), kind="stable")[:k]] = True
    return mask.reshape(score.shape)


@register
@dataclass(frozen=True)
class Prune:
    name: ClassVar[str] = "prune"
    stage: ClassVar[str] = PLAN
    requires: ClassVar[frozenset[str]] = frozenset()
    ensures: ClassVar[frozenset[str]] = frozenset()
    mode: Literal["magnitude", "rows", "cols"] = "magnitude"
    amount: float = 0.5
    """Fraction pruned per layer, 0..1."""

    def run(self, plan: Plan, ctx: PlanContext) -> tuple[Plan, dict[str, Any]]:
        if self.mode not in MODES:
            raise ValueError(f"unknown prune mode {self.mode!r}; expected one of {MODES}")
        if not 0.0 <= self.amount <= 1.0:
            raise ValueError(f"prune amount {self.amount} out of range; expected 0..1")
        mats = []
        zero = total = 0
        for trained in plan.float_mats:
            w = trained.copy()
            if self.mode == "magnitude":
                w[_smallest(np.abs(w), self.amount)] = 0.0
            for g in range(w.shape[0]):
                if self.mode == "rows":
                    w[g][_smallest(np.linalg.norm(w[g], axis=1), self.amount), :] = 0.0
                elif self.mode == "cols":
                    w[g][:, _smallest(np.linalg.norm(w[g], axis=0), self.amount)] = 0.0
            zero += int(np.sum(w == 0))
            total += w.size
            mats.append(w)
        return replace(plan, float_mats=tuple(mats)), {"sparsity": zero / total if total else 0.0}
