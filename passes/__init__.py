"""Compiler passes, one module each, in pipeline order (installed as ``rcompile.passes``).

Chip-independent: prune (optional), quantize, tile. Per chip: place, pair, permute,
transform (the MT baseline), program, calibrate.
"""

from rcompile.passes import (
    calibrate,
    pair,
    permute,
    place,
    program,
    prune,
    quantize,
    tile,
    transform,
)

__all__ = [
    "prune",
    "quantize",
    "tile",
    "place",
    "pair",
    "permute",
    "transform",
    "program",
    "calibrate",
]
