"""``rcompile plot KIND INPUTS... -o FILE``: any of :mod:`rcompile.plots`' figures from the files
the other commands write, PNG or SVG by the extension of ``FILE``."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from rcompile import plots
from rcompile.errors import RcompileError
from rcompile.fileio import refuse_overwrite

KINDS: dict[str, tuple[str, int, int]] = {
    "sweep": ("SWEEP.json (from 'sweep --json')", 1, 1),
    "faults": ("FAULTMAP.npz", 1, 1),
    "overview": ("FAULTMAP.npz", 1, 1),
    "placement": ("IMAGE.rimg [FAULTMAP.npz]", 1, 2),
    "levels": ("IMAGE.rimg", 1, 1),
    "layers": ("VERIFY.json (from 'verify --json')", 1, 1),
    "energy": ("VERIFY.json (from 'verify --json')", 1, 1),
    "lot": ("OUTDIR or OUTDIR/report.jsonl (from 'provision')", 1, 1),
}
"""Each kind: the inputs it reads, and how few and how many of them."""

DOCUMENTS = {"sweep": "sweep --json", "layers": "verify --json", "energy": "verify --json",
             "lot": "provision"}
"""The kinds drawn from a JSON document, and the command that writes it."""

MAX_JSON_BYTES = 64 << 20
"""Largest JSON document read (a sweep or verify report is a few kilobytes)."""


def _epilog() -> str:
    return "\b\nKINDS and their INPUTS:\n" + "\n".join(
        f"  {k:<10} {text}" for k, (text, _, _) in KINDS.items())


@click.command("plot", epilog=_epilog())
@click.argument("kind", type=click.Choice(list(KINDS)))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Picture to write: .png or .svg.")
@click.option("--tiles", metavar="I,J,...", help="faults: the tiles to draw (default: the "
              f"first {plots.MAX_TILES}).")
@click.option("--min-accuracy", type=click.FloatRange(0, 1),
              help="lot: the pass/fail threshold (default: the one the report records).")
def plot_cmd(kind: str, inputs: tuple[str, ...], output: str, tiles: str | None,
             min_accuracy: float | None) -> None:
    """Draw one picture of KIND from INPUTS (listed below) into the -o FILE (.png or .svg)."""
    text, low, high = KINDS[kind]
    if not low <= len(inputs) <= high:
        raise click.BadParameter(f"{kind} takes {text}; got {len(inputs)} input(s)",
                                 param_hint="INPUTS")
    if os.path.splitext(output)[1].lower() not in plots.FORMATS:
        raise click.BadParameter(f"{output}: expected a file name ending in "
                                 f"{' or '.join(plots.FORMATS)}", param_hint="'-o'")
    refuse_overwrite([("-o", output)], [(f"INPUT {i + 1}", p) for i, p in enumerate(inputs)])
    try:
        fig = _figure(kind, list(inputs), _tile_list(tiles), min_accuracy)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if kind not in DOCUMENTS:  # a file reader's own checks name what is wrong
            raise
        raise RcompileError(f"{inputs[0]}: malformed {kind} document ({type(e).__name__}: "
                            f"{str(e)[:80]}); expected what 'rcompile {DOCUMENTS[kind]}' "
                            "writes") from None
    plots.save(fig, output, what=f"{kind} plot")
    click.echo(f"wrote {kind} plot {output}")


def _figure(kind: str, inputs: list[str], tiles: list[int] | None,
            min_accuracy: float | None) -> Any:
    from rcompile import faultmap as fmap
    from rcompile import image as rimg

    if kind == "sweep":
        return plots.sweep_figure(_document(inputs[0], ("points", "float_accuracy"), "sweep"))
    if kind in ("layers", "energy"):
        doc = _document(inputs[0], (kind,), "verify")
        return plots.layer_error_figure(doc) if kind == "layers" else plots.energy_figure(doc)
    if kind == "faults":
        return plots.heatmap_figure(fmap.load(inputs[0]), tiles)
    if kind == "overview":
        return plots.overview_figure(fmap.load(inputs[0]))
    if kind == "placement":
        fm = fmap.load(inputs[1]) if len(inputs) > 1 else None
        return plots.placement_figure(rimg.read(inputs[0]), fm)
    if kind == "levels":
        return plots.levels_figure(rimg.read(inputs[0]))
    path = inputs[0]
    if os.path.isdir(path):
        path = os.path.join(path, "report.jsonl")
    return plots.lot_figure(plots.read_lot(path), min_accuracy)


def _tile_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected tile indices like 0,3,7",
                                 param_hint="'--tiles'") from None


def _document(path: str, keys: tuple[str, ...], command: str) -> dict[str, Any]:
    """The JSON object in ``path``, which must hold ``keys`` (what ``command --json`` prints)."""
    expected = f"expected the JSON object of 'rcompile {command} --json'"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise RcompileError(f"{path}: cannot read ({e.strerror or e}); {expected}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise RcompileError(f"{path}: larger than {MAX_JSON_BYTES} bytes; {expected}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RcompileError(f"{path}: not JSON ({str(e).splitlines()[0]}); {expected}") from None
    if not isinstance(doc, dict) or any(k not in doc for k in keys):
        missing = [k for k in keys if not isinstance(doc, dict) or k not in doc]
        raise RcompileError(f"{path}: lacks {', '.join(missing)}; {expected}")
    return doc
