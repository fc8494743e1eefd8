"""The Kubernetes manifests in examples/kubernetes/, checked as a user applying them would meet
them — offline: no cluster, no kubectl, no network.

* every object validates against the Kubernetes OpenAPI schemas (kubernetes-validate, which
  bundles them; strict, so a misspelt field is an error, not silently dropped), for the oldest
  and the newest Kubernetes version checked here;
* the StatefulSet runs several daemons on one PostgreSQL (SPOTD_HA), each pod its own daemon id
  and home, all of them one ReadWriteMany volume as the shared directory; a rollout and a
  disruption take one down at a time, the pods prefer different nodes, and the Services and
  the PodDisruptionBudget select them; all under the "restricted" Pod Security Standard its
  namespace enforces;
* the ConfigMap's config.yaml is accepted by spotd's own config loader and provider factories,
  with the environment the StatefulSet gives each pod, and holds no secret;
* every file the config, the kubeconfig and the probes name is a key of the ConfigMap or
  Secret mounted there, every Secret key the StatefulSet reads is in the example Secret, the
  kubeconfig authenticates with the ServiceAccount's token through the provider's own client
  factory, and the Role grants exactly the calls the k8s provider makes;
* the probe asks a route the daemon has, and — with the volumes materialised in a temporary
  directory as a kubelet would mount them — the init container's command and then the daemon
  start with this config, the probe script passes against the running daemon, the TCP API
  answers over TLS with the token from the Secret, and the probe fails once the daemon stops;
  with a real PostgreSQL (markers ``postgres`` and ``slow``), two pods materialised that way,
  the shared volume one directory for both, are two daemons of one cluster, and the one
  stopped with SIGTERM gives its lease up at once.

What cannot be checked here: that the image builds (no container engine), scheduling, the
volumes' fsGroup ownership and ReadWriteMany provisioning, and everything the daemon does
against a real API server (the k8s provider's own tier uses kmock: docs/kubernetes.md). A
takeover under kills and pauses is tests/ha's.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from spotd.api.app import ROUTE_TABLE
from spotd.config import load_settings
from spotd.ops.tls_init import init_tls
from tests.conftest import ROOT, kill_instance_groups

try:
    import kubernetes_asyncio  # noqa: F401 - the k8s provider, which the config enables
    import kubernetes_validate
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise ImportError(
            f"CI=1: the manifest tests need kubernetes-validate and kubernetes_asyncio: {exc}"
        ) from exc
    pytest.skip(f"not installed: {exc}", allow_module_level=True)

HERE = ROOT / "examples" / "kubernetes"
# the oldest Kubernetes still in standard support on the big clouds, and the newest bundled
OLDEST = "1.30"
VERSIONS = (OLDEST, kubernetes_validate.latest_version())
# keys Kubernetes' token controller fills into a kubernetes.io/service-account-token Secret
SA_TOKEN_KEYS = frozenset({"token", "ca.crt", "namespace"})
# the provider's calls on the core API, as RBAC verbs
VERBS = {"create": "create", "read": "get", "patch": "patch", "delete": "delete", "list": "list"}
RESOURCES = {"pod": "pods", "secret": "secrets", "resource_quota": "resourcequotas"}
# helpers of KubernetesProvider that the daemon never calls (checked below): the Role leaves
# their rights out, and docs/kubernetes-deploy.md says what to grant to use them
NOT_CALLED_BY_THE_DAEMON = frozenset({"ensure_namespace_quota"})
PROVIDER_SOURCE = ROOT / "daemon" / "providers" / "kubernetes" / "provider.py"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(HERE.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object of the example, by (kind, name); the kustomization is none."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for _, d in manifests():
        if d["kind"] != "Kustomization":
            key = (d["kind"], d["metadata"]["name"])
            assert key not in found, f"{key} is defined twice"
            found[key] = d
    return found


def workload() -> dict[str, Any]:
    """The daemons' StatefulSet."""
    return objects()[("StatefulSet", "spotd")]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = workload()["spec"]["template"]["spec"]
    return spec


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = workload()["spec"]["template"]["metadata"]["labels"]
    return labels


def pod_names() -> list[str]:
    """The pods the StatefulSet makes: its name and an ordinal."""
    sts = workload()
    return [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Service's selector (a plain map) or a label selector (matchLabels only:
    these manifests use no expressions) matches ``labels``."""
    assert "matchExpressions" not in selector
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and wanted.items() <= labels.items()


def container(name: str = "spotd") -> dict[str, Any]:
    spec = pod_spec()
    every = spec["containers"] + spec.get("initContainers", [])
    return next(c for c in every if c["name"] == name)


def config_map() -> dict[str, str]:
    data: dict[str, str] = objects()[("ConfigMap", "spotd-config")]["data"]
    return data


def secret_keys(name: str) -> frozenset[str]:
    secret = objects()[("Secret", name)]
    if secret.get("type") == "kubernetes.io/service-account-token":
        return SA_TOKEN_KEYS
    return frozenset({*secret.get("data", {}), *secret.get("stringData", {})})


def secret_value(name: str, key: str) -> str:
    value: str = objects()[("Secret", name)]["stringData"][key]
    return value


def container_env(c: dict[str, Any], pod: str | None = None) -> dict[str, str]:
    """The container's environment in pod ``pod`` (the first by default): Secret references
    resolved from the example Secrets, the downward API's fields from the pod's name."""
    fields = {"metadata.name": pod or pod_names()[0], "metadata.namespace": namespace()}
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret_value(ref["name"], ref["key"])
    return env


def namespace() -> str:
    ns: str = workload()["metadata"]["namespace"]
    return ns


def volume_at(path: str, c: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the mount, the volume) a path of the container is on: the deepest mount above it."""
    c = c or container()
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    above = [
        m for m in c["volumeMounts"] if (path + "/").startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert above, f"no volume of container {c['name']} is mounted above {path}"
    mount = max(above, key=lambda m: len(m["mountPath"]))
    return mount, volumes[mount["name"]]


def mounted_file(path: str, c: dict[str, Any] | None = None) -> tuple[str, str, str]:
    """(kind, object name, key) of the ConfigMap or Secret key a file path in the container
    is; fails when no volume is mounted above it or the volume has no such key."""
    c = c or container()
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    for m in c["volumeMounts"]:
        prefix = m["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            key, volume = path.removeprefix(prefix), volumes[m["name"]]
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                assert key in objects()[("ConfigMap", name)]["data"], f"{path}: no key {key}"
                return "ConfigMap", name, key
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert key in secret_keys(name), f"{path}: Secret {name} has no key {key}"
                return "Secret", name, key
            raise AssertionError(f"{path} is on volume {m['name']}, not a ConfigMap or Secret")
    raise AssertionError(f"no volume of container {c['name']} is mounted above {path}")


def daemon_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(config_map()["config.yaml"])
    return data


def region() -> dict[str, Any]:
    regions: dict[str, dict[str, Any]] = daemon_config()["providers"]["k8s"]["regions"]
    assert len(regions) == 1
    return next(iter(regions.values()))


def probe_script() -> str:
    """The file every probe of the daemon's container runs (one script for the three)."""
    c = container()
    commands = {
        tuple(c[p]["exec"]["command"]) for p in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert len(commands) == 1, f"the probes run different commands: {commands}"
    (command,) = commands
    assert command[0] == "python3" and len(command) == 2, command
    return command[1]


# -- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "name,doc",
    [(n, d) for n, d in manifests() if d["kind"] != "Kustomization"],
    ids=lambda x: x if isinstance(x, str) else f"{x['kind']}/{x['metadata']['name']}",
)
def test_manifest_validates_against_the_kubernetes_schema(
    name: str, doc: dict[str, Any], version: str
) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


def test_the_validator_refuses_a_misspelt_field() -> None:
    """Strict validation is what makes the test above worth having: a typo is not dropped."""
    bad = yaml.safe_load((HERE / "statefulset.yaml").read_text())
    probe = bad["spec"]["template"]["spec"]["containers"][0].pop("livenessProbe")
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = probe
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(bad, OLDEST, strict=True)


def test_kustomization_lists_every_manifest_but_the_placeholder_secrets() -> None:
    kust = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    files = {p.name for p in HERE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == {f for f in files if not f.endswith(".example.yaml")}
    assert "secrets.example.yaml" in files
    for _, d in manifests():  # no namespace override: each object says where it lives
        assert (
            d["kind"] == "Kustomization"
            or d["kind"] == "Namespace"
            or d["metadata"].get("namespace")
        ), f"{d['kind']}/{d['metadata']['name']} names no namespace"


# -- several daemons, locked down -------------------------------------------------------------


def test_several_daemons_that_go_down_one_at_a_time() -> None:
    """Several daemons, every one behind the Service the clients and agents call; a rollout
    replaces one pod at a time and a drain stops at most one (the PodDisruptionBudget); the
    pods prefer different nodes, so a node lost takes one daemon."""
    spec = workload()["spec"]
    assert spec["replicas"] >= 2
    assert selects(spec["selector"], pod_labels())
    update = spec.get("updateStrategy", {"type": "RollingUpdate"})
    assert update["type"] == "RollingUpdate"  # OnDelete would never roll
    rolling = update.get("rollingUpdate", {})
    assert rolling.get("maxUnavailable", 1) == 1 and not rolling.get("partition")
    # the governing Service: headless, over the same pods
    headless = objects()[("Service", spec["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], pod_labels())
    assert selects(objects()[("Service", "spotd")]["spec"]["selector"], pod_labels())
    (pdb,) = [d for (kind, _), d in objects().items() if kind == "PodDisruptionBudget"]
    assert pdb["metadata"]["namespace"] == namespace()
    assert selects(pdb["spec"]["selector"], pod_labels())
    assert pdb["spec"].get("maxUnavailable") == 1 or (
        pdb["spec"].get("minAvailable") == spec["replicas"] - 1
    )
    (term,) = pod_spec()["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"], pod_labels())
    # throttling stalls the loop; a loop stalled for a whole lease loses it
    assert "cpu" not in container()["resources"]["limits"]


def test_each_pod_is_a_daemon_of_its_own_on_one_shared_directory(tmp_path: Path) -> None:
    """Through spotd's own loader, with each pod's environment: HA on, a daemon id per pod
    (its name), one cluster; the shared directory is a ReadWriteMany claim every pod mounts
    read-write, and each home is the pod's own."""
    (tmp_path / "config.yaml").write_text(config_map()["config.yaml"])
    every = [load_settings(tmp_path, env=container_env(container(), pod)) for pod in pod_names()]
    assert all(s.ha for s in every)
    assert [s.daemon_id for s in every] == pod_names()  # unique, stable across restarts
    assert len({s.cluster for s in every}) == len({s.shared_dir for s in every}) == 1
    shared = every[0].shared_dir
    assert shared is not None
    mount, volume = volume_at(str(shared))
    assert not mount.get("readOnly")
    claim = objects()[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["metadata"]["namespace"] == namespace()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    home = container_env(container())["SPOTD_HOME"]
    assert "emptyDir" in volume_at(home)[1]  # sockets, pid file and lock: never shared
    assert volume_at(home)[1] is not volume
    # the init container installs the config into the same home
    assert container_env(container("config"))["SPOTD_HOME"] == home
    assert volume_at(home, container("config"))[0]["name"] == volume_at(home)[0]["name"]


def test_pod_meets_the_restricted_pod_security_standard() -> None:
    labels = objects()[("Namespace", namespace())]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec["initContainers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]
    # a read-only root: the daemon's writes go to its home, the shared directory and /tmp
    mounts = {m["mountPath"] for m in container()["volumeMounts"] if not m.get("readOnly")}
    env = container_env(container())
    assert "/tmp" in mounts and any(env["SPOTD_HOME"].startswith(m + "/") for m in mounts)
    assert env["SPOTD_SHARED_DIR"] in mounts


# -- the daemon's config -------------------------------------------------------------------


def test_config_map_parses_with_spotds_own_loader(tmp_path: Path) -> None:
    """The config as the daemon reads it: the file in its home, the StatefulSet's environment
    on top (the token from the Secret: the TCP API refuses to start without one; HA, which
    refuses anything but PostgreSQL)."""
    from spotd.server import build_providers

    (tmp_path / "config.yaml").write_text(config_map()["config.yaml"])
    env = container_env(container())
    settings = load_settings(tmp_path, env=env)
    assert settings.tcp_port == container_port("api")
    assert settings.agent_port == container_port("agents")
    assert settings.tls_cert and settings.tls_key and settings.tls_ca  # non-loopback: TLS
    assert settings.db_url == secret_value("spotd-secrets", "db-url")
    assert settings.db_url.startswith("postgresql+psycopg://")
    assert settings.ha and settings.daemon_id == pod_names()[0]
    assert settings.shared_dir == Path(env["SPOTD_SHARED_DIR"])
    assert settings.logs_dir.is_relative_to(settings.shared_dir)  # any daemon serves any log
    assert settings.api_token == secret_value("spotd-secrets", "api-token")
    assert set(build_providers(settings)) == {"k8s"}  # the local provider is off in a pod
    # the agents in job pods call the Service, on the agents' port
    service = objects()[("Service", "spotd")]
    ns = service["metadata"]["namespace"]
    url = f"https://{service['metadata']['name']}.{ns}.svc:{service_port('agents')}"
    assert settings.agent_url == url == daemon_config()["providers"]["k8s"]["daemon_url"]


def container_port(name: str) -> int:
    return next(int(p["containerPort"]) for p in container()["ports"] if p["name"] == name)


def service_port(name: str) -> int:
    ports = objects()[("Service", "spotd")]["spec"]["ports"]
    port = next(p for p in ports if p["name"] == name)
    assert port["targetPort"] == name
    return int(port["port"])


def test_postgresql_url_is_what_the_store_accepts() -> None:

    url = make_url(secret_value("spotd-secrets", "db-url"))
    assert url.get_backend_name() == "postgresql"
    assert url.get_driver_name() == "psycopg"  # psycopg 3, the `postgres` extra


def test_no_token_or_password_in_the_config_map() -> None:
    data = config_map()
    config = daemon_config()
    assert not {"api_token", "db_url"} & set(config), "these come from the Secret"
    users = yaml.safe_load(data["kubeconfig"])["users"]
    for user in users:
        assert set(user["user"]) == {"tokenFile"}, "the token stays in its Secret"
    text = "\n".join(data.values())
    for secret in ("spotd-secrets", "spotd-tls"):
        for key in secret_keys(secret):
            assert secret_value(secret, key) not in text, f"{secret}/{key} is in the ConfigMap"
    assert not re.search(r"spotdp_|PRIVATE KEY|://[^/\s:@]+:[^/\s@]+@", text)
    assert not re.search(r"(?im)^\s*(api_token|token|password|secret)\s*:", text)


def test_every_secret_key_the_statefulset_reads_is_in_the_example_secret() -> None:
    spec = pod_spec()
    for c in spec["containers"] + spec["initContainers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secret_keys(ref["name"]), f"{c['name']}: {e['name']}"
    for v in spec["volumes"]:
        if "secret" in v:
            assert ("Secret", v["secret"]["secretName"]) in objects()
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in objects()


def test_every_file_the_daemon_reads_is_mounted() -> None:
    config = daemon_config()
    for key in ("tls_cert", "tls_key", "tls_ca"):
        assert mounted_file(config[key])[0] == "Secret"
    assert mounted_file(region()["kubeconfig"]) == ("ConfigMap", "spotd-config", "kubeconfig")
    kube = yaml.safe_load(config_map()["kubeconfig"])
    token = mounted_file(kube["users"][0]["user"]["tokenFile"])
    ca = mounted_file(kube["clusters"][0]["cluster"]["certificate-authority"])
    assert token[:2] == ca[:2] == ("Secret", "spotd-k8s-token")
    assert mounted_file(probe_script())[2] == "health.py"
    init = container("config")
    (source,) = re.findall(r"cp (\S+) ", init["command"][-1])
    assert mounted_file(source, init) == ("ConfigMap", "spotd-config", "config.yaml")


# -- the provider's identity ---------------------------------------------------------------


def test_service_account_token_reaches_the_provider() -> None:
    """The ServiceAccount, its token Secret, the RoleBinding and the StatefulSet name the same
    account; the RoleBinding is in the namespace the provider launches pods in."""
    sa = pod_spec()["serviceAccountName"]
    ns = namespace()
    token = objects()[("Secret", "spotd-k8s-token")]
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == sa
    assert ("ServiceAccount", sa) in objects()
    binding = objects()[("RoleBinding", "spotd-provider")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
    assert binding["metadata"]["namespace"] == region()["namespace"]
    job_sa = objects()[("ServiceAccount", region()["service_account"])]
    assert job_sa["metadata"]["namespace"] == region()["namespace"]
    assert job_sa["automountServiceAccountToken"] is False  # jobs get no API token


def provider_calls() -> dict[str, set[str]]:
    """RBAC rights the k8s provider's API calls need, read from its source: resource -> verbs."""
    need: dict[str, set[str]] = {}
    for fn in ast.walk(ast.parse(PROVIDER_SOURCE.read_text())):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if fn.name in NOT_CALLED_BY_THE_DAEMON:
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute):
                m = re.fullmatch(r"(create|read|patch|delete|list)_namespaced_(\w+)", node.attr)
                if m:
                    need.setdefault(RESOURCES[m[2]], set()).add(VERBS[m[1]])
    if daemon_config()["providers"]["k8s"].get("watch", True):
        need["pods"].add("watch")  # the watch is a list with watch=true
    return need


def test_role_grants_exactly_what_the_provider_calls() -> None:
    role = objects()[("Role", "spotd-provider")]
    assert role["metadata"]["namespace"] == region()["namespace"]
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted == provider_calls()
    # the rights left out belong to helpers nothing in the daemon calls
    for path in (ROOT / "daemon").rglob("*.py"):
        if path != PROVIDER_SOURCE:
            for helper in NOT_CALLED_BY_THE_DAEMON:
                assert helper not in path.read_text(), f"{path} calls {helper}: grant it"


async def test_kubeconfig_authenticates_with_the_service_account_token(tmp_path: Path) -> None:
    """Through the provider's own client factory, with the token Secret's files where the
    StatefulSet mounts them (here: under tmp_path)."""
    from spotd.providers.kubernetes import parse_config
    from spotd.providers.kubernetes.provider import default_api_client

    root = materialise(tmp_path)
    cfg = yaml.safe_load(rewrite(config_map()["config.yaml"], root))
    (r,) = parse_config(cfg["providers"]["k8s"]).regions
    api = await default_api_client(r)
    try:
        assert api.configuration.host == "https://kubernetes.default.svc"
        assert api.configuration.api_key == {"BearerToken": "Bearer test-sa-token"}
        assert api.configuration.ssl_ca_cert.endswith("/etc/spotd/kube-token/ca.crt")
    finally:
        await api.close()


# -- the image -------------------------------------------------------------------------------


def test_dockerfile_matches_the_package_and_the_statefulset() -> None:
    """Not built here (no container engine): its extras exist, it copies every source folder
    of the package, runs as the StatefulSet's user and ships the command the StatefulSet runs."""
    text = (HERE / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (extras,) = re.findall(r'"/src\[([\w,]+)\]"', text)
    assert set(extras.split(",")) <= set(project["project"]["optional-dependencies"])
    folders = {p.split("/")[0] for p in project["tool"]["setuptools"]["package-dir"].values()}
    copied = set(re.findall(r"^COPY (\w+) /src/\1$", text, re.M))
    assert folders == copied
    uid = pod_spec()["securityContext"]["runAsUser"]
    assert f"USER {uid}:{pod_spec()['securityContext']['runAsGroup']}" in text
    assert container()["command"][0] in project["project"]["scripts"]


# -- the probe and the daemon, run -----------------------------------------------------------


def test_probe_asks_a_route_the_daemon_has() -> None:
    script = config_map()[mounted_file(probe_script())[2]]
    (method, path) = re.findall(r"b\"(GET|HEAD) (/\S*) HTTP/1\.[01]", script)[0]
    assert (method, path) in {r.key for r in ROUTE_TABLE}


def rewrite(text: str, root: Path, api_server: str | None = None) -> str:
    """Absolute paths of the pod's mounts, moved under ``root``; the API server's address, to
    ``api_server`` when given."""
    mounts = {m["mountPath"] for c in (container(), container("config")) for m in c["volumeMounts"]}
    # one pass, longest first, whole path components only (/tmp must not match /tmpfoo)
    alternatives = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    text = re.sub(rf"(?<![\w./-])({alternatives})(?=/|\b|$)", rf"{root}\1", text)
    return text.replace("https://kubernetes.default.svc", api_server) if api_server else text


def materialise(root: Path, api_server: str | None = None, shared: Path | None = None) -> Path:
    """Every volume of the pod as a directory under ``root``, as the kubelet mounts it: the
    ConfigMap's keys as files (paths rewritten), the example Secrets' keys — except that TLS
    needs a real certificate, made here with ``spotd tls init``'s code — and empty volumes.
    With ``shared``, each claim is a link to a directory there, so that the pods materialised
    with the same ``shared`` mount one volume, as ReadWriteMany claims are."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    tls = root / "tls-init"
    init_tls(
        tls, hosts=("localhost", "127.0.0.1"), days=1, force=False, now=dt.datetime.now(dt.UTC)
    )
    real = {
        ("spotd-tls", "tls.crt"): (tls / "server.pem").read_text(),
        ("spotd-tls", "tls.key"): (tls / "server.key").read_text(),
        ("spotd-tls", "ca.crt"): (tls / "ca.pem").read_text(),
        ("spotd-k8s-token", "token"): "test-sa-token",
        ("spotd-k8s-token", "ca.crt"): (tls / "ca.pem").read_text(),
        ("spotd-k8s-token", "namespace"): "spotd",
    }
    for c in (container("config"), container()):
        for m in c["volumeMounts"]:
            target = Path(f"{root}{m['mountPath']}")
            v = volumes[m["name"]]
            if shared is not None and "persistentVolumeClaim" in v:
                claim = shared / v["persistentVolumeClaim"]["claimName"]
                claim.mkdir(parents=True, exist_ok=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.is_symlink():
                    target.symlink_to(claim)
                continue
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in v:
                for key, value in objects()[("ConfigMap", v["configMap"]["name"])]["data"].items():
                    (target / key).write_text(rewrite(value, root, api_server))
            elif "secret" in v:
                name = v["secret"]["secretName"]
                for key in secret_keys(name):
                    (target / key).write_text(real.get((name, key)) or secret_value(name, key))
                    (target / key).chmod(v["secret"].get("defaultMode", 0o644))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def pod_root() -> Iterator[Path]:
    # unix socket paths are limited to ~107 bytes: keep the root short
    root = Path(f"/tmp/spotd-k8s{os.getpid()}-{time.monotonic_ns() % 10**6}")
    try:
        yield root
    finally:
        kill_instance_groups(root)
        shutil.rmtree(root, ignore_errors=True)


def run_probe(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(f"{root}{probe_script()}")
    return subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30
    )


def init_pod(root: Path, pod: str) -> Path:
    """Run the init container's command in ``root`` (a materialised pod); its home."""
    init = container("config")
    env = {"PATH": os.environ["PATH"]}
    env |= {k: rewrite(v, root) for k, v in container_env(init, pod).items()}
    subprocess.run([rewrite(arg, root) for arg in init["command"]], env=env, check=True, timeout=30)
    return Path(env["SPOTD_HOME"])


def pod_env(root: Path, pod: str, **overrides: str) -> dict[str, str]:
    """The daemon container's environment in ``pod``, paths moved under ``root``."""
    env = {"PATH": os.environ["PATH"]}
    return (
        env | {k: rewrite(v, root) for k, v in container_env(container(), pod).items()} | overrides
    )


class PodDaemon:
    """The daemon container's command, run as the pod would run it (its own session)."""

    def __init__(self, root: Path, env: dict[str, str], log: Path) -> None:
        self.root, self.env, self.log_path = root, env, log
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spotd.main", *container()["command"][1:]],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )

    def wait_ready(self, seconds: float = 60) -> None:
        """Until the pod's probe passes, as the kubelet's readiness probe would see it."""
        deadline = time.monotonic() + seconds
        while (probe := run_probe(self.root, self.env)).returncode != 0:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(0.2)

    def get(self, path: str, *, token: bool = True) -> Any:
        """``path`` on the TCP API, over TLS from the spotd-tls Secret (this pod's copy)."""
        ctx = ssl.create_default_context(cafile=f"{self.root}{daemon_config()['tls_ca']}")
        bearer = {"Authorization": f"Bearer {secret_value('spotd-secrets', 'api-token')}"}
        url = f"https://{self.env['SPOTD_TCP']}{path}"
        req = urllib.request.Request(url, headers=bearer if token else {})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert resp.status == 200
            return json.load(resp)

    def terminate(self) -> int:
        """SIGTERM, what the kubelet sends; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def test_the_pod_starts_and_its_probe_passes(pod_root: Path, tmp_path: Path) -> None:
    """The init container's command, then the daemon, with the volumes materialised as above
    and the container's environment — alone: the database is SQLite in the home instead of the
    external PostgreSQL, so SPOTD_HA is off (several daemons need PostgreSQL: the next test);
    the two listeners are moved to free loopback ports (SPOTD_TCP and SPOTD_AGENT_TCP, which
    the daemon reads before the file)."""
    # the provider's API server: a closed loopback port (tests reach nothing beyond loopback)
    root = materialise(pod_root, api_server=f"https://127.0.0.1:{free_port()}")
    home = init_pod(root, pod_names()[0])
    assert (home.stat().st_mode & 0o777, (home / "config.yaml").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )
    env = pod_env(
        root,
        pod_names()[0],
        SPOTD_HA="0",
        SPOTD_DB_URL=f"sqlite:///{home / 'state.db'}",
        SPOTD_TCP=f"127.0.0.1:{free_port()}",
        SPOTD_AGENT_TCP=f"127.0.0.1:{free_port()}",
    )
    assert run_probe(root, env).returncode != 0  # nothing runs yet
    daemon = PodDaemon(root, env, tmp_path / "spotd.log")
    try:
        daemon.wait_ready()
        # the TCP API: TLS from the spotd-tls Secret, the admin token from spotd-secrets
        assert daemon.get("/v1/health")["ok"] is True
        with pytest.raises(urllib.error.HTTPError) as refused:
            daemon.get("/v1/health", token=False)
        assert refused.value.code == 401
        # the logs' directory is on the shared volume, not in the pod's home
        assert Path(env["SPOTD_SHARED_DIR"], "logs").is_dir()
        assert not (home / "logs").exists()
        assert daemon.terminate() == 0
        probe = run_probe(root, env)
        assert probe.returncode == 1 and "does not answer" in probe.stderr
    finally:
        daemon.stop()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_pods_are_two_daemons_of_one_cluster(
    pod_root: Path, tmp_path: Path, pg_url: str
) -> None:
    """Two pods of the StatefulSet, each materialised with its own volumes but one shared
    volume for both, with their own environment (HA on, the daemon id from the pod's name) on
    one real PostgreSQL: both pass their probe, each lists the two daemons alive with their
    leases (GET /v1/daemons) and knows which one it is, and the pod stopped as a rollout stops
    it (SIGTERM) exits 0 having given its lease up at once — its work is the other's now,
    without waiting out the lease."""
    api_server = f"https://127.0.0.1:{free_port()}"  # a closed port, as above
    daemons: dict[str, PodDaemon] = {}
    try:
        for pod in pod_names()[:2]:
            root = materialise(pod_root / pod, api_server=api_server, shared=pod_root / "pvc")
            init_pod(root, pod)
            env = pod_env(
                root,
                pod,
                SPOTD_DB_URL=pg_url,
                SPOTD_TCP=f"127.0.0.1:{free_port()}",
                SPOTD_AGENT_TCP=f"127.0.0.1:{free_port()}",
            )
            daemons[pod] = PodDaemon(root, env, tmp_path / f"{pod}.log")
        first, second = daemons
        for daemon in daemons.values():
            daemon.wait_ready()
        for pod, daemon in daemons.items():
            rows = {d["id"]: d for d in daemon.get("/v1/daemons")}
            assert sorted(rows) == [first, second]
            assert all(d["alive"] for d in rows.values()), rows
            assert [d["id"] for d in rows.values() if d["this"]] == [pod]
        # one shared directory: both daemons' logs directory is the same one, on the claim
        shared = {Path(d.env["SPOTD_SHARED_DIR"]).resolve() for d in daemons.values()}
        assert shared == {(pod_root / "pvc" / "spotd-shared").resolve()}
        assert (pod_root / "pvc" / "spotd-shared" / "logs").is_dir()

        assert daemons[second].terminate() == 0
        rows = {d["id"]: d for d in daemons[first].get("/v1/daemons")}
        assert rows[first]["alive"] and not rows[second]["alive"], rows
    finally:
        for daemon in daemons.values():
            daemon.stop()
