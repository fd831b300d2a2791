"""Whole per-chip strategies (``api.STRATEGIES``): what their passes guarantee together."""

from __future__ import annotations

import numpy as np
import pytest

from rcompile import api
from rcompile import faultmap as fmap
from rcompile.device import Cell
from rcompile.ir import Plan

#: Per-level RMS programming error of the neurosim preset (level steps), rounded.
NEUROSIM_RMS = (0, .35, .40, .50, .65, .85, 1.0, 1.09, 1.08, 1.06, .92, .83, .61, .57, .63, .28)


def realised_weights(plan: Plan, res: api.BuildResult, fm: fmap.FaultMap) -> list[np.ndarray]:
    st_ = fm.stuck_levels(Cell())
    out = [np.zeros(layer.q.shape) for layer in plan.layers]
    for pl in res.mapping.placements:
        blk = plan.blocks[pl.block]
        lv = np.where(np.isnan(st_[pl.tile]), res.mapping.levels[pl.tile], st_[pl.tile])
        d = lv[pl.phys_rows][:, pl.pos] - lv[pl.phys_rows][:, pl.neg]
        out[blk.layer][blk.group][np.ix_(blk.rows, blk.outs)] += d * pl.scale
    return out


@pytest.mark.parametrize("strategy", sorted(api.STRATEGIES))
def test_fault_free_chip_realises_the_quantised_weights(tiny_model: str, strategy: str) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.0, (1, 1), 0)
    res = api.build(plan, fm, strategy=strategy)
    for layer, w in zip(plan.layers, realised_weights(plan, res, fm), strict=True):
        np.testing.assert_allclose(w, layer.q * layer.scale[:, None, :], rtol=1e-6, atol=1e-7)


def test_full_beats_two_column_on_weight_error(tiny_model: str) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.2, (5, 1), 3)
    errs = {}
    for strategy in ("two-column", "full"):
        res = api.build(plan, fm, strategy=strategy)
        errs[strategy] = sum(
            float(np.sum((w - layer.q * layer.scale[:, None, :]) ** 2))
            for layer, w in zip(plan.layers, realised_weights(plan, res, fm), strict=True)
        )
    assert errs["full"] < 0.25 * errs["two-column"]


def test_two_builds_give_identical_images(tiny_model: str) -> None:
    from rcompile import image

    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.1, (1, 5), 9)
    a = image.encode(api.build(plan, fm).image)
    b = image.encode(api.build(plan, fm).image)
    assert a == b


@pytest.mark.parametrize("mode", ["all", "partners", "off"])
@pytest.mark.parametrize("strategy", ["full", "mt"])
def test_noise_options_change_nothing_without_an_error_table(
    tiny_model: str, strategy: str, mode: str
) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.2, (1, 1), 4)
    base = api.build(plan, fm, strategy=strategy)
    pipes = {
        "full": f"place{{order=assign}},permute,program{{noise={mode}}},calibrate",
        "mt": f"place{{order=assign}},transform{{noise={mode}}},program{{scheme=transform}}",
    }
    other = api.build(plan, fm, pipeline=pipes[strategy])
    for t, lv in base.mapping.levels.items():
        np.testing.assert_array_equal(other.mapping.levels[t], lv)


@pytest.mark.parametrize("strategy", ["full", "mt"])
def test_partners_mode_equals_plain_on_a_healthy_chip(tiny_model: str, strategy: str) -> None:
    """Only partners of stuck cells weigh programming error, so a fault-free chip is unchanged."""
    dev = Cell(levels=16, level_rms_error=NEUROSIM_RMS)
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6, device=dev)
    fm = fmap.synth(plan.tiles_needed() + 2, 16, 6, 0.0, (1, 1), 0)
    pipes = {
        "full": "place{{order=assign}},permute,program{{noise={m}}},calibrate",
        "mt": "place{{order=assign}},transform{{noise={m}}},program{{scheme=transform}}",
    }
    off, partners = (
        api.build(plan, fm, pipeline=pipes[strategy].format(m=m)) for m in ("off", "partners")
    )
    for t, lv in off.mapping.levels.items():
        np.testing.assert_array_equal(partners.mapping.levels[t], lv)
    if strategy == "full":  # whereas 'all' raises some healthy pairs' common mode
        alls = api.build(plan, fm, pipeline=pipes["full"].format(m="all"))
        assert any(
            not np.array_equal(alls.mapping.levels[t], lv) for t, lv in off.mapping.levels.items()
        )
