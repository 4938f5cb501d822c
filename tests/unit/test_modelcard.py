"""Model card and governance record: every section a reviewer needs, alias history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from attune.data.spec import FEATURE_NAMES
from attune.errors import InvalidInput
from attune.governance.drift import drift_reference
from attune.governance.fairness import fairness_report
from attune.governance.gates.fairness_gate import check_fairness
from attune.governance.model_card import (
    GovernanceRecord,
    governance_record,
    render_model_card,
)

VERSION = "v20250301-120000-abcdef"
SECTIONS = (
    "## Intended use",
    "## Out of scope",
    "## Model",
    "## Training data and lineage",
    "## Metrics (test split)",
    "## Metrics by group (bootstrap intervals)",
    "## Exposure parity",
    "## Fairness verdict",
    "## ONNX parity",
    "## What drives the ranking",
    "## Drift baseline",
    "## Known limitations",
    "## Alias history",
)


def _fairness(m_plan_first: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    options = ("payment_plan", "reminder_sms", "pay_now")
    n = 60
    rows = []
    for q in range(2 * n):
        group = "f" if q < n else "m"
        top = "payment_plan" if group == "f" or q - n < m_plan_first else "pay_now"
        for o in options:
            rows.append((q, q // 2, o, float(o == top), int(rng.integers(0, 4))))
    frame = pd.DataFrame(rows, columns=["qid", "borrower_id", "option_id", "score", "label"])
    protected = pd.DataFrame(
        {"borrower_id": np.arange(n), "gender": ["f"] * (n // 2) + ["m"] * (n // 2)}
    )
    return fairness_report(
        scores=frame["score"],
        qid=frame["qid"],
        option_ids=frame["option_id"],
        labels=frame["label"],
        borrower_ids=frame["borrower_id"],
        protected=protected,
        n_bootstrap=50,
    )


def _record(fairness: dict[str, Any], **extra: Any) -> dict[str, Any]:
    X = np.random.default_rng(1).normal(size=(200, len(FEATURE_NAMES)))
    values: dict[str, Any] = {
        "version": VERSION,
        "features": FEATURE_NAMES,
        "lineage": {
            "dataset_uri": "s3://bucket/datasets/d1",
            "content_hash": "9f2c",
            "code_version": "abc1234",
        },
        "metrics": {"ndcg@3": 0.71, "map": 0.52},
        "parity": {"max_abs_diff": 2.4e-7, "order_agreement": 1.0, "passed": True},
        "fairness": fairness,
        "gate": check_fairness(fairness),
        "drift_reference": drift_reference(X, FEATURE_NAMES, spec_hash="5e1f"),
        "params": {"objective": "rank:ndcg", "max_depth": 4},
        "explanations": {
            "method": "xgboost pred_contribs (TreeSHAP)",
            "catalog_version": "1",
            "reasons": {"PAST_DUE": 0.4, "OPTION": 0.3},
        },
        "created_at": datetime(2025, 3, 1, 12, tzinfo=UTC),
    }
    values.update(extra)
    return governance_record(**values)


def _moves() -> list[dict[str, Any]]:
    """Alias moves as the registry logs them."""
    from attune.governance.gates.decision import GateDecision
    from attune.registry.models import AliasMove

    refused = GateDecision(gate="fairness", passed=False, reasons=["exposure below 0.8"])
    moves = [
        AliasMove(
            alias="shadow",
            version=VERSION,
            previous=None,
            moved_at=datetime(2025, 3, 2, 9, tzinfo=UTC),
            by="ci",
        ),
        AliasMove(
            alias="canary",
            version=VERSION,
            previous="v20250101-000000-000000",
            moved_at=datetime(2025, 3, 3, 9, tzinfo=UTC),
            by="risk-officer",
            justification="Hardship eligibility differs by state; legal review 2025-17.",
            override=True,
            gate=refused,
        ),
    ]
    return [m.model_dump(mode="json") for m in moves]


def test_the_card_has_every_section_a_reviewer_needs() -> None:
    card = render_model_card(_record(_fairness(60)))
    positions = [card.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert card.startswith(f"# Model card — {VERSION}")
    assert "Fairness gate: **PASSED**" in card
    assert "s3://bucket/datasets/d1" in card
    assert "| ndcg@3 | 0.71 |" in card
    assert "PAST_DUE" in card
    assert "Credit decisions" in card
    assert "Not yet promoted to any alias." in card


def test_a_refused_version_shows_its_reasons_and_flags() -> None:
    fairness = _fairness(15)
    record = _record(fairness)
    card = render_model_card(record)
    assert record["fairness"]["passed"] is False
    assert "Fairness gate: **REFUSED**" in card
    assert "Four-fifths rule: **NOT met**" in card
    for reason in check_fairness(fairness).reasons:
        assert f"- refused: {reason}" in card
    assert "below 4/5" in card


def test_group_metrics_carry_intervals() -> None:
    record = _record(_fairness(60))
    ndcg = record["metrics_by_group"]["gender"]["ndcg"]
    lo, hi = ndcg["by_group"]["f"]["ci"]
    assert lo <= ndcg["by_group"]["f"]["value"] <= hi
    card = render_model_card(record)
    assert f"[{lo:.3f}, {hi:.3f}]" in card


def test_alias_history_shows_who_moved_what_and_why() -> None:
    record = _record(_fairness(60))
    card = render_model_card(record, alias_history=_moves())
    assert "Not yet promoted" not in card
    assert "| 2025-03-03 09:00:00 | canary | v20250101-000000-000000 → " in card
    assert "risk-officer | refused, OVERRIDDEN | Hardship eligibility differs" in card
    assert "| 2025-03-02 09:00:00 | shadow | — → " in card
    assert card.index("shadow | —") < card.index("canary | v2025")  # oldest first


def test_the_record_round_trips_through_json_and_keeps_protected_attributes_out() -> None:
    record = _record(_fairness(60), alias_history=_moves())
    again = GovernanceRecord.model_validate(json.loads(json.dumps(record)))
    assert again.model_dump(mode="json") == record
    assert record["protected_attributes"] == ["gender"]
    assert "gender" not in record["features"]
    assert render_model_card(record) == render_model_card(again.model_dump(mode="json"))
    assert record["alias_history"][1]["override"] is True


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"features": (*FEATURE_NAMES, "ethnicity")}, InvalidInput),
        ({"version": ""}, ValidationError),
        ({"alias_history": [{"alias": "canary"}]}, ValidationError),
    ],
    ids=["protected-feature", "empty-version", "incomplete-alias-move"],
)
def test_bad_parts_are_refused(change: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        _record(_fairness(60), **change)


def test_extra_limitations_are_added_to_the_standard_ones() -> None:
    record = _record(_fairness(60), limitations=["Trained on six months of data."])
    assert record["limitations"][-1] == "Trained on six months of data."
    assert len(record["limitations"]) > 1
