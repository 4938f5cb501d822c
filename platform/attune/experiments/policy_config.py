"""Pydantic configs of the exploration policies (what a Serve ``user_config`` carries).

A policy is configured by one of these models, told apart by ``kind``, and its learned
state travels as a :class:`PolicyState` (config plus posterior arrays as lists), so a
replica can be handed a new posterior through ``reconfigure`` without restarting.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UniformConfig(_Config):
    """Every candidate equally likely at each position."""

    kind: Literal["uniform"] = Field(default="uniform", description="Policy kind.")


class EpsilonGreedyConfig(_Config):
    """Follow the ranker's best remaining score, explore uniformly with ``epsilon``."""

    kind: Literal["epsilon_greedy"] = Field(default="epsilon_greedy", description="Policy kind.")
    epsilon: float = Field(default=0.1, ge=0, le=1, description="Exploration probability.")


class SoftmaxConfig(_Config):
    """Sample positions from ``softmax(score / temperature)`` of the remaining candidates."""

    kind: Literal["softmax"] = Field(default="softmax", description="Policy kind.")
    temperature: float = Field(
        default=1.0, gt=0, description="Larger explores more; near 0 follows the ranker."
    )


class _SamplingConfig(_Config):
    mc_samples: int = Field(
        default=1000,
        ge=10,
        le=100_000,
        description="Posterior draws per decision; the served policy picks one of them.",
    )
    mc_seed: int = Field(
        default=0, ge=0, description="Seed of the draws, so propensities are reproducible."
    )


class ThompsonConfig(_SamplingConfig):
    """Beta-Bernoulli Thompson sampling per catalog option and context bucket."""

    kind: Literal["thompson"] = Field(default="thompson", description="Policy kind.")
    n_options: int = Field(ge=1, description="Size of the option catalog.")
    n_buckets: int = Field(default=1, ge=1, description="Context buckets (1: no context).")
    prior_alpha: float = Field(default=1.0, gt=0, description="Beta prior successes.")
    prior_beta: float = Field(default=1.0, gt=0, description="Beta prior failures.")


class LinearThompsonConfig(_SamplingConfig):
    """Linear Thompson sampling over candidate features (per option or shared)."""

    kind: Literal["linear_thompson"] = Field(default="linear_thompson", description="Policy kind.")
    dim: int = Field(ge=1, description="Number of features per candidate.")
    n_options: int = Field(
        default=1, ge=1, description="1: one shared model; >1: one model per catalog option."
    )
    ridge: float = Field(default=1.0, gt=0, description="Prior precision (ridge penalty).")
    noise: float = Field(default=0.25, gt=0, description="Posterior scale (reward noise sd).")


PolicyConfig = Annotated[
    UniformConfig | EpsilonGreedyConfig | SoftmaxConfig | ThompsonConfig | LinearThompsonConfig,
    Field(discriminator="kind"),
]


class PolicyState(_Config):
    """A policy's config and learned posterior (arrays as nested lists), JSON-able."""

    config: PolicyConfig = Field(description="Which policy, with its settings.")
    posterior: dict[str, Any] = Field(
        default_factory=dict, description="Learned parameters; empty means the prior."
    )
