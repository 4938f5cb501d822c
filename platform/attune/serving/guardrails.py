"""Guardrails: judge a canary over a sliding window and say when to roll it back.

The ingress records one :class:`Observation` per canary-arm request (did the model
answer with finite scores, how long scoring took) and, for canary requests whose
candidate rows were also scored by the champion after the response (paired traffic),
the score drift ``mean |canary - champion|`` over that request's candidates.
:meth:`Guardrail.check` then compares the window with :class:`GuardrailBounds`:

* error rate  = failed canary calls / canary calls in the window;
* p99 latency = 99th percentile of canary scoring latency in the window;
* score drift = median per-request drift over paired requests in the window. The
  median, not the mean: a caller who can pick canary borrowers and craft their feature
  vectors controls some requests' drift, and one crafted request could move a mean past
  any bound; moving the median takes more than half of the canary's paired traffic.

Nothing is judged before ``min_requests`` canary calls (and ``min_paired`` paired
ones for drift) are in the window, so a canary is never rolled back on a handful of
requests. The window is time-based (``window_s``) and also capped in length, so a
flood of requests cannot grow it without bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_MAX_WINDOW_LEN = 50_000


class GuardrailBounds(BaseModel):
    """Bounds a canary must stay within (a live knob: part of the rollout user_config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Roll a breaching canary back on its own.")
    window_s: float = Field(
        default=60.0, gt=0, le=3600, description="Length of the sliding window in seconds."
    )
    min_requests: int = Field(
        default=50, ge=1, le=100_000, description="Canary calls needed before judging."
    )
    min_paired: int = Field(
        default=20, ge=1, le=100_000, description="Paired calls needed before judging drift."
    )
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Largest tolerated share of failed canary calls."
    )
    max_p99_latency_ms: float = Field(
        default=50.0, gt=0, description="Largest tolerated p99 of canary scoring latency (ms)."
    )
    max_score_drift: float = Field(
        default=1.0,
        gt=0,
        description="Largest tolerated median over paired requests of the request's mean "
        "|canary score - champion score|.",
    )


@dataclass(frozen=True)
class GuardrailVerdict:
    """The outcome of one check: ``breached`` with human-readable ``reasons``."""

    breached: bool
    reasons: tuple[str, ...]
    requests: int
    paired: int
    error_rate: float
    p99_latency_ms: float
    score_drift: float


@dataclass
class _Window:
    times: deque[float] = field(default_factory=lambda: deque(maxlen=_MAX_WINDOW_LEN))
    ok: deque[bool] = field(default_factory=lambda: deque(maxlen=_MAX_WINDOW_LEN))
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_MAX_WINDOW_LEN))
    drift_times: deque[float] = field(default_factory=lambda: deque(maxlen=_MAX_WINDOW_LEN))
    drift: deque[float] = field(default_factory=lambda: deque(maxlen=_MAX_WINDOW_LEN))


class Guardrail:
    """A sliding window of canary outcomes for one canary version (thread-safe).

    The request path records calls; the after-answer thread records paired drift.
    """

    def __init__(
        self, bounds: GuardrailBounds, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bounds = bounds
        self._clock = clock
        self._window = _Window()
        self._lock = threading.Lock()

    def record(self, *, ok: bool, latency_s: float) -> None:
        """Record one canary call: whether it produced finite scores, and its latency."""
        with self._lock:
            w = self._window
            w.times.append(self._clock())
            w.ok.append(ok)
            w.latency_ms.append(latency_s * 1000.0)

    def record_drift(self, drift: float) -> None:
        """Record the paired score drift of one canary request (non-finite counts as huge)."""
        with self._lock:
            self._window.drift_times.append(self._clock())
            self._window.drift.append(drift if math.isfinite(drift) else math.inf)

    def _prune(self, now: float) -> None:
        w, horizon = self._window, now - self.bounds.window_s
        while w.times and w.times[0] < horizon:
            w.times.popleft()
            w.ok.popleft()
            w.latency_ms.popleft()
        while w.drift_times and w.drift_times[0] < horizon:
            w.drift_times.popleft()
            w.drift.popleft()

    def check(self) -> GuardrailVerdict:
        """Compare the current window with the bounds."""
        b = self.bounds
        with self._lock:
            self._prune(self._clock())
            w = self._window
            n, n_paired = len(w.ok), len(w.drift)
            failed = n - sum(w.ok)
            latencies = np.fromiter(w.latency_ms, float, count=n)
            drifts = np.fromiter(w.drift, float, count=n_paired)
        error_rate = failed / n if n else 0.0
        p99 = float(np.percentile(latencies, 99)) if n else 0.0
        drift = float(np.median(drifts)) if n_paired else 0.0
        reasons: list[str] = []
        if n >= b.min_requests:
            if error_rate > b.max_error_rate:
                reasons.append(
                    f"error rate {error_rate:.1%} > max_error_rate {b.max_error_rate:.1%} "
                    f"over {n} canary calls"
                )
            if p99 > b.max_p99_latency_ms:
                reasons.append(
                    f"p99 latency {p99:.1f} ms > max_p99_latency_ms {b.max_p99_latency_ms:g} "
                    f"over {n} canary calls"
                )
        if n_paired >= b.min_paired and drift > b.max_score_drift:
            reasons.append(
                f"score drift {drift:.3g} > max_score_drift {b.max_score_drift:g} "
                f"over {n_paired} paired requests"
            )
        return GuardrailVerdict(
            breached=b.enabled and bool(reasons),
            reasons=tuple(reasons),
            requests=n,
            paired=n_paired,
            error_rate=error_rate,
            p99_latency_ms=p99,
            score_drift=drift,
        )
