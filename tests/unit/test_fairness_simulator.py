"""The default fairness gate on simulator data: ordinary rankers pass, a proxy-steered one fails.

A small history is simulated in-process and turned into ranking rows with the same
pure function the Ray pipeline runs per bucket; rankers are trained on the spec's
features and scored as the training pipeline scores them for ``fairness.json``
(every candidate at position 1, as serving does). The simulator's protected
attributes are independent of behaviour except that income rises with age band, so
groups differ in need only through legitimate features: an ordinary model must pass
the default gate, although raw exposure parity refuses it. The biased model gets a
noisy proxy of gender and learns from a history in which women's completed relief
options (payment plans, hardship deferrals) were never credited, so it steers those
options away from women who need them; the gate must refuse it, naming the
attribute, the group and the option.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from attune.data.features import micros
from attune.data.pipeline import PreprocessConfig, SplitPlan, ranking_rows
from attune.data.reader import read_history, read_table
from attune.data.spec import default_spec
from attune.governance.fairness import fairness_report
from attune.governance.gates.fairness_gate import FairnessGateConfig, check_fairness
from attune.governance.version_files import FAIRNESS_BOOTSTRAP, FAIRNESS_CI_LEVEL
from attune.simulator.generator import GenerateConfig, generate

BORROWERS, MONTHS, SEED = 1_200, 6, 1
#: The latest 40 % of the presentation time span is the evaluation split.
TEST_FRACTION = 0.4
RELIEF = ("payment_plan", "hardship_deferral")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ranking rows (with ``split`` and the borrowers' gender) and the protected table."""
    root = tmp_path_factory.mktemp("history")
    config = GenerateConfig(
        borrowers=BORROWERS, months=MONTHS, seed=SEED, out=str(root), parallel="local"
    )
    generate(config, progress=False)
    history = read_history(str(root))
    ts = micros(history["presentations"]["ts"])
    split = SplitPlan.from_span(
        first_us=int(ts.min()),
        last_us=int(ts.max()),
        config=PreprocessConfig(
            train_fraction=1 - TEST_FRACTION, valid_fraction=0.0, test_fraction=TEST_FRACTION
        ),
    )
    rows = ranking_rows(
        events=history["events"],
        presentations=history["presentations"],
        borrowers=history["borrowers"],
        loans=history["loans"],
        split=split,
    )
    protected = read_table(str(root), "protected").to_pandas()
    rows["gender"] = rows["borrower_id"].map(protected.set_index("borrower_id")["gender"])
    return {"rows": rows, "protected": protected}


def _report(
    simulated: dict[str, Any], *, features: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Train on the train split, score the test split at position 1, report fairness."""
    rows: pd.DataFrame = simulated["rows"]
    train = (rows["split"] == "train").to_numpy()
    dtrain = xgb.DMatrix(features[train], label=labels[train], qid=rows["qid"].to_numpy()[train])
    params = {"objective": "rank:ndcg", "max_depth": 4, "eta": 0.2, "nthread": 1, "seed": 0}
    booster = xgb.train(params, dtrain, num_boost_round=40)
    at_serving = features[~train].copy()
    at_serving[:, default_spec().names.index("position")] = 1.0
    test = rows.loc[~train]
    return fairness_report(
        scores=booster.predict(xgb.DMatrix(at_serving)),
        qid=test["qid"],
        option_ids=test["option_id"],
        labels=test["label"],
        borrower_ids=test["borrower_id"],
        protected=simulated["protected"],
        ci_level=FAIRNESS_CI_LEVEL,  # the served report's level, which the gate judges
        n_bootstrap=FAIRNESS_BOOTSTRAP,
    )


def _spec_features(rows: pd.DataFrame) -> np.ndarray:
    return rows[list(default_spec().names)].to_numpy(np.float32)


@pytest.fixture(scope="module")
def ordinary_report(simulated: dict[str, Any]) -> dict[str, Any]:
    """A ranker trained on the spec's features and the logged labels."""
    rows = simulated["rows"]
    return _report(simulated, features=_spec_features(rows), labels=rows["label"].to_numpy())


@pytest.fixture(scope="module")
def proxy_report(simulated: dict[str, Any]) -> dict[str, Any]:
    """The same ranker given a gender proxy and a history that never credited women's relief."""
    rows = simulated["rows"]
    female = (rows["gender"] == "female").to_numpy()
    proxy = female + np.random.default_rng(0).normal(0.0, 0.3, len(rows))
    denied = female & rows["option_id"].isin(RELIEF).to_numpy()
    labels = np.where(denied, 0, rows["label"].to_numpy())
    features = np.column_stack([_spec_features(rows), proxy]).astype(np.float32)
    return _report(simulated, features=features, labels=labels)


def test_an_ordinary_model_passes_the_default_gate(ordinary_report: dict[str, Any]) -> None:
    decision = check_fairness(ordinary_report)
    assert decision.passed, decision.reasons
    assert "gender/opportunity:payment_plan" in decision.checked
    assert "age_band/opportunity:pay_now" in decision.checked


def test_raw_exposure_parity_would_refuse_the_ordinary_model(
    ordinary_report: dict[str, Any],
) -> None:
    """The premise: groups differ in need, so raw top-1 exposure differs legitimately."""
    raw = FairnessGateConfig(exposure_mode="refuse", use_confidence_interval=False)
    decision = check_fairness(ordinary_report, raw)
    assert not decision.passed
    assert len([r for r in decision.reasons if ": exposure of " in r]) >= 3
    assert not ordinary_report["four_fifths"]["passed"]


def test_a_model_steered_by_a_gender_proxy_is_refused(proxy_report: dict[str, Any]) -> None:
    decision = check_fairness(proxy_report)
    assert not decision.passed
    plan = proxy_report["attributes"]["gender"]["opportunity"]["payment_plan"]
    assert plan["min_group"] == "female"
    assert plan["ratio"]["ci"][1] < 0.5
    assert plan["by_group"]["female"]["n"] >= 20
    assert any(
        r.startswith("gender: equal opportunity for payment_plan") and "female" in r
        for r in decision.reasons
    ), decision.reasons


def test_the_proxy_models_shortfall_is_not_a_need_difference(
    ordinary_report: dict[str, Any], proxy_report: dict[str, Any]
) -> None:
    """Both models are judged on the same presentations: only the ranking differs."""
    ordinary = ordinary_report["attributes"]["gender"]["opportunity"]["payment_plan"]
    proxied = proxy_report["attributes"]["gender"]["opportunity"]["payment_plan"]
    for group in ("female", "male"):
        assert ordinary["by_group"][group]["n"] == proxied["by_group"][group]["n"]
    assert ordinary["ratio"]["ci"][1] >= 0.8
    assert proxied["by_group"]["female"]["value"] < ordinary["by_group"]["female"]["value"] / 2
