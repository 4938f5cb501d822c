"""Off-policy evaluation: the value of a target policy estimated from logged decisions.

One entry point, :func:`estimate_policy_value`, with estimators

=============  ==================================================================
``ips``        inverse propensity scoring: mean of ``w * r``, ``w = pi(a) / p(a)``
``snips``      self-normalized IPS: ``sum(w * r) / sum(w)`` (bounded, small bias)
``dm``         direct method: ``sum_a pi(a) * q_hat(a)`` (needs ``estimated_rewards``)
``dr``         doubly robust: DM plus the IPS-weighted residual ``w * (r - q_hat(a))``
``switch_dr``  DR whose residual is dropped where ``w > SWITCH_DR_MAX_WEIGHT``
               (Wang et al. 2017): trades a little bias for much less variance
=============  ==================================================================

Estimators that need ``estimated_rewards`` are left out of the result when it is None.

**Slates.** With ``target_probs`` of shape ``(n, n_actions, n_positions)`` each logged
row is one shown ``(action, position)`` of a slate, ``propensities`` are the logging
policy's marginal probability of that action at that position, and
``target_probs[i, a, k]`` is the target policy's marginal probability of putting ``a``
at ``k``. Each position is estimated on its own rows and the value is the sum over
positions (the expected total reward of a slate): the "independent IPS" of Li et al.
(2018), unbiased when a position's reward depends only on the action shown there
(the position-based click model). Every logged slate should log all of its positions.

**Intervals.** Percentile bootstrap over logged rows (stratified by position), seeded:
the same inputs and ``seed`` give the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attune.errors import ArgumentError
from attune.experiments.validation import (
    as_array,
    as_index_array,
    check_length,
    check_probabilities,
)

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dm", "dr", "switch_dr")
#: Estimators that need a reward model (``estimated_rewards``).
MODEL_BASED: frozenset[str] = frozenset({"dm", "dr", "switch_dr"})
#: Importance weights above this drop their DR correction in ``switch_dr``.
SWITCH_DR_MAX_WEIGHT = 20.0
#: Bootstrap replicates are drawn in chunks holding about this many row indices.
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class PolicyEstimate:
    """An estimated policy value with its 95 % percentile-bootstrap interval."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    std_err: float

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "std_err": self.std_err,
        }


@dataclass(frozen=True)
class _Terms:
    """Per-row ingredients: importance weight, reward, DM term and residual."""

    w: np.ndarray
    r: np.ndarray
    dm: np.ndarray | None
    residual: np.ndarray | None


def estimate_policy_value(
    *,
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    target_probs: np.ndarray,
    positions: np.ndarray | None = None,
    estimated_rewards: np.ndarray | None = None,
    estimators: Sequence[str] = ("ips", "snips", "dm", "dr"),
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, PolicyEstimate]:
    """Estimate the target policy's value from logged ``(action, reward, propensity)`` rows.

    Shapes: ``actions``, ``rewards``, ``propensities`` and ``positions`` are ``(n,)``;
    ``target_probs`` and ``estimated_rewards`` are ``(n, n_actions)`` or, for slates,
    ``(n, n_actions, n_positions)`` (then ``positions`` is required). Returns one
    :class:`PolicyEstimate` per requested estimator, in the requested order, leaving
    out model-based ones when ``estimated_rewards`` is None.

    Raises :class:`ArgumentError` (an ``InvalidInput``) naming the argument for a bad
    shape, a length mismatch, a propensity outside (0, 1], a target probability outside
    [0, 1] or not summing to 1 per position, an action or position out of range, a
    position no row was logged at, an unknown estimator or ``n_bootstrap < 2``.
    """
    names = _check_estimators(estimators)
    if n_bootstrap < 2:
        raise ArgumentError(argument="n_bootstrap", value=n_bootstrap, problem="must be >= 2")
    probs = as_array(target_probs, argument="target_probs", ndim=(2, 3), dtype=np.float64)
    slate = probs.ndim == 3
    if not slate:
        probs = probs[:, :, None]
    n, n_actions, n_positions = probs.shape
    if n == 0:
        raise ArgumentError(argument="actions", value=0, problem="no logged rows")
    a = as_index_array(actions, argument="actions", upper=n_actions)
    check_length(a, argument="actions", n=n, against="target_probs")
    r = as_array(rewards, argument="rewards", ndim=1, dtype=np.float64)
    check_length(r, argument="rewards", n=n, against="target_probs")
    p = as_array(propensities, argument="propensities", ndim=1, dtype=np.float64)
    check_length(p, argument="propensities", n=n, against="target_probs")
    check_probabilities(p, argument="propensities", low_open=True)
    check_probabilities(probs, argument="target_probs", low_open=False)
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1).ravel() > 1e-6)
    if bad.size:
        raise ArgumentError(
            argument="target_probs",
            value=float(sums.ravel()[bad[0]]),
            problem=f"probabilities over actions must sum to 1 (row {int(bad[0]) // n_positions})",
        )
    if slate:
        if positions is None:
            raise ArgumentError(
                argument="positions", value=None, problem="required with 3-D target_probs"
            )
        k = as_index_array(positions, argument="positions", upper=n_positions)
        check_length(k, argument="positions", n=n, against="target_probs")
    elif positions is not None:
        raise ArgumentError(
            argument="positions", value="given", problem="only meaningful with 3-D target_probs"
        )
    else:
        k = np.zeros(n, dtype=np.int64)
    missing = sorted(set(range(n_positions)) - set(np.unique(k).tolist()))
    if missing:
        raise ArgumentError(argument="positions", value=missing, problem="no logged rows there")

    q = None
    if estimated_rewards is not None:
        q = as_array(estimated_rewards, argument="estimated_rewards", ndim=(2, 3), dtype=np.float64)
        if q.shape != (probs.shape if slate else probs.shape[:2]):
            raise ArgumentError(
                argument="estimated_rewards",
                value=q.shape,
                problem=f"must have the shape of target_probs {np.shape(target_probs)}",
            )
        if not slate:
            q = q[:, :, None]
    else:
        names = [e for e in names if e not in MODEL_BASED]
    if not names:
        return {}

    rows = np.arange(n)
    w = probs[rows, a, k] / p
    dm = residual = None
    if q is not None:
        dm = np.einsum("ia,ia->i", probs[rows, :, k], q[rows, :, k])
        residual = r - q[rows, a, k]
    terms = _Terms(w=w, r=r, dm=dm, residual=residual)
    strata = [np.flatnonzero(k == pos) for pos in range(n_positions)]
    point = {e: _value(e, terms, strata) for e in names}
    replicates = _bootstrap(names, terms, strata, n_bootstrap=n_bootstrap, seed=seed)
    out: dict[str, PolicyEstimate] = {}
    for e in names:
        low, high = np.quantile(replicates[e], [0.025, 0.975])
        out[e] = PolicyEstimate(
            estimator=e,
            value=point[e],
            ci_low=float(low),
            ci_high=float(high),
            n=n,
            std_err=float(np.std(replicates[e], ddof=1)),
        )
    return out


def _check_estimators(estimators: Sequence[str]) -> list[str]:
    if isinstance(estimators, str):
        raise ArgumentError(
            argument="estimators", value=estimators, problem="a sequence of names, not a string"
        )
    names = list(dict.fromkeys(estimators))
    unknown = [e for e in names if e not in ESTIMATORS]
    if unknown or not names:
        raise ArgumentError(
            argument="estimators", value=list(estimators), problem=f"choose from {ESTIMATORS}"
        )
    return names


def _row_terms(estimator: str, t: _Terms, idx: np.ndarray) -> np.ndarray:
    """Per-row contributions (whose mean is the estimate) of a mean-type estimator."""
    if estimator == "ips":
        return t.w[idx] * t.r[idx]
    assert t.dm is not None and t.residual is not None  # model-based estimators only
    if estimator == "dm":
        return t.dm[idx]
    correction = t.w[idx] * t.residual[idx]
    if estimator == "switch_dr":
        correction = np.where(t.w[idx] <= SWITCH_DR_MAX_WEIGHT, correction, 0.0)
    return t.dm[idx] + correction


def _value(estimator: str, t: _Terms, strata: list[np.ndarray]) -> float:
    """The estimate: per-position estimates summed over positions."""
    total = 0.0
    for idx in strata:
        if estimator == "snips":
            weight = t.w[idx].sum()
            total += float((t.w[idx] * t.r[idx]).sum() / weight) if weight > 0 else 0.0
        else:
            total += float(_row_terms(estimator, t, idx).mean())
    return total


def _bootstrap(
    names: list[str],
    t: _Terms,
    strata: list[np.ndarray],
    *,
    n_bootstrap: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """``n_bootstrap`` replicate estimates per estimator, resampling rows within positions."""
    rng = np.random.default_rng(seed)
    out = {e: np.zeros(n_bootstrap) for e in names}
    n = sum(s.size for s in strata)
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        for idx in strata:
            draw = idx[rng.integers(0, idx.size, size=(b, idx.size))]
            for e in names:
                if e == "snips":
                    weight = t.w[draw].sum(axis=1)
                    num = (t.w[draw] * t.r[draw]).sum(axis=1)
                    ratio = np.divide(num, weight, out=np.zeros(b), where=weight > 0)
                    out[e][start : start + b] += ratio
                else:
                    out[e][start : start + b] += _row_terms(e, t, draw).mean(axis=1)
    return out
