"""A bounded ``.npz`` reader: what a member may allocate is checked before it is allocated.

``numpy.load`` trusts an archive: an ``.npy`` header may declare any shape (a 255 KB file can
declare 256 MiB of zeros, deflate compresses them ~1000:1), a zip may hold two members of the
same name (``numpy`` silently returns the last one), and a member may carry trailing bytes or
an unknown compression method. :func:`read_npz` reads every member itself and refuses, before
allocating, any archive that breaks these rules (each one line naming the file and the member):

* the file is a zip archive whose members are all ``<key>.npy`` files, stored or deflated,
  not encrypted, each key once, at most :data:`MAX_MEMBERS` of them, and each key allowed by
  the caller;
* each member starts with an ``.npy`` header of format 1.0 or 2.0 (at most
  :data:`MAX_NPY_HEADER` bytes) of a plain dtype (bool, integer, float, complex, fixed-width
  string; no objects, no records);
* the header's shape times the item size, plus the header, is exactly the member's
  uncompressed size in the zip directory, and that size is at most what the member's
  compressed bytes can expand to (:data:`MAX_DEFLATE_RATIO` for deflate, 1 for stored);
* each array, and all arrays together, stay under the caller's byte caps (the documented
  limits of each file kind, ``docs/limits.md``).

Truncated or corrupted member data (a CRC or length mismatch found while reading) is refused
too. The caller chooses the error type, so each file kind raises its own
:class:`~rcompile.errors.RcompileError` subclass.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from rcompile.errors import RcompileError

MAX_MEMBERS = 100_000
"""Most members an ``.npz`` may hold."""
MAX_NPY_HEADER = 10_000
"""Most bytes of one ``.npy`` header (numpy's own default bound)."""
MAX_DEFLATE_RATIO = 1100
"""Largest uncompressed / compressed size a deflated member may claim (deflate's own ceiling
is about 1032:1)."""

_KINDS = "biufcUS"
"""dtype kinds a member may hold: bool, signed, unsigned, float, complex, str, bytes."""


@dataclass(frozen=True)
class _Caps:
    array: int
    total: int
    per_key: dict[str, int]


def _mib(n: int) -> str:
    return f"{n / 2**20:.4g} MiB"


def read_npz(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str,
    error: type[RcompileError],
    max_array_bytes: int,
    max_total_bytes: int,
    allowed: Callable[[str], bool] | None = None,
    what: str = "an .npz archive of numpy arrays",
    expected: str = "only known keys",
    key_bytes: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``source`` (a path or the file's bytes), keyed by name.

    ``name`` is the file as messages show it; ``allowed(key)`` (default: any key) rejects
    unknown members; ``max_array_bytes`` / ``max_total_bytes`` bound one array / all arrays;
    ``what`` names the kind of file in messages about the archive as a whole, ``expected`` ends
    the message about an unknown member; ``key_bytes`` gives some keys their
    own cap instead of ``max_array_bytes``. Any breach raises ``error`` with
    one line ``"<name>: <member>: <what is wrong>; expected ..."``.
    """
    try:
        if isinstance(source, bytes):
            fh: BinaryIO = io.BytesIO(source)
            size = len(source)
        else:
            fh = open(source, "rb")  # noqa: SIM115 - closed below
            size = os.fstat(fh.fileno()).st_size
    except OSError as e:
        raise error(f"{name}: cannot read ({e.strerror or e}); expected {what}") from e
    try:
        caps = _Caps(max_array_bytes, max_total_bytes, dict(key_bytes or {}))
        return _read(fh, size, name, error, caps, allowed, what, expected)
    finally:
        fh.close()


def _read(
    fh: BinaryIO,
    size: int,
    name: str,
    error: type[RcompileError],
    caps: _Caps,
    allowed: Callable[[str], bool] | None,
    what: str,
    expected: str,
) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise error(f"{name}: not a readable .npz (zip) archive ({e}); expected {what}") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise error(f"{name}: {len(infos)} members; expected at most {MAX_MEMBERS}")
        plan: list[tuple[str, zipfile.ZipInfo]] = []
        seen: set[str] = set()
        total = 0
        for info in infos:
            member = info.filename
            if info.is_dir() or not member.endswith(".npy") or len(member) == 4:
                raise error(f"{name}: member {member!r} is not a <key>.npy array; "
                            f"expected {what}")
            key = member[:-4]
            shown = _show(key)
            if key in seen:
                raise error(f"{name}: {shown}: member {member!r} appears more than once; "
                            "expected each key once")
            seen.add(key)
            if allowed is not None and not allowed(key):
                raise error(f"{name}: {shown}: unknown member {member!r}; expected {expected}")
            if info.flag_bits & 0x1:
                raise error(f"{name}: {shown}: member is encrypted; expected a plain .npy member")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise error(f"{name}: {shown}: compression method {info.compress_type}; "
                            "expected stored or deflated (as numpy.savez writes)")
            ratio = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO
            if info.compress_size > size or info.file_size > ratio * info.compress_size + 1024:
                raise error(f"{name}: {shown}: member claims {info.file_size} bytes from "
                            f"{info.compress_size} compressed bytes in a {size}-byte file; "
                            "expected sizes the file can hold")
            nbytes = _check_header(zf, info, name, key, error, caps.per_key.get(key, caps.array))
            total += nbytes
            if total > caps.total:
                raise error(f"{name}: {shown}: arrays add up to more than {_mib(caps.total)}; "
                            f"expected at most {_mib(caps.total)} in one file (docs/limits.md)")
            plan.append((key, info))
        arrays: dict[str, np.ndarray] = {}
        for key, info in plan:
            arrays[key] = _read_member(zf, info, name, key, error)
        return arrays


def _check_header(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    name: str,
    key: str,
    error: type[RcompileError],
    max_array_bytes: int,
) -> int:
    """Bytes the member's array needs, after checking its header against the member size."""
    key = _show(key)
    fmt = np.lib.format
    try:
        with zf.open(info) as fp:
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fp, max_header_size=MAX_NPY_HEADER)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fp, max_header_size=MAX_NPY_HEADER)
            else:
                raise error(f"{name}: {key}: .npy format version {version}; expected 1.0 or 2.0")
            header_len = fp.tell()
    except RcompileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, TypeError,
            SyntaxError, KeyError, RecursionError, MemoryError) as e:
        raise error(f"{name}: {key}: not a readable .npy header ({type(e).__name__}: "
                    f"{_one_line(e)}); expected a plain numpy array") from None
    if dtype.hasobject or dtype.kind not in _KINDS or dtype.names is not None or dtype.shape:
        raise error(f"{name}: {key}: dtype {dtype} cannot be read safely; expected a plain "
                    "numeric or string array "
                    "(no Python objects, no records)")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise error(f"{name}: {key}: shape {shape}; expected non-negative integer dimensions")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_array_bytes:
        raise error(f"{name}: {key}: shape {tuple(shape)} of {dtype} needs {_mib(nbytes)}; "
                    f"expected at most {_mib(max_array_bytes)} (docs/limits.md)")
    if header_len + nbytes != info.file_size:
        raise error(f"{name}: {key}: header declares shape {tuple(shape)} of {dtype} "
                    f"({nbytes} bytes) but the member holds {info.file_size - header_len} "
                    "bytes of data; expected the two to agree")
    return nbytes


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, key: str, error: type[RcompileError]
) -> np.ndarray:
    key = _show(key)
    try:
        with zf.open(info) as fp:
            a = np.lib.format.read_array(fp, allow_pickle=False, max_header_size=MAX_NPY_HEADER)
            if fp.read(1):
                raise error(f"{name}: {key}: trailing bytes after the array; expected none")
    except RcompileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise error(f"{name}: {key}: damaged array data ({type(e).__name__}: {_one_line(e)}); "
                    "expected a complete .npy member") from None
    if not isinstance(a, np.ndarray):
        raise error(f"{name}: {key}: not a .npy array; expected a numpy array")
    return a


def _show(key: str) -> str:
    """``key`` as messages print it: as is when printable, else quoted (one line always)."""
    return key if key.isprintable() and len(key) <= 80 else repr(key[:80])


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")
