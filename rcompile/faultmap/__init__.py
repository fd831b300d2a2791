"""The fault map: what the chip tester measured, and the contract every other part relies on.

A fault map (docs/design.md §4) records, for every cell of one chip, whether programming can
move it:

==========  =====  ===========================================================================
state       code   meaning
==========  =====  ===========================================================================
healthy     0      programmable to any of the ``levels`` conductances
SA0         1      stuck at ``g_min`` (high-resistance state, "stuck-off"); level 0
SA1         2      stuck at ``g_max`` (low-resistance state, "stuck-on"); level ``levels - 1``
==========  =====  ===========================================================================

**File format** (``chip.npz``, a numpy ``.npz`` zip archive, read by
:func:`rcompile.npzio.read_npz`: no pickles, each key once, sizes bounded):

===========  ==================  ==============================================================
key          type                meaning
===========  ==================  ==============================================================
``faults``   uint8 [T,R,C]       required; the state code of every cell. Its shape *is* the chip
                                 geometry: ``T`` tiles of ``R`` rows x ``C`` columns. ``C`` must
                                 be even (every output uses a differential pair of columns).
``stuck_g``  float32 [T,R,C]     optional; measured conductance of each stuck cell in uS, NaN on
                                 every healthy cell. Every stuck cell must carry a finite value
                                 >= 0, inside ``[g_min, g_max]`` when those are given.
``chip_id``  str scalar          optional; the chip's identity, one non-empty line. When absent
                                 it defaults to the first 12 hex digits of the digest of the map
                                 *without* a chip id.
``g_min``    real scalar, uS     optional; the chip's measured lowest conductance (>= 0).
``g_max``    real scalar, uS     optional; the chip's measured highest conductance (> g_min).
``levels``   integer scalar      optional; programmable levels per cell (2..256).
===========  ==================  ==============================================================

Anything else (a missing ``faults``, an unknown or repeated key, a wrong dtype or shape, a code
outside {0, 1, 2}, an inconsistent ``stuck_g``, a malformed scalar, more than
:data:`MAX_CELLS` cells, an ``.npy`` header that disagrees with its zip member) is rejected,
before the arrays are allocated where the header tells (:func:`rcompile.npzio.read_npz`), with
:class:`~rcompile.errors.BadFaultMap` whose one-line message reads ``"<file>: <key>: <what is
wrong>; expected <what the contract says>"``.

**Identity.** :meth:`FaultMap.digest` is a SHA-256 over a canonical encoding of the *content*
(never of the zip bytes, so zip timestamps, compression and key order do not matter); it is the
fault-map hash the programming image records. :func:`save` nevertheless writes byte-identical
files for identical content (fixed zip timestamps and key order), so files can be compared too.

**Immutability.** A :class:`FaultMap` is frozen and its arrays are read-only copies, so one map can
be shared between the passes of a compile and between threads without defensive copies.

The package: :mod:`~rcompile.faultmap.format` (this contract), :mod:`~rcompile.faultmap.synth`
(the synthetic generator :func:`synth`: uniform, clustered and whole-line faults as real testers
see them), :mod:`~rcompile.faultmap.csvimport` (:func:`import_csv`, a tester's CSV) and
:mod:`~rcompile.faultmap.report` (a heat map, :func:`render_heatmap`, and a text summary,
:func:`summary_text`). The CLI over them is :mod:`rcompile.faultmap_cli`.
"""

from rcompile.faultmap.csvimport import MAX_CSV_BYTES, import_csv
from rcompile.faultmap.format import (
    ALLOWED_KEYS,
    MAX_CELLS,
    MAX_LEVELS,
    OPTIONAL_KEYS,
    REQUIRED_KEYS,
    STATE_HEALTHY,
    STATE_NAMES,
    STATE_SA0,
    STATE_SA1,
    FaultMap,
    load,
    save,
    to_npz_bytes,
)
from rcompile.faultmap.report import MAX_HEATMAP_TILES, render_heatmap, summary_text
from rcompile.faultmap.synth import SYNTH_KINDS, SynthKind, synth

__all__ = [
    "ALLOWED_KEYS", "MAX_CELLS", "MAX_CSV_BYTES", "MAX_HEATMAP_TILES", "MAX_LEVELS",
    "OPTIONAL_KEYS", "REQUIRED_KEYS", "STATE_HEALTHY", "STATE_NAMES", "STATE_SA0", "STATE_SA1",
    "SYNTH_KINDS", "FaultMap", "SynthKind", "import_csv", "load", "render_heatmap", "save",
    "summary_text", "synth", "to_npz_bytes",
]
