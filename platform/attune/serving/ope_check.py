"""The off-policy gate of ``attune rollout canary --ope-decisions … --ope-outcomes …``.

Before a candidate takes canary traffic, both it and the champion re-score the
candidates of recent *exploring* decisions (those logged with propensities, e.g. by a
bandit policy), each as a greedy top-``slate`` ranker, and their values are estimated
off-policy (SNIPS by default) by :func:`attune.experiments.gate.ope_gate_from_log`.
The candidate is refused (:class:`attune.errors.GateRefused`) when the upper bound of
its estimate is below the champion's estimate: the logs already show it is worse.

Outcomes are a parquet table ``decision_id, option_id, reward`` (a shown option with
no row earned 0). With no exploring decision in the log, the gate cannot judge and
says so (the rollout goes on; the online canary and its guardrails decide).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from attune import storage
from attune.data.schema import SLATE_SIZE
from attune.experiments.gate import (
    GateDecision,
    explode_decisions,
    ope_gate_from_log,
    slate_target_probs,
)
from attune.serving.model import OnnxScorer

if TYPE_CHECKING:
    from attune.registry import Registry

_DECISION_COLUMNS = ["decision_id", "role", "candidates", "features", "returned_order"]


@dataclass(frozen=True)
class OpeCheck:
    """The gate's verdict (``None`` when no logged decision could be used) and its inputs."""

    decision: GateDecision | None
    decisions_used: int
    skipped_without_propensities: int


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
    and :class:`attune.experiments.validation.ArgumentError` for malformed logs.
    """
    decisions = _read(decisions_uri, [*_DECISION_COLUMNS, "propensities"])
    outcomes = _read(outcomes_uri, ["decision_id", "option_id", "reward"])
    exploded = explode_decisions(decisions, outcomes, slate_size=SLATE_SIZE)
    if exploded.decisions_used == 0:
        return OpeCheck(None, 0, exploded.skipped_without_propensities)
    scorers = {
        name: OnnxScorer.load(registry, registry.resolve(ref))
        for name, ref in (("candidate", candidate), ("champion", champion))
    }
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
    return OpeCheck(decision, exploded.decisions_used, exploded.skipped_without_propensities)
