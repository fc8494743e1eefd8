"""``spotctl check``: validate task files (and say which providers are usable); no daemon.

``check`` validates, ``jobs launch --dry-run`` places: a valid task exits 0, with notes for
what is due at launch (an env or secret with a null value) and warnings for what spotd reads
but cannot honour or place yet (a cloud without a provider, an accelerator no enabled provider
offers, a storage object, a pool, a docker image), naming what would serve it. Only a file
that cannot be used at all (bad syntax, unknown keys, bad values) fails.

The task language and the placement search load pydantic and the catalogs (about 130 ms), so
they are imported when the command runs, not when ``spotctl`` starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from spotd.cli.common import err, out, parse_env
from spotd.cli.providers import check_providers

__all__ = ["check"]


def _enabled_providers() -> set[str]:
    """The providers the config enables (``local`` unless turned off), read without building
    them; the local provider alone when the config cannot be read."""
    from spotd.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except (ConfigError, OSError):
        return {"local"}
    wanted: dict[str, dict[str, Any]] = dict(settings.providers)
    wanted.setdefault("local", {})
    return {
        "k8s" if name == "kubernetes" else name
        for name, cfg in wanted.items()
        if not (isinstance(cfg, dict) and cfg.get("enabled", True) is False)
    }


@click.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option("--env", "envs", multiple=True, help="K=V override for envs (repeatable).")
@click.option("--providers", is_flag=True, help="Say which providers are enabled, or why not.")
def check(files: tuple[str, ...], envs: tuple[str, ...], providers: bool) -> None:
    """Validate task YAML files; exit non-zero if any cannot be used.

    Notes (values due at launch) and warnings (what cannot be honoured or placed with the
    enabled providers) do not fail the check; `jobs launch --dry-run` places the task."""
    if providers:
        check_providers()
        if not files:
            return
    if not files:
        raise click.UsageError("give task YAML files to check, or --providers")
    from spotd.pricing.advice import packaged_catalog, placement_warnings
    from spotd.spec import SpecIssue, review_file

    overrides = parse_env(envs)
    bad = 0
    known = packaged_catalog()
    enabled_names = _enabled_providers()
    enabled = [e for e in known if e.provider in enabled_names]
    unknown = {p for p in enabled_names if not any(e.provider == p for e in known)}
    for f in files:
        if not Path(f).exists():
            err.print(f"{f}: no such file")
            bad += 1
            continue
        review = review_file(f, env_overrides=overrides)
        notes = list(review.notes)
        for t in review.tasks:
            for why in placement_warnings(
                t.resource_request(),
                enabled,
                known,
                num_nodes=t.num_nodes,
                unknown_providers=unknown,
            ):
                notes.append(SpecIssue("resources", None, f"warning: {why}", f))
        if review.errors:
            bad += 1
            for i in review.errors:
                err.print(str(i), markup=False)
            continue
        for i in notes:
            err.print(str(i), markup=False)
        n = len(review.tasks)
        warned = sum(1 for i in notes if i.message.startswith("warning:"))
        tail = f", {warned} warning{'s' if warned != 1 else ''}" if warned else ""
        out.print(f"{f}: OK ({n} task{'s' if n != 1 else ''}{tail})", markup=False)
    sys.exit(1 if bad else 0)
