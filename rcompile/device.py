"""Device and chip-family parameters, with units in the field names.

A cell is programmed to one of ``levels`` conductances
``G(k) = g_min_us + k / (levels - 1) * (g_max_us - g_min_us)`` for ``k = 0 .. levels-1``.
The compiler works in *level units*: a weight is represented as ``scale * (k_pos - k_neg)``.
:func:`level_of_conductance` is the exact inverse of :func:`conductance_of_level`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rcompile.errors import BadDevice


@dataclass(frozen=True)
class Device:
    """One ReRAM cell technology; defaults match a typical 16-level 128x128 tile."""

    levels: int = 16
    """Number of programmable conductance levels per cell (>= 2)."""
    g_min_us: float = 1.0
    """Lowest conductance, high-resistance state, in microsiemens (what SA0 cells sit at)."""
    g_max_us: float = 100.0
    """Highest conductance, low-resistance state, in microsiemens (what SA1 cells sit at)."""
    read_v: float = 0.2
    """Read voltage applied to a row for a full-scale input, in volts."""

    def __post_init__(self) -> None:
        if self.levels < 2 or self.levels > 256:
            raise BadDevice(f"device: levels={self.levels} is out of range; expected 2..256")
        if not (self.g_min_us >= 0.0):
            raise BadDevice(f"device: g_min_us={self.g_min_us} is out of range; expected >= 0")
        if not (self.g_max_us > self.g_min_us):
            raise BadDevice(
                f"device: g_max_us={self.g_max_us} is out of range; expected > g_min_us "
                f"({self.g_min_us})"
            )
        if not (self.read_v > 0.0):
            raise BadDevice(f"device: read_v={self.read_v} is out of range; expected > 0 V")

    @property
    def max_level(self) -> int:
        """Highest level index, ``levels - 1``."""
        return self.levels - 1

    @property
    def step_us(self) -> float:
        """Conductance of one level step, in microsiemens."""
        return (self.g_max_us - self.g_min_us) / (self.levels - 1)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def conductance_of_level(device: Device, level: np.ndarray) -> np.ndarray:
    """Conductance in microsiemens of (possibly fractional) level indices."""
    return device.g_min_us + np.asarray(level, dtype=np.float64) * device.step_us


def level_of_conductance(device: Device, g_us: np.ndarray) -> np.ndarray:
    """Fractional level index of a conductance; exact inverse of :func:`conductance_of_level`."""
    return (np.asarray(g_us, dtype=np.float64) - device.g_min_us) / device.step_us


@dataclass(frozen=True)
class Geometry:
    """Shape of one chip: ``tiles`` crossbars of ``rows`` x ``cols`` cells (from the fault map)."""

    tiles: int
    rows: int
    cols: int

    @property
    def outs_per_tile(self) -> int:
        """Logical outputs one tile can hold: each needs a differential pair of columns."""
        return self.cols // 2
