"""attune.simulator.logging_policy: legacy slates and their exact propensities."""

from __future__ import annotations

import numpy as np
import pytest

from attune.data.schema import CHANNELS, OPTION_IDS, SLATE_SIZE, TOUCHPOINTS
from attune.simulator import logging_policy as lp

N_OPT = len(OPTION_IDS)
#: Score rows spanning flat, peaked and tied preferences.
SCORES = np.array(
    [
        [0.0] * N_OPT,
        [3.0, 0.0, 2.5, 0.0, 1.5, 0.0, 0.5, 0.0],
        [0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 4.0, 4.0],
    ]
)


@pytest.mark.parametrize("epsilon", [0.05, 0.2, 1.0])
def test_marginals_are_a_distribution_over_options_at_each_position(epsilon: float) -> None:
    marg = lp.slate_marginals(SCORES, epsilon=epsilon)
    assert marg.shape == (len(SCORES), N_OPT, SLATE_SIZE)
    assert marg.sum(axis=1) == pytest.approx(np.ones((len(SCORES), SLATE_SIZE)))
    assert (marg.sum(axis=2) <= 1.0 + 1e-12).all()  # an option fills at most one position
    assert marg.min() >= epsilon / N_OPT - 1e-12


def test_full_exploration_is_uniform() -> None:
    assert lp.slate_marginals(SCORES, epsilon=1.0) == pytest.approx(
        np.full((3, N_OPT, 3), 1 / N_OPT)
    )


def test_plackett_luce_marginals_match_the_brute_force_sum_over_slates() -> None:
    w = np.exp(SCORES[1]) / np.exp(SCORES[1]).sum()
    expected = np.zeros((N_OPT, SLATE_SIZE))
    for a in range(N_OPT):
        for b in set(range(N_OPT)) - {a}:
            for c in set(range(N_OPT)) - {a, b}:
                p = w[a] * w[b] / (1 - w[a]) * w[c] / (1 - w[a] - w[b])
                expected[a, 0] += p
                expected[b, 1] += p
                expected[c, 2] += p
    assert lp.plackett_luce_marginals(SCORES[1:2])[0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("epsilon", [0.2, 0.5])
def test_logged_propensities_match_empirical_slate_frequencies(epsilon: float) -> None:
    """Over many seeded draws each (option, position) frequency is within 4.5 standard errors."""
    draws = 100_000
    rng = np.random.default_rng(12)
    for row in SCORES:
        slates = lp.draw_slates(np.tile(row, (draws, 1)), epsilon=epsilon, rng=rng)
        freq = (
            np.stack([np.bincount(slates[:, k], minlength=N_OPT) for k in range(SLATE_SIZE)], 1)
            / draws
        )
        exact = lp.slate_marginals(row[None], epsilon=epsilon)[0]
        stderr = np.sqrt(exact * (1 - exact) / draws)
        assert (np.abs(freq - exact) <= 4.5 * stderr + 1e-9).all(), np.abs(freq - exact) / stderr


def test_sampled_slates_hold_distinct_options_with_their_exact_propensities() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(0, 2, size=(500, N_OPT))
    slates, props = lp.sample_slates(scores, epsilon=0.2, rng=rng)
    assert slates.shape == props.shape == (500, SLATE_SIZE)
    assert all(len(set(s)) == SLATE_SIZE for s in slates.tolist())
    marg = lp.slate_marginals(scores, epsilon=0.2)
    rows = np.arange(500)[:, None]
    assert np.array_equal(props, marg[rows, slates, np.arange(SLATE_SIZE)])
    assert ((props > 0) & (props <= 1)).all()


def _legacy(
    dpd: float,
    *,
    autopay: bool = False,
    hardship: bool = False,
    channel: str = "sms",
    touch: str = "app",
) -> str:
    scores = lp.legacy_scores(
        dpd=np.array([dpd]),
        autopay=np.array([autopay]),
        hardship=np.array([hardship]),
        preferred_channel=np.array([CHANNELS.index(channel)]),
        touchpoint=np.array([TOUCHPOINTS.index(touch)]),
    )
    return OPTION_IDS[int(np.argmax(scores[0]))]


@pytest.mark.parametrize(
    ("kwargs", "first"),
    [
        ({"dpd": 45.0}, "payment_plan"),
        ({"dpd": 10.0}, "pay_now"),
        ({"dpd": 0.0}, "autopay_enroll"),
        ({"dpd": 0.0, "autopay": True, "channel": "email"}, "reminder_email"),
        ({"dpd": 0.0, "autopay": True, "hardship": True}, "hardship_deferral"),
    ],
)
def test_legacy_rules_put_the_sensible_option_first(kwargs: dict, first: str) -> None:
    assert _legacy(**kwargs) == first
