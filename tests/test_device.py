"""Device models: presets, the TOML format, validation, and the write-verify programming model."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rcompile.device import (
    PRESETS,
    Cell,
    Converters,
    Hardware,
    Programming,
    conductance_of_level,
    hardware_from_dict,
    level_of_conductance,
    load_hardware,
)
from rcompile.errors import BadDevice
from rcompile.programming import _Curve, compiler_device, level_error_table, param_a, program
from tests.conftest import ROOT, rcompile

DEVICES = os.path.join(ROOT, "devices")

# --------------------------------------------------------------------------- presets and TOML


@pytest.mark.parametrize("name", ["ideal", "neurosim"])
def test_shipped_toml_files_are_the_presets(name: str) -> None:
    assert load_hardware(os.path.join(DEVICES, f"{name}.toml")) == PRESETS[name]
    assert load_hardware(name) is PRESETS[name]


def test_neurosim_preset_is_what_the_issue_asks_for() -> None:
    ns = PRESETS["neurosim"]
    assert (ns.tile_rows, ns.tile_cols, ns.cell.levels) == (128, 128, 16)
    assert ns.cell.on_off_ratio == pytest.approx(10.0)
    assert ns.converters.adc_bits == 5
    assert (ns.programming.nl_ltp, ns.programming.nl_ltd) == (4.0, -4.0)
    assert ns.programming.c2c_sigma > 0 and ns.read.noise_rel > 0
    assert PRESETS["ideal"].exact and not ns.exact


@pytest.mark.parametrize("name", ["ideal", "neurosim"])
def test_to_dict_round_trips(name: str) -> None:
    hw = PRESETS[name]
    assert hardware_from_dict(hw.to_dict()) == hw


def test_base_inherits_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text('base = "neurosim"\n[converters]\nadc_bits = 6\n[cell]\non_off_ratio = 20\n')
    hw = load_hardware(str(p))
    assert hw.name == "mine" and hw.converters.adc_bits == 6
    assert hw.cell.g_min_us == pytest.approx(5.0)
    assert hw.programming == PRESETS["neurosim"].programming


BAD = [
    ('base = "ideal"\n[converters]\nadc_bits = 0\n', r"converters\.adc_bits = 0 .*1\.\.24"),
    ('base = "ideal"\n[cell]\non_off_ratio = 0.5\n', r"cell\.on_off_ratio = 0\.5 .*> 1"),
    ('base = "ideal"\n[cell]\ng_min_us = -1.0\n', r"cell\.g_min_us = -1\.0 .*>= 0"),
    ('base = "ideal"\n[cell]\ng_max_us = 0.5\n', r"cell\.g_max_us = 0\.5 .*> g_min_us"),
    ('base = "ideal"\n[cell]\nlevels = 1\n', r"cell\.levels = 1 .*2\.\.256"),
    ('base = "ideal"\n[programming]\nnl_ltd = 3.0\n', r"programming\.nl_ltd = 3\.0 .*-9\.\.0"),
    ('base = "ideal"\n[converters]\nadc_range = "auto"\n', r"adc_range = 'auto' .*'dynamic'"),
    ('base = "ideal"\n[converters]\nadc = "both"\n', r"adc = 'both' .*'column', 'pair'"),
    ('base = "ideal"\n[read]\nnoise_rel = "high"\n', r"read\.noise_rel = 'high' .*a number"),
    ('base = "ideal"\ntile_cols = 127\n', r"tile_cols = 127 .*even"),
    ('base = "ideal"\n[cell]\nlevelz = 4\n', r"unknown key 'levelz' in \[cell\]"),
    ('base = "fancy"\n', r"base = 'fancy' .*'ideal', 'neurosim'"),
    ("tile_rows = 128\ntile_cols = 128\n", r"cell\.levels is missing; expected an integer"),
    ('base = "ideal"\n[cell\n', r"not valid TOML"),
]


@pytest.mark.parametrize(("text", "pattern"), BAD)
def test_bad_device_files_name_the_field_and_its_range(
    tmp_path: Path, text: str, pattern: str
) -> None:
    p = tmp_path / "dev.toml"
    p.write_text(text)
    with pytest.raises(BadDevice, match=pattern) as e:
        load_hardware(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg


def test_adc_is_optional_and_column_leaves_the_header_as_it_was(tmp_path: Path) -> None:
    """A file without ``adc`` (written before it existed) reads every column apart; only a
    ``pair`` device writes the field, so images of column devices keep their header bytes."""
    text = open(os.path.join(DEVICES, "neurosim.toml")).read()
    old = tmp_path / "old.toml"
    old.write_text("".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("adc =")))
    assert replace(load_hardware(str(old)), name="neurosim") == PRESETS["neurosim"]
    assert "adc" not in PRESETS["neurosim"].to_dict()["converters"]
    pair = replace(PRESETS["neurosim"], converters=replace(PRESETS["neurosim"].converters,
                                                           adc="pair"))
    assert pair.to_dict()["converters"]["adc"] == "pair"
    assert hardware_from_dict(pair.to_dict()) == pair
    assert (pair.converters.reads_per_output, PRESETS["neurosim"].converters.reads_per_output
            ) == (1, 2)


def test_unknown_preset_and_missing_file() -> None:
    with pytest.raises(BadDevice, match="no such preset or file; expected one of ideal, neurosim"):
        load_hardware("fancy")
    with pytest.raises(BadDevice, match="no such file"):
        load_hardware("/nonexistent/dev.toml")


@pytest.mark.parametrize(("command", "bad"), [
    ("verify", "adc_bits = 0"), ("build", "adc_bits = 0"), ("sweep", "adc_bits = 0"),
    ("verify", 'adc = "differential"'), ("build", "adc = 2")])
def test_cli_rejects_a_bad_device_file_in_one_line(tmp_path: Path, command: str, bad: str
                                                   ) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(f'base = "neurosim"\n[converters]\n{bad}\n')
    args = {
        "verify": ["verify", "x.rimg", "--faultmap", "x.npz", "--data", "d.npz"],
        "build": ["build", "m.onnx", "--faultmap", "x.npz"],
        "sweep": ["sweep", "m.onnx", "--data", "d.npz"],
    }[command]
    r = rcompile(*args, "--device", str(p), cwd=str(tmp_path))
    assert r.returncode == BadDevice.exit_code
    lines = r.stderr.strip().splitlines()
    field = bad.split(" = ")[0]
    assert len(lines) == 1 and f"converters.{field} = " in lines[0] and str(p) in lines[0]
    assert ("expected an integer in 1..24" if field == "adc_bits"
            else "expected one of 'column', 'pair'") in lines[0]


# --------------------------------------------------------------------------- the cell


def test_conductance_and_level_are_exact_inverses() -> None:
    dev = PRESETS["neurosim"].cell
    lv = np.linspace(0, dev.max_level, 31)
    assert np.allclose(level_of_conductance(dev, conductance_of_level(dev, lv)), lv)
    assert conductance_of_level(dev, np.array([0, 15])).tolist() == [10.0, 100.0]


def test_level_rms_error_is_optional_and_validated() -> None:
    assert "level_rms_error" not in Cell().to_dict()  # old headers stay byte-identical
    d = Cell(levels=4, level_rms_error=(0.0, 0.7, 0.2, 0.1))
    assert d.to_dict()["level_rms_error"] == [0.0, 0.7, 0.2, 0.1]
    assert d.expected_sq_error(np.array([1, 2])) == pytest.approx([0.49, 0.04])
    with pytest.raises(BadDevice, match="level_rms_error"):
        Cell(levels=4, level_rms_error=(0.1, 0.2))


# --------------------------------------------------------------------------- NeuroSim programming


@pytest.mark.parametrize(("nl", "a"), [(1.0, 1.251653), (2.0, 0.609035), (4.0, 0.269089)])
def test_param_a_reproduces_neurosim_table(nl: float, a: float) -> None:
    assert param_a(nl) == pytest.approx(a, rel=1e-4)
    assert param_a(-nl) == pytest.approx(-a, rel=1e-4)
    assert math.isinf(param_a(0.0))


@pytest.mark.parametrize("nl", [0.0, 4.0, -4.0])
def test_update_curve_spans_the_range_and_inverts(nl: float) -> None:
    cell = PRESETS["neurosim"].cell
    c = _Curve(cell, 64, nl)
    assert c.g(np.array([0.0, 64.0])) == pytest.approx([cell.g_min_us, cell.g_max_us])
    g = np.linspace(cell.g_min_us, cell.g_max_us, 9)
    assert c.g(c.x(g)) == pytest.approx(g)
    if nl == 0:
        assert c.x(g) == pytest.approx(np.linspace(0, 64, 9))
    # LTP (nl > 0) rises fastest at g_min, LTD (nl < 0) fastest at g_max
    first, last = np.diff(c.g(np.array([0.0, 1.0, 63.0, 64.0])))[[0, 2]]
    # the closed-form write step is the curve walked n pulses on (either way)
    for n in (1.0, 5.0, -3.0):
        inside = g[(c.x(g) + n >= 0) & (c.x(g) + n <= 64)]
        assert c.after(inside, np.full(inside.shape, n)) == pytest.approx(c.g(c.x(inside) + n))
    assert (first > last) if nl > 0 else (first < last) if nl < 0 else first == pytest.approx(last)


def test_ideal_programming_is_exact() -> None:
    target = np.arange(16).repeat(3)
    got = program(target, Cell(), Programming(), np.random.default_rng(0))
    assert got.dtype == np.float64 and np.array_equal(got, target)


def test_linear_noiseless_write_verify_lands_in_the_window() -> None:
    prog = Programming(pulses=60, tolerance_levels=0.25)
    target = np.arange(16).repeat(4)
    got = program(target, Cell(), prog, np.random.default_rng(0))
    assert np.all(np.abs(got - target) <= 0.25 + 1e-9)


def test_nonlinear_noisy_programming_misses_targets_reproducibly() -> None:
    ns = PRESETS["neurosim"]
    target = np.random.default_rng(1).integers(0, 16, size=(40, 16))

    def prog(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return program(target, ns.cell, ns.programming, rng, ns.read.noise_rel)

    a, b, c = prog(3), prog(3), prog(4)
    assert a.shape == target.shape and np.array_equal(a, b) and not np.array_equal(a, c)
    err = a - target
    assert 0.1 < np.sqrt(np.mean(err**2)) < 2.0  # off target, but write-verify keeps it close
    assert np.all((a >= 0) & (a <= 15))  # never outside [g_min, g_max]


def test_level_error_table_and_compiler_device() -> None:
    ns = PRESETS["neurosim"]
    table = level_error_table(ns.cell, ns.programming, ns.read.noise_rel, samples=300)
    assert len(table) == 16 and table[0] == 0.0  # the reset state is exact
    assert max(table) > 0.3 and level_error_table(ns.cell, Programming()) == ()
    dev = compiler_device(replace(ns, programming=replace(ns.programming, max_iterations=5)))
    assert dev is not None and len(dev.level_rms_error) == 16 and max(dev.level_rms_error) > 0.5
    assert compiler_device(PRESETS["ideal"]) == PRESETS["ideal"].cell
    assert compiler_device(None) is None  # no device model: the chip's own cell


def test_hardware_flags() -> None:
    hw = Hardware(converters=Converters(adc_bits=6))
    assert hw.needs_tile_mode and not hw.exact
    assert not PRESETS["ideal"].needs_tile_mode
