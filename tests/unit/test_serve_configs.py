"""serve_configs/*.yaml are valid Serve configs whose args and user_config attune accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from attune.serving.app import app_config
from attune.serving.config import AppArgs, DecisionLogConfig, RolloutConfig
from attune.serving.ingress import INGRESS_NAME
from attune.serving.rollout import RolloutRequest, rollout_of, with_rollout

CONFIGS = sorted((Path(__file__).parents[2] / "serve_configs").glob("*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_every_environment_has_a_config() -> None:
    assert [p.name for p in CONFIGS] == ["local.yaml", "prod.yaml", "staging.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_as_serve_deploy_schema_with_valid_args_and_user_config(
    path: Path,
) -> None:
    config = ServeDeploySchema.model_validate(_load(path))
    (app,) = config.applications
    assert app.import_path == "attune.serving.app:build_app"
    AppArgs.model_validate(app.args)
    (ingress,) = app.deployments
    assert ingress.name == INGRESS_NAME
    RolloutConfig.model_validate(ingress.user_config)
    assert ingress.autoscaling_config["min_replicas"] >= 1
    assert ingress.health_check_period_s > 0 and ingress.health_check_timeout_s > 0


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "local.yaml"], ids=str)
def test_shared_environments_keep_models_and_decisions_on_s3(path: Path) -> None:
    app = ServeDeploySchema.model_validate(_load(path)).applications[0]
    args = AppArgs.model_validate(app.args)
    assert args.registry_uri().startswith("s3://") and args.store_uri().startswith("s3://")


def _keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [str(k) for k in node] + [k for v in node.values() for k in _keys(v)]
    if isinstance(node, list):
        return [k for v in node for k in _keys(v)]
    return []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_credentials_in_configs(path: Path) -> None:
    """Secrets come from the environment: no config key holds a password, token or key."""
    secret = re.compile(r"secret|password|token|access_key|credential", re.IGNORECASE)
    assert [k for k in _keys(_load(path)) if secret.search(k)] == []
    assert not re.search(r"AKIA[0-9A-Z]{16}", path.read_text())


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"canary_percent": 20}, "canary"),
        ({"shadow_percent": 5}, "shadow"),
        ({"canary": "v1", "canary_percent": 120}, "canary_percent"),
        ({"salt": ""}, "salt"),
        ({"champion": "champion", "canary_share": 0.2}, "canary_share"),
        ({"guardrails": {"max_error_rate": 2}}, "guardrails.max_error_rate"),
    ],
)
def test_invalid_rollouts_are_refused_naming_the_field(config: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        RolloutConfig.model_validate(config)
    assert field in str(err.value)


def test_decision_log_buffer_must_hold_a_batch() -> None:
    with pytest.raises(ValidationError, match=r"max_buffer \(10\) must be >= max_batch \(50\)"):
        DecisionLogConfig(max_batch=50, max_buffer=10)


def test_unknown_app_arg_is_refused() -> None:
    with pytest.raises(ValidationError, match="registy"):
        AppArgs.model_validate({"registy": "/tmp/r"})


def test_rollout_edit_changes_only_the_ingress_user_config() -> None:
    config = ServeDeploySchema.model_validate(_load(CONFIGS[0]))
    new = RolloutConfig(champion="v20260101-000000-abcdef", canary="canary", canary_percent=20)
    edited = with_rollout(config, "attune", new)
    assert rollout_of(edited, "attune") == new
    before = config.model_dump(exclude_unset=True)
    after = edited.model_dump(exclude_unset=True)
    before["applications"][0]["deployments"][0].pop("user_config")
    after["applications"][0]["deployments"][0].pop("user_config")
    assert before == after


def test_rollout_of_an_app_without_user_config_is_its_args_default() -> None:
    args = {"registry": "/r", "rollout": {"champion": "v20260101-000000-abcdef"}}
    config = ServeDeploySchema(applications=[app_config(args)])
    assert rollout_of(config, "attune").champion == "v20260101-000000-abcdef"
    edited = with_rollout(config, "attune", RolloutConfig(shadow="s", shadow_percent=10))
    assert rollout_of(edited, "attune").shadow_percent == 10


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"step": "canary", "percent": 10}, "version"),
        ({"step": "canary", "version": "v1"}, "percent"),
        ({"step": "promote", "version": "v1"}, "version"),
        ({"step": "shadow", "version": "v1", "champion": True}, "champion"),
        ({"step": "canary", "version": "v1", "percent": 101}, "percent"),
        ({"step": "deploy"}, "step"),
    ],
)
def test_invalid_rollout_steps_are_refused_naming_the_argument(kwargs: dict, named: str) -> None:
    with pytest.raises(ValidationError) as err:
        RolloutRequest(**kwargs)
    assert named in str(err.value)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_keep_the_replica_environment_of_the_code(path: Path) -> None:
    """A config's ray_actor_options replace the code's, so they must repeat REPLICA_ENV."""
    from attune.serving.ingress import REPLICA_ENV

    (ingress,) = ServeDeploySchema.model_validate(_load(path)).applications[0].deployments
    assert ingress.ray_actor_options.runtime_env["env_vars"] == REPLICA_ENV


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["rollout", "canary", "v1", "--percent", "150"], "percent"),
        (["rollout", "shadow", "v1", "--percent", "-5"], "percent"),
    ],
)
def test_rollout_cli_refuses_bad_arguments_before_touching_the_cluster(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from attune.cli import main

    assert main(argv) == 4  # invalid input, before any cluster is touched
    assert named in capsys.readouterr().err
