"""The commands' promises on a factory line (docs/reliability.md), tried adversarially.

- An output is never written over one of the command's inputs, however it is spelled: a
  corpus of every writing command against each of its inputs, each spelled four ways (the same
  path, ``sub/../name``, a symlink, a hard link), generated below.
- SIGINT and SIGTERM end a command with one line, exit 130 / 143, and no output (real
  processes: a signal needs one).
- A lot's workers die with their parent; a resumed lot cleans what a dead run left; a map of
  another tile geometry sorted first does not stop the lot.

The in-process runs call the real entry point :func:`rcompile.cli.main` (so the one-line error
and the exit code are what a user sees), with click's output captured.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rcompile import api
from rcompile import faultmap as fmap
from rcompile import provision as prov
from rcompile.fileio import TEMPORARY
from tests.conftest import ROOT, conv_bn_gemm, rcompile, save

# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def run(*args: str | Path) -> tuple[int, str, str]:
    """``rcompile ARGS`` in this process (:func:`tests.conftest.rcompile`): exit code, stdout,
    stderr."""
    r = rcompile(*map(str, args))
    return r.returncode, r.stdout, r.stderr


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``root`` (links followed), by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rcompile: error: ") and "Traceback" not in err, err
    return lines[0]


@dataclass
class World:
    """Real inputs of every command, made in code: a tiny Conv-BN-Gemm model, a chip, data."""

    root: Path
    model: Path
    chip: Path
    calib: Path
    data: Path
    plan: Path
    device: Path
    csv: Path
    lot: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    model = Path(save(conv_bn_gemm(), str(root / "model.onnx")))
    chip = root / "chip.npz"
    fmap.save(fmap.synth(api.tiles_needed(str(model), 128, 128) + 1, 128, 128, 0.02, (5, 1), 3,
                         chip_id="c1"), chip)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4, 6, 6)).astype(np.float32)
    np.savez(root / "calib.npz", x=x)
    np.savez(root / "data.npz", x=x, labels=rng.integers(0, 5, 16))
    plan = root / "model.rplan"
    assert run("plan", model, "-o", plan)[0] == 0
    device = root / "dev.toml"
    device.write_text('base = "neurosim"\n')
    csv = root / "tester.csv"
    csv.write_text("tile,row,col,state\n0,1,2,SA0\n1,3,4,SA1\n")
    lot = root / "lot"
    lot.mkdir()
    for i in range(2):
        fmap.save(fmap.synth(5, 128, 128, 0.02, (5, 1), i, chip_id=f"lot-{i}"),
                  lot / f"chip{i:03d}.npz")
    (root / "sub").mkdir()
    return World(root, model, chip, calib=root / "calib.npz", data=root / "data.npz",
                 plan=plan, device=device, csv=csv, lot=lot)


# ------------------------------------------------------------------------------------------------
# Outputs never overwrite inputs: the corpus
# ------------------------------------------------------------------------------------------------

# (name, the input the output collides with, the command with {OUT} for the output)
Case = tuple[str, str, Callable[[World], list[str | Path]]]

DIRECT: list[Case] = [
    ("build -o MODEL", "model",
     lambda w: ["build", w.model, "--faultmap", w.chip, "--calib", w.calib, "-o", "{OUT}"]),
    ("build -o --faultmap", "chip",
     lambda w: ["build", w.model, "--faultmap", w.chip, "--calib", w.calib, "-o", "{OUT}"]),
    ("build -o --calib", "calib",
     lambda w: ["build", w.model, "--faultmap", w.chip, "--calib", w.calib, "-o", "{OUT}"]),
    ("build -o --device", "device",
     lambda w: ["build", w.model, "--faultmap", w.chip, "--device", w.device, "-o", "{OUT}"]),
    ("build -o --plan", "plan",
     lambda w: ["build", w.model, "--faultmap", w.chip, "--plan", w.plan, "-o", "{OUT}"]),
    ("plan -o MODEL", "model", lambda w: ["plan", w.model, "-o", "{OUT}"]),
    ("plan -o --calib", "calib",
     lambda w: ["plan", w.model, "--calib", w.calib, "-o", "{OUT}"]),
    ("faultmap synth --like -o", "model",
     lambda w: ["faultmap", "synth", "--like", w.model, "--rate", "0.1", "-o", "{OUT}"]),
    ("faultmap import -o CSV", "csv",
     lambda w: ["faultmap", "import", w.csv, "--tiles", "2", "-o", "{OUT}"]),
    ("faultmap show --plot FILE", "chip",
     lambda w: ["faultmap", "show", w.chip, "--plot", "{OUT}"]),
    ("sweep --plot MODEL", "model",
     lambda w: ["sweep", w.model, "--data", w.data, "--rate", "0.1", "--seeds", "1",
                "--plot", "{OUT}"]),
    ("sweep --plot --data", "data",
     lambda w: ["sweep", w.model, "--data", w.data, "--rate", "0.1", "--seeds", "1",
                "--plot", "{OUT}"]),
    ("sweep --plot --calib", "calib",
     lambda w: ["sweep", w.model, "--data", w.data, "--calib", w.calib, "--rate", "0.1",
                "--seeds", "1", "--plot", "{OUT}"]),
    ("sweep --plot --device", "device",
     lambda w: ["sweep", w.model, "--data", w.data, "--device", w.device, "--rate", "0.1",
                "--seeds", "1", "--plot", "{OUT}"]),
]

SPELLINGS = ("same", "dotdot", "symlink", "hardlink")


def spell(victim: Path, how: str, scratch: Path) -> Path:
    """Another name of the file ``victim`` (created in ``scratch`` for links)."""
    if how == "same":
        return victim
    if how == "dotdot":
        return victim.parent / "sub" / ".." / victim.name
    link = scratch / f"{how}-{victim.name}"
    if how == "symlink":
        link.symlink_to(victim)
    else:
        os.link(victim, link)
    return link


@pytest.mark.parametrize("how", SPELLINGS)
@pytest.mark.parametrize("case", DIRECT, ids=[c[0] for c in DIRECT])
def test_output_over_an_input_is_refused(world: World, tmp_path: Path, case: Case,
                                         how: str) -> None:
    _, victim_name, make = case
    victim: Path = getattr(world, victim_name)
    out = spell(victim, how, tmp_path)
    args = [out if a == "{OUT}" else a for a in make(world)]
    before = snapshot(world.root)
    code, stdout, err = run(*args)
    line = one_error_line(err)
    assert code == 1 and stdout == ""
    assert f"{out}: " in line and "refusing to overwrite an input" in line, line
    assert str(victim) in line  # names the input it would have destroyed
    assert snapshot(world.root) == before  # every input untouched, nothing new written
    assert not [p for p in tmp_path.iterdir() if p.name != out.name]


# provision writes OUTDIR/report.jsonl and OUTDIR/NAME.rimg: those must not be inputs either
LOT_CASES = [
    ("report.jsonl is --data", "report.jsonl", "data", "--data"),
    ("an image is MODEL", "chip000.rimg", "model", "MODEL"),
    ("an image is --plan", "chip001.rimg", "plan", "--plan"),
    ("an image is another chip's map", "chip001.rimg", "lot/chip000.npz", "--faultmap-dir"),
]


@pytest.mark.parametrize("how", SPELLINGS)
@pytest.mark.parametrize("case", LOT_CASES, ids=[c[0] for c in LOT_CASES])
def test_provision_output_over_an_input_is_refused(world: World, tmp_path: Path,
                                                   case: tuple[str, str, str, str],
                                                   how: str) -> None:
    _, out_name, victim_name, option = case
    out = tmp_path / "out"
    out.mkdir()
    victim = (world.root / victim_name if "/" in victim_name
              else getattr(world, victim_name))
    target = out / out_name
    if how in ("same", "dotdot"):  # the input itself lives where the output goes
        target.write_bytes(victim.read_bytes())
        (out / "sub").mkdir()
        given = target if how == "same" else out / "sub" / ".." / out_name
    else:
        (target.symlink_to if how == "symlink" else target.hardlink_to)(victim)
        given = victim
    lot = world.lot
    if option == "--faultmap-dir" and how in ("same", "dotdot"):
        lot = tmp_path / "lot"  # a lot whose chip000.npz is the file out/chip001.rimg
        lot.mkdir()
        (lot / "chip000.npz").symlink_to(given)
        (lot / "chip001.npz").symlink_to(world.lot / "chip001.npz")
    args: list[str | Path] = ["provision", given if option == "MODEL" else world.model,
                              "--faultmap-dir", lot, "-o", out, "-j", "1"]
    if option == "--data":
        args += ["--data", given]
    if option == "--plan":
        args += ["--plan", given]
    before = snapshot(world.root), snapshot(out)
    code, stdout, err = run(*args)
    line = one_error_line(err)
    assert code == 1 and stdout == "" and "refusing to overwrite an input" in line, line
    assert option in line and str(out / out_name) in line, line
    assert (snapshot(world.root), snapshot(out)) == before


def test_default_build_output_over_an_input_is_refused(world: World, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without -o the image is ./<fault map name>.rimg: that too may not be an input."""
    monkeypatch.chdir(tmp_path)
    plan = tmp_path / "chip.rimg"  # the plan file happens to be called what the image would be
    plan.write_bytes(world.plan.read_bytes())
    before = plan.read_bytes()
    code, _, err = run("build", world.model, "--faultmap", world.chip, "--plan", plan)
    line = one_error_line(err)
    assert code == 1 and "chip.rimg: the default image is the same file as the input --plan" in line
    assert plan.read_bytes() == before


def test_outputs_that_are_other_files_are_written(world: World, tmp_path: Path) -> None:
    """The check refuses files, not names: same name elsewhere, or a fresh file, are fine."""
    (tmp_path / "sub").mkdir()
    img = tmp_path / "sub" / "chip.npz"  # the input's name in another directory
    code, _, err = run("build", world.model, "--faultmap", world.chip, "-o", img)
    assert code == 0, err
    png = tmp_path / "chip.png"
    png.symlink_to(tmp_path / "not-yet.png")  # a dangling link: no input behind it
    code, _, err = run("faultmap", "show", world.chip, "--plot", png)
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG" and not png.is_symlink()


# ------------------------------------------------------------------------------------------------
# Interrupts: real processes
# ------------------------------------------------------------------------------------------------


def big_mlp(n: int) -> onnx.ModelProto:
    """x[1, n] -> Gemm(n -> n) -> Relu -> Gemm(n -> 10), written the way opset-13 exporters
    did (fixed batch of 1, weights [out, in] with transB, no bias): slow enough to interrupt."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(n, n)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(10, n)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, n])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model of 130 tiles and a chip with 20 % stuck cells: a build of many seconds."""
    root = tmp_path_factory.mktemp("big")
    model = Path(save(big_mlp(1024), str(root / "big.onnx")))
    chip = root / "big.npz"
    fmap.save(fmap.synth(api.tiles_needed(str(model), 128, 128) + 4, 128, 128, 0.2, (5, 1), 1),
              chip)
    return model, chip


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                out.append(int(d.name))
    return out


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rcompile", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids to SIGKILL after the test if still alive (only on failure: nothing is left)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for p in [*children(pid), pid]:  # workers first: they may outlive their parent
            if not gone(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigint_and_sigterm_end_a_build_with_one_line_and_no_output(
        big: tuple[Path, Path], tmp_path: Path, reaper: list[int]) -> None:
    model, chip = big
    runs = []
    for sig, when in [(signal.SIGINT, "solving"), (signal.SIGTERM, "solving"),
                      (signal.SIGINT, "start-up")]:
        proc = start("build", model, "--faultmap", chip, "-o", tmp_path / f"{sig.name}.rimg")
        reaper.append(proc.pid)
        runs.append((sig, when, proc))
    for sig, when, proc in reversed(runs):  # start-up first: it is over in a second
        if when == "start-up":  # importing the command line (onnx, onnxruntime) takes ~1-2 s
            time.sleep(0.8)
        else:  # the per-chip stage solves blocks in forked workers: interrupt it there
            assert wait_for(lambda p=proc: bool(children(p.pid)) or p.poll() is not None, 60)
        workers = children(proc.pid)
        reaper.extend(workers)
        proc.send_signal(sig)
        stdout, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, (when, err)
        assert err == f"rcompile: interrupted by {sig.name}; stopped without a partial output\n"
        assert stdout == ""
        assert wait_for(lambda w=workers: all(gone(p) for p in w), 10), "solver workers left"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no image, no temporary


# ------------------------------------------------------------------------------------------------
# Provisioning: workers, leftovers, a bad map first
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_lot_workers_die_with_a_killed_parent_and_with_an_interrupted_one(
        big: tuple[Path, Path], tmp_path: Path, reaper: list[int]) -> None:
    model, chip = big
    lot = tmp_path / "lot"
    lot.mkdir()
    for i in range(4):
        (lot / f"c{i}.npz").symlink_to(chip)
    runs = {}
    for how in ("SIGKILL", "SIGTERM"):
        proc = start("provision", model, "--faultmap-dir", lot, "-o", tmp_path / how, "-j", "2")
        reaper.append(proc.pid)
        runs[how] = proc
    for how, proc in runs.items():
        assert wait_for(lambda p=proc: len(children(p.pid)) >= 2 or p.poll() is not None, 90)
        workers = children(proc.pid)
        reaper.extend(workers)
        assert len(workers) >= 2
        time.sleep(0.3)  # the workers are compiling their first chip (many seconds each)
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=60)
        assert wait_for(lambda w=workers: all(gone(p) for p in w), 5), f"{how}: workers left"
        if how == "SIGTERM":
            assert proc.returncode == 143
            assert err.splitlines()[-1] == ("rcompile: interrupted by SIGTERM; stopped without "
                                            "a partial output")
            assert not [p for p in (tmp_path / how).iterdir() if TEMPORARY.match(p.name)]
        else:
            assert proc.returncode == -signal.SIGKILL


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_resume_removes_what_a_dead_run_left(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = dead_pid()
    left = [f".report.jsonl.{dead}.0123abcd.tmp", f".chip000.rimg.{dead}.deadbeef.tmp",
            f".rcompile-probe.{dead}.00ff00ff.tmp"]
    live = f".chip001.rimg.{os.getppid()}.cafef00d.tmp"  # another run, still writing
    for name in [*left, live]:
        (out / name).write_bytes(b"half a file")
    (out / "notes.tmp").write_text("not ours: kept")
    summary = prov.provision(str(world.model), str(world.lot), str(out), jobs=1)
    assert (summary.ok, summary.errors) == (2, 0)
    names = {p.name for p in out.iterdir()}
    assert not names & set(left), names
    assert {live, "notes.tmp", "report.jsonl", "chip000.rimg", "chip001.rimg"} <= names


@pytest.mark.parametrize("bad", ["tiles", "levels"])
def test_a_map_of_another_family_sorted_first_fails_alone(world: World, tmp_path: Path,
                                                           bad: str) -> None:
    lot, out = tmp_path / "lot", tmp_path / "out"
    lot.mkdir()
    for p in world.lot.iterdir():
        (lot / p.name).write_bytes(p.read_bytes())
    odd = (fmap.synth(5, 64, 64, 0.02, (5, 1), 9) if bad == "tiles"
           else fmap.FaultMap(fmap.synth(5, 128, 128, 0.02, (5, 1), 9).faults, chip_id="lv",
                             levels=8))
    fmap.save(odd, lot / "a-odd.npz")  # sorts before chip000.npz
    code, stdout, err = run("provision", world.model, "--faultmap-dir", lot, "-o", out, "-j", "1")
    assert code == 1 and "1 of 3 chips failed (first: a-odd.npz" in err.splitlines()[-1]
    lines = {x["faultmap"]: x for x in prov.read_report(str(out / prov.REPORT)).values()}
    assert lines["a-odd.npz"]["status"] == "error"
    assert ("64x64" if bad == "tiles" else "--levels 8") in lines["a-odd.npz"]["message"]
    assert [lines[f"chip00{i}.npz"]["status"] for i in range(2)] == ["ok", "ok"]


def test_an_interrupt_inside_a_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rcompile import fileio
    from rcompile.interrupts import Interrupted

    target = tmp_path / "chip.rimg"
    target.write_bytes(b"the old image")

    def interrupted_fsync(fd: int) -> None:
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(fileio.os, "fsync", interrupted_fsync)
    with pytest.raises(Interrupted):
        fileio.atomic_write(target, b"half of a new image")
    assert [p.name for p in tmp_path.iterdir()] == ["chip.rimg"]
    assert target.read_bytes() == b"the old image"
    assert not fileio._WRITING
