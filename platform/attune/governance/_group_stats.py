"""Per-presentation metric values and the borrower bootstrap behind the fairness report.

:func:`per_presentation` reduces candidate rows to one row per presentation (``qid``);
:func:`metric_matrix` turns those into one column per metric, NaN where a metric is
undefined for a presentation (NDCG without gain; equal opportunity of an option that
was not completed there); :class:`Bootstrap` resamples borrowers and gives exact and
resampled NaN-aware means over any set of borrowers. Pure numpy/pandas, no fairlearn.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from attune.data.schema import OPTION_IDS
from attune.errors import InvalidInput

#: Label of a completed option whose loan was current 14 days later.
CURED_LABEL = 3


def column(name: str, value: Any, n: int | None) -> np.ndarray:
    """``value`` as a one-dimensional array of length ``n`` (InvalidInput names ``name``)."""
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise InvalidInput(f"{name} must be one-dimensional, got shape {arr.shape}", field=name)
    if n is not None and len(arr) != n:
        raise InvalidInput(
            f"{name} has {len(arr)} entries but scores has {n}", field=name, length=len(arr)
        )
    return arr


def per_presentation(
    *,
    scores: Any,
    qid: Any,
    option_ids: Any,
    labels: Any,
    borrower_ids: Any,
    current_14d: Any | None,
    k: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per qid (borrower, top option, its label, NDCG@k, outcome), sorted by qid.

    The second frame holds, per qid (same order) and option, the option's label there
    (NaN when the option was not a candidate of that presentation).
    """
    score = column("scores", scores, None).astype(np.float64)
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
            "qid": column("qid", qid, n),
            "score": score,
            "option_id": column("option_ids", option_ids, n).astype(str),
            "label": column("labels", labels, n).astype(np.float64),
            "borrower_id": column("borrower_ids", borrower_ids, n),
            "row": np.arange(n),
        }
    )
    if current_14d is not None:
        rows["current_14d"] = column("current_14d", current_14d, n).astype(np.float64)
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
    option_labels = rows.groupby(["qid", "option_id"], sort=True)["label"].max().unstack()
    return per.reset_index(), option_labels.reindex(per.index)


def ordered_options(seen: Any) -> list[str]:
    """The candidate options: catalog order first, then any other id alphabetically."""
    seen_set = {str(s) for s in seen}
    return [o for o in OPTION_IDS if o in seen_set] + sorted(seen_set - set(OPTION_IDS))


def metric_matrix(
    per: pd.DataFrame, option_labels: pd.DataFrame, options: list[str], *, eligible_label: int
) -> tuple[np.ndarray, list[str]]:
    """Per-presentation values of every metric (NaN where undefined), with their names.

    ``exposure:<o>`` is 1 where ``o`` is ranked first; ``opportunity:<o>`` is the same,
    but defined only where ``o``'s label is at least ``eligible_label`` (the borrower
    completed ``o`` when it was shown: the presentations where ``o`` was their best).
    """
    top = per["top_option"].to_numpy()
    columns = [(top == o).astype(np.float64) for o in options]
    names = [f"exposure:{o}" for o in options]
    for o in options:
        label = option_labels[o].to_numpy(dtype=np.float64) if o in option_labels else None
        eligible = np.zeros(len(per), bool) if label is None else label >= eligible_label
        columns.append(np.where(eligible, (top == o) * 1.0, np.nan))
        names.append(f"opportunity:{o}")
    columns += [per["ndcg"].to_numpy(), (per["top_label"].to_numpy() == CURED_LABEL) * 1.0]
    names += ["ndcg", "cure_rate_at_1"]
    if "outcome" in per.columns:
        columns.append(per["outcome"].to_numpy())
        names.append("outcome_rate")
    return np.column_stack(columns), names


class Bootstrap:
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
    ) -> Bootstrap:
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

    def means(self, members: np.ndarray) -> np.ndarray:
        """(n_metrics,) exact means over the borrowers in ``members`` (NaN where undefined)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.sums[members].sum(axis=0) / self.counts[members].sum(axis=0)

    def group_means(self, members: np.ndarray) -> np.ndarray | None:
        """(n_bootstrap, n_metrics) resampled means over the borrowers in ``members``."""
        if self.weights is None:
            return None
        w = self.weights[:, members]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (w @ self.sums[members]) / (w @ self.counts[members])


def interval(samples: np.ndarray | None, quantiles: tuple[float, float]) -> Any:
    """The bootstrap interval of ``samples``; (None, None) when mostly undefined."""
    if samples is None:
        return None
    finite = samples[np.isfinite(samples)]
    if finite.size < max(2, samples.size // 2):
        return (None, None)  # undefined in most resamples: no honest interval
    lo, hi = np.quantile(finite, quantiles)
    return (float(lo), float(hi))


def num(value: Any) -> float | None:
    """A finite float, or None for NaN and infinities."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value
