"""What every ``rcompile`` command shares: option spellings, the JSON envelope, exit codes.

One name per concept across commands (``--faultmap``, ``--data``, ``--plot``, ``--ratio``,
``--solver-seed``, ``-j``); an older spelling stays accepted as a hidden alias
(:class:`AliasedOption`) so existing scripts keep working. Every JSON object a command prints
carries :func:`envelope`: ``schema_version``, the rcompile version and the SHA-256 of each
input file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from rcompile import __version__
from rcompile.errors import EXIT_CODES
from rcompile.fileio import file_sha256

#: Version of the JSON documents the commands print; bumped when a key changes meaning or goes.
SCHEMA_VERSION = 1


class AliasedOption(click.Option):
    """A click option with deprecated spellings: accepted, left out of ``--help``."""

    def __init__(self, *args: Any, deprecated: tuple[str, ...] = (), **kwargs: Any) -> None:
        decls = list(args[0]) if args else list(kwargs.pop("param_decls", []))
        super().__init__([*decls, *deprecated], *args[1:], **kwargs)
        self.old_spellings = tuple(deprecated)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        full = self.opts
        self.opts = [o for o in full if o not in self.old_spellings]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = full


def option(*decls: str, deprecated: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``click.option`` whose ``deprecated`` spellings still work but are not advertised."""
    return click.option(*decls, cls=AliasedOption, deprecated=deprecated, **kwargs)


def envelope(inputs: dict[str, str | None]) -> dict[str, Any]:
    """``schema_version``, ``rcompile_version`` and ``inputs``: per role (``model``,
    ``faultmap``, ...) the file's path and SHA-256 (a directory: its path only)."""
    files: dict[str, dict[str, str]] = {}
    for role, path in inputs.items():
        if path is None:
            continue
        entry = {"path": path}
        if os.path.isfile(path):
            entry["sha256"] = file_sha256(path)
        files[role] = entry
    return {"schema_version": SCHEMA_VERSION, "rcompile_version": __version__, "inputs": files}


def emit(doc: dict[str, Any], inputs: dict[str, str | None]) -> None:
    """Print ``doc`` with its :func:`envelope` as one line of JSON on stdout."""
    click.echo(json.dumps({**envelope(inputs), **doc}, default=float))


def error_json(message: str, exit_code: int, kind: str) -> str:
    """The one-line JSON object an error becomes on stderr under ``--json``."""
    return json.dumps({"error": message, "exit_code": exit_code, "kind": kind,
                       "schema_version": SCHEMA_VERSION, "rcompile_version": __version__})


def exit_code_table() -> str:
    """The exit codes as a ``--help`` epilogue (kept unwrapped by click's ``\\b``)."""
    width = max(len(str(c)) for c in EXIT_CODES)
    lines = [f"  {c:>{width}}  {m}" for c, m in EXIT_CODES.items()]
    return "\b\nExit codes:\n" + "\n".join(lines)
