"""The route table is the API: what ``make_app`` serves, who may call it, and what
``/v1/openapi.json`` says — checked against each other, and each parameter parser and the body
reader table-driven, in-process (a real store and controller, no daemon process)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from spotd.api.app import ROUTE_TABLE, make_app
from spotd.api.common import ApiError
from spotd.api.openapi import document
from spotd.api.params import (
    MAX_ID,
    PathId,
    PathName,
    QueryChoice,
    QueryFlag,
    QueryInt,
    QueryList,
    QueryText,
)
from spotd.api.routes import Caller
from spotd.config import load_settings
from spotd.control import quota
from spotd.control.jobs import Controller
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore, Store

ADMIN_TOKEN = "admin-token-for-tests"

# What a project token could do before the table said it (app.py's old _PROJECT_ROUTES).
PROJECT_ROUTES_BEFORE = {
    ("GET", "/v1/health"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/jobs/{job_id}/events"),
    ("GET", "/v1/jobs/{job_id}/logs"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/cost"),
    ("GET", "/v1/projects"),
}


@dataclasses.dataclass
class Api:
    store: AsyncStore
    unix: TestClient[web.Request, web.Application]  # as the unix socket: the admin
    tcp: TestClient[web.Request, web.Application]  # as the TCP listener: tokens


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = load_settings(
        tmp_path, env={"SPOTD_TCP": "127.0.0.1:1", "SPOTD_API_TOKEN": ADMIN_TOKEN}
    )
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    metrics = DaemonMetrics()
    ctl = Controller(settings=settings, store=store, providers={}, metrics=metrics)
    apps = [
        make_app(settings=settings, store=store, controller=ctl, metrics_=metrics, tcp=tcp)
        for tcp in (False, True)
    ]
    async with TestClient(TestServer(apps[0])) as unix, TestClient(TestServer(apps[1])) as tcp:
        yield Api(store, unix, tcp)
    await store.close()


# -- the table, the router and the document agree ----------------------------------------


def test_the_app_serves_exactly_the_table(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    m = DaemonMetrics()
    app = make_app(
        settings=settings,
        store=store,
        controller=Controller(settings=settings, store=store, providers={}, metrics=m),
        metrics_=m,
    )
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    assert served == {r.key for r in ROUTE_TABLE}
    assert len(ROUTE_TABLE) == len(served), "a route is declared twice"


def test_a_listener_for_agents_serves_only_their_routes(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    m = DaemonMetrics()
    app = make_app(
        settings=settings,
        store=store,
        controller=Controller(settings=settings, store=store, providers={}, metrics=m),
        metrics_=m,
        callers=frozenset({Caller.AGENT}),
    )
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert served == AGENT_ROUTES


def test_the_document_has_every_route_and_nothing_else() -> None:
    doc = document(ROUTE_TABLE)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {r.key for r in ROUTE_TABLE}
    assert "$defs" not in json.dumps(doc), "every $defs is hoisted into components"
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])


@pytest.mark.parametrize("route", ROUTE_TABLE, ids=lambda r: f"{r.method} {r.path}")
def test_each_operation_documents_its_params_body_and_refusals(route: Any) -> None:
    op = document(ROUTE_TABLE)["paths"][route.path][route.method.lower()]
    in_path = set(re.findall(r"{(\w+)}", route.path))
    params = {(p["name"], p["in"]) for p in op.get("parameters", [])}
    assert {n for n, where in params if where == "path"} == in_path
    assert ("requestBody" in op) == (route.body is not None)
    for status in ("401",) + (("400",) if route.body or route.params else ()):
        assert op["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    assert op["x-spotd-callers"] == sorted(route.callers)
    assert op["description"], f"{route.handler.__name__} needs a docstring: it is the doc"


def test_schemathesis_reads_every_operation() -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(document(ROUTE_TABLE))
    results = list(schema.get_all_operations())
    errors = [r.err() for r in results if not hasattr(r, "ok")]
    assert not errors
    assert len(results) == len(ROUTE_TABLE)


# what agents may call with their own credentials (and nothing else)
AGENT_ROUTES = {
    ("POST", "/agent/v1/heartbeat"),
    ("POST", "/agent/v1/bootstrap"),
    ("POST", "/agent/v1/storage"),  # storage objects, before setup (spotd.api.storage)
    ("POST", "/agent/v1/pool/next"),  # a pool worker's next job (spotd.api.pools)
    ("POST", "/agent/v1/pool/running"),  # stop the running pool job? (spotd.api.pools)
}
# what project tokens gained since the route table: the document, and uploading their files
PROJECT_ROUTES_ADDED = {
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/blobs/missing"),
    ("PUT", "/v1/blobs/{sha256}"),
    ("GET", "/v1/storage"),  # their own project's buckets (spotd.api.storage)
    ("POST", "/v1/storage/{name}/delete"),
    ("POST", "/v1/pools"),  # their own project's pools (spotd.api.pools)
    ("GET", "/v1/pools"),
    ("GET", "/v1/pools/{name}"),
    ("POST", "/v1/pools/{name}/jobs"),
    ("GET", "/v1/pools/{name}/jobs/{job_id}/logs"),
    ("POST", "/v1/pools/{name}/jobs/{job_id}/cancel"),
    ("POST", "/v1/pools/{name}/down"),
}


def test_project_tokens_may_call_what_they_could_the_document_and_uploads() -> None:
    tenant = {r.key for r in ROUTE_TABLE if Caller.PROJECT in r.callers}
    assert tenant == PROJECT_ROUTES_BEFORE | PROJECT_ROUTES_ADDED


def test_only_the_agent_routes_take_no_api_token() -> None:
    assert {r.key for r in ROUTE_TABLE if Caller.AGENT in r.callers} == AGENT_ROUTES


# -- who may call: the middleware reads the table ----------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "who", "status"),
    [
        ("GET", "/v1/jobs", None, 401),
        ("GET", "/v1/jobs", "admin", 200),
        ("GET", "/v1/jobs", "project", 200),
        ("GET", "/v1/openapi.json", "project", 200),
        ("HEAD", "/v1/health", "project", 200),
        ("GET", "/metrics", "project", 403),
        ("POST", "/v1/projects", "project", 403),
        ("GET", "/v1/services", "project", 403),
        ("GET", "/v1/nope", "project", 403),
        ("GET", "/v1/nope", None, 401),
        ("GET", "/v1/nope", "admin", 404),
        ("POST", "/agent/v1/heartbeat", None, 401),  # the agent token's refusal, not the API's
    ],
)
async def test_callers_are_let_through_by_the_table(
    api: Api, method: str, path: str, who: str | None, status: int
) -> None:
    headers = {}
    if who == "admin":
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    elif who == "project":
        token = quota.new_token()
        await api.store.create_project(
            name="p1", gpu_quota=None, token_hash=quota.hash_token(token), now=0.0
        )
        headers["Authorization"] = f"Bearer {token}"
    body = {"key": "j1-a1-n0", "phase": "run", "log_offset": 0} if "agent" in path else None
    r = await api.tcp.request(method, path, headers=headers, json=body)
    assert r.status == status, await r.text()


async def test_the_document_is_served(api: Api) -> None:
    r = await api.unix.get("/v1/openapi.json")
    assert r.status == 200
    assert await r.json() == document(ROUTE_TABLE)


# -- parameters ----------------------------------------------------------------------------


def _request(path: str, match: dict[str, str] | None = None) -> web.Request:
    req = make_mocked_request("GET", path)
    req._match_info = web.UrlMappingMatchInfo(match or {}, None)  # type: ignore[arg-type]
    return req


@pytest.mark.parametrize(
    ("raw", "want"),
    [("7", 7), (str(MAX_ID), MAX_ID), ("0", None), (str(MAX_ID + 1), None), ("²", None)],
)
def test_path_id(raw: str, want: int | None) -> None:
    param = PathId("job_id", "job id")
    req = _request("/", {"job_id": raw})
    if want is None:
        with pytest.raises(ApiError, match="job id must be a number from 1"):
            param.parse(req)
    else:
        assert param.parse(req) == want


@pytest.mark.parametrize(
    ("raw", "ok"),
    [("svc", True), ("a-1", True), ("a" * 63, True), ("a" * 64, False), ("A", False),
     ("-a", False), ("é", False), ("a\x00", False), ("a b", False), ("", False)],
)  # fmt: skip
def test_path_name(raw: str, ok: bool) -> None:
    param = PathName("name", "service name", r"[a-z0-9][a-z0-9-]{0,62}", "lowercase")
    req = _request("/", {"name": raw})
    if ok:
        assert param.parse(req) == raw
    else:
        with pytest.raises(ApiError, match="service name"):
            param.parse(req)


@pytest.mark.parametrize(
    ("query", "want"),
    [("", False), ("?f=1", True), ("?f=TRUE", True), ("?f=yes", True), ("?f=0", False),
     ("?f=no", False), ("?f=", False), ("?f=2", None), ("?f=%C2%B9", None), ("?f=on", None)],
)  # fmt: skip
def test_query_flag(query: str, want: bool | None) -> None:
    param = QueryFlag("f", "a flag")
    if want is None:
        with pytest.raises(ApiError, match="f must be 1, true, yes, 0, false or no"):
            param.parse(_request("/" + query))
    else:
        assert param.parse(_request("/" + query)) is want


@pytest.mark.parametrize(
    ("query", "want"),
    [("", None), ("?n=1", 1), ("?n=10", 10), ("?n=0", "err"), ("?n=11", "err"),
     ("?n=-1", "err"), ("?n=1.0", "err"), ("?n=%C2%B2", "err"), ("?n=" + "9" * 30, "err")],
)  # fmt: skip
def test_query_int(query: str, want: int | str | None) -> None:
    param = QueryInt("n", "a number", ge=1, le=10)
    if want == "err":
        with pytest.raises(ApiError, match="n must be a number from 1 to 10"):
            param.parse(_request("/" + query))
    else:
        assert param.parse(_request("/" + query)) == want


@pytest.mark.parametrize(
    ("query", "want"),
    [("", "job"), ("?by=region", "region"), ("?by=JOB", None), ("?by=", None)],
)
def test_query_choice(query: str, want: str | None) -> None:
    param = QueryChoice("by", "grouping", ("job", "region"), "job")
    if want is None:
        with pytest.raises(ApiError, match="by must be one of job, region"):
            param.parse(_request("/" + query))
    else:
        assert param.parse(_request("/" + query)) == want


@pytest.mark.parametrize(
    ("query", "want"),
    [("", None), ("?s=a", ("A",)), ("?s=a,%20B", ("A", "B")), ("?s=a,c", "c"), ("?s=", "''")],
)
def test_query_list(query: str, want: Any) -> None:
    param = QueryList("s", "states", ("A", "B"))
    if isinstance(want, str):
        with pytest.raises(ApiError, match=f"unknown s: '{want.strip(chr(39)).upper()}'"):
            param.parse(_request("/" + query))
    else:
        assert param.parse(_request("/" + query)) == want


@pytest.mark.parametrize(
    ("query", "want"), [("", None), ("?t=", None), ("?t=7d", "7d"), ("?t=" + "x" * 9, "err")]
)
def test_query_text(query: str, want: str | None) -> None:
    param = QueryText("t", "text", max_length=8)
    if want == "err":
        with pytest.raises(ApiError, match="t is longer than 8 characters"):
            param.parse(_request("/" + query))
    else:
        assert param.parse(_request("/" + query)) == want


@pytest.mark.parametrize(
    "param",
    [
        PathId("job_id", "job id"),
        QueryFlag("f", "a flag"),
        QueryInt("n", "n", ge=1, le=10),
        QueryChoice("by", "by", ("job",), "job"),
        QueryList("s", "s", ("A", "B")),
        QueryText("t", "t", max_length=8),
    ],
    ids=lambda p: type(p).__name__,
)
def test_each_parameter_describes_itself(param: Any) -> None:
    doc = param.openapi()
    assert doc["name"] == param.name and doc["in"] in ("path", "query") and doc["schema"]


# -- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "phrase"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"name": "p", "gpu_quota": NaN}', 400, "not valid JSON"),
        (b'{"name": "p", "gpu_quota": Infinity}', 400, "not valid JSON"),
        (b'{"name": "p", "gpu_quota": -Infinity}', 400, "not valid JSON"),
        (b'{"name": "p", "gpu_quota": 1e999}', 400, "the number at gpu_quota is too large"),
        (b'{"name": "p", "gpu_quota": 2e6}', 400, "less than or equal to 1000000"),
        (b'{"name": "p", "gpu_quota": "4"}', 400, "valid number"),
        (b'{"name": "\\ud800"}', 400, "not valid JSON"),
        (b'{"name": 5}', 400, "valid string"),
        (b'{"name": "p", "extra": 1}', 400, "extra"),
        (b'{"name": "p", "gpu_quota": 4}', 201, ""),
    ],
)
async def test_bodies_are_read_strictly(api: Api, data: bytes, status: int, phrase: str) -> None:
    r = await api.unix.post("/v1/projects", data=data, headers={"Content-Type": "application/json"})
    body = await r.json()
    assert r.status == status, body
    if phrase:
        assert phrase in body["error"] + json.dumps(body.get("details")), body
