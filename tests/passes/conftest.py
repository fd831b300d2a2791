"""Tiny plans and chips built in code for the pass tests, and the objective computed apart.

``plan_of`` builds a plan straight from float matrices (no ONNX file), as the frontend would
hand them over; ``chip_of`` wraps stuck levels in a per-chip context. Passes run through
``pipeline.run`` so every stage invariant is checked on the way.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import pytest
from rcompile.passes._objective import best_levels
from rcompile.passes.place import block_q, block_weights

from rcompile import api
from rcompile import pipeline as pl
from rcompile.device import Cell, Geometry
from rcompile.ir import LAYOUT_CONV, LAYOUT_KN, ChipMapping, Plan, RowStats, WeightOp
from tests.conftest import conv_bn_gemm, save


def weight_op(i: int, mats: np.ndarray) -> WeightOp:
    """A MatMul for one group, a 1x1 grouped Conv for several: the two layouts ``ir`` knows."""
    g, rows, outs = mats.shape
    if g == 1:
        return WeightOp(f"mm{i}", "MatMul", f"w{i}", f"b{i}", (rows, outs), LAYOUT_KN)
    return WeightOp(f"conv{i}", "Conv", f"w{i}", f"b{i}", (g * outs, rows, 1, 1), LAYOUT_CONV, g)


def plan_of(
    *mats: np.ndarray,
    tile_rows: int = 8,
    tile_cols: int = 6,
    device: Cell | None = None,
    passes: str = "quantize,tile",
) -> Plan:
    """A plan of float matrices ``[groups, rows, outs]`` after the chip-independent ``passes``."""
    device = device or Cell()
    arrays = tuple(np.asarray(m, np.float32) for m in mats)
    ops = tuple(weight_op(i, m) for i, m in enumerate(arrays))
    plan = Plan(
        model=onnx.ModelProto(),
        model_sha256="0" * 64,
        tile_rows=tile_rows,
        tile_cols=tile_cols,
        device=device,
        ops=ops,
        float_mats=arrays,
        biases=tuple(np.linspace(-1, 1, op.n_out).astype(np.float32) for op in ops),
    )
    if passes:
        ctx = pl.PlanContext(tile_rows, tile_cols, device)
        plan, _, _ = pl.run(pl.parse(passes, stage=pl.PLAN, have=frozenset()), plan, ctx)
    return plan


def chip_of(
    plan: Plan,
    stuck: np.ndarray,
    calib: tuple[RowStats, ...] | None = None,
    device: Cell | None = None,
) -> pl.ChipContext:
    """Per-chip context of stuck levels ``[T, R, C]`` (NaN = healthy)."""
    t, r, c = stuck.shape
    return pl.ChipContext(
        geometry=Geometry(t, r, c),
        device=device or plan.device,
        stuck=np.asarray(stuck, np.float32),
        chip_id="test-chip",
        calib=calib,
    )


def run_chip(plan: Plan, ctx: pl.ChipContext, spec: str,
             mapping: ChipMapping | None = None) -> tuple[ChipMapping, list[dict[str, Any]]]:
    """Run the per-chip passes of ``spec`` (checked by the pipeline) from ``mapping``."""
    passes = pl.parse(spec, stage=pl.CHIP)
    _, out, log = pl.run(passes, plan, ctx, mapping or ChipMapping(placements=()))
    assert out is not None
    return out, log


def random_stuck(tiles: int, rows: int, cols: int, rate: float, seed: int, top: int = 15
                 ) -> np.ndarray:
    """Stuck levels with fault probability ``rate``: SA0, SA1 and levels in between alike.

    Whole levels, so that the passes' cost tables (which round a stuck level) are the
    objective exactly."""
    rng = np.random.default_rng(seed)
    shape = (tiles, rows, cols)
    level = np.where(rng.random(shape) < 0.5, rng.choice([0.0, float(top)], shape),
                     rng.integers(0, top + 1, shape))
    return np.where(rng.random((tiles, rows, cols)) < rate, level, np.nan).astype(np.float32)


def fractional_chip(seed: int) -> tuple[Plan, pl.ChipContext]:
    """A small packed plan on a chip whose stuck cells (30 %) read fractional levels, as
    measured conductances (``FaultMap.stuck_g``) give."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, int(rng.integers(3, 12)), int(rng.integers(1, 8))))
    plan = plan_of(w, tile_rows=8, tile_cols=8, passes="quantize,tile,pack")
    shape = (plan.tiles_needed(), 8, 8)
    stuck = np.where(rng.random(shape) < 0.3, rng.uniform(0, 15, shape), np.nan)
    return plan, chip_of(plan, stuck)


def objective(plan: Plan, mapping: ChipMapping, ctx: pl.ChipContext) -> list[float]:
    """Per placement ``sum_ij w_ij (realised_ij - q_ij)^2`` with optimally programmed pairs."""
    out = []
    for p in mapping.placements:
        st = ctx.stuck[p.tile][p.phys_rows]
        _, _, e = best_levels(block_q(plan, p.block), st[:, p.pos], st[:, p.neg],
                              ctx.device.max_level)
        out.append(float(np.sum(block_weights(plan, ctx, p.block) * e**2)))
    return out


def assert_injective(plan: Plan, mapping: ChipMapping, ctx: pl.ChipContext) -> None:
    """Rows and columns of every placement distinct, inside its strip, strips disjoint."""
    strips: dict[int, set[int]] = {}
    for p in mapping.placements:
        blk = plan.blocks[p.block]
        assert len(p.phys_rows) == len(blk.rows) and len(p.pos) == len(p.neg) == len(blk.outs)
        assert len(set(p.phys_rows.tolist())) == len(p.phys_rows)
        assert 0 <= p.phys_rows.min() and p.phys_rows.max() < ctx.geometry.rows
        used = np.concatenate([p.pos, p.neg]).tolist()
        assert len(set(used)) == len(used) and set(used) <= set(p.cols.tolist())
        taken = strips.setdefault(p.tile, set())
        assert not taken & set(p.cols.tolist())
        taken |= set(p.cols.tolist())


@pytest.fixture(scope="session")
def tiny_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """The Conv-BN-Gemm model of ``tests/conftest.py`` on 16 x 6 tiles (45 blocks); passes never
    mutate their input, so one plan serves every test."""
    path = save(conv_bn_gemm(), os.path.join(str(tmp_path_factory.mktemp("plan")), "tiny.onnx"))
    plan, _ = api.make_plan(path, tile_rows=16, tile_cols=6)
    return plan
