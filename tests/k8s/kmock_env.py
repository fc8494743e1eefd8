"""kmock on loopback as the Kubernetes API server, with the shims it needs, and a fake kubelet.

kmock 0.8 (an aiohttp server keeping objects in memory) answers unmodified kubernetes_asyncio
calls: create, list, get, patch (status too), delete and watch. What it is not, and how the
tests make up for it:

* no scheduler and no kubelet: ``FakeKubelet`` plays both by patching ``status.phase`` of new
  pods to Running over HTTP (so watchers see a MODIFIED event, as they would from a kubelet),
  and a test stages a spot reclaim the same way (a ``DisruptionTarget`` condition, phase
  Failed with a reason, or a deletion);
* no label selection: kmock returns every pod of the namespace whatever ``labelSelector``
  says; the provider filters on its own labels as well, and the tests assert the selector is
  *sent*;
* no admission: no ResourceQuota enforcement, no validation (422), no uid/resourceVersion; a
  test makes kmock answer 403/422/500 with a reaction to check the error mapping;
* shims (``K8sEmulator``): kubernetes_asyncio sends ``watch=True`` where kmock expects
  ``watch=true``; the resources must be declared before the first list or watch; and kmock
  cannot parse the cluster-scoped ``/api/v1/namespaces`` path (it takes "namespaces" for the
  namespace segment), so the shim answers namespace create/get itself and records them.

Under ``CI=1`` a missing kmock or kubernetes_asyncio fails the tier instead of skipping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

try:
    import kmock
    import kubernetes_asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise ImportError(
            f"CI=1: the k8s tier needs kmock and kubernetes_asyncio "
            f"(pip install -e '.[test]'): {exc}"
        ) from exc
    pytest.skip(f"k8s tier skipped: {exc}", allow_module_level=True)

import aiohttp
import aiohttp.web

RESOURCES = ("v1/pods", "v1/secrets", "v1/resourcequotas")


class K8sEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator with the three shims (module docstring)."""

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw.query.get("watch") in ("True", "1"):
            raw = raw.clone(rel_url=raw.rel_url.update_query(watch="true"))
        path = raw.path.rstrip("/")
        if path == "/api/v1/namespaces" or (
            path.count("/") == 4 and path.startswith("/api/v1/namespaces/")
        ):
            return await self._namespaces(raw, path)
        return await super().__call__(raw)  # type: ignore[no-any-return]

    async def _namespaces(
        self, raw: aiohttp.web.BaseRequest, path: str
    ) -> aiohttp.web.StreamResponse:
        store: dict[str, Any] = self.__dict__.setdefault("namespace_objects", {})
        if raw.method == "POST":
            body = await raw.json()
            name = body["metadata"]["name"]
            if name in store:
                return aiohttp.web.json_response(
                    {"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409
                )
            store[name] = body
            return aiohttp.web.json_response(body, status=201)
        name = path.rsplit("/", 1)[-1]
        if raw.method == "GET" and name in store:
            return aiohttp.web.json_response(store[name])
        return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)


class Cluster:
    """A running kmock plus the helpers a test uses to play the kubelet and the cloud."""

    def __init__(self, km: K8sEmulator, url: str) -> None:
        self.km = km
        self.url = url
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.session.close()

    # -- reading --------------------------------------------------------------------------

    def obj(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(f"v1/{plural}"), namespace, name)
        if key not in self.km.objects:
            return None
        o = self.km.objects[key]
        return None if o.deleted else dict(o.raw)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.obj("pods", namespace, name)

    def requests(self) -> list[Any]:
        return list(self.km)

    def lists(self, namespace: str | None = None) -> list[Any]:
        """LIST requests on pods made by the provider (kubernetes_asyncio), not by helpers."""
        out = []
        for r in self.km:
            if r.action != kmock.action.LIST or r.resource is None:
                continue
            if r.resource.plural != "pods" or "kmock" in r.headers.get("User-Agent", ""):
                continue
            if namespace is None or r.namespace == namespace:
                out.append(r)
        return out

    def watches(self) -> list[Any]:
        return [r for r in self.km if r.action == kmock.action.WATCH]

    # -- acting as kubelet / cloud ----------------------------------------------------------

    async def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> int:
        async with self.session.patch(
            f"{self.url}/api/v1/namespaces/{namespace}/pods/{name}/status",
            json={"status": status},
            headers={"User-Agent": "kmock-test-kubelet"},
        ) as r:
            return r.status

    async def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> int:
        async with self.session.patch(
            f"{self.url}/api/v1/namespaces/{namespace}/pods/{name}",
            json=patch,
            headers={"User-Agent": "kmock-test-kubelet"},
        ) as r:
            return r.status

    async def delete_pod(self, namespace: str, name: str) -> int:
        async with self.session.delete(
            f"{self.url}/api/v1/namespaces/{namespace}/pods/{name}",
            headers={"User-Agent": "kmock-test-kubelet"},
        ) as r:
            return r.status

    async def all_pods(self) -> list[dict[str, Any]]:
        async with self.session.get(
            f"{self.url}/api/v1/pods", headers={"User-Agent": "kmock-test-kubelet"}
        ) as r:
            return list((await r.json()).get("items") or [])


class FakeKubelet:
    """Plays scheduler + kubelet: every new pod goes Running (``on_start`` may run it)."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        on_start: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        interval: float = 0.1,
    ) -> None:
        self.cluster = cluster
        self.on_start = on_start
        self.interval = interval
        self.started: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="fake-kubelet")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            for pod in await self.cluster.all_pods():
                meta = pod.get("metadata") or {}
                key = (meta.get("namespace"), meta.get("name"))
                if key in self.started or (pod.get("status") or {}).get("phase"):
                    continue
                self.started.add(key)  # type: ignore[arg-type]
                if self.on_start is not None:
                    await self.on_start(pod)
                await self.cluster.patch_pod_status(
                    str(key[0]),
                    str(key[1]),
                    {
                        "phase": "Running",
                        "podIP": "127.0.0.1",
                        "conditions": [
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "Ready", "status": "True"},
                        ],
                    },
                )
            await asyncio.sleep(self.interval)


@contextlib.asynccontextmanager
async def kmock_cluster() -> AsyncIterator[Cluster]:
    async with K8sEmulator() as km, kmock.Server(km) as srv:
        for res in RESOURCES:  # shim: kmock serves lists/watches only of declared resources
            km.resources[res] = {}
        cluster = Cluster(km, str(srv.url).rstrip("/"))
        try:
            yield cluster
        finally:
            await cluster.close()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with kmock_cluster() as c:
        yield c


@pytest.fixture
async def kubelet(cluster: Cluster) -> AsyncIterator[FakeKubelet]:
    k = FakeKubelet(cluster)
    k.start()
    yield k
    await k.stop()
