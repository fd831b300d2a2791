"""rcompile: per-chip deployment compiler for ReRAM crossbar chips with stuck-at faults.

The notebook API (:mod:`rcompile.notebook`) is reachable from here, imported on first use so
that ``import rcompile`` stays cheap: ``rcompile.compile``, ``rcompile.verify``,
``rcompile.sweep``, ``rcompile.load_faultmap``, ``rcompile.synth_faultmap``,
``rcompile.load_image``, ``rcompile.load_hardware``, ``rcompile.load_lot`` (``docs/api.md``).

``rcompile.sweep`` (and ``rcompile.verify``) name those functions even though modules of the
same name exist: importing such a module (``from rcompile.sweep import run_sweep``) does not
replace the function, so reach the modules by their full import path.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = ("Compiled", "Lot", "Swept", "Verified", "compile", "load_faultmap", "load_hardware",
        "load_image", "load_lot", "sweep", "synth_faultmap", "verify")


def _api(name: str) -> Any:
    from rcompile import notebook

    return getattr(notebook, name)


class _Package(types.ModuleType):
    """The package module, whose API names stay the notebook functions when the import
    system binds a submodule of the same name onto the package."""

    def __getattribute__(self, name: str) -> Any:
        if name in _API:
            return _api(name)
        return super().__getattribute__(name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_API})


sys.modules[__name__].__class__ = _Package
__all__ = ["__version__", *_API]
