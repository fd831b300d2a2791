"""Provisioning a production lot: plan once, compile every chip in parallel, resumably.

:func:`provision` is what ``rcompile provision`` runs (spec: ``docs/provisioning.md``):

1. the lot is every ``*.npz`` fault map in one directory, in name order; chip ``NAME.npz``
   gets the image ``OUTDIR/NAME.rimg``; no output may be one of the inputs;
2. the chip-independent plan is made once (or read with ``--plan``) for the tile geometry and
   levels most of the lot's maps declare, and handed to every worker;
3. each chip is one call of :func:`compile_chip` on a worker of a local process pool or of a
   ``dask.distributed`` cluster: load the fault map, build, write the image atomically
   (temporary file + rename, so a crash never leaves half an image), optionally verify;
4. a chip is skipped when its line in the existing report is ``ok`` or ``skipped``, records
   this build's key (:func:`lot_key`: everything that can change an image's bytes) and the
   SHA-256 of the image file that is there now, so a lot that was stopped resumes where it was
   and a rerun with other options rebuilds;
5. every chip gets one JSON line in ``OUTDIR/report.jsonl``, appended as soon as the chip is
   done; at the end the report is rewritten (atomically) with exactly one line per chip, in
   name order, so a resumed lot never lists a chip twice.

A chip that fails (a bad or mismatched fault map, a model that does not fit, a solver failure)
gets a line with ``"status": "error"`` and its message; the lot goes on. Local workers die with
the parent process (even a SIGKILL of it) and are killed when the lot is interrupted; temporary
files of dead writers are removed at the start and on an interrupt. The dask executor runs the
same function; its workers must see the lot and output directories (one shared filesystem), as
the local workers do.

The package, in the order a lot runs: :mod:`~rcompile.provision.lot` (the lot's maps, outputs
and plan, and :func:`provision`), :mod:`~rcompile.provision.keys` (the skip keys),
:mod:`~rcompile.provision.chip` (one chip on a worker), :mod:`~rcompile.provision.pool` (the
executors) and :mod:`~rcompile.provision.report` (the report and its resume).
"""

from __future__ import annotations

from rcompile.provision.chip import ChipTask, LotState, compile_chip
from rcompile.provision.keys import chip_key, lot_key, verify_key
from rcompile.provision.lot import (
    EXECUTORS,
    check_outputs,
    check_writable,
    find_faultmaps,
    image_path,
    lot_family,
    lot_plan,
    provision,
)
from rcompile.provision.report import REPORT, LotSummary, bin_chip, read_report

__all__ = ["EXECUTORS", "REPORT", "ChipTask", "LotState", "LotSummary", "bin_chip",
           "check_outputs", "check_writable", "chip_key", "compile_chip", "find_faultmaps",
           "image_path", "lot_family", "lot_key", "lot_plan", "provision", "read_report",
           "verify_key"]
