"""Fairness of a ranking model across protected groups, with bootstrap intervals.

The protected table is joined only here, at evaluation time, by ``borrower_id``; it
never reaches training or serving. For each protected attribute and group the report
holds, per presentation (one ranking group, ``qid``):

* **exposure** of each option: how often the model ranks it first;
* **ndcg**: NDCG@k of the model's order against the logged graded labels
  (presentations whose labels are all 0 have no NDCG and are left out);
* **cure_rate_at_1**: how often the option ranked first was completed and the loan
  current 14 days later (label 3);
* **outcome_rate** (when ``current_14d`` is given): how often the loan was current
  14 days after the presentation.

Point estimates, differences (max - min) and ratios (min / max) across groups come
from fairlearn's :class:`~fairlearn.metrics.MetricFrame`. Intervals come from a
bootstrap that resamples *borrowers* (a borrower's presentations are correlated), done
in numpy: MetricFrame's own ``n_boot`` took ~100 s for 200 resamples of 20k rows here.
Groups smaller than ``min_group_size`` presentations are suppressed (their size is
reported, their figures are not: small cells are both noisy and re-identifying).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from attune.data.schema import OPTION_IDS
from attune.errors import InvalidInput

#: Label of a completed option whose loan was current 14 days later.
CURED_LABEL = 3
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
    by_group: dict[str, GroupEstimate] = Field(description="Per reported group.")
    difference: Estimate = Field(description="max - min over reported groups.")
    ratio: Estimate = Field(description="min / max over reported groups.")
    min_group: str | None = Field(description="Group with the lowest value.")
    max_group: str | None = Field(description="Group with the highest value.")
    four_fifths_flag: bool | None = Field(
        description="ratio < 0.8 for a rate of a favourable outcome; null when not applicable."
    )


class AttributeReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groups: dict[str, int] = Field(description="Presentations per group, suppressed ones too.")
    suppressed_groups: list[str] = Field(description="Groups below min_group_size.")
    exposure: dict[str, MetricSummary] = Field(description="Per option: share ranked first.")
    metrics: dict[str, MetricSummary] = Field(description="ndcg, cure_rate_at_1, outcome_rate.")


class FourFifthsViolation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attribute: str
    metric: str = Field(description="'exposure:<option>' or a rate metric name.")
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
) -> dict[str, Any]:
    """Fairness of the ranking given by ``scores`` across protected groups.

    Takes one entry per candidate row (``scores``, ``qid``, ``option_ids``, ``labels``,
    ``borrower_ids``, optional ``current_14d``; equal lengths) and the ``protected``
    table (``borrower_id`` plus one column per attribute; ``attributes`` picks some).
    Returns the :class:`FairnessReport` as a JSON-ready dict. The four-fifths flag is
    set for rates (exposure of options ranked first in at least ``min_option_share``
    of presentations, cure and outcome rates) whose min/max ratio is below 0.8.

    Raises :class:`InvalidInput` naming the argument for unequal lengths, NaN scores,
    a protected table without ``borrower_id`` or with duplicate borrowers, or an
    unknown attribute, and for settings out of range (``n_bootstrap < 0``, ``ci_level``
    outside (0, 1), ``min_group_size < 1``, ``min_option_share`` outside [0, 1)).
    """
    for field, value, ok in (
        ("n_bootstrap", n_bootstrap, n_bootstrap >= 0),
        ("ci_level", ci_level, 0 < ci_level < 1),
        ("min_group_size", min_group_size, min_group_size >= 1),
        ("min_option_share", min_option_share, 0 <= min_option_share < 1),
    ):
        if not ok:
            raise InvalidInput(f"{field}={value!r} is out of range", field=field, value=value)
    per = _per_presentation(
        scores=scores,
        qid=qid,
        option_ids=option_ids,
        labels=labels,
        borrower_ids=borrower_ids,
        current_14d=current_14d,
        k=k,
    )
    groups = _attach_groups(per, protected, attributes)
    options = _ordered_options(np.unique(np.asarray(option_ids).astype(str)))
    values, names = _metric_matrix(per, options)
    borrowers, borrower_idx = np.unique(per["borrower_id"].to_numpy(), return_inverse=True)
    boot = _Bootstrap.draw(
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
            values=values,
            names=names,
            boot=boot,
            quantiles=(alpha, 1.0 - alpha),
            min_group_size=min_group_size,
            flaggable={f"exposure:{o}" for o, s in overall_share.items() if s >= min_option_share}
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
        options=options,
        attributes=attribute_reports,
        four_fifths=FourFifths(passed=not violations, violations=violations),
    )
    return result.model_dump(mode="json")


def _all_metrics(report: AttributeReport) -> dict[str, MetricSummary]:
    return {**{f"exposure:{o}": s for o, s in report.exposure.items()}, **report.metrics}


# --------------------------------------------------------------------------- per presentation


def _column(name: str, value: Any, n: int | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise InvalidInput(f"{name} must be one-dimensional, got shape {arr.shape}", field=name)
    if n is not None and len(arr) != n:
        raise InvalidInput(
            f"{name} has {len(arr)} entries but scores has {n}", field=name, length=len(arr)
        )
    return arr


def _per_presentation(
    *,
    scores: Any,
    qid: Any,
    option_ids: Any,
    labels: Any,
    borrower_ids: Any,
    current_14d: Any | None,
    k: int,
) -> pd.DataFrame:
    """One row per qid: borrower, top option, its label, NDCG@k, outcome."""
    score = _column("scores", scores, None).astype(np.float64)
    n = len(score)
    if n == 0:
        raise InvalidInput("scores is empty", field="scores")
    if np.isnan(score).any():
        row = int(np.flatnonzero(np.isnan(score))[0])
        raise InvalidInput(f"scores has NaN at row {row}", field="scores", row=row)
    if k < 1:
        raise InvalidInput(f"k must be >= 1, got {k}", field="k", value=k)
    rows = pd.DataFrame(
        {
            "qid": _column("qid", qid, n),
            "score": score,
            "option_id": _column("option_ids", option_ids, n).astype(str),
            "label": _column("labels", labels, n).astype(np.float64),
            "borrower_id": _column("borrower_ids", borrower_ids, n),
            "row": np.arange(n),
        }
    )
    if current_14d is not None:
        rows["current_14d"] = _column("current_14d", current_14d, n).astype(np.float64)
    # Ties in score keep input order, so the report is deterministic.
    ranked = rows.sort_values(["qid", "score", "row"], ascending=[True, False, True])
    rank = ranked.groupby("qid", sort=False).cumcount().to_numpy() + 1
    discount = np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)
    ranked = ranked.assign(dcg=(2.0 ** ranked["label"].to_numpy() - 1.0) * discount)
    ideal = rows.sort_values(["qid", "label"], ascending=[True, False])
    ideal_rank = ideal.groupby("qid", sort=False).cumcount().to_numpy() + 1
    ideal_discount = np.where(ideal_rank <= k, 1.0 / np.log2(ideal_rank + 1.0), 0.0)
    ideal = ideal.assign(idcg=(2.0 ** ideal["label"].to_numpy() - 1.0) * ideal_discount)
    agg: dict[str, Any] = {
        "borrower_id": ("borrower_id", "first"),
        "top_option": ("option_id", "first"),
        "top_label": ("label", "first"),
        "dcg": ("dcg", "sum"),
    }
    if current_14d is not None:
        agg["outcome"] = ("current_14d", "max")
    per = ranked.groupby("qid", sort=True).agg(**agg)
    idcg = ideal.groupby("qid", sort=True)["idcg"].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        per["ndcg"] = np.where(idcg.to_numpy() > 0, per["dcg"].to_numpy() / idcg.to_numpy(), np.nan)
    return per.reset_index()


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


def _ordered_options(seen: Any) -> list[str]:
    """The candidate options: catalog order first, then any other id alphabetically."""
    seen_set = {str(s) for s in seen}
    return [o for o in OPTION_IDS if o in seen_set] + sorted(seen_set - set(OPTION_IDS))


def _metric_matrix(per: pd.DataFrame, options: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per-presentation values of every metric (NaN where undefined), with their names."""
    top = per["top_option"].to_numpy()
    columns = [(top == o).astype(np.float64) for o in options]
    names = [f"exposure:{o}" for o in options]
    columns += [per["ndcg"].to_numpy(), (per["top_label"].to_numpy() == CURED_LABEL) * 1.0]
    names += ["ndcg", "cure_rate_at_1"]
    if "outcome" in per.columns:
        columns.append(per["outcome"].to_numpy())
        names.append("outcome_rate")
    return np.column_stack(columns), names


# --------------------------------------------------------------------------- bootstrap


class _Bootstrap:
    """Borrower-level resampling weights and per-borrower sums of every metric."""

    def __init__(self, *, weights: np.ndarray | None, sums: np.ndarray, counts: np.ndarray) -> None:
        self.weights = weights  # (n_bootstrap, n_borrowers) multiplicities, or None
        self.sums = sums  # (n_borrowers, n_metrics) nan-sums
        self.counts = counts  # (n_borrowers, n_metrics) defined values

    @classmethod
    def draw(
        cls,
        *,
        values: np.ndarray,
        borrower_idx: np.ndarray,
        n_borrowers: int,
        n_bootstrap: int,
        seed: int,
    ) -> _Bootstrap:
        defined = ~np.isnan(values)
        sums = np.zeros((n_borrowers, values.shape[1]))
        counts = np.zeros_like(sums)
        np.add.at(sums, borrower_idx, np.where(defined, values, 0.0))
        np.add.at(counts, borrower_idx, defined * 1.0)
        weights = None
        if n_bootstrap > 0:
            rng = np.random.default_rng(seed)
            p = np.full(n_borrowers, 1.0 / n_borrowers)
            weights = rng.multinomial(n_borrowers, p, size=n_bootstrap).astype(np.float64)
        return cls(weights=weights, sums=sums, counts=counts)

    def group_means(self, members: np.ndarray) -> np.ndarray | None:
        """(n_bootstrap, n_metrics) resampled means over the borrowers in ``members``."""
        if self.weights is None:
            return None
        w = self.weights[:, members]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (w @ self.sums[members]) / (w @ self.counts[members])


def _interval(samples: np.ndarray | None, quantiles: tuple[float, float]) -> Any:
    if samples is None:
        return None
    finite = samples[np.isfinite(samples)]
    if finite.size < max(2, samples.size // 2):
        return (None, None)  # undefined in most resamples: no honest interval
    lo, hi = np.quantile(finite, quantiles)
    return (float(lo), float(hi))


def _num(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


# --------------------------------------------------------------------------- per attribute


def _nanmean(y_true: Any, y_pred: Any, *, values: np.ndarray) -> float:
    del y_true, y_pred
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _attribute_report(
    *,
    per: pd.DataFrame,
    group: pd.Series,
    values: np.ndarray,
    names: list[str],
    boot: _Bootstrap,
    quantiles: tuple[float, float],
    min_group_size: int,
    flaggable: set[str],
) -> AttributeReport:
    from fairlearn.metrics import MetricFrame, selection_rate

    sizes = group.value_counts().sort_index()
    reported = [str(g) for g, n in sizes.items() if n >= min_group_size]
    suppressed = [str(g) for g, n in sizes.items() if n < min_group_size]
    keep = group.isin(reported).to_numpy()

    metrics: dict[str, Any] = {}
    params: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        if name.startswith("exposure:"):
            metrics[name] = partial(selection_rate, pos_label=name.split(":", 1)[1])
        else:
            metrics[name] = _nanmean
            params[name] = {"values": values[keep, j]}
    frame = None
    if reported:
        frame = MetricFrame(
            metrics=metrics,
            y_true=per["top_label"].to_numpy()[keep],
            y_pred=per["top_option"].to_numpy()[keep],
            sensitive_features=group.to_numpy()[keep],
            sample_params=params,
        )

    borrower_idx = np.unique(per["borrower_id"].to_numpy(), return_inverse=True)[1]
    overall_boot = boot.group_means(np.arange(boot.sums.shape[0]))
    group_boot: dict[str, np.ndarray | None] = {}
    for g in reported:
        members = np.unique(borrower_idx[(group == g).to_numpy()])
        group_boot[g] = boot.group_means(members)

    summaries: dict[str, MetricSummary] = {}
    for j, name in enumerate(names):
        overall = _num(np.nanmean(values[:, j])) if np.isfinite(values[:, j]).any() else None
        by_group: dict[str, GroupEstimate] = {}
        for g in reported:
            in_g = (group == g).to_numpy()
            assert frame is not None
            samples = group_boot[g]
            by_group[g] = GroupEstimate(
                value=_num(frame.by_group.loc[g, name]),
                ci=_interval(None if samples is None else samples[:, j], quantiles),
                n=int(np.isfinite(values[in_g, j]).sum()),
            )
        diff = ratio = None
        min_group = max_group = None
        diff_ci = ratio_ci = None
        if frame is not None and len(reported) > 1:
            column = frame.by_group[name].astype(float)
            if column.notna().any() and column.max() > 0:
                min_group, max_group = str(column.idxmin()), str(column.idxmax())
            diff = _num(frame.difference()[name])
            ratio = _num(frame.ratio()[name])
            stacked = [group_boot[g] for g in reported]
            if all(s is not None for s in stacked):
                per_group = np.stack([s[:, j] for s in stacked if s is not None], axis=1)
                with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples
                    hi, lo = np.nanmax(per_group, axis=1), np.nanmin(per_group, axis=1)
                    diff_ci = _interval(hi - lo, quantiles)
                    ratio_ci = _interval(np.where(hi > 0, lo / hi, np.nan), quantiles)
        applicable = name in flaggable
        summaries[name] = MetricSummary(
            overall=Estimate(
                value=overall,
                ci=_interval(None if overall_boot is None else overall_boot[:, j], quantiles),
            ),
            by_group=by_group,
            difference=Estimate(value=diff, ci=diff_ci),
            ratio=Estimate(value=ratio, ci=ratio_ci),
            min_group=min_group,
            max_group=max_group,
            four_fifths_flag=(ratio is not None and ratio < FOUR_FIFTHS) if applicable else None,
        )
    return AttributeReport(
        groups={str(g): int(n) for g, n in sizes.items()},
        suppressed_groups=suppressed,
        exposure={n.split(":", 1)[1]: s for n, s in summaries.items() if n.startswith("exposure:")},
        metrics={n: s for n, s in summaries.items() if not n.startswith("exposure:")},
    )
