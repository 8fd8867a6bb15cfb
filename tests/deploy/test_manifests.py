"""The deploy/ files are checked, not eyed: the Kubernetes manifests against the API's JSON schemas
(kubernetes-validate bundles them: no network), strictly, so an unknown or misspelt field fails; then what
no schema knows: probes on the right paths and port, the shutdown time budget, hashing on the session
key, timeouts above the idle timeout, and compose, nginx and the manifests agreeing with each other."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s

from app.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
OLDEST_KUBERNETES = "1.29.0"  # the oldest release the manifests promise to work with
IDLE_TIMEOUT_S = Settings.model_fields["idle_timeout_s"].default
UVICORN_GRACE_MARGIN_S = 1  # app/serving.py gives uvicorn the shutdown grace plus a second


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def container() -> dict[str, Any]:
    (server,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return server


def env(name: str) -> Any:
    (entry,) = [e for e in container()["env"] if e["name"] == name]
    return entry.get("value", entry.get("valueFrom"))


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, k8s.latest_version()])
def test_every_manifest_matches_the_kubernetes_schema(version: str) -> None:
    kinds = []
    for doc in manifests():
        k8s.validate(doc, version, strict=True)  # raises ValidationError
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "Ingress", "Ingress", "PodDisruptionBudget", "Service"]


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (
            ["spec", "template", "spec", "containers", 0, "readinessProbes"],
            {},
            "'readinessProbes' was unexpected",
        ),
        (["spec", "replicas"], "two", "'two' is not of type"),
        (
            ["spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"],
            "http",
            "is not of type",
        ),
    ],
    ids=["misspelt-field", "replicas-as-text", "port-as-text"],
)
def test_the_schema_check_catches_a_broken_manifest(path: list, value: Any, complaint: str) -> None:
    broken = copy.deepcopy(one("Deployment"))
    target = broken
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(k8s.ValidationError, match=re.escape(complaint)):
        k8s.validate(broken, k8s.latest_version(), strict=True)


def test_the_deployment_runs_one_gpu_per_pod_with_probes_on_our_health_routes() -> None:
    server = container()
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env("FREEZE_OMNI_DEVICES") == "cuda:0"
    assert env("FREEZE_OMNI_HOST") == "0.0.0.0"
    (port,) = server["ports"]
    assert str(port["containerPort"]) == env("FREEZE_OMNI_PORT")
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert env("FREEZE_OMNI_INSTANCE_ID") == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert set(env("FREEZE_OMNI_API_KEYS")["secretKeyRef"]) >= {"name", "key"}
    for name in [e["name"] for e in server["env"]]:  # every variable is a setting we read
        assert name.removeprefix("FREEZE_OMNI_").lower() in Settings.model_fields, name


def test_shutdown_fits_in_the_termination_grace_period() -> None:
    """preStop (the ingress stops sending new sessions) + the drain + uvicorn's own close must end before
    Kubernetes sends SIGKILL."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    grace_s = float(env("FREEZE_OMNI_SHUTDOWN_GRACE_S"))
    needed = pre_stop_s + grace_s + (grace_s + UVICORN_GRACE_MARGIN_S)
    assert pre_stop_s >= 2 * container()["readinessProbe"]["periodSeconds"]
    assert pod["terminationGracePeriodSeconds"] >= needed + 5, needed


def test_the_service_and_ingresses_reach_the_pods_and_hash_realtime_on_the_session_key() -> None:
    deployment, service, pdb = one("Deployment"), one("Service"), one("PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == container()["ports"][0]["name"]

    realtime, rest = one("Ingress", "freeze-omni-realtime"), one("Ingress", "freeze-omni")
    notes = realtime["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$arg_session"
    assert "nginx.ingress.kubernetes.io/upstream-hash-by" not in rest["metadata"]["annotations"]
    for ingress in (realtime, rest):
        notes = ingress["metadata"]["annotations"]
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            assert float(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) > IDLE_TIMEOUT_S
        (rule,) = ingress["spec"]["rules"]
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {
                "name": "freeze-omni",
                "port": {"name": service_port["name"]},
            }
    (realtime_path,) = realtime["spec"]["rules"][0]["http"]["paths"]
    assert realtime_path["path"] == "/v1/realtime"


def nginx_directives() -> str:
    return re.sub(r"#.*", "", (DEPLOY / "nginx" / "freeze-omni.conf").read_text())


def test_nginx_hashes_on_the_session_key_and_outlasts_the_idle_timeout() -> None:
    site = nginx_directives()
    assert "hash $arg_session consistent;" in site
    assert "proxy_set_header Upgrade $http_upgrade;" in site
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        (seconds,) = re.findall(rf"{timeout} (\d+)s;", site)
        assert float(seconds) > IDLE_TIMEOUT_S


def test_compose_nginx_and_the_gpu_override_name_the_same_engines() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())
    engines = sorted(name for name in compose["services"] if name.startswith("engine-"))
    listed = re.findall(
        r"^server ([\w.-]+):8000 ", (DEPLOY / "nginx" / "freeze-omni-engines.conf").read_text(), re.M
    )
    assert len(engines) >= 2 and listed == engines
    ids = [compose["services"][name]["environment"]["FREEZE_OMNI_INSTANCE_ID"] for name in engines]
    assert ids == engines
    assert sorted(gpu["services"]) == engines
    gpus = [
        gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for name in engines
    ]
    assert sorted(g for ids in gpus for g in ids) == [str(n) for n in range(len(engines))]  # one GPU each
    volumes = compose["services"]["nginx"]["volumes"]
    for shipped in ("freeze-omni.conf", "freeze-omni-engines.conf"):
        assert any(v.startswith(f"./nginx/{shipped}:") for v in volumes), volumes
