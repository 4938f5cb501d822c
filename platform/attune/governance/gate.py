"""The fairness gate: may a model version take live traffic (``champion`` / ``canary``)?

:func:`check_promotion` reads a version's ``fairness.json`` (the
:class:`~attune.governance.fairness.FairnessReport`) and compares it with the bounds of
a :class:`FairnessGateConfig`. It returns a :class:`GateDecision`; it never raises for a
refusal, so the registry can record the verdict and honour a justified override.
:func:`require_promotion` is the raising form for callers outside the registry.

What is checked, per protected attribute (groups the report suppressed for being small
are not compared):

* the exposure ratio (min/max across groups of how often an option is ranked first),
  for every option ranked first in at least ``min_option_share`` of presentations;
* the NDCG difference (max - min) across groups;
* optionally the difference in the top option's cure rate.

With ``use_confidence_interval`` a bound counts as breached only when the whole
bootstrap interval is outside it (the benefit of the doubt goes to noise, not to the
model; off by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attune.errors import ConfigError, GateRefused, InvalidInput
from attune.governance.fairness import Estimate, FairnessReport, MetricSummary

GATE_NAME = "fairness"


class FairnessGateConfig(BaseModel):
    """Bounds a version's fairness report must respect to take live traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attributes: tuple[str, ...] | None = Field(
        default=None,
        description="Protected attributes to check; None checks every one in the report.",
    )
    min_exposure_ratio: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Refuse when an option's exposure ratio (min/max group) is below this "
        "(0.8 is the four-fifths rule).",
    )
    warn_exposure_ratio: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Warn (without refusing) when an exposure ratio is below this.",
    )
    min_option_share: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Only options ranked first in at least this share of all presentations "
        "are checked (rarer ones have too few events for a stable ratio).",
    )
    max_ndcg_difference: float | None = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Refuse when NDCG differs across groups by more; None skips the check.",
    )
    max_cure_rate_difference: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Refuse when the top option's cure rate differs by more; None skips.",
    )
    use_confidence_interval: bool = Field(
        default=False,
        description="Breach only when the whole bootstrap interval is outside the bound.",
    )

    @model_validator(mode="after")
    def _warn_above_refuse(self) -> FairnessGateConfig:
        if self.warn_exposure_ratio < self.min_exposure_ratio:
            raise ValueError(
                f"warn_exposure_ratio ({self.warn_exposure_ratio}) must be >= "
                f"min_exposure_ratio ({self.min_exposure_ratio})"
            )
        return self


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: ``passed``, the ``reasons`` it refused, and ``warnings``."""

    passed: bool
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    checked: tuple[str, ...] = field(default=())  # "<attribute>/<metric>" pairs compared

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": GATE_NAME,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "checked": list(self.checked),
        }


def check_promotion(
    report: Mapping[str, Any], config: FairnessGateConfig | None = None
) -> GateDecision:
    """Judge a fairness report (the dict of ``fairness.json``) against ``config``.

    Returns a :class:`GateDecision`; a refusal lists one reason per breached bound,
    naming attribute, metric, groups, value and bound. Raises :class:`InvalidInput`
    naming the first bad field when ``report`` is not a fairness report, and when
    ``config`` asks for an attribute the report lacks or for intervals it has none of.
    """
    config = config or FairnessGateConfig()
    try:
        parsed = FairnessReport.model_validate(dict(report))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(report)"
        raise InvalidInput(
            f"not a fairness report: {where}: {first['msg']}", field=where, problem=first["msg"]
        ) from exc
    attributes = config.attributes or tuple(parsed.attributes)
    missing = sorted(set(attributes) - set(parsed.attributes))
    if missing:
        raise InvalidInput(
            f"fairness report has no attribute(s) {missing} (has {sorted(parsed.attributes)})",
            field="attributes",
            value=missing,
        )
    if config.use_confidence_interval and parsed.n_bootstrap == 0:
        raise InvalidInput(
            "use_confidence_interval is set but the report has no bootstrap (n_bootstrap=0)",
            field="use_confidence_interval",
            value=parsed.n_bootstrap,
        )
    reasons: list[str] = []
    warnings: list[str] = []
    checked: list[str] = []
    for attribute in attributes:
        part = parsed.attributes[attribute]
        if part.suppressed_groups:
            warnings.append(
                f"{attribute}: groups {part.suppressed_groups} are below "
                f"{parsed.min_group_size} presentations and were not compared"
            )
        if len(part.groups) - len(part.suppressed_groups) < 2:
            warnings.append(f"{attribute}: fewer than two groups are large enough to compare")
        for option, summary in part.exposure.items():
            share = summary.overall.value or 0.0
            if share < config.min_option_share or len(summary.by_group) < 2:
                continue
            checked.append(f"{attribute}/exposure:{option}")
            ratio = summary.ratio
            if ratio.value is None:
                continue
            where = f"{attribute}: exposure of {option} ({_spread(summary, 'ratio')})"
            if _below(ratio, config.min_exposure_ratio, config.use_confidence_interval):
                reasons.append(f"{where} is below {config.min_exposure_ratio:g}")
            elif ratio.value < config.warn_exposure_ratio:
                warnings.append(f"{where} is below {config.warn_exposure_ratio:g}")
        bounds = {"ndcg": config.max_ndcg_difference}
        bounds["cure_rate_at_1"] = config.max_cure_rate_difference
        for metric, bound in bounds.items():
            summary_or_none = part.metrics.get(metric)
            if bound is None or summary_or_none is None or len(summary_or_none.by_group) < 2:
                continue
            checked.append(f"{attribute}/{metric}")
            diff = summary_or_none.difference
            if diff.value is not None and _above(diff, bound, config.use_confidence_interval):
                reasons.append(
                    f"{attribute}: {metric} difference ({_spread(summary_or_none, 'difference')}) "
                    f"exceeds {bound:g}"
                )
    return GateDecision(
        passed=not reasons, reasons=tuple(reasons), warnings=tuple(warnings), checked=tuple(checked)
    )


class GateOverride(BaseModel):
    """A person's decision to promote despite a refusal, with a written justification."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str = Field(min_length=1, description="Who takes responsibility for the override.")
    justification: str = Field(
        min_length=20, description="Why the refusal is acceptable; kept in the alias history."
    )


def require_promotion(
    report: Mapping[str, Any],
    config: FairnessGateConfig | None = None,
    *,
    version: str,
    override: GateOverride | None = None,
) -> GateDecision:
    """:func:`check_promotion`, raising :class:`GateRefused` on refusal unless overridden.

    An override turns a refusal into a passing decision whose warnings carry who
    overrode it and why, so the record shows the reasons and the justification together.
    """
    decision = check_promotion(report, config)
    if decision.passed:
        return decision
    if override is None:
        raise GateRefused(gate=GATE_NAME, version=version, reasons=list(decision.reasons))
    note = f"overridden by {override.by}: {override.justification}"
    return GateDecision(
        passed=True,
        reasons=decision.reasons,
        warnings=(*decision.warnings, note),
        checked=decision.checked,
    )


def load_gate_config(data: Mapping[str, Any] | None) -> FairnessGateConfig:
    """A :class:`FairnessGateConfig` from YAML/JSON data; ConfigError names the bad field."""
    try:
        return FairnessGateConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(config)"
        raise ConfigError(field=where, value=first.get("input"), problem=first["msg"]) from exc


def _below(estimate: Estimate, bound: float, use_ci: bool) -> bool:
    upper = estimate.ci[1] if use_ci and estimate.ci else None
    value = upper if upper is not None else estimate.value
    return value is not None and value < bound


def _above(estimate: Estimate, bound: float, use_ci: bool) -> bool:
    lower = estimate.ci[0] if use_ci and estimate.ci else None
    value = lower if lower is not None else estimate.value
    return value is not None and value > bound


def _spread(summary: MetricSummary, which: str) -> str:
    """'0.42: m 0.30 vs f 0.71, 95% CI [0.35, 0.50]' style text for a reason."""
    estimate: Estimate = getattr(summary, which)
    lo = summary.by_group.get(summary.min_group or "")
    hi = summary.by_group.get(summary.max_group or "")
    text = f"{which} {estimate.value:.3f}"
    if lo is not None and hi is not None and lo.value is not None and hi.value is not None:
        text += f": {summary.min_group} {lo.value:.3f} vs {summary.max_group} {hi.value:.3f}"
    if estimate.ci and None not in estimate.ci:
        text += f", CI [{estimate.ci[0]:.3f}, {estimate.ci[1]:.3f}]"
    return text
