"""The off-policy-evaluation gate a rollout passes before a candidate reaches canary.

``attune rollout canary`` scores recent logged decisions with the candidate and the
champion, turns each into target probabilities (for a greedy ranker,
``EpsilonGreedyPolicy(EpsilonGreedyConfig(epsilon=0)).position_probabilities``), and
calls :func:`ope_gate_from_log`. The rule (:func:`ope_gate`): refuse the candidate
when the *upper* bound of its estimated value is below the champion's *point*
estimate, i.e. when the logs already show, beyond noise, that it is worse. A
candidate whose interval still reaches the champion goes on to the canary, where the
online experiment decides.

Only decisions logged with propensities (an exploring policy served them) can be
used; :func:`explode_decisions` turns the serving decision log into one row per shown
``(decision, position)`` and says how many decisions it had to skip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attune.errors import ArgumentError
from attune.experiments.ope import ESTIMATORS, PolicyEstimate, estimate_policy_value
from attune.governance.gates.decision import GateDecision

GATE_NAME = "ope"
#: Columns of the per-position rows the gate reads.
LOG_ROW_COLUMNS: tuple[str, ...] = ("decision_id", "position", "action", "propensity", "reward")


def ope_gate(*, candidate_value: PolicyEstimate, champion_value: PolicyEstimate) -> GateDecision:
    """Refuse when ``candidate_value.ci_high < champion_value.value``; pass otherwise."""
    if candidate_value.estimator != champion_value.estimator:
        raise ArgumentError(
            argument="candidate_value",
            value=candidate_value.estimator,
            problem=f"estimator differs from champion_value's {champion_value.estimator!r}",
        )
    passed = candidate_value.ci_high >= champion_value.value
    return GateDecision(
        gate=GATE_NAME,
        passed=passed,
        reasons=(
            f"candidate's {candidate_value.estimator} upper bound "
            f"{candidate_value.ci_high:.4g} {'>=' if passed else '<'} champion's estimate "
            f"{champion_value.value:.4g}",
        ),
        evidence={"candidate": candidate_value.to_dict(), "champion": champion_value.to_dict()},
    )


def ope_gate_from_log(
    *,
    log: pd.DataFrame,
    candidate_probs: np.ndarray,
    champion_probs: np.ndarray,
    estimator: str = "snips",
    estimated_rewards: np.ndarray | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> GateDecision:
    """Estimate candidate and champion on the same logged rows and apply :func:`ope_gate`.

    ``log`` has :data:`LOG_ROW_COLUMNS` (see :func:`explode_decisions`);
    ``candidate_probs`` and ``champion_probs`` are ``(n_rows, n_actions, n_positions)``
    target probabilities aligned with its rows (see :func:`slate_target_probs`).
    ``estimated_rewards`` (same shape) is needed for ``dm``/``dr``/``switch_dr``.
    Raises :class:`ArgumentError` for missing columns, an unknown estimator, or a
    model-based estimator without ``estimated_rewards``.
    """
    missing = [c for c in LOG_ROW_COLUMNS if c not in log.columns]
    if missing:
        raise ArgumentError(argument="log", value=missing, problem="missing columns")
    if estimator not in ESTIMATORS:
        raise ArgumentError(argument="estimator", value=estimator, problem=f"not in {ESTIMATORS}")
    common = {
        "actions": log["action"].to_numpy(),
        "rewards": log["reward"].to_numpy(dtype=np.float64),
        "propensities": log["propensity"].to_numpy(dtype=np.float64),
        "positions": log["position"].to_numpy(),
        "estimated_rewards": estimated_rewards,
        "estimators": (estimator,),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }
    candidate = estimate_policy_value(target_probs=candidate_probs, **common)
    champion = estimate_policy_value(target_probs=champion_probs, **common)
    if estimator not in candidate:
        raise ArgumentError(
            argument="estimated_rewards", value=None, problem=f"{estimator!r} needs a reward model"
        )
    return ope_gate(candidate_value=candidate[estimator], champion_value=champion[estimator])


@dataclass(frozen=True)
class ExplodedLog:
    """Per-position rows of usable decisions, and how many decisions were skipped."""

    rows: pd.DataFrame
    decisions_used: int
    skipped_without_propensities: int
    skipped_short: int


def explode_decisions(
    decisions: pd.DataFrame, outcomes: pd.DataFrame | None = None, *, slate_size: int = 3
) -> ExplodedLog:
    """One row per shown ``(decision, position < slate_size)`` of the serving decision log.

    ``decisions`` has the decision-log columns ``decision_id``, ``candidates``,
    ``returned_order``, ``propensities`` (per returned position) and, when present,
    ``role`` (only ``"primary"`` rows are used). ``outcomes`` has ``decision_id``,
    ``option_id`` and ``reward``; a shown option without an outcome row earned 0.
    Output columns: :data:`LOG_ROW_COLUMNS` plus ``option_id``; ``action`` indexes the
    decision's ``candidates``. Decisions without propensities or with fewer than
    ``slate_size`` candidates are skipped and counted.
    """
    needed = ["decision_id", "candidates", "returned_order", "propensities"]
    missing = [c for c in needed if c not in decisions.columns]
    if missing:
        raise ArgumentError(argument="decisions", value=missing, problem="missing columns")
    frame = decisions
    if "role" in frame.columns:
        frame = frame[frame["role"] == "primary"]
    has_props = frame["propensities"].map(lambda p: p is not None and len(p) > 0)
    short = frame["returned_order"].map(len) < slate_size
    usable = frame[has_props & ~short]
    rewards: Mapping[tuple[str, str], float] = {}
    if outcomes is not None:
        missing = [c for c in ("decision_id", "option_id", "reward") if c not in outcomes.columns]
        if missing:
            raise ArgumentError(argument="outcomes", value=missing, problem="missing columns")
        rewards = outcomes.groupby(["decision_id", "option_id"])["reward"].sum().to_dict()
    records = []
    for row in usable.itertuples(index=False):
        candidates = list(row.candidates)
        for k in range(slate_size):
            option = row.returned_order[k]
            records.append(
                {
                    "decision_id": row.decision_id,
                    "position": k,
                    "action": candidates.index(option),
                    "option_id": option,
                    "propensity": float(row.propensities[k]),
                    "reward": float(rewards.get((row.decision_id, option), 0.0)),
                }
            )
    columns = [*LOG_ROW_COLUMNS, "option_id"]
    return ExplodedLog(
        rows=pd.DataFrame.from_records(records, columns=columns),
        decisions_used=len(usable),
        skipped_without_propensities=int((~has_props).sum()),
        skipped_short=int((has_props & short).sum()),
    )


def slate_target_probs(rows: pd.DataFrame, per_decision: Mapping[str, np.ndarray]) -> np.ndarray:
    """Stack per-decision ``(n_candidates, n_positions)`` marginals into row-aligned targets.

    Returns ``(len(rows), max_candidates, n_positions)``; decisions with fewer
    candidates are padded with probability 0. Raises :class:`ArgumentError` when a
    row's decision has no matrix or the matrices disagree on ``n_positions``.
    """
    ids = rows["decision_id"].tolist()
    missing = sorted({d for d in ids if d not in per_decision})
    if missing:
        raise ArgumentError(argument="per_decision", value=missing[:5], problem="no target probs")
    shapes = {np.shape(per_decision[d]) for d in set(ids)}
    positions = {s[1] for s in shapes if len(s) == 2}
    if len(positions) != 1 or any(len(s) != 2 for s in shapes):
        raise ArgumentError(
            argument="per_decision", value=sorted(shapes), problem="need (n_candidates, P) each"
        )
    width = max(s[0] for s in shapes)
    out = np.zeros((len(ids), width, positions.pop()))
    for i, decision in enumerate(ids):
        matrix = np.asarray(per_decision[decision], dtype=np.float64)
        out[i, : matrix.shape[0]] = matrix
    return out
