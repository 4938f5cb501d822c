"""The off-policy gate of ``attune rollout canary``, on the served decision log.

Before a candidate takes canary traffic, both it and the champion re-score the
candidates of the served *exploring* decisions (those logged with propensities: the
app's ``exploration`` knob), each as a greedy top-``slate`` ranker, and their values are
estimated off-policy (SNIPS by default) by
:func:`attune.governance.gates.ope_gate.ope_gate_from_log`. The candidate is refused
(:class:`attune.errors.GateRefused`) when the upper bound of its estimate is below the
champion's estimate: the logs already show it is worse.

Outcomes are either the reward rows of ``attune outcomes`` (one row per decision and
shown position, written only once a decision's attribution window has closed: only
decisions with reward rows are used, so an open window is never scored as zero) or a
plain table ``decision_id, option_id, reward`` (a shown option with no row earned 0).
Decisions logged under another feature spec than the candidate's cannot be re-scored
and are skipped and counted. With no usable decision, the gate cannot judge and says
so (the rollout goes on; the online canary and its guardrails decide).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from attune import storage
from attune.data.schema import SLATE_SIZE
from attune.governance.gates.ope_gate import (
    GateDecision,
    explode_decisions,
    ope_gate_from_log,
    slate_target_probs,
)
from attune.serving.model import OnnxScorer

if TYPE_CHECKING:
    from attune.registry import Registry

_DECISION_COLUMNS = [
    "decision_id",
    "role",
    "candidates",
    "features",
    "returned_order",
    "feature_spec_hash",
]
#: A column only the reward rows of ``attune outcomes`` have.
_REWARD_ROW_COLUMN = "position"


@dataclass(frozen=True)
class OpeCheck:
    """The gate's verdict (``None`` when no logged decision could be used) and its inputs."""

    decision: GateDecision | None
    decisions_used: int
    skipped_without_propensities: int
    estimator: str = "snips"
    skipped_open_window: int = 0
    skipped_other_spec: int = 0

    def to_dict(self) -> dict[str, object]:
        """What ``attune rollout canary`` prints: verdict, estimator and decision counts."""
        return {
            "estimator": self.estimator,
            "decisions_used": self.decisions_used,
            "skipped_without_propensities": self.skipped_without_propensities,
            "skipped_open_window": self.skipped_open_window,
            "skipped_other_spec": self.skipped_other_spec,
            "verdict": None if self.decision is None else _printed(self.decision),
        }


def _printed(decision: GateDecision) -> dict[str, object]:
    """The verdict as ``attune rollout canary`` has always printed it (one ``reason``)."""
    return {"passed": decision.passed, "reason": "; ".join(decision.reasons)} | (
        decision.evidence or {}
    )


def _read(uri: str, columns: list[str] | None = None) -> pd.DataFrame:
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_filesystem(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    return dataset.to_table(columns=columns).to_pandas()


def _greedy(scorer: OnnxScorer, features: np.ndarray, slate: int) -> np.ndarray:
    """``(n_candidates, slate)`` position probabilities of a deterministic top-``slate``."""
    order = np.argsort(-scorer.score(features), kind="stable")[:slate]
    out = np.zeros((features.shape[0], slate))
    out[order, np.arange(len(order))] = 1.0
    return out


def ope_check(
    *,
    registry: Registry,
    candidate: str,
    champion: str,
    decisions_uri: str,
    outcomes_uri: str,
    estimator: str = "snips",
    seed: int = 0,
) -> OpeCheck:
    """Estimate ``candidate`` and ``champion`` on the logged exploring decisions.

    Raises the registry's errors for unknown versions, StoreNotFound for missing logs,
    and :class:`attune.errors.ArgumentError` for malformed logs.
    """
    decisions = _read(decisions_uri, [*_DECISION_COLUMNS, "propensities"])
    outcomes = _read(outcomes_uri)
    decisions = decisions[decisions["role"] == "primary"]
    skipped_open = 0
    if _REWARD_ROW_COLUMN in outcomes.columns:  # reward rows: only closed windows are in
        closed = decisions["decision_id"].isin(set(outcomes["decision_id"]))
        explored = decisions["propensities"].map(lambda p: p is not None and len(p) > 0)
        skipped_open = int((explored & ~closed).sum())
        decisions = decisions[closed | ~explored]
    scorers = {
        name: OnnxScorer.load(registry, registry.resolve(ref))
        for name, ref in (("candidate", candidate), ("champion", champion))
    }
    spec = scorers["candidate"].spec.hash
    same_spec = decisions["feature_spec_hash"] == spec
    skipped_spec = int((~same_spec).sum())
    decisions = decisions[same_spec]
    exploded = explode_decisions(
        decisions, outcomes[["decision_id", "option_id", "reward"]], slate_size=SLATE_SIZE
    )
    if exploded.decisions_used == 0:
        return OpeCheck(
            None,
            0,
            exploded.skipped_without_propensities,
            estimator=estimator,
            skipped_open_window=skipped_open,
            skipped_other_spec=skipped_spec,
        )
    used = decisions[decisions["decision_id"].isin(set(exploded.rows["decision_id"]))]
    targets: dict[str, dict[str, np.ndarray]] = {name: {} for name in scorers}
    for row in used.itertuples(index=False):
        features = np.asarray([np.asarray(f, dtype=np.float32) for f in row.features])
        for name, scorer in scorers.items():
            targets[name][row.decision_id] = _greedy(scorer, features, SLATE_SIZE)
    decision = ope_gate_from_log(
        log=exploded.rows,
        candidate_probs=slate_target_probs(exploded.rows, targets["candidate"]),
        champion_probs=slate_target_probs(exploded.rows, targets["champion"]),
        estimator=estimator,
        seed=seed,
    )
    return OpeCheck(
        decision,
        exploded.decisions_used,
        exploded.skipped_without_propensities,
        estimator=estimator,
        skipped_open_window=skipped_open,
        skipped_other_spec=skipped_spec,
    )
