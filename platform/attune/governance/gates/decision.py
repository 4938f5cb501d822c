"""The one verdict type of every gate: :class:`GateDecision`, and :class:`GateOverride`.

A gate (fairness, ONNX parity, off-policy, and any later one) returns a
:class:`GateDecision`; it never raises for a refusal, so its caller can record the
verdict, honour a justified override (:meth:`GateDecision.overridden`) or refuse
(:meth:`GateDecision.enforce` raises :class:`attune.errors.GateRefused`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from attune.errors import GateRefused


class GateOverride(BaseModel):
    """A person's decision to promote despite a refusal, with a written justification."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str = Field(min_length=1, description="Who takes responsibility for the override.")
    justification: str = Field(
        min_length=20, description="Why the refusal is acceptable; kept in the alias history."
    )


class GateDecision(BaseModel):
    """A gate's verdict: which gate, whether it passed, why, and who overrode it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gate: str = Field(min_length=1, description="The gate's name, e.g. 'fairness' or 'ope'.")
    passed: bool = Field(description="True when the gate allowed the version (or was overridden).")
    reasons: tuple[str, ...] = Field(default=(), description="Why it refused (or notes).")
    warnings: tuple[str, ...] = Field(default=(), description="Concerns that did not refuse.")
    checked: tuple[str, ...] = Field(default=(), description="What the gate compared.")
    evidence: dict[str, Any] | None = Field(
        default=None, description="The figures behind the verdict (JSON-ready), if any."
    )
    override: GateOverride | None = Field(
        default=None, description="Who passed a refused version anyway, and why."
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``evidence`` and ``override`` only when present."""
        return self.model_dump(mode="json", exclude_none=True)

    def record(self) -> dict[str, Any]:
        """What an alias move stores of the verdict: ``gate``, ``passed``, ``reasons``."""
        return {"gate": self.gate, "passed": self.passed, "reasons": list(self.reasons)}

    def enforce(self, *, version: str) -> None:
        """Raise :class:`attune.errors.GateRefused` for ``version`` unless the gate passed."""
        if not self.passed:
            raise GateRefused(gate=self.gate, version=version, reasons=list(self.reasons))

    def overridden(self, override: GateOverride) -> GateDecision:
        """A passing copy that keeps the refusal's reasons and notes who overrode it and why."""
        note = f"overridden by {override.by}: {override.justification}"
        return self.model_copy(
            update={"passed": True, "warnings": (*self.warnings, note), "override": override}
        )
