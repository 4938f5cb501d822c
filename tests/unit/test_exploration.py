"""Exploration in the served app (attune.experiments.exploration, RankingService)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from attune.data.schema import OPTION_IDS, SLATE_SIZE
from attune.experiments.assignment import bucket
from attune.experiments.bandits import DecisionContext, Feedback, build_policy
from attune.experiments.exploration import ExplorationConfig, Explorer
from attune.experiments.policy_config import LinearThompsonConfig, ThompsonConfig
from attune.serving.api import RankRequest
from attune.serving.config import RolloutConfig
from attune.serving.decision_log import DecisionLog, MemorySink
from attune.serving.service import RankingService
from tests.integration.serving_fixtures import (
    N_FEATURES,
    DictStore,
    model_files,
    rank_body,
    ranker_onnx,
)

K = len(OPTION_IDS)


def _thompson_state() -> dict[str, Any]:
    policy = build_policy(ThompsonConfig(n_options=K, n_buckets=3, mc_samples=200))
    rng = np.random.default_rng(5)
    policy.update(
        [Feedback(option=int(o), reward=float(rng.random() < 0.3)) for o in rng.integers(0, K, 300)]
    )
    return policy.state().model_dump(mode="json")


def _linear_state(dim: int) -> dict[str, Any]:
    config = LinearThompsonConfig(dim=dim, n_options=K, mc_samples=200)
    return build_policy(config).state().model_dump(mode="json")


CONFIGS = {
    "epsilon": {"policy": "epsilon", "share": 1.0, "epsilon": 0.3},
    "softmax": {"policy": "softmax", "share": 1.0, "temperature": 0.7},
    "thompson": {"policy": "thompson", "share": 1.0, "state": _thompson_state()},
    "linear_thompson": {
        "policy": "linear_thompson",
        "share": 1.0,
        "state": _linear_state(N_FEATURES),
    },
}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"policy": "none", "share": 0.1}, "needs a policy"),
        ({"policy": "thompson", "share": 0.1}, "needs its state"),
        ({"policy": "softmax", "share": 0.1, "state": _thompson_state()}, "state is only for"),
        ({"policy": "linear_thompson", "share": 0.1, "state": _thompson_state()}, "not 'linear"),
        ({"policy": "softmax", "share": 1.5}, "share"),
        ({"policy": "softmax", "temperature": 0}, "temperature"),
        ({"policy": "greedy"}, "policy"),
        ({"policy": "epsilon", "epsilon": 0.1, "shares": 0.1}, "shares"),
    ],
)
def test_bad_exploration_configs_are_refused_naming_the_field(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutConfig.model_validate({"exploration": config})


def test_who_explores_is_the_assignment_bucket_of_the_rollout_salt() -> None:
    explorer = Explorer(ExplorationConfig(policy="softmax", share=0.2), salt="r7")
    chosen = [b for b in range(5_000) if explorer.explores(b)]
    assert chosen == [b for b in range(5_000) if bucket(b, "r7:explore") < 0.2]
    assert 0.17 < len(chosen) / 5_000 < 0.23
    # Raising the share only adds borrowers; another salt draws an independent set, and
    # so does the canary of the same salt (explorers are not all canary borrowers).
    wider = Explorer(ExplorationConfig(policy="softmax", share=0.4), salt="r7")
    assert set(chosen) <= {b for b in range(5_000) if wider.explores(b)}
    other = Explorer(ExplorationConfig(policy="softmax", share=0.2), salt="r8")
    overlap = len(set(chosen) & {b for b in range(5_000) if other.explores(b)}) / len(chosen)
    canary = len([b for b in chosen if bucket(b, "r7") < 0.2]) / len(chosen)
    assert 0.14 < overlap < 0.26 and 0.14 < canary < 0.26


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_slate_logs_the_policys_exact_probability_per_shown_position(name: str) -> None:
    config = ExplorationConfig.model_validate(CONFIGS[name])
    explorer = Explorer(config, salt="s", seed=3)
    rng = np.random.default_rng(0)
    for touchpoint in ("app", "email", "sms"):
        scores = rng.normal(size=K)
        X = rng.normal(size=(K, N_FEATURES)).astype(np.float32)
        slate = explorer.slate(scores, features=X, option_ids=OPTION_IDS, touchpoint=touchpoint)
        assert sorted(slate.order.tolist()) == list(range(K))
        assert len(slate.propensities) == SLATE_SIZE
        assert ((slate.propensities > 0) & (slate.propensities <= 1)).all()
        # Recompute from the policy's own position marginals.
        context = explorer.context(scores, features=X, option_ids=OPTION_IDS, touchpoint=touchpoint)
        marginals = explorer.policy.position_probabilities(context, SLATE_SIZE)
        shown = slate.order[:SLATE_SIZE]
        np.testing.assert_allclose(slate.propensities, marginals[shown, np.arange(SLATE_SIZE)])
        # Below the slate: score order.
        rest = slate.order[SLATE_SIZE:]
        assert list(scores[rest]) == sorted(scores[rest], reverse=True)
        assert json.loads(slate.policy)["policy"] == name


def test_softmax_slates_are_drawn_with_the_logged_probabilities() -> None:
    """Over many draws, how often each option leads matches its logged position-1 propensity."""
    explorer = Explorer(
        ExplorationConfig(policy="softmax", share=1, temperature=0.5), salt="s", seed=1
    )
    scores = np.linspace(-1, 1, K)
    X = np.zeros((K, N_FEATURES), dtype=np.float32)
    counts, logged = np.zeros(K), np.zeros(K)
    for _ in range(4_000):
        slate = explorer.slate(scores, features=X, option_ids=OPTION_IDS, touchpoint="app")
        counts[slate.order[0]] += 1
        logged[slate.order[0]] = slate.propensities[0]
    expected = DecisionContext(scores=scores)
    first = explorer.policy.position_probabilities(expected, 1)[:, 0]
    np.testing.assert_allclose(logged[counts > 0], first[counts > 0])
    assert stats.chisquare(counts, 4_000 * first).pvalue > 1e-4


# ---------------------------------------------------------------------------- in the service


def _service(exploration: dict[str, Any], sink: MemorySink, seed: int = 0) -> RankingService:
    store = DictStore({"champ": model_files(ranker_onnx(seed=1))}, {"champion": "champ"})
    return RankingService(
        store=store,
        rollout=RolloutConfig.model_validate({"salt": "loop-1", "exploration": exploration}),
        decision_log=DecisionLog(sink=sink, writer_id="t", max_batch=10_000),
        borrower_salt="salt",
        exploration_seed=seed,
    )


def test_only_exploring_borrowers_get_propensities_and_they_match_the_policy() -> None:
    sink = MemorySink()
    service = _service({"policy": "epsilon", "share": 0.3, "epsilon": 0.5}, sink)
    explorer = Explorer(ExplorationConfig(policy="epsilon", share=0.3, epsilon=0.5), salt="loop-1")
    answers = {}
    for borrower in range(300):
        body = rank_body(borrower, seed=borrower)
        answers[borrower] = asyncio.run(service.rank(RankRequest.model_validate(body)))
    service._log.flush()  # type: ignore[union-attr]
    records = {r["decision_id"]: r for r in sink.rows()}
    exploring = 0
    for borrower, answer in answers.items():
        record = records[answer.decision_id]
        logged = [o.propensity for o in answer.options]
        if not explorer.explores(borrower):
            assert record["propensities"] is None and record["logging_policy"] is None
            assert logged == [None] * K
            assert [o.option_id for o in answer.options] == record["returned_order"]
            continue
        exploring += 1
        assert logged[SLATE_SIZE:] == [None] * (K - SLATE_SIZE)
        assert record["propensities"] == pytest.approx(logged[:SLATE_SIZE])
        assert json.loads(record["logging_policy"]) == {"policy": "epsilon", "epsilon": 0.5}
        scores = np.asarray(record["scores"])
        context = DecisionContext(scores=scores)
        marginals = explorer.policy.position_probabilities(context, SLATE_SIZE)
        shown = [record["candidates"].index(o) for o in record["returned_order"][:SLATE_SIZE]]
        np.testing.assert_allclose(record["propensities"], marginals[shown, np.arange(SLATE_SIZE)])
    assert 60 < exploring < 120


def test_exploration_is_a_live_knob_and_a_mismatched_linear_state_is_refused() -> None:
    sink = MemorySink()
    service = _service({}, sink)
    body = RankRequest.model_validate(rank_body(1))
    assert asyncio.run(service.rank(body)).options[0].propensity is None
    service.apply(
        RolloutConfig.model_validate(
            {"salt": "loop-1", "exploration": {"policy": "softmax", "share": 1.0}}
        )
    )
    assert asyncio.run(service.rank(body)).options[0].propensity is not None
    bad = {"policy": "linear_thompson", "share": 1.0, "state": _linear_state(N_FEATURES + 1)}
    service.apply(RolloutConfig.model_validate({"salt": "loop-1", "exploration": bad}))
    assert asyncio.run(service.rank(body)).options[0].propensity is None
    assert any("state.config.dim" in r for r in service.status().refused)
