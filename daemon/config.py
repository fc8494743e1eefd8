"""Where a daemon keeps its data and how it listens, from the environment and a config file.

Everything a daemon owns lives under ``$SPOTD_HOME`` (default ``~/.spotd``): the state database,
the API socket, logs, checkpoints and the local provider's instances. Two daemons with different
homes never see each other's instances (every instance is tagged with a hash of its home).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml


class ConfigError(Exception):
    """The config file or an environment variable is invalid."""


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    db_url: str
    tcp_host: str | None = None  # TCP API is off unless a host/port is configured
    tcp_port: int | None = None
    api_token: str | None = None  # required for TCP; never needed on the unix socket
    # TLS for the TCP API (spotd.ops.tls): the certificate (chain) and key the daemon serves,
    # and the CA that signed them, which agents reporting over TCP verify the daemon against.
    # Without TLS the TCP API listens only on loopback unless allow_plaintext_tcp says otherwise.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    allow_plaintext_tcp: bool = False
    # the agents' listener (spotd.server): only the agent routes, on ``agent_socket_path``
    # always, and on TCP when agent_host/agent_port are set (the same TLS rules as tcp_host)
    agent_host: str | None = None
    agent_port: int | None = None
    # the URL agents on remote backends reach that TCP listener at (its bind address may be
    # 0.0.0.0); default: http(s)://agent_host:agent_port
    agent_url: str | None = None
    local_catalog: Path | None = None  # override of the packaged local catalog
    # directories on the daemon's host under which the admin may name workdir/file_mounts
    # sources (the daemon packs them); none by default: clients upload their files
    file_roots: tuple[Path, ...] = ()
    observe_interval: float = 0.5  # seconds between batched provider listings
    heartbeat_seconds: float = 0.5  # agents' heartbeat period
    suspect_after: float = 3.0  # no heartbeat for this long: the instance is suspect
    lost_after: float = 60.0  # no heartbeat and no provider answer: declared lost
    checkpoint_sync_seconds: float = 0.5  # least time between two syncs of a changed checkpoint
    term_grace_seconds: float = 10.0
    # DEADLINE returns to spot that every zone refused (spotd.recovery.returns): after two
    # such checkpoints in a row, the next try waits this long, doubling up to the cap
    return_backoff_seconds: float = 600.0
    return_backoff_cap_seconds: float = 3600.0
    # managed jobs' placement: a zone that refused a launch is not tried at all for this long
    # (then its penalty decays; spotd.recovery.history); a preempted one is ranked last
    zone_hold_seconds: float = 30.0
    # partial recovery of multi-node jobs (spotd.control.node_replace): node replacement
    # rounds allowed per attempt before a lost node relaunches every node; 0: always relaunch
    node_replacements: float = 3.0
    # the idle-GPU rule (spotd.telemetry.idle): a job whose GPUs all stay below
    # idle_gpu_threshold % for idle_gpu_minutes is flagged, or stopped with idle_gpu_action
    # "stop"; 0 minutes: off
    idle_gpu_minutes: float = 0.0
    idle_gpu_threshold: float = 10.0
    idle_gpu_action: str = "flag"
    # retention (spotd.control.retention), in days; 0 keeps forever. Events and zone events
    # older than this are deleted; so are the attempt logs of jobs that ended this long ago.
    # Zone events younger than a day are always kept: placement reads a day of history.
    retention_events_days: float = 30.0
    retention_zone_events_days: float = 14.0
    retention_logs_days: float = 14.0
    retention_interval: float = 3600.0  # seconds between two retention passes
    # per-provider configuration, e.g. {"aws": {"regions": [...]}, "slurm": {...}}; the
    # embedded "local" provider is always on unless {"local": {"enabled": false}}
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # several daemons on one PostgreSQL (spotd.control.cluster): each with its own daemon_id,
    # all with the same cluster name (instances are tagged by it) and the same shared_dir (the
    # logs, packages and checkpoints every daemon reads and writes); lease_seconds: how long a
    # silent daemon keeps its work before the others take it over
    ha: bool = False
    daemon_id: str = ""
    cluster: str = "spotd"
    lease_seconds: float = 5.0
    shared_dir: Path | None = None

    @property
    def socket_path(self) -> Path:
        return self.home / "spotd.sock"

    @property
    def agent_socket_path(self) -> Path:
        """The agents' socket: mode 0666, serving only the agent routes (their own token)."""
        return self.home / "agent.sock"

    @property
    def pid_path(self) -> Path:
        return self.home / "spotd.pid"

    @property
    def data_dir(self) -> Path:
        """Where logs, packages and checkpoints live: the home, or with several daemons the
        directory they share."""
        return self.shared_dir or self.home

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def cas_dir(self) -> Path:
        """The package store (content-addressed workdirs and file mounts)."""
        return self.data_dir / "cas"

    @property
    def local_dir(self) -> Path:
        return self.home / "local"

    @property
    def home_tag(self) -> str:
        """Stable short id of this data directory, used to tag instances we own; with several
        daemons, of their cluster, so that any of them adopts any instance."""
        return _home_tag(self.cluster if self.ha else None, self.home)

    def with_overrides(self, **kw: Any) -> Settings:
        return replace(self, **kw)


@functools.cache
def _home_tag(cluster: str | None, home: Path) -> str:
    # asked once per launched node: resolving the path each time showed in profiles
    if cluster is not None:
        return hashlib.sha256(f"cluster:{cluster}".encode()).hexdigest()[:12]
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]


_FLOAT_KEYS = (
    "observe_interval",
    "heartbeat_seconds",
    "suspect_after",
    "lost_after",
    "checkpoint_sync_seconds",
    "term_grace_seconds",
    "return_backoff_seconds",
    "return_backoff_cap_seconds",
    "zone_hold_seconds",
    "node_replacements",
    "idle_gpu_minutes",
    "idle_gpu_threshold",
    "retention_events_days",
    "retention_zone_events_days",
    "retention_logs_days",
    "retention_interval",
)


_TLS_KEYS = ("tls_cert", "tls_key", "tls_ca")
_BOOL_WORDS = MappingProxyType(
    {
        **dict.fromkeys(("1", "true", "yes", "on"), True),
        **dict.fromkeys(("", "0", "false", "no", "off"), False),
    }
)


def _tls_settings(data: dict[str, Any], env: dict[str, str], home: Path) -> dict[str, Any]:
    """TLS paths (relative ones are under ``home``, where config.yaml is) and the plaintext
    opt-in, from ``SPOTD_TLS_CERT``/``_KEY``/``_CA``, ``SPOTD_ALLOW_PLAINTEXT_TCP`` or the file."""
    out: dict[str, Any] = {}
    for key in _TLS_KEYS:
        raw = env.get(f"SPOTD_{key.upper()}") or data.get(key)
        if raw:
            out[key] = home / Path(str(raw)).expanduser()
    if bool(out.get("tls_cert")) != bool(out.get("tls_key")):
        raise ConfigError("TLS needs both tls_cert and tls_key (SPOTD_TLS_CERT, SPOTD_TLS_KEY)")
    raw_allow = env.get("SPOTD_ALLOW_PLAINTEXT_TCP", data.get("allow_plaintext_tcp", False))
    allow = _BOOL_WORDS.get(raw_allow.strip().lower()) if isinstance(raw_allow, str) else raw_allow
    if not isinstance(allow, bool):
        raise ConfigError(f"allow_plaintext_tcp must be true or false, got {raw_allow!r}")
    out["allow_plaintext_tcp"] = allow
    return out


def _agent_listener(data: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The agents' TCP listener, from ``SPOTD_AGENT_TCP`` (HOST:PORT) or agent_host/agent_port,
    and the URL agents are told to call it at (``SPOTD_AGENT_URL`` or agent_url)."""
    raw = env.get("SPOTD_AGENT_TCP") or (
        f"{data['agent_host']}:{data.get('agent_port', 8471)}" if data.get("agent_host") else ""
    )
    out: dict[str, Any] = {}
    if raw:
        host, _, port = str(raw).rpartition(":")
        try:
            out["agent_host"], out["agent_port"] = host or "127.0.0.1", int(port)
        except ValueError as exc:
            raise ConfigError(f"SPOTD_AGENT_TCP must be HOST:PORT, got {raw!r}") from exc
    url = env.get("SPOTD_AGENT_URL") or data.get("agent_url")
    if url:
        if not str(url).startswith(("http://", "https://")):
            raise ConfigError(f"agent_url must be an http(s):// URL, got {url!r}")
        out["agent_url"] = str(url).rstrip("/")
    return out


def _file_roots(env: dict[str, str], data: dict[str, Any]) -> tuple[Path, ...]:
    """``SPOTD_FILE_ROOTS`` (paths joined by ``:``) or the file's ``file_roots`` (a list of
    absolute paths), resolved: a source is allowed if it resolves under one of them."""
    raw = env.get("SPOTD_FILE_ROOTS")
    items: Any = raw.split(os.pathsep) if raw else data.get("file_roots") or []
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ConfigError("file_roots must be a list of absolute paths")
    roots = tuple(Path(i).expanduser() for i in items if i)
    relative = [str(r) for r in roots if not r.is_absolute()]
    if relative:
        raise ConfigError(f"file_roots must be absolute paths, got {relative}")
    return tuple(r.resolve() for r in roots)


def default_home() -> Path:
    return Path(os.environ.get("SPOTD_HOME") or Path.home() / ".spotd").expanduser()


def load_settings(home: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Settings from ``$SPOTD_HOME/config.yaml`` with environment variables on top."""
    env = dict(os.environ) if env is None else env
    home = (home or Path(env.get("SPOTD_HOME") or Path.home() / ".spotd")).expanduser()
    data: dict[str, Any] = {}
    cfg = home / "config.yaml"
    if cfg.exists():
        try:
            loaded = yaml.safe_load(cfg.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg}: expected a mapping at the top level")
        data = loaded
    known = {
        "db_url",
        "tcp_host",
        "tcp_port",
        "api_token",
        *_TLS_KEYS,
        "allow_plaintext_tcp",
        "agent_host",
        "agent_port",
        "agent_url",
        "local_catalog",
        "file_roots",
        "providers",
        "idle_gpu_action",
        "ha",
        "daemon_id",
        "cluster",
        "lease_seconds",
        "shared_dir",
        *_FLOAT_KEYS,
    }
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{cfg}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    db_url = env.get("SPOTD_DB_URL") or data.get("db_url") or f"sqlite:///{home / 'state.db'}"
    tcp = env.get("SPOTD_TCP") or (
        f"{data['tcp_host']}:{data.get('tcp_port', 8470)}" if data.get("tcp_host") else ""
    )
    tcp_host: str | None = None
    tcp_port: int | None = None
    if tcp:
        host, _, port = tcp.rpartition(":")
        try:
            tcp_host, tcp_port = host or "127.0.0.1", int(port)
        except ValueError as exc:
            raise ConfigError(f"SPOTD_TCP must be HOST:PORT, got {tcp!r}") from exc
    agent = _agent_listener(data, env)
    token = env.get("SPOTD_API_TOKEN") or data.get("api_token")
    if tcp_host and not token:
        raise ConfigError("the TCP API needs a token: set SPOTD_API_TOKEN or api_token")
    tls = _tls_settings(data, env, home)
    floats: dict[str, float] = {}
    for key in _FLOAT_KEYS:
        raw = env.get(f"SPOTD_{key.upper()}", data.get(key))
        if raw is not None:
            try:
                floats[key] = float(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key} must be a number, got {raw!r}") from exc
            if not math.isfinite(floats[key]):  # nan would disable every comparison, inf a loop
                raise ConfigError(f"{key} must be a finite number, got {raw!r}")
            if not floats[key] >= 0:
                raise ConfigError(f"{key} must be 0 or more, got {raw!r}")
    idle_action = str(env.get("SPOTD_IDLE_GPU_ACTION") or data.get("idle_gpu_action") or "flag")
    if idle_action not in ("flag", "stop"):
        raise ConfigError(f"idle_gpu_action must be flag or stop, got {idle_action!r}")
    catalog = env.get("SPOTD_LOCAL_CATALOG") or data.get("local_catalog")
    file_roots = _file_roots(env, data)
    providers = data.get("providers") or {}
    if env.get("SPOTD_PROVIDERS_JSON"):  # for tests and containers: the same shape, as JSON
        try:
            providers = json.loads(env["SPOTD_PROVIDERS_JSON"])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SPOTD_PROVIDERS_JSON is not valid JSON: {exc}") from exc
    if not isinstance(providers, dict) or not all(isinstance(v, dict) for v in providers.values()):
        raise ConfigError("providers must map a provider name to its settings (a mapping)")
    settings = Settings(
        home=home,
        db_url=str(db_url),
        tcp_host=tcp_host,
        tcp_port=tcp_port,
        api_token=token,
        **tls,
        **agent,
        local_catalog=Path(catalog) if catalog else None,
        file_roots=file_roots,
        providers=providers,
        idle_gpu_action=idle_action,
        **_ha_settings(data, env, str(db_url)),
        **floats,  # type: ignore[arg-type]
    )
    if settings.return_backoff_cap_seconds < settings.return_backoff_seconds:
        raise ConfigError("return_backoff_cap_seconds must be at least return_backoff_seconds")
    if settings.zone_hold_seconds > 86_400:  # placement reads a day of zone history
        raise ConfigError("zone_hold_seconds must be a day (86400) or less")
    return settings


_DAEMON_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _ha_settings(data: dict[str, Any], env: dict[str, str], db_url: str) -> dict[str, Any]:
    """Several daemons on one PostgreSQL: ``SPOTD_HA``, ``SPOTD_DAEMON_ID`` (default: the host
    name), ``SPOTD_CLUSTER``, ``SPOTD_LEASE_SECONDS`` and ``SPOTD_SHARED_DIR``, or the file's
    ``ha``, ``daemon_id``, ``cluster``, ``lease_seconds``, ``shared_dir``."""
    raw = str(env.get("SPOTD_HA", data.get("ha", False))).strip().lower()
    if raw not in _BOOL_WORDS:
        raise ConfigError(f"SPOTD_HA must be true or false, got {raw!r}")
    shared = env.get("SPOTD_SHARED_DIR") or data.get("shared_dir")
    out: dict[str, Any] = {"shared_dir": Path(shared).expanduser() if shared else None}
    if not _BOOL_WORDS[raw]:
        return out
    if not db_url.startswith("postgresql"):
        raise ConfigError(
            "several daemons (SPOTD_HA) need PostgreSQL: set SPOTD_DB_URL to a "
            "postgresql+psycopg:// URL that every daemon reaches"
        )
    daemon_id = str(env.get("SPOTD_DAEMON_ID") or data.get("daemon_id") or socket.gethostname())
    if not _DAEMON_ID.match(daemon_id):
        raise ConfigError(f"daemon_id must match {_DAEMON_ID.pattern}, got {daemon_id!r}")
    cluster = str(env.get("SPOTD_CLUSTER") or data.get("cluster") or "spotd")
    if not _DAEMON_ID.match(cluster):
        raise ConfigError(f"cluster must match {_DAEMON_ID.pattern}, got {cluster!r}")
    raw_lease = env.get("SPOTD_LEASE_SECONDS", data.get("lease_seconds", 5.0))
    try:
        lease = float(raw_lease)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"lease_seconds must be a number, got {raw_lease!r}") from exc
    if not 1.0 <= lease <= 300.0:
        raise ConfigError(f"lease_seconds must be between 1 and 300, got {raw_lease!r}")
    return out | {"ha": True, "daemon_id": daemon_id, "cluster": cluster, "lease_seconds": lease}
