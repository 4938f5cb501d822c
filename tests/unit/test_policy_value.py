"""The off-policy value of a ranker's served policy on logged slates (what tune selects by)."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from attune.errors import FeatureSpecMismatch
from attune.simulator.ground_truth import load_ground_truth, policy_values
from attune.training import policy_value as pv
from attune.training.dataset import RankingSplit, load_dataset
from tests.ranking_data import SyntheticRanking, write_synthetic_ranking


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRanking:
    return write_synthetic_ranking(str(tmp_path_factory.mktemp("pv")), presentations=3000, seed=11)


def _log(data: SyntheticRanking, split: str = "test") -> tuple[pv.LoggedSlates, np.ndarray]:
    """The split's logged slates and the true option values of its presentations."""
    ds = load_dataset(data.features, splits=(split,))
    log = pv.logged_slates(ds[split], ds.spec)
    truth = load_ground_truth(data.histories).subset(log.presentations.qid)
    return log, truth


def test_logged_rows_map_onto_presentations_options_and_rewards(
    synthetic: SyntheticRanking,
) -> None:
    """Every logged row points at its presentation's logged option at its position."""
    ds = load_dataset(synthetic.features, splits=("test",))
    split = ds["test"]
    log = pv.logged_slates(split, ds.spec)
    assert len(log.group) == len(split) == 3 * log.n_presentations
    logged = log.presentations.logged[log.group, log.position]
    assert np.array_equal(logged, log.action)
    assert np.array_equal(log.reward, (split.label == 3).astype(float))
    assert np.array_equal(log.propensity, split.propensity)


def test_point_value_equals_the_snips_estimate(synthetic: SyntheticRanking) -> None:
    log, _ = _log(synthetic)
    scores = np.random.default_rng(0).normal(size=log.n_presentations * log.n_options)
    estimate = pv.estimate_value(log, scores, n_bootstrap=50)
    assert estimate.estimator == "snips"
    assert pv.point_value(log, scores) == pytest.approx(estimate.value, rel=1e-12)
    assert estimate.ci_low < estimate.value < estimate.ci_high


def test_estimate_covers_the_true_value_and_orders_good_above_bad(
    synthetic: SyntheticRanking,
) -> None:
    """The oracle's scores (true values) and their negation: each interval covers the
    ground-truth value of that policy, and the oracle's estimate is far above the other."""
    log, truth = _log(synthetic)
    intervals = {}
    for name, scores in (("oracle", truth), ("worst", -truth)):
        estimate = pv.estimate_value(log, scores.reshape(-1), seed=1)
        true = policy_values(
            load_ground_truth(synthetic.histories),
            presentation_ids=log.presentations.qid,
            model_scores=scores,
        )["model"]
        assert estimate.ci_low <= true <= estimate.ci_high, (name, estimate, true)
        intervals[name] = estimate
    assert intervals["oracle"].ci_low > intervals["worst"].ci_high


def test_serving_eval_reports_the_point_value_of_every_round(synthetic: SyntheticRanking) -> None:
    """The per-round metric (cached eval predictions) equals the value of the cut model."""
    ds = load_dataset(synthetic.features, splits=("train", "valid"))
    log = pv.logged_slates(ds["valid"], ds.spec)
    train = ds["train"]
    dtrain = xgb.DMatrix(train.X, label=train.label.astype(np.float32), qid=train.qid)
    dserve, metric = pv.serving_eval(log)
    history: dict = {}
    booster = xgb.train(
        {
            "objective": "rank:ndcg",
            "max_depth": 2,
            "eta": 0.1,
            "colsample_bytree": 0.3,
            "seed": 0,
            "nthread": 1,
        },
        dtrain,
        num_boost_round=6,
        evals=[(dtrain, "train"), (dserve, pv.EVAL_NAME)],
        custom_metric=metric,
        evals_result=history,
        verbose_eval=False,
    )
    curve = history[pv.EVAL_NAME][pv.METRIC_NAME]
    assert len(curve) == 6
    assert all(np.isnan(history["train"][pv.METRIC_NAME]))
    for rounds in (1, 4, 6):
        scores = booster.predict(
            xgb.DMatrix(log.presentations.candidates), iteration_range=(0, rounds)
        )
        # xgboost prints metrics with 6 decimals
        assert curve[rounds - 1] == pytest.approx(pv.point_value(log, scores), abs=1e-6)
    assert len(set(np.round(curve, 6))) > 3  # the served policy changes over the rounds


def test_an_option_outside_the_catalog_is_refused_by_name(synthetic: SyntheticRanking) -> None:
    ds = load_dataset(synthetic.features, splits=("test",))
    split = ds["test"]
    option_id = split.option_id.copy()
    option_id[4] = "free_money"
    bad = RankingSplit(**{**split.__dict__, "option_id": option_id})
    with pytest.raises(FeatureSpecMismatch, match="free_money"):
        pv.logged_slates(bad, ds.spec)


def test_scores_of_the_wrong_size_are_refused(synthetic: SyntheticRanking) -> None:
    log, _ = _log(synthetic)
    with pytest.raises(FeatureSpecMismatch, match="one score per candidate"):
        pv.point_value(log, np.zeros(log.n_presentations))
