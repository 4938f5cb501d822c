"""What a ranker learns from: labels, position debiasing and propensity weights.

:func:`training_matrix` is the one way a training ``DMatrix`` is built from ranking
rows (the sweep's trials, the driver's retrain, and callers retraining on served
decisions with the propensities they logged):

* **labels** follow the objective (:func:`~attune.training.search_space.training_labels`):
  the graded label (0 ignored … 3 completed and current 14 days later) for
  ``rank:ndcg``/``rank:pairwise``, "completed" for ``rank:map``, the reward
  (label 3) for the pointwise ``binary:logistic``;
* **weighting** ``"propensity"`` weights each logged slate by the inverse of the
  logging policy's propensities (mean of ``1 / p`` over the slate's rows, clipped at
  :data:`MAX_WEIGHT` times the median slate's, normalized to mean 1): slates the
  logging policy rarely shows count for more, which corrects (per slate) for who was
  shown what. XGBoost's ranking objectives take one weight per query group, hence the
  slate mean; ``"none"`` leaves every slate at weight 1;
* **position debiasing** (``lambdarank_unbiased`` in XGBoost's parameters) makes
  XGBoost estimate the position bias from the order of rows inside each group, so
  :func:`training_matrix` orders every group by logged position.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from attune.errors import ConfigError

Weighting = Literal["none", "propensity"]
#: The weighting modes :func:`training_matrix` accepts.
WEIGHTINGS: tuple[str, ...] = ("none", "propensity")
#: Largest slate weight relative to the median slate's (bounds a rare slate's variance).
MAX_WEIGHT = 20.0


def slate_weights(qid: np.ndarray, propensity: np.ndarray, *, weighting: Weighting) -> np.ndarray:
    """One weight per group (groups in ascending ``qid`` order), mean 1.

    ``"none"``: all ones. ``"propensity"``: the mean of ``1 / propensity`` over the
    group's rows, clipped at :data:`MAX_WEIGHT` times the median group's and
    normalized to mean 1. Raises
    :class:`ConfigError` for an unknown mode or a propensity outside (0, 1].
    """
    if weighting not in WEIGHTINGS:
        raise ConfigError(field="weighting", value=weighting, problem=f"choose from {WEIGHTINGS}")
    qid = np.asarray(qid)
    groups, inverse = np.unique(qid, return_inverse=True)
    if weighting == "none":
        return np.ones(len(groups), dtype=np.float32)
    p = np.asarray(propensity, dtype=np.float64)
    bad = np.flatnonzero(~((p > 0) & (p <= 1)))
    if bad.size:
        raise ConfigError(
            field="propensity", value=float(p[bad[0]]), problem=f"must be in (0, 1] (row {bad[0]})"
        )
    inv = np.bincount(inverse, weights=1.0 / p) / np.bincount(inverse)
    weights = np.minimum(inv, MAX_WEIGHT * np.median(inv))
    return (weights / weights.mean()).astype(np.float32)


def training_matrix(
    X: np.ndarray,
    *,
    label: np.ndarray,
    qid: np.ndarray,
    position: np.ndarray,
    propensity: np.ndarray,
    objective: str,
    weighting: Weighting = "none",
    nthread: int = 1,
) -> Any:
    """The training ``xgboost.DMatrix`` of ranking rows (``qid`` non-decreasing).

    Rows are reordered by ``(qid, position)`` inside the matrix (``lambdarank_unbiased``
    reads position from row order; other objectives ignore the order within a group).
    Labels follow ``objective``, group weights ``weighting`` (see the module docstring).
    Raises :class:`ConfigError` for an unknown weighting or a bad propensity.
    """
    import xgboost as xgb

    from attune.training.search_space import training_labels

    order = np.lexsort((np.asarray(position), np.asarray(qid)))
    q = np.asarray(qid)[order]
    dmatrix = xgb.DMatrix(
        np.asarray(X)[order],
        label=training_labels(np.asarray(label)[order], objective),
        qid=q,
        nthread=nthread,
    )
    weights = slate_weights(q, np.asarray(propensity)[order], weighting=weighting)
    if weighting != "none":
        dmatrix.set_weight(weights)
    return dmatrix
