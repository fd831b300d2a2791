"""Fault maps from a chip tester's CSV listing."""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rcompile.errors import BadFaultMap
from rcompile.faultmap.format import (
    STATE_HEALTHY,
    STATE_NAMES,
    STATE_SA0,
    STATE_SA1,
    FaultMap,
    check_geometry,
)
from rcompile.progress import Event, ProgressFn, notify

PROGRESS_LINES = 1 << 16
"""Lines between two progress events of :func:`import_csv`."""
MAX_CSV_BYTES = 1 << 30
"""Largest tester CSV :func:`import_csv` reads (1 GiB, about 60 million listed cells)."""

_CSV_HEADER = ("tile", "row", "col", "state")
_CSV_STATES: Mapping[str, int] = {
    "0": STATE_HEALTHY,
    "1": STATE_SA0,
    "2": STATE_SA1,
    "sa0": STATE_SA0,
    "sa1": STATE_SA1,
}


def import_csv(
    path: str | os.PathLike[str], tiles: int, rows: int, cols: int, chip_id: str | None = None,
    progress: ProgressFn | None = None,
) -> FaultMap:
    """Build a fault map from a tester CSV: header ``tile,row,col,state``, one row per cell.

    ``state`` is ``0``/``1``/``2`` or ``SA0``/``SA1`` (any case); cells not listed are healthy;
    ``tile``, ``row`` and ``col`` are plain ASCII decimal integers. The file is UTF-8 text of at
    most :data:`MAX_CSV_BYTES` bytes, the geometry at most :data:`MAX_CELLS` cells.
    A cell listed twice must carry the same state both times. Blank lines and lines starting
    with ``#`` are skipped. Errors raise :class:`~rcompile.errors.BadFaultMap` as
    ``"<path>:<line>: <column>: ..."``. ``chip_id`` defaults to the file's stem. ``progress``
    hears how many lines were read every :data:`PROGRESS_LINES` lines (stage ``import``).
    """
    src = str(path)
    check_geometry(src, tiles, rows, cols)
    faults = np.zeros((tiles, rows, cols), dtype=np.uint8)
    seen = np.zeros((tiles, rows, cols), dtype=bool)
    limits = (tiles, rows, cols)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_CSV_BYTES:
                raise BadFaultMap(
                    f"{src}: {size} bytes; expected a CSV of at most {MAX_CSV_BYTES} bytes "
                    "(docs/limits.md)"
                )
            text = fh.read()
    except OSError as e:
        raise BadFaultMap(
            f"{src}: cannot open ({e.strerror or e}); expected a CSV with header tile,row,col,state"
        ) from e
    except UnicodeDecodeError as e:
        raise BadFaultMap(f"{src}: not UTF-8 text ({e.reason}); expected a CSV file") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    header_seen = False
    lines = text.count("\n") + 1
    t0 = time.perf_counter()
    try:
        for record in reader:
            line = reader.line_num
            if progress is not None and line % PROGRESS_LINES == 0:
                progress(Event("import", "CSV lines", line, lines))
            if not record or all(not f.strip() for f in record):
                continue
            if record[0].lstrip().startswith("#"):
                continue
            fields = [f.strip() for f in record]
            if not header_seen:
                if tuple(f.lower() for f in fields) != _CSV_HEADER:
                    raise BadFaultMap(
                        f"{src}:{line}: header: {','.join(fields)!r}; expected 'tile,row,col,state'"
                    )
                header_seen = True
                continue
            if len(fields) != 4:
                raise BadFaultMap(
                    f"{src}:{line}: {len(fields)} fields; expected 4 (tile,row,col,state)"
                )
            idx: list[int] = []
            for name, field, limit in zip(_CSV_HEADER[:3], fields[:3], limits, strict=True):
                v = int(field) if field.isascii() and field.isdigit() and len(field) < 19 else -1
                if not 0 <= v < limit:
                    raise BadFaultMap(
                        f"{src}:{line}: {name}: {field!r}; expected an integer 0..{limit - 1}"
                    )
                idx.append(v)
            state = _CSV_STATES.get(fields[3].lower())
            if state is None:
                raise BadFaultMap(
                    f"{src}:{line}: state: {fields[3]!r}; expected 0, 1, 2, SA0 or SA1"
                )
            t, r, c = idx
            if seen[t, r, c] and faults[t, r, c] != state:
                raise BadFaultMap(
                    f"{src}:{line}: state: tile {t}, row {r}, col {c} listed again as "
                    f"{STATE_NAMES[state]} (was {STATE_NAMES[faults[t, r, c]]}); "
                    "expected one state per cell"
                )
            seen[t, r, c] = True
            faults[t, r, c] = state
    except csv.Error as e:
        raise BadFaultMap(f"{src}:{reader.line_num}: malformed CSV ({e})") from e
    if not header_seen:
        raise BadFaultMap(f"{src}:1: header: missing; expected 'tile,row,col,state'")
    notify(progress, Event("import", "CSV lines", lines, lines, time.perf_counter() - t0))
    cid = chip_id if chip_id is not None else Path(path).stem
    return FaultMap(faults, chip_id=cid or "csv", source=src)
