"""The promotion-gate hook of alias moves, and the default fairness gate.

Moving ``champion`` or ``canary`` runs a :class:`PromotionGate` on the version's
``fairness.json``. The registry does not judge fairness itself: the default gate is the
governance stage's ``attune.governance.gate.check_promotion(fairness_report, config)``,
loaded lazily when that module is installed. When it is not, there is no gate to pass
and the move is refused unless overridden: a promotion is never silently ungated.

What the registry needs from a gate decision is only ``passed`` (bool; ``allowed`` or
``approved`` are accepted as synonyms) and ``reasons`` (a sequence of strings).
"""

from __future__ import annotations

import importlib
import inspect
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


def default_promotion_gate() -> PromotionGate | None:
    """The governance stage's fairness gate, or None when that module is not installed."""
    try:
        module = importlib.import_module(GOVERNANCE_GATE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == GOVERNANCE_GATE_MODULE:
            return None
        raise
    check = getattr(module, "check_promotion", None)
    if check is None:
        return None
    params = list(inspect.signature(check).parameters.values())
    needs_config = len(params) > 1 and params[1].default is inspect.Parameter.empty
    if not needs_config:
        return check
    config_type = getattr(module, "GateConfig", None)
    config = config_type() if config_type is not None else None

    def _gate(fairness_report: Mapping[str, Any]) -> Any:
        return check(dict(fairness_report), config)

    return _gate
