"""The promotion-gate hook of alias moves, and the default fairness gate.

Moving ``champion`` or ``canary`` runs a :class:`PromotionGate` on the version's
``fairness.json``. The registry does not judge fairness itself: the default gate is the
governance stage's :func:`attune.governance.gate.check_promotion` with its default
bounds, or with a :class:`~attune.governance.gate.FairnessGateConfig` passed to
:func:`fairness_gate`. When that module cannot be imported there is no gate to pass,
and the move is refused unless overridden: a promotion is never silently ungated.

What the registry reads from a gate's decision is only ``passed`` (bool; ``allowed`` or
``approved`` are accepted as synonyms) and ``reasons`` (a sequence of strings), from an
object, a mapping or a plain bool.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from attune.registry.models import GateOutcome

GOVERNANCE_GATE_MODULE = "attune.governance.gate"
FAIRNESS_GATE = "fairness"


class PromotionGate(Protocol):
    """Decides from a version's fairness report whether it may take live traffic."""

    def __call__(self, fairness_report: Mapping[str, Any]) -> Any: ...


def outcome_of(decision: Any, *, gate: str = FAIRNESS_GATE) -> GateOutcome:
    """Normalize what a gate returned (a decision object, a mapping or a bool)."""
    if isinstance(decision, bool):
        return GateOutcome(gate=gate, passed=decision, reasons=[])
    get: Callable[[str], Any] = (
        decision.get if isinstance(decision, Mapping) else lambda key: getattr(decision, key, None)
    )
    passed = next(
        (get(key) for key in ("passed", "allowed", "approved") if get(key) is not None), None
    )
    if not isinstance(passed, bool):
        raise TypeError(
            f"gate {gate!r} returned {type(decision).__name__} without a boolean 'passed'"
        )
    reasons = get("reasons") or ()
    if isinstance(reasons, str):
        reasons = [reasons]
    return GateOutcome(gate=gate, passed=passed, reasons=[str(r) for r in reasons])


def fairness_gate(config: Mapping[str, Any] | None = None) -> PromotionGate | None:
    """The governance fairness gate with ``config`` bounds (None: its defaults).

    Returns None when the governance gate module is not installed. ``config`` is
    validated by the governance stage (ConfigError names a bad field).
    """
    try:
        module = importlib.import_module(GOVERNANCE_GATE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == GOVERNANCE_GATE_MODULE:
            return None
        raise
    check = module.check_promotion
    if config is None:
        return check
    bounds = module.load_gate_config(config)

    def _gate(fairness_report: Mapping[str, Any]) -> Any:
        return check(fairness_report, bounds)

    return _gate
