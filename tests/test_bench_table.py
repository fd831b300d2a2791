"""The closing table of ``make bench``: judging, and the tile devices it measures."""

from __future__ import annotations

import dataclasses

from benchmarks import run
from benchmarks.table import judged, missing
from rcompile.device import PRESETS


def test_a_target_passes_at_its_limit_and_misses_beyond_it() -> None:
    assert judged("t", 3.0, "s", "<=", 3.0, "").status == "PASS"
    assert judged("t", 3.01, "s", "<=", 3.0, "").status == "MISS"
    assert judged("r", 3600.0, "chips", ">=", 3600.0, "").status == "PASS"
    assert judged("r", 3599.0, "chips", ">=", 3600.0, "").status == "MISS"
    row = missing("p", "x", "<=", 3.0, "until adc=pair exists")
    assert (row.value, row.status, row.target) == (None, "n/a: until adc=pair exists", "<= 3")


def test_pair_is_measured_exactly_when_the_converters_have_an_adc_field() -> None:
    devices = run.tile_devices()
    has_adc = "adc" in {f.name for f in dataclasses.fields(PRESETS["neurosim"].converters)}
    assert (devices["pair"] is not None) == has_adc
    column = devices["column"]
    assert column is not None
    if has_adc:
        assert column.converters.adc == "column"
        pair = devices["pair"]
        assert pair is not None and pair.converters.adc == "pair"
    else:
        assert column == PRESETS["neurosim"]


def test_slope_of_an_exact_power_law_is_its_exponent() -> None:
    points = [(w, 0.5 * w**0.9) for w in (1e5, 4e5, 1.6e6)]
    assert abs(run.slope(points) - 0.9) < 1e-9
