"""The off-policy gate of ``attune rollout canary``: real ONNX models, a real local registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attune.data.schema import OPTION_IDS
from attune.data.spec import FEATURE_NAMES, default_spec
from attune.registry import Registry
from attune.serving.ope_check import ope_check

N = len(FEATURE_NAMES)
_OPT = [FEATURE_NAMES.index(f"opt_{o}") for o in OPTION_IDS]


def _rows() -> np.ndarray:
    X = np.zeros((len(OPTION_IDS), N), dtype=np.float32)
    X[np.arange(len(OPTION_IDS)), _OPT] = 1.0
    return X


def _model_preferring(option: str) -> bytes:
    import xgboost

    from attune.training.export import export_onnx

    X = np.tile(_rows(), (20, 1))
    y = (X[:, FEATURE_NAMES.index(f"opt_{option}")] == 1).astype(float)
    params = {"objective": "reg:squarederror", "max_depth": 2, "nthread": 1, "seed": 0}
    booster = xgboost.train(params, xgboost.DMatrix(X, label=y), num_boost_round=5)
    return export_onnx(booster, n_features=N)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, str, str]:
    reg = Registry(str(tmp_path_factory.mktemp("registry")))
    spec = default_spec().to_json().encode()
    good = reg.register(
        {"model.onnx": _model_preferring("payment_plan"), "feature_spec.json": spec},
        metadata={"name": "good"},
    )
    bad = reg.register(
        {"model.onnx": _model_preferring("reminder_push"), "feature_spec.json": spec},
        metadata={"name": "bad"},
    )
    return reg, good, bad


def _logs(
    root: Path, *, propensities: bool, seed: int = 0, spec_hash: str | None = None
) -> tuple[str, str]:
    """Uniform-random slates (P = 1/8 per position); payment_plan pays off, others rarely."""
    spec_hash = spec_hash or default_spec().hash
    rng = np.random.default_rng(seed)
    decisions, outcomes = [], []
    features = [row.tolist() for row in _rows()]
    for i in range(600):
        order = [OPTION_IDS[j] for j in rng.permutation(len(OPTION_IDS))]
        decisions.append(
            {
                "decision_id": f"d{i}",
                "role": "primary",
                "candidates": list(OPTION_IDS),
                "features": features,
                "returned_order": order,
                "propensities": [1 / 8] * 3 if propensities else None,
                "feature_spec_hash": spec_hash,
            }
        )
        for option in order[:3]:
            p = 0.5 if option == "payment_plan" else 0.05
            outcomes.append(
                {"decision_id": f"d{i}", "option_id": option, "reward": float(rng.random() < p)}
            )
    (root / "decisions").mkdir(parents=True)
    pd.DataFrame(decisions).to_parquet(root / "decisions" / "part-0.parquet")
    pd.DataFrame(outcomes).to_parquet(root / "outcomes.parquet")
    return str(root / "decisions"), str(root / "outcomes.parquet")


def test_candidate_worse_than_champion_is_refused(
    registry: tuple[Registry, str, str], tmp_path: Path
) -> None:
    """A candidate that buries the option that pays off is refused by the logs."""
    reg, good, bad = registry
    decisions, outcomes = _logs(tmp_path, propensities=True)
    check = ope_check(
        registry=reg, candidate=bad, champion=good, decisions_uri=decisions, outcomes_uri=outcomes
    )
    assert check.decision is not None and check.decisions_used == 600
    assert not check.decision.passed
    evidence = check.decision.evidence or {}
    assert evidence["candidate"]["ci_high"] < evidence["champion"]["value"]
    printed = check.to_dict()["verdict"]  # what `attune rollout canary` prints, as before
    assert printed is not None and set(printed) == {"passed", "reason", "candidate", "champion"}
    assert printed["reason"] == check.decision.reasons[0] and printed["passed"] is False


def test_candidate_better_than_champion_passes(
    registry: tuple[Registry, str, str], tmp_path: Path
) -> None:
    """The same logs let a better candidate through."""
    reg, good, bad = registry
    decisions, outcomes = _logs(tmp_path, propensities=True)
    check = ope_check(
        registry=reg, candidate=good, champion=bad, decisions_uri=decisions, outcomes_uri=outcomes
    )
    assert check.decision is not None and check.decision.passed


def test_logs_without_propensities_cannot_judge(
    registry: tuple[Registry, str, str], tmp_path: Path
) -> None:
    """Greedy (non-exploring) decisions carry no propensities: the gate says it cannot judge."""
    reg, good, bad = registry
    decisions, outcomes = _logs(tmp_path, propensities=False)
    check = ope_check(
        registry=reg, candidate=bad, champion=good, decisions_uri=decisions, outcomes_uri=outcomes
    )
    assert check.decision is None
    assert check.skipped_without_propensities == 600


def _as_reward_rows(outcomes: str, keep: int) -> str:
    """The outcomes as ``attune outcomes`` writes them, for the first ``keep`` decisions only
    (the others' attribution windows are still open, so they have no rows yet)."""
    frame = pd.read_parquet(outcomes)
    frame["position"] = frame.groupby("decision_id").cumcount() + 1
    frame = frame[frame["decision_id"].str[1:].astype(int) < keep]
    out = outcomes.replace("outcomes.parquet", "rewards.parquet")
    frame.to_parquet(out)
    return out


def test_reward_rows_use_only_decisions_whose_window_closed(
    registry: tuple[Registry, str, str], tmp_path: Path
) -> None:
    """Decisions without reward rows (window still open) are left out, not scored zero."""
    reg, good, bad = registry
    decisions, outcomes = _logs(tmp_path, propensities=True)
    rewards = _as_reward_rows(outcomes, keep=400)
    check = ope_check(
        registry=reg, candidate=bad, champion=good, decisions_uri=decisions, outcomes_uri=rewards
    )
    assert check.decisions_used == 400 and check.skipped_open_window == 200
    assert check.decision is not None and not check.decision.passed
    assert check.to_dict()["estimator"] == "snips"


def test_decisions_of_another_feature_spec_are_skipped_and_counted(
    registry: tuple[Registry, str, str], tmp_path: Path
) -> None:
    reg, good, bad = registry
    decisions, outcomes = _logs(tmp_path, propensities=True, spec_hash="0" * 64)
    check = ope_check(
        registry=reg, candidate=bad, champion=good, decisions_uri=decisions, outcomes_uri=outcomes
    )
    assert check.decision is None and check.skipped_other_spec == 600
