"""The legacy logging policy that chose the slates in simulated histories.

It scores every option with sensible servicing rules (delinquent borrowers see the
payment plan and pay-now first, borrowers without autopay see autopay enrollment, a
hardship flag brings hardship help forward, reminders follow the channel on file),
then fills the 3 positions by **Plackett-Luce** sampling over ``softmax(scores)``
(sequential sampling without replacement). With probability ``epsilon`` it explores
instead: a uniformly random slate of 3 distinct options.

The propensity logged for a shown option is its exact marginal probability of being
placed at that position::

    P(o at k) = epsilon / n_options + (1 - epsilon) * PL(o at k)

where, with weights ``w = exp(scores)`` and ``W = sum(w)``::

    PL(o at 1) = w_o / W
    PL(o at 2) = sum_{a != o} w_a / W * w_o / (W - w_a)
    PL(o at 3) = sum_{a, b, o distinct} w_a / W * w_b / (W - w_a) * w_o / (W - w_a - w_b)

so every propensity is at least ``epsilon / n_options`` > 0.
"""

from __future__ import annotations

import numpy as np

from attune.data.schema import CHANNELS, OPTION_IDS, SLATE_SIZE, TOUCHPOINTS
from attune.simulator._behaviour import AUTOPAY, DUE_DATE, HARDSHIP, PAY_NOW, PLAN, REMINDERS

#: Default share of uniformly random (exploration) slates.
DEFAULT_EPSILON = 0.2
_N = len(OPTION_IDS)
#: touchpoint x channel: 1 where a reminder's channel is the touchpoint itself.
_TOUCH_CHANNEL = np.array([[float(c == t) for c in CHANNELS] for t in TOUCHPOINTS])


def legacy_scores(
    *,
    dpd: np.ndarray,
    autopay: np.ndarray,
    hardship: np.ndarray,
    preferred_channel: np.ndarray,
    touchpoint: np.ndarray,
) -> np.ndarray:
    """Rule-based log-weights, shape ``(n, n_options)``, from what the lender sees.

    ``preferred_channel`` indexes :data:`CHANNELS`, ``touchpoint`` :data:`TOUCHPOINTS`.
    """
    n = dpd.shape[0]
    s = np.zeros((n, _N))
    rows = np.arange(n)
    pref = np.asarray(REMINDERS)[preferred_channel]
    late, early, current = dpd >= 30, (dpd > 0) & (dpd < 30), dpd <= 0
    s[:, PLAN] += 3.0 * late + 1.0 * early
    s[:, PAY_NOW] += 2.0 * late + 3.0 * early
    s[:, HARDSHIP] += 1.0 * late + 2.0 * hardship
    s[:, AUTOPAY] += 2.5 * (current & ~autopay)
    s[:, DUE_DATE] += 0.5 * current
    s[rows, pref] += 1.5 * ~late
    s[:, list(REMINDERS)] += 0.5 * _TOUCH_CHANNEL[touchpoint]
    return s


def _weights(scores: np.ndarray) -> np.ndarray:
    w = np.exp(scores - scores.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def plackett_luce_marginals(scores: np.ndarray) -> np.ndarray:
    """Exact P(option at position k) under Plackett-Luce, shape ``(n, n_options, 3)``."""
    w = _weights(scores)  # normalized, so W = 1
    n, k = w.shape
    out = np.zeros((n, k, SLATE_SIZE))
    out[:, :, 0] = w
    not_self = ~np.eye(k, dtype=bool)
    # One first pick ``a`` at a time keeps memory at n * k * k.
    for a in range(k):
        rest_a = 1.0 - w[:, a]
        p_a = w[:, a] / rest_a  # P(a first) / (W - w_a)
        second = p_a[:, None] * w  # P(a first, o second), o != a
        second[:, a] = 0.0
        out[:, :, 1] += second
        # P(a, b, o) = P(a, b) * w_o / (W - w_a - w_b) with a, b, o distinct
        rest_ab = rest_a[:, None] - w
        with np.errstate(divide="ignore", invalid="ignore"):
            third = second[:, :, None] * w[:, None, :] / rest_ab[:, :, None]
        third[:, :, a] = 0.0
        third[:, a, :] = 0.0
        out[:, :, 2] += np.where(not_self[None], third, 0.0).sum(axis=1)
    return out


def slate_marginals(scores: np.ndarray, *, epsilon: float = DEFAULT_EPSILON) -> np.ndarray:
    """Exact P(option at position k) of the logging policy, shape ``(n, n_options, 3)``."""
    return epsilon / _N + (1.0 - epsilon) * plackett_luce_marginals(scores)


def draw_slates(scores: np.ndarray, *, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Draw one slate per row, ``(n, 3)`` option indices by position.

    Plackett-Luce draws use the Gumbel-top-k trick (the order of ``scores + Gumbel``
    noise is a sequential sample without replacement from ``softmax(scores)``).
    """
    n = scores.shape[0]
    gumbel = rng.gumbel(size=(n, _N))
    explore = np.asarray(rng.random(n)) < epsilon
    uniform = rng.random((n, _N))
    keys = np.where(explore[:, None], uniform, scores + gumbel)
    return np.argsort(-keys, axis=1, kind="stable")[:, :SLATE_SIZE]


def sample_slates(
    scores: np.ndarray, *, epsilon: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one slate per row; returns ``(slates, propensities)``, both ``(n, 3)``.

    ``slates`` holds option indices in position order; ``propensities`` the exact
    P(that option at that position) (see the module docstring).
    """
    slates = draw_slates(scores, epsilon=epsilon, rng=rng)
    marg = slate_marginals(scores, epsilon=epsilon)
    rows = np.arange(scores.shape[0])[:, None]
    return slates, marg[rows, slates, np.arange(SLATE_SIZE)[None, :]]
