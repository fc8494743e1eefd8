"""``spotctl check``: validate task files (and say which providers are usable); no daemon.

The task language and the placement search load pydantic and the catalogs (about 130 ms), so
they are imported when the command runs, not when ``spotctl`` starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from spotd.cli.common import err, out, parse_env
from spotd.cli.providers import check_providers

__all__ = ["check"]


@click.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option("--env", "envs", multiple=True, help="K=V override for envs (repeatable).")
@click.option("--providers", is_flag=True, help="Say which providers are enabled, or why not.")
def check(files: tuple[str, ...], envs: tuple[str, ...], providers: bool) -> None:
    """Validate task YAML files; exit non-zero if any has an error."""
    if providers:
        check_providers()
        if not files:
            return
    if not files:
        raise click.UsageError("give task YAML files to check, or --providers")
    from spotd.pricing.catalog import default_local_catalog
    from spotd.recovery import placement
    from spotd.spec import SpecError, SpecIssue, Task, check_file, load_tasks

    overrides = parse_env(envs)
    bad = 0
    catalog = default_local_catalog()
    for f in files:
        if not Path(f).exists():
            err.print(f"{f}: no such file")
            bad += 1
            continue
        issues = check_file(f) if not overrides else []
        tasks: list[Task] = []
        if not issues:
            try:
                tasks = load_tasks(f, env_overrides=overrides)
            except SpecError as exc:
                issues = exc.issues
        for t in tasks:
            req = t.resource_request()
            if not placement.candidates(req, catalog, num_nodes=t.num_nodes):
                why = placement.explain_infeasible(req, catalog)
                issues.append(SpecIssue(path="resources", line=None, message=why, file=f))
        if issues:
            bad += 1
            for i in issues:
                err.print(str(i), markup=False)
        else:
            out.print(f"{f}: OK ({len(tasks)} task{'s' if len(tasks) != 1 else ''})")
    sys.exit(1 if bad else 0)
