"""Compiler passes, one module each, in pipeline order (installed as ``rcompile.passes``).

Chip-independent: quantize, tile. Per chip: place, pair, permute, program, calibrate.
"""

from rcompile.passes import calibrate, pair, permute, place, program, quantize, tile

__all__ = ["quantize", "tile", "place", "pair", "permute", "program", "calibrate"]
