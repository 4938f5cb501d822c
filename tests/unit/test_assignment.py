"""Assignment: published hash vectors, weighted arms, independent layers, holdout."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from attune.errors import InvalidInput
from attune.experiments.assignment import (
    ArmConfig,
    Assigner,
    AssignmentConfig,
    ExperimentConfig,
    bucket,
    pick_weighted,
)

UNITS = [f"borrower-{i}" for i in range(20_000)]

# Published test vectors: these values are the contract. If one changes, every
# running experiment and canary would reshuffle its borrowers.
BUCKET_VECTORS = [
    ("borrower-1", "rollout-7", 0.3527975000271467),
    ("borrower-2", "rollout-7", 0.3575278336026222),
    (12345, "rollout-7", 0.055183824677656035),
    ("borrower-1", "other-salt", 0.24627264025163376),
    ("", "x", 0.31987360038236456),
]


def _plan() -> AssignmentConfig:
    return AssignmentConfig(
        salt="plan-2024",
        holdout_share=0.1,
        experiments=(
            ExperimentConfig(
                name="ranker",
                layer="ranking",
                traffic=0.6,
                arms=(ArmConfig(name="control", weight=1), ArmConfig(name="treatment", weight=1)),
            ),
            ExperimentConfig(
                name="policy",
                layer="ranking",
                traffic=0.3,
                arms=(ArmConfig(name="greedy", weight=3), ArmConfig(name="softmax", weight=1)),
            ),
            ExperimentConfig(
                name="copy",
                layer="messaging",
                arms=(
                    ArmConfig(name="a", weight=1),
                    ArmConfig(name="b", weight=1),
                    ArmConfig(name="c", weight=2),
                ),
            ),
        ),
    )


ASSIGNMENT_VECTORS = [
    ("borrower-0", ("policy", "softmax"), ("copy", "c"), False),
    ("borrower-2", (None, None), (None, None), True),
    ("borrower-3", ("policy", "greedy"), ("copy", "c"), False),
    ("borrower-4", ("ranker", "control"), ("copy", "b"), False),
    ("borrower-7", (None, None), ("copy", "a"), False),
    ("borrower-8", ("ranker", "treatment"), ("copy", "c"), False),
]


@pytest.mark.parametrize(("unit", "salt", "expected"), BUCKET_VECTORS)
def test_bucket_matches_published_vectors(unit: str | int, salt: str, expected: float) -> None:
    assert bucket(unit, salt) == expected


def test_bucket_is_sha256_of_salt_colon_unit_top_53_bits() -> None:
    """The documented formula, recomputed independently."""
    digest = hashlib.sha256(b"rollout-7:borrower-1").digest()
    assert bucket("borrower-1", "rollout-7") == (int.from_bytes(digest[:8], "big") >> 11) / 2**53


@pytest.mark.parametrize(("unit", "ranking", "messaging", "holdout"), ASSIGNMENT_VECTORS)
def test_plan_assigns_published_arms(
    unit: str, ranking: tuple[str | None, str | None], messaging: tuple, holdout: bool
) -> None:
    result = Assigner(_plan()).assign_all(unit)
    assert (result["ranking"].experiment, result["ranking"].arm) == ranking
    assert (result["messaging"].experiment, result["messaging"].arm) == messaging
    assert result["ranking"].holdout is holdout


def test_buckets_are_uniform_on_unit_interval() -> None:
    values = np.array([bucket(u, "uniformity") for u in UNITS])
    assert values.min() >= 0.0 and values.max() < 1.0
    assert stats.kstest(values, "uniform").pvalue > 0.01


@pytest.mark.parametrize("weights", [[1, 1], [9, 1], [1, 2, 3, 4]])
def test_weighted_arms_receive_their_share(weights: list[float]) -> None:
    picks = [pick_weighted(bucket(u, "weights"), weights) for u in UNITS]
    counts = np.bincount(picks, minlength=len(weights))
    expected = len(UNITS) * np.array(weights) / sum(weights)
    assert stats.chisquare(counts, expected).pvalue > 0.001


def test_layers_are_independent_chi_square() -> None:
    """Arms in two layers are independent (among units outside the global holdout)."""
    assigner = Assigner(_plan())
    pairs = [assigner.assign_all(u) for u in UNITS if not assigner.in_holdout(u)]
    ranking = [p["ranking"].arm or "none" for p in pairs]
    messaging = [p["messaging"].arm for p in pairs]
    assert stats.chi2_contingency(_contingency(ranking, messaging)).pvalue > 0.01


def test_same_salt_in_two_layers_would_collide() -> None:
    """The independence test has power: reusing one hash for both splits is caught."""
    first = [pick_weighted(bucket(u, "same"), [1, 1]) for u in UNITS]
    second = [pick_weighted(bucket(u, "same"), [1, 1, 2]) for u in UNITS]
    assert stats.chi2_contingency(_contingency(first, second)).pvalue < 1e-6


def _contingency(a: list, b: list) -> np.ndarray:
    rows, cols = sorted(set(map(str, a))), sorted(set(map(str, b)))
    table = np.zeros((len(rows), len(cols)))
    for x, y in zip(a, b, strict=True):
        table[rows.index(str(x)), cols.index(str(y))] += 1
    return table


def test_experiments_in_a_layer_are_exclusive_with_planned_traffic() -> None:
    assigner = Assigner(_plan())
    results = [assigner.assign(u, "ranking") for u in UNITS]
    enrolled = [r for r in results if not r.holdout]
    share = {
        name: sum(r.experiment == name for r in enrolled) / len(enrolled)
        for name in ("ranker", "policy", None)
    }
    assert share["ranker"] == pytest.approx(0.6, abs=0.015)
    assert share["policy"] == pytest.approx(0.3, abs=0.015)
    assert share[None] == pytest.approx(0.1, abs=0.015)


def test_global_holdout_gets_no_experiment_in_any_layer() -> None:
    assigner = Assigner(_plan())
    held = [u for u in UNITS if assigner.in_holdout(u)]
    assert len(held) / len(UNITS) == pytest.approx(0.1, abs=0.01)
    for unit in held[:500]:
        assert all(
            a.experiment is None and a.arm is None for a in assigner.assign_all(unit).values()
        )


def test_ramping_traffic_up_keeps_enrolled_units_in_their_arm() -> None:
    def plan(traffic: float) -> Assigner:
        arms = (ArmConfig(name="control", weight=1), ArmConfig(name="treatment", weight=1))
        return Assigner(
            AssignmentConfig(
                salt="ramp", experiments=(ExperimentConfig(name="e", traffic=traffic, arms=arms),)
            )
        )

    small, large = plan(0.2), plan(0.5)
    before = {u: small.arm(u, "e") for u in UNITS[:5000]}
    enrolled = {u: arm for u, arm in before.items() if arm is not None}
    assert 0.17 < len(enrolled) / 5000 < 0.23
    assert all(large.arm(u, "e") == arm for u, arm in enrolled.items())


def test_assignment_is_independent_of_unit_id_type() -> None:
    assert bucket(42, "s") == bucket("42", "s")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arms": (ArmConfig(name="a", weight=1), ArmConfig(name="a", weight=2))}, "unique"),
        ({"arms": ()}, "at least 1"),
        ({"arms": (ArmConfig(name="a", weight=1),), "traffic": 0.0}, "greater than 0"),
    ],
)
def test_invalid_experiment_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExperimentConfig(name="e", **kwargs)


def test_arm_weight_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="weight"):
        ArmConfig(name="a", weight=0)


def test_layer_traffic_over_one_names_layer_and_shares() -> None:
    arms = (ArmConfig(name="a", weight=1),)
    with pytest.raises(ValidationError, match=r"layer 'l'.*1\.2.*'x': 0\.7.*'y': 0\.5"):
        AssignmentConfig(
            salt="s",
            experiments=(
                ExperimentConfig(name="x", layer="l", traffic=0.7, arms=arms),
                ExperimentConfig(name="y", layer="l", traffic=0.5, arms=arms),
            ),
        )


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda a: a.assign("u", "no-such-layer"), "layer"),
        (lambda a: a.arm("u", "no-such-experiment"), "experiment"),
    ],
)
def test_unknown_layer_or_experiment_is_invalid_input(call, argument: str) -> None:
    with pytest.raises(InvalidInput) as info:
        call(Assigner(_plan()))
    assert info.value.argument == argument
