"""Fairness of a ranking model across protected groups, with bootstrap intervals.

The protected table is joined only here, at evaluation time, by ``borrower_id``; it
never reaches training or serving. For each protected attribute and group the report
holds, per presentation (one ranking group, ``qid``):

* **exposure** of each option: how often the model ranks it first;
* **opportunity** of each option (equal opportunity): among the presentations where
  the option was the borrower's best, as far as the evaluation data can tell without
  ground truth (it was shown and the borrower completed it: label >= ``eligible_label``),
  how often the model ranks it first. Unlike raw exposure this conditions on need: a
  group that needs payment plans more often should see them first more often, but a
  borrower who needed one should get it first whatever their group;
* **ndcg**: NDCG@k of the model's order against the logged graded labels
  (presentations whose labels are all 0 have no NDCG and are left out);
* **cure_rate_at_1**: how often the option ranked first was completed and the loan
  current 14 days later (label 3);
* **outcome_rate** (when ``current_14d`` is given): how often the loan was current
  14 days after the presentation.

Point estimates of exposure and the quality metrics come from fairlearn's
:class:`~fairlearn.metrics.MetricFrame`; equal opportunity compares a different subset
of groups per option (those with at least ``min_eligible`` eligible presentations), so
its point estimates are the exact means of the same per-borrower sums the bootstrap
resamples. Differences are max - min and ratios min / max over the compared groups;
their intervals are those of the pair of groups the point estimates name. Intervals
come from a bootstrap that resamples *borrowers* (a borrower's presentations are
correlated), done in numpy (:mod:`attune.governance._group_stats`): MetricFrame's own
``n_boot`` took ~100 s for 200 resamples of 20k rows here. Groups smaller than
``min_group_size`` presentations are suppressed (their size is reported, their figures
are not: small cells are both noisy and re-identifying).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from attune.errors import InvalidInput
from attune.governance._group_stats import (
    Bootstrap,
    interval,
    metric_matrix,
    num,
    ordered_options,
    per_presentation,
)

#: A presentation counts towards an option's equal opportunity from this label on
#: (2: the borrower completed the option when it was shown).
COMPLETED_LABEL = 2
#: The four-fifths rule: a group's rate below 80 % of the best group's is adverse impact.
FOUR_FIFTHS = 0.8
#: Placeholder group of borrowers without a protected-table row (or with a null value).
MISSING_GROUP = "(missing)"


class Estimate(BaseModel):
    """A point estimate with its bootstrap interval (``None`` when undefined)."""

    model_config = ConfigDict(extra="forbid")

    value: float | None = Field(description="Point estimate; null when undefined.")
    ci: tuple[float | None, float | None] | None = Field(
        default=None, description="Bootstrap interval (lower, upper); null without bootstrap."
    )


class GroupEstimate(Estimate):
    n: int = Field(ge=0, description="Presentations of the group that define the estimate.")


class MetricSummary(BaseModel):
    """One metric overall, by group, and its spread across groups."""

    model_config = ConfigDict(extra="forbid")

    overall: Estimate = Field(description="Over every presentation.")
    by_group: dict[str, GroupEstimate] = Field(description="Per compared group.")
    difference: Estimate = Field(description="max - min over compared groups.")
    ratio: Estimate = Field(description="min / max over compared groups.")
    min_group: str | None = Field(description="Group with the lowest value.")
    max_group: str | None = Field(description="Group with the highest value.")
    four_fifths_flag: bool | None = Field(
        description="ratio < 0.8 for a rate of a favourable outcome; null when not applicable."
    )
    left_out: dict[str, int] = Field(
        default_factory=dict,
        description="Reported groups not compared for this metric (too few presentations "
        "define it), with how many do.",
    )


class AttributeReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groups: dict[str, int] = Field(description="Presentations per group, suppressed ones too.")
    suppressed_groups: list[str] = Field(description="Groups below min_group_size.")
    exposure: dict[str, MetricSummary] = Field(description="Per option: share ranked first.")
    opportunity: dict[str, MetricSummary] = Field(
        default_factory=dict,
        description="Per option: share ranked first among presentations where the borrower "
        "completed it (equal opportunity); empty in reports written before it existed.",
    )
    metrics: dict[str, MetricSummary] = Field(description="ndcg, cure_rate_at_1, outcome_rate.")


class FourFifthsViolation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attribute: str
    metric: str = Field(description="'exposure:<option>', 'opportunity:<option>' or a rate.")
    ratio: float
    min_group: str
    max_group: str


class FourFifths(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passed: bool
    violations: list[FourFifthsViolation]


class FairnessReport(BaseModel):
    """The content of ``fairness.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["1"] = "1"
    k: int = Field(ge=1, description="NDCG cut-off.")
    n_rows: int = Field(ge=1)
    n_presentations: int = Field(ge=1)
    n_borrowers: int = Field(ge=1)
    n_bootstrap: int = Field(ge=0)
    seed: int
    ci_level: float = Field(gt=0, lt=1)
    min_group_size: int = Field(ge=1)
    min_option_share: float = Field(ge=0, lt=1)
    eligible_label: int = Field(
        default=COMPLETED_LABEL,
        ge=1,
        description="A presentation counts towards an option's opportunity from this label on.",
    )
    min_eligible: int = Field(
        default=20,
        ge=1,
        description="Groups with fewer eligible presentations of an option are not compared "
        "on its opportunity.",
    )
    options: list[str]
    attributes: dict[str, AttributeReport]
    four_fifths: FourFifths


def fairness_report(
    *,
    scores: Any,
    qid: Any,
    option_ids: Any,
    labels: Any,
    borrower_ids: Any,
    protected: pd.DataFrame,
    current_14d: Any | None = None,
    attributes: Sequence[str] | None = None,
    k: int = 3,
    n_bootstrap: int = 200,
    seed: int = 0,
    ci_level: float = 0.95,
    min_group_size: int = 30,
    min_option_share: float = 0.05,
    eligible_label: int = COMPLETED_LABEL,
    min_eligible: int = 20,
) -> dict[str, Any]:
    """Fairness of the ranking given by ``scores`` across protected groups.

    Takes one entry per candidate row (``scores``, ``qid``, ``option_ids``, ``labels``,
    ``borrower_ids``, optional ``current_14d``; equal lengths) and the ``protected``
    table (``borrower_id`` plus one column per attribute; ``attributes`` picks some).
    Returns the :class:`FairnessReport` as a JSON-ready dict. An option's opportunity
    is judged over presentations where its label is at least ``eligible_label``, and
    compares only groups with at least ``min_eligible`` of them. The four-fifths flag is
    set for rates (exposure of options ranked first in at least ``min_option_share``
    of presentations, opportunity, cure and outcome rates) whose min/max ratio is below
    0.8.

    Raises :class:`InvalidInput` naming the argument for unequal lengths, NaN scores,
    a protected table without ``borrower_id`` or with duplicate borrowers, or an
    unknown attribute, and for settings out of range (``n_bootstrap < 0``, ``ci_level``
    outside (0, 1), ``min_group_size < 1``, ``min_option_share`` outside [0, 1),
    ``eligible_label < 1``, ``min_eligible < 1``).
    """
    for field, value, ok in (
        ("n_bootstrap", n_bootstrap, n_bootstrap >= 0),
        ("ci_level", ci_level, 0 < ci_level < 1),
        ("min_group_size", min_group_size, min_group_size >= 1),
        ("min_option_share", min_option_share, 0 <= min_option_share < 1),
        ("eligible_label", eligible_label, eligible_label >= 1),
        ("min_eligible", min_eligible, min_eligible >= 1),
    ):
        if not ok:
            raise InvalidInput(f"{field}={value!r} is out of range", field=field, value=value)
    per, option_labels = per_presentation(
        scores=scores,
        qid=qid,
        option_ids=option_ids,
        labels=labels,
        borrower_ids=borrower_ids,
        current_14d=current_14d,
        k=k,
    )
    groups = _attach_groups(per, protected, attributes)
    options = ordered_options(np.unique(np.asarray(option_ids).astype(str)))
    values, names = metric_matrix(per, option_labels, options, eligible_label=eligible_label)
    borrowers, borrower_idx = np.unique(per["borrower_id"].to_numpy(), return_inverse=True)
    boot = Bootstrap.draw(
        values=values,
        borrower_idx=borrower_idx,
        n_borrowers=len(borrowers),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    overall_share = {o: float(np.mean(per["top_option"].to_numpy() == o)) for o in options}
    alpha = (1.0 - ci_level) / 2.0
    attribute_reports: dict[str, AttributeReport] = {}
    violations: list[FourFifthsViolation] = []
    for attribute in groups.columns:
        report = _attribute_report(
            per=per,
            group=groups[attribute],
            borrower_idx=borrower_idx,
            values=values,
            names=names,
            boot=boot,
            quantiles=(alpha, 1.0 - alpha),
            min_group_size=min_group_size,
            min_eligible=min_eligible,
            flaggable={f"exposure:{o}" for o, s in overall_share.items() if s >= min_option_share}
            | {f"opportunity:{o}" for o in options}
            | {"cure_rate_at_1", "outcome_rate"},
        )
        attribute_reports[attribute] = report
        for metric, summary in _all_metrics(report).items():
            if summary.four_fifths_flag:
                violations.append(
                    FourFifthsViolation(
                        attribute=attribute,
                        metric=metric,
                        ratio=float(summary.ratio.value or 0.0),
                        min_group=str(summary.min_group),
                        max_group=str(summary.max_group),
                    )
                )
    result = FairnessReport(
        k=k,
        n_rows=len(np.asarray(scores)),
        n_presentations=len(per),
        n_borrowers=len(borrowers),
        n_bootstrap=n_bootstrap,
        seed=seed,
        ci_level=ci_level,
        min_group_size=min_group_size,
        min_option_share=min_option_share,
        eligible_label=eligible_label,
        min_eligible=min_eligible,
        options=options,
        attributes=attribute_reports,
        four_fifths=FourFifths(passed=not violations, violations=violations),
    )
    return result.model_dump(mode="json")


def _all_metrics(report: AttributeReport) -> dict[str, MetricSummary]:
    return {
        **{f"exposure:{o}": s for o, s in report.exposure.items()},
        **{f"opportunity:{o}": s for o, s in report.opportunity.items()},
        **report.metrics,
    }


def _attach_groups(
    per: pd.DataFrame, protected: pd.DataFrame, attributes: Sequence[str] | None
) -> pd.DataFrame:
    """Group labels per presentation, one column per attribute (strings, never null)."""
    if "borrower_id" not in protected.columns:
        raise InvalidInput(
            "protected table has no borrower_id column",
            field="protected",
            columns=list(protected.columns),
        )
    dup = protected["borrower_id"].duplicated()
    if dup.any():
        bid = protected.loc[dup, "borrower_id"].iloc[0]
        raise InvalidInput(
            f"protected table has duplicate borrower_id {bid}", field="protected", borrower_id=bid
        )
    available = [c for c in protected.columns if c != "borrower_id"]
    chosen = list(attributes) if attributes is not None else available
    unknown = sorted(set(chosen) - set(available))
    if unknown or not chosen:
        raise InvalidInput(
            f"unknown protected attributes {unknown} (available: {available})",
            field="attributes",
            value=unknown,
        )
    table = protected.set_index("borrower_id")[chosen]
    joined = table.reindex(per["borrower_id"].to_numpy())
    return joined.astype(object).where(joined.notna(), MISSING_GROUP).astype(str)


# --------------------------------------------------------------------------- per attribute


def _nanmean(y_true: Any, y_pred: Any, *, values: np.ndarray) -> float:
    del y_true, y_pred
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def _frame_by_group(
    *, per: pd.DataFrame, group: pd.Series, keep: np.ndarray, values: np.ndarray, names: list[str]
) -> pd.DataFrame:
    """MetricFrame's per-group point estimates of every metric but opportunity."""
    from fairlearn.metrics import MetricFrame, selection_rate

    metrics: dict[str, Any] = {}
    params: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        if name.startswith("exposure:"):
            metrics[name] = partial(selection_rate, pos_label=name.split(":", 1)[1])
        elif not name.startswith("opportunity:"):
            metrics[name] = _nanmean
            params[name] = {"values": values[keep, j]}
    frame = MetricFrame(
        metrics=metrics,
        y_true=per["top_label"].to_numpy()[keep],
        y_pred=per["top_option"].to_numpy()[keep],
        sensitive_features=group.to_numpy()[keep],
        sample_params=params,
    )
    return frame.by_group.astype(float)


def _attribute_report(
    *,
    per: pd.DataFrame,
    group: pd.Series,
    borrower_idx: np.ndarray,
    values: np.ndarray,
    names: list[str],
    boot: Bootstrap,
    quantiles: tuple[float, float],
    min_group_size: int,
    min_eligible: int,
    flaggable: set[str],
) -> AttributeReport:
    sizes = group.value_counts().sort_index()
    reported = [str(g) for g, n in sizes.items() if n >= min_group_size]
    suppressed = [str(g) for g, n in sizes.items() if n < min_group_size]
    keep = group.isin(reported).to_numpy()
    by_group_frame = (
        _frame_by_group(per=per, group=group, keep=keep, values=values, names=names)
        if reported
        else None
    )
    all_members = np.arange(boot.sums.shape[0])
    overall_exact = boot.means(all_members)
    overall_boot = boot.group_means(all_members)
    members = {g: np.unique(borrower_idx[(group == g).to_numpy()]) for g in reported}
    exact = {g: boot.means(m) for g, m in members.items()}
    group_boot = {g: boot.group_means(m) for g, m in members.items()}
    defined = {g: np.isfinite(values[(group == g).to_numpy()]).sum(axis=0) for g in reported}

    summaries: dict[str, MetricSummary] = {}
    for j, name in enumerate(names):
        opportunity = name.startswith("opportunity:")
        point: dict[str, float | None] = {}
        for g in reported:
            if opportunity or by_group_frame is None:
                point[g] = num(exact[g][j])
            else:
                point[g] = num(by_group_frame.loc[g, name])
        compared = [g for g in reported if not opportunity or defined[g][j] >= min_eligible]
        summaries[name] = _summary(
            j=j,
            point=point,
            compared=compared,
            defined={g: int(defined[g][j]) for g in reported},
            group_boot=group_boot,
            overall=num(overall_exact[j]),
            overall_samples=None if overall_boot is None else overall_boot[:, j],
            quantiles=quantiles,
            flaggable=name in flaggable and (not opportunity or len(compared) > 1),
            left_out={g: int(defined[g][j]) for g in reported if g not in compared},
        )
    return AttributeReport(
        groups={str(g): int(n) for g, n in sizes.items()},
        suppressed_groups=suppressed,
        exposure=_section(summaries, "exposure:"),
        opportunity=_section(summaries, "opportunity:"),
        metrics={n: s for n, s in summaries.items() if ":" not in n},
    )


def _section(summaries: dict[str, MetricSummary], prefix: str) -> dict[str, MetricSummary]:
    return {n.split(":", 1)[1]: s for n, s in summaries.items() if n.startswith(prefix)}


def _summary(
    *,
    j: int,
    point: dict[str, float | None],
    compared: list[str],
    defined: dict[str, int],
    group_boot: dict[str, np.ndarray | None],
    overall: float | None,
    overall_samples: np.ndarray | None,
    quantiles: tuple[float, float],
    flaggable: bool,
    left_out: dict[str, int],
) -> MetricSummary:
    """One metric's summary over the ``compared`` groups."""
    column = {g: None if (s := group_boot[g]) is None else s[:, j] for g in compared}
    by_group = {
        g: GroupEstimate(value=point[g], ci=interval(column[g], quantiles), n=defined[g])
        for g in compared
    }
    diff = ratio = None
    min_group = max_group = None
    diff_ci = ratio_ci = None
    known = {g: v for g, v in point.items() if g in compared and v is not None}
    if len(compared) > 1 and known:
        low, high = min(known, key=known.__getitem__), max(known, key=known.__getitem__)
        if known[high] > 0:
            min_group, max_group = low, high
            ratio = known[low] / known[high]
        diff = known[high] - known[low]
        # The interval is the named pair's (the groups lowest and highest in the point
        # estimates), resampled as a pair: re-taking the max and min across groups in
        # every resample would widen the range with noise alone, so that groups equal
        # in truth would show a ratio interval wholly below four fifths.
        pair_low, pair_high = group_boot[low], group_boot[high]
        if pair_low is not None and pair_high is not None:
            lo, hi = pair_low[:, j], pair_high[:, j]
            with np.errstate(divide="ignore", invalid="ignore"):
                diff_ci = interval(hi - lo, quantiles)
                ratio_ci = interval(np.where(hi > 0, lo / hi, np.nan), quantiles)
    return MetricSummary(
        overall=Estimate(value=overall, ci=interval(overall_samples, quantiles)),
        by_group=by_group,
        difference=Estimate(value=diff, ci=diff_ci),
        ratio=Estimate(value=ratio, ci=ratio_ci),
        min_group=min_group,
        max_group=max_group,
        four_fifths_flag=(ratio is not None and ratio < FOUR_FIFTHS) if flaggable else None,
        left_out=left_out,
    )
