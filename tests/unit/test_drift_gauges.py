"""The ranking app's drift gauges read the newest report of each served version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attune import storage
from attune.monitoring.drift_monitor import latest_report_uri
from attune.serving.drift_gauges import DriftGauges


class _Gauge:
    def __init__(self) -> None:
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values[tuple(sorted(tags.items()))] = value


def test_served_versions_with_a_report_get_psi_max_and_age(tmp_path: Path) -> None:
    gauges: dict[str, Any] = {"psi": _Gauge(), "max": _Gauge(), "age": _Gauge()}
    computed = datetime(2026, 1, 1, tzinfo=UTC)
    report = {
        "computed_at": computed.isoformat(),
        "max_psi": 0.4,
        "features": {"apr": {"psi": 0.4}, "balance": {"psi": 0.01}},
    }
    storage.write_json(latest_report_uri(str(tmp_path), "v1"), report)
    drift = DriftGauges(str(tmp_path), gauges=gauges)
    read = drift.refresh(["v1", "v2"], now=computed + timedelta(minutes=90))
    assert read == 1  # v2 has no report: nothing exported for it
    assert gauges["psi"].values == {
        (("feature", "apr"), ("model_version", "v1")): 0.4,
        (("feature", "balance"), ("model_version", "v1")): 0.01,
    }
    assert gauges["max"].values == {(("model_version", "v1"),): 0.4}
    assert gauges["age"].values == {(("model_version", "v1"),): 5400.0}
