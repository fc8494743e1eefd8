"""Services, their versions, and their replicas.

A service's and a replica's status change only through
:func:`~spotd.store.cas.compare_and_set`; both log to the event table under the service's id
(a replica's events name it in ``attempt_id``). ``create_replica`` writes the intent before any
provider call, as ``create_attempt`` does for jobs.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select, update

from spotd.serve.replica_state import ReplicaStatus
from spotd.store.base import StoreBase
from spotd.store.cas import (
    Note,
    Subject,
    checked_fields,
    compare_and_set,
    fetch,
    set_fields,
    write_event,
)
from spotd.store.errors import ServiceExists, StaleTransition
from spotd.store.projects import Admit, admitted
from spotd.store.rows import ReplicaRow, ServiceRow, ServiceStatus
from spotd.store.tables import Replica, Service, ServiceVersion, table_of
from spotd.types import Market

__all__ = ["REPLICAS", "SERVICES", "ServiceStore"]

SERVICES = Subject(
    what="service",
    table=table_of(Service),
    key="id",
    row=ServiceRow.from_mapping,
    links=(("service_id", "id"),),
    settable=frozenset(
        {
            "message",
            "lb_pid",
            "lb_start_ticks",
            "target",
            "upscale_since",
            "downscale_since",
            "ended_at",
        }
    ),
)
REPLICAS = Subject(
    what="replica",
    table=table_of(Replica),
    key="key",
    row=ReplicaRow.from_mapping,
    links=(("service_id", "service_id"), ("attempt_id", "key")),
    settable=frozenset(
        {"instance_id", "url", "started_at", "ready_at", "message", "notice_deadline"}
    ),
)
_LIVE_SERVICE = tuple(
    s.value for s in (ServiceStatus.STARTING, ServiceStatus.READY, ServiceStatus.NO_REPLICA)
)  # the statuses a new version may be added in


class ServiceStore(StoreBase):
    """The services and replicas part of :class:`~spotd.store.Store`."""

    def create_service(
        self,
        *,
        name: str,
        spec_json: str,
        spec_redacted_json: str,
        lb_port: int,
        lb_control_port: int,
        lb_token: str,
        target: int,
        now: float,
        project: str = "default",
        gpus: float = 0.0,
        admit: Admit | None = None,
    ) -> ServiceRow:
        """Store a new STARTING service (version 1) and its first event.

        Raises :class:`ServiceExists` while a service of that name is not DOWN. ``gpus``: what
        it reserves against ``project``'s quota while it is live; ``admit``, when given,
        decides in the same transaction whether the project may take it (see
        :mod:`spotd.store.projects`) and :class:`OverQuota` is raised if it may not.
        """
        st = SERVICES.table
        with self._write() as conn:
            live = conn.execute(
                select(st.c.id).where(st.c.name == name, st.c.status != ServiceStatus.DOWN.value)
            ).first()
            if live is not None:
                raise ServiceExists(f"a service named {name!r} exists (id {live.id})")
            if admit is not None:
                admitted(conn, project, admit)
            res = conn.execute(
                st.insert()
                .values(
                    name=name,
                    status=ServiceStatus.STARTING.value,
                    version=1,
                    update_mode="rolling",
                    spec_json=spec_json,
                    spec_redacted_json=spec_redacted_json,
                    created_at=now,
                    message="submitted",
                    lb_port=lb_port,
                    lb_control_port=lb_control_port,
                    lb_token=lb_token,
                    target=target,
                    project=project,
                    gpus=gpus,
                    owner=conn.get_execution_options().get("spotd_daemon"),  # its creator runs it
                )
                .returning(st.c.id)
            )
            sid = int(res.scalar_one())
            conn.execute(
                table_of(ServiceVersion)
                .insert()
                .values(
                    service_id=sid, version=1, spec_json=spec_json, mode="rolling", created_at=now
                )
            )
            write_event(
                conn,
                kind="service.status",
                message=f"→ STARTING: service {name!r} up, endpoint port {lb_port}",
                now=now,
                service_id=sid,
                data={"from": None, "to": ServiceStatus.STARTING.value},
            )
            return fetch(conn, SERVICES, sid)

    def get_service(self, service_id: int) -> ServiceRow | None:
        return self._get(SERVICES, service_id)

    def require_service(self, service_id: int) -> ServiceRow:
        """The service; :class:`NotFound` ("no service 3") if there is none."""
        return self._require(SERVICES, service_id)

    def service_by_name(self, name: str) -> ServiceRow | None:
        """The live service of that name, else the newest one that had it."""
        st = SERVICES.table
        q = (
            select(st)
            .where(st.c.name == name)
            .order_by((st.c.status == ServiceStatus.DOWN.value), st.c.id.desc())
        )
        with self._read() as conn:
            m = conn.execute(q).mappings().first()
            return None if m is None else ServiceRow.from_mapping(m)

    def list_services(
        self, *, live_only: bool = False, owner: str | None = None
    ) -> list[ServiceRow]:
        """Services, oldest first; ``live_only``: not DOWN; ``owner``: only those that daemon
        runs (several daemons on one database)."""
        st = SERVICES.table
        q = select(st).order_by(st.c.id)
        if live_only:
            q = q.where(st.c.status != ServiceStatus.DOWN.value)
        if owner is not None:
            q = q.where(st.c.owner == owner)
        with self._read() as conn:
            return [ServiceRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def transition_service(
        self,
        /,
        service_id: int,
        *,
        from_: Collection[ServiceStatus],
        to: ServiceStatus,
        reason: str,
        now: float,
        **fields: Any,
    ) -> ServiceRow:
        """Compare-and-set the service's status (and ``fields``), with its event. A terminal
        status sets ``ended_at`` unless ``fields`` does."""
        values = checked_fields(SERVICES, fields)
        values.setdefault("message", reason)
        if ServiceStatus(to).is_terminal:
            values.setdefault("ended_at", now)
        with self._write() as conn:
            return compare_and_set(
                conn,
                SERVICES,
                service_id,
                from_=from_,
                to=to,
                reason=reason,
                now=now,
                values=values,
                data={"fields": values},
            )

    def update_service_fields(
        self, /, service_id: int, *, now: float, event: str | None = None, **fields: Any
    ) -> ServiceRow:
        """Non-status bookkeeping (LB pid, autoscaler state). ``event``: also log it."""
        values = checked_fields(SERVICES, fields)
        note = None if event is None else Note(event, now)
        with self._write() as conn:
            return set_fields(conn, SERVICES, service_id, values, note=note)

    def add_service_version(
        self,
        service_id: int,
        *,
        spec_json: str,
        spec_redacted_json: str,
        mode: str,
        now: float,
    ) -> ServiceRow:
        """A new version becomes the newest: new replicas run it; ``mode`` says how the older
        ones leave. Only a live (not SHUTTING_DOWN/DOWN/FAILED) service can be updated."""
        st = SERVICES.table
        with self._write() as conn:
            svc = fetch(conn, SERVICES, service_id, for_update=True)
            if svc.status.value not in _LIVE_SERVICE:
                raise StaleTransition(
                    what="service",
                    row_id=service_id,
                    current=svc.status.value,
                    expected=_LIVE_SERVICE,
                    to="a new version",
                )
            version = svc.version + 1
            conn.execute(
                table_of(ServiceVersion)
                .insert()
                .values(
                    service_id=service_id,
                    version=version,
                    spec_json=spec_json,
                    mode=mode,
                    created_at=now,
                )
            )
            conn.execute(
                update(st)
                .where(st.c.id == service_id)
                .values(
                    version=version,
                    update_mode=mode,
                    spec_json=spec_json,
                    spec_redacted_json=spec_redacted_json,
                )
            )
            write_event(
                conn,
                kind="service.version",
                message=f"version {version} ({mode} update)",
                now=now,
                service_id=service_id,
                data={"version": version, "mode": mode},
            )
            return fetch(conn, SERVICES, service_id)

    def service_version_spec(self, service_id: int, version: int) -> str | None:
        vt = table_of(ServiceVersion)
        with self._read() as conn:
            spec: str | None = conn.execute(
                select(vt.c.spec_json).where(vt.c.service_id == service_id, vt.c.version == version)
            ).scalar_one_or_none()
            return spec

    # -- replicas ----------------------------------------------------------------------

    def create_replica(
        self,
        *,
        service_id: int,
        version: int,
        provider: str,
        region: str,
        zone: str,
        instance_type: str,
        market: Market | str,
        price_per_hour: float,
        port: int,
        token: str,
        now: float,
    ) -> ReplicaRow:
        """Write the intent for one replica (PROVISIONING, no instance id yet), before any
        provider call. Its id is the service's highest replica id + 1 (never reused)."""
        rt = REPLICAS.table
        market_value = Market(market).value
        with self._write() as conn:
            top = conn.execute(
                select(rt.c.replica_id)
                .where(rt.c.service_id == service_id)
                .order_by(rt.c.replica_id.desc())
                .limit(1)
            ).scalar_one_or_none()
            rid = int(top or 0) + 1
            key = f"s{service_id}-r{rid}"
            conn.execute(
                rt.insert().values(
                    key=key,
                    service_id=service_id,
                    replica_id=rid,
                    version=version,
                    status=ReplicaStatus.PROVISIONING.value,
                    provider=provider,
                    region=region,
                    zone=zone,
                    instance_type=instance_type,
                    market=market_value,
                    price_per_hour=price_per_hour,
                    port=port,
                    token=token,
                    created_at=now,
                    url="",
                    message="",
                    log_offset=0,
                )
            )
            write_event(
                conn,
                kind="replica.status",
                message=(
                    f"→ PROVISIONING: replica {rid} (v{version}) in {provider}/{region}/{zone}, "
                    f"{instance_type} {market_value} ${price_per_hour:.4f}/h"
                ),
                now=now,
                service_id=service_id,
                attempt_id=key,
                data={"from": None, "to": ReplicaStatus.PROVISIONING.value},
            )
            return fetch(conn, REPLICAS, key)

    def transition_replica(
        self,
        /,
        key: str,
        *,
        from_: Collection[ReplicaStatus],
        to: ReplicaStatus,
        reason: str,
        now: float,
        **fields: Any,
    ) -> ReplicaRow:
        """Compare-and-set a replica's status (and ``fields``), with its event. A terminal
        status sets ``ended_at``."""
        values = checked_fields(REPLICAS, fields)
        values.setdefault("message", reason)
        if ReplicaStatus(to).is_terminal:
            values["ended_at"] = now
        with self._write() as conn:
            return compare_and_set(
                conn, REPLICAS, key, from_=from_, to=to, reason=reason, now=now, values=values
            )

    def update_replica_fields(self, /, key: str, **fields: Any) -> ReplicaRow:
        values = checked_fields(REPLICAS, fields)
        with self._write() as conn:
            return set_fields(conn, REPLICAS, key, values)

    def record_replica_heartbeat(
        self,
        key: str,
        *,
        now: float,
        phase: str | None,
        exit_code: int | None,
        notice_deadline: float | None,
        log_offset: int,
    ) -> ReplicaRow:
        """A replica's agent reported; None leaves a field as it was (see record_heartbeat)."""
        values: dict[str, Any] = {"last_heartbeat_at": now, "log_offset": log_offset}
        if phase is not None:
            values["phase"] = phase
        if exit_code is not None:
            values["exit_code"] = exit_code
        if notice_deadline is not None:
            values["notice_deadline"] = notice_deadline
        with self._write() as conn:
            return set_fields(conn, REPLICAS, key, values)

    def replicas(
        self, *, service_id: int | None = None, live_only: bool = False
    ) -> list[ReplicaRow]:
        """Replicas by service and id; ``live_only``: not in a terminal status."""
        rt = REPLICAS.table
        q = select(rt).order_by(rt.c.service_id, rt.c.replica_id)
        if service_id is not None:
            q = q.where(rt.c.service_id == service_id)
        if live_only:
            q = q.where(rt.c.status.not_in([s.value for s in ReplicaStatus if s.is_terminal]))
        with self._read() as conn:
            return [ReplicaRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def get_replica(self, key: str) -> ReplicaRow | None:
        return self._get(REPLICAS, key)

    def require_replica(self, key: str) -> ReplicaRow:
        """The replica; :class:`NotFound` ("no replica s3-r2") if there is none."""
        return self._require(REPLICAS, key)
