"""Options several ``rcompile`` commands share, declared once so they read the same
everywhere (names, help, defaults): strategy, solver, parallelism, emulation mode, JSON, prune
and device."""

from __future__ import annotations

from typing import Any

import click

from rcompile import api, runtime
from rcompile.clikit import option


def strategy_option(f: Any) -> Any:
    return click.option(
        "--strategy",
        type=click.Choice(sorted(api.STRATEGIES)),
        default=api.DEFAULT_STRATEGY,
        show_default=True,
        help="Mapping strategy (baselines two-column, differential, mt; or full).",
    )(f)


def solver_options(f: Any) -> Any:
    f = click.option("--time-limit", type=click.FloatRange(min=0.01), default=10.0,
                     show_default=True, help="Seconds allowed to one solver call.")(f)
    f = option("--solver-seed", "solver_seed", deprecated=("--seed",), type=int, default=0,
               show_default=True, help="Solver random seed.")(f)
    return f


def jobs_option(what: str) -> Any:
    def deco(f: Any) -> Any:
        return click.option("-j", "--jobs", type=click.IntRange(min=0), default=0,
                            show_default=True,
                            help=f"Worker processes {what} (0: RCOMPILE_JOBS if set, else one "
                            "per core).")(f)
    return deco


def mode_options(f: Any) -> Any:
    f = click.option("--mode", type=click.Choice(runtime.MODES), default="auto",
                     show_default=True,
                     help="ideal: effective weights; tile: per-tile DAC, read noise and ADC as "
                     "ONNX; auto: tile when the device's periphery is not ideal.")(f)
    f = click.option("--noise-seed", type=int, default=0, show_default=True,
                     help="Seed of programming variation and read noise.")(f)
    return f


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object (errors: one JSON object on stderr).")(f)


def parse_prune(ctx: Any, param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    mode, _, amount = value.partition(":")
    try:
        frac = float(amount)
    except ValueError:
        frac = -1.0
    if mode not in ("magnitude", "rows", "cols") or not 0.0 <= frac <= 1.0:
        raise click.BadParameter(f"{value!r}: expected MODE:AMOUNT, MODE in magnitude|rows|cols, "
                                 "AMOUNT in 0..1 (e.g. magnitude:0.5)")
    return value


def prune_option(f: Any) -> Any:
    return click.option(
        "--prune", callback=parse_prune, metavar="MODE:AMOUNT",
        help="Post-training pruning before mapping: magnitude|rows|cols:FRACTION.",
    )(f)


def device_option(f: Any) -> Any:
    return click.option("--device", "device_spec", metavar="PRESET|FILE.toml",
                        help="Device model: a preset (ideal, neurosim) or a TOML device file "
                        "(docs/device.md).")(f)


def device_file(spec: str | None) -> str | None:
    """The file ``--device`` names (None for a preset or without the option)."""
    from rcompile.device import PRESETS

    return None if spec is None or spec in PRESETS else spec


def load_device(spec: str | None) -> Any:
    """The :class:`~rcompile.device.Hardware` of ``--device`` (None without it)."""
    from rcompile.device import load_hardware

    return None if spec is None else load_hardware(spec)


def device_sizing(
    ctx: click.Context, spec: str | None, rows: int, cols: int
) -> tuple[Any, int, int]:
    """The cell the compiler quantises for under ``--device`` (None without it) and the tile
    geometry: the device's, unless ``--rows``/``--cols`` were given."""
    if spec is None:
        return None, rows, cols
    from rcompile.device import load_hardware
    from rcompile.programming import compiler_device

    hw = load_hardware(spec)
    given = {n: ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE
             for n in ("rows", "cols")}
    return (compiler_device(hw), rows if given["rows"] else hw.tile_rows,
            cols if given["cols"] else hw.tile_cols)
