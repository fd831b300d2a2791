"""Compiler passes, one module each, in pipeline order (installed as ``rcompile.passes``).

Chip-independent: prune (optional), quantize, tile, pack. Per chip: place, pair, permute,
spare, strip, transform (the MT baseline), program, covariance, calibrate.
"""

from rcompile.passes import (
    calibrate,
    covariance,
    pack,
    pair,
    permute,
    place,
    program,
    prune,
    quantize,
    spare,
    strip,
    tile,
    transform,
)

__all__ = [
    "prune",
    "quantize",
    "tile",
    "pack",
    "place",
    "pair",
    "permute",
    "spare",
    "strip",
    "transform",
    "program",
    "covariance",
    "calibrate",
]
