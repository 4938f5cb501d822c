"""A/B analysis: lift intervals, SRM, CUPED, sequential testing under daily peeking."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attune.errors import InvalidInput
from attune.experiments.analysis import Moments, compare, cuped_theta, srm_check
from attune.experiments.report import AnalyzeConfig, analyze_aggregates, plot_lift_over_time
from attune.experiments.sequential import (
    always_valid_p_values,
    confidence_sequence,
    mixture_tau2,
    sequential_lift,
    simulate_aa_peeking,
)

# ----------------------------------------------------------------------------- moments


def test_moments_match_numpy_and_add_like_concatenation() -> None:
    rng = np.random.default_rng(1)
    y, x = rng.normal(3, 2, 500), rng.normal(size=500)
    a, b = Moments.of(y[:200], x[:200]), Moments.of(y[200:], x[200:])
    whole = a + b
    assert whole.mean_y == pytest.approx(y.mean())
    assert whole.var_y == pytest.approx(y.var(ddof=1))
    assert whole.cov_xy == pytest.approx(np.cov(x, y)[0, 1])
    assert whole.sum_xy == pytest.approx(float(x @ y))


def test_moments_refuse_mismatched_covariate() -> None:
    with pytest.raises(InvalidInput) as info:
        Moments.of(np.ones(3), np.ones(4))
    assert info.value.argument == "x"


# ----------------------------------------------------------------------------- lift


def test_lift_values_on_a_known_example() -> None:
    control = Moments.of(np.array([0, 1, 0, 1, 0, 1, 0, 1.0]))  # mean 0.5
    treatment = Moments.of(np.array([1, 1, 0, 1, 1, 1, 0, 1.0]))  # mean 0.75
    lift = compare(control, treatment)
    assert lift.absolute == pytest.approx(0.25)
    assert lift.relative == pytest.approx(0.5)
    se = math.sqrt(np.var([0, 1] * 4, ddof=1) / 8 + np.var([1, 1, 0, 1] * 2, ddof=1) / 8)
    assert lift.abs_ci[1] - lift.abs_ci[0] == pytest.approx(2 * 1.959964 * se, rel=1e-5)


def test_absolute_and_relative_intervals_cover_the_truth_95_percent() -> None:
    """Over 400 seeded experiments the 95 % intervals cover the true lifts 92-98 % of the time."""
    rng = np.random.default_rng(7)
    p_c, p_t = 0.20, 0.23
    hits_abs = hits_rel = 0
    for _ in range(400):
        lift = compare(
            Moments.of(rng.binomial(1, p_c, 4000).astype(float)),
            Moments.of(rng.binomial(1, p_t, 4000).astype(float)),
        )
        hits_abs += lift.abs_ci[0] <= p_t - p_c <= lift.abs_ci[1]
        hits_rel += lift.rel_ci[0] <= p_t / p_c - 1 <= lift.rel_ci[1]
    assert 0.92 <= hits_abs / 400 <= 0.98
    assert 0.92 <= hits_rel / 400 <= 0.98


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_compare_refuses_alpha_outside_unit_interval(alpha: float) -> None:
    m = Moments.of(np.arange(5.0))
    with pytest.raises(InvalidInput) as info:
        compare(m, m, alpha=alpha)
    assert info.value.argument == "alpha" and info.value.value == alpha


def test_compare_refuses_an_arm_with_one_unit() -> None:
    with pytest.raises(InvalidInput, match="at least 2 units"):
        compare(Moments.of(np.ones(1)), Moments.of(np.arange(5.0)), names=("ctl", "trt"))


# ----------------------------------------------------------------------------- SRM


@pytest.mark.parametrize(
    ("observed", "weights", "flagged"),
    [
        ({"a": 10_400, "b": 9_600}, {"a": 1, "b": 1}, True),
        ({"a": 10_050, "b": 9_950}, {"a": 1, "b": 1}, False),
        ({"champion": 9_000, "canary": 1_000}, {"champion": 0.9, "canary": 0.1}, False),
        ({"champion": 9_000, "canary": 1_000}, {"champion": 0.5, "canary": 0.5}, True),
        ({"a": 5_000, "b": 5_000, "c": 5_400}, {"a": 1, "b": 1, "c": 1}, True),
    ],
)
def test_srm_flags_at_p_below_one_in_a_thousand(
    observed: dict[str, int], weights: dict[str, float], flagged: bool
) -> None:
    result = srm_check(observed, weights)
    assert result.flagged is flagged
    assert (result.p_value < 1e-3) is flagged


@pytest.mark.parametrize(
    ("observed", "weights", "argument"),
    [
        ({"a": 1, "b": 2}, {"a": 1, "c": 1}, "observed"),
        ({"a": 1}, {"a": 1}, "observed"),
        ({"a": -1, "b": 2}, {"a": 1, "b": 1}, "observed"),
        ({"a": 1, "b": 2}, {"a": 0, "b": 1}, "weights"),
    ],
)
def test_srm_refuses_bad_inputs_naming_them(observed, weights, argument: str) -> None:
    with pytest.raises(InvalidInput) as info:
        srm_check(observed, weights)
    assert info.value.argument == argument


# ----------------------------------------------------------------------------- CUPED


def _correlated(rng: np.random.Generator, n: int, effect: float) -> tuple[Moments, Moments]:
    x_c, x_t = rng.normal(10, 2, n), rng.normal(10, 2, n)
    y_c = 0.8 * x_c + rng.normal(0, 1.2, n)
    y_t = 0.8 * x_t + effect + rng.normal(0, 1.2, n)
    return Moments.of(y_c, x_c), Moments.of(y_t, x_t)


def test_cuped_cuts_variance_on_correlated_data() -> None:
    control, treatment = _correlated(np.random.default_rng(3), 5000, effect=0.1)
    raw, adjusted = compare(control, treatment), compare(control, treatment, cuped=True)
    # corr(x, y)^2 = 2.56 / (2.56 + 1.44) = 0.64 of the variance is explained by x
    assert adjusted.variance_reduction == pytest.approx(0.64, abs=0.04)
    assert adjusted.abs_ci[1] - adjusted.abs_ci[0] < 0.7 * (raw.abs_ci[1] - raw.abs_ci[0])
    assert cuped_theta([control, treatment]) == pytest.approx(0.8, abs=0.03)


def test_cuped_estimate_stays_unbiased_over_seeds() -> None:
    """Mean of 300 CUPED estimates is within 3 standard errors of the true effect."""
    rng = np.random.default_rng(11)
    raw, adjusted = [], []
    for _ in range(300):
        control, treatment = _correlated(rng, 1000, effect=0.1)
        raw.append(compare(control, treatment).absolute)
        adjusted.append(compare(control, treatment, cuped=True).absolute)
    adjusted_arr = np.array(adjusted)
    assert abs(adjusted_arr.mean() - 0.1) < 3 * adjusted_arr.std(ddof=1) / math.sqrt(300)
    assert adjusted_arr.std() < 0.7 * np.std(raw)


def test_cuped_without_covariate_variance_changes_nothing() -> None:
    rng = np.random.default_rng(5)
    control = Moments.of(rng.normal(size=200), np.zeros(200))
    treatment = Moments.of(rng.normal(size=200), np.zeros(200))
    assert compare(control, treatment, cuped=True).absolute == compare(control, treatment).absolute


# ----------------------------------------------------------------------------- sequential


def test_daily_peeking_keeps_sequential_fpr_within_alpha_and_inflates_t_test() -> None:
    """A/A with 14 daily looks: mSPRT FPR <= alpha + 0.01, fixed-horizon test's is higher."""
    result = simulate_aa_peeking(n_simulations=3000, looks=14, units_per_look=200, seed=2024)
    assert result.sequential_fpr <= 0.05 + 0.01
    assert result.fixed_fpr > 0.05 + 0.05
    assert result.fixed_fpr > 3 * result.sequential_fpr


def test_sequential_test_still_detects_a_real_effect() -> None:
    """Power check: with a 10 % relative lift the always-valid test rejects in most runs."""
    rng = np.random.default_rng(9)
    rejections = 0
    for _ in range(100):
        looks, c_run, t_run = [], Moments(0, 0.0, 0.0), Moments(0, 0.0, 0.0)
        for day in range(14):
            c_run = c_run + Moments.of(rng.binomial(1, 0.30, 1000).astype(float))
            t_run = t_run + Moments.of(rng.binomial(1, 0.33, 1000).astype(float))
            looks.append((f"d{day}", c_run, t_run))
        rejections += sequential_lift(looks)[-1].p_value < 0.05
    assert rejections >= 80


def test_confidence_sequence_is_wider_than_fixed_interval_and_p_values_only_fall() -> None:
    rng = np.random.default_rng(4)
    looks, c_run, t_run = [], Moments(0, 0.0, 0.0), Moments(0, 0.0, 0.0)
    for day in range(10):
        c_run = c_run + Moments.of(rng.normal(0, 1, 300))
        t_run = t_run + Moments.of(rng.normal(0.05, 1, 300))
        looks.append((f"d{day}", c_run, t_run))
    result = sequential_lift(looks)
    assert [r.label for r in result] == [f"d{d}" for d in range(10)]
    assert all(r.cs_low < r.fixed_low and r.cs_high > r.fixed_high for r in result)
    p = [r.p_value for r in result]
    assert p == sorted(p, reverse=True)


def test_mixture_boundary_matches_closed_form() -> None:
    """The CS half-width solves Lambda(d +- h) = 1/alpha."""
    v, alpha = 0.004, 0.05
    tau2 = mixture_tau2(alpha=alpha, variance_at_horizon=v)
    low, high = confidence_sequence(np.array([0.1]), np.array([v]), alpha=alpha, tau2=tau2)
    h = float(high[0] - 0.1)
    p_at_edge = always_valid_p_values(np.array([h]), np.array([v]), tau2=tau2)
    assert float(p_at_edge[0]) == pytest.approx(alpha, rel=1e-9)
    assert float(low[0]) == pytest.approx(0.1 - h)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"alpha": 1.5}, "alpha"), ({"looks": 0}, "looks"), ({"base_rate": 1.0}, "base_rate")],
)
def test_aa_simulation_refuses_bad_settings(kwargs: dict, argument: str) -> None:
    with pytest.raises(InvalidInput) as info:
        simulate_aa_peeking(n_simulations=10, **kwargs)
    assert info.value.argument == argument


# ----------------------------------------------------------------------------- report core


def _aggregates(counts: dict[tuple[str, str], tuple[int, float]]) -> pd.DataFrame:
    """Per (day, arm) rows as Ray Data produces them, for a 0/1 metric with no covariate."""
    rows = [
        {"day": d, "arm": a, "n": n, "y": n * m, "y2": n * m, "x": 0.0, "x2": 0.0, "xy": 0.0}
        for (d, a), (n, m) in counts.items()
    ]
    return pd.DataFrame(rows).assign(x_missing=0)


def _config(**kwargs: object) -> AnalyzeConfig:
    return AnalyzeConfig(decisions="d", outcomes="o", out="out", **kwargs)  # type: ignore[arg-type]


def test_report_flags_srm_and_gives_daily_sequence() -> None:
    frame = _aggregates(
        {
            ("2024-01-01", "champion"): (5200, 0.30),
            ("2024-01-01", "canary"): (4800, 0.32),
            ("2024-01-02", "champion"): (5200, 0.30),
            ("2024-01-02", "canary"): (4800, 0.33),
        }
    )
    report = analyze_aggregates(frame, _config())
    assert report["srm"]["flagged"] is True  # 10,400 / 9,600 on a planned 50/50
    comparison = report["comparisons"]["canary"]
    assert [look["label"] for look in comparison["over_time"]] == ["2024-01-01", "2024-01-02"]
    assert comparison["absolute_lift"] == pytest.approx(0.025)
    assert plot_lift_over_time(report).startswith(b"\x89PNG")


def test_report_uses_planned_weights_for_srm() -> None:
    frame = _aggregates({("d", "champion"): (9000, 0.3), ("d", "canary"): (1000, 0.3)})
    report = analyze_aggregates(frame, _config(weights={"champion": 0.9, "canary": 0.1}))
    assert report["srm"]["flagged"] is False


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"control": "control"}, "control"), ({"weights": {"champion": 1.0}}, "weights")],
)
def test_report_refuses_unknown_control_or_unplanned_arm(kwargs: dict, argument: str) -> None:
    frame = _aggregates({("d", "champion"): (100, 0.3), ("d", "canary"): (100, 0.3)})
    with pytest.raises(InvalidInput) as info:
        analyze_aggregates(frame, _config(**kwargs))
    assert info.value.argument == argument


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": {"champion": 1.0, "canary": 0.0}}, "weights must be > 0"),
        ({"weights": {"canary": 1.0}, "control": "champion"}, r"control \('champion'\)"),
        ({"metric": "reward", "covariate": "reward"}, "covariate"),
        ({"alpha": 0.0}, "alpha"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_analyze_config_refuses_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**kwargs)
