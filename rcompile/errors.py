"""One root error type and the few kinds a user can act on.

Every message names the file (or node) and says what is wrong and what was expected.
The CLI catches :class:`RcompileError` once, prints its message as one line on stderr (a JSON
object under ``--json``) and exits with the kind's own code (:data:`EXIT_CODES`); anything else
is a bug. Codes 1 (generic) and 2 (click's usage error) belong to no domain kind, so a script
can tell "I called it wrong" from "the model is bad".
"""

from __future__ import annotations


class RcompileError(Exception):
    """Root of every error a user can act on."""

    exit_code = 1


class BadModel(RcompileError):
    """The ONNX model is missing, malformed, or uses something the compiler cannot map."""

    exit_code = 11


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


#: Exit code -> meaning, as published in ``rcompile --help``, the README and docs/reliability.md.
#: Codes never change meaning between releases; a new kind gets a new number.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "generic error (a file could not be read or written, a numerical failure, failed chips "
       "in a lot)",
    2: "usage error (unknown option, bad option value; click)",
    3: "bad fault map (BadFaultMap)",
    4: "bad or mismatched programming image (BadImage)",
    5: "the model does not fit the chip (DoesNotFit)",
    6: "bad evaluation or calibration data (BadData)",
    7: "bad device file (BadDevice)",
    8: "solver failure (SolverError)",
    9: "bad or mismatched plan file (BadPlan)",
    10: "bad pipeline string (BadPipeline)",
    11: "bad model (BadModel)",
    130: "interrupted (SIGINT, Ctrl-C)",
    143: "terminated (SIGTERM)",
}
