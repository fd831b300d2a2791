"""The notebook API: paths or objects alike, results with to_dict/plot, and docs/api.md runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from matplotlib.figure import Figure

import rcompile
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile import notebook
from rcompile.data import dataset_from_arrays, input_specs
from rcompile.errors import BadData, BadFaultMap, RcompileError
from tests.conftest import ROOT, conv_bn_gemm

PNG = b"\x89PNG\r\n\x1a\n"


def _data(model: onnx.ModelProto, n: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 4, 6, 6)).astype(np.float32),
            "labels": rng.integers(0, 5, n).astype(np.int64)}


def test_import_rcompile_is_cheap_and_the_api_is_there() -> None:
    code = ("import sys, rcompile; print(sorted(m for m in ('rcompile.notebook', 'onnx', "
            "'matplotlib', 'onnxruntime') if m in sys.modules)); print(callable(rcompile.compile))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split("\n")
    assert out[0] == "[]"            # nothing heavy until the API is used
    assert out[1] == "True"
    assert set(rcompile.__all__) >= {"compile", "verify", "sweep", "load_faultmap",
                                     "synth_faultmap", "load_image"}
    assert "compile" in dir(rcompile)


def test_api_names_stay_functions_after_the_same_named_modules_load() -> None:
    import rcompile.sweep  # noqa: F401  (binds the module onto the package)
    from rcompile.sweep import run_sweep

    assert rcompile.sweep is notebook.sweep
    assert rcompile.verify is notebook.verify
    assert callable(run_sweep)


def test_no_code_reaches_a_module_the_api_name_shadows() -> None:
    """``from rcompile import sweep`` and ``import rcompile.sweep as x`` give the notebook
    function, not the module: the code base must import such modules by their full path."""
    shadowed = "|".join(n for n in rcompile.__all__ if n[0].islower() and n != "__version__")
    bad = re.compile(rf"^\s*(from rcompile import .*\b({shadowed})\b|import rcompile\.({shadowed})"
                     rf"\s+as\b)", re.M)
    hits = []
    for folder in ("rcompile", "passes", "tests", "benchmarks", "examples"):
        for path in Path(ROOT, folder).rglob("*.py"):
            hits += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
                     for m in bad.finditer(path.read_text(encoding="utf-8"))]
    assert hits == []


def test_paths_and_objects_give_the_same_image_and_report(tmp_path: Path) -> None:
    model = conv_bn_gemm(seed=3)  # nobody trained it; symbolic batch dim "N"
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    chip = rcompile.synth_faultmap(model=model, rows=16, cols=16, rate=0.05, seed=2)
    fm_path = str(tmp_path / "chip.npz")
    fmap.save(chip, fm_path)
    device = tmp_path / "small.toml"
    device.write_text('base = "ideal"\nname = "small"\ntile_rows = 16\ntile_cols = 16\n')
    from_objects = rcompile.compile(model, chip, strategy="differential",
                                    hardware=rcompile.load_hardware(device))
    events: list[Any] = []
    from_paths = rcompile.compile(path, fm_path, strategy="differential", hardware=device,
                                  progress=events.append)
    assert rimg.encode(from_objects.image) == rimg.encode(from_paths.image)
    finished = [e.name for e in events if e.stage == "chip" and e.seconds is not None]
    assert finished == [p["pass"] for p in from_paths.to_dict()["log"][3:]], events
    assert from_objects.image.header["hardware"]["name"] == "small"
    from_objects.save(tmp_path / "chip.rimg")

    arrays = _data(model)
    np.savez(tmp_path / "data.npz", **arrays)
    dataset = dataset_from_arrays(arrays, input_specs(model))
    reports = [
        rcompile.verify(from_objects, chip, arrays),
        rcompile.verify(from_objects.image, fm_path, dataset),
        rcompile.verify(tmp_path / "chip.rimg", chip, tmp_path / "data.npz", model=path),
    ]
    accs = {r.accuracy for r in reports}
    assert len(accs) == 1 and None not in accs
    assert reports[2].to_dict()["float_accuracy"] is not None
    d = from_paths.to_dict()
    assert d["totals"]["tiles_used"] == len(from_paths.image.tiles)
    assert [p["pass"] for p in d["log"]][:3] == ["quantize", "tile", "pack"]


def test_results_plot_figures_without_pyplot(tmp_path: Path) -> None:
    model = conv_bn_gemm(seed=1)
    chip = rcompile.synth_faultmap(model=model, rows=16, cols=16, rate=0.1)
    built = rcompile.compile(model, chip, strategy="mt")
    check = rcompile.verify(built, chip, _data(model))
    for result, kinds in ((built, ("placement", "levels", "faults")),
                          (check, ("layers", "energy"))):
        for kind in kinds:
            fig = result.plot(kind)  # type: ignore[attr-defined]
            assert isinstance(fig, Figure) and fig.axes
    built.plot("placement", path=tmp_path / "placement.png")
    assert (tmp_path / "placement.png").read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="unknown plot kind 'nope'; expected one of layers"):
        check.plot("nope")


def test_bad_inputs_raise_the_library_errors(tmp_path: Path) -> None:
    model = conv_bn_gemm()
    chip = rcompile.synth_faultmap(model=model, rows=16, cols=16, rate=0.0)
    with pytest.raises(RcompileError, match="give tiles, or a model"):
        rcompile.synth_faultmap()
    with pytest.raises(BadFaultMap, match="no such file"):
        rcompile.load_faultmap(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="expected a path or onnx.ModelProto"):
        rcompile.compile(42, chip)  # type: ignore[arg-type]
    built = rcompile.compile(model, chip, strategy="two-column")
    with pytest.raises(BadData, match="lacks|missing|input"):
        rcompile.verify(built, chip, {"y": np.zeros((2, 5), np.float32)})
    with pytest.raises(RcompileError, match="not the model the image was compiled from"):
        rcompile.verify(built, chip, _data(model), model=conv_bn_gemm(seed=9))
    with pytest.raises(RcompileError, match="unknown strategy 'best'"):
        rcompile.sweep(model, _data(model), strategies=["best"])


def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_docs_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """Every python block of docs/api.md, in order, in one namespace, from a scratch directory
    that sees the repository's examples/ (so the page's paths hold)."""
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        blocks = _code_blocks(f.read())
    assert len(blocks) >= 4
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs_api"}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "this chip" in out and "| SA1:SA0 |" in out
    assert rimg.read("chip.rimg").header["strategy"] == "full"
    for name in ("placement.png", "layer-error.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
    for name in ("levels.svg", "energy.svg", "sweep.svg"):
        assert b"<svg" in (tmp_path / name).read_bytes()[:400]
