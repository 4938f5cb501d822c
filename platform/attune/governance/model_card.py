"""Model card (markdown) and governance record (JSON) of one model version.

:func:`governance_record` gathers, at registration time, what a reviewer needs to judge
a version: intended and out-of-scope use, training data and lineage, metrics overall
and by protected group with intervals, ONNX parity, the fairness verdict, the drift
baseline, explanations and known limitations. It is validated by
:class:`GovernanceRecord` and stored as ``governance.json``; :func:`render_model_card`
turns it into ``model_card.md``.

Versions are immutable, while aliases keep moving: the alias history lives in the
registry's alias log, so :func:`render_model_card` takes the current history as an
argument and a card can be re-rendered at any time with who moved what, when, and why.

A version without a protected table has no fairness report and so no record: its card
is :func:`render_basic_card`, from what training knows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from attune.data.schema import protected_names
from attune.errors import InvalidInput

INTENDED_USE = (
    "Orders the servicing options (autopay, due-date change, payment plan, hardship help, "
    "reminders, pay now) shown to a borrower at a servicing touchpoint (app, email, SMS), "
    "by how likely each is to be completed and to keep the loan current. It supports "
    "servicing outreach; eligibility for each option is decided before ranking."
)
OUT_OF_SCOPE = (
    "Credit decisions: approval, pricing, limits or terms of any loan.",
    "Deciding eligibility for hardship help or payment plans; the model only orders "
    "options a borrower is already eligible for.",
    "Collections escalation, legal action or reporting to credit bureaus.",
    "Borrowers, products or markets outside the servicing portfolio it was trained on.",
    "Inferring or acting on protected attributes (age, gender, ethnicity).",
)
LIMITATIONS = (
    "Trained on logged presentations: labels exist only for options the logging policy "
    "showed, at the positions it chose; offline metrics are estimates of online behaviour.",
    "Fairness figures cover the protected attributes recorded for evaluation; groups with "
    "few presentations are suppressed and not compared.",
    "Bootstrap intervals resample borrowers; intervals of max-min differences lean "
    "upward when groups are small.",
    "Reason codes (TreeSHAP) explain how the model scored an option, not what causes a "
    "borrower's outcome.",
    "Drift monitoring compares each feature's distribution alone (PSI); shifts in the "
    "relation between features and outcomes are not detected by it.",
)


class AliasEvent(BaseModel):
    """One alias move as the registry logs it (fields the card shows; others ignored)."""

    # The registry owns this record and may add fields; the card reads what it needs.
    model_config = ConfigDict(extra="ignore", frozen=True)

    alias: str = Field(description="champion, canary or shadow.")
    version: str = Field(description="Version the alias points at after the move.")
    previous: str | None = Field(default=None, description="Version before the move.")
    moved_at: datetime = Field(description="When (UTC).")
    by: str = Field(description="Who moved it.")
    justification: str | None = Field(default=None, description="Why.")
    override: bool = Field(default=False, description="True when a gate refusal was overridden.")
    gate: dict[str, Any] | None = Field(default=None, description="The gate's verdict.")


class FairnessVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    passed: bool = Field(description="The fairness gate's verdict at registration.")
    reasons: list[str] = Field(description="Bounds breached (empty when passed).")
    warnings: list[str] = Field(description="Notes that did not refuse.")
    four_fifths_passed: bool = Field(description="No rate below four-fifths of the best group.")
    violations: list[dict[str, Any]] = Field(description="Four-fifths violations.")


class GovernanceRecord(BaseModel):
    """The content of ``governance.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["1"] = "1"
    version: str = Field(min_length=1, description="Registry version id.")
    created_at: datetime = Field(description="When the record was made (UTC).")
    intended_use: str = Field(min_length=1)
    out_of_scope: list[str]
    model: dict[str, Any] = Field(description="Objective and parameters.")
    features: list[str] = Field(description="Model features in input order.")
    protected_attributes: list[str] = Field(description="Evaluated on; never features.")
    data: dict[str, Any] = Field(description="Training data and lineage.")
    metrics: dict[str, Any] = Field(description="Overall evaluation metrics.")
    metrics_by_group: dict[str, dict[str, dict[str, Any]]] = Field(
        description="attribute -> metric -> {by_group, difference, ratio} with intervals."
    )
    exposure_parity: dict[str, dict[str, dict[str, Any]]] = Field(
        description="attribute -> option -> {ratio, ci, flag}."
    )
    parity: dict[str, Any] = Field(description="ONNX vs native parity report.")
    fairness: FairnessVerdict
    drift_baseline: dict[str, Any] = Field(description="Summary of drift_reference.json.")
    explanations: dict[str, Any] | None = Field(description="Top reason codes.")
    limitations: list[str]
    alias_history: list[AliasEvent] = Field(description="Moves known when this was written.")


def governance_record(
    *,
    version: str,
    features: Sequence[str],
    lineage: Mapping[str, Any],
    metrics: Mapping[str, Any],
    parity: Mapping[str, Any],
    fairness: Mapping[str, Any],
    gate: Any,
    drift_reference: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    explanations: Mapping[str, Any] | None = None,
    intended_use: str = INTENDED_USE,
    out_of_scope: Sequence[str] = OUT_OF_SCOPE,
    limitations: Sequence[str] = (),
    alias_history: Sequence[Mapping[str, Any]] = (),
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The governance record of a version as a JSON-ready dict (validated).

    ``fairness`` is the fairness report, ``gate`` the fairness gate's decision (an
    object with ``to_dict()`` or a mapping with ``passed``/``reasons``/``warnings``),
    ``drift_reference`` the drift reference; ``limitations`` are added to the standard
    ones. Raises pydantic's ValidationError when a part has the wrong shape.
    """
    verdict = gate.to_dict() if hasattr(gate, "to_dict") else dict(gate)
    by_group: dict[str, dict[str, dict[str, Any]]] = {}
    exposure: dict[str, dict[str, dict[str, Any]]] = {}
    for attribute, part in fairness["attributes"].items():
        by_group[attribute] = {name: dict(summary) for name, summary in part["metrics"].items()}
        exposure[attribute] = {
            option: {
                "overall": summary["overall"]["value"],
                "ratio": summary["ratio"]["value"],
                "ci": summary["ratio"]["ci"],
                "min_group": summary["min_group"],
                "max_group": summary["max_group"],
                "four_fifths_flag": summary["four_fifths_flag"],
            }
            for option, summary in part["exposure"].items()
        }
    explained = None
    if explanations is not None:
        explained = {
            "method": explanations.get("method"),
            "catalog_version": explanations.get("catalog_version"),
            "top_reasons": dict(list(explanations.get("reasons", {}).items())[:8]),
        }
    record = GovernanceRecord(
        version=version,
        created_at=created_at or datetime.now(UTC),
        intended_use=intended_use,
        out_of_scope=list(out_of_scope),
        model=dict(params or {}),
        features=list(features),
        protected_attributes=sorted(fairness["attributes"]),
        data=dict(lineage),
        metrics=dict(metrics),
        metrics_by_group=by_group,
        exposure_parity=exposure,
        parity=dict(parity),
        fairness=FairnessVerdict(
            passed=bool(verdict["passed"]),
            reasons=[str(r) for r in verdict.get("reasons", ())],
            warnings=[str(w) for w in verdict.get("warnings", ())],
            four_fifths_passed=bool(fairness["four_fifths"]["passed"]),
            violations=list(fairness["four_fifths"]["violations"]),
        ),
        drift_baseline={
            "bins": drift_reference.get("bins"),
            "n_rows": drift_reference.get("n_rows"),
            "spec_hash": drift_reference.get("spec_hash"),
            "n_features": len(drift_reference.get("feature_names", ())),
            "method": drift_reference.get("method"),
        },
        explanations=explained,
        limitations=[*LIMITATIONS, *limitations],
        alias_history=[AliasEvent.model_validate(dict(e)) for e in alias_history],
    )
    leaked = protected_names(record.features)
    if leaked:
        raise InvalidInput(
            f"protected attributes may not be features: {leaked}", field="features", value=leaked
        )
    return record.model_dump(mode="json")


def render_model_card(
    record: Mapping[str, Any], *, alias_history: Sequence[Mapping[str, Any]] | None = None
) -> str:
    """``model_card.md`` for a governance record; ``alias_history`` replaces the record's."""
    rec = GovernanceRecord.model_validate(dict(record))
    history = (
        rec.alias_history
        if alias_history is None
        else [AliasEvent.model_validate(dict(e)) for e in alias_history]
    )
    verdict = "PASSED" if rec.fairness.passed else "REFUSED"
    lines = [
        f"# Model card — {rec.version}",
        "",
        f"Registered {rec.created_at:%Y-%m-%d %H:%M} UTC. Fairness gate: **{verdict}**. "
        f"Four-fifths rule: **{'met' if rec.fairness.four_fifths_passed else 'NOT met'}**.",
        "",
        "## Intended use",
        "",
        rec.intended_use,
        "",
        "## Out of scope",
        "",
        *[f"- {item}" for item in rec.out_of_scope],
        "",
        "## Model",
        "",
        *_table(["parameter", "value"], sorted(rec.model.items())),
        "",
        f"{len(rec.features)} features. Protected attributes "
        f"({', '.join(rec.protected_attributes) or 'none'}) are used only to evaluate "
        "fairness; they are never model inputs.",
        "",
        "## Training data and lineage",
        "",
        *_table(["item", "value"], sorted(rec.data.items())),
        "",
        "## Metrics (test split)",
        "",
        *_table(["metric", "value"], sorted(rec.metrics.items())),
        "",
        "## Metrics by group (bootstrap intervals)",
    ]
    for attribute, metrics in rec.metrics_by_group.items():
        lines += ["", f"### {attribute}", ""]
        groups = sorted({g for m in metrics.values() for g in m.get("by_group", {})})
        rows = []
        for group in groups:
            cells: list[Any] = [group]
            for summary in metrics.values():
                entry = summary.get("by_group", {}).get(group, {})
                cells.append(_estimate(entry))
            rows.append(cells)
        rows.append(
            ["difference (max - min)", *(_estimate(m["difference"]) for m in metrics.values())]
        )
        lines += _table(["group", *metrics], rows)
    lines += ["", "## Exposure parity (share of presentations where an option is ranked first)"]
    for attribute, options in rec.exposure_parity.items():
        lines += ["", f"### {attribute}", ""]
        rows = [
            [
                option,
                _fmt(e["overall"]),
                f"{_fmt(e['ratio'])} {_ci(e['ci'])}",
                f"{e['min_group']} / {e['max_group']}",
                "below 4/5" if e["four_fifths_flag"] else "",
            ]
            for option, e in options.items()
        ]
        lines += _table(["option", "overall", "ratio min/max", "lowest / highest", "flag"], rows)
    lines += [
        "",
        f"## Fairness verdict: {verdict}",
        "",
        *([f"- refused: {r}" for r in rec.fairness.reasons] or ["- every bound respected"]),
        *[f"- note: {w}" for w in rec.fairness.warnings],
        "",
        "## ONNX parity",
        "",
        *_table(["check", "value"], sorted(rec.parity.items())),
        "",
        "## What drives the ranking",
        "",
    ]
    if rec.explanations:
        lines += _table(
            ["reason code", "mean absolute contribution"],
            list(rec.explanations.get("top_reasons", {}).items()),
        )
    else:
        lines.append("No explanation summary was recorded.")
    base = rec.drift_baseline
    lines += [
        "",
        "## Drift baseline",
        "",
        f"Reference bins for {base.get('n_features')} features ({base.get('bins')} quantile bins) "
        f"from {base.get('n_rows')} training rows, feature spec {base.get('spec_hash')}. "
        "`attune monitor drift` compares served traffic with it (PSI; warn 0.1, alert 0.25).",
        "",
        "## Known limitations",
        "",
        *[f"- {item}" for item in rec.limitations],
        "",
        "## Alias history",
        "",
    ]
    if history:
        rows = [
            [
                f"{e.moved_at:%Y-%m-%d %H:%M:%S}",
                e.alias,
                f"{e.previous or '—'} → {e.version}",
                e.by,
                _gate_cell(e),
                e.justification or "",
            ]
            for e in sorted(history, key=lambda e: e.moved_at)
        ]
        lines += _table(["when (UTC)", "alias", "move", "by", "gate", "justification"], rows)
    else:
        lines.append("Not yet promoted to any alias.")
    return "\n".join(lines) + "\n"


def _gate_cell(event: AliasEvent) -> str:
    if event.gate is None:
        return "not gated"
    if event.override:
        return "refused, OVERRIDDEN"
    return "passed" if event.gate.get("passed") else "refused"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return "—" if value is None else str(value)


def _ci(ci: Any) -> str:
    if not ci or None in ci:
        return ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _estimate(entry: Mapping[str, Any]) -> str:
    if not entry:
        return "—"
    text = f"{_fmt(entry.get('value'))} {_ci(entry.get('ci'))}".strip()
    if "n" in entry:
        text += f" (n={entry['n']})"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    out = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |"]
    out.append("|" + "---|" * len(header))
    for row in rows:
        out.append("| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |")
    return out


def _num(value: Any, spec: str = ".4f") -> str:
    if isinstance(value, int | float):
        return format(value, spec)
    return "n/a" if value is None else str(value)


def render_basic_card(
    *,
    params: dict[str, Any],
    metrics: dict[str, Any],
    parity: dict[str, Any],
    lineage: dict[str, Any],
    fairness: dict[str, Any] | None = None,
) -> str:
    """The basic ``model_card.md``: what training knows, for a version without fairness.

    Written instead of :func:`render_model_card` when there is no protected table and so
    no governance record: the model, its data, its test and policy figures (rows in the
    order of ``metrics["policy_values"]``), its parity gate and its limitations.
    """
    ranker = params.get("ranker", {})
    test = metrics.get("test", {})
    values = metrics.get("policy_values", {})
    share = metrics.get("share_of_oracle_lift", {})
    lift = metrics.get("lift_over_random", {})
    dataset = lineage.get("dataset", {})
    lines = [
        "# Model card: servicing-option ranker",
        "",
        "## Model",
        "",
        f"- XGBoost learning-to-rank, objective `{ranker.get('objective')}`, "
        f"{params.get('num_boost_round')} trees of depth <= {ranker.get('max_depth')}.",
        f"- Chosen by a Ray Tune sweep ({metrics.get('sweep', {}).get('trials')} trials, "
        f"{metrics.get('sweep', {}).get('scheduler')}) on validation NDCG@3 "
        f"({_num(metrics.get('validation', {}).get('ndcg@3'))}).",
        "- Input: the features of `feature_spec.json`, in its order; output: one score "
        "per candidate option, higher ranks first. Candidates are scored at position 1.",
        "",
        "## Intended use",
        "",
        "Ordering the servicing options shown to a borrower at a touchpoint. Not for "
        "credit decisions. Protected attributes are never features.",
        "",
        "## Data",
        "",
        f"- Dataset `{dataset.get('uri')}` (content hash `{dataset.get('content_hash')}`, "
        f"feature spec `{dataset.get('feature_spec_hash')}`), rows {dataset.get('rows')}.",
        "- Time-based split: trained on the earliest presentations, tested on the latest.",
        "",
        "## Test-split ranking metrics (logged slates)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("ndcg@1", "ndcg@3", "map", "precision@1", "recall@1", "precision@2", "recall@2"):
        lines.append(f"| {key} | {_num(test.get(key))} |")
    lines += [
        "",
        "## Policy value (simulator ground truth, test presentations)",
        "",
        "| policy | expected reward | lift over random | share of oracle lift |",
        "|---|---|---|---|",
    ]
    for policy in values:
        lines.append(
            f"| {policy} | {_num(values.get(policy))} | {_num(lift.get(policy))} | "
            f"{_num(share.get(policy), '.1%')} |"
        )
    lines += [
        "",
        "## ONNX parity gate",
        "",
        f"- max |onnx - native| = {_num(parity.get('max_abs_diff'), '.2e')} "
        f"(tolerance {parity.get('tolerance')}), order agreement "
        f"{_num(parity.get('order_agreement'), '.1%')} over {parity.get('n_groups')} groups: "
        f"{'passed' if parity.get('passed') else 'FAILED'}.",
        "",
        "## Fairness",
        "",
    ]
    if fairness is None:
        lines.append("- No fairness report was produced for this version.")
    else:
        four = fairness.get("four_fifths", {})
        verdict = (
            "passed" if four.get("passed") else f"{len(four.get('violations', []))} violations"
        )
        lines.append(f"- Four-fifths rule across protected groups: {verdict} (`fairness.json`).")
    lines += [
        "",
        "## Limitations",
        "",
        "- Trained on logged slates of a legacy policy: options it rarely showed are "
        "learned from few examples.",
        "- Policy values come from the simulator's ground truth and hold for simulated "
        "borrowers; on real traffic, use the experiments stage (A/B, off-policy estimates).",
        "",
        f"Code version `{lineage.get('code_version')}`; libraries {lineage.get('versions')}.",
        "",
    ]
    return "\n".join(lines)
