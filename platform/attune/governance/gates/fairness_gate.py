"""The fairness gate: may a model version take live traffic (``champion`` / ``canary``)?

:func:`check_fairness` reads a version's ``fairness.json`` (the
:class:`~attune.governance.fairness.FairnessReport`) and compares it with the bounds of
a :class:`FairnessGateConfig`. It returns a :class:`GateDecision`; it never raises for a
refusal, so the registry can record the verdict and honour a justified override.
:func:`require_fairness` is the raising form for callers outside the registry.

What is checked, per protected attribute (groups the report suppressed for being small
are not compared):

* **equal opportunity** per option (min/max across groups of how often the option is
  ranked first where the borrower completed it), across the groups with at least
  ``min_eligible`` such presentations; a ratio below ``min_opportunity_ratio`` refuses
  only when the gap between the groups' rates is also above
  ``min_opportunity_difference`` (0 of 30 against 1 of 27 is a ratio of 0 and no
  evidence). This is the default judgement: it conditions on need, so a model that
  shows payment plans first to delinquent borrowers is not refused because one group
  is delinquent more often, while a model that withholds the plan from one group's
  borrowers who needed it is;
* the raw **exposure** ratio (min/max across groups of how often an option is ranked
  first), for every option ranked first in at least ``min_option_share`` of
  presentations: by default (``exposure_mode="fallback"``) it refuses only for an
  option whose opportunity the report cannot measure (no presentation where it was
  completed, or a report without opportunity), and otherwise only warns;
  ``"refuse"`` always judges it, ``"warn"`` never refuses on it;
* the NDCG difference (max - min) across groups;
* optionally the difference in the top option's cure rate.

With ``use_confidence_interval`` (the default) a bound counts as breached only when the
whole bootstrap interval is outside it: the benefit of the doubt goes to noise, not to
the model, and the refusals that remain are the ones the data can prove. A report
without intervals is then judged on point estimates, with a warning (an error when the
config asks for intervals explicitly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attune.errors import ConfigError, GateRefused, InvalidInput
from attune.governance.fairness import (
    AttributeReport,
    Estimate,
    FairnessReport,
    MetricSummary,
)
from attune.governance.gates.decision import GateDecision, GateOverride

GATE_NAME = "fairness"


class FairnessGateConfig(BaseModel):
    """Bounds a version's fairness report must respect to take live traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attributes: tuple[str, ...] | None = Field(
        default=None,
        description="Protected attributes to check; None checks every one in the report.",
    )
    min_opportunity_ratio: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Refuse when an option's equal-opportunity ratio (min/max group rate of "
        "ranking it first where the borrower completed it) is below this (four-fifths).",
    )
    warn_opportunity_ratio: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Warn (without refusing) when an equal-opportunity ratio is below this.",
    )
    min_opportunity_difference: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Refuse on an equal-opportunity ratio only when the gap (max - min group "
        "rate) is also above this: a ratio of two small rates (0 of 30 against 1 of 27) is "
        "not evidence of a shortfall.",
    )
    min_eligible: int = Field(
        default=20,
        ge=1,
        description="Judge an option's equal opportunity only across groups with at least "
        "this many presentations where the option was completed.",
    )
    exposure_mode: Literal["fallback", "refuse", "warn"] = Field(
        default="fallback",
        description="Raw exposure ratios: 'fallback' refuses only for options whose equal "
        "opportunity the report cannot measure and warns otherwise; 'refuse' always judges "
        "them; 'warn' never refuses on them.",
    )
    min_exposure_ratio: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Refuse when an option's exposure ratio (min/max group) is below this "
        "(0.8 is the four-fifths rule), where exposure_mode judges exposure.",
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
        "have their exposure checked (rarer ones have too few events for a stable ratio).",
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
        default=True,
        description="Breach only when the whole bootstrap interval is outside the bound.",
    )

    @model_validator(mode="after")
    def _warn_above_refuse(self) -> FairnessGateConfig:
        for what in ("exposure", "opportunity"):
            warn, refuse = getattr(self, f"warn_{what}_ratio"), getattr(self, f"min_{what}_ratio")
            if warn < refuse:
                raise ValueError(
                    f"warn_{what}_ratio ({warn}) must be >= min_{what}_ratio ({refuse})"
                )
        return self


@dataclass
class _Verdict:
    """Reasons, warnings and checked pairs as the gate collects them."""

    config: FairnessGateConfig
    use_ci: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def ratio(
        self,
        key: str,
        where: str,
        ratio: Estimate,
        bound: float,
        warn: float,
        *,
        gap: Estimate | None = None,
        min_gap: float = 0.0,
    ) -> None:
        """Refuse when ``ratio`` is below ``bound`` (and ``gap`` above ``min_gap``).

        Otherwise warn when the ratio's point estimate is below ``warn``.
        """
        self.checked.append(key)
        if ratio.value is None:
            return
        wide = gap is not None and gap.value is not None and _above(gap, min_gap, self.use_ci)
        if _below(ratio, bound, self.use_ci) and (gap is None or wide):
            self.reasons.append(f"{where} is below {bound:g}")
        elif ratio.value < warn:
            small = "" if gap is None or wide else f" (the gap is not above {min_gap:g})"
            self.warnings.append(f"{where} is below {warn:g}{small}")


def check_fairness(
    report: Mapping[str, Any], config: FairnessGateConfig | None = None
) -> GateDecision:
    """Judge a fairness report (the dict of ``fairness.json``) against ``config``.

    Returns a :class:`GateDecision`; a refusal lists one reason per breached bound,
    naming attribute, metric, option, groups, value, interval and bound. Raises
    :class:`InvalidInput` naming the first bad field when ``report`` is not a fairness
    report, and when ``config`` asks for an attribute the report lacks or explicitly
    for intervals it has none of.
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
    verdict = _Verdict(config=config, use_ci=config.use_confidence_interval)
    if config.use_confidence_interval and parsed.n_bootstrap == 0:
        if "use_confidence_interval" in config.model_fields_set:
            raise InvalidInput(
                "use_confidence_interval is set but the report has no bootstrap (n_bootstrap=0)",
                field="use_confidence_interval",
                value=parsed.n_bootstrap,
            )
        verdict.use_ci = False
        verdict.warnings.append(
            "the report has no bootstrap intervals (n_bootstrap=0): judged on point estimates"
        )
    for attribute in attributes:
        part = parsed.attributes[attribute]
        if part.suppressed_groups:
            verdict.warnings.append(
                f"{attribute}: groups {part.suppressed_groups} are below "
                f"{parsed.min_group_size} presentations and were not compared"
            )
        if len(part.groups) - len(part.suppressed_groups) < 2:
            verdict.warnings.append(
                f"{attribute}: fewer than two groups are large enough to compare"
            )
        _judge_opportunity(verdict, attribute, part)
        _judge_exposure(verdict, attribute, part)
        _judge_differences(verdict, attribute, part)
    return GateDecision(
        gate=GATE_NAME,
        passed=not verdict.reasons,
        reasons=tuple(verdict.reasons),
        warnings=tuple(verdict.warnings),
        checked=tuple(verdict.checked),
    )


def _measurable(part: AttributeReport, option: str) -> bool:
    """Whether the report saw the option completed at all (its opportunity is defined)."""
    summary = part.opportunity.get(option)
    return summary is not None and summary.overall.value is not None


def _judge_opportunity(verdict: _Verdict, attribute: str, part: AttributeReport) -> None:
    config = verdict.config
    thin: list[str] = []
    for option, summary in part.opportunity.items():
        if not _measurable(part, option):
            continue  # never completed: raw exposure stands in for it (exposure_mode)
        small = dict(summary.left_out)
        small.update({g: e.n for g, e in summary.by_group.items() if e.n < config.min_eligible})
        if small:
            judged = len(summary.by_group) >= 2 and not set(small) & set(summary.by_group)
            groups = ", ".join(f"{g} {n}" for g, n in sorted(small.items()))
            thin.append(f"{option} ({groups}{'' if judged else '; not judged'})")
            if not judged:
                continue
        if len(summary.by_group) < 2:
            continue
        spread = f"{_spread(summary, 'ratio', n=True)}; {_interval_text(summary.difference)}"
        verdict.ratio(
            f"{attribute}/opportunity:{option}",
            f"{attribute}: equal opportunity for {option} ({spread})",
            summary.ratio,
            config.min_opportunity_ratio,
            config.warn_opportunity_ratio,
            gap=summary.difference,
            min_gap=config.min_opportunity_difference,
        )
    if thin:
        verdict.warnings.append(
            f"{attribute}: groups with fewer than {config.min_eligible} presentations where "
            f"the option was completed are not compared on equal opportunity: " + "; ".join(thin)
        )


def _judge_exposure(verdict: _Verdict, attribute: str, part: AttributeReport) -> None:
    config = verdict.config
    unjudged: list[str] = []
    for option, summary in part.exposure.items():
        share = summary.overall.value or 0.0
        if share < config.min_option_share or len(summary.by_group) < 2:
            continue
        judged = config.exposure_mode == "refuse" or (
            config.exposure_mode == "fallback" and not _measurable(part, option)
        )
        if judged:
            where = f"{attribute}: exposure of {option} ({_spread(summary, 'ratio')})"
            verdict.ratio(
                f"{attribute}/exposure:{option}",
                where,
                summary.ratio,
                config.min_exposure_ratio,
                config.warn_exposure_ratio,
            )
        elif summary.ratio.value is not None and summary.ratio.value < config.warn_exposure_ratio:
            unjudged.append(f"{option} ({_spread(summary, 'ratio')})")
    if unjudged:
        verdict.warnings.append(
            f"{attribute}: raw exposure ratio below {config.warn_exposure_ratio:g}, not judged "
            f"(groups may differ in need; equal opportunity is judged instead): "
            + "; ".join(unjudged)
        )


def _judge_differences(verdict: _Verdict, attribute: str, part: AttributeReport) -> None:
    config = verdict.config
    bounds = {"ndcg": config.max_ndcg_difference}
    bounds["cure_rate_at_1"] = config.max_cure_rate_difference
    for metric, bound in bounds.items():
        summary = part.metrics.get(metric)
        if bound is None or summary is None or len(summary.by_group) < 2:
            continue
        verdict.checked.append(f"{attribute}/{metric}")
        diff = summary.difference
        if diff.value is not None and _above(diff, bound, verdict.use_ci):
            verdict.reasons.append(
                f"{attribute}: {metric} difference ({_spread(summary, 'difference')}) "
                f"exceeds {bound:g}"
            )


def require_fairness(
    report: Mapping[str, Any],
    config: FairnessGateConfig | None = None,
    *,
    version: str,
    override: GateOverride | None = None,
) -> GateDecision:
    """:func:`check_fairness`, raising :class:`GateRefused` on refusal unless overridden.

    An override turns a refusal into a passing decision whose warnings carry who
    overrode it and why, so the record shows the reasons and the justification together.
    """
    decision = check_fairness(report, config)
    if decision.passed:
        return decision
    if override is None:
        raise GateRefused(gate=GATE_NAME, version=version, reasons=list(decision.reasons))
    return decision.overridden(override)


def load_fairness_config(data: Mapping[str, Any] | None) -> FairnessGateConfig:
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


def _interval_text(estimate: Estimate, name: str = "gap") -> str:
    """'gap 0.130, CI [0.060, 0.220]' style text (the value alone without an interval)."""
    if estimate.value is None:
        return f"{name} undefined"
    text = f"{name} {estimate.value:.3f}"
    if estimate.ci and None not in estimate.ci:
        text += f", CI [{estimate.ci[0]:.3f}, {estimate.ci[1]:.3f}]"
    return text


def _spread(summary: MetricSummary, which: str, *, n: bool = False) -> str:
    """'ratio 0.42: m 0.30 vs f 0.71, CI [0.35, 0.50]' style text for a reason.

    With ``n`` each group's value is followed by the presentations behind it.
    """
    estimate: Estimate = getattr(summary, which)
    lo = summary.by_group.get(summary.min_group or "")
    hi = summary.by_group.get(summary.max_group or "")
    if estimate.value is None:
        return f"{which} undefined"
    text = f"{which} {estimate.value:.3f}"
    if lo is not None and hi is not None and lo.value is not None and hi.value is not None:
        lo_n, hi_n = (f" (n={lo.n})", f" (n={hi.n})") if n else ("", "")
        low = f"{summary.min_group} {lo.value:.3f}{lo_n}"
        text += f": {low} vs {summary.max_group} {hi.value:.3f}{hi_n}"
    if estimate.ci and None not in estimate.ci:
        text += f", CI [{estimate.ci[0]:.3f}, {estimate.ci[1]:.3f}]"
    return text
