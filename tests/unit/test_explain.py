"""Reason codes from native TreeSHAP: additivity, catalog mapping, no protected attributes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from attune.data.schema import PROTECTED_COLUMNS
from attune.data.spec import FEATURE_NAMES
from attune.errors import ConfigError, FeatureSpecMismatch, InvalidInput
from attune.governance.explain import (
    OTHER,
    ReasonExplainer,
    default_catalog,
    explanation_summary,
    load_catalog,
    measure_explain_latency,
    reason_codes,
)
from attune.governance.plots import explanation_png


def _data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    names = list(FEATURE_NAMES)
    option = rng.integers(0, 8, rows)
    for j in range(8):
        X[:, names.index(f"opt_{_option(j)}")] = option == j
    signal = X[:, names.index("days_past_due")] * (option == 2) + X[:, names.index("autopay_on")]
    labels = np.clip(np.round(signal + rng.normal(0, 0.5, rows) + 1), 0, 3)
    qid = np.repeat(np.arange(rows // 8), 8)
    return X, labels, qid


def _option(j: int) -> str:
    from attune.data.schema import OPTION_IDS

    return OPTION_IDS[j]


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    X, y, qid = _data(1600, seed=0)
    dtrain = xgb.DMatrix(X, label=y, qid=qid, feature_names=list(FEATURE_NAMES))
    params = {"objective": "rank:ndcg", "max_depth": 4, "eta": 0.2, "nthread": 1, "seed": 0}
    return xgb.train(params, dtrain, num_boost_round=40)


@pytest.fixture
def candidates() -> np.ndarray:
    return _data(64, seed=7)[0][:8]


def test_contributions_plus_bias_equal_the_margin(
    booster: xgb.Booster, candidates: np.ndarray
) -> None:
    explainer = ReasonExplainer(booster, FEATURE_NAMES)
    contribs = explainer.contributions(candidates)
    margin = booster.predict(
        xgb.DMatrix(candidates, feature_names=list(FEATURE_NAMES)), output_margin=True
    )
    assert contribs.shape == (8, len(FEATURE_NAMES) + 1)
    np.testing.assert_allclose(contribs.sum(axis=1), margin, atol=1e-4)
    assert np.ptp(margin) > 0.1  # candidates score differently: the check has teeth


@pytest.mark.parametrize(("approximate", "method"), [(False, "treeshap"), (True, "saabas")])
def test_reasons_plus_bias_plus_rest_reproduce_the_margin(
    booster: xgb.Booster, candidates: np.ndarray, approximate: bool, method: str
) -> None:
    margin = booster.inplace_predict(candidates)
    explainer = ReasonExplainer(booster, FEATURE_NAMES, approximate=approximate)
    explanations = explainer.explain(candidates, top_k=3)
    for row, explanation in enumerate(explanations):
        assert explanation.method == method
        total = explanation.bias + sum(r.contribution for r in explanation.reasons)
        assert total + explanation.rest == pytest.approx(float(margin[row]), abs=1e-4)
        assert explanation.margin == pytest.approx(float(margin[row]), abs=1e-4)
        wire = json.loads(json.dumps(explanation.to_dict()))
        parts = wire["bias"] + wire["rest"] + sum(r["contribution"] for r in wire["reasons"])
        assert parts == pytest.approx(wire["margin"], abs=1e-4)
        assert wire["method"] == method


def test_approximate_contributions_differ_from_treeshap(
    booster: xgb.Booster, candidates: np.ndarray
) -> None:
    """Saabas is a different attribution; the method field is what tells them apart."""
    exact = ReasonExplainer(booster, FEATURE_NAMES).contributions(candidates)
    approx = ReasonExplainer(booster, FEATURE_NAMES, approximate=True).contributions(candidates)
    np.testing.assert_allclose(exact.sum(axis=1), approx.sum(axis=1), atol=1e-4)
    assert np.abs(exact - approx).max() > 1e-3


@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_top_reasons_are_the_largest_and_worded_by_their_sign(
    booster: xgb.Booster, candidates: np.ndarray, top_k: int
) -> None:
    catalog = default_catalog()
    explainer = ReasonExplainer(booster, FEATURE_NAMES)
    contribs = explainer.contributions(candidates)[:, :-1]
    by_code = contribs @ explainer.group_matrix
    for row, reasons in enumerate(reason_codes(booster, candidates, FEATURE_NAMES, top_k=top_k)):
        assert len(reasons) == top_k
        sizes = [abs(r.contribution) for r in reasons]
        assert sizes == sorted(sizes, reverse=True)
        assert sizes[-1] >= np.sort(np.abs(by_code[row]))[-top_k] - 1e-9
        for reason in reasons:
            entry = catalog.reasons[reason.code]
            expected = entry.up if reason.contribution >= 0 else entry.down
            assert reason.statement == expected
            assert reason.direction == ("up" if reason.contribution >= 0 else "down")
            summed = contribs[row, [FEATURE_NAMES.index(f) for f in reason.features]].sum()
            assert reason.contribution == pytest.approx(float(summed), abs=1e-5)


def test_the_option_one_hots_form_one_reason(booster: xgb.Booster, candidates: np.ndarray) -> None:
    """The model leans on which option it scores: that is one reason, not eight."""
    reasons = reason_codes(booster, candidates, FEATURE_NAMES, top_k=40)
    codes = [r.code for r in reasons[0]]
    assert codes.count("OPTION") == 1
    option = next(r for r in reasons[0] if r.code == "OPTION")
    assert len(option.features) == 8


def test_the_shipped_catalog_covers_every_feature_and_no_protected_attribute() -> None:
    catalog = default_catalog()
    named = {f for entry in catalog.reasons.values() for f in entry.features}
    assert named == set(FEATURE_NAMES)
    assert not named & PROTECTED_COLUMNS
    words = " ".join(f"{code} {e.up} {e.down}" for code, e in catalog.reasons.items()).lower()
    for attribute in ("gender", "ethnicity", "age", "race", "sex"):
        assert f" {attribute} " not in f" {words} "


def test_no_reason_names_a_protected_attribute(
    booster: xgb.Booster, candidates: np.ndarray
) -> None:
    for reasons in reason_codes(booster, candidates, FEATURE_NAMES, top_k=40):
        for reason in reasons:
            assert not set(reason.features) & PROTECTED_COLUMNS
            assert reason.code.lower() not in PROTECTED_COLUMNS


@pytest.mark.parametrize("attribute", sorted(PROTECTED_COLUMNS))
def test_a_protected_attribute_among_features_is_refused(attribute: str) -> None:
    X = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    booster = xgb.train(
        {"nthread": 1}, xgb.DMatrix(X, label=X[:, 0]), num_boost_round=2
    )  # a model trained on an unnamed matrix
    with pytest.raises(InvalidInput, match=attribute) as info:
        ReasonExplainer(booster, ["apr", attribute, "balance"])
    assert info.value.field == "feature_names"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (
            {
                "version": "1",
                "reasons": {
                    "X": {"features": ["gender"], "up": "u", "down": "d"},
                    OTHER: {"features": [], "up": "u", "down": "d"},
                },
            },
            "protected",
        ),
        (
            {
                "version": "1",
                "reasons": {
                    "A": {"features": ["apr"], "up": "u", "down": "d"},
                    "B": {"features": ["apr"], "up": "u", "down": "d"},
                    OTHER: {"features": [], "up": "u", "down": "d"},
                },
            },
            "both reason A and B",
        ),
        ({"version": "1", "reasons": {"A": {"features": ["apr"], "up": "u", "down": "d"}}}, OTHER),
        ({"version": "1", "reasons": {OTHER: {"features": [], "up": "", "down": "d"}}}, "up"),
        ({"reasons": {}}, "version"),
    ],
    ids=["protected", "feature-twice", "no-other", "empty-statement", "no-version"],
)
def test_a_bad_catalog_is_refused_naming_the_problem(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_catalog(data, source="custom.yaml")


def test_features_outside_the_catalog_are_explained_as_other() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    names = ["apr", "shoe_size", "balance"]
    booster = xgb.train(
        {"nthread": 1, "max_depth": 2},
        xgb.DMatrix(X, label=X[:, 1], feature_names=names),
        num_boost_round=10,
    )
    explainer = ReasonExplainer(booster, names)
    assert explainer.codes == ("LOAN_PROGRESS", "INTEREST_RATE", OTHER)
    top = explainer.explain(X[:4], top_k=1)
    assert {e.reasons[0].code for e in top} == {OTHER}  # the label is shoe_size


@pytest.mark.parametrize(
    ("names", "width"),
    [(FEATURE_NAMES, len(FEATURE_NAMES) - 1), (tuple(reversed(FEATURE_NAMES)), len(FEATURE_NAMES))],
    ids=["wrong-width", "wrong-order"],
)
def test_inputs_that_do_not_fit_the_booster_are_refused(
    booster: xgb.Booster, names: tuple[str, ...], width: int
) -> None:
    with pytest.raises(FeatureSpecMismatch):
        ReasonExplainer(booster, names).explain(np.zeros((2, width), dtype=np.float32))


def test_top_k_must_be_positive(booster: xgb.Booster, candidates: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="top_k"):
        reason_codes(booster, candidates, FEATURE_NAMES, top_k=0)


def test_explanation_summary_ranks_mean_absolute_contributions(booster: xgb.Booster) -> None:
    X = _data(800, seed=3)[0]
    summary = explanation_summary(booster, X, FEATURE_NAMES, max_rows=300)
    assert summary["n_rows"] == 300
    values = list(summary["features"].values())
    assert values == sorted(values, reverse=True)
    assert set(summary["features"]) == set(FEATURE_NAMES)
    # the labels depend on days past due (for one option) and autopay
    assert set(list(summary["reasons"])[:3]) & {"AUTOPAY", "PAST_DUE", "OPTION"}
    assert not set(summary["reasons"]) & PROTECTED_COLUMNS
    assert explanation_png(summary)[:4] == b"\x89PNG"


def test_latency_measurement_reports_explain_beside_scoring(
    booster: xgb.Booster, candidates: np.ndarray
) -> None:
    figures = measure_explain_latency(booster, candidates, FEATURE_NAMES, repeats=5)
    assert figures["rows"] == 8
    assert figures["explain_p50_ms"] > 0 and figures["score_p50_ms"] > 0
    assert figures["ratio_p50"] == pytest.approx(
        figures["explain_p50_ms"] / figures["score_p50_ms"]
    )
