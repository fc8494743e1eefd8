"""``spotctl --help`` imports no command group, and lists each with its own summary."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from spotd.cli.lazy import first_line
from spotd.cli.main import COMMANDS, main


def test_each_listed_summary_is_the_commands_own() -> None:
    ctx = click.Context(main)
    for name, lazy in COMMANDS.items():
        command = lazy.load()
        assert command.name == name
        assert lazy.short_help == first_line(command), name
        assert main.get_command(ctx, name) is command


def test_help_imports_no_command_group_and_lists_them_all() -> None:
    code = (
        "import sys; from spotd.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('spotd.cli.', 'spotd.sdk', "
        "'spotd.spec', 'spotd.sim'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "['spotd.cli.lazy', 'spotd.cli.main']"
    for name in COMMANDS:
        assert f"  {name} " in out


def test_a_lazy_command_still_runs() -> None:
    result = CliRunner().invoke(main, ["jobs", "--help"])
    assert result.exit_code == 0
    assert "queue" in result.output
