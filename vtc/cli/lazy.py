"""The start-up of the entry points: signal handlers first, command modules imported only
when their command runs.

`LazyGroup` knows its commands as "module:attr" plus a short help, so `vtc --help` lists
them without importing any command module, and `vtc CMD` imports only CMD's module. Each
command module keeps its top-level imports light (click, the stdlib, vtc's torch-free
modules); torch, transformers, onnxruntime, onnx... are imported inside the code paths that
use them. `Entry` (the group, and `vtc-export`) installs the signal handlers before any of
that, and turns an interrupt during parsing or that import into exit 130.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import click

from vtc.errors import install_signal_handlers, interrupts_exit, one_line

__all__ = ["EntryCommand", "LazyGroup"]


class _Entry:
    """Mixin for a top-level click command: handlers first, interrupts exit 130."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        install_signal_handlers()
        return super().main(*args, **kwargs)  # type: ignore[misc]

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with interrupts_exit(), _one_line_usage():
            return super().make_context(*args, **kwargs)  # type: ignore[misc,no-any-return]

    def invoke(self, ctx: click.Context) -> Any:
        with interrupts_exit(), _one_line_usage():
            return super().invoke(ctx)  # type: ignore[misc]


@contextlib.contextmanager
def _one_line_usage() -> Iterator[None]:
    """A click usage error (a bad option value, an unknown option, a missing argument) is
    one line on stderr and exit 2, as every other input error: "error: MESSAGE (see
    'COMMAND --help')" instead of click's three-line Usage/Try/Error block."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # a bare group (`vtc`, `vtc report`): click prints its help
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "vtc"
        click.echo(f"error: {one_line(exc.format_message())} (see '{where} --help')", err=True)
        sys.exit(2)


class EntryCommand(_Entry, click.Command):
    """A command that is an entry point of its own (`vtc-export`)."""


class LazyGroup(_Entry, click.Group):
    """A group whose subcommands are "module:attr" strings, imported on first use.

    `lazy` maps each command name to (target, short help); the short help is what
    `vtc --help` lists, so listing imports nothing.
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.lazy, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attr = self.lazy[cmd_name][0].partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{self.lazy[cmd_name][0]} is not a click command")
        self.commands[cmd_name] = cmd  # imported once
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, self.lazy[name][1]))
            elif not self.commands[name].hidden:
                rows.append((name, self.commands[name].get_short_help_str()))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
