"""One store layout: manifests, Serve configs, jobs, the CLI and the docs agree on paths.

Every KubeRay manifest, the image, each Serve config, each RayJob entrypoint (parsed by
the CLI parser its job uses), the CLI's defaults, the demo and every ``s3://`` path in
the docs name the same place for the same thing (:mod:`attune.layout`).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from attune.cli import build_parser
from attune.layout import StoreLayout, resolve

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "infra" / "kuberay"
PROD_STORE = "s3://attune-prod"

#: jobs/X.py -> the attune sub-command whose arguments it takes.
JOB_COMMANDS = {
    "jobs/preprocess.py": ["preprocess"],
    "jobs/materialize.py": ["features", "materialize"],
    "jobs/tune.py": ["tune"],
    "jobs/drift.py": ["monitor", "drift"],
    "jobs/outcomes.py": ["outcomes"],
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _env_values(node: Any, name: str) -> list[str]:
    """Every literal ``value`` of env var ``name`` anywhere in a manifest."""
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("name") == name and "value" in node:
            found.append(node["value"])
        for value in node.values():
            found += _env_values(value, name)
    elif isinstance(node, list):
        for value in node:
            found += _env_values(value, name)
    return found


def _stores_in_infra() -> dict[str, set[str]]:
    stores: dict[str, set[str]] = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in _docs(path):
            for value in _env_values(doc, "ATTUNE_STORE"):
                stores.setdefault(value, set()).add(path.name)
    env = re.findall(r"^ENV ATTUNE_STORE=(\S+)", (ROOT / "infra/Dockerfile").read_text(), re.M)
    for value in env:
        stores.setdefault(value, set()).add("Dockerfile")
    return stores


def test_every_manifest_and_the_image_name_one_store() -> None:
    stores = _stores_in_infra()
    assert set(stores) == {PROD_STORE}, stores
    assert "Dockerfile" in stores[PROD_STORE] and "rayservice.yaml" in stores[PROD_STORE]


def _rayjobs() -> dict[str, dict[str, Any]]:
    jobs = {}
    for path in sorted(KUBERAY.glob("rayjob-*.yaml")):
        doc = _docs(path)[0]  # then the cluster's NetworkPolicy
        assert doc["kind"] == "RayJob", path
        jobs[path.name] = doc
    return jobs


def _job_args(doc: dict[str, Any]) -> Any:
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1] in JOB_COMMANDS, argv
    args = build_parser().parse_args([*JOB_COMMANDS[argv[1]], *argv[2:]])
    (store,) = set(_env_values(doc, "ATTUNE_STORE"))
    args.store = store
    return argv[1], args


def test_every_batch_stage_has_a_rayjob() -> None:
    scripts = {_job_args(doc)[0] for doc in _rayjobs().values()}
    assert scripts == set(JOB_COMMANDS)


@pytest.mark.parametrize("name", sorted(p.name for p in KUBERAY.glob("rayjob-*.yaml")))
def test_rayjob_paths_are_the_layouts(name: str) -> None:
    script, args = _job_args(_rayjobs()[name])
    layout = StoreLayout(args.store)
    for place in ("histories", "features", "registry", "decisions"):
        if hasattr(args, place):
            assert resolve(args, place) == getattr(layout, place), (name, place)
    if script == "jobs/preprocess.py":
        assert args.out == layout.features
    if script == "jobs/materialize.py":
        assert args.out == layout.online
    if script == "jobs/outcomes.py":
        assert args.history == [layout.histories] and args.out is None  # out: <store>/rewards


def test_what_tune_reads_is_what_preprocess_writes() -> None:
    by_script = {s: a for s, a in (_job_args(d) for d in _rayjobs().values())}
    assert resolve(by_script["jobs/tune.py"], "features") == by_script["jobs/preprocess.py"].out


def test_every_rayjob_is_scheduled_and_shipped_to_the_scheduler() -> None:
    schedules = _docs(KUBERAY / "schedules.yaml")
    commands = [
        c["command"]
        for d in schedules
        if d["kind"] == "CronJob"
        for c in d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    ]
    created = {Path(cmd[-1]).name for cmd in commands}
    assert created == set(_rayjobs())
    (kustomization,) = _docs(KUBERAY / "kustomization.yaml")
    (generated,) = kustomization["configMapGenerator"]
    assert set(generated["files"]) == set(_rayjobs())


def _serve_args(name: str) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "serve_configs" / name).read_text())
    (app,) = config["applications"]
    return dict(app["args"])


@pytest.mark.parametrize(
    ("name", "store"),
    [("prod.yaml", PROD_STORE), ("staging.yaml", "s3://attune-staging"), ("local.yaml", ".attune")],
)
def test_serve_configs_serve_the_registry_of_their_store(name: str, store: str) -> None:
    args = _serve_args(name)
    assert args["store"] == store
    assert args["registry"] == StoreLayout(store).registry


def test_the_rayservice_serves_the_store_its_pods_name() -> None:
    service = _docs(KUBERAY / "rayservice.yaml")[0]  # then its NetworkPolicy
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert {app["args"]["store"]} == set(_env_values(service, "ATTUNE_STORE"))


@pytest.mark.parametrize(
    ("argv", "place", "attr"),
    [
        (["preprocess"], "histories", "histories"),
        (["features", "materialize"], "histories", "histories"),
        (["tune"], "features", "features"),
        (["tune"], "registry", "registry"),
        (["registry", "list"], "registry", "registry"),
        (["rollout", "promote"], "registry", "registry"),
        (["monitor", "drift"], "registry", "registry"),
        (["monitor", "drift"], "decisions", "decisions"),
        (["experiment", "analyze", "--out", "x"], "decisions", "decisions"),
        (["experiment", "analyze", "--out", "x"], "outcomes", "outcomes"),
    ],
)
def test_cli_defaults_are_the_layout_under_attune_store(
    argv: list[str], place: str, attr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attune.settings import get_settings

    monkeypatch.setenv("ATTUNE_STORE", "s3://bucket/root")
    get_settings.cache_clear()
    try:
        args = build_parser().parse_args(argv)
        assert resolve(args, place) == getattr(StoreLayout("s3://bucket/root"), attr)
    finally:
        get_settings.cache_clear()


def test_serving_and_the_demo_use_the_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    from attune.demo.flow import Paths
    from attune.serving.config import AppArgs
    from attune.settings import get_settings

    monkeypatch.setenv("ATTUNE_STORE", "s3://bucket/root")
    get_settings.cache_clear()
    try:
        assert AppArgs().registry_uri() == StoreLayout("s3://bucket/root").registry
    finally:
        get_settings.cache_clear()
    layout, paths = StoreLayout("/srv/store"), Paths.under(Path("/srv/store"))
    for place in ("histories", "features", "registry", "decisions"):
        assert getattr(paths, place) == getattr(layout, place), place


_S3 = re.compile(r"s3://attune-(?:prod|staging)[\w./<>-]*")


def _documented_paths() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "serve_configs").glob("*.yaml"))
    files += [*sorted((ROOT / "infra").rglob("*.yaml")), ROOT / "infra/Dockerfile"]
    files += sorted((ROOT / "jobs").glob("*.py"))
    return [(f.name, m.rstrip(".")) for f in files for m in _S3.findall(f.read_text())]


def _is_a_layout_path(uri: str) -> bool:
    root = "s3://attune-prod" if uri.startswith("s3://attune-prod") else "s3://attune-staging"
    rest = uri[len(root) :].strip("/")
    if not rest:
        return True
    layout = StoreLayout(root)
    places = [
        getattr(layout, p)
        for p in (
            "histories",
            "features",
            "registry",
            "decisions",
            "outcomes",
            "rewards",
            "monitoring",
        )
    ]
    places.append(f"{root}/features")  # features/<spec hash>/<snapshot>: online snapshots
    return any(uri == p or uri.startswith(p + "/") for p in places)


def test_every_documented_store_path_is_in_the_layout() -> None:
    paths = _documented_paths()
    assert paths, "no s3://attune-prod paths found: the scan is broken"
    wrong = [(f, uri) for f, uri in paths if not _is_a_layout_path(uri)]
    assert not wrong


def test_the_scan_catches_a_path_outside_the_layout() -> None:
    assert not _is_a_layout_path("s3://attune-prod/store/registry")
    assert not _is_a_layout_path("s3://attune-prod/models")
    assert _is_a_layout_path("s3://attune-prod/features/latest")
