"""``rcompile`` command line: a click group of thin commands over :mod:`rcompile.api`.

Domain errors (:class:`~rcompile.errors.RcompileError`) are caught once, in :func:`main`, and
become one line on stderr and a non-zero exit; so do SIGINT and SIGTERM (exit 130 / 143,
:mod:`rcompile.interrupts`). Output files are written atomically, and every command refuses an
output that is the same file as one of its inputs (:func:`rcompile.fileio.refuse_overwrite`),
before any work. The promises and exit codes: ``docs/reliability.md``; the option vocabulary
and the JSON envelope every ``--json`` document carries: :mod:`rcompile.clikit`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click
import numpy as np

from rcompile import __version__, api, interrupts, runtime, solvers
from rcompile import faultmap as fmap
from rcompile import image as rimg
from rcompile.clikit import emit, error_json, exit_code_table, option
from rcompile.clioptions import (
    device_file,
    device_option,
    device_sizing,
    jobs_option,
    json_option,
    load_device,
    mode_options,
    prune_option,
    solver_options,
    strategy_option,
)
from rcompile.cliprogress import erase_announcement, progress_options, reporter
from rcompile.data import load_data
from rcompile.errors import RcompileError
from rcompile.faultmap_cli import RATIO, faultmap
from rcompile.fileio import refuse_overwrite
from rcompile.pipeline import SolverOptions
from rcompile.pipeline import parse as parse_pipeline
from rcompile.plot_cli import plot_cmd
from rcompile.progress import Event


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=exit_code_table())
@click.version_option(__version__, prog_name="rcompile")
def cli() -> None:
    """Per-chip compiler for ReRAM crossbar chips with stuck-at faults."""


cli.add_command(faultmap)
cli.add_command(plot_cmd)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--faultmap", "faultmap_path", required=True, type=click.Path(dir_okay=False),
              help="The chip's measured fault map (.npz).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Image to write [default: <fault map name>.rimg in the current directory].")
@strategy_option
@click.option("--pipeline",
              help="Explicit per-chip pipeline, e.g. 'place,permute{rounds=2},program' "
              "(instead of --strategy).")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Calibration data (.npz): weights rows by E[x^2]; cancels mean error in "
              "the bias.")
@prune_option
@solver_options
@device_option
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="Reuse a saved plan of MODEL (from 'rcompile plan') instead of re-planning.")
@jobs_option("for the solver passes")
@progress_options
@json_option
@click.pass_context
def build(ctx: click.Context, model: str, faultmap_path: str, output: str | None, strategy: str,
          pipeline: str | None, calib: str | None, prune: str | None, time_limit: float,
          solver_seed: int, device_spec: str | None, plan_path: str | None, jobs: int,
          quiet: bool, verbose: bool, as_json: bool) -> None:
    """Compile MODEL for one chip and write its programming image."""
    shown = reporter("build", quiet, verbose)
    if pipeline is not None and ctx.get_parameter_source("strategy") not in (
            click.core.ParameterSource.DEFAULT, None):
        raise click.BadParameter("--pipeline replaces --strategy; give one of them",
                                 param_hint="'--pipeline'")
    out = output or os.path.splitext(os.path.basename(faultmap_path))[0] + ".rimg"
    refuse_overwrite([("-o" if output else "the default image", out)],
                     [("MODEL", model), ("--faultmap", faultmap_path), ("--calib", calib),
                      ("--plan", plan_path), ("--device", device_file(device_spec))])
    if plan_path is not None and (prune is not None or calib is not None):
        raise click.BadParameter("a saved plan already fixes pruning and calibration; "
                                 "drop --prune/--calib", param_hint="'--plan'")
    if pipeline is not None:
        api.chip_pipeline(pipeline)  # a bad pipeline string fails before any file is read
    hw = load_device(device_spec)
    with shown, solvers.limited(jobs):
        shown(Event("read", "fault map", 0, 1))
        t0 = time.perf_counter()
        fm = fmap.load(faultmap_path)
        shown(Event("read", "fault map", 1, 1, time.perf_counter() - t0))
        res = api.compile_chip(model, fm, plan_path=plan_path, calib_path=calib, prune=prune,
                               strategy=strategy, pipeline=pipeline, hardware=hw, progress=shown,
                               solver=SolverOptions(time_limit_s=time_limit, seed=solver_seed))
        rimg.write(res.image, out)
    for w in res.warnings:
        click.echo(f"rcompile: warning: {w}", err=True)
    plan, geo = res.plan, fm.geometry
    assert plan is not None
    report = {
        "image": out,
        "chip_id": fm.chip_id,
        "strategy": res.image.header["strategy"],
        "pipeline": res.image.header["pipeline"],
        "tiles_used": len(res.image.tiles),
        "tiles_on_chip": geo.tiles,
        "tiles": geo.tiles,  # deprecated spelling of tiles_on_chip, kept one release
        "calibrated": bool(res.image.header["options"]["calibrated"]),
        "crossbar": [{**e, "weight_shape": e["shape"]} for e in api.utilisation(plan, res.image)],
        "warnings": res.warnings,
        "digital": [{"node": n, "op_type": t, "reason": r} for n, t, r in plan.digital],
        "passes": res.log,
        "plan_seconds": res.plan_seconds,
        "chip_seconds": res.chip_seconds,
    }
    if as_json:
        emit(report, {"model": model, "faultmap": faultmap_path, "calib": calib,
                      "plan": plan_path, "device": device_file(device_spec)})
        return
    click.echo(f"wrote {out}: chip {fm.chip_id}, strategy {report['strategy']}, "
               f"{report['tiles_used']}/{geo.tiles} tiles")
    click.echo(f"crossbar: {len(plan.ops)} ops")
    width = min(40, max([len(op.node) for op in plan.ops] + [4]))
    opw = max([len(op.op_type) for op in plan.ops] + [7])
    if plan.ops:
        click.echo(f"  {'node':<{width}} {'op':<{opw}} {'weight':<16} {'groups':>6} "
                   f"{'tiles':>5} {'cells used':>10}")
    for entry in report["crossbar"]:
        shape = "x".join(map(str, entry["shape"]))
        click.echo(f"  {entry['node']:<{width}} {entry['op_type']:<{opw}} {shape:<16} "
                   f"{entry['groups']:>6} {entry['tiles']:>5} "
                   f"{100 * entry['cell_utilisation']:>9.1f}%")
    click.echo(f"digital: {len(plan.digital)} ops")
    by_reason: dict[str, list[tuple[str, str]]] = {}
    for name, op_type, reason in plan.digital:
        by_reason.setdefault(reason, []).append((name, op_type))
    for reason, nodes in by_reason.items():
        if reason == "not a weight op":  # the bulk: count by op type
            counts: dict[str, int] = {}
            for _, op_type in nodes:
                counts[op_type] = counts.get(op_type, 0) + 1
            items = [f"{t} x{c}" if c > 1 else t for t, c in counts.items()]
        else:  # the interesting ones: name them
            items = [f"{n} ({t})" for n, t in nodes[:5]]
            items += [f"+{len(nodes) - 5} more"] if len(nodes) > 5 else []
        click.echo(f"  {reason}: {', '.join(items)}")
    click.echo("passes:")
    for p in res.log:
        extra = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in p.items() if k not in ("pass", "seconds"))
        click.echo(f"  {p['pass']:<10} {p['seconds'] * 1000:8.1f} ms  {extra}")
    click.echo(f"per-chip stage {res.chip_seconds:.3f} s (plan {res.plan_seconds:.3f} s)")


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--faultmap", "faultmap_path", required=True, type=click.Path(dir_okay=False),
              help="Fault map of the chip (the one compiled against, or a re-measurement).")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Evaluation data (.npz): one array per model input, optional 'labels'.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="Original float model: also report its accuracy.")
@click.option("--allow-remeasured", is_flag=True,
              help="Accept a fault map of the same chip that differs from the compiled one.")
@device_option
@mode_options
@progress_options
@json_option
def verify(image: str, faultmap_path: str, data_path: str, model_path: str | None,
           allow_remeasured: bool, device_spec: str | None, mode: str, noise_seed: int,
           quiet: bool, verbose: bool, as_json: bool) -> None:
    """Emulate the programmed chip and report how well it does."""
    shown = reporter("verify", quiet, verbose)
    with shown:
        rep = _verify(image, faultmap_path, data_path, model_path, allow_remeasured,
                      load_device(device_spec), mode, noise_seed, shown)
    d = rep.to_dict()
    if as_json:
        emit(d, {"image": image, "faultmap": faultmap_path, "data": data_path,
                 "model": model_path, "device": device_file(device_spec)})
        return
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f} %"
    click.echo(f"chip {rep.chip_id}: {rep.n_samples} samples, device {rep.device}, "
               f"{rep.mode} mode, noise seed {rep.noise_seed}")
    if rep.float_accuracy is not None:
        click.echo(f"  float model accuracy      {pct(rep.float_accuracy)}")
    if rep.device_agreement is not None and rep.mode != "ideal":  # the device's own floor
        click.echo(f"  {'fault-free, ideal cell':<26}{pct(rep.fault_free_accuracy)}")
        click.echo(f"  {'fault-free, ' + rep.device:<26}{pct(rep.device_fault_free_accuracy)}"
                   f" (this chip's reference; agreement with it {pct(rep.device_agreement)})")
    else:
        click.echo(f"  fault-free chip accuracy  {pct(rep.fault_free_accuracy)}")
    click.echo(f"  this chip accuracy        {pct(rep.accuracy)}")
    click.echo(f"  agreement                 {pct(rep.agreement)}")
    click.echo(f"  output cosine             {rep.output_cosine:.4f}")
    rel = rep.relative_output_error
    click.echo(f"  relative output error     {'n/a' if rel is None else f'{rel:.4f}'}")
    for layer in d["layers"]:
        err = layer["weight_rel_error"]
        click.echo(f"  {layer['node']:<40} weight rel. error "
                   f"{'n/a' if err is None else f'{err:.4f}'}, {layer['stuck_cells']} stuck cells")
    click.echo(f"  energy per inference      {(rep.energy_per_inference_j or 0) * 1e9:.3f} nJ, "
               f"latency {(rep.latency_per_inference_s or 0) * 1e6:.3f} us")
    for c in rep.energy:
        click.echo(f"    {c['node']:<38} {c['energy_j'] * 1e9:9.3f} nJ (cells "
                   f"{c['cell_j'] * 1e9:.3f}, ADC {c['adc_j'] * 1e9:.3f}, DAC "
                   f"{c['dac_j'] * 1e9:.3f}, digital {c['digital_j'] * 1e9:.3f}) "
                   f"{c['latency_s'] * 1e6:8.3f} us")
    t = rep.timing
    click.echo(f"  emulation {t['emulated_s']:.3f} s vs plain onnxruntime {t['reference_s']:.3f} s "
               f"({t['emulation_ratio'] or 0:.2f}x)")


def _verify(image: str, faultmap_path: str, data_path: str, model_path: str | None,
            allow_remeasured: bool, hw: Any, mode: str, noise_seed: int,
            shown: Any) -> runtime.Report:
    """Read the inputs of ``verify`` and emulate the chip, telling ``shown`` of each step."""
    shown(Event("verify", "read inputs", 0, 2))
    t0 = time.perf_counter()
    img = rimg.read(image)
    fm = fmap.load(faultmap_path)
    data = load_data(data_path, runtime.image_input_specs(img))
    ref = None
    if model_path is not None:
        from rcompile.frontend import load_model

        fe = load_model(model_path)
        if fe.sha256 != img.header.get("model_sha256"):
            raise RcompileError(f"{model_path}: not the model image {image} was compiled from")
        ref = fe.model
    shown(Event("verify", "read inputs", 1, 2, time.perf_counter() - t0))
    shown(Event("verify", "emulate", 1, 2))
    t0 = time.perf_counter()
    rep = runtime.verify(img, fm, data, allow_remeasured=allow_remeasured, reference_model=ref,
                         image_source=image, hardware=hw, mode=mode, noise_seed=noise_seed)
    shown(Event("verify", "emulate", 2, 2, time.perf_counter() - t0))
    return rep


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False))
@json_option
def inspect(image: str, as_json: bool) -> None:
    """Describe a programming image."""
    img = rimg.read(image)
    if as_json:
        emit(rimg.summary_dict(img), {"image": image})
    else:
        click.echo(rimg.describe(img))


def _csv(kind: type) -> Any:
    def parse(ctx: Any, param: Any, value: str) -> list[Any]:
        try:
            return [kind(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list") from None
    return parse


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Evaluation data (.npz): one array per model input, 'labels'.")
@option("--rate", "rates", deprecated=("--rates",), default="0.001,0.01,0.05,0.1,0.2,0.5",
        show_default=True, callback=_csv(float), help="Fault rates p (comma-separated).")
@option("--ratio", "ratios", deprecated=("--ratios",), default="5:1,1:5", show_default=True,
        callback=lambda c, p, v: [RATIO.convert(x, p, c) for x in v.split(",")],
        help="SA1:SA0 ratios (comma-separated).")
@option("--strategy", "strategies", deprecated=("--strategies",),
        default="two-column,differential,mt,full", show_default=True, callback=_csv(str),
        help="Strategies to compare (comma-separated).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fault-map seeds per point.")
@click.option("--spare", type=click.FloatRange(min=0), default=0.10, show_default=True,
              help="Extra tiles on every synthetic chip, as a fraction.")
@click.option("--rows", type=click.IntRange(min=1), default=128, show_default=True,
              help="Rows per tile of the synthetic chips.")
@click.option("--cols", type=click.IntRange(min=2), default=128, show_default=True,
              help="Columns per tile of the synthetic chips (even).")
@click.option("--calib", type=click.Path(dir_okay=False), help="Calibration data for 'full'.")
@click.option("--pattern", type=click.Choice(fmap.SYNTH_KINDS), default="uniform",
              show_default=True, help="Fault pattern of the synthetic chips (faultmap synth).")
@click.option("--pipeline", "pipelines", multiple=True, metavar="NAME=PIPELINE",
              help="A custom per-chip pipeline swept as strategy NAME (repeatable), e.g. "
                   "'strip=place{order=assign},permute,strip,program,calibrate'.")
@prune_option
@device_option
@click.option("--mode", type=click.Choice(runtime.MODES), default="auto", show_default=True,
              help="Emulation mode of every verification (see verify --mode).")
@solver_options
@jobs_option("for the solver passes")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write accuracy vs fault rate (PNG or SVG by extension).")
@click.option("--results", type=click.Path(dir_okay=False),
              help="Keep every finished point in this JSON-lines file; a rerun with the same "
              "arguments skips them (resumes) [default: PLOT's name with .points.jsonl, "
              "with --plot].")
@progress_options
@json_option
def sweep(model: str, data_path: str, rates: list[float], ratios: list[tuple[float, float]],
          strategies: list[str], seeds: int, spare: float, rows: int, cols: int,
          calib: str | None, pattern: str, pipelines: tuple[str, ...], prune: str | None,
          device_spec: str | None, mode: str, time_limit: float, solver_seed: int, jobs: int,
          plot: str | None, results: str | None, quiet: bool, verbose: bool,
          as_json: bool) -> None:
    """Accuracy against fault rate for several strategies on synthetic chips; resumable."""
    from rcompile.sweep import render_plot, run_sweep, table

    shown = reporter("sweep", quiet, verbose)

    custom: dict[str, str] = {}
    for item in pipelines:
        name, eq, spec = item.partition("=")
        if not eq or not name.strip() or not spec.strip():
            raise click.BadParameter(f"{item!r}: expected NAME=PIPELINE", param_hint="--pipeline")
        try:
            parse_pipeline(spec)
        except RcompileError as e:
            raise click.BadParameter(f"{item!r}: {e}", param_hint="--pipeline") from None
        custom[name.strip()] = spec.strip()
    strategies = strategies + [n for n in custom if n not in strategies]
    for s in strategies:
        if s not in api.STRATEGIES and s not in custom:
            raise click.BadParameter(f"unknown strategy {s!r}; known: {sorted(api.STRATEGIES)}")
    if results is None and plot is not None:
        results = os.path.splitext(plot)[0] + ".points.jsonl"
    inputs = [("MODEL", model), ("--data", data_path), ("--calib", calib),
              ("--device", device_file(device_spec))]
    refuse_overwrite([("--plot", plot), ("--results", results)], inputs)
    if plot is not None and results is not None and os.path.abspath(plot) == os.path.abspath(
            results):
        raise click.BadParameter("--results and --plot name the same file",
                                 param_hint="'--results'")
    hw = load_device(device_spec)
    solver = SolverOptions(time_limit_s=time_limit, seed=solver_seed)
    with shown, solvers.limited(jobs):
        result = run_sweep(model, data_path, rates=rates, ratios=ratios, strategies=strategies,
                           seeds=seeds, spare=spare, rows=rows, cols=cols, calib_path=calib,
                           prune=prune, progress=shown, hardware=hw, mode=mode,
                           pattern=pattern, pipelines=custom, solver=solver, results=results)
    if plot:
        render_plot(result, plot)
    if as_json:  # fault_free_accuracy: verify's name; quantised_accuracy kept one release
        emit({**result, "fault_free_accuracy": result["quantised_accuracy"]},
             {"model": model, "data": data_path, "calib": calib,
              "device": device_file(device_spec)})
    else:
        click.echo(table(result))


@cli.command("plan")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Plan file to write (.rplan).")
@click.option("--rows", type=click.IntRange(min=1), default=128, show_default=True,
              help="Rows per crossbar tile of the chip family.")
@click.option("--cols", type=click.IntRange(min=2), default=128, show_default=True,
              help="Columns per crossbar tile (even).")
@click.option("--levels", type=click.IntRange(min=2, max=256), default=16, show_default=True,
              help="Conductance levels per cell.")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Calibration data (.npz): its row statistics are saved with the plan.")
@click.option("--device", "device_spec", metavar="PRESET|FILE.toml",
              help="Plan for this device's cell (levels, conductances, programming error, bit "
              "slicing) and, unless --rows/--cols are given, its tile geometry.")
@prune_option
@progress_options
@json_option
@click.pass_context
def plan_cmd(ctx: click.Context, model: str, output: str, rows: int, cols: int, levels: int,
             calib: str | None, device_spec: str | None, prune: str | None, quiet: bool,
             verbose: bool, as_json: bool) -> None:
    """Make MODEL's chip-independent plan once, for 'build --plan' and 'provision --plan'."""
    from rcompile import planfile
    from rcompile.device import Cell

    shown = reporter("plan", quiet, verbose)
    cell, rows, cols = device_sizing(ctx, device_spec, rows, cols)
    if cell is not None and ctx.get_parameter_source("levels") is \
            click.core.ParameterSource.COMMANDLINE and levels != cell.levels:
        raise click.BadParameter(f"{levels} levels, but device {device_spec} has {cell.levels}; "
                                 "give one of them", param_hint="'--levels'")
    cell = cell or Cell(levels=levels)
    levels = cell.levels

    if cols % 2:
        raise click.BadParameter(f"{cols} is odd; expected an even column count "
                                 "(differential pairs)", param_hint="'--cols'")
    refuse_overwrite([("-o", output)], [("MODEL", model), ("--calib", calib),
                                         ("--device", device_file(device_spec))])
    t0 = time.perf_counter()
    with shown:
        plan, log = api.make_plan(model, tile_rows=rows, tile_cols=cols, progress=shown,
                                  device=cell, pipeline=api.plan_pipeline(prune))
        stats = None
        if calib is not None:
            shown(Event("calib", "statistics", 0, 1))
            t1 = time.perf_counter()
            stats = api.load_calib_stats(plan, calib)
            shown(Event("calib", "statistics", 1, 1, time.perf_counter() - t1))
        planfile.write(output, plan, stats)
    size = os.path.getsize(output)
    info: dict[str, Any] = {"plan": output, "model_sha256": plan.model_sha256, "tile_rows": rows,
            "tile_cols": cols, "levels": levels, "crossbar_ops": len(plan.ops),
            "blocks": len(plan.blocks), "calibrated": stats is not None,
            "bytes": size, "seconds": time.perf_counter() - t0,
            "passes": log}
    if as_json:
        emit(info, {"model": model, "calib": calib})
        return
    click.echo(f"wrote {output}: {len(plan.ops)} crossbar ops in {len(plan.blocks)} blocks of "
               f"{rows}x{cols}, {levels} levels{', calibrated' if stats is not None else ''} "
               f"({size / 1e6:.1f} MB, {info['seconds']:.2f} s)")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@option("--faultmap-dir", "faultmaps_dir", deprecated=("--faultmaps",), required=True,
        type=click.Path(file_okay=False),
        help="Directory of the lot's fault maps (*.npz), one per chip.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the images (NAME.rimg) and report.jsonl.")
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Local worker processes (0: one per core).")
@strategy_option
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="Reuse a saved plan of MODEL (from 'rcompile plan').")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Calibration data (.npz) when no --plan is given.")
@option("--data", "verify_data", deprecated=("--verify-data",), type=click.Path(dir_okay=False),
        help="Evaluation data (.npz): verify every image and report its accuracy.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="With --data: bin "
              "each chip pass/fail against this accuracy (0..1) in its report line.")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local",
              show_default=True, help="Run chips in local processes or on a dask cluster.")
@click.option("--scheduler", help="dask.distributed scheduler address (with --executor dask).")
@solver_options
@device_option
@mode_options
@progress_options
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON summary at the end (errors: one JSON object on stderr).")
def provision(model: str, faultmaps_dir: str, out_dir: str, jobs: int, strategy: str,
              plan_path: str | None, calib: str | None, verify_data: str | None,
              min_accuracy: float | None, executor: str,
              scheduler: str | None, time_limit: float, solver_seed: int,
              device_spec: str | None, mode: str, noise_seed: int, quiet: bool, verbose: bool,
              as_json: bool) -> None:
    """Compile every chip of a lot: plan once, chips in parallel, resumable, one report line
    per chip in OUTDIR/report.jsonl."""
    from rcompile import provision as prov

    shown = reporter("provision", quiet, verbose)

    if executor == "dask" and not scheduler:
        raise click.BadParameter("--executor dask needs --scheduler ADDRESS",
                                 param_hint="'--scheduler'")
    if scheduler and executor != "dask":
        raise click.BadParameter("--scheduler is only for --executor dask",
                                 param_hint="'--scheduler'")
    if plan_path is not None and calib is not None:
        raise click.BadParameter("a saved plan already fixes calibration; drop --calib",
                                 param_hint="'--plan'")
    if min_accuracy is not None and verify_data is None:
        raise click.BadParameter("needs --data", param_hint="'--min-accuracy'")
    maps = prov.find_faultmaps(faultmaps_dir)
    prov.check_outputs(model, maps, out_dir, plan_path=plan_path, calib_path=calib,
                       verify_data=verify_data, device_file=device_file(device_spec))
    hw = load_device(device_spec)
    prov.check_writable(out_dir)  # fail before the progress bar starts
    total = len(maps)
    finished = [0]

    def chip_done(line: dict[str, Any]) -> None:
        finished[0] += 1
        shown(Event("provision", f"{line['faultmap']} {line['status']}", finished[0], total,
                    float(line.get("seconds", 0.0))))

    with shown:
        shown(Event("provision", "start", 0, total))
        summary = prov.provision(
            model, faultmaps_dir, out_dir, jobs=jobs, strategy=strategy, plan_path=plan_path,
            calib_path=calib, verify_data=verify_data, executor=executor, scheduler=scheduler,
            solver=SolverOptions(time_limit_s=time_limit, seed=solver_seed),
            progress=chip_done, hardware=hw, mode=mode, noise_seed=noise_seed,
            min_accuracy=min_accuracy,
        )
    if as_json:
        emit(summary.to_dict(), {"model": model, "faultmap_dir": faultmaps_dir,
                                 "plan": plan_path, "calib": calib, "data": verify_data,
                                 "device": device_file(device_spec)})
    else:
        rate = summary.chips / summary.seconds * 3600 if summary.seconds else 0.0
        click.echo(f"{summary.chips} chips: {summary.ok} compiled, {summary.skipped} already "
                   f"done, {summary.errors} failed in {summary.seconds:.1f} s "
                   f"({rate:.0f} chips/hour); report {summary.report}")
        if min_accuracy is not None:
            click.echo(f"{summary.passed} passed, {summary.failed} failed min accuracy "
                       f"{100 * min_accuracy:g} %")
    if summary.errors:
        failed = [x for x in summary.lines if x.get("status") == "error"]
        raise RcompileError(f"{summary.errors} of {summary.chips} chips failed (first: "
                            f"{failed[0]['faultmap']}: {failed[0].get('message')}); "
                            f"see {summary.report}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one stderr line and a non-zero exit for every domain error, and for
    SIGINT / SIGTERM (exit 130 / 143, see :mod:`rcompile.interrupts`)."""
    try:
        with interrupts.catching():
            _run(argv)
            interrupts.check()
    except interrupts.Interrupted as e:
        interrupts.stop(e)


def _run(argv: list[str] | None) -> None:
    args = sys.argv[1:] if argv is None else argv
    as_json = "--json" in args

    def fail(message: str, code: int, kind: str) -> None:
        if as_json:
            click.echo(error_json(message, code, kind), err=True)
        else:
            click.echo(f"rcompile: error: {message}", err=True)
        sys.exit(code)

    try:
        try:
            cli.main(args=argv, prog_name="rcompile", standalone_mode=False)
        finally:  # a command that failed before its progress began: errors start at the margin
            erase_announcement(sys.stderr)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        if not as_json:
            e.show()
            sys.exit(e.exit_code)
        fail(e.format_message(), e.exit_code, type(e).__name__)
    except click.exceptions.Abort:
        if not as_json:
            click.echo("rcompile: aborted", err=True)
            sys.exit(130)
        fail("aborted", 130, "Abort")
    except RcompileError as e:
        fail(str(e), e.exit_code, type(e).__name__)
    except OSError as e:
        name = f"{e.filename}: " if e.filename else ""
        fail(f"{name}{e.strerror or e}", 1, "OSError")
    except np.linalg.LinAlgError as e:
        fail(f"numerical failure: {e}", 1, "LinAlgError")
