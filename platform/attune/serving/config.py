"""Configuration of the serving app: builder args and the live rollout knobs.

* :class:`AppArgs` are the ``args`` of ``attune.serving.app:build_app`` in a Serve
  config. They are part of Serve's code version, so changing one restarts replicas.
* :class:`RolloutConfig` is the ingress deployment's ``user_config``: model versions or
  aliases, canary and shadow shares, the assignment salt, exploration and the guardrail
  bounds.
  Changing it calls ``reconfigure`` on the running replicas: no restart, no dropped
  request. ``attune rollout`` edits exactly this.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from attune import storage
from attune.experiments.exploration import ExplorationConfig
from attune.online.config import OnlineConfig
from attune.serving.auth import AuthConfig
from attune.serving.guardrails import GuardrailBounds
from attune.settings import get_settings

#: The name of the ingress deployment in a Serve config (the one ``user_config`` lives on).
INGRESS_NAME = "RankingIngress"


class RolloutConfig(BaseModel):
    """The live rollout state (the ingress's ``user_config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    champion: str = Field(
        default="champion", min_length=1, description="Champion version id or alias."
    )
    canary: str | None = Field(default=None, description="Canary version id or alias.")
    canary_percent: float = Field(
        default=0.0, ge=0, le=100, description="Share of borrowers on the canary (sticky)."
    )
    shadow: str | None = Field(default=None, description="Shadow version id or alias.")
    shadow_percent: float = Field(
        default=0.0, ge=0, le=100, description="Share of requests mirrored to the shadow."
    )
    salt: str = Field(
        default="rollout-0",
        min_length=1,
        max_length=64,
        description="Salt of the sticky canary assignment; a new rollout draws a new salt.",
    )
    guardrails: GuardrailBounds = Field(
        default_factory=GuardrailBounds, description="Bounds that roll a canary back."
    )
    exploration: ExplorationConfig = Field(
        default_factory=ExplorationConfig,
        description="Share of borrowers whose decisions explore, and the policy that draws "
        "their slates (logged with per-position propensities).",
    )

    @model_validator(mode="after")
    def _check_arms(self) -> RolloutConfig:
        if self.canary_percent > 0 and self.canary is None:
            raise ValueError(
                f"canary_percent ({self.canary_percent:g}) > 0 needs a canary "
                f"version (canary is {self.canary!r})"
            )
        if self.shadow_percent > 0 and self.shadow is None:
            raise ValueError(
                f"shadow_percent ({self.shadow_percent:g}) > 0 needs a shadow "
                f"version (shadow is {self.shadow!r})"
            )
        return self


class DecisionLogConfig(BaseModel):
    """Batching and bounds of the decision log (see attune.serving.decision_log)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Write decisions under <store>/decisions.")
    max_batch: int = Field(default=512, ge=1, le=100_000, description="Records per file.")
    max_age_s: float = Field(
        default=2.0, gt=0, le=300, description="Oldest buffered record before a flush (s)."
    )
    max_buffer: int = Field(
        default=50_000, ge=1, le=10_000_000, description="Records kept while the sink fails."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> DecisionLogConfig:
        if self.max_buffer < self.max_batch:
            raise ValueError(
                f"max_buffer ({self.max_buffer}) must be >= max_batch ({self.max_batch})"
            )
        return self


class AppArgs(BaseModel):
    """Arguments of the Serve application builder ``attune.serving.app:build_app``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str | None = Field(
        default=None,
        description="Model registry URI (local dir or s3://); default <ATTUNE_STORE>/registry.",
    )
    store: str | None = Field(
        default=None,
        description="Store root for the decision log (local dir or s3://); default ATTUNE_STORE.",
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="Initial rollout state, used when the config sets no user_config.",
    )
    decision_log: DecisionLogConfig = Field(
        default_factory=DecisionLogConfig, description="Decision-log batching."
    )
    shadow_queue: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Mirrored requests waiting for the shadow model; beyond it they are dropped.",
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig,
        description="API authentication: bearer token from the environment (attune.serving.auth).",
    )
    online: OnlineConfig | None = Field(
        default=None,
        description="Online feature view over the store's snapshots and POST /v1/events; "
        "unset: requests must carry their features.",
    )
    auto_rollback_redeploy: bool = Field(
        default=True,
        description="On a guardrail breach, also move the canary alias and redeploy the app "
        "config with the canary at 0 %, so every replica (and new ones) drop it.",
    )

    def registry_uri(self) -> str:
        """The registry URI, defaulted from the settings and made absolute when local."""
        uri = self.registry or storage.join(get_settings().store, "registry")
        return uri if storage.is_s3(uri) else _absolute(uri)

    def store_uri(self) -> str:
        uri = self.store or get_settings().store
        return uri if storage.is_s3(uri) else _absolute(uri)


def _absolute(path: str) -> str:
    from pathlib import Path

    return str(Path(path).expanduser().absolute())
