"""Deployment files, checked statically: no Docker engine or cluster runs in CI.

Every file parses; every `STREAMREC_*` variable set is a real setting and the values
validate; ports, images, volumes and probe paths agree between the Dockerfile, compose,
Prometheus and the Kubernetes manifests; the manifests validate against the Kubernetes
API schema (`kubernetes-validate`, which ships the schemas: nothing is downloaded).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamrec.stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest version we claim: anything newer accepts these too
SECRET_SETTINGS = {"STREAMREC_SASL_PASSWORD", "STREAMREC_QDRANT_API_KEY"}


def project_image() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"streamrec:{version}"


def image_environment() -> dict[str, str]:
    """The STREAMREC_* defaults the Dockerfile's ENV gives every container of the image."""
    env_instruction = re.search(r"^ENV (.*?[^\\])$", (DEPLOY / "Dockerfile").read_text(), re.M | re.S)[1]
    return dict(re.findall(r"(STREAMREC_[A-Z0-9_]+)=(\S+)", env_instruction))


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    return {**image_environment(), **{k: str(v) for k, v in service["environment"].items()}}


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc["kind"] == kind]


def workloads() -> dict[str, dict[str, Any]]:
    """name -> pod template spec of every Deployment and StatefulSet."""
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] in ("Deployment", "StatefulSet")}


def config_map() -> dict[str, str]:
    (config,) = k8s_kind("ConfigMap")
    return config["data"]


def pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: the ConfigMap, then its own env (secrets dummied)."""
    env = image_environment()
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "streamrec-config"
        env.update(config_map())
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert variable["name"] in SECRET_SETTINGS and ref["name"] == "streamrec-secrets"
            env[variable["name"]] = "from-the-secret"
        else:
            env[variable["name"]] = variable["value"]
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a process with exactly these STREAMREC_* variables would build them."""
    known = {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(name for name in env if name.startswith("STREAMREC_") and name not in known)
    assert not unknown, f"not settings: {unknown}"
    with monkeypatch.context() as patch:
        for name in known:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings()


def test_settings_are_read_from_the_environment_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from({"STREAMREC_PARTITIONS": "7"}, monkeypatch).partitions == 7
    with pytest.raises(ValueError, match="QDRANT_URL"):  # values are validated, not just named
        settings_from({"STREAMREC_INDEX_MODE": "client"}, monkeypatch)


def test_every_file_parses_and_every_streamrec_variable_is_a_real_setting() -> None:
    known = {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}
    used = set()
    for path in DEPLOY.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            assert list(yaml.safe_load_all(text)), path
        used |= set(re.findall(r"STREAMREC_[A-Z0-9_]+", text))
    assert len(used) > 10, "deploy files set hardly any STREAMREC_* variable"
    assert used <= known, f"unknown settings in deploy/: {sorted(used - known)}"


def test_dockerfile_pins_cpu_torch_before_the_project_and_matches_the_makefile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    makefile_torch = re.search(r"^TORCH_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    assert re.search(r"^ARG TORCH_VERSION=(\S+)", text, re.M)[1] == makefile_torch
    assert re.search(r"^ARG TORCH_INDEX=(\S+)", text, re.M)[1] == "https://download.pytorch.org/whl/cpu"
    torch_install = text.index('pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"')
    assert torch_install < text.index("pip install --no-cache-dir . ")
    assert "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu" in text  # the CUDA variant
    defaults = Settings()
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M)[1].split()}
    assert exposed == {defaults.metrics_port, defaults.trainer_metrics_port}
    assert f"127.0.0.1:{defaults.metrics_port}/healthz" in text
    assert re.search(r"^USER (\d+)$", text, re.M)[1] == "10001"  # = runAsUser in deploy/k8s


def test_compose_runs_kraft_kafka_qdrant_prometheus_grafana_two_workers_and_the_trainer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = compose()
    services = stack["services"]
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and "zookeeper" not in str(services).lower()
    workers = {name: s for name, s in services.items() if s.get("command") == ["worker"]}
    assert len(workers) == 2
    assert services["trainer"]["command"] == ["trainer"]
    assert {"qdrant", "prometheus", "grafana"} <= set(services)
    for name, service in {**workers, "trainer": services["trainer"]}.items():
        assert service["image"] == project_image(), name
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        settings = settings_from(compose_environment(service), monkeypatch)
        assert settings.index_mode == "client", f"{name}: several processes need the Qdrant server"
        assert settings.broker == "kafka://kafka:9092"
        mounts = dict(volume.split(":", 1) for volume in service["volumes"])
        assert mounts["models"] == str(settings.resolved_model_dir), f"{name}: one shared model store"
        assert mounts[next(v for v in mounts if v != "models")] == str(settings.data_dir)
        port = settings.trainer_metrics_port if name == "trainer" else settings.metrics_port
        assert [p.split(":")[-1] for p in service["ports"]] == [str(port)]
    for service in services.values():  # named volumes are declared
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(".") or source in stack["volumes"], source
    for name, service in services.items():  # third-party images are pinned
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), name


def test_prometheus_scrapes_every_worker_and_the_trainer_on_their_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    targets = {
        job["job_name"]: sorted(t for static in job["static_configs"] for t in static["targets"])
        for job in config["scrape_configs"]
    }
    expected: dict[str, list[str]] = {"streamrec-worker": [], "streamrec-trainer": []}
    for name, service in services.items():
        if service.get("command") not in (["worker"], ["trainer"]):
            continue
        settings = settings_from(compose_environment(service), monkeypatch)
        if service["command"] == ["worker"]:
            expected["streamrec-worker"].append(f"{name}:{settings.metrics_port}")
        else:
            expected["streamrec-trainer"].append(f"{name}:{settings.trainer_metrics_port}")
    assert targets == {job: sorted(t) for job, t in expected.items()}
    prometheus = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_provisioning_finds_the_datasource_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/streamrec.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
    assert (DEPLOY / "grafana/dashboards/streamrec.json").is_file()
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_kubernetes_manifests_validate_against_the_api_schema() -> None:
    docs = k8s_documents()
    assert {doc["kind"] for doc in docs} == {
        "ConfigMap", "PersistentVolumeClaim", "Service", "StatefulSet", "Deployment"
    }
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert "namespace" not in doc["metadata"], "manifests are namespace-agnostic"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "namespace" not in kustomization
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_a_schema_violation_is_caught() -> None:
    """The validator is not vacuous: a typo'd field fails strict validation."""
    (worker,) = k8s_kind("StatefulSet")
    broken = yaml.safe_load(yaml.safe_dump(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kubernetes_settings_ports_probes_and_images_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_map()
    assert not set(config) & SECRET_SETTINGS, "secrets belong in the Secret, not the ConfigMap"
    sets = workloads()
    worker, trainer = sets["streamrec-worker"], sets["streamrec-trainer"]
    assert worker["kind"] == "StatefulSet" and trainer["kind"] == "Deployment"
    assert trainer["spec"]["replicas"] == 1 and trainer["spec"]["strategy"]["type"] == "Recreate"
    pods = {}
    for name, workload in sets.items():
        template = workload["spec"]["template"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        (container,) = template["spec"]["containers"]
        assert container["image"] == project_image(), name
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
        assert template["spec"]["securityContext"]["runAsUser"] == 10001
        settings = settings_from(pod_environment(container), monkeypatch)
        port = settings.metrics_port if container["args"] == ["worker"] else settings.trainer_metrics_port
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert list(ports.values()) == [port], name
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["port"] in ports, f"{name} {probe}"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["models"] == str(settings.resolved_model_dir)
        assert mounts["data"] == str(settings.data_dir)
        pods[name] = (template["metadata"]["labels"], ports)

    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    claims = {claim["metadata"]["name"] for claim in worker["spec"]["volumeClaimTemplates"]}
    assert "data" in claims, "each worker keeps its state dir in its own volume"
    assert worker["spec"]["serviceName"] in {s["metadata"]["name"] for s in k8s_kind("Service")}
    (models_claim,) = k8s_kind("PersistentVolumeClaim")
    assert models_claim["spec"]["accessModes"] == ["ReadWriteMany"]

    for service in k8s_kind("Service"):  # each service reaches a named port of the pods it selects
        selected = [
            ports for labels, ports in pods.values() if service["spec"]["selector"].items() <= labels.items()
        ]
        assert selected, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert all(port["targetPort"] in ports and ports[port["targetPort"]] == port["port"] for ports in selected)
