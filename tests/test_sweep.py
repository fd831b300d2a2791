"""``rcompile sweep`` through the CLI: table, JSON and plot from real builds and verifies."""

from __future__ import annotations

import json
import os

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
