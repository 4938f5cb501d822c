"""The sweep's search space, its mapping to XGBoost parameters, and the labels per objective."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from attune.errors import ConfigError
from attune.training.search_space import (
    EVAL_METRICS,
    OBJECTIVES,
    RankerParams,
    search_space,
    training_labels,
    xgb_params,
)

VALID_POINT: dict[str, Any] = {
    "objective": "rank:ndcg",
    "lambdarank_pair_method": "topk",
    "lambdarank_num_pair_per_sample": 3,
    "max_depth": 4,
    "eta": 0.1,
    "min_child_weight": 1.0,
    "subsample": 0.8,
    "colsample_bytree": 0.9,
    "reg_lambda": 1.0,
    "reg_alpha": 0.01,
}


def _sample_points(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    space = search_space()
    return [{k: domain.sample(random_state=rng) for k, domain in space.items()} for _ in range(n)]


def _tiny_ranking(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    qid = np.repeat(np.arange(20), 3)
    label = rng.integers(0, 4, size=60)
    return X, label, qid


def test_search_space_covers_every_param_of_a_ranker() -> None:
    assert set(search_space()) == set(RankerParams.model_fields)


def test_sampled_points_cover_all_objectives_and_pair_methods() -> None:
    points = _sample_points(80, seed=1)
    assert {p["objective"] for p in points} == set(OBJECTIVES)
    assert {p["lambdarank_pair_method"] for p in points} == {"topk", "mean"}


def test_every_sampled_point_trains_with_the_objective_it_names() -> None:
    """Each sampled point maps to parameters XGBoost accepts and actually uses."""
    X, label, qid = _tiny_ranking()
    for point in _sample_points(12, seed=2):
        params = xgb_params(point, nthread=1, seed=0)
        dtrain = xgb.DMatrix(X, label=training_labels(label, point["objective"]), qid=qid)
        booster = xgb.train(params, dtrain, num_boost_round=2)
        learner = json.loads(booster.save_config())["learner"]
        assert learner["objective"]["name"] == point["objective"]
        assert int(learner["generic_param"]["nthread"]) == 1
        tree = learner["gradient_booster"]["tree_train_param"]
        assert int(tree["max_depth"]) == point["max_depth"]
        assert float(tree["reg_lambda"]) == pytest.approx(point["reg_lambda"], rel=1e-6)
        assert float(tree["reg_alpha"]) == pytest.approx(point["reg_alpha"], rel=1e-6)


def test_xgb_params_carries_threads_device_seed_and_eval_metrics() -> None:
    params = xgb_params(VALID_POINT, nthread=3, device="cuda", seed=11)
    assert params["nthread"] == 3
    assert params["device"] == "cuda"
    assert params["seed"] == 11
    assert params["eval_metric"] == list(EVAL_METRICS)
    assert params["lambda"] == VALID_POINT["reg_lambda"]
    assert params["alpha"] == VALID_POINT["reg_alpha"]
    assert "reg_lambda" not in params


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"objective": "rank:listwise"}, "objective"),
        ({"lambdarank_pair_method": "all"}, "lambdarank_pair_method"),
        ({"lambdarank_num_pair_per_sample": 0}, "lambdarank_num_pair_per_sample"),
        ({"max_depth": 0}, "max_depth"),
        ({"eta": 0.0}, "eta"),
        ({"subsample": 1.5}, "subsample"),
        ({"colsample_bytree": 0.0}, "colsample_bytree"),
        ({"reg_lambda": -1.0}, "reg_lambda"),
        ({"gamma": 1.0}, "gamma"),
    ],
)
def test_invalid_point_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        xgb_params({**VALID_POINT, **change}, nthread=1)
    assert info.value.field == field
    assert info.value.value == next(iter(change.values()))


def test_missing_param_is_refused_naming_it() -> None:
    point = {k: v for k, v in VALID_POINT.items() if k != "eta"}
    with pytest.raises(ConfigError) as info:
        xgb_params(point, nthread=1)
    assert info.value.field == "eta"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"nthread": 0}, "nthread"), ({"nthread": 1, "device": "tpu"}, "device")],
)
def test_invalid_runtime_settings_are_refused(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        xgb_params(VALID_POINT, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("rank:map", [0.0, 0.0, 1.0, 1.0]),
        ("rank:ndcg", [0.0, 1.0, 2.0, 3.0]),
        ("rank:pairwise", [0.0, 1.0, 2.0, 3.0]),
    ],
)
def test_map_trains_on_completed_as_relevant_others_on_graded_labels(
    objective: str, expected: list[float]
) -> None:
    out = training_labels(np.array([0, 1, 2, 3], dtype=np.int8), objective)
    assert out.tolist() == expected
    assert out.dtype == np.float32
