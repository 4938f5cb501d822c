"""TuneConfig validation and the ``attune tune`` arguments that build it."""

from __future__ import annotations

from typing import Any

import pytest

from attune.cli import build_parser
from attune.errors import ConfigError
from attune.training.commands import config_from_args
from attune.training.config import TuneConfig

BASE = {"features": "/data/f", "registry": "/data/r"}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"trials": 1, "max_concurrent": 1},
        {"max_rounds": 2, "early_stopping_rounds": 1, "grace_period": 2},
        {"scheduler": "fifo", "gpu": True, "cpus_per_trial": 4},
        {"features": "s3://bucket/f", "registry": "s3://bucket/r", "histories": "s3://b/h"},
        {"select_by": "ndcg", "weighting": "propensity"},
    ],
)
def test_valid_configs_are_accepted(values: dict[str, Any]) -> None:
    config = TuneConfig.parse({**BASE, **values})
    for key, value in values.items():
        assert getattr(config, key) == value


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"trials": 0}, "trials"),
        ({"cpus_per_trial": 0}, "cpus_per_trial"),
        ({"scheduler": "hyperband"}, "scheduler"),
        ({"reduction_factor": 1.0}, "reduction_factor"),
        ({"name": "has space"}, "name"),
        ({"features": ""}, "features"),
        ({"unknown": 1}, "unknown"),
        ({"select_by": "map"}, "select_by"),
        ({"weighting": "ips"}, "weighting"),
    ],
)
def test_invalid_field_is_refused_naming_it(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        TuneConfig.parse({**BASE, **values})
    assert info.value.field == field


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({"grace_period": 50, "max_rounds": 40}, {"grace_period", "max_rounds"}),
        ({"early_stopping_rounds": 40, "max_rounds": 40}, {"early_stopping_rounds", "max_rounds"}),
        ({"max_concurrent": 5, "trials": 4}, {"max_concurrent", "trials"}),
    ],
)
def test_cross_field_rule_names_both_values(values: dict[str, Any], fields: set[str]) -> None:
    with pytest.raises(ConfigError) as info:
        TuneConfig.parse({**BASE, **values})
    assert set(info.value.field.split(",")) == fields
    for name in fields:
        assert f"{name} ({values[name]})" in info.value.message


@pytest.mark.parametrize(("gpu", "expected"), [(False, 0.0), (True, 1.0)])
def test_gpu_flag_asks_one_gpu_per_trial_and_cuda(gpu: bool, expected: float) -> None:
    config = TuneConfig(**BASE, gpu=gpu, cpus_per_trial=2)
    assert config.trial_resources() == {"cpu": 2.0, "gpu": expected}
    assert config.device == ("cuda" if gpu else "cpu")


def test_cli_arguments_map_onto_the_config() -> None:
    args = build_parser().parse_args(
        [
            "tune",
            "--features",
            "/f",
            "--registry",
            "/r",
            "--trials",
            "6",
            "--max-concurrent",
            "3",
            "--gpu",
            "--histories",
            "/h",
            "--scheduler",
            "fifo",
        ]
    )
    config = config_from_args(args)
    assert (config.features, config.registry, config.histories) == ("/f", "/r", "/h")
    assert (config.trials, config.max_concurrent, config.gpu, config.scheduler) == (
        6,
        3,
        True,
        "fifo",
    )


def test_selection_defaults_to_the_estimated_policy_value() -> None:
    """Done-when of the selection work: `attune tune` selects by estimated value by default."""
    args = build_parser().parse_args(["tune", "--features", "/f", "--registry", "/r"])
    assert config_from_args(args).select_by == "policy_value"
    args = build_parser().parse_args(
        ["tune", "--features", "/f", "--registry", "/r", "--select-by", "ndcg"]
    )
    assert config_from_args(args).select_by == "ndcg"


def test_cli_leaves_unset_options_at_their_defaults() -> None:
    args = build_parser().parse_args(["tune", "--features", "/f", "--registry", "/r"])
    assert config_from_args(args) == TuneConfig(**BASE | {"features": "/f", "registry": "/r"})


def test_cli_refuses_a_bad_value_naming_the_field() -> None:
    args = build_parser().parse_args(
        ["tune", "--features", "/f", "--registry", "/r", "--trials", "2", "--max-concurrent", "3"]
    )
    with pytest.raises(ConfigError) as info:
        config_from_args(args)
    assert "max_concurrent" in info.value.field
