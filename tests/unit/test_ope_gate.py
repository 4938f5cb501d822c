"""The OPE gate: its rule, and the path from a serving decision log to a verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attune.errors import GateRefused, InvalidInput
from attune.experiments.bandits import DecisionContext, build_policy
from attune.experiments.ope import PolicyEstimate
from attune.experiments.policy_config import EpsilonGreedyConfig, SoftmaxConfig
from attune.governance.gates.ope_gate import (
    LOG_ROW_COLUMNS,
    explode_decisions,
    ope_gate,
    ope_gate_from_log,
    slate_target_probs,
)

OPTIONS = [f"opt{i}" for i in range(8)]
BIAS = np.array([1.0, 0.6, 0.35])


def _estimate(value: float, low: float, high: float, estimator: str = "snips") -> PolicyEstimate:
    return PolicyEstimate(
        estimator=estimator, value=value, ci_low=low, ci_high=high, n=100, std_err=0.01
    )


@pytest.mark.parametrize(
    ("candidate", "champion", "passed"),
    [
        (_estimate(0.40, 0.35, 0.45), _estimate(0.50, 0.45, 0.55), False),  # upper 0.45 < 0.50
        (_estimate(0.40, 0.35, 0.50), _estimate(0.50, 0.45, 0.55), True),  # upper reaches it
        (_estimate(0.45, 0.40, 0.52), _estimate(0.50, 0.45, 0.55), True),  # overlapping
        (_estimate(0.60, 0.55, 0.65), _estimate(0.50, 0.45, 0.55), True),  # better
    ],
)
def test_gate_refuses_only_when_upper_bound_is_below_champion_estimate(
    candidate: PolicyEstimate, champion: PolicyEstimate, passed: bool
) -> None:
    decision = ope_gate(candidate_value=candidate, champion_value=champion)
    assert decision.passed is passed
    assert f"{candidate.ci_high:.4g}" in decision.reasons[0]
    assert decision.to_dict()["evidence"]["candidate"]["ci_high"] == candidate.ci_high


def test_refused_gate_raises_gate_refused_with_version_and_reason() -> None:
    decision = ope_gate(
        candidate_value=_estimate(0.1, 0.05, 0.2), champion_value=_estimate(0.5, 0.4, 0.6)
    )
    with pytest.raises(GateRefused) as info:
        decision.enforce(version="v42")
    assert info.value.version == "v42" and info.value.gate == "ope"
    assert info.value.reasons == list(decision.reasons)
    ope_gate(
        candidate_value=_estimate(0.5, 0.4, 0.6), champion_value=_estimate(0.5, 0.4, 0.6)
    ).enforce(version="v43")  # passes silently


def test_gate_refuses_to_compare_different_estimators() -> None:
    with pytest.raises(InvalidInput) as info:
        ope_gate(
            candidate_value=_estimate(0.5, 0.4, 0.6, "ips"),
            champion_value=_estimate(0.5, 0.4, 0.6, "dr"),
        )
    assert info.value.argument == "candidate_value"


# ----------------------------------------------------------------------------- from logs


def _serving_log(
    n: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A decision log in the serving schema, served by a softmax explorer over champion scores.

    Returns (decisions, outcomes, true option values per decision, champion scores).
    """
    rng = np.random.default_rng(seed)
    explorer = build_policy(SoftmaxConfig(temperature=0.15))
    decisions, outcomes, values, champion = [], [], {}, {}
    for d in range(n):
        k = int(rng.integers(5, 9))  # candidate sets of varying size exercise padding
        chosen = sorted(rng.choice(8, size=k, replace=False))
        candidates = [OPTIONS[j] for j in chosen]
        value = rng.uniform(0.05, 0.6, size=k)
        scores = value + rng.normal(0, 0.15, size=k)
        decision = explorer.choose(DecisionContext(scores=scores), rng, slate_size=3)
        decision_id = f"d{d}"
        values[decision_id], champion[decision_id] = value, scores
        decisions.append(
            {
                "decision_id": decision_id,
                "role": "primary",
                "candidates": candidates,
                "returned_order": [candidates[j] for j in decision.order],
                "propensities": list(decision.position_propensities),
            }
        )
        for position, j in enumerate(decision.order):
            if rng.random() < value[j] * BIAS[position]:
                outcomes.append(
                    {"decision_id": decision_id, "option_id": candidates[j], "reward": 1.0}
                )
    return pd.DataFrame(decisions), pd.DataFrame(outcomes), values, champion


def _greedy(scores_by_decision: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    greedy = build_policy(EpsilonGreedyConfig(epsilon=0.0))
    return {
        d: greedy.position_probabilities(DecisionContext(scores=s), 3)
        for d, s in scores_by_decision.items()
    }


@pytest.fixture(scope="module")
def serving_log() -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    return _serving_log(1500, seed=4)


@pytest.mark.parametrize(
    ("candidate", "passed"),
    [("inverted", False), ("truth", True), ("champion", True)],
)
def test_gate_from_serving_log_refuses_a_worse_ranker_and_passes_better_ones(
    serving_log: tuple, candidate: str, passed: bool
) -> None:
    decisions, outcomes, values, champion_scores = serving_log
    log = explode_decisions(decisions, outcomes, slate_size=3).rows
    candidate_scores = {
        "inverted": {d: -v for d, v in values.items()},
        "truth": values,
        "champion": champion_scores,
    }[candidate]
    decision = ope_gate_from_log(
        log=log,
        candidate_probs=slate_target_probs(log, _greedy(candidate_scores)),
        champion_probs=slate_target_probs(log, _greedy(champion_scores)),
        estimator="snips",
    )
    assert decision.passed is passed, decision.reasons
    if candidate == "truth":
        assert decision.evidence is not None
        assert decision.evidence["candidate"]["value"] > decision.evidence["champion"]["value"]


def test_explode_skips_shadow_and_unexplored_decisions_and_fills_missing_rewards() -> None:
    decisions = pd.DataFrame(
        [
            {
                "decision_id": "a",
                "role": "primary",
                "candidates": ["x", "y", "z", "w"],
                "returned_order": ["z", "x", "w", "y"],
                "propensities": [0.5, 0.4, 0.3, 1.0],
            },
            {
                "decision_id": "a",
                "role": "shadow",
                "candidates": ["x", "y", "z", "w"],
                "returned_order": ["x", "y", "z", "w"],
                "propensities": [0.9, 0.9, 0.9, 1.0],
            },
            {
                "decision_id": "b",
                "role": "primary",
                "candidates": ["x", "y", "z"],
                "returned_order": ["x", "y", "z"],
                "propensities": None,
            },
            {
                "decision_id": "c",
                "role": "primary",
                "candidates": ["x", "y"],
                "returned_order": ["x", "y"],
                "propensities": [0.5, 1.0],
            },
        ]
    )
    outcomes = pd.DataFrame([{"decision_id": "a", "option_id": "x", "reward": 1.0}])
    exploded = explode_decisions(decisions, outcomes, slate_size=3)
    assert exploded.decisions_used == 1
    assert exploded.skipped_without_propensities == 1
    assert exploded.skipped_short == 1
    rows = exploded.rows
    assert list(rows.columns[: len(LOG_ROW_COLUMNS)]) == list(LOG_ROW_COLUMNS)
    assert rows["action"].tolist() == [2, 0, 3]  # indices into the decision's candidates
    assert rows["propensity"].tolist() == [0.5, 0.4, 0.3]
    assert rows["reward"].tolist() == [0.0, 1.0, 0.0]


def test_slate_target_probs_pads_smaller_candidate_sets_with_zero() -> None:
    rows = pd.DataFrame({"decision_id": ["a", "a", "b"]})
    per = {"a": np.eye(3)[:, :2], "b": np.eye(2)}
    out = slate_target_probs(rows, per)
    assert out.shape == (3, 3, 2)
    np.testing.assert_array_equal(out[2], [[1, 0], [0, 1], [0, 0]])


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: explode_decisions(pd.DataFrame({"decision_id": ["a"]})), "decisions"),
        (
            lambda: explode_decisions(
                pd.DataFrame(
                    columns=["decision_id", "candidates", "returned_order", "propensities"]
                ),
                pd.DataFrame({"decision_id": []}),
            ),
            "outcomes",
        ),
        (
            lambda: ope_gate_from_log(
                log=pd.DataFrame({"decision_id": []}),
                candidate_probs=np.ones((0, 1, 1)),
                champion_probs=np.ones((0, 1, 1)),
            ),
            "log",
        ),
        (
            lambda: slate_target_probs(pd.DataFrame({"decision_id": ["zz"]}), {}),
            "per_decision",
        ),
    ],
)
def test_missing_columns_or_targets_are_invalid_input(call, argument: str) -> None:
    with pytest.raises(InvalidInput) as info:
        call()
    assert info.value.argument == argument


def test_model_based_gate_without_reward_model_is_refused_clearly() -> None:
    decisions, outcomes, _, champion_scores = _serving_log(50, seed=1)
    log = explode_decisions(decisions, outcomes).rows
    probs = slate_target_probs(log, _greedy(champion_scores))
    with pytest.raises(InvalidInput) as info:
        ope_gate_from_log(log=log, candidate_probs=probs, champion_probs=probs, estimator="dr")
    assert info.value.argument == "estimated_rewards"
