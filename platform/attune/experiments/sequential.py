"""Always-valid inference for experiments that are looked at every day.

A fixed-horizon test read daily rejects a true null far more often than ``alpha``
(every look is another chance). This module uses the normal-mixture sequential
probability ratio test (mSPRT, Johari et al. 2017; Robbins' normal mixture): with the
difference of means ``d`` estimated with variance ``V`` and a N(0, tau2) mixture over
the true effect,

    Lambda = sqrt(V / (V + tau2)) * exp(tau2 * d**2 / (2 * V * (V + tau2)))

is a martingale under the null, so ``P(sup_t Lambda_t >= 1/alpha) <= alpha``
(Ville's inequality). Inverting it gives a confidence *sequence*: intervals that cover
the true effect at every look simultaneously with probability ``1 - alpha``. ``V`` is
the plug-in (CLT) variance, so the guarantee is asymptotic, as for every two-sample
test on conversion rates; :func:`simulate_aa_peeking` measures the actual error rate.

``tau2`` sets where the boundary is tightest; :func:`mixture_tau2` picks the value that
minimizes the interval's width at a planned horizon (Waudby-Smith et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from attune.errors import ArgumentError
from attune.experiments.analysis import Moments, compare


def mixture_tau2(*, alpha: float, variance_at_horizon: float) -> float:
    """Mixture variance that makes the confidence sequence tightest at the planned horizon.

    ``variance_at_horizon`` is the variance of the estimated difference once all the
    planned units are in (for example ``2 * p * (1 - p) / n_per_arm``).
    """
    _check_alpha(alpha)
    if not variance_at_horizon > 0:
        raise ArgumentError(
            argument="variance_at_horizon", value=variance_at_horizon, problem="must be > 0"
        )
    log_term = -2 * math.log(alpha)
    return (log_term + math.log(1 + log_term)) * variance_at_horizon


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ArgumentError(argument="alpha", value=alpha, problem="must be in (0, 1)")


def log_mixture_ratio(estimate: np.ndarray, variance: np.ndarray, *, tau2: float) -> np.ndarray:
    """log Lambda of the mSPRT against ``effect == 0`` (elementwise; 0 where variance is 0)."""
    d = np.asarray(estimate, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    safe = np.where(v > 0, v, 1.0)
    out = 0.5 * np.log(safe / (safe + tau2)) + tau2 * d**2 / (2 * safe * (safe + tau2))
    return np.where(v > 0, out, 0.0)


def confidence_sequence(
    estimate: np.ndarray, variance: np.ndarray, *, alpha: float, tau2: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of the ``1 - alpha`` confidence sequence at each look (elementwise)."""
    _check_alpha(alpha)
    d = np.asarray(estimate, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    half = np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log1p(tau2 / v)))
    return d - half, d + half


def always_valid_p_values(
    estimates: np.ndarray, variances: np.ndarray, *, tau2: float
) -> np.ndarray:
    """Always-valid p-values along the last axis: running minimum of ``min(1, 1/Lambda)``."""
    log_lam = log_mixture_ratio(estimates, variances, tau2=tau2)
    p = np.minimum(1.0, np.exp(-log_lam))
    return np.minimum.accumulate(p, axis=-1)


@dataclass(frozen=True)
class Look:
    """The cumulative comparison at one look (for example one day)."""

    label: str
    n_control: int
    n_treatment: int
    absolute: float
    #: Always-valid interval (confidence sequence): safe to act on at any look.
    cs_low: float
    cs_high: float
    #: Fixed-horizon interval: valid only at a single pre-planned look.
    fixed_low: float
    fixed_high: float
    p_value: float
    fixed_p_value: float


def sequential_lift(
    looks: Sequence[tuple[str, Moments, Moments]],
    *,
    alpha: float = 0.05,
    tau2: float | None = None,
    cuped: bool = False,
) -> list[Look]:
    """Cumulative lift at each look with its confidence sequence and always-valid p-value.

    ``looks`` are ``(label, control, treatment)`` with *cumulative* Moments, in time
    order. Without ``tau2`` the mixture is tuned for the last look (the planned horizon
    being the data at hand); it depends only on the variance, never on the effect.
    """
    _check_alpha(alpha)
    if not looks:
        raise ArgumentError(argument="looks", value=0, problem="need at least one look")
    lifts = [compare(c, t, alpha=alpha, cuped=cuped) for _, c, t in looks]
    diffs = np.array([lift.absolute for lift in lifts])
    variances = np.array([lift.treatment.std_err**2 + lift.control.std_err**2 for lift in lifts])
    if tau2 is None:
        tau2 = mixture_tau2(alpha=alpha, variance_at_horizon=max(float(variances[-1]), 1e-300))
    low, high = confidence_sequence(diffs, variances, alpha=alpha, tau2=tau2)
    p_values = always_valid_p_values(diffs, variances, tau2=tau2)
    return [
        Look(
            label=label,
            n_control=lift.control.n,
            n_treatment=lift.treatment.n,
            absolute=lift.absolute,
            cs_low=float(lo),
            cs_high=float(hi),
            fixed_low=lift.abs_ci[0],
            fixed_high=lift.abs_ci[1],
            p_value=float(p),
            fixed_p_value=lift.p_value,
        )
        for (label, _, _), lift, lo, hi, p in zip(looks, lifts, low, high, p_values, strict=True)
    ]


@dataclass(frozen=True)
class PeekingResult:
    """False-positive rates of A/A experiments looked at after every period."""

    n_simulations: int
    looks: int
    alpha: float
    sequential_fpr: float
    fixed_fpr: float


def simulate_aa_peeking(
    *,
    n_simulations: int = 2000,
    looks: int = 14,
    units_per_look: int = 200,
    base_rate: float = 0.3,
    alpha: float = 0.05,
    seed: int = 0,
) -> PeekingResult:
    """Simulate A/A tests on a conversion metric, peeking after each look.

    Each simulation adds ``units_per_look`` units per arm per look, both arms with the
    same ``base_rate``; an experiment is a false positive if *any* look rejects. Returns
    the rate for the mSPRT (tuned for the last look) and for the fixed-horizon z-test.
    """
    _check_alpha(alpha)
    for name, value in (
        ("n_simulations", n_simulations),
        ("looks", looks),
        ("units_per_look", units_per_look),
    ):
        if value < 1:
            raise ArgumentError(argument=name, value=value, problem="must be >= 1")
    if not 0 < base_rate < 1:
        raise ArgumentError(argument="base_rate", value=base_rate, problem="must be in (0, 1)")
    rng = np.random.default_rng(seed)
    successes = rng.binomial(units_per_look, base_rate, size=(n_simulations, looks, 2))
    n = units_per_look * np.arange(1, looks + 1, dtype=np.float64)
    rates = successes.cumsum(axis=1) / n[None, :, None]
    variances = (rates * (1 - rates) / n[None, :, None]).sum(axis=2)
    diffs = rates[:, :, 1] - rates[:, :, 0]
    tau2 = mixture_tau2(
        alpha=alpha, variance_at_horizon=2 * base_rate * (1 - base_rate) / float(n[-1])
    )
    z = float(stats.norm.ppf(1 - alpha / 2))
    fixed = np.abs(diffs) > z * np.sqrt(variances)
    sequential = log_mixture_ratio(diffs, variances, tau2=tau2) >= math.log(1 / alpha)
    return PeekingResult(
        n_simulations=n_simulations,
        looks=looks,
        alpha=alpha,
        sequential_fpr=float(sequential.any(axis=1).mean()),
        fixed_fpr=float(fixed.any(axis=1).mean()),
    )
