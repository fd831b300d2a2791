"""``rcompile sweep`` through the CLI: table, JSON and plot from real builds and verifies."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rcompile.sweep import table, tolerated
from tests.conftest import MODEL, TEST_DATA, rcompile


def test_sweep_json_and_plot(tmp_path: str) -> None:
    plot = os.path.join(str(tmp_path), "sweep.png")
    r = rcompile(
        "sweep",
        MODEL,
        "--data",
        TEST_DATA,
        "--rates",
        "0.0,0.3",
        "--ratios",
        "5:1",
        "--strategies",
        "two-column,full",
        "--seeds",
        "2",
        "--plot",
        plot,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    acc = {(p["strategy"], p["rate"]): p["accuracy_mean"] for p in d["points"]}
    assert len(acc) == 4 and all(p["seeds"] == 2 for p in d["points"])
    # fault-free chips reproduce the quantised model whatever the strategy
    assert acc[("two-column", 0.0)] == acc[("full", 0.0)] == d["quantised_accuracy"]
    # at 30 % faults the baseline collapses and the per-chip mapping does not
    assert acc[("two-column", 0.3)] < 0.5 < 0.95 < acc[("full", 0.3)]
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_sweep_table_and_bad_strategy(tmp_path: str) -> None:
    r = rcompile(
        "sweep",
        MODEL,
        "--data",
        TEST_DATA,
        "--rates",
        "0.01",
        "--ratios",
        "1:5",
        "--strategies",
        "mt",
        "--seeds",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert "| 1:5 | 1 % |" in r.stdout
    r = rcompile("sweep", MODEL, "--data", TEST_DATA, "--strategies", "magic")
    assert r.returncode == 2 and "unknown strategy" in r.stderr and "Traceback" not in r.stderr


def test_sweep_on_a_device_shows_both_and_measures_against_its_own_floor(tmp_path: str) -> None:
    small = os.path.join(str(tmp_path), "small.npz")
    d = np.load(TEST_DATA)
    np.savez(small, input=d["input"][:200], labels=d["labels"][:200])
    r = rcompile("sweep", MODEL, "--data", small, "--rates", "0,0.05", "--ratios", "5:1",
                 "--strategies", "full", "--seeds", "2", "--device", "neurosim", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    by = {p["rate"]: p for p in res["points"]}
    # the ideal column is the same build on the ideal cell: a healthy chip is the quantised model
    assert by[0.0]["ideal_accuracy_mean"] == res["quantised_accuracy"]
    # the device's own floor: fault-free chips on neurosim, same noise seeds as the points
    assert by[0.0]["accuracy_mean"] == pytest.approx(res["device_fault_free_accuracy"], abs=0.02)
    assert res["device_fault_free_accuracy_std"] >= 0 and "ideal_accuracy_std" in by[0.05]
    assert {t["strategy"] for t in res["tolerated_ideal"]} == {"full"}


def test_tolerated_rate_is_measured_against_the_device_floor() -> None:
    pts = [{"strategy": "full", "ratio": "5:1", "rate": r, "accuracy_mean": a, "accuracy_std": 0,
            "ideal_accuracy_mean": i}
           for r, a, i in [(0.01, 0.95, 0.98), (0.1, 0.945, 0.975), (0.5, 0.80, 0.90)]]
    ideal_only = {"quantised_accuracy": 0.98, "points": pts}
    on_device = {**ideal_only, "device_fault_free_accuracy": 0.95}
    # 95 % is 3 points under the ideal chip but the device's own fault-free level
    assert tolerated(ideal_only)[0]["tolerated_rate"] is None
    assert tolerated(on_device)[0]["tolerated_rate"] == 0.1
    ideal = tolerated(on_device, reference=0.98, key="ideal_accuracy_mean")
    assert ideal[0]["tolerated_rate"] == 0.1
    assert "fault-free chip on" not in table({**ideal_only, "float_accuracy": 0.985,
                                              "n_samples": 1, "tiles": 1})


def test_sweep_pattern_and_custom_pipeline(tiny_model: str, tmp_path: str) -> None:
    import onnxruntime as ort
    from click.testing import CliRunner

    from rcompile.cli import cli

    x = np.random.default_rng(0).normal(size=(64, 4, 6, 6)).astype(np.float32)
    sess = ort.InferenceSession(tiny_model, providers=["CPUExecutionProvider"])
    data = os.path.join(str(tmp_path), "data.npz")
    np.savez(data, x=x, labels=sess.run(None, {"x": x})[0].argmax(1))
    args = ["sweep", tiny_model, "--data", data, "--rows", "16", "--cols", "6", "--rates",
            "0.2", "--ratios", "1:5", "--seeds", "1", "--strategies", "two-column",
            "--pattern", "lines", "--json"]
    r = CliRunner().invoke(
        cli, [*args, "--pipeline", "strip=place{order=assign},permute,strip,program"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["pattern"] == "lines" and d["float_accuracy"] == 1.0
    acc = {p["strategy"]: p["accuracy_mean"] for p in d["points"]}
    assert set(acc) == {"two-column", "strip"} and acc["strip"] > acc["two-column"]
    r = CliRunner().invoke(cli, [*args, "--pipeline", "bad=place,nosuchpass"])
    assert r.exit_code == 2 and "unknown pass 'nosuchpass'" in r.output
    assert "Traceback" not in r.output
