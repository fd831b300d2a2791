"""The hardware-faithful runtime: tile mode, programming, read noise, on/off ratio, energy."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from rcompile import api, programming, runtime
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile.data import Dataset
from rcompile.device import PRESETS, Cell, Converters, Hardware, Programming, Read
from rcompile.faultmap import FaultMap
from rcompile.image import Image, SliceRecord, TileRecord
from rcompile.ir import LAYOUT_KN, WeightOp
from rcompile.programming import program, program_tiles
from rcompile.runtime import weights
from rcompile.sweep import run_sweep
from tests.conftest import MODEL, TEST_DATA, rcompile
from tests.test_runtime import (
    CONV_OP,
    DEV,
    GEMM_OP,
    C,
    R,
    conv_graph,
    dataset,
    gemm_graph,
    healthy,
    layer_record,
    make_image,
    with_faults,
)

IDEAL = replace(PRESETS["ideal"], cell=DEV)
"""The ideal device with the test images' cell."""


def matmul_graph(k: int = 6, m: int = 4) -> onnx.ModelProto:
    """x[?, 3, k] -> MatMul(W[k, m]) -> Add(b) -> y[?, 3, m], as the frontend normalises it."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="mm.bias"),
    ]
    graph = helper.make_graph(
        nodes, "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, m])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


MM_OP = WeightOp("mm", "MatMul", "W", "b", (6, 4), LAYOUT_KN, 1)


def split_gemm_image(fm: FaultMap) -> Image:
    """A 10x6 Gemm in three slices on two tiles: rows split (contiguous and scattered, summed
    digitally), outputs split, physical rows and columns permuted."""
    op = WeightOp("fc", "Gemm", "W", "b", (10, 6), LAYOUT_KN, 1)
    rec = layer_record(op, 7)
    i32 = np.int32
    plan = [  # tile, rows, outs, phys_rows, pos, neg
        (0, [0, 1, 2, 3, 4], [0, 1, 2], [3, 7, 1, 20, 11], [0, 2, 4], [5, 3, 1]),
        (1, [9, 7, 5, 8, 6], [0, 1, 2], [0, 1, 2, 3, 4], [6, 8, 10], [7, 9, 11]),
        (1, list(range(10)), [3, 4, 5], list(range(10, 20)), [0, 2, 4], [1, 3, 5]),
    ]
    levels = {0: np.zeros((R, C), np.uint8), 1: np.zeros((R, C), np.uint8)}
    slices: dict[int, list[SliceRecord]] = {0: [], 1: []}
    for t, rows, outs, pr, pos, neg in plan:
        q = rec.q[0][np.ix_(rows, outs)]
        levels[t][np.ix_(pr, pos)] = np.maximum(q, 0)
        levels[t][np.ix_(pr, neg)] = np.maximum(-q, 0)
        slices[t].append(SliceRecord(
            layer=0, group=0, rows=np.array(rows, i32), outs=np.array(outs, i32),
            phys_rows=np.array(pr, i32), pos=np.array(pos, i32), neg=np.array(neg, i32),
            scale=rec.scale[0][outs].copy(), offset=np.zeros(len(outs), np.float32),
        ))
    base = make_image(gemm_graph(10, 6), [rec], fm)
    tiles = tuple(TileRecord(t, levels[t], tuple(slices[t])) for t in (0, 1))
    return replace(base, tiles=tiles)


CASES = {
    "gemm": lambda fm: (make_image(gemm_graph(), [layer_record(GEMM_OP, 1)], fm), gemm_graph()),
    "conv": lambda fm: (make_image(conv_graph(), [layer_record(CONV_OP, 2)], fm), conv_graph()),
    "matmul": lambda fm: (make_image(matmul_graph(), [layer_record(MM_OP, 3)], fm),
                          matmul_graph()),
    "split": lambda fm: (split_gemm_image(fm), gemm_graph(10, 6)),
}


def faulty() -> FaultMap:
    return with_faults([(0, 0, 0, 2), (0, 3, 5, 1), (1, 2, 7, 2), (0, 11, 4, 2), (1, 12, 2, 2)])


# --------------------------------------------------------------------------- tile = ideal


def with_adc(hw: Hardware, adc: str, **converters: object) -> Hardware:
    """``hw`` whose ADCs read every column (``column``) or every pair (``pair``)."""
    return replace(hw, converters=replace(hw.converters, adc=adc, **converters))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chip", ["healthy", "faulty"])
@pytest.mark.parametrize("adc", ["column", "pair"])
def test_tile_mode_equals_ideal_mode_with_ideal_converters(case: str, chip: str, adc: str
                                                           ) -> None:
    fm = healthy() if chip == "healthy" else faulty()
    image, graph = CASES[case](fm)
    data = dataset(graph, 64)
    ideal = runtime.emulate(image, fm, data, hardware=IDEAL, mode="ideal")
    tile = runtime.emulate(image, fm, data, hardware=with_adc(IDEAL, adc), mode="tile")
    assert tile[0].shape == ideal[0].shape
    np.testing.assert_allclose(tile[0], ideal[0], rtol=1e-4, atol=1e-4 * np.abs(ideal[0]).max())


@pytest.mark.parametrize("ranges", ["dynamic", "calibrated"])
@pytest.mark.parametrize("case", ["conv", "split"])
def test_fine_converters_agree_and_coarse_ones_do_not(ranges: str, case: str) -> None:
    fm = faulty()
    image, graph = CASES[case](fm)
    data = dataset(graph, 64)
    ideal = runtime.emulate(image, fm, data, hardware=IDEAL, mode="ideal")[0]

    def err(bits: int) -> float:
        cv = Converters(adc_bits=bits, dac_bits=bits, adc_range=ranges, dac_range=ranges)
        got = runtime.emulate(image, fm, data, hardware=replace(IDEAL, converters=cv), mode="tile")
        return float(np.linalg.norm(got[0] - ideal) / np.linalg.norm(ideal))

    fine, mid, coarse = err(16), err(8), err(3)
    assert fine < 1e-3 < coarse and mid < coarse
    adc_only = Converters(adc_bits=16, adc_range=ranges, dac_range=ranges)  # ideal DAC
    got = runtime.emulate(image, fm, data, hardware=replace(IDEAL, converters=adc_only))[0]
    assert np.linalg.norm(got - ideal) / np.linalg.norm(ideal) < 1e-3


@pytest.mark.parametrize("case", ["conv", "split"])
def test_a_pair_adc_reads_the_difference_so_the_leak_costs_it_no_range(case: str) -> None:
    """One conversion of ``I+ - I-`` per output: the ``g_min`` leak cancels before the ADC, so a
    pair ADC reads a chip alike at any on/off ratio, while a column ADC spends codes on the
    leak and loses accuracy as it grows; at a low on/off ratio the pair reads closer to ideal."""
    fm = faulty()
    image, graph = CASES[case](fm)
    data = dataset(graph, 64)
    err: dict[tuple[str, float], float] = {}
    out: dict[tuple[str, float], np.ndarray] = {}
    for g_min in (DEV.g_min_us, DEV.g_max_us / 10):
        hw = replace(IDEAL, cell=replace(DEV, g_min_us=g_min))
        ideal = runtime.emulate(image, fm, data, hardware=hw, mode="ideal")[0]
        for adc in ("column", "pair"):
            y = runtime.emulate(image, fm, data, mode="tile", hardware=with_adc(
                hw, adc, adc_bits=3, adc_range="calibrated"))[0]
            out[adc, g_min] = y
            err[adc, g_min] = float(np.linalg.norm(y - ideal) / np.linalg.norm(ideal))
    lo, hi = DEV.g_min_us, DEV.g_max_us / 10
    np.testing.assert_allclose(out["pair", lo], out["pair", hi], rtol=1e-4,
                               atol=1e-4 * np.abs(out["pair", lo]).max())
    assert err["column", hi] > err["column", lo] > 0
    assert err["pair", hi] < err["column", hi]


# --------------------------------------------------------------------------- read noise


def test_read_noise_has_the_variance_of_independent_cell_noise() -> None:
    fm = healthy()
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 4)], fm)
    x = np.abs(np.random.default_rng(0).normal(size=(1, 6))).astype(np.float32)
    data = Dataset(inputs={"x": np.repeat(x, 3000, axis=0)}, labels=None, n=3000)
    rel = 0.05
    hw = replace(IDEAL, read=Read(noise_rel=rel))
    y = runtime.emulate(image, fm, data, hardware=hw, mode="tile")[0]
    clean = runtime.emulate(image, fm, data, hardware=IDEAL, mode="tile")[0][0]
    # predicted: y_o = scale_o / step * (I+ - I-) / read_v, each cell's current x_i G_ij
    s = image.tiles[0].slices[0]
    g = DEV.g_min_us + image.tiles[0].levels.astype(np.float64) * DEV.step_us
    pr = np.asarray(s.phys_rows)
    var = (x[0, :, None] ** 2 * (g[np.ix_(pr, s.pos)] ** 2 + g[np.ix_(pr, s.neg)] ** 2)).sum(0)
    want = np.asarray(s.scale) / DEV.step_us * rel * np.sqrt(var)
    np.testing.assert_allclose(y.std(axis=0), want, rtol=0.2)
    np.testing.assert_allclose(y.mean(axis=0), clean, atol=0.2 * want.max())


def test_noise_seed_reproduces_a_chip_and_another_seed_does_not() -> None:
    fm = faulty()
    image, graph = CASES["conv"](fm)
    data = dataset(graph, 32)
    hw = replace(PRESETS["neurosim"], tile_rows=R, tile_cols=C)
    a, b, c = (runtime.emulate(image, fm, data, hardware=hw, noise_seed=s)[0] for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# --------------------------------------------------------------------------- programming, on/off


def test_programming_misses_targets_but_stuck_cells_still_override() -> None:
    fm = faulty()
    image, _ = CASES["gemm"](fm)
    hw = PRESETS["neurosim"]
    lv = runtime.chip_levels(image, fm, hw, noise_seed=1)[0]
    target = image.tiles[0].levels.astype(np.float64)
    stuck = fm.stuck_levels(hw.cell)[0]
    hit = ~np.isnan(stuck)
    assert np.array_equal(lv[hit], stuck[hit])  # stuck cells sit where they are stuck
    healthy_err = np.abs(lv - target)[~hit]
    assert healthy_err.max() > 0.05 and healthy_err.mean() < 1.5  # near, not on, target
    exact = runtime.chip_levels(image, fm, IDEAL)[0]
    assert np.array_equal(exact[~hit], target[~hit])


def test_stuck_cells_are_not_programmed_and_the_rest_is_one_seeded_write() -> None:
    fm = faulty()
    image, _ = CASES["split"](fm)
    hw = PRESETS["neurosim"]
    stuck = fm.stuck_levels(hw.cell)
    got = runtime.chip_levels(image, fm, hw, noise_seed=7)
    for tile in image.tiles:
        t = int(tile.tile)
        hit = ~np.isnan(stuck[t])
        write = weights._used(tile, R, C) & ~hit
        assert hit.any() and (weights._used(tile, R, C) & hit).any()  # stuck cells under slices
        # exactly the written cells drew from the tile's generator: nothing spent on stuck ones
        (want,) = program_tiles([tile.levels[write]], hw.cell, hw.programming,
                                [np.random.default_rng([7, t])], hw.read.noise_rel)
        assert np.array_equal(got[t][write], want)
        assert np.array_equal(got[t][hit], stuck[t][hit])
        unused = ~weights._used(tile, R, C) & ~hit  # cells no slice reads keep their target
        assert np.array_equal(got[t][unused], tile.levels[unused])
    again = runtime.chip_levels(image, fm, hw, noise_seed=7)
    assert all(np.array_equal(got[t], again[t]) for t in got)


def test_programming_a_chip_on_every_core_realises_the_same_levels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fm = faulty()
    image, _ = CASES["split"](fm)
    hw = PRESETS["neurosim"]
    monkeypatch.setenv("RCOMPILE_JOBS", "1")
    one = runtime.chip_levels(image, fm, hw, noise_seed=3)
    monkeypatch.setenv("RCOMPILE_JOBS", "2")
    monkeypatch.setattr(weights, "PARALLEL_CELLS", 0)  # threads even for this small chip
    chunks: list[list[int]] = []
    real_chunk = weights._program_chunk

    def spy(shared, chunk):  # type: ignore[no-untyped-def]
        chunks.append(chunk)
        return real_chunk(shared, chunk)

    monkeypatch.setattr(weights, "_program_chunk", spy)
    two = runtime.chip_levels(image, fm, hw, noise_seed=3)
    assert len(chunks) == 2 and sorted(sum(chunks, [])) == list(range(len(image.tiles)))
    assert sorted(one) == sorted(two)
    assert all(np.array_equal(one[t], two[t]) for t in one)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nl=st.sampled_from([(4.0, -4.0), (0.0, -2.0), (1.0, 0.0)]),
       noise=st.sampled_from([0.0, 0.0289, 0.3]), c2c=st.sampled_from([0.0, 0.035]),
       sizes=st.lists(st.integers(0, 300), min_size=1, max_size=4))
def test_the_compiled_write_verify_loop_gives_the_same_bytes(
    seed: int, nl: tuple[float, float], noise: float, c2c: float, sizes: list[int]
) -> None:
    cell = Cell(levels=16, g_min_us=10.0, g_max_us=100.0)
    prog = Programming(pulses=64, nl_ltp=nl[0], nl_ltd=nl[1], c2c_sigma=c2c,
                       tolerance_levels=0.5, max_iterations=20)
    rng = np.random.default_rng(seed)
    targets = [rng.integers(0, 16, size=n) for n in sizes]

    def write() -> list[np.ndarray]:
        return program_tiles(targets, cell, prog,
                             [np.random.default_rng([seed, i]) for i in range(len(sizes))], noise)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(programming, "COMPILED_CELLS", 1 << 62)
        plain = write()
        mp.setattr(programming, "COMPILED_CELLS", 0)
        compiled = write()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(plain, compiled, strict=True))


def test_fast_programming_is_seeded_per_group() -> None:
    hw = PRESETS["neurosim"]
    groups = [np.random.default_rng(s).integers(0, 16, size=(30, 7)) for s in range(3)]

    def write(seeds: list[int], gs: list[np.ndarray]) -> list[np.ndarray]:
        return program_tiles(gs, hw.cell, hw.programming,
                             [np.random.default_rng([5, s]) for s in seeds], hw.read.noise_rel)

    a, b = write([0, 1, 2], groups), write([0, 1, 2], groups)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert [x.shape for x in a] == [(30, 7)] * 3
    (alone,) = write([1], groups[1:2])  # a group does not depend on the others
    assert np.array_equal(alone, a[1])
    assert not np.array_equal(write([0, 9, 2], groups)[1], a[1])


def test_reset_cells_are_written_when_read_noise_could_reject_them() -> None:
    # tolerance 0.5 steps of 6 uS = 3 uS, read noise 20 % of g_min = 50 uS: 0.3 sigmas
    cell = Cell(levels=16, g_min_us=50.0, g_max_us=140.0)
    prog = Programming(pulses=64, nl_ltp=4.0, nl_ltd=-4.0, c2c_sigma=0.035,
                       tolerance_levels=0.5, max_iterations=20)
    zeros = np.zeros(500, np.int64)
    (noisy,) = program_tiles([zeros], cell, prog, [np.random.default_rng(0)], 0.2)
    assert np.any(noisy != 0)  # rejected readings were rewritten, as program() does
    assert np.any(program(zeros, cell, prog, np.random.default_rng(0), 0.2) != 0)
    (quiet,) = program_tiles([zeros], cell, prog, [np.random.default_rng(0)], 0.0)
    assert np.all(quiet == 0)


def test_verify_is_reproducible_in_tile_mode() -> None:
    fm = faulty()
    image, graph = CASES["split"](fm)
    data = dataset(graph, 32)
    hw = replace(PRESETS["neurosim"], tile_rows=R, tile_cols=C)
    a, b = (runtime.verify(image, fm, data, hardware=hw, noise_seed=2).to_dict() for _ in "ab")
    assert a["mode"] == "tile"
    a.pop("timing")
    b.pop("timing")
    assert a == b


def test_on_off_leak_cancels_in_pairs_but_costs_adc_range_and_energy() -> None:
    fm = healthy()
    image, graph = CASES["split"](fm)
    x = np.abs(dataset(graph, 64).inputs["x"])  # unipolar inputs: the ADC range starts at 0
    data = Dataset(inputs={"x": x}, labels=None, n=64)
    tight = Cell(levels=16, g_min_us=0.1, g_max_us=100.0)
    leaky = Cell(levels=16, g_min_us=50.0, g_max_us=100.0)
    ref = runtime.emulate(image, fm, data, hardware=IDEAL, mode="ideal")[0]

    def run(cell: Cell, bits: int) -> tuple[np.ndarray, float]:
        hw = replace(IDEAL, cell=cell, converters=Converters(adc_bits=bits))
        out = runtime.emulate(image, fm, data, hardware=hw, mode="tile")[0]
        rep = runtime.verify(image, fm, data, hardware=hw, mode="tile")
        return out, sum(c["cell_j"] for c in rep.energy)

    (a, e_tight), (b, e_leaky) = run(tight, 24), run(leaky, 24)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())  # leak cancels
    assert e_leaky > 2 * e_tight  # ... but draws current
    err = [np.linalg.norm(run(c, 4)[0] - ref) for c in (tight, leaky)]
    assert err[1] > 1.5 * err[0]  # and eats ADC codes


# --------------------------------------------------------------------------- the fault-free chip


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fault_free_chip_holds_the_intended_weights_and_no_stuck_cell(case: str) -> None:
    fm = faulty()
    image, _ = CASES[case](fm)
    stuck = fm.faults != 0  # a compiler may write anything to a stuck cell: it stays stuck
    image = replace(image, tiles=tuple(
        replace(t, levels=np.where(stuck[t.tile], DEV.max_level, t.levels).astype(np.uint8))
        for t in image.tiles))
    free_image, free_map = runtime.fault_free_chip(image, fm)
    assert not free_map.faults.any() and free_map.chip_id == fm.chip_id
    assert free_map.faults.shape == fm.faults.shape
    assert all(not np.any(s.offset) for t in free_image.tiles for s in t.slices)
    for got, want in zip(runtime.effective_weights(free_image, free_map, hardware=IDEAL),
                         runtime.intended_weights(image), strict=True):
        np.testing.assert_array_equal(got, want)
    for before, after in zip(image.tiles, free_image.tiles, strict=True):
        for s in before.slices:
            pr = np.asarray(s.phys_rows)[:, None]
            clear = ~(stuck[before.tile][pr, s.pos] | stuck[before.tile][pr, s.neg])  # kept
            for cols in (s.pos, s.neg):
                np.testing.assert_array_equal(after.levels[pr, cols][clear],
                                              before.levels[pr, cols][clear])


def test_a_chip_with_no_stuck_cell_matches_the_fault_free_chip_on_its_device() -> None:
    image, graph = CASES["split"](healthy())
    data = dataset(graph, 64, labels=True)
    noisy = replace(IDEAL, converters=Converters(adc_bits=3), read=Read(noise_rel=0.05))
    rep = runtime.verify(image, healthy(), data, hardware=noisy, noise_seed=4)
    assert rep.device_fault_free_accuracy == rep.accuracy and rep.device_agreement == 1.0
    assert rep.agreement is not None and rep.agreement < 1.0  # the device alone costs decisions
    fm = faulty()
    exact = runtime.verify(CASES["split"](fm)[0], fm, data, hardware=IDEAL)  # the ideal reference
    assert exact.device_fault_free_accuracy == exact.fault_free_accuracy
    assert exact.device_agreement == exact.agreement


# --------------------------------------------------------------------------- energy and latency


def test_energy_and_latency_of_one_gemm_by_hand() -> None:
    fm = healthy()
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 5)], fm)
    data = Dataset(inputs={"x": np.ones((8, 6), np.float32)}, labels=None, n=8)
    rep = runtime.verify(image, fm, data, hardware=IDEAL)
    layer, periphery = rep.energy
    g = DEV.g_min_us + image.tiles[0].levels[:6, :8].astype(np.float64) * DEV.step_us
    assert layer["cell_j"] == pytest.approx(10e-9 * 0.2**2 * g.sum() * 1e-6)
    assert layer["adc_conversions"] == 8 and layer["adc_j"] == pytest.approx(8 * 2e-12)
    assert layer["dac_j"] == pytest.approx(6 * 0.05e-12)
    assert layer["digital_j"] == pytest.approx((3 * 4 + 2 * 4) * 0.05e-12)
    # one MVM: 10 ns read + 8 columns over 2 ADCs (16 columns / 8 per ADC) at 1 ns, + 20 ops
    assert layer["latency_s"] == pytest.approx(10e-9 + 4e-9 + 20 / 100e9)
    assert periphery["energy_j"] == 0.0  # the graph has nothing but the crossbar
    assert rep.energy_per_inference_j == pytest.approx(layer["energy_j"])
    assert rep.latency_per_inference_s == pytest.approx(layer["latency_s"])


def test_a_pair_adc_charges_one_conversion_per_output() -> None:
    fm = healthy()
    image = make_image(gemm_graph(), [layer_record(GEMM_OP, 5)], fm)
    data = Dataset(inputs={"x": np.ones((8, 6), np.float32)}, labels=None, n=8)
    col = runtime.verify(image, fm, data, hardware=IDEAL).energy[0]
    pair = runtime.verify(image, fm, data, hardware=with_adc(IDEAL, "pair")).energy[0]
    assert pair["adc_conversions"] == 4 and pair["adc_j"] == pytest.approx(col["adc_j"] / 2)
    assert (pair["cell_j"], pair["dac_j"]) == (col["cell_j"], col["dac_j"])
    assert pair["digital_j"] == pytest.approx((2 * 4 + 2 * 4) * 0.05e-12)  # no subtraction
    # one MVM: 10 ns read + 4 pairs over 2 ADCs at 1 ns, + 16 ops
    assert pair["latency_s"] == pytest.approx(10e-9 + 2e-9 + 16 / 100e9)


@pytest.fixture(scope="module")
def mnist_energy() -> dict[str, float]:
    """Cell read energy of the MNIST CNN on one faulty chip (10 %, SA1:SA0 = 5:1) per strategy,
    and on a healthy chip."""
    plan, _ = api.make_plan(MODEL)
    tiles = api.spare_tiles(plan.tiles_needed(), 0.1)
    d = np.load(TEST_DATA)
    data = Dataset(inputs={"input": d["input"][:200]}, labels=d["labels"][:200], n=200)
    out = {}
    for name, fm, strategy in [
        ("healthy", fmap.synth(tiles, 128, 128, 0.0, (5, 1), 1), "two-column"),
        ("two-column", fmap.synth(tiles, 128, 128, 0.1, (5, 1), 1), "two-column"),
        ("mt", fmap.synth(tiles, 128, 128, 0.1, (5, 1), 1), "mt"),
        ("full", fmap.synth(tiles, 128, 128, 0.1, (5, 1), 1), "full"),
    ]:
        rep = runtime.verify(api.build(plan, fm, strategy=strategy).image, fm, data)
        out[name] = sum(c["cell_j"] for c in rep.energy)
        out[name + "_acc"] = rep.accuracy or 0.0
    return out


def test_mapping_changes_cell_energy_on_a_faulty_chip(mnist_energy: dict[str, float]) -> None:
    e = mnist_energy
    assert e["two-column"] > 1.1 * e["healthy"]  # stuck-on cells on driven rows draw current
    assert e["mt"] > 1.8 * e["two-column"]  # pairs biased high (SA1 dominates) pay for it
    assert 0.7 < e["full"] / e["two-column"] < 1.3  # compensation + permutation do not
    assert e["full_acc"] > e["two-column_acc"] + 0.3


# --------------------------------------------------------------------------- CLI and sweep


def test_cli_verify_reports_device_mode_energy_and_timing(tmp_path: Path) -> None:
    fm = faulty()
    image, graph = CASES["conv"](fm)
    rimg.write(image, str(tmp_path / "c.rimg"))
    fmap.save(fm, str(tmp_path / "c.npz"))
    np.savez(tmp_path / "d.npz", x=dataset(graph, 16).inputs["x"])
    args = ["verify", "c.rimg", "--faultmap", "c.npz", "--data", "d.npz", "--json"]
    r = rcompile(*args, "--device", "neurosim", "--noise-seed", "3", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["device"], d["mode"], d["noise_seed"]) == ("neurosim", "tile", 3)
    assert d["energy_per_inference_j"] > 0 and d["latency_per_inference_s"] > 0
    assert [c["node"] for c in d["energy"]] == ["conv", "<digital periphery>"]
    for key in ("reference_s", "emulated_s", "emulation_ratio"):
        assert d["timing"][key] > 0
    again = json.loads(rcompile(*args, "--device", "neurosim", "--noise-seed", "3",
                                cwd=str(tmp_path)).stdout)
    assert again["relative_output_error"] == d["relative_output_error"]
    plain = json.loads(rcompile(*args, cwd=str(tmp_path)).stdout)
    assert (plain["device"], plain["mode"]) == ("ideal", "ideal")
    text = rcompile(*args[:-1], "--device", "neurosim", cwd=str(tmp_path)).stdout
    assert "fault-free, ideal cell" in text and "fault-free, neurosim" in text, text
    assert "fault-free, neurosim" not in rcompile(*args[:-1], cwd=str(tmp_path)).stdout


def test_build_with_a_device_records_it_and_verify_uses_it(tmp_path: Path) -> None:
    chip = str(tmp_path / "chip.npz")
    r = rcompile("faultmap", "synth", "--like", MODEL, "--rate", "0.01", "--seed", "2", "-o", chip)
    assert r.returncode == 0, r.stderr
    img = str(tmp_path / "chip.rimg")
    r = rcompile("build", MODEL, "--faultmap", chip, "--device", "neurosim", "-o", img)
    assert r.returncode == 0, r.stderr
    image = rimg.read(img)
    assert image.header["hardware"]["name"] == "neurosim"
    assert len(image.header["device"]["level_rms_error"]) == 16  # the compiler knew the device
    hw = runtime.image_hardware(image, faultmap=fmap.load(chip))
    assert hw.name == "neurosim" and hw.needs_tile_mode
    # a device whose tiles are not the chip's: one line, no image
    dev = tmp_path / "small-tiles.toml"
    dev.write_text('base = "neurosim"\ntile_rows = 64\ntile_cols = 64\n')
    other = str(tmp_path / "other.rimg")
    r = rcompile("build", MODEL, "--faultmap", chip, "--device", str(dev), "-o", other)
    assert r.returncode != 0 and not os.path.exists(other) and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"rcompile: error: device file {dev} has 64x64 tiles but fault "
                                f"map {chip} has 128x128; expected the same tiles")


def test_sweep_with_a_device(tmp_path: Path) -> None:
    d = np.load(TEST_DATA)
    small = str(tmp_path / "small.npz")
    np.savez(small, input=d["input"][:100], labels=d["labels"][:100])
    res = run_sweep(MODEL, small, rates=[0.05], ratios=[(5, 1)], strategies=["full"], seeds=1,
                    hardware=PRESETS["neurosim"])
    assert res["device"] == "neurosim" and res["mode"] == "auto"
    (p,) = res["points"]
    assert 0.5 < p["accuracy_mean"] <= 1.0 and p["energy_per_inference_j_mean"] > 0
    assert os.path.basename(MODEL) == res["model"]


def test_hardware_is_validated_against_the_image() -> None:
    fm = healthy()
    image, _ = CASES["gemm"](fm)
    with pytest.raises(Exception, match="levels per cell"):
        runtime.image_hardware(image, replace(IDEAL, cell=Cell(levels=8)))
    assert runtime.image_hardware(image) == Hardware(cell=DEV)
