"""infra/: KubeRay manifests validate against the CRDs, and stay in step with the code.

The CRD schemas are read from ``$ATTUNE_KUBERAY_CRDS`` or from
``../shared/reference/kuberay-crds`` beside the repository; tests that need them skip
with that reason when neither exists (the CRD files are not copied into the repo).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
REDIS_MANIFEST = INFRA / "kuberay/redis.yaml"
SCHEDULES = INFRA / "kuberay/schedules.yaml"
KUSTOMIZATION = INFRA / "kuberay/kustomization.yaml"
# KubeRay custom resources; redis.yaml, schedules.yaml and kustomization.yaml beside
# them hold plain Kubernetes objects.
MANIFESTS = sorted(
    p
    for p in (INFRA / "kuberay").glob("*.yaml")
    if p not in (REDIS_MANIFEST, SCHEDULES, KUSTOMIZATION)
)
_CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _crd_dir() -> Path | None:
    env = os.environ.get("ATTUNE_KUBERAY_CRDS")
    for candidate in [Path(env)] if env else [ROOT.parent / "shared/reference/kuberay-crds"]:
        if candidate.is_dir():
            return candidate
    return None


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Like ``kubectl --validate=strict``: unknown fields are errors, except where the
    CRD says ``x-kubernetes-preserve-unknown-fields``."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def _schema_for(kind: str, api_version: str) -> dict[str, Any]:
    crd_dir = _crd_dir()
    if crd_dir is None:
        pytest.skip("KubeRay CRDs not found: set ATTUNE_KUBERAY_CRDS or add ../shared/reference")
    return _load_schema(crd_dir / _CRD_FILES[kind], api_version)


@functools.lru_cache(maxsize=8)
def _load_schema(path: Path, api_version: str) -> dict[str, Any]:
    crd = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    version = api_version.split("/")[1]
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return _strict(entry["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{path.name} has no version {version}")


def _load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def test_every_kuberay_kind_has_a_manifest() -> None:
    """infra/kuberay holds a RayCluster, a RayJob and a RayService."""
    kinds = {_load(p)["kind"] for p in MANIFESTS}
    assert kinds == {"RayCluster", "RayJob", "RayService"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_kuberay_crd(path: Path) -> None:
    """Each manifest is valid (strictly: no unknown fields) against its CRD's openAPIV3Schema."""
    doc = _load(path)
    schema = _schema_for(doc["kind"], doc["apiVersion"])
    jsonschema.validate(doc, schema)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The validator can fail: a typo in a manifest field is reported."""
    doc = _load(INFRA / "kuberay/raycluster.yaml")
    schema = _schema_for("RayCluster", doc["apiVersion"])
    doc["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # missing 's'
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(doc, schema)


def test_rayservice_serve_config_is_prod_yaml() -> None:
    """RayService.serveConfigV2 is serve_configs/prod.yaml, value for value."""
    service = _load(INFRA / "kuberay/rayservice.yaml")
    prod = yaml.safe_load((ROOT / "serve_configs/prod.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == prod


def _pinned(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(name)}(?:\[[^\]]*\])?==([^"]+)"', text)
    assert match, f"{name} is not pinned in pyproject.toml"
    return match.group(1)


def test_image_and_manifests_pin_the_ray_version_of_pyproject() -> None:
    """The image's Ray tag and every manifest's rayVersion equal pyproject's ray pin."""
    ray_version = _pinned("ray")
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray_version}-" in dockerfile
    for path in MANIFESTS:
        doc = _load(path)
        spec = doc["spec"]
        cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
        assert cluster["rayVersion"] == ray_version, path.name


def test_no_credentials_in_manifests() -> None:
    """Store credentials come from a Secret reference, never from literal values in the repo."""
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY\s*[:=]")
    for path in [*MANIFESTS, REDIS_MANIFEST, INFRA / "Dockerfile"]:
        assert not pattern.search(path.read_text()), path.name
    for path in MANIFESTS:
        assert "secretRef" in path.read_text(), f"{path.name} should take credentials from a Secret"


def test_redis_manifest_has_a_persistent_deployment_service_and_claim() -> None:
    """redis.yaml: a Deployment with AOF on the PVC, probed with redis-cli, behind attune-redis."""
    docs = [d for d in yaml.safe_load_all(REDIS_MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(by_kind)

    service = by_kind["Service"]
    assert service["metadata"]["name"] == "attune-redis"
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]

    pod = by_kind["Deployment"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["image"].split(":")[0] in {"redis", "valkey/valkey"}
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert {"limits", "requests"} <= set(container["resources"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli ping" in " ".join(container[probe]["exec"]["command"]), probe

    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == args[args.index("--dir") + 1]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = by_kind["PersistentVolumeClaim"]["metadata"]["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim


def test_rayservice_containers_read_redis_url_from_the_secret() -> None:
    """Head and worker containers take ATTUNE_REDIS_URL from Secret attune-redis, key url."""
    cluster = _load(INFRA / "kuberay/rayservice.yaml")["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    assert len(containers) == 2
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert env["ATTUNE_REDIS_URL"] == {
            "name": "ATTUNE_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": "attune-redis", "key": "url"}},
        }, container["name"]


def test_rayservice_is_rendered_from_the_script() -> None:
    """infra/kuberay/rayservice.yaml is exactly what infra/render_rayservice.py writes."""
    spec = importlib.util.spec_from_file_location(
        "render_rayservice", INFRA / "render_rayservice.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (INFRA / "kuberay/rayservice.yaml").read_text() == module.render()


def test_grafana_dashboard_parses_and_queries_attune_metrics() -> None:
    """The Grafana dashboard is valid JSON whose panels query metrics attune exports."""
    dashboard = json.loads((INFRA / "monitoring/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all("attune_" in e for e in exprs)


def test_prometheus_config_scrapes_ray_metrics() -> None:
    """The Prometheus config parses and scrapes Ray's metrics port."""
    config = yaml.safe_load((INFRA / "monitoring/prometheus.yaml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "ray" in jobs
