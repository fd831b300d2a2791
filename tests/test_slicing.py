"""Bit-sliced weights (docs/slicing.md): the digits, the compensation of a stuck high digit, the
sliced per-chip stage, the version-2 image, and build -> verify through the CLI."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes._objective import best_levels

from rcompile import api, runtime, slicing
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile import pipeline as pl
from rcompile.data import load_data
from rcompile.device import Cell
from rcompile.errors import BadDevice, BadImage
from rcompile.faultmap import FaultMap
from rcompile.ir import ChipMapping, chip_view
from tests.conftest import ROOT, conv_bn_gemm, rcompile, save
from tests.passes.conftest import plan_of

SLICED = Cell(weight_bits=8, cell_bits=4)
DEVICE_TOML = 'base = "ideal"\nname = "w8c4"\n[cell]\nweight_bits = 8\ncell_bits = 4\n'


# --------------------------------------------------------------------------- digits


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(2, 4), (4, 2), (16, 2), (8, 3)]), st.lists(st.integers(), min_size=1,
                                                                     max_size=40))
def test_split_then_unslice_is_exact(shape: tuple[int, int], raw: list[int]) -> None:
    base, n = shape
    top = base**n - 1
    q = np.array([x % (2 * top + 1) - top for x in raw], np.int64)
    digits = slicing.split(q, base, n)
    assert digits.shape == (n, q.size)
    assert np.all(np.abs(digits) < base)
    assert np.all((digits == 0) | (np.sign(digits) == np.sign(q)))  # one polarity per weight
    np.testing.assert_array_equal(slicing.unslice(digits, base), q)


def test_split_refuses_a_weight_wider_than_its_digits() -> None:
    with pytest.raises(ValueError, match="does not fit 2 digits of base 16"):
        slicing.split(np.array([256]), 16, 2)


STUCK = st.one_of(st.just(np.nan), st.sampled_from([0.0, 15.0]), st.floats(0, 15))


@settings(max_examples=150, deadline=None)
@given(st.integers(-255, 255), STUCK, STUCK, STUCK, STUCK)
def test_compensated_pair_is_never_further_from_the_weight(
    q: int, hi_p: float, hi_n: float, lo_p: float, lo_n: float
) -> None:
    """For any weight and any stuck cells in its two digit pairs, moving the low digit's target
    never leaves the rebuilt weight further from the weight than programming the digits as
    they are."""
    hi, lo = slicing.split(np.array([q]), 16, 2)[::-1].astype(np.float64)

    def realise(t: np.ndarray, a: float, b: float) -> np.ndarray:
        return t + best_levels(t, np.array([a]), np.array([b]), 15)[2]

    real_hi = realise(hi, hi_p, hi_n)
    plain = 16 * real_hi + realise(lo, lo_p, lo_n)
    want = lo + 16 * (hi - real_hi)
    new = slicing.compensated_target(lo, want, lambda t: realise(t, lo_p, lo_n), 15)
    assert np.all(np.abs(new) <= 15) and np.all(new == np.rint(new))
    compensated = 16 * real_hi + realise(new, lo_p, lo_n)
    assert abs(compensated[0] - q) <= abs(plain[0] - q) + 1e-9
    if np.isnan(lo_p) and np.isnan(lo_n) and abs(want[0]) <= 15:  # a healthy low pair absorbs
        assert abs(compensated[0] - q) < 1 + 1e-9                # all of it, to a level step


# --------------------------------------------------------------------------- the cell option


def test_cell_slicing_options_and_their_defaults() -> None:
    assert (SLICED.n_slices, SLICED.slice_bits, SLICED.weight_top) == (2, 4, 255)
    assert (Cell().n_slices, Cell().weight_top) == (1, 15)
    assert Cell(weight_bits=6).n_slices == 2 and Cell(weight_bits=6).weight_top == 63
    assert "weight_bits" not in Cell().to_dict()  # unsliced headers keep their bytes
    assert SLICED.to_dict()["weight_bits"] == 8
    with pytest.raises(BadDevice, match=r"cell.cell_bits = 5 .*2\^cell_bits <= levels \(16\)"):
        Cell(cell_bits=5)
    with pytest.raises(BadDevice, match="cell.weight_bits = 17 is out of range"):
        Cell(weight_bits=17)


# --------------------------------------------------------------------------- the per-chip stage


def _plan(seed: int = 0, device: Cell = SLICED) -> object:
    rng = np.random.default_rng(seed)
    return plan_of(rng.normal(size=(1, 7, 3)), rng.normal(size=(2, 4, 2)), tile_rows=8,
                   tile_cols=8, device=device, passes="quantize,tile,pack")


def test_sliced_plan_quantises_wide_and_needs_a_tile_per_digit() -> None:
    plan, plain = _plan(), _plan(device=Cell())
    assert plan.layers[0].q.dtype == np.int16 and np.abs(plan.layers[0].q).max() == 255
    assert plain.layers[0].q.dtype == np.int8
    assert plan.tiles_needed() == 2 * plain.tiles_needed()
    view = slicing.chip_plan(plan)
    assert view.tiles_needed() == plan.tiles_needed() and len(view.layers) == 2 * len(plan.ops)
    for li, layer in enumerate(plan.layers):
        digits = np.stack([view.layers[2 * li + k].q for k in range(2)])
        np.testing.assert_array_equal(slicing.unslice(digits, 16), layer.q)
        np.testing.assert_allclose(view.layers[2 * li + 1].scale, 16 * layer.scale)
    pl.check_plan(view)


def _chip(plan: object, rate: float, seed: int) -> FaultMap:
    rng = np.random.default_rng(seed)
    shape = (plan.tiles_needed() + 1, 8, 8)
    faults = np.where(rng.random(shape) < rate, rng.choice([1, 2], shape, p=[0.2, 0.8]), 0)
    return FaultMap(faults.astype(np.uint8), chip_id=f"slice-{seed}")


def _weight_error(plan: object, image: rimg.Image, fm: FaultMap) -> float:
    got = runtime.effective_weights(image, fm)
    return sum(float(np.sum((g - layer.weights()) ** 2)) for g, layer in zip(got, plan.layers,
                                                                              strict=True))


def test_healthy_sliced_chip_rebuilds_every_weight_and_writes_version_2() -> None:
    plan = _plan()
    res = api.build(plan, _chip(plan, 0.0, 0))
    data = rimg.encode(res.image)
    assert struct.unpack_from("<I", data, 8)[0] == rimg.SLICED_VERSION
    back = rimg.decode(data)
    assert sorted({s.digit for t in back.tiles for s in t.slices}) == [0, 1]
    assert back.layers[0].q.dtype == np.int16
    assert _weight_error(plan, back, _chip(plan, 0.0, 0)) < 1e-10
    plain = _plan(device=Cell())  # the same model on one cell per polarity stays version 1
    data1 = rimg.encode(api.build(plain, _chip(plain, 0.0, 0)).image)
    assert struct.unpack_from("<I", data1, 8)[0] == rimg.VERSION


@pytest.mark.parametrize("seed", [1, 2])
def test_compensation_lowers_the_weight_error_of_a_faulty_chip(seed: int) -> None:
    """The same passes on the same sliced view, with and without moving the low digits."""
    plan = _plan(seed)
    fm = _chip(plan, 0.25, seed)
    passes = api.chip_pipeline("place{order=assign},program")
    with_comp = api.build(plan, fm, pipeline="place{order=assign},program")
    ctx = pl.ChipContext(geometry=fm.geometry, device=plan.device,
                         stuck=fm.stuck_levels(plan.device), chip_id=fm.chip_id)
    view = slicing.chip_plan(plan)
    _, plain, _ = pl.run(passes, view, ctx, ChipMapping(placements=()))
    assert plain is not None
    folded = slicing.fold(view, plain, 2)
    without = api.to_image(chip_view(plan, folded), folded, with_comp.image.header)
    moved = [e for e in with_comp.log if e["pass"] == "slice-compensate"][0]["moved_digits"]
    assert moved > 0
    assert _weight_error(plan, with_comp.image, fm) < _weight_error(plan, without, fm)


def test_sliced_calibrate_fits_the_rebuilt_weight() -> None:
    plan = _plan(3)
    fm = _chip(plan, 0.2, 3)
    raw = api.build(plan, fm, pipeline="place{order=assign},permute,program")
    cal = api.build(plan, fm, pipeline="place{order=assign},permute,program,calibrate")
    assert _weight_error(plan, cal.image, fm) <= _weight_error(plan, raw.image, fm) + 1e-12


def test_a_reader_refuses_an_image_version_it_does_not_know() -> None:
    plan = _plan()
    data = bytearray(rimg.encode(api.build(plan, _chip(plan, 0.0, 0)).image))
    struct.pack_into("<I", data, 8, 3)
    with pytest.raises(BadImage, match="unsupported image version 3; this rcompile reads "
                                       "versions 1, 2"):
        rimg.decode(bytes(data), "chip.rimg")


# --------------------------------------------------------------------------- CLI, end to end


def test_build_verify_sliced_in_ideal_and_tile_mode(tmp_path: str) -> None:
    model = save(conv_bn_gemm(seed=4), os.path.join(tmp_path, "m.onnx"))
    dev = os.path.join(tmp_path, "w8c4.toml")
    with open(dev, "w") as f:
        f.write(DEVICE_TOML)
    chip, image = os.path.join(tmp_path, "chip.npz"), os.path.join(tmp_path, "chip.rimg")
    data = os.path.join(tmp_path, "data.npz")
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(48, 4, 6, 6)).astype(np.float32))
    assert rcompile("faultmap", "synth", "--tiles", "4", "--rows", "128", "--cols", "128",
                    "--rate", "0.05", "-o", chip).returncode == 0
    built = rcompile("build", model, "--faultmap", chip, "--device", dev, "-o", image, "--json")
    assert built.returncode == 0, built.stderr
    written = rimg.read(image)
    assert written.header["device"]["weight_bits"] == 8 and written.layers[0].q.dtype == np.int16
    shown = rcompile("inspect", image, "--json")
    assert json.loads(shown.stdout)["format_version"] == 2  # what the file says, not VERSION
    assert "format version 2" in rcompile("inspect", image).stdout
    reps = {}
    for mode in ("ideal", "tile"):
        res = rcompile("verify", image, "--faultmap", chip, "--data", data, "--mode", mode,
                       "--json")
        assert res.returncode == 0, res.stderr
        reps[mode] = json.loads(res.stdout)
    assert reps["ideal"]["agreement"] >= 0.95
    assert reps["tile"]["relative_output_error"] == pytest.approx(
        reps["ideal"]["relative_output_error"], abs=1e-4)  # ideal converters: same chip


def test_third_party_mlp_on_sliced_cells_is_closer_to_float(tmp_path: str) -> None:
    """skl2onnx's MLP (tests/data/compat) on a fault-free chip: 8-bit weights on two 16-level
    cells a polarity follow the float graph more closely than one 16-level cell."""
    name = os.path.join(ROOT, "tests", "data", "compat", "sk_mlp_classifier-skl2onnx13-dynamic")
    model, data = name + ".onnx", name + ".npz"
    chip = os.path.join(tmp_path, "chip.npz")
    assert rcompile("faultmap", "synth", "--like", model, "--spare", "1", "--rate", "0",
                    "-o", chip).returncode == 0
    errors = {}
    for label, device in (("sliced", DEVICE_TOML), ("plain", 'base = "ideal"\n')):
        dev, image = os.path.join(tmp_path, f"{label}.toml"), os.path.join(tmp_path, label)
        with open(dev, "w") as f:
            f.write(device)
        res = rcompile("build", model, "--faultmap", chip, "--device", dev, "-o", image)
        assert res.returncode == 0, res.stderr
        img, fm = rimg.read(image), fmap.load(chip)
        ds = load_data(data, runtime.image_input_specs(img))
        out = runtime.run(runtime.emulated_model(img, runtime.effective_weights(img, fm)), ds)
        ref = runtime.run(onnx.load(model), ds)
        scores = [(a, b) for a, b in zip(out, ref, strict=True)
                  if np.issubdtype(b.dtype, np.floating)][0]
        errors[label] = float(np.linalg.norm(scores[0] - scores[1]) / np.linalg.norm(scores[1]))
    assert errors["sliced"] < errors["plain"] / 4, errors



def test_a_sliced_plan_file_round_trips_and_refuses_an_unsliced_device(tmp_path: str) -> None:
    from rcompile import planfile
    from rcompile.device import PRESETS
    from rcompile.errors import BadPlan

    model = save(conv_bn_gemm(seed=5), os.path.join(tmp_path, "m.onnx"))
    family = FaultMap(np.zeros((1, 128, 128), np.uint8), chip_id="family")
    hw = PRESETS["ideal"].with_cell(SLICED)
    lot = api.plan_lot(model, family, hardware=hw)
    path = os.path.join(tmp_path, "p.rplan")
    planfile.write(path, lot.plan)
    back = planfile.read(path).plan
    assert back.device.weight_bits == 8 and back.layers[0].q.dtype == np.int16
    np.testing.assert_array_equal(back.layers[0].q, lot.plan.layers[0].q)
    with pytest.raises(BadPlan, match="8-bit weights on 2 cells of 4 bits but device ideal has "
                                      "one cell per weight polarity"):
        api.plan_lot(model, family, hardware=PRESETS["ideal"], plan_path=path)


@pytest.mark.parametrize("strategy", sorted(api.STRATEGIES))
def test_every_strategy_builds_a_sliced_chip_the_runtime_rebuilds(strategy: str) -> None:
    plan = _plan(6)
    healthy, faulty = _chip(plan, 0.0, 6), _chip(plan, 0.1, 6)
    exact = api.build(plan, healthy, strategy=strategy).image
    assert _weight_error(plan, rimg.decode(rimg.encode(exact)), healthy) < 1e-10
    image = rimg.decode(rimg.encode(api.build(plan, faulty, strategy=strategy).image))
    assert {s.digit for t in image.tiles for s in t.slices} == {0, 1}
    assert np.isfinite(_weight_error(plan, image, faulty))


def test_synth_and_plan_size_for_the_device_and_build_the_same_image(tmp_path: str) -> None:
    """``faultmap synth --like --device`` gives a sliced chip a tile per digit, and
    ``plan --device`` makes the sliced plan ``build --plan`` accepts, on a graph nobody here
    trained; the planned build is byte for byte the direct one."""
    model = os.path.join(ROOT, "tests", "data", "compat",
                         "sk_mlp_classifier-skl2onnx13-dynamic.onnx")
    dev = os.path.join(tmp_path, "w8c4.toml")
    with open(dev, "w") as f:
        f.write(DEVICE_TOML)
    chip, plain = os.path.join(tmp_path, "chip.npz"), os.path.join(tmp_path, "plain.npz")
    assert rcompile("faultmap", "synth", "--like", model, "--spare", "0", "--rate", "0.05",
                    "-o", plain).returncode == 0
    assert rcompile("faultmap", "synth", "--like", model, "--spare", "0", "--device", dev,
                    "--rate", "0.05", "-o", chip).returncode == 0
    assert fmap.load(chip).geometry.tiles == 2 * fmap.load(plain).geometry.tiles
    plan = os.path.join(tmp_path, "w8c4.rplan")
    assert rcompile("plan", model, "--device", dev, "-o", plan).returncode == 0
    images = [os.path.join(tmp_path, f"{k}.rimg") for k in ("planned", "direct")]
    planned = rcompile("build", model, "--faultmap", chip, "--device", dev, "--plan", plan,
                       "-o", images[0])
    assert planned.returncode == 0, planned.stderr
    assert rcompile("build", model, "--faultmap", chip, "--device", dev,
                    "-o", images[1]).returncode == 0
    with open(images[0], "rb") as a, open(images[1], "rb") as b:
        assert a.read() == b.read()
    clash = rcompile("plan", model, "--device", dev, "--levels", "8", "-o", plan + "2")
    assert clash.returncode == 2 and "--levels" in clash.stderr
