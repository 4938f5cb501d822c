"""Sliding-window guardrails of a canary (attune.serving.guardrails)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from attune.serving.guardrails import Guardrail, GuardrailBounds


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


BOUNDS = GuardrailBounds(
    window_s=10,
    min_requests=20,
    min_paired=5,
    max_error_rate=0.1,
    max_p99_latency_ms=20,
    max_score_drift=0.5,
)


def _guardrail(bounds: GuardrailBounds = BOUNDS) -> tuple[Guardrail, Clock]:
    clock = Clock()
    return Guardrail(bounds, clock=clock), clock


def test_healthy_canary_is_not_breached() -> None:
    guard, _ = _guardrail()
    for _ in range(100):
        guard.record(ok=True, latency_s=0.002)
    for _ in range(10):
        guard.record_drift(0.1)
    verdict = guard.check()
    assert not verdict.breached and verdict.reasons == ()
    assert verdict.requests == 100 and verdict.paired == 10


def test_error_rate_above_bound_breaches() -> None:
    guard, _ = _guardrail()
    for i in range(40):
        guard.record(ok=i % 4 != 0, latency_s=0.001)  # 25 % errors
    verdict = guard.check()
    assert verdict.breached and verdict.error_rate == pytest.approx(0.25)
    assert "error rate" in verdict.reasons[0]


def test_p99_latency_above_bound_breaches() -> None:
    guard, _ = _guardrail()
    for i in range(100):
        guard.record(ok=True, latency_s=0.1 if i % 10 == 0 else 0.001)
    verdict = guard.check()
    assert verdict.breached and verdict.p99_latency_ms > 20
    assert "p99 latency" in verdict.reasons[0]


@pytest.mark.parametrize("drift", [2.0, float("nan"), float("inf")])
def test_score_drift_above_bound_breaches(drift: float) -> None:
    guard, _ = _guardrail()
    for _ in range(5):
        guard.record_drift(drift)
    verdict = guard.check()
    assert verdict.breached and "score drift" in verdict.reasons[0]


def test_nothing_is_judged_before_the_minimum_number_of_calls() -> None:
    guard, _ = _guardrail()
    for _ in range(19):
        guard.record(ok=False, latency_s=1.0)
    for _ in range(4):
        guard.record_drift(100.0)
    assert not guard.check().breached


def test_old_observations_leave_the_window() -> None:
    guard, clock = _guardrail()
    for _ in range(50):
        guard.record(ok=False, latency_s=0.001)
    clock.now += 11  # older than window_s
    for _ in range(50):
        guard.record(ok=True, latency_s=0.001)
    verdict = guard.check()
    assert verdict.requests == 50 and verdict.error_rate == 0.0 and not verdict.breached


def test_disabled_guardrail_reports_but_does_not_breach() -> None:
    guard, _ = _guardrail(BOUNDS.model_copy(update={"enabled": False}))
    for _ in range(50):
        guard.record(ok=False, latency_s=0.001)
    verdict = guard.check()
    assert not verdict.breached and verdict.reasons


@pytest.mark.parametrize(
    ("field", "value"),
    [("window_s", 0), ("max_error_rate", 1.5), ("min_requests", 0), ("max_score_drift", -1)],
)
def test_invalid_bounds_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as err:
        GuardrailBounds(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_unknown_bound_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_errors"):
        GuardrailBounds(max_errors=0.1)  # type: ignore[call-arg]
