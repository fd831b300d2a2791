"""The typed image header and build timing: exactly the JSON object of the image, both ways."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from rcompile import api
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile.device import PRESETS
from rcompile.errors import BadImage
from rcompile.image import BuildOptions, ImageHeader
from tests.conftest import ROOT

COMPAT = os.path.join(ROOT, "tests", "data", "compat", "sk_mlp_classifier-skl2onnx13-dynamic.onnx")


@pytest.mark.parametrize(("which", "device"), [("tiny", None), ("compat", "neurosim")])
def test_the_header_is_the_images_json_object_both_ways(
        tiny_model: str, which: str, device: str | None) -> None:
    model = tiny_model if which == "tiny" else COMPAT
    hw = None if device is None else replace(PRESETS[device], tile_rows=16, tile_cols=8)
    fm = fmap.synth(api.tiles_needed(model, 16, 8) + 1, 16, 8, 0.1, (5, 1), 4)
    res = api.compile_chip(model, fm, hardware=hw)
    back = rimg.decode(rimg.encode(res.image)).header
    assert res.header.to_dict() == res.image.header == back
    assert ImageHeader.from_dict(back) == res.header
    assert (res.header.hardware is None) == (device is None) == ("hardware" not in back)
    assert res.header.geometry == fm.geometry and res.header.chip_id == fm.chip_id
    assert res.header.pipeline == api.pl.render(api.chip_pipeline(api.STRATEGIES["full"]))


def test_timing_names_every_pass_of_the_log_in_order(tiny_model: str) -> None:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=8)
    fm = fmap.synth(plan.tiles_needed() + 1, 16, 8, 0.1, (5, 1), 4)
    made_here = api.compile_chip(tiny_model, fm)
    assert [p.name for p in made_here.timing.passes] == [e["pass"] for e in made_here.log]
    assert [p.seconds for p in made_here.timing.passes] == [e["seconds"] for e in made_here.log]
    assert made_here.log[0]["pass"] == "quantize" and made_here.plan_seconds > 0
    assert made_here.chip_seconds >= sum(p.seconds for p in made_here.timing.passes[3:])
    alone = api.build(plan, fm)
    assert alone.plan_seconds == alone.chip_seconds == 0.0
    assert [p.name for p in alone.timing.passes] == ["place", "permute", "program", "calibrate"]


def test_a_header_without_a_field_is_one_line_naming_it() -> None:
    good = {"chip_id": "c", "faultmap_sha256": "a" * 64, "model_sha256": "b" * 64,
            "compiler_version": "0.1.0", "strategy": "full", "pipeline": "place,program",
            "plan_pipeline": "quantize,tile,pack",
            "options": BuildOptions(10.0, 1, 0, False).to_dict(),
            "device": {"levels": 16, "g_min_us": 1.0, "g_max_us": 100.0, "read_v": 0.2},
            "geometry": {"tiles": 2, "rows": 8, "cols": 8}, "future_key": [1]}
    header = ImageHeader.from_dict(good, "chip.rimg")
    assert "future_key" not in header.to_dict()  # a key of another writer is not ours
    cases = [({"strategy": 3}, "header strategy is 3; expected a string"),
             ({"options": {**good["options"], "solver_seed": True}},
              "header solver_seed is True; expected an integer"),
             ({"geometry": None}, "header geometry is None; expected an object"),
             ({"device": {**good["device"], "levels": 1}}, "header device is invalid"),
             ({"hardware": "neurosim"}, "header hardware is 'neurosim'; expected an object")]
    for change, text in cases:
        with pytest.raises(BadImage, match="^chip.rimg: " + text.replace("(", r"\(")):
            ImageHeader.from_dict({**good, **change}, "chip.rimg")
    missing = dict(good)
    del missing["plan_pipeline"]
    with pytest.raises(BadImage, match="header plan_pipeline is None; expected a string"):
        ImageHeader.from_dict(missing, "chip.rimg")
