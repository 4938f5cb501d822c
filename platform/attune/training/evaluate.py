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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attune import storage
from attune.data.schema import OPTION_IDS, SLATE_SIZE, TOUCHPOINTS
from attune.data.spec import BORROWER_FEATURES, CONTEXT_FEATURES, FeatureSpec
from attune.errors import FeatureSpecMismatch, SchemaError
from attune.simulator.ground_truth import GroundTruth
from attune.training.dataset import RankingSplit

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


# --------------------------------------------------------------------------- policy value

#: Policies compared in the policy evaluation, in report order.
POLICIES: tuple[str, ...] = ("random", "legacy", "best_fixed", "model", "oracle")

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Presentations:
    """The test presentations: their ids, candidate matrix and logged slates.

    ``candidates`` holds ``len(qid) * len(options)`` rows, presentation by presentation,
    options in catalog order, each at ``position = 1``.
    """

    qid: np.ndarray  # (n,) int64, ascending
    candidates: np.ndarray  # (n * n_options, n_features) float32
    logged: np.ndarray  # (n, slate) option index shown at each position; -1 when absent
    options: tuple[str, ...]


@dataclass(frozen=True)
class PolicyReport:
    """Expected reward per presentation of each policy, with lift and share of the oracle's."""

    values: dict[str, float]
    lift_over_random: dict[str, float]
    share_of_oracle_lift: dict[str, float]
    presentations: int
    best_fixed_slate: tuple[str, ...]
    model_top1_mix: dict[str, float]
    oracle_top1_mix: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_values": self.values,
            "lift_over_random": self.lift_over_random,
            "share_of_oracle_lift": self.share_of_oracle_lift,
            "presentations": self.presentations,
            "best_fixed_slate": list(self.best_fixed_slate),
            "model_top1_mix": self.model_top1_mix,
            "oracle_top1_mix": self.oracle_top1_mix,
        }


def presentations_from_split(split: RankingSplit, spec: FeatureSpec) -> Presentations:
    """Candidate rows for every option of every presentation of ``split``.

    The borrower and touchpoint features of a presentation are the same on all its
    rows; the candidates keep them, put ``position = 1`` (as serving does) and set the
    option's one-hot, through the same feature helpers that build training and
    serving rows.
    """
    from attune.data.features import feature_matrix, option_rows

    missing = [n for n in (*BORROWER_FEATURES, *CONTEXT_FEATURES) if n not in spec.names]
    if missing:
        raise FeatureSpecMismatch(
            expected=list(BORROWER_FEATURES + CONTEXT_FEATURES),
            actual=list(spec.names),
            problem=f"spec lacks features the candidates need: {missing}",
        )
    qid, first = np.unique(split.qid, return_index=True)
    index = {name: i for i, name in enumerate(spec.names)}
    borrower_cols = np.array([index[n] for n in BORROWER_FEATURES], dtype=np.int64)
    borrower = pd.DataFrame(split.X[first][:, borrower_cols], columns=list(BORROWER_FEATURES))
    touch_cols = [index[f"touchpoint_{t}"] for t in TOUCHPOINTS]
    touchpoint = np.asarray(TOUCHPOINTS, dtype=object)[np.argmax(split.X[first][:, touch_cols], 1)]
    rows = option_rows(borrower, options=spec.options, touchpoint=list(touchpoint), position=1)
    option_index = {o: i for i, o in enumerate(spec.options)}
    logged = np.full((len(qid), SLATE_SIZE), -1, dtype=np.int64)
    group = np.searchsorted(qid, split.qid)
    pos = split.position.astype(np.int64) - 1
    ok = (pos >= 0) & (pos < SLATE_SIZE)
    logged[group[ok], pos[ok]] = np.array(
        [option_index[o] for o in split.option_id[ok]], dtype=np.int64
    )
    return Presentations(
        qid=qid, candidates=feature_matrix(rows, spec), logged=logged, options=spec.options
    )


def policy_evaluation(
    presentations: Presentations, *, score: Scorer, ground_truth: GroundTruth
) -> PolicyReport:
    """Price the model's slates and the reference policies with the simulator's ground truth.

    The model's slate is its top three candidates by ``score`` (best at position 1);
    random, legacy (the logged slates), best fixed and oracle are priced by
    :func:`attune.simulator.ground_truth.policy_values`. Raises :class:`FeatureSpecMismatch`
    when the candidates are not in catalog order and :class:`SchemaError` when a logged
    slate is incomplete.
    """
    from attune.simulator.ground_truth import best_fixed_slate, policy_values, share_of_oracle_lift

    if tuple(presentations.options) != OPTION_IDS:
        raise FeatureSpecMismatch(
            expected=list(OPTION_IDS),
            actual=list(presentations.options),
            problem="candidates must follow the catalog order of the ground truth",
        )
    incomplete = np.flatnonzero((presentations.logged < 0).any(axis=1))
    if len(incomplete):
        raise SchemaError(
            file="test split",
            column="position",
            problem=f"presentation {int(presentations.qid[incomplete[0]])} shows fewer than "
            f"{SLATE_SIZE} options ({len(incomplete)} such presentations)",
        )
    n, n_opt = len(presentations.qid), len(presentations.options)
    scores = np.asarray(score(presentations.candidates), dtype=np.float64).reshape(n, n_opt)
    values = policy_values(
        ground_truth,
        presentation_ids=presentations.qid,
        model_scores=scores,
        legacy_slates=presentations.logged,
    )
    lift = {p: values[p] - values["random"] for p in POLICIES}
    share = {
        p: share_of_oracle_lift(values[p], random=values["random"], oracle=values["oracle"])
        for p in POLICIES
    }
    truth = ground_truth.subset(presentations.qid)

    def _mix(top: np.ndarray) -> dict[str, float]:
        counts = np.bincount(top, minlength=n_opt) / max(n, 1)
        return {o: float(c) for o, c in zip(presentations.options, counts, strict=True)}

    fixed = best_fixed_slate(truth, ground_truth.position_bias)
    return PolicyReport(
        values={p: values[p] for p in POLICIES},
        lift_over_random=lift,
        share_of_oracle_lift=share,
        presentations=n,
        best_fixed_slate=tuple(presentations.options[i] for i in fixed),
        model_top1_mix=_mix(np.argmax(scores, axis=1)),
        oracle_top1_mix=_mix(np.argmax(truth, axis=1)),
    )


# --------------------------------------------------------------------------- plots


def plot_policy_values(report: PolicyReport, path: str | Path) -> Path:
    """Bar chart of each policy's expected reward, annotated with its share of the oracle's lift."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(POLICIES)
    heights = [report.values[p] for p in names]
    colors = ["#bbbbbb", "#8c8c8c", "#6a9fd4", "#d9822b", "#3a7d44"]
    bars = ax.bar(names, heights, color=colors)
    for bar, name in zip(bars, names, strict=True):
        share = report.share_of_oracle_lift[name]
        ax.annotate(
            f"{share:.0%}" if np.isfinite(share) else "",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
        )
    ax.set_ylabel("expected reward per presentation")
    ax.set_title(
        f"policy value on {report.presentations} test presentations (share of oracle lift)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_option_mix(report: PolicyReport, path: str | Path) -> Path:
    """Grouped bars: how often each option is the model's and the oracle's first choice."""
    plt = _pyplot()
    path = Path(path)
    options = list(report.model_top1_mix)
    x = np.arange(len(options))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(x - 0.2, [report.model_top1_mix[o] for o in options], 0.4, label="model")
    ax.bar(x + 0.2, [report.oracle_top1_mix[o] for o in options], 0.4, label="oracle")
    ax.set_xticks(x, options, rotation=30, ha="right")
    ax.set_ylabel("share of presentations ranked first")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ranking_metrics(metrics: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of the test-split ranking metrics."""
    plt = _pyplot()
    path = Path(path)
    names = [f"ndcg@{k}" for k in NDCG_KS] + ["map"]
    names += [f"{m}@{k}" for k in PR_KS for m in ("precision", "recall")]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, [metrics[n] for n in names], color="#6a9fd4")
    ax.set_ylim(0, 1)
    ax.set_title("test split, logged slates (completed = label >= 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(metrics: dict[str, Any], policy: PolicyReport, out_dir: str | Path) -> Path:
    """Write ``metrics.json`` and the evaluation PNGs beside it into ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps(storage.to_jsonable(metrics), indent=2, sort_keys=True)
    )
    plot_policy_values(policy, out / "policy_values.png")
    plot_option_mix(policy, out / "option_mix.png")
    plot_ranking_metrics(metrics["test"], out / "ranking_metrics.png")
    return out / "metrics.json"
