"""The configuration of a sweep: :class:`TuneConfig`, validated at the boundary.

``attune tune`` and ``jobs/tune.py`` build one from their arguments; library callers
build one directly. Every field has a description and a range; cross-field rules
(grace period within the round budget, concurrency within the trial count) name both
values when they fail.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attune.errors import ConfigError


class TuneConfig(BaseModel):
    """A Ray Tune sweep of XGBoost rankers, its evaluation and its registration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: str = Field(
        min_length=1, description="Ranking dataset root (local dir or s3://), from preprocess."
    )
    registry: str = Field(min_length=1, description="Model registry root (local dir or s3://).")
    histories: str | None = Field(
        default=None,
        description="History root holding ground_truth/; default: the dataset manifest's.",
    )
    served: tuple[str, ...] = Field(
        default=(),
        description="Reward datasets (attune outcomes) whose served rows join the train split.",
    )
    served_correction: Literal["none", "lambdarank_unbiased", "ipw"] = Field(
        default="none",
        description="Bias correction of the served rows (docs/training.md).",
    )
    trials: int = Field(default=8, ge=1, le=10_000, description="Number of sampled trials.")
    max_concurrent: int | None = Field(
        default=None, ge=1, description="Trials running at once; default: as many as fit."
    )
    cpus_per_trial: int = Field(
        default=1, ge=1, le=256, description="CPUs per trial (XGBoost nthread)."
    )
    gpu: bool = Field(default=False, description="Train every trial on one GPU (device=cuda).")
    max_rounds: int = Field(
        default=300, ge=2, le=100_000, description="Boosting-round budget per trial."
    )
    early_stopping_rounds: int = Field(
        default=25, ge=1, description="Stop a trial after this many rounds without improvement."
    )
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha", description="ASHA stops weak trials early; FIFO runs every trial fully."
    )
    grace_period: int = Field(
        default=10, ge=1, description="Rounds every trial runs before ASHA may stop it."
    )
    reduction_factor: float = Field(
        default=3.0, gt=1.0, le=16.0, description="ASHA keeps 1/reduction_factor per rung."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the search algorithm and XGBoost.")
    select_by: Literal["policy_value", "ndcg"] = Field(
        default="policy_value",
        description="Winner, best round, early stopping and ASHA by the off-policy estimate "
        "of the served policy's value on validation, or by validation NDCG@3.",
    )
    weighting: Literal["none", "propensity"] = Field(
        default="none",
        description="Training slate weights: none, or the inverse logging propensities.",
    )
    data_parallel_workers: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="When > 0, retrain the winner with Ray Train on this many workers.",
    )
    tune_storage: str | None = Field(
        default=None, description="Where Tune keeps trial state; default: <store>/tune."
    )
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Experiment name; default: tune-<UTC timestamp>.",
    )
    report_dir: str | None = Field(
        default=None,
        description="Local dir for the results table and plots; default: <store>/runs/<name>.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> TuneConfig:
        if self.grace_period > self.max_rounds:
            raise ValueError(
                f"grace_period ({self.grace_period}) must be <= max_rounds ({self.max_rounds})"
            )
        if self.early_stopping_rounds >= self.max_rounds:
            raise ValueError(
                f"early_stopping_rounds ({self.early_stopping_rounds}) must be < "
                f"max_rounds ({self.max_rounds})"
            )
        if self.weighting != "none" and self.data_parallel_workers > 0:
            raise ValueError(
                f"weighting ({self.weighting}) is not supported with "
                f"data_parallel_workers ({self.data_parallel_workers}) yet"
            )
        if self.max_concurrent is not None and self.max_concurrent > self.trials:
            raise ValueError(
                f"max_concurrent ({self.max_concurrent}) must be <= trials ({self.trials})"
            )
        return self

    @classmethod
    def parse(cls, values: dict[str, Any]) -> TuneConfig:
        """Validate ``values``; raises :class:`ConfigError` naming the first bad field."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            value = first.get("input")
            if not field:  # a cross-field rule: name every field its message mentions
                named = [k for k in cls.model_fields if k in first["msg"]]
                field = ",".join(named) or "config"
                value = {k: values.get(k) for k in named}
            raise ConfigError(field=field, value=value, problem=first["msg"]) from exc

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        return "cuda" if self.gpu else "cpu"

    def trial_resources(self) -> dict[str, float]:
        """Ray resources of one trial: its CPUs, plus one GPU with ``gpu``."""
        return {"cpu": float(self.cpus_per_trial), "gpu": 1.0 if self.gpu else 0.0}
