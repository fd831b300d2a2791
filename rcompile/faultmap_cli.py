"""``rcompile faultmap synth|import|show``: make, convert and inspect chip fault maps.

A thin shell over :mod:`rcompile.faultmap`. Commands raise :class:`~rcompile.errors.RcompileError`
on domain errors; the main ``rcompile`` group turns those into one stderr line and its exit code.
Attach with ``cli.add_command(faultmap)``.
"""

from __future__ import annotations

import math
from typing import Any

import click

from rcompile import faultmap as fmap
from rcompile.clikit import emit, option
from rcompile.clioptions import device_sizing
from rcompile.cliprogress import progress_options, reporter
from rcompile.fileio import refuse_overwrite


class RatioType(click.ParamType):
    """``A:B`` with A, B >= 0 and not both 0, e.g. ``5:1`` (SA1:SA0)."""

    name = "A:B"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        parts = str(value).split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            a, b = float(parts[0]), float(parts[1])
        except ValueError:
            self.fail(f"{value!r} is not of the form A:B (e.g. 5:1, SA1:SA0)", param, ctx)
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < 0 or a + b <= 0:
            self.fail(f"{value!r}: expected A, B >= 0 and not both 0", param, ctx)
        return (a, b)


RATIO = RatioType()


def _geometry_options(tiles_required: bool) -> Any:
    """``--tiles/--rows/--cols`` shared by ``synth`` and ``import``."""

    def deco(f: Any) -> Any:
        f = click.option(
            "--cols",
            type=click.IntRange(min=2),
            default=128,
            show_default=True,
            help="Columns per tile (even: outputs use differential pairs).",
        )(f)
        f = click.option(
            "--rows",
            type=click.IntRange(min=1),
            default=128,
            show_default=True,
            help="Rows per tile.",
        )(f)
        f = click.option(
            "--tiles",
            type=click.IntRange(min=1),
            required=tiles_required,
            default=None,
            help="Crossbar tiles on the chip.",
        )(f)
        return f

    return deco


def _check_even_cols(cols: int) -> None:
    if cols % 2:
        raise click.BadParameter(
            f"{cols} is odd; expected an even column count (differential pairs)",
            param_hint="'--cols'",
        )


@click.group("faultmap")
def faultmap() -> None:
    """Synthesise, import and inspect chip fault maps (.npz, docs/design.md §4)."""


@faultmap.command("synth")
@click.option(
    "--like",
    "model",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Size the chip for this ONNX model (tiles it needs, plus --spare).",
)
@_geometry_options(tiles_required=False)
@click.option(
    "--spare",
    type=click.FloatRange(min=0.0),
    default=0.10,
    show_default=True,
    help="With --like: extra tiles as a fraction of those the model needs (rounded up).",
)
@click.option("--device", "device_spec", metavar="PRESET|FILE.toml",
              help="With --like: size for this device's cell (a bit-sliced cell needs a tile "
              "per digit) and, unless --rows/--cols are given, its tile geometry.")
@click.option(
    "--rate",
    type=click.FloatRange(0.0, 1.0),
    required=True,
    help="Probability that a cell is stuck (0..1).",
)
@click.option(
    "--ratio",
    type=RATIO,
    default="5:1",
    show_default=True,
    help="SA1:SA0 ratio of the stuck cells.",
)
@click.option(
    "--kind",
    type=click.Choice(fmap.SYNTH_KINDS),
    default="uniform",
    show_default=True,
    help="uniform: iid cells; clustered: blobs; lines: whole rows/cols plus background.",
)
@option("--fault-seed", "seed", deprecated=("--seed",), type=int, default=0, show_default=True,
        help="Random seed of the stuck cells.")
@click.option("--chip-id", default=None, help="Chip id [default: synth-KIND-pRATE-sSEED].")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="Fault map to write."
)
@progress_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the show --json "
              "document of the written map).")
@click.pass_context
def synth_cmd(
    ctx: click.Context,
    model: str | None,
    tiles: int | None,
    rows: int,
    cols: int,
    spare: float,
    device_spec: str | None,
    rate: float,
    ratio: tuple[float, float],
    kind: str,
    seed: int,
    chip_id: str | None,
    output: str,
    quiet: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Write a synthetic fault map, sized by --tiles or by a model (--like)."""
    shown = reporter("faultmap synth", quiet, verbose)
    _check_even_cols(cols)
    refuse_overwrite([("-o", output)], [("--like", model)])
    spare_given = ctx.get_parameter_source("spare") is not click.core.ParameterSource.DEFAULT
    if model is None:
        if tiles is None:
            raise click.UsageError("give --tiles N or --like MODEL to size the chip")
        if spare_given:
            raise click.BadParameter("only applies with --like", param_hint="'--spare'")
        if device_spec is not None:
            raise click.BadParameter("only applies with --like", param_hint="'--device'")
        note = ""
    else:
        if tiles is not None:
            raise click.UsageError("--like and --tiles are mutually exclusive; give one of them")
        from rcompile.api import make_plan, spare_tiles

        cell, rows, cols = device_sizing(ctx, device_spec, rows, cols)
        with shown:  # the model's plan says how many tiles it needs
            needed = make_plan(model, tile_rows=rows, tile_cols=cols, device=cell,
                               progress=shown)[0].tiles_needed()
        tiles = spare_tiles(needed, spare)
        note = f" ({needed} tiles needed by {model}, +{spare:.0%} spare)"
    fm = fmap.synth(tiles, rows, cols, rate, ratio=ratio, seed=seed, kind=kind, chip_id=chip_id)
    fmap.save(fm, output)
    if as_json:
        emit({"output": output, **summary_json(fmap.load(output)),
              **({"tiles_needed": needed} if model is not None else {})}, {"model": model})
        return
    click.echo(f"wrote {output}: {_one_line(fm)}{note}")


@faultmap.command("import")
@click.argument("csv_path", metavar="CSV", type=click.Path(dir_okay=False))
@_geometry_options(tiles_required=True)
@click.option("--chip-id", default=None, help="Chip id [default: the CSV's file stem].")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="Fault map to write."
)
@progress_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the show --json "
              "document of the written map).")
def import_cmd(
    csv_path: str, tiles: int, rows: int, cols: int, chip_id: str | None, output: str,
    quiet: bool, verbose: bool, as_json: bool,
) -> None:
    """Convert a tester CSV (header tile,row,col,state; state 0/1/2 or SA0/SA1) to .npz."""
    shown = reporter("faultmap import", quiet, verbose)
    _check_even_cols(cols)
    refuse_overwrite([("-o", output)], [("CSV", csv_path)])
    with shown:
        fm = fmap.import_csv(csv_path, tiles, rows, cols, chip_id=chip_id, progress=shown)
        fmap.save(fm, output)
    if as_json:
        emit({"output": output, **summary_json(fmap.load(output))}, {"csv": csv_path})
        return
    click.echo(f"wrote {output}: {_one_line(fm)}")


@faultmap.command("show")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@option("--plot", "png", deprecated=("--png",), type=click.Path(dir_okay=False), default=None,
        help="Also write a heat map (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def show_cmd(path: str, png: str | None, as_json: bool) -> None:
    """Validate a fault map and print its totals and per-tile counts."""
    refuse_overwrite([("--plot", png)], [("FILE", path)])
    fm = fmap.load(path)
    if as_json:
        emit(summary_json(fm), {"faultmap": path})
    else:
        click.echo(fmap.summary_text(fm))
    if png is not None:
        fmap.render_heatmap(fm, png)
        click.echo(f"wrote heat map {png}", err=as_json)


def summary_json(fm: fmap.FaultMap) -> dict[str, Any]:
    """The ``show --json`` document: identity, geometry, totals and per-tile counts."""
    geo = fm.geometry
    cells_per_tile = geo.rows * geo.cols
    return {
        "file": fm.source,
        "chip_id": fm.chip_id,
        "sha256": fm.digest(),
        "geometry": {"tiles": geo.tiles, "rows": geo.rows, "cols": geo.cols},
        "device_overrides": fm.device_overrides(),
        "stuck_g": fm.stuck_g is not None,
        "counts": fm.counts(),
        "per_tile": [
            {"tile": t, "healthy": h, "sa0": s0, "sa1": s1, "rate": (s0 + s1) / cells_per_tile}
            for t, (h, s0, s1) in enumerate(fm.per_tile_counts().tolist())
        ],
    }


def _one_line(fm: fmap.FaultMap) -> str:
    geo = fm.geometry
    c = fm.counts()
    return (
        f"{fm.chip_id}, {geo.tiles}x{geo.rows}x{geo.cols}, {c['sa0'] + c['sa1']} stuck "
        f"({c['rate']:.3%}; SA0 {c['sa0']}, SA1 {c['sa1']}), sha256 {fm.digest()[:12]}"
    )
