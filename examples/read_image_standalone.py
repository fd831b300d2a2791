"""Program a chip from an rcompile image, tile by tile, with only the standard library + numpy.

Usage: python read_image_standalone.py chip.rimg        (format: docs/image-format.md)
"""

import hashlib
import json
import struct
import sys

import numpy as np


def sections(f):
    """Yield (tag, payload) of every section, checking magic, version, framing and checksums."""
    magic, version = struct.unpack("<8sI", f.read(12).ljust(12, b"\0"))
    if magic != b"RCIMG\x00\r\n" or version not in (1, 2):  # 2: bit-sliced, same levels
        sys.exit("not an rcompile image of format version 1 or 2")
    while True:
        head = f.read(12)
        if len(head) < 12:
            sys.exit("truncated image: no END. section")
        tag, n = struct.unpack("<4sQ", head)
        payload, digest = f.read(n), f.read(32)
        if len(payload) != n or hashlib.sha256(payload).digest() != digest:
            sys.exit(f"section {tag.decode('ascii', 'replace')}: truncated or checksum mismatch")
        yield tag, payload
        if tag == b"END.":
            if f.read(1):
                sys.exit("trailing bytes after END.")
            return


def record(payload):
    """HEAD/LAYR/TILE payload -> (meta, {name: array}); arrays are little-endian, C order."""
    (j,) = struct.unpack_from("<I", payload)
    head = json.loads(payload[4 : 4 + j])
    base = (4 + j + 7) // 8 * 8  # the data area starts 8-aligned after the JSON
    arrays = {
        name: np.frombuffer(payload, dtype, int(np.prod(shape)), base + off).reshape(shape)
        for name, dtype, shape, off, nbytes in head["arrays"]
    }
    return head["meta"], arrays


def program_cell(tile, row, col, level):
    pass  # the tester's write-verify pulse sequence for one cell goes here


with open(sys.argv[1], "rb") as f:
    for tag, payload in sections(f):
        if tag == b"HEAD":
            header = record(payload)[0]["header"]
            print(f"chip {header['chip_id']}, {header['device']['levels']} levels")
        elif tag == b"TILE":
            meta, arrays = record(payload)
            levels = arrays["levels"]  # uint8 [rows, cols], target level of every cell
            for (row, col), level in np.ndenumerate(levels):
                program_cell(meta["tile"], row, col, int(level))
            print(f"tile {meta['tile']}: {levels.size} cells, level sum {int(levels.sum())}")
        elif tag == b"END.":
            print("end", json.loads(payload)["TILE"], "tiles")
