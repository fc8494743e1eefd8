"""Which projects may run on the operator's own machines: the providers' project allowlists.

Two providers run work on machines the operator owns rather than rents: ``local`` (processes
on the daemon's host) and ``slurm`` (jobs on the operator's cluster). The admin's config may
limit each to some projects, in its own section::

    providers:
      local: {projects: [ml]}        # alias: allow_projects
      slurm: {projects: [ml, nlp]}

The admin's ``default`` project is always allowed (existing setups and demos keep working); a
section without the setting allows every project (as before). Cloud providers (aws, k8s) have
no such list: their capacity is the account's, not the host's.

``barred_providers`` is the one rule, read by every placement: the launch plan
(``spotd.control.submit``), every relaunch (``spotd.control.jobs``) and the replica planner
(``spotd.control.services``); ``without_barred`` drops a barred provider's catalog entries.
A malformed list bars every project but ``default`` (fail closed); the daemon refuses to start
with one (``allowlist_errors``).

Example: with ``local: {projects: [a]}``, ``barred_providers("b", cfg)`` is ``{"local": "project
b may not run on the local provider ... (providers.local.projects in config.yaml)"}``, and
``barred_providers("a", cfg)`` and ``barred_providers("default", cfg)`` are ``{}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from spotd.types import CatalogEntry

__all__ = [
    "DEFAULT_PROJECT",
    "OWN_MACHINES",
    "AllowlistError",
    "allowed_projects",
    "allowlist_errors",
    "barred_providers",
    "provider_refusal",
    "without_barred",
]

DEFAULT_PROJECT = "default"  # the admin's project (spotd.control.quota.DEFAULT_PROJECT)

# the providers whose work runs on the operator's own machines, and how a refusal names them
OWN_MACHINES: Mapping[str, str] = MappingProxyType(
    {
        "local": "the local provider (the daemon's own host)",
        "slurm": "the Slurm provider (the operator's own cluster)",
    }
)


class AllowlistError(ValueError):
    """A provider's ``projects`` setting is not a list of project names."""


def allowed_projects(provider: str, cfg: Mapping[str, Any]) -> frozenset[str] | None:
    """The projects ``providers.<provider>.projects`` (or ``allow_projects``) allows, None
    when the section does not limit them; ``AllowlistError`` when the value is malformed."""
    raw = cfg.get("projects", cfg.get("allow_projects"))
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        raise AllowlistError(f"providers.{provider}.projects must be a list of names, got {raw!r}")
    return frozenset(raw)


def provider_refusal(project: str, provider: str, cfg: Mapping[str, Any]) -> str | None:
    """Why ``project`` may not run on ``provider`` (configured with ``cfg``), or None when it
    may. Providers other than ``OWN_MACHINES`` never refuse here."""
    if provider not in OWN_MACHINES or project == DEFAULT_PROJECT:
        return None
    where = OWN_MACHINES[provider]
    try:
        allowed = allowed_projects(provider, cfg)
    except AllowlistError as exc:
        return f"project {project} may not run on {where}: {exc} (config.yaml)"
    if allowed is None or project in allowed:
        return None
    names = ", ".join(sorted(allowed | {DEFAULT_PROJECT}))
    return (
        f"project {project} may not run on {where}: the admin allows only {names} there "
        f"(providers.{provider}.projects in config.yaml)"
    )


def barred_providers(
    project: str, provider_configs: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """The configured providers ``project`` may not run on, each with why (naming the
    setting); ``provider_configs`` is the config's ``providers`` section."""
    out: dict[str, str] = {}
    for name, cfg in provider_configs.items():
        refusal = provider_refusal(project, name, cfg)
        if refusal is not None:
            out[name] = refusal
    return out


def without_barred(
    catalog: Iterable[CatalogEntry], barred: Mapping[str, str]
) -> list[CatalogEntry]:
    """``catalog`` less the entries of the ``barred`` providers."""
    return [e for e in catalog if e.provider not in barred]


def allowlist_errors(provider_configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is malformed in the config's allowlists (the daemon refuses to start with any)."""
    errors: list[str] = []
    for name, cfg in provider_configs.items():
        if name in OWN_MACHINES:
            try:
                allowed_projects(name, cfg)
            except AllowlistError as exc:
                errors.append(str(exc))
    return errors
