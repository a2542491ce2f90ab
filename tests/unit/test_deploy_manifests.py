"""deploy/Dockerfile, deploy/compose and deploy/kubernetes against the code: every METER_* variable
they set is one a worker reads and parses, the command is a real `meter` sub-command, ports and
paths line up with each other, with the Prometheus scrape targets and with the repository."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from meter.adapters.policy_file import bundled_policy_path, read_policy
from meter.cli import build_parser
from meter.core.policy import load_policy
from meter.worker_settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S = DEPLOY / "kubernetes"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
DEFAULT_WEB_PORT = WorkerSettings.load({}, {"METER_POLICY": "p"}).web_port


# -- what the code reads ---------------------------------------------------------------------
class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every variable looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.values.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def worker_variables() -> set[str]:
    env = RecordingEnv({"METER_POLICY": "policy.yaml"})
    WorkerSettings.load({}, env)
    return {name for name in env.read if name.startswith("METER_")}


def settings_from(env: Mapping[str, str]) -> WorkerSettings:
    """The settings a worker starts with in `env`: only known variables, all parsing."""
    unknown = {k for k in env if k.startswith("METER_")} - worker_variables()
    assert not unknown, f"variables no worker reads: {sorted(unknown)}"
    return WorkerSettings.load({}, env)


def assert_worker_command(argv: list[str]) -> None:
    assert argv[0] == "meter"
    assert "meter" in PYPROJECT["project"]["scripts"]
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse exits on an unknown command or flag
        raise AssertionError(f"`{shlex.join(argv)}` is not a valid meter command") from exc
    assert args.command == "worker", argv


def test_worker_variables_are_read_from_the_environment() -> None:
    found = worker_variables()
    assert {"METER_POLICY", "METER_KAFKA_BOOTSTRAP", "METER_DATA_DIR", "METER_WEB_PORT"} <= found
    with pytest.raises(AssertionError, match="METER_NOPE"):
        settings_from({"METER_POLICY": "p", "METER_NOPE": "1"})
    with pytest.raises(AssertionError, match="not a valid meter command"):
        assert_worker_command(["meter", "wrker"])


# -- Dockerfile ------------------------------------------------------------------------------
def dockerfile() -> dict[str, Any]:
    """FROM, ENV, EXPOSE, ENTRYPOINT, CMD and COPY sources of deploy/Dockerfile."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out: dict[str, Any] = {"ENV": {}, "COPY": [], "EXPOSE": []}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        op, _, rest = line.strip().partition(" ")
        if op == "ENV":
            out["ENV"].update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif op == "COPY":
            out["COPY"] += shlex.split(rest)[:-1]
        elif op == "EXPOSE":
            out["EXPOSE"] += [int(p.split("/")[0]) for p in rest.split()]
        elif op in {"ENTRYPOINT", "CMD"}:
            out[op] = json.loads(rest)
        elif op == "FROM":
            out[op] = rest.strip()
    return out


def test_dockerfile_runs_a_worker_on_the_default_port() -> None:
    image = dockerfile()
    assert image["FROM"] == "python:3.11-slim"
    assert_worker_command(image["ENTRYPOINT"] + image["CMD"])
    settings = settings_from(image["ENV"])
    assert image["EXPOSE"] == [settings.web_port] == [DEFAULT_WEB_PORT]
    assert settings.web_host == "0.0.0.0"
    assert str(settings.data_dir) == "/var/lib/meter"
    for source in image["COPY"]:
        assert (REPO / source).exists(), source


# -- docker compose --------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    return data


def mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> source (a path relative to deploy/compose, or a volume name)."""
    out: dict[str, str] = {}
    for volume in service.get("volumes", ()):
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def bind_source(source: str) -> Path:
    assert source.startswith("."), f"{source} is a named volume, not a file of the repository"
    return (COMPOSE_DIR / source).resolve()


def workers() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    found = {name: s for name, s in services.items() if name.startswith("worker-")}
    assert len(found) >= 2
    return found


def worker_settings(service: Mapping[str, Any]) -> WorkerSettings:
    env = {**dockerfile()["ENV"], **{k: str(v) for k, v in service["environment"].items()}}
    return settings_from(env)


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert bind_source(source).exists(), f"{name}: {source} -> {target}"


def test_compose_workers_share_a_group_and_keep_their_own_state() -> None:
    named_volumes = set(compose()["volumes"])
    groups, data_volumes = set(), []
    for name, service in workers().items():
        settings = worker_settings(service)
        assert_worker_command(["meter", *service.get("command", dockerfile()["CMD"])])
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE_DIR / service["build"]["context"]).resolve() == REPO
        assert service["image"] == f"meter:{VERSION}"
        groups.add(settings.group)
        assert settings.web_host == "0.0.0.0", name
        volume = mounts(service)[str(settings.data_dir)]
        assert volume in named_volumes, name
        data_volumes.append(volume)
        policy = mounts(service)[str(settings.policy)]
        assert bind_source(policy) == bundled_policy_path().resolve()
        read_policy(bind_source(policy))
    assert len(groups) == 1
    assert len(set(data_volumes)) == len(data_volumes), "workers share a data volume"


def test_compose_kafka_is_the_workers_bootstrap_and_the_pinned_version() -> None:
    kafka = compose()["services"]["kafka"]
    pom = (DEPLOY / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None
    assert kafka["image"] == f"apache/kafka:{version.group(1)}"
    env = kafka["environment"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    advertised = dict(
        item.split("://") for item in str(env["KAFKA_ADVERTISED_LISTENERS"]).split(",")
    )
    for service in workers().values():
        assert worker_settings(service).bootstrap == advertised["PLAINTEXT"]
    assert advertised["PLAINTEXT"].split(":")[0] == "kafka"
    port = advertised["PLAINTEXT"].split(":")[1]
    assert f"PLAINTEXT://:{port}" in str(env["KAFKA_LISTENERS"]).split(",")


def test_compose_prometheus_scrapes_every_worker_on_its_port() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if "config.file" in a)
    container = mounts(prometheus)
    config = yaml.safe_load(bind_source(container[config_path]).read_text())
    assert bind_source(container[str(PurePosixPath(config_path).parent / "rules")]) == (
        DEPLOY / "prometheus" / "rules"
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for sc in jobs["meter"]["static_configs"] for t in sc["targets"]}
    expected = {f"{name}:{worker_settings(s).web_port}" for name, s in workers().items()}
    assert targets == expected
    am = {t for a in config["alerting"]["alertmanagers"] for t in a["static_configs"][0]["targets"]}
    assert am == {"alertmanager:9093"}
    assert "alertmanager" in services


def test_compose_alertmanager_and_grafana_mount_their_files() -> None:
    services = compose()["services"]
    am = mounts(services["alertmanager"])
    assert bind_source(am["/etc/alertmanager/alertmanager.yml"]) == (
        DEPLOY / "alertmanager" / "alertmanager.yml"
    )
    grafana = mounts(services["grafana"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    for kind in ("dashboards", "datasources"):
        assert bind_source(grafana[f"/etc/grafana/provisioning/{kind}"]) == provisioning / kind
    provider = yaml.safe_load((provisioning / "dashboards" / "meter.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert bind_source(grafana[path]) == DEPLOY / "grafana" / "dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / PurePosixPath(home).relative_to(path)).exists()
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_local_prometheus_scrapes_the_default_web_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "meter")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"127.0.0.1:{DEFAULT_WEB_PORT}"]


# -- Kubernetes ------------------------------------------------------------------------------
def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert "namespace" not in doc["metadata"], f"{path.name}: manifests are namespace-less"
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def statefulset() -> dict[str, Any]:
    return k8s_objects()[("StatefulSet", "meter")]


def container() -> dict[str, Any]:
    containers = statefulset()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def k8s_settings() -> WorkerSettings:
    objects = k8s_objects()
    env: dict[str, str] = dict(dockerfile()["ENV"])
    for source in container().get("envFrom", ()):
        env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
    env.update({e["name"]: e["value"] for e in container().get("env", ())})
    return settings_from(env)


def test_kustomization_lists_every_manifest_but_the_operator_ones() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "podmonitor.yaml"}
    assert listed == files
    images = {image["name"]: image["newTag"] for image in kustomization["images"]}
    assert images == {container()["image"]: VERSION}


def test_statefulset_runs_workers_with_their_own_state() -> None:
    sts, c = statefulset(), container()
    settings = k8s_settings()
    assert_worker_command(["meter", *c.get("args", dockerfile()["CMD"])])
    assert settings.web_host == "0.0.0.0"
    assert str(settings.data_dir) == "/var/lib/meter"
    mounted = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert mounted[str(settings.data_dir)] in claims
    # The policy: a ConfigMap item mounted at exactly METER_POLICY, holding the example policy.
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    policy_dir = str(PurePosixPath(settings.policy).parent)
    cm_volume = volumes[mounted[policy_dir]]["configMap"]
    item = next(i for i in cm_volume["items"] if i["path"] == settings.policy.name)
    text = k8s_objects()[("ConfigMap", cm_volume["name"])]["data"][item["key"]]
    policy = load_policy(yaml.safe_load(text))
    assert policy.describe() == read_policy(bundled_policy_path()).describe()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels["app.kubernetes.io/name"] == "meter"  # the job name the alert rules select


def test_probes_ports_services_and_scraping_agree() -> None:
    objects, c, sts = k8s_objects(), container(), statefulset()
    port = k8s_settings().web_port
    assert port == DEFAULT_WEB_PORT
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named["web"] == port
    paths = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in paths.items():
        assert c[probe]["httpGet"] == {"path": path, "port": "web"}, probe
    labels = sts["spec"]["template"]["metadata"]["labels"]
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    headless = objects[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    for name in (sts["spec"]["serviceName"], "meter"):
        service = objects[("Service", name)]["spec"]
        assert service["selector"].items() <= labels.items()
        assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(port, "web")]
    pdb = objects[("PodDisruptionBudget", "meter")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    monitor = objects[("PodMonitor", "meter")]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert [(e["port"], e["path"]) for e in monitor["podMetricsEndpoints"]] == [("web", "/metrics")]
    assert labels[monitor["jobLabel"]] == "meter"
