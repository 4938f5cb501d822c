"""The gates a promotion needs, run in one place: :func:`check_promotion`.

Moving ``champion`` or ``canary`` (:data:`GATED_ALIASES`) runs the fairness gate on the
version's ``fairness.json``: :func:`attune.governance.gates.fairness_gate.check_fairness`
with its default bounds, or a :class:`PromotionGate` built by :func:`fairness_gate`
with other bounds. A missing or unreadable report is a refusal like any other (it can
be overridden, and the override is recorded with the reason). The registry calls
:func:`check_promotion` on every gated alias move; ``attune rollout canary`` adds the
off-policy gate (:mod:`attune.governance.gates.ope_gate`) on the served log first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from attune.errors import InvalidInput
from attune.governance.gates.decision import GateDecision

#: Aliases whose moves must pass the promotion gates (``shadow`` answers are only logged).
GATED_ALIASES: frozenset[str] = frozenset({"champion", "canary"})
FAIRNESS_GATE = "fairness"
FAIRNESS_REPORT = "fairness.json"


class PromotionGate(Protocol):
    """Decides from a version's fairness report whether it may take live traffic."""

    def __call__(self, fairness_report: Mapping[str, Any]) -> GateDecision: ...


def fairness_gate(config: Mapping[str, Any] | None = None) -> PromotionGate:
    """The fairness gate with ``config`` bounds (None: its defaults).

    ``config`` is validated here (ConfigError names a bad field).
    """
    from attune.governance.gates.fairness_gate import check_fairness, load_fairness_config

    bounds = load_fairness_config(config)

    def _gate(fairness_report: Mapping[str, Any]) -> GateDecision:
        return check_fairness(fairness_report, bounds)

    return _gate


def check_promotion(
    *, version: str, fairness_report: bytes | None, gate: PromotionGate | None = None
) -> GateDecision:
    """The verdict of the gates a move to a gated alias needs (today: fairness).

    ``fairness_report`` is the version's ``fairness.json`` as stored (None when the
    version has none); ``gate`` defaults to :func:`fairness_gate` with default bounds.
    Never raises for a refusal; raises TypeError when ``gate`` returns something other
    than a :class:`GateDecision`.
    """
    if fairness_report is None:
        return _refused(f"version {version} has no {FAIRNESS_REPORT}")
    report = json.loads(fairness_report)
    gate = gate or fairness_gate()
    try:
        decision = gate(report)
    except InvalidInput as exc:  # an unreadable report is a refusal like any other
        return _refused(f"invalid {FAIRNESS_REPORT}: {exc.message}")
    if not isinstance(decision, GateDecision):
        raise TypeError(f"gate {FAIRNESS_GATE!r} returned {type(decision).__name__}")
    return decision


def _refused(reason: str) -> GateDecision:
    return GateDecision(gate=FAIRNESS_GATE, passed=False, reasons=(reason,))
