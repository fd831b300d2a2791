"""Progress on the long commands: ``--verbose`` lines, ``--quiet``, the terminal status line,
and the same stdout bytes whatever the progress flags."""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any

import numpy as np
import pytest

from rcompile import faultmap as fmap
from rcompile.cliprogress import Reporter, announce, clock, erase_announcement, eta_seconds
from rcompile.progress import Event
from tests.conftest import MODEL, ROOT, TEST_DATA, rcompile

COMPAT = os.path.join(ROOT, "tests", "data", "compat", "sk_mlp_classifier-skl2onnx13-dynamic")
TIMING = re.compile(r" *\d+(\.\d+)? (ms|s)\b")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _without_timing(doc: dict[str, Any]) -> dict[str, Any]:
    doc = {k: v for k, v in doc.items() if k not in ("plan_seconds", "chip_seconds")}
    doc["passes"] = [{k: v for k, v in p.items() if k != "seconds"} for p in doc["passes"]]
    return doc


@pytest.mark.parametrize("model", [MODEL, COMPAT + ".onnx"], ids=["mnist", "sk_mlp"])
def test_build_verbose_names_every_pass_quiet_is_silent_stdout_unchanged(
        model: str, tmp_path: str) -> None:
    chip, image = os.path.join(tmp_path, "chip.npz"), os.path.join(tmp_path, "chip.rimg")
    assert rcompile("faultmap", "synth", "--like", model, "--rate", "0.05", "-o", chip,
                    "-q").returncode == 0
    build = ("build", model, "--faultmap", chip, "-o", image, "--strategy", "two-column")
    runs = {flag: rcompile(*build, *flags) for flag, flags in
            (("plain", ()), ("quiet", ("-q",)), ("verbose", ("--verbose",)))}
    assert all(r.returncode == 0 for r in runs.values()), runs
    assert runs["quiet"].stderr == "" and runs["plain"].stderr == ""  # not a terminal: silent
    lines = runs["verbose"].stderr.splitlines()
    passes = [line.split()[1:3] for line in lines]
    assert passes == [["read", "fault"], ["model", "load"], ["plan", "quantize"],
                      ["plan", "tile"], ["plan", "pack"], ["chip", "place"],
                      ["chip", "program"]], lines
    assert all(TIMING.search(line) for line in lines)
    outs = {TIMING.sub("T", r.stdout) for r in runs.values()}
    assert len(outs) == 1  # the same report, timings aside
    docs = [rcompile(*build, *flags, "--json") for flags in ((), ("-v",), ("-q",))]
    assert docs[2].stderr == "" and "plan   quantize" in docs[1].stderr
    parsed = [_without_timing(json.loads(d.stdout)) for d in docs]
    assert parsed[0] == parsed[1] == parsed[2]


def test_quiet_and_verbose_together_is_a_usage_error(tmp_path: str) -> None:
    r = rcompile("plan", MODEL, "-o", os.path.join(tmp_path, "m.rplan"), "-q", "-v")
    assert r.returncode == 2 and "--quiet and --verbose" in r.stderr
    assert not os.path.exists(os.path.join(tmp_path, "m.rplan"))


def test_plan_verify_and_import_speak_the_same_vocabulary(tmp_path: str) -> None:
    plan = os.path.join(tmp_path, "m.rplan")
    r = rcompile("plan", MODEL, "-o", plan, "-v")
    assert r.returncode == 0 and "plan   pack" in r.stderr
    csv = os.path.join(tmp_path, "chip.csv")
    with open(csv, "w") as f:
        f.write("tile,row,col,state\n0,1,2,SA1\n3,4,5,1\n")
    chip = os.path.join(tmp_path, "chip.npz")
    r = rcompile("faultmap", "import", csv, "--tiles", "9", "-o", chip, "-v")
    assert r.returncode == 0 and re.search(r"import 4/4 CSV lines", r.stderr), r.stderr
    image = os.path.join(tmp_path, "chip.rimg")
    assert rcompile("build", MODEL, "--plan", plan, "--faultmap", chip, "-o", image,
                    "--strategy", "two-column", "-q").returncode == 0
    r = rcompile("verify", image, "--faultmap", chip, "--data", TEST_DATA, "-v", "--json")
    assert r.returncode == 0 and "verify emulate" in r.stderr
    json.loads(r.stdout)


def test_status_line_on_a_terminal_is_drawn_and_erased() -> None:
    term = Terminal()
    with Reporter("sweep", term, live=True, verbose=False) as rep:
        rep(Event("sweep", "start", 2, 6))
        rep(Event("chip", "permute", 1, 4))
        assert "sweep 2/6" in rep.status(1e9) and "chip 2/4 permute" in rep.status(1e9)
        rep(Event("sweep", "p=1% 5:1 seed 0", 4, 6, 3.0))
        assert rep.eta("sweep", 1e9) == 0.0 and "sweep 4/6 ETA 00:00:00" in rep.status(1e9)
    # two points measured in 10 s since the start (2 resumed ones do not count): the last 2 take
    # as long again, less the 3 s already spent since the last one finished
    assert eta_seconds(100.0, 2, 110.0, 4, 6, 113.0) == pytest.approx(7.0)
    assert eta_seconds(100.0, 2, 100.0, 2, 6, 113.0) is None  # nothing measured here yet
    assert eta_seconds(100.0, 2, 110.0, 6, 6, 113.0) is None  # finished
    text = term.getvalue()
    assert "resuming: 2 of 6 points already done" in text  # resumed units never count in the ETA
    assert "\r" in text and text.endswith("\r") and text.rstrip("\r ").count("\n") == 1
    assert clock(3725) == "01:02:05"


def test_announcement_is_erased_before_an_error_and_skipped_off_a_terminal() -> None:
    term = Terminal()
    announce(["build", "m.onnx", "--faultmap", "c.npz"], term)
    assert term.getvalue().startswith("\rrcompile build 00:00:00")
    erase_announcement(term)
    assert term.getvalue().endswith("\r") and term.getvalue().split("\r")[-2].strip() == ""
    plain = io.StringIO()
    announce(["build", "m.onnx"], plain)
    announce(["inspect", "x.rimg"], Terminal())
    assert plain.getvalue() == ""


def test_import_reports_lines_read(tmp_path: str) -> None:
    events: list[Event] = []
    csv = os.path.join(tmp_path, "chip.csv")
    with open(csv, "w") as f:
        f.write("tile,row,col,state\n" + "".join(f"0,{r},0,1\n" for r in range(8)))
    fm = fmap.import_csv(csv, 1, 8, 2, progress=events.append)
    assert int(np.count_nonzero(fm.faults)) == 8
    assert events[-1].finished and events[-1].done == events[-1].total
