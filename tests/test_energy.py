"""The latency model charges what packing does: blocks sharing a tile are read one after
another, blocks on different tiles at once."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rcompile import runtime
from rcompile.data import Dataset
from tests.test_hardware import IDEAL, split_gemm_image
from tests.test_runtime import healthy


def test_slices_sharing_a_tile_are_read_in_series() -> None:
    fm = healthy()
    image = split_gemm_image(fm)  # tile 0: one slice of 3 outputs; tile 1: two slices of 3
    assert [len(t.slices) for t in image.tiles] == [1, 2]
    data = Dataset(inputs={"x": np.ones((4, 10), np.float32)}, labels=None, n=4)
    layer, _ = runtime.verify(image, fm, data, hardware=IDEAL).energy
    cols = image.tiles[0].levels.shape[1]
    adcs = math.ceil(cols / IDEAL.converters.cols_per_adc)
    one_read = IDEAL.read.pulse_ns * 1e-9 + math.ceil(2 * 3 / adcs) * IDEAL.costs.adc_time_ns * 1e-9
    digital = (3 * 9 + 2 * 6) / (IDEAL.costs.digital_gops * 1e9)  # 3 ops per slice output
    # the busiest tile sets the pace: tile 1 reads its two slices one after the other
    assert layer["latency_s"] == pytest.approx(2 * one_read + digital)
    assert layer["adc_conversions"] == 2 * 9
