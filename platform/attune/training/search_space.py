"""The hyperparameter search space of the XGBoost ranker sweep.

:func:`search_space` returns the Ray Tune space (objective, LambdaMART pair
construction, tree shape, sampling, regularization). A sampled point is validated by
:class:`RankerParams` and turned into XGBoost's native parameters by
:func:`xgb_params`, which is also how the winner is retrained and how ``params.json``
is written, so one mapping serves the sweep, the retrain and the artifact.

The space is flat on purpose: Optuna (through ``ray.tune.search``) cannot sample
conditional spaces built with ``tune.sample_from``; ``lambdarank_num_pair_per_sample``
means "truncation level" under ``topk`` and "pairs per document" under ``mean``, and
both readings are valid for every sampled value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attune.errors import ConfigError

#: XGBoost's learning-to-rank objectives: the one list of them.
RankingObjective = Literal["rank:ndcg", "rank:pairwise", "rank:map"]
#: Ranking objectives the sweep chooses among.
OBJECTIVES: tuple[str, ...] = get_args(RankingObjective)
#: LambdaMART pair construction methods.
PAIR_METHODS: tuple[str, ...] = ("topk", "mean")
#: Validation metrics XGBoost computes each round; the last one drives early stopping.
EVAL_METRICS: tuple[str, ...] = ("ndcg@1", "ndcg@3")
#: The metric Tune optimizes (validation NDCG@3 over the shown slate).
SWEEP_METRIC = "valid_ndcg"
#: The XGBoost evaluation key behind :data:`SWEEP_METRIC`.
SWEEP_METRIC_SOURCE = "valid-ndcg@3"
#: ``rank:map`` needs binary relevance; a row is relevant when the option was completed.
MAP_RELEVANT_LABEL = 2
#: The reward of a row (completed and current 14 days later); pointwise objectives learn it.
REWARD_LABEL = 3
#: Objectives that learn P(reward) row by row instead of an order inside each slate.
POINTWISE_OBJECTIVES: tuple[str, ...] = ("binary:logistic",)


class RankerParams(BaseModel):
    """One point of the search space: the hyperparameters of one ranker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: RankingObjective = Field(description="XGBoost learning-to-rank objective.")
    lambdarank_pair_method: Literal["topk", "mean"] = Field(
        description="How LambdaMART builds document pairs inside a group."
    )
    lambdarank_num_pair_per_sample: int = Field(
        ge=1, le=32, description="Truncation level (topk) or pairs per document (mean)."
    )
    max_depth: int = Field(ge=1, le=16, description="Maximum tree depth.")
    eta: float = Field(gt=0.0, le=1.0, description="Learning rate.")
    min_child_weight: float = Field(ge=0.0, description="Minimum hessian sum in a leaf.")
    subsample: float = Field(gt=0.0, le=1.0, description="Row sampling ratio per tree.")
    colsample_bytree: float = Field(gt=0.0, le=1.0, description="Column sampling per tree.")
    reg_lambda: float = Field(ge=0.0, description="L2 regularization on leaf weights.")
    reg_alpha: float = Field(ge=0.0, description="L1 regularization on leaf weights.")

    @classmethod
    def parse(cls, sampled: Mapping[str, Any]) -> RankerParams:
        """Validate a sampled point; raises :class:`ConfigError` naming the first bad field."""
        try:
            return cls.model_validate(dict(sampled))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "params"
            raise ConfigError(field=field, value=first.get("input"), problem=first["msg"]) from exc


def search_space() -> dict[str, Any]:
    """The Ray Tune search space (``param_space`` of the Tuner) over :class:`RankerParams`."""
    from ray import tune

    return {
        "objective": tune.choice(list(OBJECTIVES)),
        "lambdarank_pair_method": tune.choice(list(PAIR_METHODS)),
        "lambdarank_num_pair_per_sample": tune.randint(1, 9),
        "max_depth": tune.randint(2, 9),
        "eta": tune.loguniform(0.01, 0.3),
        "min_child_weight": tune.loguniform(0.5, 50.0),
        "subsample": tune.uniform(0.5, 1.0),
        "colsample_bytree": tune.uniform(0.5, 1.0),
        "reg_lambda": tune.loguniform(1e-3, 10.0),
        "reg_alpha": tune.loguniform(1e-3, 10.0),
    }


def xgb_params(
    params: RankerParams | Mapping[str, Any],
    *,
    nthread: int,
    device: Literal["cpu", "cuda"] = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """XGBoost's native training parameters for ``params``.

    ``nthread`` is the number of CPUs the trial was given (so trials packed on one node
    do not oversubscribe it); ``device="cuda"`` trains on the trial's GPU. Raises
    :class:`ConfigError` for an invalid point or ``nthread < 1``.
    """
    if nthread < 1:
        raise ConfigError(field="nthread", value=nthread, problem="must be >= 1")
    if device not in ("cpu", "cuda"):
        raise ConfigError(field="device", value=device, problem="must be 'cpu' or 'cuda'")
    p = params if isinstance(params, RankerParams) else RankerParams.parse(params)
    return {
        "objective": p.objective,
        "lambdarank_pair_method": p.lambdarank_pair_method,
        "lambdarank_num_pair_per_sample": p.lambdarank_num_pair_per_sample,
        "max_depth": p.max_depth,
        "eta": p.eta,
        "min_child_weight": p.min_child_weight,
        "subsample": p.subsample,
        "colsample_bytree": p.colsample_bytree,
        "lambda": p.reg_lambda,
        "alpha": p.reg_alpha,
        "tree_method": "hist",
        "device": device,
        "nthread": nthread,
        "seed": seed,
        "eval_metric": list(EVAL_METRICS),
    }


def training_labels(labels: Any, objective: str) -> Any:
    """The labels an objective trains on: graded labels, or binary ones for ``rank:map``.

    Validation always keeps graded labels so every trial is scored on the same NDCG.
    """
    import numpy as np

    arr = np.asarray(labels)
    if objective in POINTWISE_OBJECTIVES:
        return (arr >= REWARD_LABEL).astype(np.float32)
    if objective == "rank:map":
        return (arr >= MAP_RELEVANT_LABEL).astype(np.float32)
    return arr.astype(np.float32)
