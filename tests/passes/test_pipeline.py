"""The pass protocol as the pipeline enforces it: parse-time checks, requires/ensures, stages."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from rcompile import api
from rcompile import faultmap as fmap
from rcompile import pipeline as pl
from rcompile.ir import ChipMapping
from tests.conftest import rcompile


def test_pipeline_strings_round_trip() -> None:
    for spec in [*api.STRATEGIES.values(),
                 "place{order=assign},permute{rounds=3},program,calibrate",
                 "place,pair{rounds=2},program{scheme=two-column}",
                 "prune{mode=rows,amount=0.25},quantize,tile{skip-zero=false},pack{budget=1.5}"]:
        assert pl.render(pl.parse(spec)) == spec


@pytest.mark.parametrize("spec, needle", [
    ("place{order=bogus},program", "'bogus' is not one of sequential, assign"),
    ("place,program{scheme=three-column}", "is not one of two-column"),
    ("place,permute{rounds=many},program", "'many' is not an integer"),
    ("place,permute{columns=maybe},program", "'maybe' is not a boolean"),
    ("place,permute{laps=2},program", "has no option 'laps'; options: rounds, columns"),
    ("place,permute{rounds},program", "option 'rounds' has no value"),
    ("place,warp,program", "unknown pass 'warp'"),
    ("quantize,program", "pass 'quantize' is chip-independent; a per-chip pipeline takes only"),
    ("permute,program", "pass 'permute' requires placements"),
    ("place,calibrate,program", "pass 'calibrate' requires levels"),
    ("place,permute", "does not ensure levels"),
    ("place;program", "cannot parse"),
    ("", "empty"),
])
def test_a_bad_per_chip_pipeline_is_refused_before_anything_runs(spec: str, needle: str) -> None:
    with pytest.raises(pl.BadPipeline) as e:
        api.chip_pipeline(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_plan_pipeline_order_and_stage_are_checked() -> None:
    with pytest.raises(pl.BadPipeline, match="pass 'tile' requires quantised"):
        pl.parse("tile,quantize", stage=pl.PLAN, have=frozenset())
    with pytest.raises(pl.BadPipeline, match="pass 'place' is per-chip"):
        pl.parse("quantize,place", stage=pl.PLAN)
    with pytest.raises(pl.BadPipeline, match="not a finite number"):
        pl.parse("prune{amount=nan},quantize", stage=pl.PLAN)


def test_build_with_a_bad_pipeline_is_one_line_and_no_image(tiny_model: str, tmp_path: object
                                                            ) -> None:
    chip = f"{tmp_path}/c.npz"
    r = rcompile("faultmap", "synth", "--like", tiny_model, "--rate", "0.05", "-o", chip)
    assert r.returncode == 0, r.stderr
    out = f"{tmp_path}/c.rimg"
    for spec in ["quantize,program", "permute,program", "place{order=bogus},program"]:
        r = rcompile("build", tiny_model, "--faultmap", chip, "--pipeline", spec, "-o", out)
        assert r.returncode == pl.BadPipeline.exit_code, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    import os

    assert not os.path.exists(out)


def test_a_pass_that_breaks_its_guarantee_is_named(tiny_model: str) -> None:
    @dataclasses.dataclass(frozen=True)
    class Lazy:  # claims to program every used tile, programs none
        name: ClassVar[str] = "lazy"
        stage: ClassVar[str] = pl.CHIP
        requires: ClassVar[frozenset[str]] = frozenset({"placements"})
        ensures: ClassVar[frozenset[str]] = frozenset({"levels"})

        def run(self, plan, mapping, ctx):  # type: ignore[no-untyped-def]
            return mapping, {}

    plan, _ = api.make_plan(tiny_model, tile_rows=32, tile_cols=32)
    fm = fmap.synth(plan.tiles_needed() + 1, 32, 32, rate=0.05, seed=1)
    ctx = pl.ChipContext(geometry=fm.geometry, device=plan.device,
                         stuck=fm.stuck_levels(plan.device), chip_id="c")
    passes = [*pl.parse("place"), Lazy()]
    with pytest.raises(pl.PassFailed, match=r"pass 'lazy' failed \(AssertionError: it does not "
                       r"ensure levels\); passes already run: place"):
        pl.run(passes, plan, ctx, ChipMapping(placements=()))


def test_every_shipped_pass_declares_the_protocol() -> None:
    for name, cls in pl.registry().items():
        assert cls.name == name and cls.stage in (pl.PLAN, pl.CHIP)
        assert (cls.requires | cls.ensures) <= set(pl.FACTS)
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
