"""Drift gauges exported by the ranking app itself, a process that lives to be scraped.

The drift check (``attune monitor drift``, the scheduled ``jobs/drift.py`` RayJob) runs
on a cluster that is gone when Prometheus scrapes. It leaves the newest report of each
version at ``<store>/monitoring/drift/<version>/latest.json``; every ingress replica
re-reads it for the versions it serves (every ``ATTUNE_DRIFT_REFRESH_S``, default 60 s,
off the request path) and sets::

    attune_feature_psi{model_version, feature}        PSI of each feature
    attune_drift_max_psi{model_version}               the largest of them
    attune_drift_report_age_seconds{model_version}    how old the report is (alert on it)

A version without a report exports nothing; a report that cannot be read keeps the
last values and is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from attune import storage
from attune.errors import AttuneError

log = logging.getLogger(__name__)


class DriftGauges:
    """Reads the latest drift reports of served versions into Serve metrics."""

    def __init__(self, store_uri: str, *, gauges: Any = None) -> None:
        self.store_uri = store_uri
        self._gauges = gauges

    def _metrics(self) -> Any:
        if self._gauges is None:
            from ray.serve import metrics

            two: Any = ("model_version", "feature")

            self._gauges = {
                "psi": metrics.Gauge(
                    "attune_feature_psi",
                    description="PSI of a feature, served vs training (latest drift report).",
                    tag_keys=two,
                ),
                "max": metrics.Gauge(
                    "attune_drift_max_psi",
                    description="Largest feature PSI of the latest drift report.",
                    tag_keys=("model_version",),
                ),
                "age": metrics.Gauge(
                    "attune_drift_report_age_seconds",
                    description="Age of the latest drift report of a served version.",
                    tag_keys=("model_version",),
                ),
            }
        return self._gauges

    def refresh(self, versions: Iterable[str], *, now: datetime | None = None) -> int:
        """Set the gauges from each version's latest report; returns how many were read."""
        from attune.monitoring.drift_monitor import latest_report_uri

        gauges = self._metrics()
        now = now or datetime.now(UTC)
        read = 0
        for version in sorted(set(versions)):
            uri = latest_report_uri(self.store_uri, version)
            try:
                if not storage.exists(uri):
                    continue
                report = storage.read_json(uri)
            except AttuneError as exc:
                log.warning("drift report of %s not read: %s", version, exc.message)
                continue
            tags = {"model_version": version}
            for feature, entry in report.get("features", {}).items():
                gauges["psi"].set(float(entry["psi"]), tags={**tags, "feature": feature})
            gauges["max"].set(float(report.get("max_psi", 0.0)), tags=tags)
            computed = datetime.fromisoformat(report["computed_at"])
            gauges["age"].set((now - computed).total_seconds(), tags=tags)
            read += 1
        return read

    async def run(self, versions: Callable[[], Iterable[str]], *, every_s: float = 0) -> None:
        """Refresh forever (an asyncio task of the replica; reads happen in a thread)."""
        from attune.settings import get_settings

        every_s = every_s or get_settings().drift_refresh_s
        while True:
            try:
                await asyncio.to_thread(self.refresh, list(versions()))
            except Exception:  # never let a monitoring read take the replica down
                log.exception("drift gauges not refreshed")
            await asyncio.sleep(every_s)
