"""Serving metrics, by arm and model version, through ``ray.serve.metrics``.

Ray exports them (with the Serve tags ``application``, ``deployment``, ``replica``) to
Prometheus and the Ray dashboard's metrics view. Names are prefixed ``attune_``::

    attune_rank_requests_total{arm, model_version}         answered rankings
    attune_rank_errors_total{arm, model_version}            failed model calls
    attune_rank_latency_ms{arm, model_version}              in-replica latency (histogram)
    attune_rank_top_score{arm, model_version}               sigmoid(top score) per decision
    attune_model_calls_total{role, model_version}           ONNX Runtime calls, shadow included
    attune_shadow_dropped_total                             mirrored requests dropped (queue full)
    attune_decisions_dropped_total                          decision-log records dropped
    attune_guardrail_rollbacks_total{model_version}         canaries rolled back automatically
    attune_canary_share                                     current canary share (0..1)

:class:`ServingMetrics` is the interface the ranking service records through;
:class:`NullMetrics` records nothing (unit tests, which never start Ray).
"""

from __future__ import annotations

import math
from typing import Any, Protocol, cast

_LATENCY_MS_BUCKETS = [0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 1000]
# Ray histograms take positive boundaries only, and ranker scores are unbounded margins
# of either sign: scores are recorded as sigmoid(score), in (0, 1).
_SCORE_BUCKETS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


class ServingMetrics(Protocol):
    """What the ranking service records."""

    def ranked(self, *, arm: str, version: str, latency_ms: float, top_score: float) -> None: ...

    def model_call(self, *, role: str, version: str, ok: bool) -> None: ...

    def shadow_dropped(self) -> None: ...

    def decisions_dropped(self, count: int) -> None: ...

    def rolled_back(self, *, version: str) -> None: ...

    def canary_share(self, share: float) -> None: ...


class NullMetrics:
    """Records nothing."""

    def ranked(self, *, arm: str, version: str, latency_ms: float, top_score: float) -> None:
        pass

    def model_call(self, *, role: str, version: str, ok: bool) -> None:
        pass

    def shadow_dropped(self) -> None:
        pass

    def decisions_dropped(self, count: int) -> None:
        pass

    def rolled_back(self, *, version: str) -> None:
        pass

    def canary_share(self, share: float) -> None:
        pass


class RayServeMetrics:
    """The metrics above as ``ray.serve.metrics`` objects (create inside a replica)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        # Ray annotates tag_keys as tuple[str]; any tuple of names works.
        arm_keys: Any = ("arm", "model_version")
        self._requests = metrics.Counter(
            "attune_rank_requests_total", description="Answered rankings.", tag_keys=arm_keys
        )
        self._errors = metrics.Counter(
            "attune_rank_errors_total", description="Failed model calls.", tag_keys=arm_keys
        )
        self._latency = metrics.Histogram(
            "attune_rank_latency_ms",
            description="In-replica latency of a ranking (ms).",
            boundaries=_LATENCY_MS_BUCKETS,
            tag_keys=arm_keys,
        )
        self._scores = metrics.Histogram(
            "attune_rank_top_score",
            description="sigmoid(top score) of each decision.",
            boundaries=_SCORE_BUCKETS,
            tag_keys=arm_keys,
        )
        self._calls = metrics.Counter(
            "attune_model_calls_total",
            description="ONNX Runtime calls by role (champion, canary, shadow).",
            tag_keys=cast(Any, ("role", "model_version")),
        )
        self._shadow_dropped = metrics.Counter(
            "attune_shadow_dropped_total", description="Mirrored requests dropped (queue full)."
        )
        self._decisions_dropped = metrics.Counter(
            "attune_decisions_dropped_total", description="Decision-log records dropped."
        )
        self._rollbacks = metrics.Counter(
            "attune_guardrail_rollbacks_total",
            description="Canaries rolled back by the guardrails.",
            tag_keys=("model_version",),
        )
        self._canary_share = metrics.Gauge(
            "attune_canary_share", description="Share of borrowers on the canary arm."
        )

    def ranked(self, *, arm: str, version: str, latency_ms: float, top_score: float) -> None:
        tags = {"arm": arm, "model_version": version}
        self._requests.inc(tags=tags)
        self._latency.observe(latency_ms, tags=tags)
        self._scores.observe(_sigmoid(top_score), tags=tags)

    def model_call(self, *, role: str, version: str, ok: bool) -> None:
        self._calls.inc(tags={"role": role, "model_version": version})
        if not ok:
            arm = role if role in ("champion", "canary") else "shadow"
            self._errors.inc(tags={"arm": arm, "model_version": version})

    def shadow_dropped(self) -> None:
        self._shadow_dropped.inc()

    def decisions_dropped(self, count: int) -> None:
        self._decisions_dropped.inc(count)

    def rolled_back(self, *, version: str) -> None:
        self._rollbacks.inc(tags={"model_version": version})

    def canary_share(self, share: float) -> None:
        self._canary_share.set(share)


def _sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x)) if math.isfinite(x) else (1.0 if x > 0 else 0.0)
