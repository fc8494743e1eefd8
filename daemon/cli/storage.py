"""``spotctl storage ls|delete``: the buckets of storage objects (SkyPilot's ``sky storage``).

A project token sees and deletes its own project's buckets; the admin sees every project's
and deletes in ``--project`` (``default`` when left out). A bucket a running job or a live
service uses is not deleted (the daemon names them). ``-y`` is accepted as SkyPilot users type
it: spotctl asks nothing.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click
from rich.table import Table

from spotd.cli.common import ago, out, print_json, run

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = ["storage"]


async def _delete(c: Client, *, path: str, params: dict[str, str]) -> Any:
    return await c.request("POST", path, params=params)


@click.group("storage")
def storage() -> None:
    """Buckets of storage objects (file_mounts with a `name`, or mode MOUNT/MOUNT_CACHED)."""


@storage.command("ls")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def ls(output: str) -> None:
    """List buckets: name, store, project, where it is, and what uses it now."""
    data = run(lambda c: c.request("GET", "/v1/storage"))
    if output == "json":
        print_json(data)
        return
    now = time.time()
    t = Table(title="Storage")
    for col in ("NAME", "STORE", "PROJECT", "URL", "CREATED", "IN USE BY", "SPOTD-MADE"):
        t.add_column(col)
    for b in data["buckets"]:
        t.add_row(
            b["name"],
            b["store"],
            b["project"],
            b["url"],
            ago(b["created_at"], now),
            ", ".join(b["used_by"]) or "-",
            "yes" if b["managed"] else "no (kept on delete)",
        )
    out.print(t)


@storage.command("delete")
@click.argument("names", nargs=-1, required=True)
@click.option("--project", default=None, help="The bucket's project (the admin's choice).")
@click.option(
    "--forget",
    is_flag=True,
    help="For a bucket spotd did not create: forget it, leaving it and its objects as they are.",
)
@click.option(
    "-y", "--yes", is_flag=True, help="Accepted for SkyPilot's habit; spotctl asks nothing."
)
def delete(names: tuple[str, ...], project: str | None, forget: bool, yes: bool) -> None:
    """Delete buckets and every object in them (refused while a job or service uses one)."""
    del yes
    params = {k: v for k, v in (("project", project), ("forget", "1" if forget else "")) if v}
    for name in names:
        path = f"/v1/storage/{quote(name, safe='')}/delete"
        data = run(partial(_delete, path=path, params=params))
        what = "forgot" if "forgotten" in data else "deleted"
        out.print(f"{what} bucket {name}")
