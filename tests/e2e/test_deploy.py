"""The deployment files, checked as far as this machine can: the Kubernetes manifests
validate against the Kubernetes API schemas (kubernetes-validate, strict), the config they
carry passes fleetgate's own start-up checks, and the Dockerfile reads the reference
image's config path through the Makefile's install step. Building and running the image
needs a container engine and base images, which this machine does not have."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fleetgate import preflight
from fleetgate.config import build_config, routing_problems
from fleetgate.pki import init_pki

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.30.0"


def resources() -> list[dict[str, object]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def test_every_manifest_validates_strictly() -> None:
    kinds = []
    for resource in resources():
        kubernetes_validate.validate(resource, KUBERNETES, strict=True)
        kinds.append(resource["kind"])
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "Service",
    ]
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_the_validator_refuses_a_broken_manifest() -> None:
    (deployment,) = [r for r in resources() if r["kind"] == "Deployment"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_nodes_config_passes_fleetgates_start_up_checks(tmp_path: Path) -> None:
    (configmap,) = [r for r in resources() if r["kind"] == "ConfigMap"]
    data = json.loads(configmap["data"]["config.json"])  # type: ignore[index]
    pki = init_pki(tmp_path / "pki", host="localhost")
    data["tls"] = {"server_cert": str(pki.server_cert), "server_key": str(pki.server_key)}
    data["data_dir"] = str(tmp_path / "data")
    config = build_config(data, environ={}, routing=False)
    assert routing_problems(config) + preflight.problems(config) == []
    assert config.tesla_enabled and config.teltonika.enabled
    assert not config.spool.enabled and not config.store.enabled  # stateless nodes
    # The ports the pods declare are the ones the config listens on.
    (deployment,) = [r for r in resources() if r["kind"] == "Deployment"]
    ports = {
        (p["containerPort"], p["protocol"])
        for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]  # type: ignore[index]
    }
    assert {
        (config.port, "TCP"),
        (config.teltonika.port, "TCP"),
        (config.teltonika.port, "UDP"),
        (config.status_port, "TCP"),
        (config.api.port, "TCP"),
    } == ports


def test_the_dockerfile_uses_the_makefiles_install_step_and_the_reference_config_path() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    runs = re.findall(r"^RUN (.+)$", dockerfile, flags=re.MULTILINE)
    assert "make wheel PYTHON=python3" in runs
    assert re.search(r"^wheel:", makefile, flags=re.MULTILINE)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE)[1])  # type: ignore[index]
    assert entrypoint == ["fleetgate", "serve", "--config", "/etc/fleet-telemetry/config.json"]
    exposed = set(re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE)[1].split())  # type: ignore[index]
    defaults = build_config({}, environ={})
    assert exposed == {
        str(defaults.port),
        str(defaults.teltonika.port),
        f"{defaults.teltonika.port}/udp",
        str(defaults.api.port),
    }
