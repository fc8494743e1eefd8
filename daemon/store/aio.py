"""The store for the event loop: every call runs on one dedicated store thread.

One thread, so calls run one at a time in the order they were made (SQLite has one writer
anyway) and the loop never blocks on disk or network I/O. This is the daemon's one place where
a thread is allowed.

The coroutine methods are not written out: each is one line, ``get_job =
_offload(Store.get_job)``, whose type mypy derives from the :class:`Store` method (same
parameters, result awaited), so a change to a ``Store`` signature reaches every ``await
astore.…`` call site without a copy to keep in step. The method is looked up on the wrapped
store when the call is made, so what runs is whatever ``store.get_job`` is then.

(The ``Store`` methods that take ``**fields`` declare ``self`` positional-only, ``self, /``:
otherwise ``self`` could be passed by keyword into ``**fields``, and mypy refuses to drop it
from the signature.)
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from spotd.store.store import Store

__all__ = ["AsyncStore"]

P = ParamSpec("P")
R = TypeVar("R")


class _Offload(Generic[P, R]):
    """A :class:`Store` method, offered on :class:`AsyncStore` as a coroutine method."""

    def __init__(self, method: Callable[Concatenate[Store, P], R], *, aside: bool = False) -> None:
        self._name = method.__name__
        self._aside = aside  # on the lease thread, never behind the store thread's queue
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, obj: None, owner: type[AsyncStore]) -> Self: ...

    @overload
    def __get__(
        self, obj: AsyncStore, owner: type[AsyncStore]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(
        self, obj: AsyncStore | None, owner: type[AsyncStore]
    ) -> Self | Callable[P, Coroutine[Any, Any, R]]:
        if obj is None:
            return self
        name = self._name
        astore = obj
        aside = self._aside

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            method: Callable[P, R] = getattr(astore.store, name)
            executor = astore._aside if aside else astore._executor
            return await astore._run(executor, method, *args, **kwargs)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = self.__doc__
        return call


_offload = _Offload


class AsyncStore:
    """:class:`Store` for the event loop: every call runs on one dedicated store thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotd-store")
        # several daemons on one database: the lease is renewed on a thread of its own, so a
        # long queue on the store thread (ten thousand jobs' writes) never lets it lapse
        self._aside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotd-lease")

    @classmethod
    async def open(cls, url: str) -> AsyncStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotd-store")
        try:
            store = await asyncio.get_running_loop().run_in_executor(executor, Store.open, url)
        finally:
            executor.shutdown(wait=False)
        return cls(store)

    async def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._run(self._executor, fn, *args, **kwargs)

    async def _run(
        self, executor: ThreadPoolExecutor, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(executor, call)

    async def close(self) -> None:
        try:
            self._aside.shutdown(wait=True)
            await self._call(self.store.close)
        finally:
            self._executor.shutdown(wait=True)

    schema_version = _offload(Store.schema_version)

    # jobs and attempts
    create_job = _offload(Store.create_job)
    get_job = _offload(Store.get_job)
    require_job = _offload(Store.require_job)
    job_state = _offload(Store.job_state)
    list_jobs = _offload(Store.list_jobs)
    job_page = _offload(Store.job_page)
    job_counts = _offload(Store.job_counts)
    live_instance_keys = _offload(Store.live_instance_keys)
    recorded_instance_keys = _offload(Store.recorded_instance_keys)
    reapable_nodes = _offload(Store.reapable_nodes)
    active_jobs = _offload(Store.active_jobs)
    active_job_ids = _offload(Store.active_job_ids)
    jobs_ended_before = _offload(Store.jobs_ended_before)
    transition_job = _offload(Store.transition_job)
    update_job_fields = _offload(Store.update_job_fields)
    record_checkpoint = _offload(Store.record_checkpoint)
    create_attempt = _offload(Store.create_attempt)
    start_attempt = _offload(Store.start_attempt)
    hand_over = _offload(Store.hand_over)
    attempt_running = _offload(Store.attempt_running)
    transition_attempt = _offload(Store.transition_attempt)
    every_attempt = _offload(Store.every_attempt)
    attempts = _offload(Store.attempts)
    get_attempt = _offload(Store.get_attempt)
    require_attempt = _offload(Store.require_attempt)

    # instances
    set_instance_id = _offload(Store.set_instance_id)
    instances = _offload(Store.instances)
    get_instance = _offload(Store.get_instance)
    require_instance = _offload(Store.require_instance)
    instance_by_token = _offload(Store.instance_by_token)
    hold_agent_config = _offload(Store.hold_agent_config)
    take_agent_config = _offload(Store.take_agent_config)
    record_heartbeat = _offload(Store.record_heartbeat)
    record_keepalives = _offload(Store.record_keepalives)
    set_log_offset = _offload(Store.set_log_offset)
    mark_instance_terminated = _offload(Store.mark_instance_terminated)
    replace_nodes = _offload(Store.replace_nodes)

    # events and zone history
    add_event = _offload(Store.add_event)
    events = _offload(Store.events)
    service_events = _offload(Store.service_events)
    add_zone_event = _offload(Store.add_zone_event)
    zone_events = _offload(Store.zone_events)
    prune_events = _offload(Store.prune_events)
    prune_zone_events = _offload(Store.prune_zone_events)

    # projects
    create_project = _offload(Store.create_project)
    update_project = _offload(Store.update_project)
    project_usage = _offload(Store.project_usage)
    get_project = _offload(Store.get_project)
    project_by_token_hash = _offload(Store.project_by_token_hash)
    list_projects = _offload(Store.list_projects)

    # pools (spotd.control.pools)
    create_pool = _offload(Store.create_pool)
    pool_by_name = _offload(Store.pool_by_name)
    get_pool = _offload(Store.get_pool)
    list_pools = _offload(Store.list_pools)
    set_pool_workers = _offload(Store.set_pool_workers)
    pool_down = _offload(Store.pool_down)
    add_pool_worker = _offload(Store.add_pool_worker)
    pool_workers = _offload(Store.pool_workers)
    pool_worker = _offload(Store.pool_worker)
    add_pool_jobs = _offload(Store.add_pool_jobs)
    pool_jobs = _offload(Store.pool_jobs)
    get_pool_job = _offload(Store.get_pool_job)
    pool_attempts = _offload(Store.pool_attempts)
    open_pool_attempt = _offload(Store.open_pool_attempt)
    claim_pool_job = _offload(Store.claim_pool_job)
    finish_pool_attempt = _offload(Store.finish_pool_attempt)
    requeue_pool_attempt = _offload(Store.requeue_pool_attempt)
    cancel_pool_job = _offload(Store.cancel_pool_job)
    pool_attempt = _offload(Store.pool_attempt)

    # several daemons on one database (spotd.store.leases): the lease's calls on their thread
    join_cluster = _offload(Store.join_cluster, aside=True)
    renew_lease = _offload(Store.renew_lease, aside=True)
    leave_cluster = _offload(Store.leave_cluster, aside=True)
    take_over = _offload(Store.take_over, aside=True)
    daemons = _offload(Store.daemons)
    job_shares = _offload(Store.job_shares)
    movable_jobs = _offload(Store.movable_jobs)
    release_job = _offload(Store.release_job)
    notify_wake = _offload(Store.notify_wake)

    # dashboard sign-ins (spotd.store.signin)
    add_session = _offload(Store.add_session)
    session = _offload(Store.session)
    end_session = _offload(Store.end_session)
    count_sessions = _offload(Store.count_sessions)
    add_login_link = _offload(Store.add_login_link)
    redeem_login_link = _offload(Store.redeem_login_link)
    count_login_links = _offload(Store.count_login_links)

    # services and replicas
    create_service = _offload(Store.create_service)
    get_service = _offload(Store.get_service)
    require_service = _offload(Store.require_service)
    service_by_name = _offload(Store.service_by_name)
    list_services = _offload(Store.list_services)
    transition_service = _offload(Store.transition_service)
    update_service_fields = _offload(Store.update_service_fields)
    add_service_version = _offload(Store.add_service_version)
    service_version_spec = _offload(Store.service_version_spec)
    create_replica = _offload(Store.create_replica)
    transition_replica = _offload(Store.transition_replica)
    update_replica_fields = _offload(Store.update_replica_fields)
    record_replica_heartbeat = _offload(Store.record_replica_heartbeat)
    replicas = _offload(Store.replicas)
    get_replica = _offload(Store.get_replica)
    require_replica = _offload(Store.require_replica)
