"""A model card (``model_card.md``) for a registered ranker.

The pipeline uses the governance stage's renderer (``attune.governance``'s
``render_model_card``) when it exists; otherwise :func:`render_basic_card` writes the
facts this stage knows: what the model is, the data it saw, its test and policy
figures, its parity gate and its limitations.
"""

from __future__ import annotations

from typing import Any

from attune.training.evaluate import POLICIES


def _fmt(value: Any, spec: str = ".4f") -> str:
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
    """Markdown model card from the version's params, metrics, parity and lineage."""
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
        f"({_fmt(metrics.get('validation', {}).get('ndcg@3'))}).",
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
        lines.append(f"| {key} | {_fmt(test.get(key))} |")
    lines += [
        "",
        "## Policy value (simulator ground truth, test presentations)",
        "",
        "| policy | expected reward | lift over random | share of oracle lift |",
        "|---|---|---|---|",
    ]
    for policy in POLICIES:
        lines.append(
            f"| {policy} | {_fmt(values.get(policy))} | {_fmt(lift.get(policy))} | "
            f"{_fmt(share.get(policy), '.1%')} |"
        )
    lines += [
        "",
        "## ONNX parity gate",
        "",
        f"- max |onnx - native| = {_fmt(parity.get('max_abs_diff'), '.2e')} "
        f"(tolerance {parity.get('tolerance')}), order agreement "
        f"{_fmt(parity.get('order_agreement'), '.1%')} over {parity.get('n_groups')} groups: "
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
