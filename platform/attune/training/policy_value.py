"""The off-policy value of a ranker on a split's logged slates: what the sweep selects by.

A ranker induces a serving policy: for every presentation it scores all catalog
options at ``position = 1`` (as serving does) and shows its top three. The logged
rows of a split carry the legacy logging policy's propensity of each shown option at
its position, and the reward of a row is "completed and current 14 days later"
(label :data:`REWARD_LABEL`), so the value of that policy is estimated off-policy
with :func:`attune.experiments.ope.estimate_policy_value` (slate estimator: one
deterministic target probability per option and position), without the ground truth,
exactly as a lender would have to.

* :func:`logged_slates` builds the :class:`LoggedSlates` of a split once (candidate
  rows and the OPE arrays);
* :func:`estimate_value` gives the estimate with its bootstrap interval;
* :func:`point_value` is the same point estimate without the bootstrap and without
  building the target probabilities, cheap enough to evaluate every boosting round
  (Tune reports it per round, early stopping and ASHA read it).

The ground truth is never read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attune.data.schema import SLATE_SIZE
from attune.data.spec import FeatureSpec
from attune.errors import FeatureSpecMismatch
from attune.experiments.ope import PolicyEstimate, estimate_policy_value
from attune.simulator.ground_truth import top_k_slates
from attune.training.dataset import RankingSplit
from attune.training.evaluate import Presentations, presentations_from_split

#: A logged row earns reward 1 at this label: completed and current 14 days later.
REWARD_LABEL = 3
#: The estimator selection uses: self-normalized IPS is bounded and needs no reward model.
DEFAULT_ESTIMATOR = "snips"


@dataclass(frozen=True)
class LoggedSlates:
    """A split's presentations as candidates to score, and its logged rows for OPE.

    ``group[i]`` is the presentation (row of ``presentations.qid``) logged row ``i``
    belongs to; ``action`` indexes ``presentations.options``; ``position`` is 0-based.
    """

    presentations: Presentations
    group: np.ndarray  # (rows,) int64
    action: np.ndarray  # (rows,) int64
    position: np.ndarray  # (rows,) int64, 0..SLATE_SIZE-1
    reward: np.ndarray  # (rows,) float64, 0 or 1
    propensity: np.ndarray  # (rows,) float64 in (0, 1]

    @property
    def n_presentations(self) -> int:
        return len(self.presentations.qid)

    @property
    def n_options(self) -> int:
        return len(self.presentations.options)

    def scores_matrix(self, scores: np.ndarray) -> np.ndarray:
        """Candidate scores (``n_presentations * n_options``, flat) as ``(n, n_options)``.

        Raises :class:`FeatureSpecMismatch` when the count is not one per candidate.
        """
        flat = np.asarray(scores, dtype=np.float64).reshape(-1)
        expected = self.n_presentations * self.n_options
        if flat.size != expected:
            raise FeatureSpecMismatch(
                expected=expected, actual=flat.size, problem="one score per candidate row"
            )
        return flat.reshape(self.n_presentations, self.n_options)


def logged_slates(split: RankingSplit, spec: FeatureSpec) -> LoggedSlates:
    """The :class:`LoggedSlates` of ``split`` (rows at positions 1..3 only).

    Raises :class:`FeatureSpecMismatch` when the spec lacks a feature the candidates
    need or a logged option is not in the spec's catalog.
    """
    index = {o: i for i, o in enumerate(spec.options)}
    unknown = sorted({str(o) for o in split.option_id if o not in index})
    if unknown:
        raise FeatureSpecMismatch(
            expected=list(spec.options),
            actual=unknown,
            problem=f"logged options outside the spec's catalog: {unknown}",
        )
    presentations = presentations_from_split(split, spec)
    position = split.position.astype(np.int64) - 1
    keep = (position >= 0) & (position < SLATE_SIZE)
    return LoggedSlates(
        presentations=presentations,
        group=np.searchsorted(presentations.qid, split.qid[keep]).astype(np.int64),
        action=np.array([index[o] for o in split.option_id[keep]], dtype=np.int64),
        position=position[keep],
        reward=(split.label[keep] >= REWARD_LABEL).astype(np.float64),
        propensity=split.propensity[keep].astype(np.float64),
    )


def _matches(log: LoggedSlates, scores: np.ndarray) -> np.ndarray:
    """Whether the policy of ``scores`` puts each logged row's option at its position."""
    slates = top_k_slates(log.scores_matrix(scores), SLATE_SIZE)
    return np.asarray(slates[log.group, log.position] == log.action)


def target_probs(log: LoggedSlates, scores: np.ndarray) -> np.ndarray:
    """The deterministic top-3 policy's ``(rows, n_options, SLATE_SIZE)`` probabilities."""
    slates = top_k_slates(log.scores_matrix(scores), SLATE_SIZE)
    probs = np.zeros((len(log.group), log.n_options, SLATE_SIZE))
    rows = np.arange(len(log.group))[:, None]
    probs[rows, slates[log.group], np.arange(SLATE_SIZE)[None, :]] = 1.0
    return probs


def estimate_value(
    log: LoggedSlates,
    scores: np.ndarray,
    *,
    estimator: str = DEFAULT_ESTIMATOR,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> PolicyEstimate:
    """The estimated value (expected reward per presentation) of the top-3 policy of ``scores``.

    ``scores`` are the model's scores of ``log.presentations.candidates``. The interval
    is :func:`~attune.experiments.ope.estimate_policy_value`'s seeded bootstrap.
    """
    return estimate_policy_value(
        actions=log.action,
        rewards=log.reward,
        propensities=log.propensity,
        target_probs=target_probs(log, scores),
        positions=log.position,
        estimators=(estimator,),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )[estimator]


def point_value(log: LoggedSlates, scores: np.ndarray) -> float:
    """The SNIPS point estimate of :func:`estimate_value`, without bootstrap (per-round use)."""
    w = _matches(log, scores) / log.propensity
    num = np.bincount(log.position, weights=w * log.reward, minlength=SLATE_SIZE)
    den = np.bincount(log.position, weights=w, minlength=SLATE_SIZE)
    return float(np.sum(np.divide(num, den, out=np.zeros(SLATE_SIZE), where=den > 0)))


#: Name of the per-round metric :func:`serving_eval` adds (``serve-policy_value``).
METRIC_NAME = "policy_value"
#: The eval-set name of the candidate rows in ``xgboost.train``'s ``evals``.
EVAL_NAME = "serve"


def serving_eval(log: LoggedSlates, *, nthread: int = 1) -> tuple[Any, Any]:
    """An eval set and a ``custom_metric`` that report :func:`point_value` every round.

    Returns ``(dserve, metric)``: pass ``(dserve, EVAL_NAME)`` among ``evals`` and
    ``metric`` as ``custom_metric`` of ``xgboost.train``; the log then holds
    ``serve-policy_value``. XGBoost caches predictions of eval sets, so each round adds
    only the new trees' scores. Other eval sets get NaN for this metric. The candidates
    carry one group per presentation and zero labels, so built-in ranking metrics on
    this eval set are meaningless (read them from the logged rows' eval set).
    """
    import xgboost as xgb

    candidates = log.presentations.candidates
    dserve = xgb.DMatrix(
        candidates,
        label=np.zeros(len(candidates), dtype=np.float32),
        qid=np.repeat(np.arange(log.n_presentations), log.n_options),
        nthread=nthread,
    )

    def metric(predt: np.ndarray, dmatrix: Any) -> tuple[str, float]:
        if dmatrix is not dserve:
            return METRIC_NAME, float("nan")
        return METRIC_NAME, point_value(log, predt)

    return dserve, metric
