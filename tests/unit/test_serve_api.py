"""Rollouts reach Serve through public, declarative interfaces only.

The KubeRay target is driven through a stand-in ``kubectl`` on PATH (a script that
answers ``get`` with the repository's RayService manifest and records ``patch``): the
thing under test is attune's read-modify-write of ``serveConfigV2``, not the cluster.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
import yaml

from attune.errors import NotFound, Unavailable
from attune.serving.config import RolloutConfig
from attune.serving.rollout import rollout_of, update_rollout
from attune.serving.serve_api import RayServiceTarget, ServeREST

ROOT = Path(__file__).resolve().parents[2]

_KUBECTL = """#!/usr/bin/env python3
import json, sys
from pathlib import Path
import yaml
state = Path(__file__).with_name("state.json")
args = sys.argv[1:]
Path(__file__).with_name("calls.jsonl").open("a").write(json.dumps(args) + "\\n")
if "missing" in args:
    print('Error from server (NotFound): rayservices.ray.io "missing" not found', file=sys.stderr)
    sys.exit(1)
if args[0] == "get":
    print(state.read_text())
elif args[0] == "patch":
    doc = json.loads(state.read_text())
    doc["spec"].update(json.loads(args[args.index("--patch") + 1])["spec"])
    state.write_text(json.dumps(doc))
"""


@pytest.fixture
def kubectl(tmp_path: Path) -> Path:
    manifest = next(yaml.safe_load_all((ROOT / "infra/kuberay/rayservice.yaml").read_text()))
    (tmp_path / "state.json").write_text(json.dumps(manifest))
    script = tmp_path / "kubectl"
    script.write_text(_KUBECTL)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_a_rollout_on_kuberay_is_written_into_the_rayservice_spec(kubectl: Path) -> None:
    target = RayServiceTarget("attune-ranking", namespace="ml", kubectl=str(kubectl))
    before = target.read()
    assert rollout_of(before, "attune").canary is None

    def to_canary(current: RolloutConfig) -> RolloutConfig:
        return current.model_copy(update={"canary": "v2", "canary_percent": 10.0})

    update_rollout("attune", to_canary, target=target)
    spec = json.loads((kubectl.parent / "state.json").read_text())["spec"]
    desired = yaml.safe_load(spec["serveConfigV2"])
    (app,) = desired["applications"]
    ingress = next(d for d in app["deployments"] if d["name"] == "RankingIngress")
    assert (ingress["user_config"]["canary"], ingress["user_config"]["canary_percent"]) == (
        "v2",
        10.0,
    )
    # everything else of the desired state is kept
    prod = yaml.safe_load((ROOT / "serve_configs/prod.yaml").read_text())
    assert app["args"] == prod["applications"][0]["args"]
    assert desired["proxy_location"] == prod["proxy_location"]
    calls = [json.loads(line) for line in (kubectl.parent / "calls.jsonl").read_text().splitlines()]
    assert [c[0] for c in calls] == ["get", "get", "patch"]
    assert all(c[-2:] == ["--namespace", "ml"] for c in calls)
    assert rollout_of(target.read(), "attune").canary == "v2"


def test_a_missing_rayservice_is_not_found(kubectl: Path) -> None:
    with pytest.raises(NotFound, match="missing"):
        RayServiceTarget("missing", kubectl=str(kubectl)).read()


def test_an_unreachable_serve_api_is_unavailable_naming_the_address() -> None:
    from tests.conftest import free_port

    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable, match=re.escape(address)):
        ServeREST(address, timeout_s=2).read()


def test_the_serve_api_address_is_ray_s_dashboard_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_DASHBOARD_ADDRESS", "http://head:8265/")
    assert ServeREST().address == "http://head:8265"
    monkeypatch.delenv("RAY_DASHBOARD_ADDRESS")
    assert ServeREST().address == "http://127.0.0.1:8265"


def test_attune_uses_no_private_ray_api() -> None:
    private = re.compile(r"ray\.[\w.]*\._private|_get_global_client|\._controller\b|serve\.context")
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "platform/attune").rglob("*.py")
        if private.search(path.read_text())
    ]
    assert not offenders


def test_the_rest_client_sends_ray_s_token_from_where_ray_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attune.serving.serve_api import _ray_token

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert _ray_token() == "from-file"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert _ray_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert _ray_token() is None
