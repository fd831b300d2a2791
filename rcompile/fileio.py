"""Atomic file output: every file rcompile writes appears complete or not at all."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from rcompile.errors import RcompileError


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    what: str = "file",
    error: type[RcompileError] = RcompileError,
) -> None:
    """Write ``data`` to ``path`` through a fresh same-directory temporary file.

    The temporary file is fsynced and renamed over ``path`` (``os.replace``), then the directory
    is fsynced, so a crash leaves either the old file or the complete new one. On failure the
    temporary file is removed and ``error`` is raised naming ``path`` and ``what`` was written.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never clobber anything; mode 0o666 so the umask applies as for open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise error(f"{target}: cannot write {what} ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise error(f"{target}: cannot write {what} ({e.strerror or e})") from e
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: not every OS lets a directory be fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
