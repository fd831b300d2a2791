"""rcompile: per-chip deployment compiler for ReRAM crossbar chips with stuck-at faults."""

__version__ = "0.1.0"
