"""Honest evaluation of a ranker on the test split.

Two kinds of figures, written together to ``metrics.json`` with PNG plots beside it:

* **Ranking metrics on the logged slates** (:func:`ranking_metrics`): NDCG@1 and @3 on
  the graded label (gain ``2**label - 1``, as XGBoost), MAP and precision/recall@k with
  "completed" (label >= 2) as relevant. Groups where the metric is undefined (no gain,
  nothing completed) are left out and counted, rather than scored 1 or 0.
* **Policy value from the simulator's ground truth** (:func:`policy_evaluation`): for
  every test presentation the model scores all catalog options (the borrower and
  context features of the presentation, ``position = 1``, the option's one-hot), its
  top three are its slate, and the ground truth prices that slate. The model is
  compared with a random slate, the legacy (logged) slate, the best fixed slate (one
  order for everyone, the best on these presentations) and the oracle, as lift over
  random and as the share of the oracle's lift over random that each captures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attune.errors import FeatureSpecMismatch

#: A row is "completed" (relevant for MAP, precision and recall) at this label or above.
COMPLETED_LABEL = 2
NDCG_KS: tuple[int, ...] = (1, 3)
PR_KS: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class _Groups:
    """Row order of every group under a score, for vectorized per-group metrics."""

    starts: np.ndarray  # first row of each group (in the sorted order)
    sizes: np.ndarray
    rank: np.ndarray  # 0-based rank of each row inside its group, in row order


def _groups(qid: np.ndarray, score: np.ndarray) -> _Groups:
    """Ranks by descending score inside each qid group (stable: ties keep row order)."""
    order = np.lexsort((-score, qid))
    sorted_qid = qid[order]
    boundary = np.r_[True, sorted_qid[1:] != sorted_qid[:-1]]
    starts = np.flatnonzero(boundary)
    sizes = np.diff(np.r_[starts, len(qid)])
    group_of_sorted = np.cumsum(boundary) - 1
    rank = np.empty(len(qid), dtype=np.int64)
    rank[order] = np.arange(len(qid)) - starts[group_of_sorted]
    return _Groups(starts=starts, sizes=sizes, rank=rank)


def _group_sums(values: np.ndarray, qid: np.ndarray) -> np.ndarray:
    """Sum of ``values`` per qid group, groups in ascending qid order."""
    _, inverse = np.unique(qid, return_inverse=True)
    return np.bincount(inverse, weights=values.astype(np.float64))


def ndcg_at(k: int, qid: np.ndarray, label: np.ndarray, score: np.ndarray) -> tuple[float, int]:
    """Mean NDCG@k over groups with any gain, and the number of such groups."""
    gain = np.power(2.0, label.astype(np.float64)) - 1.0
    disc = 1.0 / np.log2(np.arange(2, len(qid) + 2, dtype=np.float64))
    model_rank = _groups(qid, score).rank
    ideal_rank = _groups(qid, label.astype(np.float64)).rank
    dcg = _group_sums(np.where(model_rank < k, gain * disc[model_rank], 0.0), qid)
    idcg = _group_sums(np.where(ideal_rank < k, gain * disc[ideal_rank], 0.0), qid)
    valid = idcg > 0
    if not valid.any():
        return float("nan"), 0
    return float(np.mean(dcg[valid] / idcg[valid])), int(valid.sum())


def mean_average_precision(
    qid: np.ndarray, relevant: np.ndarray, score: np.ndarray
) -> tuple[float, int]:
    """MAP over groups with at least one relevant row, and the number of such groups."""
    rel = relevant.astype(np.float64)
    groups = _groups(qid, score)
    order = np.lexsort((groups.rank, qid))  # rows in ranked order, group by group
    rel_sorted = rel[order]
    qid_sorted = qid[order]
    boundary = np.r_[True, qid_sorted[1:] != qid_sorted[:-1]]
    starts = np.flatnonzero(boundary)
    cum = np.cumsum(rel_sorted)
    offset = np.repeat(np.r_[0.0, cum[starts[1:] - 1]], np.diff(np.r_[starts, len(qid)]))
    hits_so_far = cum - offset
    rank = groups.rank[order] + 1
    precision_at_hit = np.where(rel_sorted > 0, hits_so_far / rank, 0.0)
    n_rel = _group_sums(rel, qid)
    ap_sum = _group_sums(precision_at_hit, qid_sorted)
    valid = n_rel > 0
    if not valid.any():
        return float("nan"), 0
    return float(np.mean(ap_sum[valid] / n_rel[valid])), int(valid.sum())


def precision_recall_at(
    k: int, qid: np.ndarray, relevant: np.ndarray, score: np.ndarray
) -> tuple[float, float, int]:
    """Mean precision@k and recall@k over groups with a relevant row, and their count."""
    rel = relevant.astype(np.float64)
    rank = _groups(qid, score).rank
    hits = _group_sums(np.where(rank < k, rel, 0.0), qid)
    n_rel = _group_sums(rel, qid)
    sizes = _group_sums(np.ones_like(rel), qid)
    valid = n_rel > 0
    if not valid.any():
        return float("nan"), float("nan"), 0
    precision = hits[valid] / np.minimum(k, sizes[valid])
    recall = hits[valid] / n_rel[valid]
    return float(np.mean(precision)), float(np.mean(recall)), int(valid.sum())


def ranking_metrics(qid: np.ndarray, label: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """NDCG@{1,3}, MAP and precision/recall@{1,2} for "completed", with group counts."""
    if not (len(qid) == len(label) == len(score)):
        raise FeatureSpecMismatch(
            expected=len(qid),
            actual=(len(label), len(score)),
            problem="qid, label and score must have one entry per row",
        )
    out: dict[str, Any] = {"rows": len(qid), "groups": len(np.unique(qid))}
    for k in NDCG_KS:
        value, n = ndcg_at(k, qid, label, score)
        out[f"ndcg@{k}"] = value
        out["groups_with_gain"] = n
    relevant = label >= COMPLETED_LABEL
    out["map"], out["groups_with_completed"] = mean_average_precision(qid, relevant, score)
    for k in PR_KS:
        p, r, _ = precision_recall_at(k, qid, relevant, score)
        out[f"precision@{k}"] = p
        out[f"recall@{k}"] = r
    return out
