"""``docs/cli.md``, the command-line reference, generated from the click commands themselves.

``python -m rcompile.clidoc > docs/cli.md`` (or ``make docs``) writes it; a test compares the
committed file with :func:`render`, so the page cannot drift from the code.
"""

from __future__ import annotations

import click

from rcompile.clikit import SCHEMA_VERSION, AliasedOption
from rcompile.errors import EXIT_CODES


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_row(ctx: click.Context, p: click.Option) -> str:
    old = p.old_spellings if isinstance(p, AliasedOption) else ()
    names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts] if o not in old)
    kind = "flag" if p.is_flag else p.make_metavar(ctx)
    default = ""
    if p.show_default and not p.is_flag and p.default is not None:
        default = f"`{p.default}`"
    req = " (required)" if p.required else ""
    aliases = ", ".join(f"`{o}`" for o in old)
    return f"| {names} | {_cell(kind)}{req} | {default} | {_cell(p.help or '')} | {aliases} |"


def _command(lines: list[str], cmd: click.Command, path: str, parent: click.Context) -> None:
    ctx = click.Context(cmd, info_name=path.split()[-1], parent=parent)
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            _command(lines, cmd.commands[name], f"{path} {name}", ctx)
        return
    args = " ".join(p.make_metavar(ctx) for p in cmd.params if isinstance(p, click.Argument))
    lines += [f"## `{path}`", "", f"`{path} [OPTIONS] {args}`".replace(" `", "`"), ""]
    lines += [_cell(cmd.help or ""), ""]
    opts = [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
    lines += ["| option | value | default | meaning | old spelling (still accepted) |",
              "| --- | --- | --- | --- | --- |"]
    lines += [_option_row(ctx, p) for p in opts]
    lines += ["| `-h`, `--help` | flag |  | Show the help and exit. |  |", ""]


def render() -> str:
    """The whole reference page as Markdown."""
    from rcompile.cli import cli

    root = click.Context(cli, info_name="rcompile")
    lines = [
        "# Command-line reference",
        "",
        "Generated from the click commands by `python -m rcompile.clidoc` (`make docs`); "
        "a test fails when this page and the code differ. Old option spellings stay accepted "
        "for existing scripts but are not shown in `--help`.",
        "",
        f"Every `--json` document is one line on stdout and carries `schema_version` "
        f"(now {SCHEMA_VERSION}), `rcompile_version` and `inputs` (per input file its `path` and "
        "`sha256`). Under `--json` an error is one JSON object on stderr: `error`, `exit_code`, "
        "`kind`.",
        "",
        "## Exit codes",
        "",
        "| code | meaning |",
        "| --- | --- |",
        *[f"| {c} | {_cell(m)} |" for c, m in EXIT_CODES.items()],
        "",
    ]
    _command(lines, cli, "rcompile", root)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
