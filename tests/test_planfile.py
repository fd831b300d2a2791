"""The plan file: exact round trip, stable bytes, and every refusal is one clear line."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest

import rcompile
from rcompile import api, planfile
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile.errors import BadPlan
from tests.conftest import CALIB, MODEL, ROOT, TEST_DATA
from tests.conftest import rcompile as run_cli


@pytest.fixture
def tiny_plan(tiny_model: str) -> api.Plan:
    plan, _ = api.make_plan(tiny_model, tile_rows=16, tile_cols=6)
    return plan


def test_round_trip_builds_the_same_image(tiny_model: str, tiny_plan: api.Plan, tmp_path) -> None:
    path = str(tmp_path / "tiny.rplan")
    planfile.write(path, tiny_plan)
    saved = planfile.read(path)
    assert saved.calib is None
    fm = fmap.synth(tiny_plan.tiles_needed() + 2, 16, 6, 0.2, (5, 1), 3)
    for strategy in sorted(api.STRATEGIES):
        a = rimg.encode(api.build(tiny_plan, fm, strategy=strategy).image)
        b = rimg.encode(api.build(saved.plan, fm, strategy=strategy).image)
        assert a == b, strategy
    for x, y in zip(tiny_plan.blocks, saved.plan.blocks, strict=True):
        assert (x.layer, x.group) == (y.layer, y.group)
        assert np.array_equal(x.rows, y.rows) and np.array_equal(x.outs, y.outs)
    planfile.check_model(saved, tiny_model)


def test_calibration_statistics_travel_with_the_plan(tmp_path) -> None:
    from rcompile.data import input_specs, load_calib

    plan, _ = api.make_plan(MODEL)
    stats = api.calib_stats(plan.model, plan.ops,
                            load_calib(CALIB, input_specs(plan.model)).inputs, CALIB)
    path = str(tmp_path / "m.rplan")
    planfile.write(path, plan, stats)
    saved = planfile.read(path)
    assert saved.calib is not None
    for s0, s1 in zip(stats, saved.calib, strict=True):
        assert np.array_equal(s0.power, s1.power) and np.array_equal(s0.mean, s1.mean)
    fm = fmap.synth(plan.tiles_needed() + 1, 128, 128, 0.05, (5, 1), 1)
    a = api.build(plan, fm, calib=stats).image
    b = api.build(saved.plan, fm, calib=saved.calib).image
    assert rimg.encode(a) == rimg.encode(b)


def test_same_plan_same_bytes(tiny_plan: api.Plan) -> None:
    assert planfile.encode(tiny_plan) == planfile.encode(tiny_plan)


def _rewrite_meta(data: bytes, **change: object) -> bytes:
    """The plan bytes with some meta fields replaced (as another compiler would write)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename == "meta.npy":
                meta = json.loads(np.load(io.BytesIO(raw)).tobytes())
                meta.update(change)
                buf = io.BytesIO()
                np.save(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
                raw = buf.getvalue()
            dst.writestr(info.filename, raw)
    return out.getvalue()


def test_refuses_another_compiler_version(tiny_plan: api.Plan, tmp_path) -> None:
    path = tmp_path / "old.rplan"
    path.write_bytes(_rewrite_meta(planfile.encode(tiny_plan), compiler_version="0.0.1"))
    with pytest.raises(BadPlan, match=r"made by rcompile 0\.0\.1, this is rcompile .*re-run"):
        planfile.read(path)


def test_refuses_another_format_version(tiny_plan: api.Plan, tmp_path) -> None:
    path = tmp_path / "new.rplan"
    path.write_bytes(_rewrite_meta(planfile.encode(tiny_plan), version=99))
    with pytest.raises(BadPlan, match="format version 99"):
        planfile.read(path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "npz-without-meta"])
def test_damaged_files_are_one_line(tiny_plan: api.Plan, tmp_path, damage: str) -> None:
    data = planfile.encode(tiny_plan)
    path = tmp_path / "bad.rplan"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        np.savez(str(path) + ".npz", faults=np.zeros((1, 2, 2), np.uint8))
        os.replace(str(path) + ".npz", path)
    with pytest.raises(BadPlan) as err:
        planfile.read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_refuses_a_chip_of_other_geometry_or_levels(tiny_plan: api.Plan) -> None:
    saved = planfile.SavedPlan(tiny_plan, None, "p.rplan")
    planfile.check_chip(saved, fmap.synth(9, 16, 6, 0.1, (1, 1), 0))
    with pytest.raises(BadPlan, match="16x6 tiles but fault map .* has 16x8.*--cols 8"):
        planfile.check_chip(saved, fmap.synth(9, 16, 8, 0.1, (1, 1), 0))
    other = fmap.FaultMap(fmap.synth(9, 16, 6, 0.1, (1, 1), 0).faults, chip_id="c", levels=8,
                          source="c.npz")
    with pytest.raises(BadPlan, match="16 levels but fault map c.npz has 8.*--levels 8"):
        planfile.check_chip(saved, other)


def test_refuses_another_model(tiny_plan: api.Plan) -> None:
    with pytest.raises(BadPlan, match="another model"):
        planfile.check_model(planfile.SavedPlan(tiny_plan, None, "p.rplan"), MODEL)


def test_cli_plan_then_build(tmp_path) -> None:
    plan = str(tmp_path / "m.rplan")
    r = run_cli("plan", MODEL, "-o", plan, "--calib", CALIB)
    assert r.returncode == 0, r.stderr
    chip = str(tmp_path / "chip.npz")
    fmap.save(fmap.synth(11, 128, 128, 0.05, (5, 1), 2), chip)
    a, b = str(tmp_path / "a.rimg"), str(tmp_path / "b.rimg")
    r = run_cli("build", MODEL, "--plan", plan, "--faultmap", chip, "-o", a)
    assert r.returncode == 0, r.stderr
    r = run_cli("build", MODEL, "--calib", CALIB, "--faultmap", chip, "-o", b)
    assert r.returncode == 0, r.stderr
    assert open(a, "rb").read() == open(b, "rb").read()  # the plan changes nothing


def test_cli_refusals(tmp_path) -> None:
    plan = str(tmp_path / "m.rplan")
    assert run_cli("plan", MODEL, "-o", plan, "--rows", "64", "--cols", "64").returncode == 0
    chip = str(tmp_path / "chip.npz")
    fmap.save(fmap.synth(11, 128, 128, 0.05, (5, 1), 2), chip)
    r = run_cli("build", MODEL, "--plan", plan, "--faultmap", chip, "-o", str(tmp_path / "x"))
    assert r.returncode == BadPlan.exit_code
    assert r.stderr.strip().splitlines() == [
        f"rcompile: error: {plan}: plan is for 64x64 tiles but fault map {chip} has 128x128: "
        "make a plan with --rows 128 --cols 128"
    ]
    r = run_cli("build", MODEL, "--plan", plan, "--calib", CALIB, "--faultmap", chip)
    assert r.returncode == 2 and "--plan" in r.stderr
    r = run_cli("plan", MODEL, "-o", plan, "--cols", "63")
    assert r.returncode == 2 and "odd" in r.stderr
    assert rcompile.__version__  # the version the refusal messages name


@pytest.mark.parametrize("model", [MODEL, os.path.join(
    ROOT, "tests", "data", "compat", "gru_classifier-dynamo18-fixed.onnx")],
    ids=["mnist", "gru"])
def test_a_256_level_cell_plans_builds_and_verifies(model: str, tmp_path) -> None:
    """Past 128 levels ``q`` is int16 in the plan and the image: plan -> build -> verify, and
    the fault-free chip reproduces the largest weight of every output (q = +-255)."""
    plan, chip, image = (str(tmp_path / n) for n in ("m.rplan", "chip.npz", "chip.rimg"))
    assert run_cli("plan", model, "-o", plan, "--levels", "256").returncode == 0
    assert run_cli("faultmap", "synth", "--like", model, "--rate", "0", "-o", chip).returncode == 0
    r = run_cli("build", model, "--plan", plan, "--faultmap", chip, "-o", image)
    assert r.returncode == 0, r.stderr
    saved, img = planfile.read(plan), rimg.read(image)
    for w, layer, rec in zip(saved.plan.float_mats, saved.plan.layers, img.layers, strict=True):
        assert layer.q.dtype == rec.q.dtype == np.int16
        assert np.array_equal(layer.q, rec.q) and int(np.abs(rec.q).max()) == 255
        step = rec.scale[:, None, :].astype(np.float64)
        assert np.all(np.abs(rec.q * step - w) <= step / 2 * (1 + 1e-5))  # no level wrapped
    data = model[:-5] + ".npz" if "compat" in model else TEST_DATA
    r = run_cli("verify", image, "--faultmap", chip, "--data", data, "--model", model, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert all(la["weight_rel_error"] == 0.0 for la in rep["layers"]) and rep["agreement"] == 1.0
    if rep["float_accuracy"] is not None:  # MNIST: 256 levels lose nothing against float
        assert rep["accuracy"] >= rep["float_accuracy"] - 0.005
