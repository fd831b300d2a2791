"""File output rules every command obeys.

- **Atomic**: every file rcompile writes appears complete or not at all (:func:`atomic_write`).
- **Never over an input**: a command refuses an output that is one of its own inputs, compared
  as files (device and inode), not as spellings, so ``./sub/../chip.npz``, a symlink or a hard
  link to an input are refused too (:func:`refuse_overwrite`).
- **No temporary left behind**: a temporary file is named ``.NAME.PID.HEX.tmp`` next to its
  target; the writing process removes it on any failure or interrupt, and
  :func:`remove_stale_temporaries` removes those of processes that no longer run.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from rcompile.errors import RcompileError

PathLike = str | os.PathLike[str]

TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<tag>[0-9a-f]{8})\.tmp$")
"""The name of every temporary file :func:`atomic_write` creates."""

_WRITING: set[Path] = set()
"""Temporaries this process is writing right now (removed by :func:`remove_own_temporaries`)."""


class OutputIsInput(RcompileError):
    """An output path names the same file as one of the command's inputs."""


def refuse_overwrite(outputs: Iterable[tuple[str, PathLike | None]],
                     inputs: Iterable[tuple[str, PathLike | None]]) -> None:
    """Raise :class:`OutputIsInput` if an existing output is the same file as an input.

    ``outputs`` and ``inputs`` are ``(what, path)`` pairs (``what`` names the option, e.g.
    ``"--faultmap"``); ``None`` paths and paths that do not exist are ignored. Files are
    compared by ``(st_dev, st_ino)`` after following symlinks. Call it before any work, so a
    refused command has read nothing and written nothing.
    """
    seen: dict[tuple[int, int], tuple[str, str]] = {}
    for what, path in inputs:
        key = _identity(path)
        if key is not None and path is not None:
            seen.setdefault(key, (what, os.fspath(path)))
    for out_what, out in outputs:
        key = _identity(out)
        if key is not None and out is not None and key in seen:
            what, inp = seen[key]
            raise OutputIsInput(
                f"{os.fspath(out)}: {out_what} is the same file as the input {what} {inp}; "
                "refusing to overwrite an input (nothing written): choose another output path")


def _identity(path: PathLike | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, unreadable, or not a valid path at all
        return None
    return (st.st_dev, st.st_ino)


def atomic_write(
    path: PathLike,
    data: bytes,
    *,
    what: str = "file",
    error: type[RcompileError] = RcompileError,
) -> None:
    """Write ``data`` to ``path`` through a fresh same-directory temporary file.

    The temporary file is fsynced and renamed over ``path`` (``os.replace``), then the directory
    is fsynced, so a crash leaves either the old file or the complete new one. On any failure,
    including an interrupt, the temporary file is removed; an ``OSError`` becomes ``error``
    naming ``path`` and ``what`` was written.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _WRITING.add(tmp)
    try:
        # O_EXCL: never clobber anything; mode 0o666 so the umask applies as for open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
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
    finally:
        _WRITING.discard(tmp)
    _fsync_dir(target.parent)


def remove_own_temporaries() -> None:
    """Remove every temporary this process is still writing (on the way out of an interrupt)."""
    for tmp in list(_WRITING):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        _WRITING.discard(tmp)


def remove_stale_temporaries(directory: PathLike) -> list[Path]:
    """Remove the temporaries in ``directory`` whose writer no longer runs; return them.

    A temporary of a live process (another run writing right now) is kept; so is one this
    process is writing.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = TEMPORARY.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(directory) / entry.name
        pid = int(m["pid"])
        if path in _WRITING or (pid != os.getpid() and alive(pid)):
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError:
            continue
        removed.append(path)
    return removed


def alive(pid: int) -> bool:
    """True if a process ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: trust kill()
    return state not in (b"Z", b"X")


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


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
