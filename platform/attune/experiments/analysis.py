"""A/B analysis on sufficient statistics: arm means, lift with intervals, SRM, CUPED.

Everything here works on :class:`Moments` (count, sums, sums of squares and cross
products of a metric ``y`` and an optional pre-period covariate ``x``), so the same
math runs on numpy arrays in a unit test and on per-(day, arm) aggregates computed by
Ray Data over billions of logged decisions (:mod:`attune.experiments.report`).
Moments add, so daily aggregates accumulate into the running totals a sequential test
(:mod:`attune.experiments.sequential`) looks at every day.

Intervals are normal-approximation (Welch) intervals for the difference of means; the
relative lift ``treatment / control - 1`` gets its interval from the delta method.
CUPED (Deng et al., 2013) subtracts ``theta * (x - mean(x))`` with ``theta`` pooled over
the arms; the pre-period covariate cannot be moved by the treatment, so the estimate
stays unbiased while its variance falls by ``corr(x, y)**2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from attune.errors import ArgumentError
from attune.experiments.validation import as_array, check_length

#: Sample-ratio mismatch is flagged below this chi-square p-value (a common industry bar:
#: strict enough that a flag means a broken pipeline, not bad luck).
SRM_P_THRESHOLD = 1e-3


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of metric ``y`` (and covariate ``x``) over ``n`` units."""

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_xy: float = 0.0

    @classmethod
    def of(cls, y: np.ndarray, x: np.ndarray | None = None) -> Moments:
        """Moments of the 1-D arrays ``y`` (metric) and ``x`` (pre-period covariate)."""
        yv = as_array(y, argument="y", ndim=1, dtype=np.float64)
        if x is None:
            return cls(n=yv.size, sum_y=float(yv.sum()), sum_y2=float(yv @ yv))
        xv = as_array(x, argument="x", ndim=1, dtype=np.float64)
        check_length(xv, argument="x", n=yv.size, against="y")
        return cls(
            n=yv.size,
            sum_y=float(yv.sum()),
            sum_y2=float(yv @ yv),
            sum_x=float(xv.sum()),
            sum_x2=float(xv @ xv),
            sum_xy=float(xv @ yv),
        )

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            n=self.n + other.n,
            sum_y=self.sum_y + other.sum_y,
            sum_y2=self.sum_y2 + other.sum_y2,
            sum_x=self.sum_x + other.sum_x,
            sum_x2=self.sum_x2 + other.sum_x2,
            sum_xy=self.sum_xy + other.sum_xy,
        )

    @property
    def mean_y(self) -> float:
        return self.sum_y / self.n if self.n else math.nan

    @property
    def mean_x(self) -> float:
        return self.sum_x / self.n if self.n else math.nan

    def _co(self, sum_ab: float, sum_a: float, sum_b: float) -> float:
        """Sample co-moment (ddof=1); NaN below two units."""
        if self.n < 2:
            return math.nan
        return (sum_ab - sum_a * sum_b / self.n) / (self.n - 1)

    @property
    def var_y(self) -> float:
        """Sample variance of y (ddof=1; clipped at 0 against rounding)."""
        return max(self._co(self.sum_y2, self.sum_y, self.sum_y), 0.0)

    @property
    def var_x(self) -> float:
        return max(self._co(self.sum_x2, self.sum_x, self.sum_x), 0.0)

    @property
    def cov_xy(self) -> float:
        return self._co(self.sum_xy, self.sum_x, self.sum_y)


@dataclass(frozen=True)
class ArmSummary:
    """One arm's mean and the standard error of that mean (CUPED-adjusted when asked)."""

    arm: str
    n: int
    mean: float
    std_err: float


@dataclass(frozen=True)
class Lift:
    """Treatment versus control: absolute and relative lift with ``1 - alpha`` intervals."""

    control: ArmSummary
    treatment: ArmSummary
    absolute: float
    abs_ci: tuple[float, float]
    relative: float
    rel_ci: tuple[float, float]
    p_value: float
    alpha: float
    cuped_theta: float | None = None
    #: Share of the difference's variance CUPED removed (0 without CUPED).
    variance_reduction: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def cuped_theta(arms: Iterable[Moments]) -> float:
    """The CUPED coefficient ``cov(x, y) / var(x)`` pooled over ``arms`` (0 when var(x) = 0)."""
    pooled = sum(arms, Moments(n=0, sum_y=0.0, sum_y2=0.0))
    var_x = pooled.var_x
    if not var_x or math.isnan(var_x):
        return 0.0
    return pooled.cov_xy / var_x


def _adjusted(m: Moments, theta: float, mean_x: float) -> tuple[float, float]:
    """(mean, variance of one unit) of ``y - theta * (x - mean_x)`` in this arm."""
    mean = m.mean_y - theta * (m.mean_x - mean_x)
    var = m.var_y - 2 * theta * m.cov_xy + theta**2 * m.var_x
    return mean, max(var, 0.0)


def summarize(arm: str, m: Moments, *, theta: float = 0.0, mean_x: float = 0.0) -> ArmSummary:
    """Mean and standard error of ``m`` (CUPED-adjusted with ``theta`` around ``mean_x``)."""
    if m.n < 2:
        raise ArgumentError(argument=arm, value=m.n, problem="an arm needs at least 2 units")
    mean, var = _adjusted(m, theta, mean_x) if theta else (m.mean_y, m.var_y)
    return ArmSummary(arm=arm, n=m.n, mean=mean, std_err=math.sqrt(var / m.n))


def compare(
    control: Moments,
    treatment: Moments,
    *,
    alpha: float = 0.05,
    cuped: bool = False,
    names: tuple[str, str] = ("control", "treatment"),
) -> Lift:
    """Lift of ``treatment`` over ``control`` with two-sided ``1 - alpha`` intervals.

    With ``cuped`` the covariate sums of both Moments are used (theta pooled over the
    two arms). The relative interval comes from the delta method and is NaN when the
    control mean is 0. Raises :class:`ArgumentError` for ``alpha`` outside (0, 1) or an
    arm with fewer than 2 units.
    """
    if not 0 < alpha < 1:
        raise ArgumentError(argument="alpha", value=alpha, problem="must be in (0, 1)")
    theta = cuped_theta([control, treatment]) if cuped else 0.0
    mean_x = (control.sum_x + treatment.sum_x) / max(control.n + treatment.n, 1)
    c = summarize(names[0], control, theta=theta, mean_x=mean_x)
    t = summarize(names[1], treatment, theta=theta, mean_x=mean_x)
    z = float(stats.norm.ppf(1 - alpha / 2))
    diff = t.mean - c.mean
    se = math.hypot(t.std_err, c.std_err)
    # with no variance at all the difference is either exactly 0 or certain
    no_noise_p = 1.0 if diff == 0 else 0.0
    p_value = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else no_noise_p
    if c.mean != 0:
        rel = t.mean / c.mean - 1
        rel_se = math.sqrt(t.std_err**2 / c.mean**2 + t.mean**2 * c.std_err**2 / c.mean**4)
        rel_ci = (rel - z * rel_se, rel + z * rel_se)
    else:
        rel, rel_ci = math.nan, (math.nan, math.nan)
    reduction = 0.0
    if cuped:
        raw_se = math.hypot(
            summarize(names[0], control).std_err, summarize(names[1], treatment).std_err
        )
        reduction = 1 - (se / raw_se) ** 2 if raw_se > 0 else 0.0
    return Lift(
        control=c,
        treatment=t,
        absolute=diff,
        abs_ci=(diff - z * se, diff + z * se),
        relative=rel,
        rel_ci=rel_ci,
        p_value=p_value,
        alpha=alpha,
        cuped_theta=theta if cuped else None,
        variance_reduction=reduction,
    )


@dataclass(frozen=True)
class SRMResult:
    """Sample-ratio-mismatch check: chi-square of observed counts against the planned split."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    threshold: float

    @property
    def flagged(self) -> bool:
        return self.p_value < self.threshold


def srm_check(
    observed: Mapping[str, int],
    weights: Mapping[str, float],
    *,
    threshold: float = SRM_P_THRESHOLD,
) -> SRMResult:
    """Chi-square goodness of fit of ``observed`` arm counts to the planned ``weights``.

    ``weights`` are relative (normalized here). A flag (``p < threshold``) means the
    assignment or logging pipeline is broken and the lift must not be trusted. Raises
    :class:`ArgumentError` when the arms of the two mappings differ, a count is
    negative, a weight is not positive, or there are fewer than two arms.
    """
    if set(observed) != set(weights):
        raise ArgumentError(
            argument="observed",
            value=sorted(observed),
            problem=f"arms differ from the planned weights' {sorted(weights)}",
        )
    if len(observed) < 2:
        raise ArgumentError(argument="observed", value=dict(observed), problem="need >= 2 arms")
    arms = sorted(observed)
    counts = np.array([observed[a] for a in arms], dtype=np.float64)
    w = np.array([weights[a] for a in arms], dtype=np.float64)
    if np.any(counts < 0):
        raise ArgumentError(argument="observed", value=dict(observed), problem="negative count")
    if np.any(w <= 0):
        raise ArgumentError(argument="weights", value=dict(weights), problem="must be > 0")
    expected = counts.sum() * w / w.sum()
    chi2, p_value = stats.chisquare(counts, expected)
    return SRMResult(
        observed={a: int(observed[a]) for a in arms},
        expected={a: float(e) for a, e in zip(arms, expected, strict=True)},
        chi2=float(chi2),
        p_value=float(p_value),
        threshold=threshold,
    )
