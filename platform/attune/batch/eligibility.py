"""Eligibility rules per touchpoint: who is contacted, and with which options.

A rule tests one borrower feature of the snapshot against a threshold. Without
``options`` a matching borrower is excluded from the touchpoint's campaign; with
``options`` only those options are withheld from the borrower (a borrower left with no
option is excluded as ``no_options_left``). Rules apply in order before any model
scores; the job's summary counts what each rule did. Example (YAML)::

    touchpoints:
      email:
        options: [autopay_enroll, due_date_change, payment_plan, pay_now]
        rules:
          - {name: contact_fatigue, feature: contacts_7d, op: ge, value: 3}
          - {name: no_plan_in_hardship, feature: hardship_180, op: gt, value: 0,
             options: [payment_plan]}

A touchpoint the config does not name offers every catalog option and has no rules.
Unknown options, features, touchpoints or keys are refused with an error naming them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from attune.data.schema import OPTION_IDS, TOUCHPOINTS
from attune.data.spec import BORROWER_FEATURES
from attune.errors import ConfigError

#: Borrowers left without any option after the option rules.
NO_OPTIONS_LEFT = "no_options_left"

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}


def _known_options(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    unknown = [v for v in values if v not in OPTION_IDS]
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in {where} "
            f"(the catalog: {', '.join(OPTION_IDS)})"
        )
    if len(set(values)) != len(values):
        raise ValueError(f"{where} names an option twice: {list(values)}")
    return values


class Rule(BaseModel):
    """Exclude borrowers (or withhold ``options`` from them) where ``feature op value``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Rule name."
    )
    feature: str = Field(description="A borrower feature of the snapshot, e.g. contacts_7d.")
    op: Literal["lt", "le", "gt", "ge", "eq", "ne"] = Field(description="Comparison.")
    value: float = Field(description="Threshold the feature is compared with.")
    options: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="Options withheld from matching borrowers; unset: the borrower is excluded.",
    )

    @field_validator("feature")
    @classmethod
    def _known_feature(cls, value: str) -> str:
        if value not in BORROWER_FEATURES:
            raise ValueError(
                f"unknown feature {value!r} (borrower features: {', '.join(BORROWER_FEATURES)})"
            )
        return value

    @field_validator("options")
    @classmethod
    def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _known_options(value, "options")


class TouchpointRules(BaseModel):
    """The options a touchpoint offers and its rules, applied in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    options: tuple[str, ...] = Field(
        default=OPTION_IDS, min_length=1, description="Candidate options (default: the catalog)."
    )
    rules: tuple[Rule, ...] = Field(default=(), description="Rules, applied in order.")

    @field_validator("options")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _known_options(value, "options")

    @model_validator(mode="after")
    def _check_rules(self) -> TouchpointRules:
        names = [r.name for r in self.rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice or NO_OPTIONS_LEFT in names:
            raise ValueError(f"rule names must be unique and not {NO_OPTIONS_LEFT!r}: {twice}")
        for rule in self.rules:
            offered = [o for o in rule.options or () if o not in self.options]
            if offered:
                raise ValueError(
                    f"rule {rule.name!r} withholds {offered}, which this touchpoint does not "
                    f"offer (options: {list(self.options)})"
                )
        return self


class EligibilityConfig(BaseModel):
    """Eligibility per touchpoint (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    touchpoints: dict[str, TouchpointRules] = Field(
        default_factory=dict, description="Rules by touchpoint (app, email, sms)."
    )

    @field_validator("touchpoints")
    @classmethod
    def _known_touchpoints(cls, value: dict[str, TouchpointRules]) -> dict[str, TouchpointRules]:
        unknown = [t for t in value if t not in TOUCHPOINTS]
        if unknown:
            raise ValueError(f"unknown touchpoint(s) {unknown} (allowed: {', '.join(TOUCHPOINTS)})")
        return value

    def for_touchpoint(self, touchpoint: str) -> TouchpointRules:
        return self.touchpoints.get(touchpoint, TouchpointRules())


def load_eligibility(source: str | Path | Mapping[str, Any] | None) -> EligibilityConfig:
    """Parse an eligibility config from a YAML/JSON file, a mapping, or None (no rules).

    Raises :class:`ConfigError` naming the file, the offending field and value.
    """
    if source is None:
        return EligibilityConfig()
    where = "eligibility"
    if isinstance(source, str | Path):
        import yaml

        path = Path(source)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(field="eligibility", value=where, problem="no such file") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(field="eligibility", value=where, problem=f"bad YAML: {exc}") from exc
    else:
        data = dict(source)
    try:
        return EligibilityConfig.model_validate(data or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "eligibility"
        raise ConfigError(
            field=field, value=error.get("input"), problem=f"{where}: {error['msg']}"
        ) from exc


@dataclass(frozen=True)
class EligibilityVerdict:
    """Eligibility of ``n`` borrowers: who is excluded (by which rule), which options stay."""

    excluded_by: npt.NDArray[np.object_]  # rule name or None, per borrower
    offered: npt.NDArray[np.bool_]  # (n, len(options)): option still offered
    withheld: npt.NDArray[np.bool_]  # (n, len(rules)): the option rule matched the borrower
    rule_names: tuple[str, ...]

    @property
    def eligible(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.excluded_by == None, dtype=bool)  # noqa: E711


def apply_rules(
    rules: TouchpointRules, features: Mapping[str, np.ndarray], n: int
) -> EligibilityVerdict:
    """Apply ``rules`` in order to ``n`` borrowers' ``features`` (columns by name).

    A borrower excluded by an earlier rule is counted under that rule only; option
    rules apply to borrowers still in.
    """
    excluded = np.full(n, None, dtype=object)
    offered = np.ones((n, len(rules.options)), dtype=bool)
    withheld = np.zeros((n, len(rules.rules)), dtype=bool)
    for j, rule in enumerate(rules.rules):
        values = np.asarray(features[rule.feature])
        hit = np.asarray(_OPS[rule.op](values, rule.value), dtype=bool)
        hit &= excluded == None  # noqa: E711 (elementwise on an object array)
        if rule.options is None:
            excluded[hit] = rule.name
            continue
        columns = np.array([rules.options.index(o) for o in rule.options], dtype=np.int64)
        offered[np.ix_(np.flatnonzero(hit), columns)] = False
        withheld[:, j] = hit
    empty = (excluded == None) & ~offered.any(axis=1)  # noqa: E711
    excluded[empty] = NO_OPTIONS_LEFT
    return EligibilityVerdict(
        excluded_by=excluded,
        offered=offered,
        withheld=withheld,
        rule_names=tuple(r.name for r in rules.rules),
    )
