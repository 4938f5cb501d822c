"""The reward definition: which event completes which option, windows and weights.

A reward row belongs to one shown option of one served decision. The option counts as
*accepted* when one of its completion events (:class:`OptionRule`) arrives for the same
borrower strictly after the decision and within the option's window; the loan counts as
*current* when, by the money rule of the history (docs/simulator.md), the installments
due by ``decision + current_after_days`` are paid. The reward is::

    reward = accepted * (weights.accepted + weights.current * current)

(``current`` null, i.e. unknown, counts as 0). With the defaults a reward is 1 for an
accepted option whose loan is current 14 days after the decision, which is the
simulator's ground-truth value of a shown option (``P(completed and current 14 d later)``).

The packaged ``default.yaml`` is :data:`DEFAULT_CONFIG`; a lender's own file replaces it
(``attune outcomes --config``). Unknown options, missing options, unknown event types and
channels are refused, naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from attune.data.schema import CHANNELS, EVENT_TYPES, OPTION_IDS, SLATE_SIZE
from attune.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", frozen=True)


class EventMatch(BaseModel):
    """One event that completes an option (``channel`` null: any channel)."""

    model_config = _STRICT

    event_type: str = Field(description="Event type of the history's events table.")
    channel: str | None = Field(default=None, description="Only events on this channel.")

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r} (known: {', '.join(EVENT_TYPES)})")
        return value

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, value: str | None) -> str | None:
        if value is not None and value not in CHANNELS:
            raise ValueError(f"unknown channel {value!r} (known: {', '.join(CHANNELS)})")
        return value

    @property
    def key(self) -> str:
        return f"{self.event_type}|{self.channel or '*'}"


class OptionRule(BaseModel):
    """How one option's completion shows in the events."""

    model_config = _STRICT

    events: tuple[EventMatch, ...] = Field(
        min_length=1, description="Any of these events completes the option."
    )
    window_days: float = Field(
        gt=0, le=90, description="An event counts up to this many days after the decision."
    )


class RewardWeights(BaseModel):
    """Weights of the outcomes of an accepted option."""

    model_config = _STRICT

    accepted: float = Field(default=0.0, ge=0, le=100, description="Reward for acceptance.")
    current: float = Field(
        default=1.0, ge=0, le=100, description="Reward for acceptance with the loan current."
    )

    @model_validator(mode="after")
    def _something(self) -> RewardWeights:
        if self.accepted == 0 and self.current == 0:
            raise ValueError("weights.accepted (0) and weights.current (0) cannot both be 0")
        return self


class RewardConfig(BaseModel):
    """The reward definition (see the module docstring)."""

    model_config = _STRICT

    options: dict[str, OptionRule] = Field(
        description="One rule per catalog option: its completion events and window."
    )
    weights: RewardWeights = Field(default_factory=RewardWeights, description="Outcome weights.")
    current_after_days: float = Field(
        default=14.0, gt=0, le=365, description="When the loan's currentness is judged."
    )
    slate_size: int = Field(
        default=SLATE_SIZE,
        ge=1,
        le=len(OPTION_IDS),
        description="Positions of the returned order that were shown (one row each).",
    )

    @field_validator("options")
    @classmethod
    def _whole_catalog(cls, value: dict[str, OptionRule]) -> dict[str, OptionRule]:
        unknown = sorted(set(value) - set(OPTION_IDS))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} (catalog: {', '.join(OPTION_IDS)})"
            )
        missing = [o for o in OPTION_IDS if o not in value]
        if missing:
            raise ValueError(f"no rule for option(s) {', '.join(missing)}")
        return value

    def window_days(self, option_id: str) -> float:
        return self.options[option_id].window_days

    @property
    def horizon_days(self) -> float:
        """Days after a decision until every reward of it is final."""
        return max(self.current_after_days, *(r.window_days for r in self.options.values()))

    @property
    def event_types(self) -> frozenset[str]:
        """Event types any rule reads."""
        return frozenset(m.event_type for r in self.options.values() for m in r.events)


def parse_reward_config(data: Mapping[str, Any] | None, *, source: str) -> RewardConfig:
    """Validate ``data``; raises :class:`ConfigError` naming ``source`` and the field."""
    try:
        return RewardConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(config)"
        raise ConfigError(
            field=f"{source}: {field}", value=first.get("input"), problem=first["msg"]
        ) from exc


def load_reward_config(path: str | Path | None = None) -> RewardConfig:
    """The reward config in the YAML file ``path``, or the packaged default."""
    if path is None:
        text = resources.files("attune.rewards").joinpath("default.yaml").read_text()
        source = "attune/rewards/default.yaml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(field="config", value=str(path), problem=str(exc)) from exc
        source = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(field="config", value=source, problem=f"not YAML: {exc}") from exc
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(field="config", value=source, problem="must be a mapping")
    return parse_reward_config(data, source=source)


#: The packaged default reward definition (``attune/rewards/default.yaml``).
DEFAULT_CONFIG = load_reward_config()
