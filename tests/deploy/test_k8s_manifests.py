"""The Kubernetes manifests (deploy/k8s): valid against the Kubernetes schemas, and consistent
with the service they deploy (its settings, routes, port, drain and lanes).

Every resource file is validated as it stands; the base, the GPU overlay and the own-models
example are also rendered with `kubectl kustomize` (skipped where kubectl is missing) and their
output validated and checked. Validation is strict: a field the schema does not know fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service import settings as settings_module
from service.settings import ENV_PREFIX, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
BASE = K8S / "base"
GPU = K8S / "overlays" / "gpu"
OWN_MODELS = K8S / "examples" / "own-models"
REDIS = K8S / "examples" / "redis"
KUSTOMIZATIONS = {"base": BASE, "gpu": GPU, "own-models": OWN_MODELS, "redis": REDIS}
# The Kubernetes versions the manifests are validated against: the oldest they need (the
# preStop `sleep` action is on by default from 1.30) and the newest schemas of the pinned
# kubernetes-validate (pyproject.toml).
KUBERNETES_VERSIONS = ("1.30", "1.37")
# Seconds allowed after the drain for the worker's cleanup and the arbiter's exit (the
# README's SIGTERM drill took 5.1 s in all).
EXIT_ALLOWANCE_S = 10
# Variables that are not the service's settings but BentoML's own.
BENTOML_VARIABLES = {"BENTOML_HOME", "BENTOML_DO_NOT_TRACK"}

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not on PATH: kustomize output not rendered"
)


# Loading and rendering ---------------------------------------------------------------------


def load_documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def resource_files() -> list[Path]:
    """The complete resources the kustomizations list (not patches, not other directories)."""
    files = set()
    for directory in KUSTOMIZATIONS.values():
        for entry in kustomization(directory).get("resources", []):
            path = (directory / entry).resolve()
            if path.is_file():
                files.add(path)
    return sorted(files)


def render(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return load_documents(done.stdout)


def _load(path: Path) -> list[dict[str, Any]]:
    return load_documents(path.read_text())


def base_resources() -> list[dict[str, Any]]:
    """The base as written; the same as rendered, as it has no transformations (tested)."""
    return [doc for path in resource_files() if path.parent == BASE for doc in _load(path)]


def one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The service's resource of ``kind`` (the redis example's task store has its own)."""
    found = [
        resource
        for resource in resources
        if resource["kind"] == kind and not resource["metadata"]["name"].endswith("-redis")
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def rendered_or_none() -> dict[str, list[dict[str, Any]]] | None:
    if KUBECTL is None:
        return None
    return {name: render(directory) for name, directory in KUSTOMIZATIONS.items()}


@pytest.fixture
def rendered(rendered_or_none) -> dict[str, list[dict[str, Any]]]:
    if rendered_or_none is None:
        pytest.skip("kubectl is not on PATH: kustomize output not rendered")
    return rendered_or_none


# The base as written, and every rendered kustomization where kubectl is present.
MANIFESTS = [
    pytest.param("base-files", id="base-files"),
    *(pytest.param(name, id=f"rendered-{name}", marks=needs_kubectl) for name in KUSTOMIZATIONS),
]


@pytest.fixture
def resources(request, rendered_or_none) -> list[dict[str, Any]]:
    """One set of manifests (parametrized indirectly by MANIFESTS)."""
    if request.param == "base-files":
        return base_resources()
    return rendered_or_none[request.param]


# What a container's environment means to the service ----------------------------------------


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ('2', '1500m', '0.5') in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the process sees it: literal values, and resource
    fields as the downward API gives them (the quantity over the divisor, rounded up)."""
    env = {}
    for variable in spec.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        field = variable["valueFrom"].get("resourceFieldRef")
        if field is None:  # a Secret or ConfigMap key: its value is not in the manifests
            continue
        assert field.get("containerName", spec["name"]) == spec["name"]
        kind, resource = field["resource"].split(".")
        quantity = spec["resources"][kind][resource]
        divisor = cpu_cores(field.get("divisor", "1"))
        env[variable["name"]] = str(math.ceil(cpu_cores(quantity) / divisor))
    return env


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings.from_env() in an environment holding only ``env``'s ELBO_SERVE_ variables."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


class _RecordingEnviron(dict):
    """os.environ stand-in that records every name looked up."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key, default=None):  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)


def variables_settings_read(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    environ = _RecordingEnviron()
    monkeypatch.setattr(os, "environ", environ)
    Settings.from_env()
    return {name for name in environ.read if name.startswith(ENV_PREFIX)}


def command_option(command: list[str], option: str) -> str:
    assert option in command, f"{option} not in {command}"
    return command[command.index(option) + 1]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


# Schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_file_is_valid_against_the_kubernetes_schemas(path: Path, version: str):
    documents = _load(path)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_kustomization_is_valid_against_the_kubernetes_schemas(
    rendered, name: str, version: str
):
    assert rendered[name]
    for document in rendered[name]:
        kubernetes_validate.validate(document, version, strict=True)


def test_strict_validation_rejects_an_unknown_field():
    deployment = one(base_resources(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_manifest_file_is_used_by_a_kustomization():
    """A YAML file no kustomization lists would be neither applied nor validated."""
    used = set(resource_files())
    for directory in KUSTOMIZATIONS.values():
        used.add((directory / "kustomization.yaml").resolve())
        for patch in kustomization(directory).get("patches", []):
            used.add((directory / patch["path"]).resolve())
    assert sorted(set(K8S.rglob("*.yaml")) - used) == []


@needs_kubectl
def test_base_renders_as_written(rendered):
    def key(resource):
        return resource["kind"], resource["metadata"]["name"]

    assert sorted(rendered["base"], key=key) == sorted(base_resources(), key=key)


# The service's settings ---------------------------------------------------------------------


@pytest.mark.parametrize("resources", MANIFESTS, indirect=True)
def test_every_setting_variable_is_one_the_service_reads(resources, monkeypatch):
    read = variables_settings_read(monkeypatch)
    assert f"{ENV_PREFIX}MODEL_LANES" in read  # the recorder sees what settings.py reads
    names = {variable["name"] for variable in container(resources).get("env", [])}
    assert {name for name in names if name.startswith(ENV_PREFIX)} - read == set()
    assert {name for name in names if not name.startswith(ENV_PREFIX)} <= BENTOML_VARIABLES


@pytest.mark.parametrize("resources", MANIFESTS, indirect=True)
def test_environment_parses_as_settings(resources, monkeypatch):
    spec = container(resources)
    settings = settings_from(environment(spec), monkeypatch)
    device = settings.resolve_device()
    assert settings.lanes(device) >= 1
    assert settings.request_timeout_s > 0


def test_lanes_follow_the_cpu_limit(monkeypatch):
    spec = container(base_resources())
    lanes = {variable["name"]: variable for variable in spec["env"]}[f"{ENV_PREFIX}MODEL_LANES"]
    assert lanes["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    # The lanes get the cores they are counted from.
    assert spec["resources"]["requests"]["cpu"] == spec["resources"]["limits"]["cpu"]
    # The node has more cores than the pod's limit, and sched_getaffinity sees them all.
    monkeypatch.setattr(settings_module, "available_cores", lambda: 64)
    for limit, expected in (("2", 2), ("4", 4), ("1500m", 2)):
        spec["resources"]["limits"]["cpu"] = limit
        settings = settings_from(environment(spec), monkeypatch)
        assert settings.lanes("cpu") == expected
        # One torch thread per lane, whatever the node's core count.
        assert settings.threads_per_call("cpu") == 1


def test_service_links_cannot_inject_setting_variables():
    """Kubernetes gives every pod <NAME>_SERVICE_HOST, <NAME>_PORT, ... for each Service of
    its namespace; a Service named elbo-serve writes into the settings' prefix."""
    resources = base_resources()
    prefix = one(resources, "Service")["metadata"]["name"].upper().replace("-", "_") + "_"
    assert prefix == ENV_PREFIX  # else this test guards nothing: check the names
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


# Routes, ports, labels ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_routes(tmp_path_factory) -> set[str]:
    """The paths the service's ASGI app routes (in a subprocess: importing the service here
    would import bentoml before the service tests set its environment up)."""
    env = dict(os.environ, BENTOML_HOME=str(tmp_path_factory.mktemp("bentoml")))
    env["BENTOML_DO_NOT_TRACK"] = "true"
    script = (
        "import json\n"
        "from service.service import ElboServe\n"
        "print(json.dumps(sorted({getattr(r, 'path', '') for r in ElboServe.to_asgi().routes})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("resources", MANIFESTS, indirect=True)
def test_probes_and_scrape_path_are_routes_the_service_serves(resources, served_routes):
    spec = container(resources)
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/livez"
    paths = [spec[probe]["httpGet"]["path"] for probe in spec if probe.endswith("Probe")]
    template = one(resources, "Deployment")["spec"]["template"]
    paths.append(template["metadata"]["annotations"]["prometheus.io/path"])
    assert set(paths) - served_routes == set()


@pytest.mark.parametrize("resources", MANIFESTS, indirect=True)
def test_ports_agree(resources):
    """The command's --port, the container port, the Service's targetPort, the probes' port
    and the scrape annotation are one port."""
    spec = container(resources)
    named = {port["name"]: port["containerPort"] for port in spec["ports"]}

    def number(port: int | str) -> int:
        return named[port] if isinstance(port, str) else port

    command_port = int(command_option(spec["command"] + spec.get("args", []), "--port"))
    assert list(named.values()) == [command_port]
    for service_port in one(resources, "Service")["spec"]["ports"]:
        assert number(service_port["targetPort"]) == command_port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert number(spec[probe]["httpGet"]["port"]) == command_port
    template = one(resources, "Deployment")["spec"]["template"]
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == command_port


@pytest.mark.parametrize("resources", MANIFESTS, indirect=True)
def test_selectors_match_the_pod_labels(resources):
    deployment = one(resources, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": one(resources, "Service")["spec"]["selector"],
        "PodDisruptionBudget": one(resources, "PodDisruptionBudget")["spec"]["selector"][
            "matchLabels"
        ],
    }
    for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        selectors["topologySpreadConstraints"] = constraint["labelSelector"]["matchLabels"]
    for owner, selector in selectors.items():
        assert selector, owner
        assert selector.items() <= labels.items(), owner


@pytest.mark.parametrize("resources", MANIFESTS, indirect=True)
def test_autoscaler_targets_the_deployment_and_owns_its_replicas(resources):
    deployment = one(resources, "Deployment")
    autoscaler = one(resources, "HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    # A replica count in the Deployment would reset the autoscaler's on every apply.
    assert "replicas" not in deployment["spec"]
    # Two at least, so that the disruption budget can let one go while another serves.
    assert autoscaler["spec"]["minReplicas"] >= 2
    assert one(resources, "PodDisruptionBudget")["spec"].get("maxUnavailable") == 1


# Drain ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("resources", MANIFESTS, indirect=True)
def test_grace_period_covers_the_prestop_sleep_and_the_request_timeout(resources, monkeypatch):
    """preStop sleep (endpoints removed), then a drain that lasts as long as the longest
    request in flight, at most the request timeout, then the exit: all before SIGKILL."""
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    spec = container(resources)
    env = environment(spec)
    timeout_s = settings_from(env, monkeypatch).request_timeout_s
    pre_stop_s = spec["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop_s >= 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + timeout_s + EXIT_ALLOWANCE_S
    # BentoML stops waiting for what is left (background tasks) at the request timeout.
    command = [expand(part, env) for part in spec["command"] + spec.get("args", [])]
    assert int(command_option(command, "--timeout-graceful-shutdown")) == timeout_s


# Security and writable paths ------------------------------------------------------------------


@pytest.mark.parametrize("resources", MANIFESTS, indirect=True)
def test_runs_as_non_root_on_a_read_only_root_with_volumes_where_it_writes(resources, monkeypatch):
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]
    spec = container(resources)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    writable = [
        Path(mount["mountPath"])
        for mount in spec["volumeMounts"]
        if not mount.get("readOnly") and "emptyDir" in volumes[mount["name"]]
    ]
    env = environment(spec)
    written = [  # what the service writes (README "Kubernetes"): BentoML's home, /tmp
        Path(env["BENTOML_HOME"]),
        settings_from(env, monkeypatch).task_dir,
        Path("/tmp"),
    ]
    for path in written:
        assert any(path.is_relative_to(mount) for mount in writable), path


# The overlays --------------------------------------------------------------------------------


@needs_kubectl
def test_gpu_overlay_asks_for_one_gpu_and_runs_one_lane(rendered, monkeypatch):
    spec = container(rendered["gpu"])
    assert str(spec["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert "cuda" in spec["image"].rsplit(":", 1)[-1]
    env = environment(spec)
    lanes = {variable["name"]: variable for variable in spec["env"]}[f"{ENV_PREFIX}MODEL_LANES"]
    assert lanes == {"name": f"{ENV_PREFIX}MODEL_LANES", "value": "1"}
    settings = settings_from(env, monkeypatch)
    assert settings.device == "cuda"
    assert settings.lanes("cuda") == 1
    # The CUDA batch settings are set (README "Settings"), at values the settings accept.
    for name in ("CUDA_MAX_BATCH_IMAGES", "CUDA_IMAGE_CHUNK_ROWS", "CUDA_BOUND_CALL_ROWS"):
        assert int(env[ENV_PREFIX + name]) > 0
    assert settings.max_batch_images("cuda") == int(env[f"{ENV_PREFIX}CUDA_MAX_BATCH_IMAGES"])


@needs_kubectl
def test_own_models_example_serves_a_read_only_mounted_repository(rendered, monkeypatch):
    pod = one(rendered["own-models"], "Deployment")["spec"]["template"]["spec"]
    spec = container(rendered["own-models"])
    model_dir = settings_from(environment(spec), monkeypatch).model_dir
    mounts = [mount for mount in spec["volumeMounts"] if Path(mount["mountPath"]) == model_dir]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True
    volume = {volume["name"]: volume for volume in pod["volumes"]}[mounts[0]["name"]]
    claim = volume["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    claims = [r for r in rendered["own-models"] if r["kind"] == "PersistentVolumeClaim"]
    assert [r["metadata"]["name"] for r in claims] == [claim["claimName"]]
