"""Exploration in the served app and in batch campaigns, with exact logged propensities.

:class:`ExplorationConfig` is the ``exploration`` knob of the ingress's live
``user_config`` (``RolloutConfig``) and of ``attune rank-batch``::

    exploration: {policy: softmax, share: 0.05, temperature: 0.5}

* ``share``: the fraction of *borrowers* whose decisions explore. Who explores is the
  assignment hash of the project, ``bucket(borrower_id, "<rollout salt>:explore") <
  share`` (:mod:`attune.experiments.assignment`), the same hash as the canary, so every
  replica and every batch run agree without sharing state, and raising the share only
  adds borrowers.
* ``policy``: how an exploring decision draws its slate.

  - ``epsilon``: ε-greedy over the ranked list. Each shown position takes the best
    remaining option with probability ``1 - epsilon``, otherwise a uniformly drawn
    remaining one.
  - ``softmax``: Plackett-Luce over ``softmax(score / temperature)`` of the remaining
    options, position after position.
  - ``thompson`` / ``linear_thompson``: posterior sampling (Beta-Bernoulli per option and
    touchpoint, or Bayesian linear regression over the candidate rows). These are for
    options without enough data, and their posterior travels in ``state``.

An exploring decision shows :data:`attune.data.schema.SLATE_SIZE` positions drawn by the
policy. For each shown position it logs the exact probability that this option lands
at this position under the policy (:meth:`attune.experiments.bandits.Policy.choose`).
That is what :func:`attune.experiments.ope.estimate_policy_value` consumes. The options
below the slate follow in score order and carry no propensity. A decision that does not
explore is the greedy ranking and logs no propensities at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attune.data.schema import OPTION_IDS, SLATE_SIZE, TOUCHPOINTS
from attune.experiments.assignment import bucket
from attune.experiments.bandits import DecisionContext, Policy, build_policy, policy_from_state
from attune.experiments.policy_config import (
    EpsilonGreedyConfig,
    PolicyConfig,
    PolicyState,
    SoftmaxConfig,
)

ExplorationPolicy = Literal["none", "epsilon", "softmax", "thompson", "linear_thompson"]
_POSTERIOR_POLICIES = ("thompson", "linear_thompson")
_OPTION_INDEX = {option: i for i, option in enumerate(OPTION_IDS)}
_TOUCHPOINT_INDEX = {touchpoint: i for i, touchpoint in enumerate(TOUCHPOINTS)}


class ExplorationConfig(BaseModel):
    """Which decisions explore and how (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: ExplorationPolicy = Field(
        default="none", description="How an exploring slate is drawn."
    )
    share: float = Field(default=0.0, ge=0, le=1, description="Share of borrowers that explore.")
    epsilon: float = Field(
        default=0.1, gt=0, le=1, description="epsilon: chance that a position is drawn uniformly."
    )
    temperature: float = Field(
        default=1.0, gt=0, le=100, description="softmax: larger explores more."
    )
    state: PolicyState | None = Field(
        default=None,
        description="thompson / linear_thompson: the policy's config and posterior "
        "(attune.experiments.bandits.Policy.state()).",
    )

    @model_validator(mode="after")
    def _check(self) -> ExplorationConfig:
        if self.policy == "none" and self.share > 0:
            raise ValueError(f"share ({self.share:g}) > 0 needs a policy (policy is 'none')")
        if self.policy in _POSTERIOR_POLICIES:
            if self.state is None:
                raise ValueError(f"policy {self.policy!r} needs its state (config and posterior)")
            if self.state.config.kind != self.policy:
                raise ValueError(
                    f"state is a {self.state.config.kind!r} policy, not {self.policy!r}"
                )
        elif self.state is not None:
            raise ValueError(f"state is only for {' or '.join(_POSTERIOR_POLICIES)} policies")
        return self

    @property
    def active(self) -> bool:
        return self.policy != "none" and self.share > 0

    def policy_config(self) -> PolicyConfig:
        """The :mod:`attune.experiments.bandits` config that draws the slates."""
        if self.policy == "epsilon":
            return EpsilonGreedyConfig(epsilon=self.epsilon)
        if self.policy == "softmax":
            return SoftmaxConfig(temperature=self.temperature)
        if self.state is None:
            raise ValueError(f"policy {self.policy!r} has no slates to draw")
        return self.state.config

    def describe(self) -> str:
        """The policy's name and parameters as the decision log stores them (JSON)."""
        if self.policy == "epsilon":
            params: dict[str, object] = {"epsilon": self.epsilon}
        elif self.policy == "softmax":
            params = {"temperature": self.temperature}
        else:
            params = self.policy_config().model_dump(mode="json", exclude={"kind"})
        return json.dumps({"policy": self.policy, **params}, sort_keys=True)


@dataclass(frozen=True)
class Slate:
    """An exploring decision: every candidate in served order, propensities of the slate."""

    order: np.ndarray  # indices into the candidates, all of them
    propensities: np.ndarray  # P(order[k] at position k), k < the slate size
    policy: str  # ExplorationConfig.describe()


class Explorer:
    """Draws exploring slates under one :class:`ExplorationConfig` (one per replica or task).

    ``seed`` makes the draws reproducible (tests, batch runs); leave it None when serving.
    Raises ``ValueError`` for a ``linear_thompson`` state whose ``dim`` does not match the
    candidate rows, at the first decision.
    """

    def __init__(self, config: ExplorationConfig, *, salt: str, seed: int | None = None) -> None:
        self.config = config
        self.salt = salt
        self._salt = f"{salt}:explore"
        state = config.state
        self.policy: Policy = (
            policy_from_state(state) if state is not None else build_policy(config.policy_config())
        )
        self._described = config.describe()
        self._rng = np.random.default_rng(seed)

    def explores(self, borrower_id: int | str) -> bool:
        """Whether ``borrower_id``'s decisions explore (sticky, shared by every process)."""
        share = self.config.share
        return share > 0 and (share >= 1 or bucket(borrower_id, self._salt) < share)

    def context(
        self,
        scores: np.ndarray,
        *,
        features: np.ndarray,
        option_ids: tuple[str, ...],
        touchpoint: str,
    ) -> DecisionContext:
        """What the policy sees for one decision (also what a test recomputes from)."""
        return DecisionContext(
            scores=np.asarray(scores, dtype=np.float64),
            options=tuple(_OPTION_INDEX[o] for o in option_ids),
            features=np.asarray(features, dtype=np.float64),
            bucket=_TOUCHPOINT_INDEX.get(touchpoint, 0),
        )

    def slate(
        self,
        scores: np.ndarray,
        *,
        features: np.ndarray,
        option_ids: tuple[str, ...],
        touchpoint: str,
    ) -> Slate:
        """Draw the slate of one exploring decision; the rest follows in score order."""
        context = self.context(
            scores, features=features, option_ids=option_ids, touchpoint=touchpoint
        )
        size = min(SLATE_SIZE, len(option_ids))
        decision = self.policy.choose(context, self._rng, slate_size=size)
        shown = np.asarray(decision.order, dtype=np.int64)
        rest = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        rest = rest[~np.isin(rest, shown)]
        return Slate(
            order=np.concatenate([shown, rest]),
            propensities=np.asarray(decision.position_propensities, dtype=np.float64),
            policy=self._described,
        )
