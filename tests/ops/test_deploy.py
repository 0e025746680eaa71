"""The deployment artifacts in deploy/: the fields that matter and how the files refer to each other.

Nothing here needs Docker, a cluster or systemd: each file is parsed and its
promises checked (probes on the right paths and port, shutdown timing above the
drain, the sandbox, the volumes behind the environment's paths, the dashboard
using only the contract's metric names, ...). The Kubernetes manifests are also
validated against the Kubernetes JSON schemas bundled in `kubernetes-validate`,
with the network cut off to prove it needs none.
"""

from __future__ import annotations

import configparser
import fnmatch
import http.server
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from support.ops import CONTRACT_METRICS

from gateway.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "storage-gateway.service"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "storage-gateway.json"
CONTRACT = ROOT.parent / "shared" / "CONTRACT.md"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
DEFAULT_DRAIN_SECONDS = 30
EDGE_PORT, METRICS_PORT = 8080, 9100
# `storage-gateway serve` options (the names decided for the command line).
SERVE_OPTIONS = {"--host", "--port", "--workers", "--metrics-port", "--config"}
# Oldest Kubernetes minor the manifests must be valid for, and the newest bundled.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# Files in deploy/kubernetes deliberately left out of kustomization.yaml.
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "networkpolicy.yaml"}


# --------------------------------------------------------------------------- helpers


def _yaml_documents(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _manifests() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _yaml_documents(path)
    ]


def _one(kind: str, name: str | None = None) -> dict:
    found = [doc for _, doc in _manifests() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _deployment() -> dict:
    return _one("Deployment")


def _pod_spec() -> dict:
    return _deployment()["spec"]["template"]["spec"]


def _container() -> dict:
    containers = _pod_spec()["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def _drain_seconds(env: dict[str, str]) -> float:
    return float(env.get("GATEWAY_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS))


def _container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's target port (a name or a number) as the container port number."""
    if isinstance(port, int):
        assert port in {p["containerPort"] for p in container["ports"]}, f"port {port} is not declared"
        return port
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in by_name, f"no container port named {port!r}"
    return by_name[port]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _quantity(value: str | float) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


def _storage_urls(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve a name or open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --------------------------------------------------------------------------- every file parses


def test_every_yaml_and_json_file_parses() -> None:
    yaml_files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    json_files = sorted(DEPLOY.rglob("*.json"))
    assert {p.name for p in yaml_files} >= {
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "servicemonitor.yaml",
        "secret.example.yaml",
        "configmap-revocations.yaml",
        "kustomization.yaml",
        "docker-compose.yml",
    }
    assert DASHBOARD in json_files
    for path in yaml_files:
        docs = _yaml_documents(path)
        assert docs and all(isinstance(doc, dict) for doc in docs), path
    for path in json_files:
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path
    for _, doc in _manifests():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "storage-gateway"


# --------------------------------------------------------------------------- Kubernetes: schemas


def _schema_checked(doc: dict) -> bool:
    return not doc["apiVersion"].startswith("monitoring.coreos.com/")  # a CRD: no bundled schema


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_kubernetes_schemas_offline(version: str, no_network: None) -> None:
    checked = []
    for filename, doc in _manifests():
        if not _schema_checked(doc):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{filename}: {doc['kind']} invalid for Kubernetes {version}: {path}: {exc.message}")
        checked.append(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"} <= set(
        checked
    )


def test_schema_validation_is_strict_enough_to_catch_typos(no_network: None) -> None:
    """The check above is not vacuous: a misspelt field and a wrong type are refused."""
    typo = json.loads(json.dumps(_deployment()))
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[0], strict=True)
    wrong_type = json.loads(json.dumps(_deployment()))
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------- Kubernetes: kustomization


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    text = (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    kustomization = yaml.safe_load(text)
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(resources) == manifests - NOT_IN_KUSTOMIZATION
    for left_out in NOT_IN_KUSTOMIZATION:
        assert re.search(rf"^\s*#\s*-\s*{re.escape(left_out)}", text, re.MULTILINE), f"{left_out} not mentioned"
    image = _container()["image"].rpartition(":")[0]
    assert image in {entry["name"] for entry in kustomization.get("images", [])}
    # Common labels must never be added to selectors (immutable in a Deployment).
    for entry in kustomization.get("labels", []):
        assert not entry.get("includeSelectors", False)
    assert "commonLabels" not in kustomization


# --------------------------------------------------------------------------- Kubernetes: the Deployment


def test_deployment_selects_its_own_pods_and_runs_two_or_more() -> None:
    deployment = _deployment()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    hpa = _one("HorizontalPodAutoscaler")
    # The HPA owns the count; a fixed count in the Deployment must not be below it either.
    assert deployment["spec"].get("replicas", hpa["spec"]["minReplicas"]) >= 2
    assert hpa["spec"]["minReplicas"] >= 2
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_container_ports_and_arguments() -> None:
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": EDGE_PORT, "metrics": METRICS_PORT}
    # The image's entrypoint carries host and ports; the Deployment only appends known options.
    assert "command" not in container
    args = container.get("args", [])
    assert {a.partition("=")[0] for a in args if a.startswith("--")} <= SERVE_OPTIONS - {"--port", "--metrics-port"}


def test_probes_use_readyz_and_healthz_on_the_http_port() -> None:
    container = _container()
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    for probe in (readiness, liveness):
        assert _container_port(container, probe["port"]) == EDGE_PORT
        assert probe.get("scheme", "HTTP") == "HTTP"
    if "startupProbe" in container:
        startup = container["startupProbe"]["httpGet"]
        assert startup["path"] == "/healthz" and _container_port(container, startup["port"]) == EDGE_PORT
    # Readiness reacts within seconds (it turns 503 when draining starts).
    probe = container["readinessProbe"]
    assert probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) <= 15


def _prestop_sleep_seconds(container: dict) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    if command[:2] == ["sh", "-c"] or command[:2] == ["/bin/sh", "-c"]:
        command = shlex.split(command[2])
    assert command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep") and len(command) == 2, command
    return float(command[1])


def test_termination_grace_covers_prestop_and_drain() -> None:
    container = _container()
    sleep_seconds = _prestop_sleep_seconds(container)
    assert 2 <= sleep_seconds <= 15
    drain = _drain_seconds(_env(container))
    assert drain == DEFAULT_DRAIN_SECONDS
    # The grace period counts from the start of preStop; SIGTERM comes after the sleep.
    assert _pod_spec()["terminationGracePeriodSeconds"] > sleep_seconds + drain


def test_pod_and_container_security_context() -> None:
    pod = _pod_spec()
    container = _container()
    pod_context, context = pod["securityContext"], container["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod_context["runAsUser"] == _dockerfile_uid() != 0
    assert pod_context.get("runAsGroup", 1) != 0
    seccomp = context.get("seccompProfile") or pod_context["seccompProfile"]
    assert seccomp["type"] == "RuntimeDefault"
    assert pod_context["seccompProfile"]["type"] == "RuntimeDefault"
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context.get("privileged", False) is False
    assert context.get("runAsNonRoot", True) is True
    assert "ALL" in context["capabilities"]["drop"]
    assert not context["capabilities"].get("add")
    assert pod.get("automountServiceAccountToken") is False
    assert pod.get("enableServiceLinks") is False  # no GATEWAY_METRICS_PORT=tcp://… from a Service
    for host_option in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host_option, False)


def test_resources_have_requests_and_limits() -> None:
    resources = _container()["resources"]
    for resource in ("cpu", "memory"):
        request = _quantity(resources["requests"][resource])
        limit = _quantity(resources["limits"][resource])
        assert 0 < request <= limit, resource


def _mounts_by_volume() -> dict[str, dict]:
    mounts = {m["name"]: m for m in _container()["volumeMounts"]}
    volumes = {v["name"] for v in _pod_spec()["volumes"]}
    assert set(mounts) == volumes, "every volume mounted, every mount backed by a volume"
    return mounts


def _volume(name: str) -> dict:
    return next(v for v in _pod_spec()["volumes"] if v["name"] == name)


def _file_volume(path: str, source: str) -> tuple[dict, dict, str]:
    """The volume of `source` type (secret/configMap) mounted so that `path` is one of its files."""
    target = PurePosixPath(path)
    for name, mount in _mounts_by_volume().items():
        volume = _volume(name)
        if source in volume and PurePosixPath(mount["mountPath"]) == target.parent:
            return volume, mount, target.name
    pytest.fail(f"no {source} volume mounted at {target.parent} for {path}")


def _volume_keys(volume_source: dict, file_name: str) -> str:
    """The Secret/ConfigMap key that appears as `file_name` in the mounted directory."""
    items = volume_source.get("items")
    if not items:
        return file_name
    matching = [item["key"] for item in items if item["path"] == file_name]
    assert matching, f"no item projects {file_name}"
    return matching[0]


def test_key_secret_is_mounted_where_gateway_key_file_points() -> None:
    env = _env(_container())
    assert "GATEWAY_KEY" not in env, "the key comes from the Secret volume, never a literal"
    assert env["GATEWAY_KEY_FILE"] == "/run/secrets/gateway/key"
    volume, mount, file_name = _file_volume(env["GATEWAY_KEY_FILE"], "secret")
    assert mount.get("readOnly") is True and "subPath" not in mount
    secret = _one("Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert _volume_keys(volume["secret"], file_name) in {**secret.get("data", {}), **secret.get("stringData", {})}
    mode = volume["secret"].get("defaultMode", 0o644)
    assert mode & 0o007 == 0, "the key is not world-readable"
    # Readable through the group: the files belong to fsGroup, the process's group.
    pod_context = _pod_spec()["securityContext"]
    assert mode & 0o040 and pod_context["fsGroup"] == pod_context["runAsGroup"] != 0


def test_revocation_configmap_is_mounted_where_the_env_points_and_updates() -> None:
    env = _env(_container())
    assert env["GATEWAY_REVOCATION_FILE"] == "/etc/storage-gateway/revoked.txt"
    volume, mount, file_name = _file_volume(env["GATEWAY_REVOCATION_FILE"], "configMap")
    # A subPath mount would never see updates of the ConfigMap.
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert mount.get("readOnly") is True
    configmap = _one("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert isinstance(configmap["data"][_volume_keys(volume["configMap"], file_name)], str)
    assert not volume["configMap"].get("optional", False)


def test_recordings_volume_is_a_read_only_claim_and_tmp_is_writable() -> None:
    env = _env(_container())
    urls = _storage_urls(env["GATEWAY_STORAGE"])
    assert urlsplit(urls[0]).scheme == "file", "the disk tier first"
    assert any(urlsplit(url).scheme == "s3" for url in urls[1:]), "the S3 archive after it"
    mounts = _mounts_by_volume()
    for url in urls:
        if urlsplit(url).scheme != "file":
            continue
        root = urlsplit(url).path
        (name,) = [n for n, m in mounts.items() if m["mountPath"] == root]
        claim = _volume(name)["persistentVolumeClaim"]
        assert claim["claimName"] and claim.get("readOnly") is True
        assert mounts[name].get("readOnly") is True
    (tmp,) = [n for n, m in mounts.items() if m["mountPath"] == "/tmp"]
    assert "emptyDir" in _volume(tmp) and not mounts[tmp].get("readOnly", False)
    # Large recording volumes must never be chowned recursively at every start.
    if "fsGroup" in _pod_spec()["securityContext"]:
        assert _pod_spec()["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_rendition_cache_has_a_volume_larger_than_its_bound() -> None:
    """The cache may pass its bound by one rendition; a pod whose emptyDir passes sizeLimit is evicted."""
    env = _env(_container())
    transcode = {name: value for name, value in env.items() if name.startswith("GATEWAY_TRANSCODE_")}
    settings = load_settings(None, {**transcode, "GATEWAY_KEY": "11" * 32, "GATEWAY_STORAGE": "file:///"})
    mounts = _mounts_by_volume()
    (name,) = [n for n, m in mounts.items() if m["mountPath"] == env["GATEWAY_TRANSCODE_CACHE_DIR"]]
    assert not mounts[name].get("readOnly", False)
    two_hour_rendition = 2 * 3600 * 8000 * 2
    assert _quantity(_volume(name)["emptyDir"]["sizeLimit"]) >= settings.transcode.cache_bytes + two_hour_rendition


# --------------------------------------------------------------------------- Kubernetes: around the Deployment


def _services() -> list[dict]:
    return [doc for _, doc in _manifests() if doc["kind"] == "Service"]


def test_public_service_selects_the_pods_and_exposes_only_http() -> None:
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    container = _container()
    public = _one("Service", "storage-gateway")
    assert _selects(public["spec"]["selector"], pod_labels)
    targets = {_container_port(container, port.get("targetPort", port["port"])) for port in public["spec"]["ports"]}
    assert targets == {EDGE_PORT}
    # The metrics port is in no Service but a cluster-internal one.
    for service in _services():
        assert _selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        ports = {_container_port(container, p.get("targetPort", p["port"])) for p in service["spec"]["ports"]}
        if METRICS_PORT in ports:
            assert ports == {METRICS_PORT}
            assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_hpa_and_pdb_target_the_deployment() -> None:
    deployment = _deployment()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert 0 < cpu["resource"]["target"]["averageUtilization"] <= 100
    assert "cpu" in _container()["resources"]["requests"], "CPU utilisation is relative to the request"
    pdb = _one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_servicemonitor_scrapes_the_metrics_port_by_name() -> None:
    monitor = _one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [s for s in _services() if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in selected] == ["storage-gateway-metrics"]
    service_ports = {p["name"]: p for p in selected[0]["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and "targetPort" not in endpoint
    assert endpoint["path"] == "/metrics"
    assert endpoint.get("scheme", "http") == "http"
    target = service_ports[endpoint["port"]]["targetPort"]
    assert target == "metrics" and _container_port(_container(), target) == METRICS_PORT


def test_network_policy_keeps_metrics_to_prometheus() -> None:
    policy = _one("NetworkPolicy")
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    for rule in policy["spec"]["ingress"]:
        ports = {_container_port(_container(), p["port"]) for p in rule["ports"]}
        if METRICS_PORT in ports:
            assert rule.get("from"), "the metrics port only from selected peers"
            assert ports == {METRICS_PORT}


def test_example_secret_is_a_placeholder_the_gateway_refuses() -> None:
    from gateway.links.tokens import parse_key

    text = (K8S / "secret.example.yaml").read_text(encoding="utf-8")
    assert "storage-gateway keygen" in text
    secret = _one("Secret")
    for line in secret["stringData"]["key"].split():
        with pytest.raises(ValueError):
            parse_key(line)


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _dockerfile_uid() -> int:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].partition(":")[0]
    assert user.isdigit(), "a numeric USER, so that runAsNonRoot can verify it"
    return int(user)


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _healthcheck_command() -> list[str]:
    (healthcheck,) = [args for keyword, args in _final_stage() if keyword == "HEALTHCHECK"]
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    return _exec_form(command)


def test_dockerfile_base_install_user_ports_and_entrypoint() -> None:
    instructions = _dockerfile_instructions()
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for k, a in instructions if k == "ARG" and "=" in a)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a).split()[0] for k, a in instructions if k == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    assert ("COPY", ". /src") in instructions
    assert any(k == "RUN" and re.search(r"pip install --no-cache-dir /src\b", a) for k, a in instructions)

    final = _final_stage()
    assert _dockerfile_uid() == 10001
    assert any(k == "RUN" and "--uid 10001" in a for k, a in instructions)
    exposed = {int(port.partition("/")[0]) for k, a in final if k == "EXPOSE" for port in a.split()}
    assert exposed == {EDGE_PORT, METRICS_PORT}
    assert ("STOPSIGNAL", "SIGTERM") in final
    env = " ".join(a for k, a in final if k == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)

    (entrypoint,) = [_exec_form(a) for k, a in final if k == "ENTRYPOINT"]
    assert entrypoint == [
        "storage-gateway",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(EDGE_PORT),
        "--metrics-port",
        str(METRICS_PORT),
    ]
    assert {a for a in entrypoint if a.startswith("--")} <= SERVE_OPTIONS
    # The container's ports are the image's.
    assert {p["containerPort"] for p in _container()["ports"]} == exposed


def test_dockerfile_healthcheck_asks_healthz_with_python_only() -> None:
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert f"http://127.0.0.1:{EDGE_PORT}/healthz" in command[2]
    assert "curl" not in " ".join(command) and "wget" not in " ".join(command)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), type("Health", (_Health,), {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _run_healthcheck(port: int) -> int:
    command = _healthcheck_command()
    script = command[2].replace(f":{EDGE_PORT}/", f":{port}/")
    return subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=30).returncode


def test_dockerfile_healthcheck_command_really_checks(health_server: http.server.HTTPServer) -> None:
    port = health_server.server_address[1]
    assert _run_healthcheck(port) == 0
    health_server.RequestHandlerClass.status = 503
    assert _run_healthcheck(port) != 0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    assert _run_healthcheck(closed_port) != 0


def _dockerignore_suggestion() -> list[str]:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- dockerignore -->\s*```[^\n]*\n(.*?)```", text, re.DOTALL)
    assert match, "deploy/README.md suggests a .dockerignore"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a pattern excludes a path or any of its parents; the last match wins."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = fnmatch.translate(pattern).replace(".*.*/", "(?:.*/)?")
        if any(re.match(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_suggestion_keeps_what_the_build_needs() -> None:
    patterns = _dockerignore_suggestion()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = ["pyproject.toml", project["readme"], "gateway/__init__.py", "gateway/cli.py", "gateway/storage"]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not _ignored(path, patterns), f"the suggested .dockerignore drops {path}"
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "storage_gateway.egg-info/PKG-INFO",
        ".gateway-dev/dev.key",
    ):
        assert _ignored(path, patterns), f"the suggested .dockerignore keeps {path}"


# --------------------------------------------------------------------------- systemd


class _MultiDict(dict):
    """configparser section storage that keeps every value of a repeated key."""

    def __setitem__(self, key: str, value: object) -> None:
        if isinstance(value, list) and key in self and isinstance(self[key], list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _unit() -> dict[str, dict[str, list[str]]]:
    parser = configparser.RawConfigParser(
        strict=False,
        dict_type=_MultiDict,
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        empty_lines_in_values=False,
        interpolation=None,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return {section: {key: value.split("\n") for key, value in parser.items(section)} for section in parser.sections()}


def _unit_environment(service: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in service.get("Environment", []):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


def _seconds(span: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)?", span):
        total += float(number) * {"ms": 1e-3, "s": 1, "": 1, "min": 60, "m": 60, "h": 3600}[unit]
    return total


_YES = {"yes", "true", "1", "on"}


def test_systemd_unit_sandbox() -> None:
    unit = _unit()
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]

    def last(key: str) -> str:
        assert key in service, f"{key}= missing"
        return service[key][-1].strip()

    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert last(key).lower() in _YES, key
    assert last("ProtectSystem") == "strict"
    assert last("ProtectHome").lower() in _YES | {"read-only", "tmpfs"}
    assert set(last("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in service["SystemCallFilter"][0].split()
    assert all(value.strip() == "" for value in service["CapabilityBoundingSet"])
    if last("DynamicUser").lower() not in _YES:
        assert last("User") not in ("", "root", "0")
    # The conclusion about W+X memory is written down next to the setting.
    text = UNIT.read_text(encoding="utf-8")
    assert re.search(r"#.*(CPython|cffi|ctypes)[\s\S]*MemoryDenyWriteExecute=yes", text)

    env = _unit_environment(service)
    roots = [urlsplit(url).path for url in _storage_urls(env["GATEWAY_STORAGE"]) if url.startswith("file:")]
    read_only = {path.lstrip("-") for line in service["ReadOnlyPaths"] for path in line.split()}
    assert roots and set(roots) <= read_only
    # ProtectSystem=strict leaves the rendition cache writable only as the unit's CacheDirectory.
    assert env["GATEWAY_TRANSCODE_CACHE_DIR"] == "%C/" + last("CacheDirectory")
    # Converters lower their own priority: allowed again after @resources is denied.
    filters = [line.split() for line in service["SystemCallFilter"]]
    denied_at = next(i for i, words in enumerate(filters) if words[0].startswith("~") and "@resources" in words)
    allowed_after = {call for words in filters[denied_at + 1 :] if not words[0].startswith("~") for call in words}
    assert {"sched_setscheduler", "setpriority"} <= allowed_after


def test_systemd_unit_key_environment_and_shutdown() -> None:
    service = _unit()["Service"]
    env = _unit_environment(service)
    credentials = dict(line.split(":", 1) for line in service["LoadCredential"])
    assert credentials == {"gateway-key": "/etc/storage-gateway/key"}
    assert env["GATEWAY_KEY_FILE"] == "%d/gateway-key"
    assert "GATEWAY_KEY" not in env
    assert service["EnvironmentFile"] == ["-/etc/storage-gateway/env"]
    assert service["KillSignal"][-1] == "SIGTERM"
    assert service["Restart"][-1] == "on-failure"
    drain = _drain_seconds(env)
    assert _seconds(service["TimeoutStopSec"][-1]) > drain
    assert service.get("KillMode", ["control-group"])[-1] in ("mixed", "control-group")

    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert PurePosixPath(argv[0]).name == "storage-gateway" and argv[1] == "serve"
    options = {a.partition("=")[0] for a in argv[2:] if a.startswith("--")}
    assert options <= SERVE_OPTIONS and "--metrics-port" in options
    assert _unit()["Install"]["WantedBy"] == ["multi-user.target"]


# --------------------------------------------------------------------------- Grafana


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def _promql_metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression: identifiers that are no function, keyword or label."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word not in _PROMQL_WORDS:
            names.add(word)
    return names


def _template_metric_names(query: str) -> set[str]:
    """`label_values(metric{…}, label)` and `metrics(…)`/`query_result(…)` names."""
    match = re.fullmatch(r"\s*label_values\(\s*(?:([A-Za-z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,)?\s*\w+\s*\)\s*", query)
    if match:
        return {match.group(1)} if match.group(1) else set()
    inner = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL)
    assert inner, f"unrecognised template query {query!r}"
    return _promql_metric_names(inner.group(1))


# Beyond the contract, the dashboard shows the listening ledger's family (README, "The listening ledger"; issue #16).
LEDGER_METRICS = {
    "gateway_ledger_events_total": "counter",
    "gateway_ledger_pending": "gauge",
    "gateway_ledger_delivered_total": "counter",
    "gateway_ledger_failures_total": "counter",
    "gateway_ledger_dropped_total": "counter",
    "gateway_ledger_delivery_seconds": "histogram",
}
SHOWN_METRICS = {**CONTRACT_METRICS, **LEDGER_METRICS}


def _allowed_series() -> set[str]:
    allowed = {name for name, kind in SHOWN_METRICS.items() if kind != "histogram"}
    for name, kind in SHOWN_METRICS.items():
        if kind == "histogram":
            allowed |= {name + suffix for suffix in HISTOGRAM_SUFFIXES}
    return allowed


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows
    return panels


def _exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", []) if "expr" in target]


def _series(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name) if name not in SHOWN_METRICS else name


def test_metric_extraction_helper() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, method) (rate(gateway_request_duration_seconds_bucket"
        '{job=~"$job", status=~"5.."}[$__rate_interval]))) / on (instance) group_left up offset 5m'
    )
    assert _promql_metric_names(expr) == {"gateway_request_duration_seconds_bucket", "up"}
    assert _template_metric_names('label_values(gateway_requests_total{job=~"$job"}, instance)') == {
        "gateway_requests_total"
    }


def test_contract_metric_list_is_current() -> None:
    """The names above are the contract's (checked against CONTRACT.md wherever it is beside the repository)."""
    assert len(CONTRACT_METRICS) == 6
    if CONTRACT.is_file():
        table = re.search(r"## Metrics.*?\n((?:\|.*\n)+)", CONTRACT.read_text(encoding="utf-8"))
        assert table
        rows = re.findall(r"^\|\s*`(gateway_\w+)`\s*\|\s*(\w+)\s*\|", table.group(1), re.MULTILINE)
        assert dict(rows) == CONTRACT_METRICS


def test_dashboard_uses_only_contract_metrics_and_all_of_them() -> None:
    dashboard = _dashboard()
    allowed = _allowed_series()
    used: set[str] = set()
    for expr in _exprs(dashboard):
        names = _promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= allowed, f"not a contract or ledger metric: {sorted(names - allowed)} in {expr!r}"
        used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            names = _template_metric_names(query)
            assert names <= allowed, f"not a contract or ledger metric in variable {variable['name']}: {names}"
    assert {_series(name) for name in used} == set(SHOWN_METRICS), "every contract and ledger metric has a panel"


def test_dashboard_queries_use_each_metric_type_correctly() -> None:
    exprs = _exprs(_dashboard())
    joined = "\n".join(exprs)
    for expr in exprs:
        bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        for function, name in re.findall(r"\b(rate|irate|increase)\(\s*([A-Za-z_:][\w:]*)", bare):
            assert name.endswith(("_total", "_bucket", "_sum", "_count")), f"{function}() of a gauge: {name}"
        for name in _promql_metric_names(expr):
            if SHOWN_METRICS.get(_series(name)) == "counter":
                assert re.search(rf"\b(rate|irate|increase)\(\s*{name}\b", bare), f"raw counter {name}"
        if "histogram_quantile" in bare:
            assert re.search(r"histogram_quantile\(\s*[0-9.]+\s*,\s*sum by \([^)]*\ble\b", bare), expr
            assert "_bucket" in bare
    quantiles = set(re.findall(r"histogram_quantile\(\s*([0-9.]+)", joined))
    assert {"0.5", "0.95", "0.99"} <= quantiles
    for grouping, metric in (
        ("status", "gateway_requests_total"),
        ("backend", "gateway_response_bytes_total"),
        ("reason", "gateway_rejected_total"),
        ("backend, kind", "gateway_storage_errors_total"),
    ):
        assert re.search(rf"sum by \({grouping}\) \(rate\({metric}\b", joined), f"{metric} by {grouping}"
    assert "gateway_active_streams" in joined


def test_dashboard_structure_and_datasource_input() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource" and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    expected_ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected_ds, panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected_ds and target["refId"]
    for variable in dashboard["templating"]["list"]:
        assert variable.get("datasource") in (None, expected_ds)
    units = {panel["title"]: panel["fieldConfig"]["defaults"].get("unit") for panel in panels}
    assert units["Time to last byte"] == "s" and units["Bytes sent/s by backend"] in ("Bps", "binBps", "decbytes")


# --------------------------------------------------------------------------- docker compose


def _interpolate(value: object, environ: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, with an empty environment by default."""
    environ = environ or {}

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if environ.get(name):
            return environ[name]
        if operator == ":-":
            return argument
        if operator == ":?":
            return f"<required {name}>"
        return ""

    return re.sub(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", substitute, str(value))


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _service_env(service: dict) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: _interpolate(value) for name, value in environment.items()}


def test_compose_services_refer_to_each_other() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"gateway", "minio", "minio-init"} <= set(services)
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for target, condition in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            assert target in services, f"{name} depends on unknown {target}"
            kind = condition.get("condition", "service_started")
            if kind == "service_healthy":
                assert "healthcheck" in services[target] or target == "gateway", f"{target} has no healthcheck"
            if kind == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in named_volumes, f"{name}: volume {source} not declared"

    gateway = services["gateway"]
    context = (COMPOSE.parent / gateway["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / gateway["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert gateway["depends_on"]["minio"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    published = {str(port).rsplit(":", 1)[-1] for port in gateway["ports"]}
    assert published == {str(EDGE_PORT), str(METRICS_PORT)}
    assert any(str(port).startswith(f"127.0.0.1:{METRICS_PORT}:") for port in gateway["ports"]), "metrics stay local"


def test_compose_gateway_storage_points_at_minio() -> None:
    services = _compose()["services"]
    gateway, minio, init = services["gateway"], services["minio"], services["minio-init"]
    env, minio_env = _service_env(gateway), _service_env(minio)
    assert "<required GATEWAY_KEY>" == env["GATEWAY_KEY"], "no key baked into the file"

    disk, s3 = _storage_urls(env["GATEWAY_STORAGE"])
    assert urlsplit(disk).scheme == "file"
    mounts = {volume.split(":")[1]: volume for volume in gateway["volumes"]}
    assert urlsplit(disk).path in mounts and mounts[urlsplit(disk).path].endswith(":ro")
    assert s3 == "s3://recordings/calls"
    bucket, prefix = urlsplit(s3).netloc, urlsplit(s3).path.strip("/")

    endpoint = urlsplit(env["GATEWAY_S3_ENDPOINT_URL"])
    assert endpoint.hostname == "minio" and endpoint.port == 9000
    assert minio["image"].split(":")[0] == "minio/minio"
    assert minio["command"] == "server /data --console-address :9001"
    assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert int(_seconds(gateway["stop_grace_period"])) > _drain_seconds(env)

    assert init["image"].split(":")[0] == "minio/mc"
    script = init["command"][0] if isinstance(init["command"], list) else init["command"]
    script = _interpolate(script)
    assert re.search(rf"mc alias set local {re.escape(env['GATEWAY_S3_ENDPOINT_URL'])} ", script)
    assert f"mc mb --ignore-existing local/{bucket}" in script
    assert f"local/{bucket}/{prefix}" in script
    init_env = _service_env(init)
    assert (init_env["MINIO_ROOT_USER"], init_env["MINIO_ROOT_PASSWORD"]) == (
        minio_env["MINIO_ROOT_USER"],
        minio_env["MINIO_ROOT_PASSWORD"],
    )
    # The link in the instructions names an object the init step puts there.
    header = COMPOSE.read_text(encoding="utf-8").split("\nname:")[0]
    assert "docker compose -f deploy/docker-compose.yml up" in header
    (example_path,) = set(re.findall(r"link encrypt (/[\w./-]+)", header))
    assert f"local/{bucket}/{prefix}{example_path}" in script


# --------------------------------------------------------------------------- the command lines, against the CLI


def test_every_command_line_parses_with_the_real_cli() -> None:
    """The image's entrypoint (+ the Deployment's args), the unit's ExecStart: options the command knows."""
    from gateway.cli import _parser

    (entrypoint,) = [_exec_form(a) for k, a in _final_stage() if k == "ENTRYPOINT"]
    (exec_start,) = _unit()["Service"]["ExecStart"]
    for argv in (entrypoint + _container().get("args", []), shlex.split(exec_start)):
        assert PurePosixPath(argv[0]).name == "storage-gateway"
        args = _parser().parse_args(argv[1:])
        assert args.command == "serve" and args.metrics_port == METRICS_PORT and args.port == EDGE_PORT
