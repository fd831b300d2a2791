"""A sweep keeps its finished points (``--results``): stopped and resumed, it gives the same
table and plot bytes as a sweep that ran through; another sweep's file is refused."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from rcompile.progress import Event
from rcompile.sweep import render_plot, run_sweep, table
from tests.conftest import MODEL, TEST_DATA, rcompile


class Stop(Exception):
    """What the simulated Ctrl-C raises from inside the sweep."""


def _small(tmp_path: str, n: int) -> str:
    path = os.path.join(tmp_path, f"data{n}.npz")
    d = np.load(TEST_DATA)
    np.savez(path, input=d["input"][:n], labels=d["labels"][:n])
    return path


def _sweep(data: str, results: str | None, progress: Any = None) -> dict[str, Any]:
    return run_sweep(MODEL, data, rates=[0.0, 0.3], ratios=[(5.0, 1.0)],
                     strategies=["two-column", "differential"], seeds=1, results=results,
                     progress=progress)


def _png(result: dict[str, Any], path: str) -> bytes:
    render_plot(result, path)
    with open(path, "rb") as f:
        return f.read()


def test_a_stopped_sweep_resumes_to_the_same_table_and_plot(tmp_path: str) -> None:
    data, results = _small(tmp_path, 100), os.path.join(tmp_path, "points.jsonl")
    whole = _sweep(data, None)

    def stop_after_one_point(event: Event) -> None:
        if event.stage == "sweep" and event.finished and event.done == 1:
            raise Stop

    with pytest.raises(Stop):
        _sweep(data, results, stop_after_one_point)
    with open(results) as f:
        assert len(f.read().splitlines()) == 1 + 2  # header, 1 point x 2 strategies
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    events: list[Event] = []
    resumed = _sweep(data, results, events.append)
    verified = [e for e in events if e.stage == "verify" and e.finished]
    assert len(verified) == 2  # only the point the stopped run had not measured
    assert [e.done for e in events if e.stage == "sweep"] == [1, 2]
    assert table(resumed) == table(whole)
    assert _png(resumed, os.path.join(tmp_path, "a.png")) == _png(whole,
                                                                 os.path.join(tmp_path, "b.png"))
    again: list[Event] = []
    assert table(_sweep(data, results, again.append)) == table(whole)
    assert not [e for e in again if e.stage in ("chip", "verify")]  # nothing left to measure


def test_results_of_other_arguments_or_no_results_file_are_refused(tmp_path: str) -> None:
    data, results = _small(tmp_path, 40), os.path.join(tmp_path, "points.jsonl")
    args = ("sweep", MODEL, "--rate", "0.1", "--ratio", "5:1", "--strategy", "two-column",
            "--seeds", "1", "--results", results)
    first = rcompile(*args, "--data", data)
    assert first.returncode == 0, first.stderr
    with open(results, "rb") as f:
        kept = f.read()
    other = _small(tmp_path, 30)
    r = rcompile(*args, "--data", other)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "other --data" in r.stderr and results in r.stderr and "Traceback" not in r.stderr
    with open(results, "rb") as f:
        assert f.read() == kept  # another sweep's work is left as it was
    with open(results, "w") as f:
        f.write('{"not": "ours"}\n')
    r = rcompile(*args, "--data", data)
    assert r.returncode == 1 and "not a sweep results file" in r.stderr
    assert len(r.stderr.splitlines()) == 1
