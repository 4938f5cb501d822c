"""The demo's configuration (``attune demo`` arguments), validated at the boundary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DemoConfig(BaseModel):
    """Sizes and knobs of the end-to-end demo; the defaults finish in minutes on 2 cores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workdir: str = Field(
        default=".attune",
        min_length=1,
        description="Local directory for every artifact of the demo (the store root; "
        "serve_configs/local.yaml serves from it afterwards).",
    )
    borrowers: int = Field(default=6000, ge=200, le=1_000_000, description="Simulated borrowers.")
    months: int = Field(default=12, ge=3, le=36, description="Months of servicing history.")
    seed: int = Field(default=7, ge=0, description="Seed of the simulator, the sweeps and traffic.")
    trials: int = Field(default=4, ge=1, le=256, description="Tune trials per model version.")
    max_rounds: int = Field(default=150, ge=10, le=5000, description="Boosting-round budget.")
    requests: int = Field(
        default=1500, ge=50, le=1_000_000, description="Ranking requests sent per traffic phase."
    )
    canary_percent: float = Field(
        default=30.0, gt=0, lt=100, description="Share of borrowers sent to the canary."
    )
    loop_iterations: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Learning-loop iterations (serve with exploration, rewards, retrain, "
        "off-policy gate, canary); 0 skips the loop.",
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="Concurrent HTTP clients.")
    dashboard: bool = Field(
        default=False, description="Keep Ray (and its dashboard) up at the end, until Ctrl-C."
    )

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        if self.requests < self.concurrency:
            raise ValueError(
                f"requests ({self.requests}) must be >= concurrency ({self.concurrency})"
            )
        return self
