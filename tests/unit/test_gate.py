"""Fairness gate: bounds on a fairness report; a proxy-biased model is refused.

Real simulator data: tests/unit/test_fairness_simulator.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from pydantic import ValidationError

from attune.errors import GateRefused, InvalidInput
from attune.governance.fairness import fairness_report
from attune.governance.gates.fairness_gate import (
    FairnessGateConfig,
    GateOverride,
    check_fairness,
    load_fairness_config,
    require_fairness,
)

OPTIONS = ("payment_plan", "reminder_sms", "pay_now")


# --------------------------------------------------------------------------- a biased model


def _history(seed: int) -> dict[str, Any]:
    """Seeded presentations where the right option depends only on a legitimate ``need``.

    High need: a payment plan cures; low need: pay now; reminders in between. Group b's
    historical labels never record a cured payment plan (the bias a proxy can learn),
    while the evaluation labels are the true outcomes. ``proxy`` tracks the group.
    """
    rng = np.random.default_rng(seed)
    n_borrowers, per_borrower = 400, 3
    group = np.where(np.arange(n_borrowers) % 2 == 0, "a", "b")
    need = rng.uniform(size=n_borrowers * per_borrower)
    borrower = np.repeat(np.arange(n_borrowers), per_borrower)
    rows = []
    for q, (b, n) in enumerate(zip(borrower, need, strict=True)):
        best = "payment_plan" if n > 0.6 else "pay_now" if n < 0.3 else "reminder_sms"
        proxy = (group[b] == "b") + rng.normal(0, 0.2)
        for option in OPTIONS:
            true = 3 if option == best else int(rng.integers(0, 2))
            logged = 0 if (option == "payment_plan" and group[b] == "b") else true
            rows.append((q, b, option, n, proxy, true, logged))
    frame = pd.DataFrame(
        rows, columns=["qid", "borrower_id", "option_id", "need", "proxy", "true", "logged"]
    )
    protected = pd.DataFrame({"borrower_id": np.arange(n_borrowers), "gender": group})
    return {"frame": frame, "protected": protected}


def _features(frame: pd.DataFrame, with_proxy: bool) -> np.ndarray:
    onehot = [(frame["option_id"] == o).to_numpy(float) for o in OPTIONS]
    need = frame["need"].to_numpy()
    cols = [need, *onehot, *(o * need for o in onehot)]
    if with_proxy:
        cols.append(frame["proxy"].to_numpy())
    return np.column_stack(cols).astype(np.float32)


def _report(with_proxy: bool) -> dict[str, Any]:
    train, test = _history(seed=0), _history(seed=1)
    dtrain = xgb.DMatrix(
        _features(train["frame"], with_proxy),
        label=train["frame"]["logged"],
        qid=train["frame"]["qid"],
    )
    params = {"objective": "rank:ndcg", "max_depth": 3, "eta": 0.3, "nthread": 1, "seed": 0}
    booster = xgb.train(params, dtrain, num_boost_round=30)
    frame = test["frame"]
    scores = booster.predict(xgb.DMatrix(_features(frame, with_proxy)))
    return fairness_report(
        scores=scores,
        qid=frame["qid"],
        option_ids=frame["option_id"],
        labels=frame["true"],
        borrower_ids=frame["borrower_id"],
        protected=test["protected"],
        n_bootstrap=100,
    )


@pytest.fixture(scope="module")
def biased_report() -> dict[str, Any]:
    return _report(with_proxy=True)


@pytest.fixture(scope="module")
def unbiased_report() -> dict[str, Any]:
    return _report(with_proxy=False)


def test_a_model_trained_on_a_group_proxy_is_refused(biased_report: dict[str, Any]) -> None:
    decision = check_fairness(biased_report)
    assert not decision.passed
    plan = biased_report["attributes"]["gender"]["exposure"]["payment_plan"]
    assert plan["ratio"]["value"] < 0.5
    assert plan["min_group"] == "b"
    needed = biased_report["attributes"]["gender"]["opportunity"]["payment_plan"]
    assert needed["ratio"]["ci"][1] < 0.5
    assert needed["min_group"] == "b"
    assert any("equal opportunity for payment_plan" in r and "b " in r for r in decision.reasons)
    assert any("ndcg difference" in r for r in decision.reasons)
    # judged on need, the raw exposure gap is noted, not refused on
    assert not any("exposure of" in r for r in decision.reasons)
    assert any("raw exposure" in w and "payment_plan" in w for w in decision.warnings)


def test_the_same_model_without_the_proxy_passes(unbiased_report: dict[str, Any]) -> None:
    decision = check_fairness(unbiased_report)
    assert decision.passed, decision.reasons
    assert decision.reasons == ()
    assert "gender/opportunity:payment_plan" in decision.checked


def test_the_registry_default_gate_is_this_gate(biased_report: dict[str, Any]) -> None:
    """The registry's alias moves call check_fairness with the default bounds."""
    from attune.governance.gates.promotion import fairness_gate

    gate = fairness_gate()
    outcome = gate(biased_report)
    assert not outcome.passed
    assert list(outcome.reasons) == list(check_fairness(biased_report).reasons)
    lenient = fairness_gate({"min_exposure_ratio": 0.01, "warn_exposure_ratio": 0.01})
    reasons = lenient(biased_report).reasons
    assert not any("exposure" in r for r in reasons)


# --------------------------------------------------------------------------- bounds


def _two_groups(m_plan_first: int, *, n: int = 100, n_bootstrap: int = 200) -> dict[str, Any]:
    """A report where group f always and group m ``m_plan_first``/n times gets the plan first."""
    tops = {"f": ["payment_plan"] * n, "m": ["payment_plan"] * m_plan_first}
    tops["m"] += ["reminder_sms"] * (n - m_plan_first)
    qid, borrower, option, score, label, protected = [], [], [], [], [], []
    q = 0
    for group, slate_tops in tops.items():
        for top in slate_tops:
            protected.append((q, group))
            for o in OPTIONS:
                qid.append(q)
                borrower.append(q)
                option.append(o)
                score.append(float(o == top))
                label.append(1)  # every order is ideal: NDCG is 1 for everyone
            q += 1
    return fairness_report(
        scores=np.asarray(score),
        qid=np.asarray(qid),
        option_ids=np.asarray(option),
        labels=np.asarray(label),
        borrower_ids=np.asarray(borrower),
        protected=pd.DataFrame(protected, columns=["borrower_id", "gender"]),
        n_bootstrap=n_bootstrap,
    )


POINT_ESTIMATES = FairnessGateConfig(use_confidence_interval=False)


@pytest.mark.parametrize(
    ("m_plan_first", "passed", "warned"),
    [(100, True, False), (85, False, True), (79, False, False), (95, True, False)],
    ids=["equal", "0.85-but-sms-only-for-m", "0.79", "0.95-sms-rare"],
)
def test_exposure_ratio_bound(m_plan_first: int, passed: bool, warned: bool) -> None:
    """Labels that never say "completed" leave need unmeasured: raw exposure is judged."""
    decision = check_fairness(_two_groups(m_plan_first), POINT_ESTIMATES)
    assert decision.passed is passed
    assert any("exposure" in w for w in decision.warnings) is warned


@pytest.mark.parametrize(
    ("min_ratio", "warn_ratio", "passed", "warned"),
    [(0.8, 0.9, True, True), (0.9, 0.9, False, False), (0.5, 0.5, True, False)],
)
def test_configured_ratio_bounds_refuse_and_warn(
    min_ratio: float, warn_ratio: float, passed: bool, warned: bool
) -> None:
    """m gets the plan first 85 % as often as f; sms (the rest) is too rare to judge."""
    report = _two_groups(85)
    config = FairnessGateConfig(
        min_exposure_ratio=min_ratio,
        warn_exposure_ratio=warn_ratio,
        min_option_share=0.2,
        use_confidence_interval=False,
    )
    decision = check_fairness(report, config)
    assert decision.passed is passed
    assert any("payment_plan" in w for w in decision.warnings) is warned


def test_confidence_intervals_give_small_samples_the_benefit_of_the_doubt() -> None:
    report = _two_groups(30, n=40, n_bootstrap=400)  # plan ratio 0.75, sms 0 vs 0.25
    strict = FairnessGateConfig(min_option_share=0.2, use_confidence_interval=False)
    lenient = strict.model_copy(update={"use_confidence_interval": True})
    plan = report["attributes"]["gender"]["exposure"]["payment_plan"]["ratio"]
    assert plan["value"] < 0.8 < plan["ci"][1]
    strict_reasons = check_fairness(report, strict).reasons
    lenient_reasons = check_fairness(report, lenient).reasons
    assert any("payment_plan" in r for r in strict_reasons)
    assert not any("payment_plan" in r for r in lenient_reasons)
    assert FairnessGateConfig().use_confidence_interval  # the default gives the benefit
    default = check_fairness(report, FairnessGateConfig(min_option_share=0.2))
    assert default.reasons == check_fairness(report, lenient).reasons
    assert any("payment_plan" in w and "below 0.9" in w for w in default.warnings)


# --------------------------------------------------------------------------- need


def _needs(groups: dict[str, tuple[int, int, int, int]], *, n_bootstrap: int = 200) -> Any:
    """A report from (presentations, needing the plan, of those given it first, others given
    it first) per group. Who needed the plan completed it (label 3); the others completed
    pay_now. The model ranks first the plan or, where it does not, pay_now."""
    rows, protected, q = [], [], 0
    for group, (n, needy, needy_first, other_first) in groups.items():
        for i in range(n):
            needs = i < needy
            plan_first = i < needy_first if needs else i - needy < other_first
            protected.append((q, group))
            for o in OPTIONS:
                best = "payment_plan" if needs else "pay_now"
                top = "payment_plan" if plan_first else "pay_now"
                rows.append((q, o, float(o == top), 3 if o == best else 0))
            q += 1
    frame = pd.DataFrame(rows, columns=["qid", "option_id", "score", "label"])
    return fairness_report(
        scores=frame["score"],
        qid=frame["qid"],
        option_ids=frame["option_id"],
        labels=frame["label"],
        borrower_ids=frame["qid"],
        protected=pd.DataFrame(protected, columns=["borrower_id", "gender"]),
        n_bootstrap=n_bootstrap,
    )


def test_a_group_that_needs_the_plan_more_often_may_see_it_first_more_often() -> None:
    """f needs the plan 80 % of the time, m 30 %; everyone who needs it gets it first."""
    report = _needs({"f": (100, 80, 80, 0), "m": (100, 30, 30, 0)})
    part = report["attributes"]["gender"]
    assert part["exposure"]["payment_plan"]["ratio"]["value"] == pytest.approx(0.375)
    assert part["opportunity"]["payment_plan"]["ratio"]["value"] == 1.0
    decision = check_fairness(report)
    assert decision.passed, decision.reasons
    assert "gender/opportunity:payment_plan" in decision.checked
    assert any("raw exposure" in w and "payment_plan (ratio 0.375" in w for w in decision.warnings)
    raw = check_fairness(report, FairnessGateConfig(exposure_mode="refuse"))
    assert any("exposure of payment_plan" in r for r in raw.reasons)


def test_withholding_the_plan_from_one_groups_needy_borrowers_is_refused() -> None:
    """Both groups see the plan first half of the time, but m's needy rarely do."""
    report = _needs({"f": (100, 50, 50, 0), "m": (100, 50, 10, 40)})
    part = report["attributes"]["gender"]
    assert part["exposure"]["payment_plan"]["ratio"]["value"] == 1.0
    plan = part["opportunity"]["payment_plan"]
    assert plan["by_group"]["m"] == {"value": 0.2, "ci": plan["by_group"]["m"]["ci"], "n": 50}
    decision = check_fairness(report)
    assert not decision.passed
    assert any(
        r.startswith("gender: equal opportunity for payment_plan (ratio 0.200: m 0.200 (n=50) vs")
        and r.endswith("is below 0.8")
        for r in decision.reasons
    ), decision.reasons
    lenient = FairnessGateConfig(
        min_opportunity_ratio=0.1, warn_opportunity_ratio=0.1, max_ndcg_difference=None
    )
    assert check_fairness(report, lenient).passed


@pytest.mark.parametrize(
    ("m_given", "passed"),
    [(1, True), (15, False)],
    ids=["0-of-30-vs-1-of-30", "0-of-30-vs-15-of-30"],
)
def test_a_ratio_of_small_rates_needs_a_real_gap_to_refuse(m_given: int, passed: bool) -> None:
    report = _needs({"f": (60, 30, 0, 0), "m": (60, 30, m_given, 0)})
    plan = report["attributes"]["gender"]["opportunity"]["payment_plan"]
    assert plan["ratio"]["value"] == 0.0
    decision = check_fairness(report)
    assert decision.passed is passed
    assert any("the gap is not above 0.05" in w for w in decision.warnings) is passed
    ratio_alone = FairnessGateConfig(min_opportunity_difference=0, use_confidence_interval=False)
    assert not check_fairness(report, ratio_alone).passed


def test_groups_with_too_few_needy_presentations_are_not_compared_but_named() -> None:
    report = _needs({"f": (100, 50, 50, 0), "m": (100, 15, 0, 0)})
    plan = report["attributes"]["gender"]["opportunity"]["payment_plan"]
    assert plan["left_out"] == {"m": 15}
    assert list(plan["by_group"]) == ["f"]
    assert plan["ratio"]["value"] is None
    decision = check_fairness(report)
    assert decision.passed
    assert "gender/opportunity:payment_plan" not in decision.checked
    assert any("payment_plan (m 15; not judged)" in w for w in decision.warnings)


def test_a_stricter_gate_minimum_leaves_a_thin_comparison_unjudged() -> None:
    report = _needs({"f": (100, 30, 30, 0), "m": (100, 30, 0, 0)})
    assert not check_fairness(report).passed
    config = FairnessGateConfig(min_eligible=31, max_ndcg_difference=None)
    decision = check_fairness(report, config)
    assert decision.passed, decision.reasons
    assert any("payment_plan (f 30, m 30; not judged)" in w for w in decision.warnings)


def test_exposure_modes() -> None:
    """Need unmeasured (no label says completed): fallback and refuse judge exposure."""
    report = _two_groups(0, n=40, n_bootstrap=0)  # m never gets the plan first
    outcomes = {
        mode: check_fairness(report, FairnessGateConfig(exposure_mode=mode)).passed
        for mode in ("fallback", "refuse", "warn")
    }
    assert outcomes == {"fallback": False, "refuse": False, "warn": True}


def test_a_report_from_before_equal_opportunity_is_judged_on_exposure() -> None:
    report = _needs({"f": (100, 80, 80, 0), "m": (100, 30, 30, 0)})
    for part in report["attributes"].values():
        del part["opportunity"]
    for key in ("eligible_label", "min_eligible"):
        del report[key]
    decision = check_fairness(report)
    assert any("exposure of payment_plan" in r for r in decision.reasons)


def test_a_report_without_intervals_is_judged_on_point_estimates_by_default() -> None:
    report = _needs({"f": (100, 50, 50, 0), "m": (100, 50, 10, 40)}, n_bootstrap=0)
    decision = check_fairness(report)
    assert not decision.passed
    assert "judged on point estimates" in decision.warnings[0]


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (
            {"warn_exposure_ratio": 0.7},
            "warn_exposure_ratio (0.7) must be >= min_exposure_ratio (0.8)",
        ),
        (
            {"min_opportunity_ratio": 0.95},
            "warn_opportunity_ratio (0.9) must be >= min_opportunity_ratio (0.95)",
        ),
        ({"min_exposure_ratio": 1.5}, "min_exposure_ratio"),
        ({"min_eligible": 0}, "min_eligible"),
        ({"exposure_mode": "never"}, "exposure_mode"),
        ({"max_ndcg_difference": -0.1}, "max_ndcg_difference"),
        ({"bound": 0.8}, "bound"),
    ],
    ids=[
        "warn-below-min",
        "opportunity-warn-below-min",
        "ratio-above-1",
        "no-eligible",
        "unknown-exposure-mode",
        "negative-difference",
        "unknown-field",
    ],
)
def test_invalid_gate_configs_name_the_field(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        FairnessGateConfig(**values)
    with pytest.raises(InvalidInput) as info:
        load_fairness_config(values)
    assert fragment.split(" ")[0] in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("attributes"), "attributes"),
        (lambda r: r.update(k="three"), "k"),
        (lambda r: r["attributes"]["gender"].pop("exposure"), "attributes.gender.exposure"),
    ],
    ids=["no-attributes", "bad-k", "no-exposure"],
)
def test_a_malformed_report_is_refused_naming_the_field(mutate: Any, field: str) -> None:
    report = _two_groups(100, n=40, n_bootstrap=0)
    mutate(report)
    with pytest.raises(InvalidInput) as info:
        check_fairness(report)
    assert info.value.field == field


def test_unknown_attribute_and_missing_intervals_are_refused() -> None:
    report = _two_groups(100, n=40, n_bootstrap=0)
    with pytest.raises(InvalidInput, match="age_band"):
        check_fairness(report, FairnessGateConfig(attributes=("age_band",)))
    with pytest.raises(InvalidInput, match="n_bootstrap=0"):
        check_fairness(report, FairnessGateConfig(use_confidence_interval=True))


def test_require_promotion_raises_unless_overridden_with_a_justification() -> None:
    report = _two_groups(30, n=60, n_bootstrap=0)
    with pytest.raises(GateRefused) as info:
        require_fairness(report, version="v1")
    assert info.value.version == "v1"
    assert any("payment_plan" in r for r in info.value.reasons)
    override = GateOverride(
        by="risk-officer", justification="Plan eligibility differs by state law; reviewed."
    )
    decision = require_fairness(report, version="v1", override=override)
    assert decision.passed
    assert decision.reasons  # the refusal stays on record
    assert "overridden by risk-officer: Plan eligibility" in decision.warnings[-1]
    with pytest.raises(ValidationError, match="justification"):
        GateOverride(by="someone", justification="because")
    assert decision.to_dict()["passed"] is True


def test_an_attribute_with_one_comparable_group_is_not_judged_but_noted() -> None:
    report = _two_groups(0, n=40, n_bootstrap=0)  # m never gets the plan first
    assert not check_fairness(report).passed
    report = fairness_report(**_small_m(report_n=40, m_n=5))
    decision = check_fairness(report)
    assert decision.passed
    assert "gender: fewer than two groups are large enough to compare" in decision.warnings
    assert any("['m'] are below 30" in w for w in decision.warnings)


def _small_m(*, report_n: int, m_n: int) -> dict[str, Any]:
    """f: ``report_n`` presentations with the plan first; m: ``m_n`` without it."""
    rows, protected = [], []
    for q in range(report_n + m_n):
        group = "f" if q < report_n else "m"
        protected.append((q, group))
        top = "payment_plan" if group == "f" else "pay_now"
        rows += [(q, o, float(o == top)) for o in OPTIONS]
    frame = pd.DataFrame(rows, columns=["qid", "option_id", "score"])
    return {
        "scores": frame["score"],
        "qid": frame["qid"],
        "option_ids": frame["option_id"],
        "labels": np.ones(len(frame)),
        "borrower_ids": frame["qid"],
        "protected": pd.DataFrame(protected, columns=["borrower_id", "gender"]),
        "n_bootstrap": 0,
    }
