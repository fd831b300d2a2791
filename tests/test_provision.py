"""Factory-line scale: the fast per-chip paths are exact, and a lot survives bad input."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rcompile.passes.place import assign_rank1_classes

from rcompile import api, planfile, solvers
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile import provision as prov
from rcompile.device import load_hardware
from rcompile.errors import RcompileError
from rcompile.pipeline import SolverOptions
from tests.conftest import MODEL, ROOT, TEST_DATA, conv_bn_gemm, save
from tests.conftest import rcompile as run_cli

# ------------------------------------------------------------------------------------------------
# The fast paths change nothing
# ------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 7), st.integers(0, 3), st.integers(1, 3))
def test_sparse_placement_is_as_good_as_dense(seed: int, blocks: int, spare: int,
                                              classes: int) -> None:
    """The provably sufficient arcs of place{order=assign} keep the dense optimum."""
    rng = np.random.default_rng(seed)
    tiles = blocks + spare
    mass = rng.choice([0.0, 1.0, 2.5, rng.uniform(0, 9)], size=blocks)  # ties on purpose
    shape = rng.integers(0, classes, size=blocks)
    _, shape = np.unique(shape, return_inverse=True)
    density = rng.choice([0.0, 0.5, 1.0, 3.0], size=(shape.max() + 1, tiles))
    cost = mass[:, None] * density[shape]
    got = assign_rank1_classes(mass, shape, density, tiles)
    assert len(set(got.tolist())) == blocks
    best = min(sum(cost[b, p[b]] for b in range(blocks))
               for p in itertools.permutations(range(tiles), blocks))
    assert cost[np.arange(blocks), got].sum() == pytest.approx(best, abs=1e-9)


def test_large_chip_placement_matches_dense_cost() -> None:
    """Above the dense threshold (where the dense 2**40 costs used to overflow) the sparse
    assignment reaches the same total as a dense solve of the same costs."""
    rng = np.random.default_rng(5)
    nb, nt = 300, 340
    mass = rng.uniform(0, 1, nb)
    shape = (rng.random(nb) < 0.1).astype(np.int64)
    density = rng.uniform(0, 2, (2, nt))
    cost = mass[:, None] * density[shape]
    sparse = assign_rank1_classes(mass, shape, density, nt)
    dense = solvers.assign(cost)
    total = cost[np.arange(nb), sparse].sum()
    assert total == pytest.approx(cost[np.arange(nb), dense].sum(), rel=1e-9)


def test_fork_map_keeps_order_for_any_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def square(shared: int, items: list[int]) -> list[int]:
        return [shared + i * i for i in items]

    items = list(range(50))
    monkeypatch.setenv("RCOMPILE_JOBS", "2")
    assert solvers.fork_map(square, 1, items) == [1 + i * i for i in items]
    with solvers.serial():
        assert solvers.jobs() == 1
    monkeypatch.setenv("RCOMPILE_JOBS", "1")
    assert solvers.fork_map(square, 1, items) == [1 + i * i for i in items]


def test_full_gives_the_same_image_on_one_or_two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    plan, _ = api.make_plan(MODEL, tile_rows=64, tile_cols=32)  # enough blocks to fork
    assert plan.tiles_needed() >= 16
    fm = fmap.synth(plan.tiles_needed() + 4, 64, 32, 0.1, (5, 1), 4)
    images = []
    for jobs in ("1", "2"):
        monkeypatch.setenv("RCOMPILE_JOBS", jobs)
        images.append(rimg.encode(api.build(plan, fm).image))
    assert images[0] == images[1]


# ------------------------------------------------------------------------------------------------
# A lot of chips
# ------------------------------------------------------------------------------------------------


def make_lot(directory: Path, n: int, rate: float = 0.05) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = directory / f"chip{i:03d}.npz"
        fmap.save(fmap.synth(11, 128, 128, rate, (5, 1), i, chip_id=f"chip-{i}"), p)
        paths.append(p)
    return paths


def report_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / prov.REPORT).read_text().splitlines()]


def test_lot_with_bad_maps_among_good_ones(tmp_path: Path) -> None:
    lot, out = tmp_path / "lot", tmp_path / "out"
    make_lot(lot, 3)
    (lot / "garbage.npz").write_bytes(b"not a zip at all")
    good = (lot / "chip000.npz").read_bytes()
    (lot / "truncated.npz").write_bytes(good[: len(good) // 2])
    np.savez(lot / "nokey.npz", stuck=np.zeros((11, 128, 128), np.uint8))
    fmap.save(fmap.synth(11, 64, 64, 0.01, (5, 1), 0), lot / "smalltiles.npz")
    fmap.save(fmap.synth(3, 128, 128, 0.01, (5, 1), 0), lot / "toofew.npz")
    fmap.save(fmap.FaultMap(fmap.synth(11, 128, 128, 0.01).faults, chip_id="lv", levels=8),
              lot / "levels.npz")
    (lot / "notes.txt").write_text("ignored: not a fault map")
    r = run_cli("provision", MODEL, "--faultmaps", str(lot), "-o", str(out), "-j", "2",
                "--verify-data", TEST_DATA)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("rcompile: error: 6 of 9 chips failed")
    lines = {x["faultmap"]: x for x in report_lines(out)}
    assert sorted(lines) == sorted(p.name for p in lot.glob("*.npz"))
    for name in ("chip000.npz", "chip001.npz", "chip002.npz"):
        x = lines[name]
        assert x["status"] == "ok" and x["accuracy"] > 0.9 and x["faults"]["sa1"] > 0
        assert x["predicted_error"] is not None and x["seconds"] > 0
        img = rimg.read(out / x["file"])
        assert img.header["chip_id"] == x["chip_id"]
    expect = {"garbage.npz": "not an .npz", "truncated.npz": "truncated.npz",
              "nokey.npz": "faults", "smalltiles.npz": "64x64",
              "toofew.npz": f"needs {api.tiles_needed(MODEL, 128, 128)} tiles",
              "levels.npz": "--levels 8"}
    for name, text in expect.items():
        assert lines[name]["status"] == "error" and text in lines[name]["message"], lines[name]
        assert not (out / (name[:-4] + ".rimg")).exists()


def test_rerun_skips_done_chips_and_keeps_one_line_each(tmp_path: Path) -> None:
    lot, out = tmp_path / "lot", tmp_path / "out"
    make_lot(lot, 3)
    first = prov.provision(MODEL, str(lot), str(out), jobs=1)
    assert (first.ok, first.skipped, first.errors) == (3, 0, 0)
    before = {p.name: p.read_bytes() for p in out.glob("*.rimg")}
    plan = api.make_plan(MODEL)[0]
    alone = api.build(plan, fmap.load(lot / "chip000.npz")).image
    assert before["chip000.rimg"] == rimg.encode(alone)  # a lot builds what 'build' builds
    again = prov.provision(MODEL, str(lot), str(out), jobs=1)
    assert (again.ok, again.skipped, again.errors) == (0, 3, 0)
    assert {p.name: p.read_bytes() for p in out.glob("*.rimg")} == before
    lines = report_lines(out)
    assert [x["faultmap"] for x in lines] == ["chip000.npz", "chip001.npz", "chip002.npz"]
    assert all(x["status"] == "ok" for x in lines)  # the first run's full lines are kept
    # a damaged image is not "done": it is compiled again
    (out / "chip001.rimg").write_bytes(b"RCIMG\x00\r\n")
    third = prov.provision(MODEL, str(lot), str(out), jobs=1)
    assert (third.ok, third.skipped) == (1, 2)
    assert (out / "chip001.rimg").read_bytes() == before["chip001.rimg"]


def test_lot_for_a_device_records_it_verifies_on_it_and_reruns_on_a_change(
        tmp_path: Path) -> None:
    lot, out = tmp_path / "lot", tmp_path / "out"
    make_lot(lot, 2)
    small = tmp_path / "small.npz"
    d = np.load(TEST_DATA)
    np.savez(small, input=d["input"][:100], labels=d["labels"][:100])
    r = run_cli("provision", MODEL, "--faultmaps", str(lot), "-o", str(out), "-j", "1",
                "--device", "neurosim", "--verify-data", str(small))
    assert r.returncode == 0, r.stderr
    for x in report_lines(out):
        assert x["status"] == "ok" and x["mode"] == "tile" and x["accuracy"] > 0.8
        head = rimg.read(out / x["file"]).header
        assert head["hardware"]["name"] == "neurosim"
        assert len(head["device"]["level_rms_error"]) == 16  # the plan was made for the device
    same = prov.provision(MODEL, str(lot), str(out), jobs=1,
                          hardware=load_hardware("neurosim"))
    assert (same.ok, same.skipped) == (0, 2)
    # the lot without the device is another build: nothing is skipped
    plain = prov.provision(MODEL, str(lot), str(out), jobs=1)
    assert (plain.ok, plain.skipped) == (2, 0)
    assert "hardware" not in rimg.read(out / "chip000.rimg").header
    # a device with other tiles than the chips: every chip fails with one clear line
    dev = tmp_path / "small-tiles.toml"
    dev.write_text('base = "neurosim"\ntile_rows = 64\ntile_cols = 64\n')
    r = run_cli("provision", MODEL, "--faultmaps", str(lot), "-o", str(tmp_path / "o2"),
                "--device", str(dev))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "2 of 2 chips failed" in r.stderr and "64x64 tiles" in r.stderr


def test_empty_lot_and_unwritable_output(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = run_cli("provision", MODEL, "--faultmaps", str(tmp_path / "empty"), "-o",
                str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"rcompile: error: {tmp_path / 'empty'}: no fault maps (*.npz) "
                                "in the lot directory")
    lot = tmp_path / "lot"
    make_lot(lot, 1)
    (tmp_path / "afile").write_text("x")
    r = run_cli("provision", MODEL, "--faultmaps", str(lot), "-o", str(tmp_path / "afile" / "o"))
    assert r.returncode == 1
    assert "output directory is not writable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_plan_of_other_geometry_fails_every_chip_clearly(tmp_path: Path) -> None:
    lot, out = tmp_path / "lot", tmp_path / "out"
    make_lot(lot, 2)
    plan = tmp_path / "m.rplan"
    assert run_cli("plan", MODEL, "-o", str(plan), "--rows", "64").returncode == 0
    summary = prov.provision(MODEL, str(lot), str(out), jobs=1, plan_path=str(plan))
    assert summary.errors == 2
    assert all("plan is for 64x128 tiles" in x["message"] for x in summary.lines)
    other = save(conv_bn_gemm(), str(tmp_path / "other.onnx"))
    with pytest.raises(RcompileError, match="another model"):
        prov.provision(other, str(lot), str(out), plan_path=str(plan))


def test_killed_mid_lot_then_restarted(tmp_path: Path) -> None:
    lot, out = tmp_path / "lot", tmp_path / "out"
    make_lot(lot, 10)
    cmd = [sys.executable, "-m", "rcompile", "provision", MODEL, "--faultmaps", str(lot),
           "-o", str(out), "-j", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out.glob("*.rimg"))) >= 2:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("*.rimg")))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    lines = report_lines(out)
    assert [x["faultmap"] for x in lines] == [f"chip{i:03d}.npz" for i in range(10)]
    assert all(x["status"] == "ok" for x in lines), [(x["status"], x.get("message")) for x in lines]
    for x in lines:
        rimg.read(out / x["file"])  # every image decodes
    assert not list(out.glob(".*.tmp"))
    assert done_before >= 2


def test_dask_executor_gives_the_same_images(tmp_path: Path) -> None:
    distributed = pytest.importorskip("dask.distributed")
    lot = tmp_path / "lot"
    make_lot(lot, 3)
    (lot / "garbage.npz").write_bytes(b"junk")
    saved = planfile.SavedPlan(api.make_plan(MODEL)[0], None)
    plan_path = tmp_path / "m.rplan"
    planfile.write(plan_path, saved.plan)
    local = prov.provision(MODEL, str(lot), str(tmp_path / "local"), jobs=1,
                           plan_path=str(plan_path))
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = prov.provision(MODEL, str(lot), str(tmp_path / "dask"), executor="dask",
                                client=client, plan_path=str(plan_path))
    assert (remote.ok, remote.errors) == (local.ok, local.errors) == (3, 1)
    for p in (tmp_path / "local").glob("*.rimg"):
        assert (tmp_path / "dask" / p.name).read_bytes() == p.read_bytes()


def test_dask_needs_a_scheduler(tmp_path: Path) -> None:
    lot = tmp_path / "lot"
    make_lot(lot, 1)
    r = run_cli("provision", MODEL, "--faultmaps", str(lot), "-o", str(tmp_path / "o"),
                "--executor", "dask")
    assert r.returncode == 2 and "--scheduler" in r.stderr


def test_cli_runs_a_lot_on_a_dask_scheduler(tmp_path: Path) -> None:
    distributed = pytest.importorskip("dask.distributed")
    lot, out = tmp_path / "lot", tmp_path / "out"
    make_lot(lot, 2)
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        r = run_cli("provision", MODEL, "--faultmaps", str(lot), "-o", str(out),
                    "--executor", "dask", "--scheduler", cluster.scheduler_address, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] == 2
    assert [x["status"] for x in report_lines(out)] == ["ok", "ok"]
    with pytest.raises(RcompileError, match="dask scheduler tcp://127.0.0.1:9: cannot connect"):
        prov.provision(MODEL, str(lot), str(out), executor="dask",
                       scheduler="tcp://127.0.0.1:9", connect_timeout_s=1.0)


def test_rerun_rebuilds_exactly_when_an_option_that_changes_the_image_changes(
        tmp_path: Path) -> None:
    """The skip key covers every option that can change an image's bytes (docs/provisioning.md)
    and nothing else: each change rebuilds, the same command again skips."""
    model = save(conv_bn_gemm(), str(tmp_path / "m.onnx"))
    lot, out = tmp_path / "lot", tmp_path / "out"
    lot.mkdir()
    fmap.save(fmap.synth(4, 128, 128, 0.05, (5, 1), 2, chip_id="k"), lot / "k.npz")
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, x=rng.normal(size=(8, 4, 6, 6)).astype(np.float32))
    plan = tmp_path / "pruned.rplan"
    assert run_cli("plan", model, "-o", str(plan), "--prune", "magnitude:0.5").returncode == 0

    def lot_run(**kw: object) -> tuple[int, int]:
        s = prov.provision(model, str(lot), str(out), jobs=1, **kw)  # type: ignore[arg-type]
        assert s.errors == 0, s.lines
        return s.ok, s.skipped

    opts: dict[str, object] = {"calib_path": str(calib)}
    assert lot_run(**opts) == (1, 0)
    assert lot_run(**opts) == (0, 1)
    changes: list[tuple[str, dict[str, object]]] = [
        ("--time-limit", {"solver": SolverOptions(time_limit_s=5.0)}),
        ("--seed", {"solver": SolverOptions(time_limit_s=5.0, seed=7)}),
        ("--calib content, same file name", {}),
        ("--strategy", {"strategy": "mt"}),
        ("--device", {"hardware": load_hardware("neurosim")}),
        ("--plan", {"plan_path": str(plan), "calib_path": None}),
    ]
    for what, change in changes:
        if what.startswith("--calib"):
            np.savez(calib, x=rng.normal(size=(8, 4, 6, 6)).astype(np.float32) * 3)
        opts = {**opts, **change}
        assert lot_run(**opts) == (1, 0), what
        assert lot_run(**opts) == (0, 1), what
    line = report_lines(out)[0]
    assert line["image_sha256"] == hashlib.sha256((out / "k.rimg").read_bytes()).hexdigest()


def test_rerun_with_other_verify_data_verifies_again_without_rebuilding(tmp_path: Path) -> None:
    model = save(conv_bn_gemm(), str(tmp_path / "m.onnx"))
    lot, out = tmp_path / "lot", tmp_path / "out"
    lot.mkdir()
    fmap.save(fmap.synth(4, 128, 128, 0.05, (5, 1), 2, chip_id="v"), lot / "v.npz")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4, 6, 6)).astype(np.float32)
    first, second = tmp_path / "d1.npz", tmp_path / "d2.npz"
    np.savez(first, x=x, labels=rng.integers(0, 5, 32))
    np.savez(second, x=x[:20], labels=rng.integers(0, 5, 20))
    s = prov.provision(model, str(lot), str(out), jobs=1, verify_data=str(first))
    assert s.ok == 1
    before = report_lines(out)[0]["accuracy"]
    image = (out / "v.rimg").read_bytes()
    s = prov.provision(model, str(lot), str(out), jobs=1, verify_data=str(second))
    assert (s.ok, s.skipped) == (0, 1)
    assert (out / "v.rimg").read_bytes() == image  # not rebuilt
    from rcompile import runtime
    from rcompile.data import load_data

    img = rimg.read(out / "v.rimg")
    expect = runtime.verify(img, fmap.load(lot / "v.npz"),
                            load_data(second, runtime.image_input_specs(img))).accuracy
    assert report_lines(out)[0]["accuracy"] == expect != before


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_worker_killed_mid_lot_costs_no_chip(tmp_path: Path) -> None:
    """A dead worker (here: SIGKILL from outside, as the OOM killer would) breaks its pool;
    the chips it left are compiled by new workers and the lot ends with every chip ok."""
    model = save(conv_bn_gemm(), str(tmp_path / "m.onnx"))
    lot, out = tmp_path / "lot", tmp_path / "out"
    lot.mkdir()
    for i in range(60):
        fmap.save(fmap.synth(4, 128, 128, 0.1, (5, 1), i, chip_id=f"w{i}"), lot / f"w{i:02d}.npz")
    proc = subprocess.Popen([sys.executable, "-m", "rcompile", "provision", model, "--faultmaps",
                             str(lot), "-o", str(out), "-j", "2", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 60
    report = out / prov.REPORT
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        # a chip is done, so the children are the lot's workers (not plan-stage helpers)
        if report.exists() and report.stat().st_size:
            kids = [int(p) for p in os.listdir("/proc")
                    if p.isdigit() and _ppid(int(p)) == proc.pid]
            if kids:
                os.kill(kids[0], signal.SIGKILL)
                killed = kids[0]
        time.sleep(0.01)
    stdout, err = proc.communicate(timeout=120)
    assert killed is not None, "the lot ended before a worker could be killed"
    assert proc.returncode == 0, err
    assert json.loads(stdout)["ok"] == 60
    assert [x["status"] for x in report_lines(out)] == ["ok"] * 60


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
