"""governance_files: every governance file of a version, from one call by training."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost

from attune.data.spec import FEATURE_NAMES
from attune.governance.gates.fairness_gate import check_fairness
from attune.governance.gates.parity_gate import compare_scores, parity_decision
from attune.governance.version_files import governance_files

OPTIONS = ("payment_plan", "reminder_sms", "pay_now")
N_PRESENTATIONS = 80
POSITION = FEATURE_NAMES.index("position")
PARAMS = {"ranker": {"objective": "rank:ndcg", "max_depth": 3}, "num_boost_round": 5}
PARITY = {"max_abs_diff": 1e-7, "tolerance": 1e-4, "order_agreement": 1.0, "passed": True}
LINEAGE = {"dataset": {"uri": "d1", "rows": 240}, "code_version": "abc"}
METRICS = {
    "test": {"ndcg@3": 0.7},
    "policy_values": {"random": 0.1, "model": 0.3},
    "share_of_oracle_lift": {"random": 0.0, "model": 0.5},
    "lift_over_random": {"random": 0.0, "model": 0.2},
    "validation": {"ndcg@3": 0.69},
    "sweep": {"trials": 2, "scheduler": "asha"},
}


@pytest.fixture(scope="module")
def split() -> types.SimpleNamespace:
    rng = np.random.default_rng(0)
    n = N_PRESENTATIONS * len(OPTIONS)
    X = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    X[:, POSITION] = np.tile([1.0, 2.0, 3.0], N_PRESENTATIONS)
    return types.SimpleNamespace(
        X=X,
        label=rng.integers(0, 4, size=n),
        qid=np.repeat(np.arange(N_PRESENTATIONS), len(OPTIONS)),
        option_id=np.tile(np.asarray(OPTIONS, dtype=object), N_PRESENTATIONS),
        borrower_id=np.repeat(np.arange(N_PRESENTATIONS), len(OPTIONS)),
    )


@pytest.fixture(scope="module")
def booster(split: types.SimpleNamespace) -> xgboost.Booster:
    data = xgboost.DMatrix(split.X, label=split.label, qid=split.qid)
    return xgboost.train({"objective": "rank:ndcg", "max_depth": 3, "seed": 0}, data, 5)


def _files(
    booster: xgboost.Booster, split: types.SimpleNamespace, histories: Path, seen: list[Any]
) -> tuple[dict[str, bytes], dict[str, str]]:
    def score(X: np.ndarray) -> np.ndarray:
        seen.append(X)
        return np.asarray(booster.inplace_predict(X, predict_type="margin"))

    return governance_files(
        booster=booster,
        test=split,
        feature_names=FEATURE_NAMES,
        spec_hash="5e1f",
        served_rows=split.X[:30],
        score=score,
        histories=str(histories),
        name="exp-1",
        params=PARAMS,
        metrics=METRICS,
        parity=PARITY,
        lineage=LINEAGE,
    )


def test_without_a_protected_table_the_basic_card_is_written_and_fairness_skipped(
    booster: xgboost.Booster, split: types.SimpleNamespace, tmp_path: Path
) -> None:
    seen: list[Any] = []
    files, skipped = _files(booster, split, tmp_path, seen)
    assert set(files) == {
        "explanations.json",
        "drift_reference.json",
        "plots/explanations.png",
        "model_card.md",
    }
    assert set(skipped) == {"fairness.json", "governance.json"}
    assert "no protected table" in skipped["fairness.json"] and seen == []
    card = files["model_card.md"].decode()
    assert card.startswith("# Model card: servicing-option ranker")
    assert "| model | 0.3000 | 0.2000 | 50.0% |" in card
    drift = json.loads(files["drift_reference.json"])
    assert drift["n_rows"] == 30 and drift["spec_hash"] == "5e1f"


def test_with_a_protected_table_fairness_is_judged_at_serving_position(
    booster: xgboost.Booster, split: types.SimpleNamespace, tmp_path: Path
) -> None:
    protected = tmp_path / "protected"
    protected.mkdir()
    pd.DataFrame(
        {
            "borrower_id": np.arange(N_PRESENTATIONS),
            "gender": np.where(np.arange(N_PRESENTATIONS) % 2 == 0, "f", "m"),
        }
    ).to_parquet(protected / "part-0.parquet")
    seen: list[Any] = []
    files, skipped = _files(booster, split, tmp_path, seen)
    assert skipped == {}
    assert {"fairness.json", "plots/fairness.png", "governance.json"} <= set(files)
    (scored,) = seen
    assert np.all(scored[:, POSITION] == 1.0) and np.any(split.X[:, POSITION] != 1.0)
    fairness = json.loads(files["fairness.json"])
    # The level the gate judges at (95 % refused fair rankings by noise alone).
    assert (fairness["ci_level"], fairness["n_bootstrap"]) == (0.99, 500)
    record = json.loads(files["governance.json"])
    assert record["version"] == "exp-1"
    assert record["fairness"]["passed"] == check_fairness(fairness).passed
    assert record["fairness"]["reasons"] == list(check_fairness(fairness).reasons)
    assert files["model_card.md"].decode().startswith("# Model card — exp-1")


def test_the_parity_gate_refuses_a_reordered_group() -> None:
    qid = np.array([0, 0, 1, 1])
    native = np.array([1.0, 0.0, 1.0, 0.0])
    same = compare_scores(native, native.copy(), qid, tolerance=1e-4)
    assert parity_decision(same).passed and parity_decision(same).reasons == ()
    swapped = compare_scores(native, np.array([1.0, 0.0, 0.0, 1.0]), qid, tolerance=2.0)
    decision = parity_decision(swapped)
    assert not decision.passed and decision.gate == "parity"
    assert swapped.groups_in_order == 1 and "order agreement 50.0%" in decision.reasons[0]
