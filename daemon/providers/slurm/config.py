"""The ``providers.slurm`` section: partitions as regions, each with the shape one instance gets
and a notional price (the provider's catalog is generated from it, not from a snapshot)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotd.types import CatalogEntry

PROVIDER_NAME = "slurm"


class SlurmConfigError(ValueError):
    """The ``slurm`` provider configuration is unusable; the message names the key."""


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition as a region: the shape one instance gets, and what it costs."""

    name: str
    instance_type: str
    cpus: float
    memory_gb: float
    gpus: float = 0
    gpu: str | None = None
    price: float = 0.0
    preemptible: bool = False
    qos: str | None = None
    time_limit: str | None = None
    sbatch_args: tuple[str, ...] = ()

    def catalog_entry(self) -> CatalogEntry:
        return CatalogEntry(
            provider=PROVIDER_NAME,
            region=self.name,
            zone=self.name,
            instance_type=self.instance_type,
            vcpus=self.cpus,
            memory_gb=self.memory_gb,
            accelerator=self.gpu if self.gpus else None,
            accelerator_count=self.gpus,
            # CatalogEntry always carries an on-demand price; a preemptible partition refuses
            # on-demand launches (see SlurmProvider.launch), so this number is never paid
            ondemand_price=self.price,
            spot_price=self.price if self.preemptible else None,
        )


_PARTITION_KEYS = frozenset(
    {
        "cpus",
        "memory_gb",
        "gpus",
        "gpu",
        "price",
        "preemptible",
        "instance_type",
        "qos",
        "time_limit",
        "sbatch_args",
    }
)
_TOP_KEYS = frozenset(
    {
        "partitions",
        "state_dir",
        "python",
        "daemon_url",
        "slurm_conf",
        "command_timeout",
        "sbatch_args",
        # which projects may run here: read by every placement (spotd.providers.allowlist)
        "projects",
        "allow_projects",
    }
)


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SlurmConfigError(f"slurm: {where}: expected a non-negative number, got {value!r}")
    if positive and value == 0:
        raise SlurmConfigError(f"slurm: {where}: expected a positive number, got {value!r}")
    return float(value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SlurmConfigError(f"slurm: {where}: expected a list of strings, got {value!r}")
    return tuple(value)


def parse_partitions(raw: Any) -> list[Partition]:
    """The ``partitions`` mapping of the provider config, validated."""
    if not isinstance(raw, Mapping) or not raw:
        raise SlurmConfigError(
            "slurm: partitions: expected a non-empty mapping of partition name to its shape, "
            'e.g. {"debug": {"cpus": 2, "memory_gb": 1}}'
        )
    out = []
    for name, body in raw.items():
        where = f"partitions.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise SlurmConfigError(f"slurm: {where}: not a usable partition name")
        if not isinstance(body, Mapping):
            raise SlurmConfigError(f"slurm: {where}: expected a mapping, got {body!r}")
        unknown = sorted(set(body) - _PARTITION_KEYS)
        if unknown:
            raise SlurmConfigError(
                f"slurm: {where}: unknown key {unknown[0]!r} "
                f"(expected one of: {', '.join(sorted(_PARTITION_KEYS))})"
            )
        for key in ("cpus", "memory_gb"):
            if key not in body:
                raise SlurmConfigError(f"slurm: {where}: missing required key {key!r}")
        cpus = _number(body["cpus"], f"{where}.cpus", positive=True)
        gpus = _number(body.get("gpus", 0), f"{where}.gpus")
        gpu = body.get("gpu")
        if gpus and not isinstance(gpu, str):
            raise SlurmConfigError(f"slurm: {where}: gpus is set, so gpu (the model) is required")
        out.append(
            Partition(
                name=name,
                instance_type=str(body.get("instance_type") or f"{name}-{cpus:g}cpu"),
                cpus=cpus,
                memory_gb=_number(body["memory_gb"], f"{where}.memory_gb", positive=True),
                gpus=gpus,
                gpu=gpu if gpus else None,
                price=_number(body.get("price", 0.0), f"{where}.price"),
                preemptible=bool(body.get("preemptible", False)),
                qos=body.get("qos"),
                time_limit=body.get("time_limit"),
                sbatch_args=_strings(body.get("sbatch_args", []), f"{where}.sbatch_args"),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class SlurmConfig:
    """The whole section, validated (the provider's keyword arguments)."""

    root: Path  # state_dir: on storage shared with the compute nodes
    partitions: tuple[Partition, ...]
    python: str  # the agent's interpreter on the nodes
    daemon_url: str | None  # where agents report; None: the daemon's socket
    slurm_conf: str | None
    command_timeout: float
    sbatch_args: tuple[str, ...]


def parse_config(cfg: Mapping[str, Any], *, default_root: Path) -> SlurmConfig:
    """The ``providers.slurm`` mapping, validated; ``default_root`` is used without state_dir."""
    unknown = sorted(set(cfg) - _TOP_KEYS)
    if unknown:
        raise SlurmConfigError(
            f"slurm: unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(_TOP_KEYS))})"
        )
    return SlurmConfig(
        root=Path(cfg.get("state_dir") or default_root).expanduser(),
        partitions=tuple(parse_partitions(cfg.get("partitions"))),
        python=str(cfg.get("python") or sys.executable),
        daemon_url=cfg.get("daemon_url") or None,
        slurm_conf=cfg.get("slurm_conf") or None,
        command_timeout=_number(cfg.get("command_timeout", 30.0), "command_timeout", positive=True),
        sbatch_args=_strings(cfg.get("sbatch_args", []), "sbatch_args"),
    )
