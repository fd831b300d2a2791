"""One root error type and the few kinds a user can act on.

Every message names the file (or node) and says what is wrong and what was expected.
The CLI catches :class:`RcompileError` once, prints its message as one line on stderr and
exits non-zero; anything else is a bug.
"""

from __future__ import annotations


class RcompileError(Exception):
    """Root of every error a user can act on."""

    exit_code = 1


class BadModel(RcompileError):
    """The ONNX model is missing, malformed, or uses something the compiler cannot map."""

    exit_code = 2


class BadFaultMap(RcompileError):
    """The fault map file is missing or breaks the contract of docs/design.md §4."""

    exit_code = 3


class BadImage(RcompileError):
    """The programming image is truncated, corrupted, or does not match the inputs."""

    exit_code = 4


class DoesNotFit(RcompileError):
    """The model needs more crossbar tiles than the chip has."""

    exit_code = 5


class BadData(RcompileError):
    """Evaluation or calibration data do not match the model's inputs."""

    exit_code = 6


class BadDevice(RcompileError):
    """A device-parameter file has a missing or out-of-range field."""

    exit_code = 7


class SolverError(RcompileError):
    """An optimisation problem had no solution or the solver failed."""

    exit_code = 8


class BadPlan(RcompileError):
    """A saved plan was made by another compiler version or for another geometry."""

    exit_code = 9
