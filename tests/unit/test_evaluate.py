"""Ranking metrics, candidate construction and policy values of the evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xgboost as xgb

from attune.data.schema import OPTION_IDS, SLATE_SIZE, TOUCHPOINTS
from attune.data.spec import BORROWER_FEATURES, FeatureSpec, default_spec
from attune.errors import FeatureSpecMismatch, SchemaError
from attune.simulator.ground_truth import GroundTruth
from attune.training import evaluate
from attune.training.dataset import RankingSplit

SPEC = default_spec()
N_OPT = len(OPTION_IDS)


# --------------------------------------------------------------------------- ranking metrics


def test_ndcg_of_a_hand_computed_group() -> None:
    """Labels (0, 3, 1) ranked as given: DCG = 7/log2(3) + 1/log2(4), IDCG = 7 + 1/log2(3)."""
    qid = np.zeros(3, dtype=np.int64)
    label = np.array([0, 3, 1])
    score = np.array([3.0, 2.0, 1.0])
    expected = (7 / math.log2(3) + 1 / 2) / (7 + 1 / math.log2(3))
    assert evaluate.ndcg_at(3, qid, label, score) == (pytest.approx(expected), 1)
    assert evaluate.ndcg_at(1, qid, label, score) == (0.0, 1)


def test_ndcg_matches_xgboost_on_random_groups() -> None:
    """Against XGBoost's own ndcg@k (scores fed as base margin, zero trees)."""
    rng = np.random.default_rng(3)
    qid = np.repeat(np.arange(200), 3)
    label = rng.integers(0, 4, size=qid.size)
    label[::3] = 3  # every group has gain, as XGBoost scores gainless groups as 1
    score = rng.normal(size=qid.size)
    dmat = xgb.DMatrix(np.zeros((qid.size, 1)), label=label, qid=qid, base_margin=score)
    for k in (1, 3):
        booster = xgb.train({"objective": "rank:ndcg", "eval_metric": f"ndcg@{k}"}, dmat, 0)
        reference = float(booster.eval(dmat).split(":")[-1])
        assert evaluate.ndcg_at(k, qid, label, score)[0] == pytest.approx(reference, abs=1e-6)


def test_groups_without_gain_are_left_out_of_ndcg_and_counted() -> None:
    qid = np.array([1, 1, 2, 2])
    label = np.array([0, 0, 2, 0])
    score = np.array([0.0, 1.0, 1.0, 0.0])
    assert evaluate.ndcg_at(3, qid, label, score) == (1.0, 1)


def test_ties_keep_row_order() -> None:
    qid = np.zeros(2, dtype=np.int64)
    assert evaluate.ndcg_at(1, qid, np.array([3, 0]), np.zeros(2))[0] == 1.0
    assert evaluate.ndcg_at(1, qid, np.array([0, 3]), np.zeros(2))[0] == 0.0


def test_map_precision_and_recall_of_hand_computed_groups() -> None:
    """Group 1 ranks (rel, not, rel): AP = (1 + 2/3) / 2; group 2 ranks (not, rel): AP = 1/2."""
    qid = np.array([1, 1, 1, 2, 2, 3])
    relevant = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    score = np.array([3.0, 2.0, 1.0, 2.0, 1.0, 0.0])
    value, n = evaluate.mean_average_precision(qid, relevant, score)
    assert n == 2
    assert value == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)
    p1, r1, n1 = evaluate.precision_recall_at(1, qid, relevant, score)
    assert (p1, r1, n1) == (pytest.approx(0.5), pytest.approx(0.25), 2)
    p2, r2, _ = evaluate.precision_recall_at(2, qid, relevant, score)
    assert (p2, r2) == (pytest.approx(0.5), pytest.approx(0.75))


def test_ranking_metrics_reports_every_metric_and_uses_completed_as_relevant() -> None:
    qid = np.array([1, 1, 1])
    label = np.array([1, 2, 0], dtype=np.int8)  # only the middle row is completed
    out = evaluate.ranking_metrics(qid, label, np.array([3.0, 2.0, 1.0]))
    assert out["map"] == pytest.approx(0.5)
    assert out["precision@1"] == 0.0
    assert out["recall@2"] == 1.0
    assert set(out) >= {"ndcg@1", "ndcg@3", "precision@2", "recall@1", "groups"}


def test_ranking_metrics_refuses_misaligned_inputs() -> None:
    with pytest.raises(FeatureSpecMismatch):
        evaluate.ranking_metrics(np.zeros(3), np.zeros(3), np.zeros(2))


# --------------------------------------------------------------------------- candidates


def _split(n_presentations: int = 4, seed: int = 0) -> RankingSplit:
    """A test split in spec order: three shown options per presentation."""
    rng = np.random.default_rng(seed)
    rows = n_presentations * SLATE_SIZE
    X = np.zeros((rows, SPEC.n_features), dtype=np.float32)
    idx = {n: i for i, n in enumerate(SPEC.names)}
    borrower = rng.normal(size=(n_presentations, len(BORROWER_FEATURES))).astype(np.float32)
    X[:, : len(BORROWER_FEATURES)] = np.repeat(borrower, SLATE_SIZE, axis=0)
    touch = rng.integers(0, len(TOUCHPOINTS), n_presentations)
    X[np.arange(rows), idx["touchpoint_app"] + np.repeat(touch, SLATE_SIZE)] = 1.0
    slates = np.stack([rng.permutation(N_OPT)[:SLATE_SIZE] for _ in range(n_presentations)])
    X[np.arange(rows), idx[f"opt_{OPTION_IDS[0]}"] + slates.reshape(-1)] = 1.0
    position = np.tile(np.arange(1, SLATE_SIZE + 1), n_presentations)
    X[:, idx["position"]] = position
    return RankingSplit(
        name="test",
        X=X,
        label=rng.integers(0, 4, rows).astype(np.int8),
        qid=np.repeat(np.arange(n_presentations, dtype=np.int64) + 100, SLATE_SIZE),
        option_id=np.asarray([OPTION_IDS[o] for o in slates.reshape(-1)], dtype=object),
        position=position.astype(np.int8),
        borrower_id=np.repeat(np.arange(n_presentations, dtype=np.int64), SLATE_SIZE),
        propensity=np.full(rows, 0.1),
    )


def test_candidates_keep_the_presentation_features_at_position_one_with_each_option() -> None:
    split = _split()
    pres = evaluate.presentations_from_split(split, SPEC)
    idx = {n: i for i, n in enumerate(SPEC.names)}
    assert pres.candidates.shape == (4 * N_OPT, SPEC.n_features)
    for p in range(4):
        shown = split.X[p * SLATE_SIZE]
        block = pres.candidates[p * N_OPT : (p + 1) * N_OPT]
        n_b = len(BORROWER_FEATURES)
        np.testing.assert_array_equal(block[:, :n_b], np.tile(shown[:n_b], (N_OPT, 1)))
        for t in TOUCHPOINTS:
            assert (block[:, idx[f"touchpoint_{t}"]] == shown[idx[f"touchpoint_{t}"]]).all()
        assert (block[:, idx["position"]] == 1).all()
        one_hot = block[:, [idx[f"opt_{o}"] for o in OPTION_IDS]]
        np.testing.assert_array_equal(one_hot, np.eye(N_OPT))


def test_logged_slates_follow_the_shown_positions() -> None:
    split = _split()
    pres = evaluate.presentations_from_split(split, SPEC)
    assert pres.qid.tolist() == [100, 101, 102, 103]
    for p in range(4):
        shown = split.option_id[p * SLATE_SIZE : (p + 1) * SLATE_SIZE]
        assert [OPTION_IDS[o] for o in pres.logged[p]] == list(shown)


def test_candidates_refuse_a_spec_without_borrower_features() -> None:
    spec = FeatureSpec(names=("position",), dtypes=("float32",))
    with pytest.raises(FeatureSpecMismatch):
        evaluate.presentations_from_split(_split(), spec)


# --------------------------------------------------------------------------- policy value


def _truth(pres: evaluate.Presentations, seed: int = 1) -> GroundTruth:
    values = np.random.default_rng(seed).uniform(0.0, 0.5, size=(len(pres.qid), N_OPT))
    return GroundTruth(
        presentation_ids=pres.qid, values=values, position_bias=np.array([1.0, 0.6, 0.4])
    )


def _scorer_from(matrix: np.ndarray) -> evaluate.Scorer:
    """Scores candidates (presentation by presentation, catalog order) as ``matrix`` says."""
    return lambda X: matrix.reshape(-1)[: len(X)]


@pytest.mark.parametrize(("sign", "relation"), [(1.0, "oracle"), (-1.0, "worst")])
def test_model_ranking_by_true_value_is_the_oracle_and_reversed_is_worst(
    sign: float, relation: str
) -> None:
    pres = evaluate.presentations_from_split(_split(30), SPEC)
    truth = _truth(pres)
    report = evaluate.policy_evaluation(
        pres, score=_scorer_from(sign * truth.values), ground_truth=truth
    )
    if relation == "oracle":
        assert report.values["model"] == pytest.approx(report.values["oracle"])
        assert report.share_of_oracle_lift["model"] == pytest.approx(1.0)
        assert report.model_top1_mix == report.oracle_top1_mix
    else:
        assert report.share_of_oracle_lift["model"] < report.share_of_oracle_lift["random"] == 0
    assert report.share_of_oracle_lift["oracle"] == pytest.approx(1.0)
    assert report.lift_over_random["random"] == 0.0


def test_policy_values_price_the_logged_and_fixed_slates() -> None:
    pres = evaluate.presentations_from_split(_split(30), SPEC)
    truth = _truth(pres)
    report = evaluate.policy_evaluation(pres, score=_scorer_from(truth.values), ground_truth=truth)
    bias = truth.position_bias
    legacy = np.mean([truth.values[i, pres.logged[i]] @ bias for i in range(len(pres.qid))])
    assert report.values["legacy"] == pytest.approx(legacy)
    means = truth.values.mean(axis=0)
    fixed = [OPTION_IDS[o] for o in np.argsort(-means)[:SLATE_SIZE]]
    assert list(report.best_fixed_slate) == fixed
    assert report.values["random"] == pytest.approx(bias.sum() * truth.values.mean())


def test_incomplete_logged_slate_is_refused_naming_the_presentation() -> None:
    split = _split(3)
    keep = np.ones(len(split), dtype=bool)
    keep[4] = False  # presentation 101 loses its position-2 row
    pres = evaluate.presentations_from_split(split.take(np.flatnonzero(keep)), SPEC)
    with pytest.raises(SchemaError, match="presentation 101"):
        evaluate.policy_evaluation(
            pres, score=lambda X: np.zeros(len(X)), ground_truth=_truth(pres)
        )


# --------------------------------------------------------------------------- report files


def test_report_writes_strict_json_and_png_plots(tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path))
    pres = evaluate.presentations_from_split(_split(30), SPEC)
    truth = _truth(pres)
    report = evaluate.policy_evaluation(pres, score=_scorer_from(truth.values), ground_truth=truth)
    split = _split(30)
    metrics = {
        "test": evaluate.ranking_metrics(split.qid, split.label, np.zeros(len(split))),
        **report.to_dict(),
        "nan": float("nan"),
    }
    path = evaluate.write_report(metrics, report, out)
    loaded = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert loaded["nan"] is None
    assert set(loaded["policy_values"]) == set(evaluate.POLICIES)
    for name in ("policy_values.png", "option_mix.png", "ranking_metrics.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
