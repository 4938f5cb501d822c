"""ONNX export of XGBoost rankers and the parity gate (no Ray; real ONNX Runtime)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import xgboost as xgb

from attune.errors import ConfigError, FeatureSpecMismatch, InvalidInput, ParityError
from attune.training.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    check_parity,
    export_and_check,
    export_onnx,
    naive_export,
    native_margins,
    onnx_scores,
)

N_FEATURES = 6
GROUPS = 40
ROWS_PER_GROUP = 5


def _data(seed: int = 0, *, missing: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = GROUPS * ROWS_PER_GROUP
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    if missing:
        X[rng.random(X.shape) < missing] = np.nan
    # Exact duplicate rows in one group: their scores tie and the gate must still pass.
    X[1] = X[0]
    qid = np.repeat(np.arange(GROUPS), ROWS_PER_GROUP)
    label = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64) + (X[:, 1] > 1)
    return X, qid, label


def _train(
    objective: str = "rank:ndcg",
    *,
    seed: int = 0,
    rounds: int = 15,
    missing: float = 0.0,
    feature_names: list[str] | None = None,
    base_score: float | None = None,
) -> tuple[xgb.Booster, np.ndarray, np.ndarray]:
    X, qid, label = _data(seed, missing=missing)
    if objective == "rank:map":
        label = (label > 0).astype(np.int64)
    dtrain = xgb.DMatrix(X, label=label, qid=qid, feature_names=feature_names)
    params: dict[str, object] = {
        "objective": objective,
        "max_depth": 3,
        "eta": 0.3,
        "nthread": 1,
        "seed": seed,
    }
    if base_score is not None:
        params["base_score"] = base_score
    booster = xgb.train(params, dtrain, num_boost_round=rounds)
    return booster, X, qid


@pytest.mark.parametrize("objective", ["rank:ndcg", "rank:pairwise", "rank:map"])
def test_export_reproduces_native_ranking_scores_and_passes_gate(objective: str) -> None:
    booster, X, qid = _train(objective)
    onnx_bytes, report = export_and_check(booster, X, qid)
    assert report.passed
    assert report.max_abs_diff <= 1e-4
    assert report.order_agreement == 1.0
    assert (report.n_rows, report.n_groups) == (GROUPS * ROWS_PER_GROUP, GROUPS)
    np.testing.assert_allclose(onnx_scores(onnx_bytes, X), native_margins(booster, X), atol=1e-4)


def test_exported_graph_has_the_serving_signature() -> None:
    """Input ``features`` float32[None, n], output ``score`` float32, ai.onnx.ml opset 3."""
    booster, _, _ = _train()
    model = onnx.load_from_string(export_onnx(booster, n_features=N_FEATURES))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == INPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and dims[1].dim_value == N_FEATURES
    assert out.name == OUTPUT_NAME
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {o.domain: o.version for o in model.opset_import}["ai.onnx.ml"] == 3
    assert {p.key: p.value for p in model.metadata_props}["attune.n_features"] == "6"


@pytest.mark.parametrize(
    ("missing", "feature_names", "base_score"),
    [
        (0.1, None, None),
        (0.0, [f"f_{i}" for i in range(N_FEATURES)], None),
        (0.05, [f"f_{i}" for i in range(N_FEATURES)], 0.7),
    ],
    ids=["nan-missing", "named-features", "named+nan+base-score"],
)
def test_gate_passes_with_missing_values_feature_names_and_base_score(
    missing: float, feature_names: list[str] | None, base_score: float | None
) -> None:
    booster, X, qid = _train(missing=missing, feature_names=feature_names, base_score=base_score)
    _, report = export_and_check(booster, X, qid)
    assert report.passed, report


def test_export_keeps_every_tree_of_an_early_stopped_booster() -> None:
    """best_iteration does not truncate the export; a sliced booster gates on its own."""
    booster, X, qid = _train(rounds=12)
    booster.set_attr(best_iteration="3")
    _, full = export_and_check(booster, X, qid)
    assert full.passed
    sliced = booster[:4]
    onnx_bytes, report = export_and_check(sliced, X, qid)
    assert report.passed
    assert not np.allclose(onnx_scores(onnx_bytes, X), native_margins(booster, X), atol=1e-4)


@pytest.mark.parametrize("base_score", [None, 0.7], ids=["default-base", "base-0.7"])
def test_gate_refuses_the_naive_raw_booster_conversion(base_score: float | None) -> None:
    """The naive conversion (sigmoid of a misread base score) never passes the gate."""
    booster, X, qid = _train(base_score=base_score)
    report = check_parity(naive_export(booster, N_FEATURES), booster, X, qid)
    assert not report.passed
    assert report.max_abs_diff > 1e-4
    with pytest.raises(ParityError) as caught:
        export_and_check(booster, X, qid, exporter=naive_export)
    assert caught.value.max_abs_diff == pytest.approx(report.max_abs_diff)
    assert caught.value.tolerance == 1e-4


def test_gate_refuses_a_different_model_on_order_even_with_loose_tolerance() -> None:
    booster, X, qid = _train(seed=0)
    other, _, _ = _train(seed=1, rounds=5)
    report = check_parity(export_onnx(other, n_features=N_FEATURES), booster, X, qid, tolerance=1e6)
    assert report.max_abs_diff <= 1e6
    assert report.order_agreement < 1.0
    assert not report.passed


def test_order_check_accepts_any_qid_order() -> None:
    """Rows of a group need not be contiguous: shuffling rows leaves the verdict unchanged."""
    booster, X, qid = _train()
    perm = np.random.default_rng(3).permutation(len(qid))
    report = check_parity(export_onnx(booster, n_features=N_FEATURES), booster, X[perm], qid[perm])
    assert report.passed and report.n_groups == GROUPS


def test_parity_report_is_json_serializable() -> None:
    booster, X, qid = _train()
    _, report = export_and_check(booster, X, qid)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and data["n_rows"] == GROUPS * ROWS_PER_GROUP


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("too-few-columns", FeatureSpecMismatch),
        ("qid-length", InvalidInput),
        ("empty", InvalidInput),
        ("one-dimensional", InvalidInput),
        ("zero-tolerance", ConfigError),
    ],
)
def test_gate_rejects_malformed_inputs(case: str, error: type[Exception]) -> None:
    booster, X, qid = _train()
    onnx_bytes = export_onnx(booster, n_features=N_FEATURES)
    tolerance = 1e-4
    if case == "too-few-columns":
        X = X[:, :-1]
    elif case == "qid-length":
        qid = qid[:-1]
    elif case == "empty":
        X, qid = X[:0], qid[:0]
    elif case == "one-dimensional":
        X = X[:, 0]
    elif case == "zero-tolerance":
        tolerance = 0.0
    with pytest.raises(error):
        check_parity(onnx_bytes, booster, X, qid, tolerance=tolerance)


def test_export_rejects_wrong_feature_count() -> None:
    booster, _, _ = _train()
    with pytest.raises(FeatureSpecMismatch) as caught:
        export_onnx(booster, n_features=N_FEATURES + 1)
    assert (caught.value.expected, caught.value.actual) == (N_FEATURES + 1, N_FEATURES)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"objective": "binary:logistic"}, "objective"),
        ({"objective": "rank:ndcg", "booster": "gblinear"}, "booster"),
    ],
)
def test_export_rejects_boosters_without_raw_margin_trees(
    params: dict[str, str], field: str
) -> None:
    X, qid, label = _data()
    booster = xgb.train(
        {**params, "nthread": 1}, xgb.DMatrix(X, label=label > 0, qid=qid), num_boost_round=2
    )
    with pytest.raises(ConfigError) as caught:
        export_onnx(booster, n_features=N_FEATURES)
    assert caught.value.field == field
