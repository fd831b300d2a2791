"""One CLI vocabulary: option names, old spellings, exit codes, the JSON envelope, honest headers.

All in-process (``tests.conftest.rcompile`` runs ``rcompile.cli.main`` as the console script
does) on a tiny graph written the way an old exporter writes it (opset 9, symbolic batch).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from rcompile import clidoc
from rcompile import image as rimg
from rcompile.errors import EXIT_CODES, BadModel, RcompileError
from tests.conftest import ROOT, conv_bn_gemm, rcompile, save


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("vocab")
    m = conv_bn_gemm(seed=1)
    del m.opset_import[:]
    m.opset_import.extend([helper.make_opsetid("", 9)])
    m.ir_version = 4
    model = save(m, str(d / "old.onnx"))
    rng = np.random.default_rng(0)
    calib = str(d / "calib.npz")
    np.savez(calib, x=rng.normal(size=(16, 4, 6, 6)).astype(np.float32))
    chip = str(d / "chip.npz")
    r = rcompile("faultmap", "synth", "--like", model, "--rate", "0.05", "--fault-seed", "2",
                 "-o", chip)
    assert r.returncode == 0, r.stderr
    return {"dir": str(d), "model": model, "calib": calib, "chip": chip}


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_every_exit_code_is_published_and_domain_codes_are_not_clicks() -> None:
    codes = {c.exit_code for c in _kinds()}
    assert 2 not in codes and 1 not in codes and BadModel.exit_code == 11
    assert len(codes) == len(_kinds())  # one code a kind
    assert codes <= set(EXIT_CODES)
    help_text = rcompile("--help").stdout
    readme = Path(ROOT, "README.md").read_text()
    reliability = Path(ROOT, "docs", "reliability.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in help_text
        assert f"| {code} |" in readme and f"| {code} |" in reliability, code


def _kinds() -> list[type[RcompileError]]:
    from rcompile import pipeline  # noqa: F401  (BadPipeline registers as a subclass)

    out, todo = [], list(RcompileError.__subclasses__())
    while todo:
        k = todo.pop()
        todo += k.__subclasses__()
        if "exit_code" in vars(k):
            out.append(k)
    return out


def test_a_bad_model_under_json_is_one_json_object_on_stderr(w: dict[str, str]) -> None:
    junk = os.path.join(w["dir"], "junk.onnx")
    Path(junk).write_bytes(b"not a model")
    r = rcompile("build", junk, "--faultmap", w["chip"], "-o", os.path.join(w["dir"], "x.rimg"),
                 "--json")
    assert r.returncode == 11 and r.stdout == ""
    err = json.loads(r.stderr)
    assert err["exit_code"] == 11 and err["kind"] == "BadModel" and "junk.onnx" in err["error"]
    assert not os.path.exists(os.path.join(w["dir"], "x.rimg"))
    r = rcompile("verify", "--json", "--no-such-option")
    assert r.returncode == 2 and json.loads(r.stderr)["kind"] == "NoSuchOption"
    r = rcompile("build", junk, "--faultmap", w["chip"], "-o", os.path.join(w["dir"], "x.rimg"))
    assert r.returncode == 11 and r.stderr.startswith("rcompile: error: ") and "{" not in r.stderr


def test_json_documents_carry_the_envelope_and_one_vocabulary(w: dict[str, str]) -> None:
    out = os.path.join(w["dir"], "env.rimg")
    r = rcompile("build", w["model"], "--faultmap", w["chip"], "-o", out, "--json", "-j", "1",
                 "--solver-seed", "3")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1
    doc = json.loads(r.stdout)
    assert doc["schema_version"] == 1 and doc["rcompile_version"]
    assert doc["inputs"]["model"] == {"path": w["model"], "sha256": sha(w["model"])}
    assert doc["inputs"]["faultmap"]["sha256"] == sha(w["chip"])
    assert doc["tiles_on_chip"] == doc["tiles"]
    assert all(e["weight_shape"] == e["shape"] for e in doc["crossbar"])
    assert rimg.read(out).header["options"]["solver_seed"] == 3
    insp = json.loads(rcompile("inspect", out, "--json").stdout)
    assert insp["inputs"]["image"]["sha256"] == sha(out)
    assert {"weight_shape"} <= set(insp["layers"][0]) and "tiles_on_chip" in insp["totals"]
    show = rcompile("faultmap", "show", w["chip"], "--json").stdout
    assert len(show.strip().splitlines()) == 1 and json.loads(show)["schema_version"] == 1
    imp_csv = os.path.join(w["dir"], "t.csv")
    Path(imp_csv).write_text("tile,row,col,state\n0,1,1,SA1\n")
    r = rcompile("faultmap", "import", imp_csv, "--tiles", "1", "--rows", "8", "--cols", "8",
                 "-o", os.path.join(w["dir"], "imp.npz"), "--json")
    imp = json.loads(r.stdout)
    assert imp["counts"]["sa1"] == 1 and imp["inputs"]["csv"]["sha256"] == sha(imp_csv)


def test_old_spellings_still_work_but_are_not_advertised(w: dict[str, str]) -> None:
    a, b = (os.path.join(w["dir"], f"{n}.npz") for n in ("old", "new"))
    base = ["faultmap", "synth", "--tiles", "2", "--rows", "8", "--cols", "8", "--rate", "0.1"]
    assert rcompile(*base, "--seed", "4", "-o", a).returncode == 0
    assert rcompile(*base, "--fault-seed", "4", "-o", b).returncode == 0
    assert Path(a).read_bytes() == Path(b).read_bytes()
    for cmd, old, new in [(["faultmap", "synth"], "--seed", "--fault-seed"),
                          (["faultmap", "show"], "--png", "--plot"),
                          (["build"], "--seed", "--solver-seed"),
                          (["sweep"], "--ratios", "--ratio"), (["sweep"], "--rates", "--rate"),
                          (["sweep"], "--strategies", "--strategy"),
                          (["provision"], "--faultmaps", "--faultmap-dir"),
                          (["provision"], "--verify-data", "--data")]:
        text = rcompile(*cmd, "--help").stdout
        assert new in text and f"{old} " not in text and f"{old}," not in text, (cmd, old)
    for cmd in ("build", "sweep", "provision"):
        text = rcompile(cmd, "--help").stdout
        assert "-j, --jobs" in text and "--time-limit" in text and "--solver-seed" in text


def test_pipeline_and_strategy_together_are_refused(w: dict[str, str]) -> None:
    out = os.path.join(w["dir"], "p.rimg")
    r = rcompile("build", w["model"], "--faultmap", w["chip"], "-o", out, "--strategy", "mt",
                 "--pipeline", "place,program")
    assert r.returncode == 2 and "--pipeline" in r.stderr and not os.path.exists(out)


def test_the_header_says_calibrated_only_when_a_pass_used_the_statistics(
        w: dict[str, str]) -> None:
    def build(strategy: str, *extra: str) -> tuple[rimg.Image, dict[str, dict[str, float]]]:
        out = os.path.join(w["dir"], f"{strategy}{len(extra)}.rimg")
        r = rcompile("build", w["model"], "--faultmap", w["chip"], "-o", out,
                     "--strategy", strategy, *extra, "--json")
        assert r.returncode == 0, r.stderr
        return rimg.read(out), {p["pass"]: p for p in json.loads(r.stdout)["passes"]}

    (plain, _), (calib, _) = build("two-column"), build("two-column", "--calib", w["calib"])
    assert not calib.header["options"]["calibrated"]
    pairs = zip(plain.tiles, calib.tiles, strict=True)
    assert all(np.array_equal(a.levels, b.levels) for a, b in pairs)
    assert all(np.array_equal(a.bias, b.bias)
               for a, b in zip(plain.layers, calib.layers, strict=True))
    (full, log), (full_c, log_c) = build("full"), build("full", "--calib", w["calib"])
    assert full_c.header["options"]["calibrated"] and not full.header["options"]["calibrated"]
    # the statistics weigh permute's objective: its starting cost is another number
    assert log["permute"]["cost_before"] != log_c["permute"]["cost_before"]


def test_a_saved_plan_on_a_device_gives_one_cell_and_the_image_of_a_fresh_plan(
        w: dict[str, str]) -> None:
    plan = os.path.join(w["dir"], "m.rplan")
    assert rcompile("plan", w["model"], "-o", plan).returncode == 0
    a, b = (os.path.join(w["dir"], f"dev{n}.rimg") for n in "ab")
    common = ["--faultmap", w["chip"], "--device", "neurosim", "--strategy", "mt"]
    assert rcompile("build", w["model"], *common, "-o", a).returncode == 0
    r = rcompile("build", w["model"], *common, "--plan", plan, "-o", b)
    assert r.returncode == 0, r.stderr
    ha, hb = rimg.read(a).header, rimg.read(b).header
    assert hb["device"]["g_min_us"] == hb["hardware"]["cell"]["g_min_us"]
    assert hb["device"] == ha["device"]
    assert Path(a).read_bytes() == Path(b).read_bytes()


def test_the_committed_cli_reference_is_the_generated_one() -> None:
    committed = Path(ROOT, "docs", "cli.md").read_text()
    assert committed == clidoc.render(), "docs/cli.md is stale: run 'make docs'"


def test_jobs_never_change_the_image(w: dict[str, str]) -> None:
    outs = [os.path.join(w["dir"], f"j{j}.rimg") for j in (1, 2)]
    for j, out in zip((1, 2), outs, strict=True):
        r = rcompile("build", w["model"], "--faultmap", w["chip"], "-j", str(j), "-o", out)
        assert r.returncode == 0, r.stderr
    assert Path(outs[0]).read_bytes() == Path(outs[1]).read_bytes()


def test_provision_verification_mode_and_noise_seed_are_in_its_key() -> None:
    from rcompile.data import Dataset
    from rcompile.provision import verify_key

    data = Dataset(inputs={"x": np.zeros((2, 3), np.float32)}, labels=None, n=2)
    keys = {verify_key(data, None), verify_key(data, None, "tile", 0),
            verify_key(data, None, "auto", 1)}
    assert len(keys) == 3 and verify_key(data, None) == verify_key(data, None, "auto", 0)
