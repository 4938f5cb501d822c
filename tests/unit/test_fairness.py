"""Fairness report: exposure, NDCG and outcome rates by protected group, with intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attune.errors import InvalidInput
from attune.governance.fairness import MISSING_GROUP, FairnessReport, fairness_report
from attune.governance.plots import fairness_png

OPTIONS = ("payment_plan", "reminder_sms", "pay_now")


def _slates(
    tops_by_group: dict[str, list[str]], *, per_borrower: int = 2, labels: list[int] | None = None
) -> dict[str, object]:
    """Presentations of three options whose top-scored option is given per presentation.

    Each borrower has ``per_borrower`` presentations; their group is the dict key.
    """
    qid, borrower, option, score, label = [], [], [], [], []
    protected = []
    q = 0
    b = 0
    for group, tops in tops_by_group.items():
        for i, top in enumerate(tops):
            if i % per_borrower == 0:
                b += 1
                protected.append((b, group))
            for option_id in OPTIONS:
                qid.append(q)
                borrower.append(b)
                option.append(option_id)
                score.append(1.0 if option_id == top else 0.0)
                label.append(3 if option_id == "payment_plan" else 0)
            q += 1
    return {
        "scores": np.asarray(score),
        "qid": np.asarray(qid),
        "option_ids": np.asarray(option),
        "labels": np.asarray(labels if labels is not None else label),
        "borrower_ids": np.asarray(borrower),
        "protected": pd.DataFrame(protected, columns=["borrower_id", "gender"]),
    }


def test_exposure_by_group_difference_and_ratio_are_exact() -> None:
    data = _slates({"f": ["payment_plan"] * 80, "m": ["payment_plan"] * 40 + ["pay_now"] * 40})
    report = fairness_report(**data, n_bootstrap=50)  # type: ignore[arg-type]
    plan = report["attributes"]["gender"]["exposure"]["payment_plan"]
    assert plan["by_group"]["f"]["value"] == 1.0
    assert plan["by_group"]["m"]["value"] == 0.5
    assert plan["difference"]["value"] == pytest.approx(0.5)
    assert plan["ratio"]["value"] == pytest.approx(0.5)
    assert (plan["min_group"], plan["max_group"]) == ("m", "f")
    assert plan["overall"]["value"] == pytest.approx(0.75)
    assert plan["four_fifths_flag"] is True
    never_first = report["attributes"]["gender"]["exposure"]["reminder_sms"]
    assert never_first["ratio"]["value"] is None
    assert (never_first["min_group"], never_first["max_group"]) == (None, None)


@pytest.mark.parametrize(
    ("m_plan_first", "flagged"),
    [(80, False), (66, False), (63, True), (20, True)],
    ids=["equal", "ratio-0.825", "ratio-0.79", "ratio-0.25"],
)
def test_four_fifths_flag_is_set_below_80_percent(m_plan_first: int, flagged: bool) -> None:
    data = _slates(
        {
            "f": ["payment_plan"] * 80,
            "m": ["payment_plan"] * m_plan_first + ["pay_now"] * (80 - m_plan_first),
        }
    )
    report = fairness_report(**data, n_bootstrap=0)  # type: ignore[arg-type]
    assert report["attributes"]["gender"]["exposure"]["payment_plan"]["four_fifths_flag"] is flagged
    violations = {v["metric"]: v for v in report["four_fifths"]["violations"]}
    assert ("exposure:payment_plan" in violations) is flagged
    # pay_now is ranked first only for m: a ratio of 0 whenever it is common enough
    assert ("exposure:pay_now" in violations) is (m_plan_first < 80)
    assert report["four_fifths"]["passed"] is (m_plan_first == 80)


def test_rare_options_are_not_flagged_by_four_fifths() -> None:
    """An option ranked first in under min_option_share of presentations is not judged."""
    tops_f = ["payment_plan"] * 99 + ["reminder_sms"]
    tops_m = ["payment_plan"] * 100
    report = fairness_report(**_slates({"f": tops_f, "m": tops_m}), min_option_share=0.05)  # type: ignore[arg-type]
    sms = report["attributes"]["gender"]["exposure"]["reminder_sms"]
    assert sms["ratio"]["value"] == 0.0
    assert sms["four_fifths_flag"] is None
    assert report["four_fifths"]["passed"] is True


def test_opportunity_counts_only_presentations_where_the_option_was_completed() -> None:
    """Equal opportunity of an option: ranked first where its label is >= eligible_label."""
    tops = {"f": ["payment_plan"] * 40 + ["pay_now"] * 20, "m": ["payment_plan"] * 30}
    tops["m"] += ["pay_now"] * 30
    data = _slates(tops)
    labels = np.asarray(data["labels"]).copy()
    # every plan row of f's last 20 presentations is "engaged" only: not eligible
    plan_rows = np.flatnonzero(np.asarray(data["option_ids"]) == "payment_plan")
    labels[plan_rows[40:60]] = 1
    data["labels"] = labels
    report = fairness_report(**data, n_bootstrap=50)  # type: ignore[arg-type]
    plan = report["attributes"]["gender"]["opportunity"]["payment_plan"]
    assert plan["by_group"]["f"]["value"] == 1.0
    assert plan["by_group"]["f"]["n"] == 40
    assert plan["by_group"]["m"]["value"] == 0.5
    assert plan["by_group"]["m"]["n"] == 60
    assert plan["ratio"]["value"] == pytest.approx(0.5)
    assert plan["difference"]["value"] == pytest.approx(0.5)
    assert (plan["min_group"], plan["max_group"]) == ("m", "f")
    assert plan["overall"]["value"] == pytest.approx(70 / 100)
    assert plan["left_out"] == {}
    assert plan["four_fifths_flag"] is True
    assert any(
        v["metric"] == "opportunity:payment_plan" for v in report["four_fifths"]["violations"]
    )
    never_completed = report["attributes"]["gender"]["opportunity"]["pay_now"]
    assert never_completed["overall"]["value"] is None
    assert never_completed["by_group"] == {}
    assert never_completed["left_out"] == {"f": 0, "m": 0}
    strict = fairness_report(**data, n_bootstrap=0, eligible_label=3)  # type: ignore[arg-type]
    assert strict["eligible_label"] == 3
    assert strict["attributes"]["gender"]["opportunity"]["payment_plan"]["by_group"]["f"]["n"] == 40


def test_opportunity_compares_only_groups_with_enough_eligible_presentations() -> None:
    data = _slates({"f": ["payment_plan"] * 40, "m": ["pay_now"] * 40})
    labels = np.asarray(data["labels"]).copy()
    m_plan_rows = np.flatnonzero(np.asarray(data["option_ids"]) == "payment_plan")[40:]
    labels[m_plan_rows[10:]] = 0  # m completed the plan in 10 presentations only
    data["labels"] = labels
    report = fairness_report(**data, n_bootstrap=0, min_eligible=11)  # type: ignore[arg-type]
    plan = report["attributes"]["gender"]["opportunity"]["payment_plan"]
    assert plan["left_out"] == {"m": 10}
    assert list(plan["by_group"]) == ["f"]
    assert plan["ratio"]["value"] is None
    assert plan["four_fifths_flag"] is None  # nothing to compare
    lower = fairness_report(**data, n_bootstrap=0, min_eligible=10)  # type: ignore[arg-type]
    assert lower["attributes"]["gender"]["opportunity"]["payment_plan"]["ratio"]["value"] == 0.0


def test_ndcg_uses_exponential_gain_and_skips_all_zero_groups() -> None:
    data = {
        "scores": np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.1]),
        "qid": np.array([0, 0, 0, 1, 1, 1]),
        "option_ids": np.array(["payment_plan", "pay_now", "reminder_sms"] * 2),
        "labels": np.array([3, 0, 1, 0, 0, 0]),
        "borrower_ids": np.array([1, 1, 1, 2, 2, 2]),
        "protected": pd.DataFrame({"borrower_id": [1, 2], "gender": ["f", "f"]}),
    }
    report = fairness_report(**data, min_group_size=1, n_bootstrap=0)  # type: ignore[arg-type]
    ndcg = report["attributes"]["gender"]["metrics"]["ndcg"]
    dcg = 1 / math.log2(3) + 7 / math.log2(4)
    idcg = 7 + 1 / math.log2(3)
    assert ndcg["by_group"]["f"]["value"] == pytest.approx(dcg / idcg)
    assert ndcg["by_group"]["f"]["n"] == 1  # the all-zero presentation has no NDCG


def test_cure_rate_and_outcome_rate_by_group() -> None:
    data = _slates({"f": ["payment_plan"] * 40, "m": ["pay_now"] * 40})
    current = np.repeat(np.r_[np.ones(40), np.zeros(40)], 3)
    report = fairness_report(**data, current_14d=current, n_bootstrap=0)  # type: ignore[arg-type]
    metrics = report["attributes"]["gender"]["metrics"]
    assert metrics["cure_rate_at_1"]["by_group"] == {
        "f": {"value": 1.0, "ci": None, "n": 40},
        "m": {"value": 0.0, "ci": None, "n": 40},
    }
    assert metrics["outcome_rate"]["by_group"]["f"]["value"] == 1.0
    assert metrics["outcome_rate"]["by_group"]["m"]["value"] == 0.0
    assert (
        "outcome_rate"
        not in fairness_report(**data, n_bootstrap=0)["attributes"]["gender"]["metrics"]
    )  # type: ignore[arg-type]


def test_bootstrap_intervals_bracket_the_estimate_and_follow_the_seed() -> None:
    rng = np.random.default_rng(3)
    tops = {g: list(rng.choice(OPTIONS, 120)) for g in ("f", "m")}
    data = _slates(tops)
    first = fairness_report(**data, n_bootstrap=100, seed=1)  # type: ignore[arg-type]
    again = fairness_report(**data, n_bootstrap=100, seed=1)  # type: ignore[arg-type]
    other = fairness_report(**data, n_bootstrap=100, seed=2)  # type: ignore[arg-type]
    plan = first["attributes"]["gender"]["exposure"]["payment_plan"]
    for estimate in (*plan["by_group"].values(), plan["overall"], plan["ratio"]):
        lo, hi = estimate["ci"]
        assert lo <= estimate["value"] <= hi
        assert hi > lo
    assert first == again
    assert first != other


def test_the_ratio_interval_is_the_named_pairs_so_equal_groups_are_not_proven_apart() -> None:
    """Six groups drawn alike: the range between the extreme groups is noise.

    Re-taking the max and min across groups in every resample widens the range by
    noise alone; the interval of the pair the point estimates name must still reach
    the true ratio of 1 past four fifths.
    """
    rng = np.random.default_rng(7)
    tops = {g: list(rng.choice(OPTIONS, 40)) for g in "abcdef"}
    report = fairness_report(**_slates(tops), n_bootstrap=200, seed=0)  # type: ignore[arg-type]
    for option in OPTIONS:
        estimate = report["attributes"]["gender"]["exposure"][option]
        assert estimate["ratio"]["value"] < 0.8, "the premise: noise alone breaks four fifths"
        assert estimate["ratio"]["ci"][1] >= 0.8, (option, estimate["ratio"])


def test_small_groups_are_suppressed_and_borrowers_without_a_row_are_missing() -> None:
    data = _slates({"f": ["payment_plan"] * 60, "m": ["pay_now"] * 60, "x": ["pay_now"] * 6})
    protected = data["protected"]
    assert isinstance(protected, pd.DataFrame)
    data["protected"] = protected[protected["gender"] != "m"]  # m borrowers have no row
    report = fairness_report(**data, min_group_size=30, n_bootstrap=0)  # type: ignore[arg-type]
    part = report["attributes"]["gender"]
    assert part["groups"] == {"f": 60, MISSING_GROUP: 60, "x": 6}
    assert part["suppressed_groups"] == ["x"]
    assert set(part["exposure"]["pay_now"]["by_group"]) == {"f", MISSING_GROUP}


def test_report_is_a_valid_fairness_report_and_draws_a_png() -> None:
    data = _slates({"f": ["payment_plan"] * 40, "m": ["pay_now"] * 40})
    report = fairness_report(**data, n_bootstrap=20)  # type: ignore[arg-type]
    FairnessReport.model_validate(report)
    png = fairness_png(report)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000
    for part in report["attributes"].values():  # a report from before equal opportunity
        del part["opportunity"]
    assert fairness_png(report)[:8] == b"\x89PNG\r\n\x1a\n"


def _bad(**change: object) -> dict[str, object]:
    data = _slates({"f": ["payment_plan"] * 40, "m": ["pay_now"] * 40})
    data.update(change)
    return data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_bad(qid=np.zeros(5)), "qid"),
        (_bad(labels=np.zeros(3)), "labels"),
        (_bad(scores=np.full(240, np.nan)), "scores"),
        (_bad(scores=np.zeros((240, 2))), "scores"),
        (_bad(protected=pd.DataFrame({"id": [1], "gender": ["f"]})), "protected"),
        (_bad(protected=pd.DataFrame({"borrower_id": [1, 1], "gender": ["f", "m"]})), "protected"),
        (_bad(attributes=["religion"]), "attributes"),
        (_bad(k=0), "k"),
        (_bad(n_bootstrap=-1), "n_bootstrap"),
        (_bad(ci_level=1.0), "ci_level"),
        (_bad(min_group_size=0), "min_group_size"),
        (_bad(min_option_share=1.0), "min_option_share"),
        (_bad(eligible_label=0), "eligible_label"),
        (_bad(min_eligible=0), "min_eligible"),
    ],
    ids=[
        "qid-length",
        "labels-length",
        "nan-score",
        "2d-scores",
        "no-borrower-id",
        "dup-borrower",
        "unknown-attribute",
        "k-zero",
        "negative-bootstrap",
        "ci-level-1",
        "group-size-0",
        "option-share-1",
        "eligible-label-0",
        "min-eligible-0",
    ],
)
def test_bad_input_is_refused_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        fairness_report(**{"n_bootstrap": 0, **data})  # type: ignore[arg-type]
    assert info.value.field == field
