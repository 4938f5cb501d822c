"""Off-policy evaluation: coverage and error on logs with known truth, exact cases, bad input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from attune.errors import InvalidInput
from attune.experiments.bandits import DecisionContext, build_policy
from attune.experiments.ope import (
    SWITCH_DR_MAX_WEIGHT,
    PolicyEstimate,
    estimate_policy_value,
)
from attune.experiments.policy_config import SoftmaxConfig


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class _World:
    """A finite population of contexts with known rewards, logging and target policies."""

    q: np.ndarray  # (pool, A) true expected reward
    q_hat: np.ndarray  # (pool, A) a biased reward model
    logging: np.ndarray  # (pool, A)
    target: np.ndarray  # (pool, A)

    @property
    def truth(self) -> float:
        return float((self.target * self.q).sum(axis=1).mean())


def _world(pool: int = 5000, actions: int = 5, dim: int = 3) -> _World:
    rng = np.random.default_rng(12345)
    x = rng.normal(size=(pool, dim))
    theta, bias = rng.normal(size=(dim, actions)), rng.normal(-1, 0.5, size=actions)
    logits = x @ theta + bias
    q = 1 / (1 + np.exp(-logits))
    return _World(
        q=q,
        q_hat=np.clip(q + 0.08 + rng.normal(0, 0.05, size=q.shape), 0, 1),
        logging=_softmax(0.5 * (logits + rng.normal(0, 1, size=q.shape))),
        target=_softmax(3.0 * (x @ theta)),
    )


def _logs(world: _World, seed: int, n: int = 3000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(world.q), n)
    a = (world.logging[i].cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    a = np.minimum(a, world.q.shape[1] - 1)
    return {
        "actions": a,
        "rewards": (rng.random(n) < world.q[i, a]).astype(float),
        "propensities": world.logging[i, a],
        "target_probs": world.target[i],
        "estimated_rewards": world.q_hat[i],
    }


def _validate(
    runs: list[dict[str, PolicyEstimate]], truth: float
) -> dict[str, tuple[float, float]]:
    """(coverage of the 95 % interval, mean absolute error) per estimator."""
    return {
        e: (
            float(np.mean([r[e].ci_low <= truth <= r[e].ci_high for r in runs])),
            float(np.mean([abs(r[e].value - truth) for r in runs])),
        )
        for e in runs[0]
    }


def test_snips_and_dr_cover_truth_and_dr_beats_ips_over_50_seeds() -> None:
    """Done-when: 95 % CIs of SNIPS and DR cover the truth >= 90 % of 50 seeds; DR MAE < IPS's."""
    world = _world()
    runs = [
        estimate_policy_value(
            **_logs(world, seed), estimators=("ips", "snips", "dm", "dr", "switch_dr"), seed=seed
        )
        for seed in range(50)
    ]
    figures = _validate(runs, world.truth)
    print(f"\nOPE bandit validation (truth {world.truth:.4f}): {figures}")
    assert figures["snips"][0] >= 0.90
    assert figures["dr"][0] >= 0.90
    assert figures["dr"][1] < figures["ips"][1]
    # the reward model is biased on purpose: DM alone misses, DR corrects it
    assert figures["dm"][0] < 0.5 < figures["dr"][0]


# ----------------------------------------------------------------------------- slates


@dataclass(frozen=True)
class _SlateWorld:
    value: np.ndarray  # (pool, A): reward of an examined option
    bias: np.ndarray  # (P,): examination probability per position
    logging_scores: np.ndarray
    logging: np.ndarray  # (pool, A, P) marginals
    target: np.ndarray  # (pool, A, P) marginals

    @property
    def truth(self) -> float:
        q = self.value[:, :, None] * self.bias[None, None, :]
        return float((self.target * q).sum(axis=(1, 2)).mean())


def _slate_world(pool: int = 400, actions: int = 6) -> _SlateWorld:
    rng = np.random.default_rng(99)
    value = rng.uniform(0.05, 0.6, size=(pool, actions))
    logging_scores = value + rng.normal(0, 0.3, size=value.shape)
    logging_policy = build_policy(SoftmaxConfig(temperature=0.3))
    target_policy = build_policy(SoftmaxConfig(temperature=0.1))
    target_scores = value + rng.normal(0, 0.1, size=value.shape)
    marg = lambda policy, s: policy.position_probabilities(DecisionContext(scores=s), 3)  # noqa: E731
    return _SlateWorld(
        value=value,
        bias=np.array([1.0, 0.6, 0.35]),
        logging_scores=logging_scores,
        logging=np.stack([marg(logging_policy, s) for s in logging_scores]),
        target=np.stack([marg(target_policy, s) for s in target_scores]),
    )


def _slate_logs(world: _SlateWorld, seed: int, decisions: int = 1500) -> dict[str, np.ndarray]:
    """Each decision logs its 3 positions as 3 rows (Plackett-Luce via Gumbel top-k)."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(world.value), decisions)
    gumbel = rng.gumbel(size=(decisions, world.value.shape[1]))
    slates = np.argsort(-(world.logging_scores[i] / 0.3 + gumbel), axis=1)[:, :3]
    rows_i = np.repeat(i, 3)
    actions = slates.ravel()
    positions = np.tile(np.arange(3), decisions)
    p_click = world.value[rows_i, actions] * world.bias[positions]
    q_hat = np.clip(world.value + 0.05, 0, 1)[:, :, None] * world.bias[None, None, :]
    return {
        "actions": actions,
        "positions": positions,
        "rewards": (rng.random(actions.size) < p_click).astype(float),
        "propensities": world.logging[rows_i, actions, positions],
        "target_probs": world.target[rows_i],
        "estimated_rewards": q_hat[rows_i],
    }


def test_slate_estimates_cover_the_position_based_truth() -> None:
    """Slates (n, A, P): per-position SNIPS/DR cover the true slate value over 100 seeds.

    Rows of one slate share their context and the bootstrap resamples rows, so plain
    IPS (heavier tails) covers a little less; it gets a looser bar, and stays unbiased.
    """
    world = _slate_world()
    runs = [estimate_policy_value(**_slate_logs(world, seed), seed=seed) for seed in range(100)]
    figures = _validate(runs, world.truth)
    print(f"\nOPE slate validation (truth {world.truth:.4f}): {figures}")
    assert figures["snips"][0] >= 0.90
    assert figures["dr"][0] >= 0.90
    assert figures["ips"][0] >= 0.85
    assert figures["dr"][1] < figures["ips"][1]
    bias = np.mean([r["ips"].value for r in runs]) - world.truth
    assert abs(bias) < 3 * np.std([r["ips"].value for r in runs]) / 10


# ----------------------------------------------------------------------------- exact cases


def test_on_policy_logs_make_ips_and_snips_the_mean_reward() -> None:
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(size=(200, 4)))
    actions = (probs.cumsum(axis=1) < rng.random(200)[:, None]).sum(axis=1)
    rewards = rng.random(200)
    out = estimate_policy_value(
        actions=actions,
        rewards=rewards,
        propensities=probs[np.arange(200), actions],
        target_probs=probs,
    )
    assert set(out) == {"ips", "snips"}  # no reward model: DM and DR are skipped, not faked
    assert out["ips"].value == pytest.approx(rewards.mean())
    assert out["snips"].value == pytest.approx(rewards.mean())
    assert out["ips"].ci_low <= out["ips"].value <= out["ips"].ci_high
    assert out["ips"].n == 200


def test_dm_with_exact_rewards_is_the_expected_value() -> None:
    rng = np.random.default_rng(1)
    target = _softmax(rng.normal(size=(50, 3)))
    q = rng.random((50, 3))
    out = estimate_policy_value(
        actions=np.zeros(50, dtype=int),
        rewards=q[:, 0],
        propensities=np.full(50, 0.5),
        target_probs=target,
        estimated_rewards=q,
        estimators=("dm", "dr"),
    )
    assert out["dm"].value == pytest.approx(float((target * q).sum(axis=1).mean()))
    # residuals are 0 when the model is exact, so DR equals DM
    assert out["dr"].value == pytest.approx(out["dm"].value)


def test_switch_dr_drops_corrections_above_its_weight_threshold() -> None:
    n = 100
    target = np.tile([1.0, 0.0], (n, 1))
    q_hat = np.tile([0.2, 0.9], (n, 1))
    common = {
        "actions": np.zeros(n, dtype=int),
        "rewards": np.ones(n),
        "target_probs": target,
        "estimated_rewards": q_hat,
        "estimators": ("dm", "dr", "switch_dr"),
    }
    small_w = estimate_policy_value(propensities=np.full(n, 0.5), **common)  # w = 2
    assert small_w["switch_dr"].value == pytest.approx(small_w["dr"].value)
    tiny_p = 1 / (2 * SWITCH_DR_MAX_WEIGHT)
    large_w = estimate_policy_value(propensities=np.full(n, tiny_p), **common)
    assert large_w["switch_dr"].value == pytest.approx(large_w["dm"].value)
    assert large_w["dr"].value != pytest.approx(large_w["dm"].value)


def test_bootstrap_is_seeded_and_results_follow_requested_order() -> None:
    logs = _logs(_world(pool=300), seed=3, n=400)
    first = estimate_policy_value(**logs, estimators=("dr", "ips"), seed=7)
    again = estimate_policy_value(**logs, estimators=("dr", "ips"), seed=7)
    other = estimate_policy_value(**logs, estimators=("dr", "ips"), seed=8)
    assert list(first) == ["dr", "ips"]
    assert first == again
    assert first["dr"].ci_low != other["dr"].ci_low


# ----------------------------------------------------------------------------- bad input


def _good() -> dict[str, object]:
    return {
        "actions": np.array([0, 1, 2]),
        "rewards": np.array([1.0, 0.0, 1.0]),
        "propensities": np.array([0.5, 0.25, 0.25]),
        "target_probs": np.full((3, 3), 1 / 3),
    }


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        ({"propensities": np.array([0.5, 0.0, 0.25])}, "propensities"),
        ({"propensities": np.array([0.5, 1.2, 0.25])}, "propensities"),
        ({"propensities": np.array([0.5, np.nan, 0.25])}, "propensities"),
        ({"propensities": np.array([0.5, 0.25])}, "propensities"),
        ({"actions": np.array([0, 1, 3])}, "actions"),
        ({"actions": np.array([0, 1, -1])}, "actions"),
        ({"actions": np.array([0.0, 1.5, 2.0])}, "actions"),
        ({"rewards": np.ones((3, 1))}, "rewards"),
        ({"rewards": np.array([1.0, np.inf, 0.0])}, "rewards"),
        ({"target_probs": np.full((3, 3), 0.5)}, "target_probs"),
        ({"target_probs": np.full(3, 1 / 3)}, "target_probs"),
        ({"target_probs": np.full((3, 3, 2), 1 / 3)}, "positions"),
        ({"positions": np.array([0, 0, 0])}, "positions"),
        ({"estimated_rewards": np.ones((3, 2))}, "estimated_rewards"),
        ({"estimators": ("ips", "magic")}, "estimators"),
        ({"estimators": "ips"}, "estimators"),
        ({"estimators": ()}, "estimators"),
        ({"n_bootstrap": 1}, "n_bootstrap"),
        (
            {
                "target_probs": np.full((3, 3, 2), 1 / 3),
                "positions": np.array([0, 0, 0]),
            },
            "positions",
        ),
    ],
)
def test_bad_arguments_raise_invalid_input_naming_them(change: dict, argument: str) -> None:
    with pytest.raises(InvalidInput) as info:
        estimate_policy_value(**{**_good(), **change})  # type: ignore[arg-type]
    assert info.value.argument == argument
    assert argument in str(info.value)
