"""Kubernetes provider: an instance is a pod running the agent; a region is a context+namespace.

What a launch creates, per node of an attempt (``spec.key``, e.g. ``j3-a2-n0``):

* a Secret ``spotd-<key>`` holding ``agent.json`` (the ``AgentConfig``: it carries the agent's
  bearer token and the task's secrets, so it is never put in the pod spec, where anyone who may
  ``get pods`` would read it, nor in the container's environment, which the job inherits);
* a Pod ``spotd-<key>`` whose container copies that file into an ``emptyDir`` and runs
  ``python -m spotd.agent``. The image must have spotd installed (``image`` in the config).
  The pod's shell turns the kubelet's SIGTERM (pod deleted, node drained, spot reclaim) into
  the agent's notice file, so the agent checkpoints within ``terminationGracePeriodSeconds``.

The manifests and what a pod's status means are pure functions (``pods.py``); the per-region
cache and its watch loop are ``watch.py``; this module makes the API calls.

Idempotency is the pod name: a create answered 409 means the key was launched already, and
the existing pod is returned — after checking that it is ours (same key, same home), so two
daemons sharing a namespace can never adopt each other's pods.

Labels carry the tags in label-safe form (the exact tags are in an annotation), and the home
tag is a label, so observing a region is ONE label-selected list (or one watch) per region —
never a call per pod. A region whose listing fails is served from its last snapshot
(unreachable is not dead); a region never listed successfully makes the call raise
``ProviderUnavailable``, because a partial answer would read as "every pod there is gone".

Failures are classified at this boundary and nowhere else: 403 "exceeded quota" →
QuotaExceeded; other 403, 400, 404 (no such namespace), 422 → InvalidRequest; 401, 429, 5xx,
connection errors and timeouts → ProviderUnavailable.

kubernetes_asyncio is imported only here (the daemon imports this package lazily).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.rest import ApiException

from spotd.providers.base import (
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.providers.kubernetes.config import (
    PROVIDER_NAME,
    K8sConfig,
    RegionConfig,
    catalog_entries,
    parse_config,
)
from spotd.providers.kubernetes.pods import (
    QUOTA_NAME,
    Manifest,
    PodView,
    build_manifests,
    is_ours,
    namespace_and_quota,
    not_honoured,
    observed,
    owner_conflict,
    pod_state,
    selector,
)
from spotd.providers.kubernetes.watch import EventStream, RegionCache, RegionWatcher
from spotd.types import CatalogEntry, InstanceId, InstanceState

log = structlog.get_logger("spotd.providers.kubernetes")

_TRANSPORT = (aiohttp.ClientError, TimeoutError, OSError)


# -- error classification ------------------------------------------------------------------


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return str(exc.body or exc.reason or "")
    return str(body.get("message") or exc.reason or "") if isinstance(body, dict) else ""


def classify(exc: BaseException, *, action: str) -> ProviderError:
    """Turn an API or transport failure into the provider error type policies branch on."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = _status_message(exc)
        text = f"{action}: HTTP {status}: {message}"
        if status == 403 and "exceeded quota" in message:
            return QuotaExceeded(text)
        if status in (400, 403, 404, 422):
            return InvalidRequest(text)
        return ProviderUnavailable(text)  # 401 (token expiry), 409 out of place, 429, 5xx, 0
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        return ProviderUnavailable(f"{action}: {type(exc).__name__}: {exc}")
    return ProviderUnavailable(f"{action}: unexpected {type(exc).__name__}: {exc}")


async def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call an API method for its raw JSON (dicts, not models); non-2xx raises ApiException.

    ``_preload_content=False`` skips kubernetes_asyncio's model deserialisation (the cache
    and ``pod_state`` read plain dicts, as the API sends them), but also its status check,
    which is therefore done here.
    """
    resp = await method(*args, _preload_content=False, **kwargs)
    try:
        raw = await resp.read()
        if not 200 <= resp.status <= 299:
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body = raw.decode(errors="replace")
            raise exc
        data = json.loads(raw) if raw else {}
        return data if isinstance(data, dict) else {}
    finally:
        resp.release()


async def _create(method: Callable[..., Any], *args: Any, action: str) -> dict[str, Any] | None:
    """Create an object; None if it exists already (409), other failures classified."""
    try:
        return await _call(method, *args)
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise classify(exc, action=action) from exc
    except _TRANSPORT as exc:
        raise classify(exc, action=action) from exc


@dataclass(frozen=True, slots=True)
class _Lines:
    """A watch response as the watch loop reads it."""

    resp: Any  # the aiohttp response of a ``watch=True`` list

    async def readline(self) -> bytes:
        line: bytes = await self.resp.content.readline()
        return line

    def release(self) -> None:
        self.resp.release()


# -- the provider --------------------------------------------------------------------------


ApiFactory = Callable[[RegionConfig], Awaitable[Any]]  # region -> kubernetes_asyncio ApiClient


async def default_api_client(region: RegionConfig) -> k8s_client.ApiClient:
    """A client for the region's cluster: a bare URL (``host``) or a kubeconfig context."""
    if region.host:
        conf = k8s_client.Configuration(host=region.host.rstrip("/"))
        return k8s_client.ApiClient(conf)
    try:
        return await k8s_config.new_client_from_config(
            config_file=region.kubeconfig, context=region.context, persist_config=False
        )
    except (k8s_config.ConfigException, OSError) as exc:
        raise ProviderUnavailable(
            f"k8s region {region.name}: cannot load kubeconfig "
            f"{region.kubeconfig or '~/.kube/config'} context {region.context}: {exc}"
        ) from exc


class KubernetesProvider:
    """Pods in configured namespaces/contexts, observed through one watch per region.

    Capabilities: ``AgentEndpoint`` (agents call ``daemon_url``; notices reach them through the
    pod shell's SIGTERM trap, so ``notice_url`` is empty) and ``AdvanceNotices`` (a
    DisruptionTarget condition or a terminating pod is listed as NOTICE).
    """

    name = PROVIDER_NAME
    notice_url = ""  # agents get notices through the pod shell's SIGTERM trap
    notice_source = "a pod's DisruptionTarget condition, or its deletion by someone else"

    def __init__(
        self,
        config: K8sConfig,
        *,
        home_tag: str | None,
        api_factory: ApiFactory = default_api_client,
        clock: Callable[[], float] = time.time,
        tombstone_seconds: float = 600.0,
    ) -> None:
        self.config = config
        self.home_tag = home_tag
        self.daemon_url = config.daemon_url  # where agents in the pods report
        self._regions = {r.name: r for r in config.regions}
        self._api_factory = api_factory
        self._clock = clock
        self._tombstone_seconds = tombstone_seconds
        self._apis: dict[str, Any] = {}
        self._api_lock = asyncio.Lock()
        self._caches = {r: RegionCache() for r in self._regions}
        self._first_seen: dict[tuple[str, str, str], float] = {}
        self._stop = asyncio.Event()
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._catalog = catalog_entries(config)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, home_tag: str | None) -> KubernetesProvider:
        return cls(parse_config(cfg), home_tag=home_tag)

    # -- plumbing ---------------------------------------------------------------------------

    async def _core(self, region: str) -> k8s_client.CoreV1Api:
        async with self._api_lock:
            api = self._apis.get(region)
            if api is None:
                api = await self._api_factory(self._regions[region])
                self._apis[region] = api
        return k8s_client.CoreV1Api(api)

    def _region_of(self, instance_id: str) -> tuple[RegionConfig, str]:
        region, _, name = instance_id.partition("/")
        if region not in self._regions or not name:
            raise InvalidRequest(f"not a k8s instance id of this config: {instance_id!r}")
        return self._regions[region], name

    # -- the provider interface -------------------------------------------------------------

    def catalog(self) -> Sequence[CatalogEntry]:
        return self._catalog

    def build_pod(self, spec: InstanceSpec) -> tuple[Manifest, Manifest]:
        """The (secret, pod) manifests for a spec (no I/O; tests read them directly)."""
        region = self._regions.get(spec.region)
        if region is None:
            raise InvalidRequest(f"no k8s region {spec.region!r}")
        return build_manifests(
            spec, region, name_prefix=self.config.pod_name_prefix, home_tag=self.home_tag
        )

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        secret, pod = self.build_pod(spec)
        for why in not_honoured(spec):
            log.warning("resource key not honoured", key=spec.key, reason=why)
        region = self._regions[spec.region]
        name = pod["metadata"]["name"]
        iid = InstanceId(f"{region.name}/{name}")
        core = await self._core(region.name)
        # None: this key's secret exists (a retried launch)
        await _create(
            core.create_namespaced_secret, region.namespace, secret, action=f"create secret {name}"
        )
        body = await _create(
            core.create_namespaced_pod, region.namespace, pod, action=f"create pod {name}"
        )
        if body is None:
            await self._check_owner(core, region, name, spec.key)
            return iid  # idempotent: the pod for this key exists
        cache = self._caches[region.name]
        cache.deleting.pop(name, None)
        uid = (body.get("metadata") or {}).get("uid")
        if uid:  # let the cluster's garbage collector remove the secret with the pod
            owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}
            with contextlib.suppress(ApiException, *_TRANSPORT):
                await _call(
                    core.patch_namespaced_secret,
                    name,
                    region.namespace,
                    {"metadata": {"ownerReferences": [owner]}},
                )
        cache.pods.setdefault(name, body if isinstance(body, dict) else pod)
        cache.tombstones.pop(name, None)
        return iid

    async def _check_owner(
        self, core: k8s_client.CoreV1Api, region: RegionConfig, name: str, key: str
    ) -> None:
        try:
            existing = await _call(core.read_namespaced_pod, name, region.namespace)
        except (ApiException, *_TRANSPORT) as exc:
            raise classify(exc, action=f"read pod {name}") from exc
        conflict = owner_conflict(existing, key=key, home_tag=self.home_tag)
        if conflict is not None:
            raise InvalidRequest(f"pod {region.namespace}/{name} exists but {conflict}")

    async def list_instances(self) -> Sequence[ObservedInstance]:
        self._start_watchers()
        out: list[ObservedInstance] = []
        errors: list[str] = []
        for region in self._regions.values():
            cache = self._caches[region.name]
            if not cache.watching:
                try:
                    await self._relist(region)
                except ProviderError as exc:
                    if cache.synced_at is None:
                        errors.append(str(exc))
                        continue
                    log.warning(
                        "k8s listing failed; serving the last snapshot",
                        region=region.name,
                        error=str(exc),
                    )
            out.extend(self._observe_region(region))
        if errors:
            raise ProviderUnavailable("; ".join(errors))
        return out

    async def terminate(self, instance_id: InstanceId) -> None:
        region, name = self._region_of(instance_id)
        core = await self._core(region.name)
        cache = self._caches[region.name]
        cache.deleting[name] = self._clock()
        for what, call in (
            ("pod", core.delete_namespaced_pod),
            ("secret", core.delete_namespaced_secret),
        ):
            try:
                await _call(call, name, region.namespace)
            except ApiException as exc:
                if exc.status != 404:  # already gone: terminate is idempotent
                    raise classify(exc, action=f"delete {what} {name}") from exc
            except _TRANSPORT as exc:
                raise classify(exc, action=f"delete {what} {name}") from exc
        cache.tombstones.pop(name, None)
        if name in cache.pods and not self.config.watch:
            cache.pods.pop(name, None)

    async def close(self) -> None:
        self._stop.set()
        for task in self._watchers.values():
            task.cancel()
        for task in self._watchers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()
        for api in self._apis.values():
            with contextlib.suppress(Exception):
                await api.close()
        self._apis.clear()

    # -- tenants ----------------------------------------------------------------------------

    async def ensure_namespace_quota(self, region: str, gpus: int) -> None:
        """Create the region's namespace if needed and cap its GPU requests at ``gpus``.

        A tenant gets its own namespace (its own region in the config) and a ResourceQuota
        ``spotd-gpu-quota`` on ``requests.<gpu_resource>``; a launch over it is answered 403
        "exceeded quota" by the API server, which ``launch`` raises as QuotaExceeded.
        """
        r = self._regions.get(region)
        if r is None:
            raise InvalidRequest(f"no k8s region {region!r}")
        core = await self._core(region)
        ns, quota = namespace_and_quota(r, gpus)
        try:
            try:
                await _call(core.create_namespace, ns)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            try:
                await _call(core.create_namespaced_resource_quota, r.namespace, quota)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await _call(
                    core.patch_namespaced_resource_quota,
                    QUOTA_NAME,
                    r.namespace,
                    {"spec": quota["spec"]},
                )
        except (ApiException, *_TRANSPORT) as exc:
            raise classify(exc, action=f"quota for namespace {r.namespace}") from exc

    # -- observing --------------------------------------------------------------------------

    async def _relist(self, region: RegionConfig) -> str:
        """One label-selected list of the region: replaces the snapshot; returns its version."""
        core = await self._core(region.name)
        try:
            body = await _call(
                core.list_namespaced_pod,
                region.namespace,
                label_selector=selector(self.home_tag),
                _request_timeout=30,
            )
        except (ApiException, *_TRANSPORT, ValueError) as exc:
            raise classify(exc, action=f"list pods in {region.name}") from exc
        cache = self._caches[region.name]
        fresh = {
            p["metadata"]["name"]: p for p in body.get("items") or [] if is_ours(p, self.home_tag)
        }
        cache.replace(fresh, now=self._clock())
        cache.synced_at = time.monotonic()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _observe_region(self, region: RegionConfig) -> list[ObservedInstance]:
        now = self._clock()
        cache = self._caches[region.name]
        out = []
        for name, pod in cache.pods.items():

            def first_seen(what: str, name: str = name) -> float:
                return self._first_seen.setdefault((region.name, name, what), now)

            view = pod_state(
                pod,
                now=now,
                unschedulable_seconds=self.config.unschedulable_seconds,
                first_seen=first_seen,
                deleting=name in cache.deleting,
            )
            out.append(observed(region, name, pod, view))
        for name, (at, pod) in list(cache.tombstones.items()):
            if now - at > self._tombstone_seconds:
                del cache.tombstones[name]
                continue
            view = PodView(InstanceState.PREEMPTED, "pod deleted")
            out.append(observed(region, name, pod, view))
        for k in [k for k in self._first_seen if k[0] == region.name and k[1] not in cache.pods]:
            del self._first_seen[k]
        # a pod deleted whose deletion no listing will show (it had gone already: a reclaimed
        # node's pod, deleted again by the recovery) is forgotten once a tombstone would be
        for name, at in list(cache.deleting.items()):
            if name not in cache.pods and now - at > self._tombstone_seconds:
                del cache.deleting[name]
        return out

    # -- watching ---------------------------------------------------------------------------

    def _start_watchers(self) -> None:
        if not self.config.watch or self._stop.is_set():
            return
        for region in self._regions.values():
            task = self._watchers.get(region.name)
            if task is None or task.done():
                watcher = self._watcher(region)
                self._watchers[region.name] = asyncio.create_task(
                    watcher.run(), name=f"k8s-watch:{region.name}"
                )

    def _watcher(self, region: RegionConfig) -> RegionWatcher:
        cache = self._caches[region.name]

        async def relist() -> str:
            return await self._relist(region)

        async def open_stream(version: str) -> EventStream:
            return await self._open_watch(region, version)

        def on_event(event: Mapping[str, Any]) -> None:
            cache.apply(event, home_tag=self.home_tag, now=self._clock())

        return RegionWatcher(
            region=region.name,
            cache=cache,
            relist=relist,
            open_stream=open_stream,
            on_event=on_event,
            stop=self._stop,
        )

    async def _open_watch(self, region: RegionConfig, version: str) -> EventStream:
        """A watch of the region's pods from ``version``; failures classified."""
        core = await self._core(region.name)
        kwargs: dict[str, Any] = {
            "label_selector": selector(self.home_tag),
            "watch": True,
            "timeout_seconds": int(self.config.watch_seconds),
            "allow_watch_bookmarks": True,
        }
        if version.isdigit():
            kwargs["resource_version"] = version
        resp: Any  # an aiohttp response: _preload_content=False, not the V1PodList model
        try:
            resp = await core.list_namespaced_pod(
                region.namespace,
                _preload_content=False,
                _request_timeout=(10, self.config.watch_seconds + 15),
                **kwargs,
            )
            if not 200 <= resp.status <= 299:
                exc = ApiException(status=resp.status, reason=resp.reason)
                exc.body = (await resp.read()).decode(errors="replace")
                resp.release()
                raise exc
        except (ApiException, *_TRANSPORT) as exc:
            raise classify(exc, action=f"watch pods in {region.name}") from exc
        return _Lines(resp)
