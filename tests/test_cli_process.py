"""The few checks that need a real ``rcompile`` process: the console entry point, the
interpreter's exit status and what reaches a terminal. Every other CLI test runs in-process."""

from __future__ import annotations

import json
import os

from tests.conftest import MODEL, TEST_DATA, rcompile_process


def test_synth_build_verify_as_a_user_runs_them(tmp_path: object) -> None:
    chip, image = os.path.join(str(tmp_path), "c.npz"), os.path.join(str(tmp_path), "c.rimg")
    r = rcompile_process("faultmap", "synth", "--like", MODEL, "--rate", "0.01", "--seed", "1",
                         "-o", chip)
    assert r.returncode == 0, r.stderr
    r = rcompile_process("build", MODEL, "--faultmap", chip, "-o", image)
    assert r.returncode == 0, r.stderr
    r = rcompile_process("verify", image, "--faultmap", chip, "--data", TEST_DATA, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] > 0.9


def test_a_domain_error_is_one_line_and_its_own_exit_code(tmp_path: object) -> None:
    junk = os.path.join(str(tmp_path), "junk.onnx")
    with open(junk, "wb") as f:
        f.write(b"this is not onnx" * 20)
    out = os.path.join(str(tmp_path), "o.rimg")
    r = rcompile_process("build", junk, "--faultmap", junk, "-o", out)
    assert r.returncode not in (0, 1), r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and "junk" in lines[0], r.stderr
    assert not os.path.exists(out)


def test_a_usage_error_is_clicks_exit_code_two() -> None:
    r = rcompile_process("build", "--no-such-option")
    assert r.returncode == 2 and "Traceback" not in r.stderr
