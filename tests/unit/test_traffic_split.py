"""Sticky canary assignment and shadow sampling (attune.serving.traffic_split)."""

from __future__ import annotations

import math

import pytest

from attune.errors import ConfigError
from attune.experiments.assignment import bucket, hash_borrower
from attune.serving.traffic_split import TrafficSplit

BORROWERS = range(20_000)


def _canary_set(split: TrafficSplit) -> set[int]:
    return {b for b in BORROWERS if split.arm(b) == "canary"}


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5, 0.9])
def test_canary_takes_its_share_of_borrowers(share: float) -> None:
    """A share s puts s of distinct borrowers on the canary (within 3 standard errors)."""
    taken = len(_canary_set(TrafficSplit(salt="r1", canary_share=share))) / len(BORROWERS)
    tolerance = 3 * math.sqrt(share * (1 - share) / len(BORROWERS))
    assert abs(taken - share) < tolerance


def test_a_borrower_keeps_its_arm_across_calls_and_replicas() -> None:
    """The arm is a pure function of salt and id: two split objects agree on every borrower."""
    one, other = (
        TrafficSplit(salt="r1", canary_share=0.3),
        TrafficSplit(salt="r1", canary_share=0.3),
    )
    assert all(one.arm(b) == other.arm(b) == one.arm(b) for b in range(2_000))


def test_raising_the_share_only_adds_borrowers_to_the_canary() -> None:
    small = _canary_set(TrafficSplit(salt="r1", canary_share=0.1))
    large = _canary_set(TrafficSplit(salt="r1", canary_share=0.3))
    assert small < large


def test_a_new_salt_draws_a_fresh_canary_population() -> None:
    """Two salts at 50 % overlap like independent draws (~25 %), not like the same set."""
    first = _canary_set(TrafficSplit(salt="r1", canary_share=0.5))
    second = _canary_set(TrafficSplit(salt="r2", canary_share=0.5))
    overlap = len(first & second) / len(BORROWERS)
    assert 0.23 < overlap < 0.27


@pytest.mark.parametrize(("share", "expected"), [(0.0, "champion"), (1.0, "canary")])
def test_extreme_shares_send_everyone_to_one_arm(share: float, expected: str) -> None:
    split = TrafficSplit(salt="r1", canary_share=share)
    assert {split.arm(b) for b in range(1_000)} == {expected}


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("canary_share", {"canary_share": -0.1}),
        ("canary_share", {"canary_share": 1.5}),
        ("canary_share", {"canary_share": float("nan")}),
        ("shadow_share", {"shadow_share": 2.0}),
        ("salt", {"salt": ""}),
    ],
)
def test_invalid_splits_are_refused_naming_the_field(field: str, kwargs: dict) -> None:
    with pytest.raises(ConfigError) as err:
        TrafficSplit(**{"salt": "r1", **kwargs})
    assert err.value.field == field


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_shadow_mirrors_its_share_of_requests(share: float) -> None:
    split = TrafficSplit(salt="r1", shadow_share=share)
    mirrored = sum(split.mirror(f"decision-{i}") for i in range(10_000)) / 10_000
    assert abs(mirrored - share) < 0.015


def test_the_canary_is_the_assignment_bucket_of_the_rollout_salt() -> None:
    # One assignment hash: a borrower is on the canary exactly when the experiments'
    # bucket of its id under the rollout salt is below the share (so batch campaigns and
    # the served app agree on arms).
    split = TrafficSplit(salt="r1", canary_share=0.3)
    for borrower in range(2_000):
        expected = "canary" if bucket(borrower, "r1") < 0.3 else "champion"
        assert split.arm(borrower) == expected
    mirror = TrafficSplit(salt="r1", shadow_share=0.3)
    for key in map(str, range(2_000)):
        assert mirror.mirror(key) == (bucket(key, "shadow/r1") < 0.3)


def test_logged_borrower_hash_is_salted_and_hides_the_id() -> None:
    digest = hash_borrower(123456789, salt="secret")
    assert digest == hash_borrower(123456789, salt="secret")
    assert digest != hash_borrower(123456789, salt="other")
    assert "123456789" not in digest and len(digest) == 16


def test_the_fingerprint_names_a_salt_without_containing_it() -> None:
    """Replicas of one rollout show the same fingerprint; it differs per salt and hides it."""
    a, b = TrafficSplit(salt="canary-v1-0123abcd"), TrafficSplit(salt="canary-v1-0123abcd")
    other = TrafficSplit(salt="canary-v1-4567ef00")
    assert a.fingerprint == b.fingerprint != other.fingerprint
    assert "canary" not in a.fingerprint and len(a.fingerprint) == 12
