"""The online features' settings: the ``online`` block of the Serve app's args."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OnlineConfig(BaseModel):
    """Online features from the Redis-protocol online store (see attune.online)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str | None = Field(
        default=None,
        pattern=r"^(redis|rediss|unix)://",
        description="Online store URL; default ATTUNE_REDIS_URL, else (local store only) a "
        "redis-server the app starts with its data under <store>/redis.",
    )
    spec_hash: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{8,64}$",
        description="Feature spec whose snapshots are served; default: this code's spec.",
    )
    timeout_s: float = Field(
        default=0.5, gt=0, le=30, description="Redis connect/read timeout on the request path."
    )
    max_connections: int = Field(
        default=64, ge=1, le=10_000, description="Redis connections per ingress replica."
    )
    pointer_ttl_s: float = Field(
        default=1.0, gt=0, le=60, description="How long a replica trusts the snapshot pointer."
    )
    events_max_batch: int = Field(
        default=1000, ge=1, le=100_000, description="Posted events per file in the store."
    )
    events_max_age_s: float = Field(
        default=2.0, gt=0, le=300, description="Oldest unwritten posted event before a write (s)."
    )
    events_max_buffer: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="Unwritten posted events kept while the store fails; beyond, posts get 503.",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> OnlineConfig:
        if self.events_max_buffer < self.events_max_batch:
            raise ValueError(
                f"events_max_buffer ({self.events_max_buffer}) must be >= "
                f"events_max_batch ({self.events_max_batch})"
            )
        return self
