"""Who may run on the daemon's own machine, and as whom: the local provider's tenancy.

The local provider runs jobs as processes on the daemon's host. Two settings of the admin's
config section ``providers.local`` decide what a project may do there:

- ``projects: [names]`` — the projects allowed on the local provider; the admin's ``default``
  project always is (existing setups and demos keep working). Unset: every project (as before).
  ``local_refusal`` says why a project is refused, naming the setting. The same rule holds for
  Slurm and is applied at every placement: ``spotd.providers.allowlist``.
- ``run_as_project_users: true`` — each project's agent and job run as its own unprivileged
  system user, ``spotd-p-<project>`` (``project_user``), created on first use with
  ``useradd --system`` (``ensure_user``), started through ``setpriv`` (``as_user``), in an
  instance directory owned by that user and 0700; one project's job then cannot read another's
  files, nor the daemon's state (the home's entries are 0600/0700, root's or the daemon's
  user's). That needs root (creating users, switching to them); ``privilege_refusal`` says so at
  start-up rather than at the first launch.
- ``python: /path/to/python`` — the interpreter agents run under; it must be executable by the
  project users (a virtualenv under root's 0700 home is not: point this at one they can run).

Pure functions and one small adapter (``ensure_user``): the provider, the daemon's start-up and
the launch use case all read the same rules.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotd.providers.allowlist import (
    DEFAULT_PROJECT,
    AllowlistError,
    allowed_projects,
    provider_refusal,
)

__all__ = [
    "DEFAULT_PROJECT",
    "LocalTenancy",
    "TenancyError",
    "as_user",
    "ensure_user",
    "local_refusal",
    "privilege_refusal",
    "project_user",
]

USER_PREFIX = "spotd-p-"
_MAX_USER = 32  # useradd's limit on a user name
_UNSAFE = re.compile(r"[^a-z0-9_-]")
CAP_SETGID = 6  # <linux/capability.h>
CAP_SETUID = 7


class TenancyError(Exception):
    """The tenancy settings are invalid, or the daemon cannot switch to a project's user."""


@dataclass(frozen=True, slots=True)
class LocalTenancy:
    """The admin's rules for the local provider (``providers.local`` in config.yaml)."""

    projects: frozenset[str] | None = None  # None: every project may run here
    run_as_project_users: bool = False
    python: str | None = None  # the agents' interpreter; None: the daemon's own

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> LocalTenancy:
        try:
            projects = allowed_projects("local", cfg)
        except AllowlistError as exc:
            raise TenancyError(str(exc)) from None
        run_as = cfg.get("run_as_project_users", False)
        if not isinstance(run_as, bool):
            raise TenancyError(
                f"providers.local.run_as_project_users must be true or false, got {run_as!r}"
            )
        python = cfg.get("python")
        if python is not None and not isinstance(python, str):
            raise TenancyError(f"providers.local.python must be a path, got {python!r}")
        return cls(
            projects=projects,
            run_as_project_users=run_as,
            python=python or None,
        )


def local_refusal(project: str, tenancy: LocalTenancy) -> str | None:
    """Why ``project`` may not run on the local provider, or None when it may (the rule of
    every provider on the operator's own machines: ``spotd.providers.allowlist``)."""
    cfg = {} if tenancy.projects is None else {"projects": sorted(tenancy.projects)}
    return provider_refusal(project, "local", cfg)


def project_user(project: str) -> str:
    """The system user a project's jobs run as: ``spotd-p-<project>``, made a valid user name
    (lower case, ``[a-z0-9_-]``, at most 32 characters); a name that had to change gets a hash
    of the original, so two projects never share a user."""
    safe = _UNSAFE.sub("-", project.lower())
    name = USER_PREFIX + safe
    if safe == project and len(name) <= _MAX_USER:
        return name
    digest = hashlib.sha256(project.encode()).hexdigest()[:8]
    return f"{name[: _MAX_USER - 9]}-{digest}"


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def privilege_refusal(tenancy: LocalTenancy) -> str | None:
    """Why this daemon cannot run projects as their own users, or None when it can (or need
    not): it must switch user (root, or CAP_SETUID and CAP_SETGID) and have ``setpriv``."""
    if not tenancy.run_as_project_users:
        return None
    caps = _effective_caps()
    can_switch = os.geteuid() == 0 or (caps & (1 << CAP_SETUID) and caps & (1 << CAP_SETGID))
    if not can_switch:
        return (
            "providers.local.run_as_project_users needs the daemon to run as root (or with "
            "CAP_SETUID and CAP_SETGID, the spotd-p-* users created beforehand): it starts "
            "each project's jobs as that project's own user"
        )
    if shutil.which("setpriv") is None:
        return "providers.local.run_as_project_users needs setpriv (util-linux) on PATH"
    return None


def ensure_user(name: str) -> pwd.struct_passwd:
    """The system user ``name``, created (no home, no login shell) if it does not exist yet."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise TenancyError(f"cannot create the user {name}: useradd is not installed")
    if os.geteuid() != 0:
        raise TenancyError(f"cannot create the user {name}: the daemon is not root")
    r = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    try:
        return pwd.getpwnam(name)  # a concurrent creator may have won: fine
    except KeyError:
        raise TenancyError(f"useradd {name} failed: {r.stderr.strip() or r.returncode}") from None


def as_user(user: pwd.struct_passwd) -> tuple[str, ...]:
    """The command prefix that runs a program as ``user``, with its groups and no others."""
    setpriv = shutil.which("setpriv") or "setpriv"
    return (setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups")
