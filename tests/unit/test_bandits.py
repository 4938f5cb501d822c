"""Bandit policies: propensities match what is served, learning beats random, state travels."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from attune.errors import InvalidInput
from attune.experiments.bandits import (
    EXACT_STATE_LIMIT,
    DecisionContext,
    Feedback,
    Policy,
    ThompsonPolicy,
    build_policy,
    policy_from_state,
)
from attune.experiments.policy_config import (
    EpsilonGreedyConfig,
    LinearThompsonConfig,
    SoftmaxConfig,
    ThompsonConfig,
    UniformConfig,
)

K = 6
CONTEXT = DecisionContext(
    scores=np.array([0.1, 0.9, 0.3, 0.9, 0.2, 0.6]),
    options=(0, 1, 2, 3, 4, 5),
    features=np.random.default_rng(0).normal(size=(K, 3)),
    bucket=1,
)


def _trained_thompson() -> Policy:
    policy = build_policy(ThompsonConfig(n_options=K, n_buckets=2, mc_samples=300))
    rng = np.random.default_rng(1)
    truth = np.linspace(0.1, 0.5, K)
    policy.update(
        [
            Feedback(option=o, reward=float(rng.random() < truth[o]), bucket=1)
            for o in rng.integers(0, K, 60)
        ]
    )
    return policy


def _trained_linear() -> Policy:
    policy = build_policy(LinearThompsonConfig(dim=3, n_options=K, mc_samples=300, noise=0.5))
    rng = np.random.default_rng(2)
    policy.update(
        [
            Feedback(option=o, reward=float(rng.random() < 0.3), features=tuple(rng.normal(size=3)))
            for o in rng.integers(0, K, 40)
        ]
    )
    return policy


POLICIES: dict[str, Callable[[], Policy]] = {
    "uniform": lambda: build_policy(UniformConfig()),
    "epsilon_greedy": lambda: build_policy(EpsilonGreedyConfig(epsilon=0.3)),
    "softmax": lambda: build_policy(SoftmaxConfig(temperature=0.4)),
    "thompson": _trained_thompson,
    "linear_thompson": _trained_linear,
}


@pytest.mark.parametrize("slate_size", [1, 3])
@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_logged_propensities_match_served_frequencies(kind: str, slate_size: int) -> None:
    """Over 2,000 seeded decisions, who lands at each position fits the returned marginals."""
    policy = POLICIES[kind]()
    rng = np.random.default_rng(42)
    marginals = policy.position_probabilities(CONTEXT, slate_size)
    counts = np.zeros((K, slate_size))
    n = 2000
    for _ in range(n):
        decision = policy.choose(CONTEXT, rng, slate_size=slate_size)
        counts[list(decision.order), range(slate_size)] += 1
        assert decision.chosen == decision.order[0]
        assert decision.propensity == decision.probs[decision.chosen]
        expected = tuple(marginals[j, k] for k, j in enumerate(decision.order))
        assert decision.position_propensities == pytest.approx(expected)
    np.testing.assert_allclose(marginals.sum(axis=0), 1.0)
    for k in range(slate_size):
        _assert_fits(counts[:, k], marginals[:, k])


def _assert_fits(counts: np.ndarray, probs: np.ndarray) -> None:
    support = probs > 0
    assert counts[~support].sum() == 0, "served a candidate the policy gives probability 0"
    if support.sum() > 1:
        expected = counts.sum() * probs[support]
        assert stats.chisquare(counts[support], expected).pvalue > 1e-4


def test_frequency_check_has_power_against_wrong_marginals() -> None:
    """Claiming position-1 probabilities for position 2 (no renormalization) is rejected."""
    policy = build_policy(SoftmaxConfig(temperature=0.4))
    rng = np.random.default_rng(42)
    marginals = policy.position_probabilities(CONTEXT, 2)
    counts = np.zeros(K)
    for _ in range(2000):
        counts[policy.choose(CONTEXT, rng, slate_size=2).order[1]] += 1
    assert stats.chisquare(counts, 2000 * marginals[:, 0]).pvalue < 1e-6


def test_slate_propensity_is_product_of_step_probabilities() -> None:
    policy = build_policy(EpsilonGreedyConfig(epsilon=0.3))
    decision = policy.choose(CONTEXT, np.random.default_rng(3), slate_size=2)
    first, second = decision.order
    # step 1 over 6 candidates, best = tied {1, 3}; step 2 over the 5 left
    p1 = 0.3 / 6 + (0.7 / 2 if first in (1, 3) else 0.0)
    best_left = {1, 3} - {first} or {5}
    p2 = 0.3 / 5 + (0.7 / len(best_left) if second in best_left else 0.0)
    assert decision.slate_propensity == pytest.approx(p1 * p2)


def test_greedy_marginals_are_the_ranking_with_ties_split() -> None:
    marginals = build_policy(EpsilonGreedyConfig(epsilon=0.0)).position_probabilities(CONTEXT, 3)
    np.testing.assert_allclose(marginals[:, 0], [0, 0.5, 0, 0.5, 0, 0])
    np.testing.assert_allclose(marginals[:, 1], [0, 0.5, 0, 0.5, 0, 0])
    np.testing.assert_allclose(marginals[:, 2], [0, 0, 0, 0, 0, 1])


def test_large_candidate_sets_fall_back_to_seeded_monte_carlo() -> None:
    n = 40
    context = DecisionContext(scores=np.linspace(0, 1, n))
    assert sum(math.comb(n, k) for k in range(5)) > EXACT_STATE_LIMIT
    policy = build_policy(UniformConfig())
    marginals = policy.position_probabilities(context, 5)
    np.testing.assert_allclose(marginals, 1 / n, atol=0.005)
    assert np.array_equal(marginals, policy.position_probabilities(context, 5))


# ----------------------------------------------------------------------------- learning


def _bucket_environment() -> np.ndarray:
    return np.random.default_rng(123).uniform(0.05, 0.45, size=(3, K))


def _run_bucketed(policy: Policy, truth: np.ndarray, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    regret = 0.0
    for _ in range(steps):
        bucket = int(rng.integers(truth.shape[0]))
        context = DecisionContext(options=tuple(range(K)), scores=np.zeros(K), bucket=bucket)
        chosen = policy.choose(context, rng).chosen
        regret += truth[bucket].max() - truth[bucket, chosen]
        reward = float(rng.random() < truth[bucket, chosen])
        policy.update([Feedback(option=chosen, reward=reward, bucket=bucket)])
    return regret


def test_thompson_per_bucket_has_far_less_regret_than_uniform() -> None:
    truth = _bucket_environment()
    thompson = build_policy(ThompsonConfig(n_options=K, n_buckets=3, mc_samples=200))
    uniform = build_policy(UniformConfig())
    r_thompson = _run_bucketed(thompson, truth, 3000, seed=5)
    r_uniform = _run_bucketed(uniform, truth, 3000, seed=5)
    assert r_thompson < 0.4 * r_uniform


def test_linear_thompson_has_far_less_regret_than_uniform() -> None:
    d = 4
    theta = np.random.default_rng(77).normal(size=(K, d))

    def run(policy: Policy, seed: int) -> float:
        rng = np.random.default_rng(seed)
        regret = 0.0
        for _ in range(1500):
            z = np.append(rng.normal(size=d - 1), 1.0)
            truth = np.clip(0.3 + 0.12 * theta @ z, 0.02, 0.98)
            context = DecisionContext(options=tuple(range(K)), features=np.tile(z, (K, 1)))
            chosen = policy.choose(context, rng).chosen
            regret += truth.max() - truth[chosen]
            reward = float(rng.random() < truth[chosen])
            policy.update([Feedback(option=chosen, reward=reward, features=tuple(z))])
        return regret

    linear = build_policy(LinearThompsonConfig(dim=d, n_options=K, mc_samples=200, noise=0.3))
    assert run(linear, seed=8) < 0.5 * run(build_policy(UniformConfig()), seed=8)


def test_thompson_update_moves_posterior_and_choice() -> None:
    policy = build_policy(ThompsonConfig(n_options=K, n_buckets=2, mc_samples=500))
    before = policy.position_probabilities(CONTEXT, 1)[4, 0]
    policy.update([Feedback(option=4, reward=1.0, bucket=1)] * 30)
    assert isinstance(policy, ThompsonPolicy)
    assert policy.means()[1, 4] == pytest.approx(31 / 32)
    assert policy.means()[0, 4] == pytest.approx(0.5)  # other bucket untouched
    assert policy.position_probabilities(CONTEXT, 1)[4, 0] > max(0.75, 3 * before)


# ----------------------------------------------------------------------------- state


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_state_round_trips_through_json(kind: str) -> None:
    """A replica rebuilt from the JSON state serves the same distribution and decisions."""
    policy = POLICIES[kind]()
    payload = json.loads(json.dumps(policy.state().model_dump(mode="json")))
    clone = policy_from_state(payload)
    np.testing.assert_array_equal(
        clone.position_probabilities(CONTEXT, 3), policy.position_probabilities(CONTEXT, 3)
    )
    a = policy.choose(CONTEXT, np.random.default_rng(9), slate_size=3)
    b = clone.choose(CONTEXT, np.random.default_rng(9), slate_size=3)
    assert a == b


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"config": {"kind": "nope"}}, "kind"),
        ({"config": {"kind": "softmax", "temperature": 0}}, "temperature"),
        ({"config": {"kind": "epsilon_greedy", "epsilon": 0.1, "extra": 1}}, "extra"),
    ],
)
def test_invalid_policy_state_is_refused(payload: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        policy_from_state(payload)


def test_posterior_with_wrong_shape_names_the_array() -> None:
    state = {"config": {"kind": "thompson", "n_options": 3}, "posterior": {"alpha": [[1, 1]]}}
    with pytest.raises(InvalidInput) as info:
        policy_from_state(state)
    assert info.value.argument == "posterior.alpha"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("policy", "context", "slate_size", "argument"),
    [
        (SoftmaxConfig(), DecisionContext(options=(0, 1)), 1, "scores"),
        (SoftmaxConfig(), DecisionContext(scores=np.ones(3)), 4, "slate_size"),
        (SoftmaxConfig(), DecisionContext(scores=np.array([1.0, np.nan])), 1, "scores"),
        (ThompsonConfig(n_options=3), DecisionContext(options=(0, 3)), 1, "options"),
        (ThompsonConfig(n_options=3), DecisionContext(options=(0, 1), bucket=2), 1, "bucket"),
        (LinearThompsonConfig(dim=2), DecisionContext(features=np.ones((3, 5))), 1, "features"),
        (LinearThompsonConfig(dim=2), DecisionContext(scores=np.ones(3)), 1, "features"),
    ],
)
def test_bad_context_is_invalid_input_naming_the_field(
    policy, context: DecisionContext, slate_size: int, argument: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        build_policy(policy).choose(context, np.random.default_rng(0), slate_size=slate_size)
    assert info.value.argument == argument


@pytest.mark.parametrize(
    ("config", "feedback", "argument"),
    [
        (ThompsonConfig(n_options=3), Feedback(option=0, reward=1.5), "reward"),
        (ThompsonConfig(n_options=3), Feedback(option=7, reward=1.0), "options"),
        (LinearThompsonConfig(dim=2), Feedback(option=0, reward=1.0), "features"),
    ],
)
def test_bad_feedback_is_invalid_input(config, feedback: Feedback, argument: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build_policy(config).update([feedback])
    assert info.value.argument == argument
