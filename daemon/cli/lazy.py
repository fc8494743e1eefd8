"""A click group whose subcommands are imported only when one is run.

``spotctl --help`` used to import every command group, and with them the task language, the
simulator and the SDK (about 0.6 s before a word was printed). ``LazyGroup`` (after click's
documented lazy-loading pattern) names each subcommand by ``"module:attribute"`` with the one
line its help listing shows, so the listing imports nothing; running ``spotctl jobs queue``
imports ``spotd.cli.jobs`` alone. ``tests/fleet/test_cli_start.py`` checks that every line
still matches its command's own help.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

__all__ = ["LazyCommand", "LazyGroup", "first_line"]


@dataclass(frozen=True, slots=True)
class LazyCommand:
    target: str  # "spotd.cli.jobs:jobs"
    short_help: str  # what `spotctl --help` lists beside the name

    def load(self) -> click.Command:
        module, _, attr = self.target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyGroup(click.Group):
    """A group with subcommands loaded on first use (``lazy``: name -> ``LazyCommand``)."""

    def __init__(self, *args: Any, lazy: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        command = self.lazy[cmd_name].load()
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: list[tuple[str, str]] = []
        limit = formatter.width - 6 - max((len(n) for n in self.list_commands(ctx)), default=0)
        # a lazy command's line is shown whole (wrapped); a loaded one's as click shortens it
        for name in self.list_commands(ctx):
            if name in self.commands:
                cmd = self.commands[name]
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit)))
            else:
                rows.append((name, self.lazy[name].short_help))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def first_line(command: click.Command) -> str:
    """A command's own one-line summary: the first paragraph of its help, on one line."""
    return " ".join((command.help or "").split("\n\n")[0].split())
