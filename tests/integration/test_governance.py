"""Governance against real services: drift monitoring on s3:// (moto over HTTP) and in Ray."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attune import storage
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

NAMES = ("days_past_due", "autopay_on", "apr")


def _population(n: int, seed: int, *, shift_apr: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    apr = rng.normal(0.22 if shift_apr else 0.18, 0.04, n)
    return np.column_stack([rng.exponential(10.0, n), rng.uniform(size=n) < 0.3, apr])


def _setup(root: str, *, shift_apr: bool) -> tuple[str, str, str]:
    """A registry with one version and its reference, and a decision log of that version."""
    from attune.governance.drift import drift_reference
    from attune.registry import Registry
    from attune.serving.decision_log import DecisionRecord, ParquetSink, records_to_table

    reference = drift_reference(_population(10_000, seed=0), NAMES, spec_hash="s1")
    registry = Registry(storage.join(root, "registry"))
    version = registry.register(
        {"drift_reference.json": json.dumps(reference).encode()}, metadata={}
    )
    registry.set_alias("shadow", version, by="integration-test")
    served = _population(2_000, seed=1, shift_apr=shift_apr)
    day = datetime(2025, 3, 1, 12, tzinfo=UTC)
    records = [
        DecisionRecord(
            decision_id=f"d{i}",
            ts=day,
            role="primary",
            borrower_hash=f"h{i}",
            arm="champion",
            model_version=version,
            feature_spec_hash="s1",
            touchpoint="app",
            feature_source="online",
            candidates=("pay_now",) * 8,
            features=tuple(tuple(float(v) for v in row) for row in served[i : i + 8]),
            scores=(0.0,) * 8,
            returned_order=("pay_now",) * 8,
            propensities=None,
            latency_ms=1.0,
        )
        for i in range(0, len(served), 8)
    ]
    ParquetSink(root).write(records_to_table(records), date="2025-03-01", name="batch-0")
    return registry.uri, version, storage.join(root, "decisions")


def test_drift_monitor_reads_and_writes_s3(s3_bucket: str) -> None:
    """`attune monitor drift` with registry, decision log and report all on s3://."""
    from attune.cli import main

    registry, version, decisions = _setup(f"{s3_bucket}/store", shift_apr=True)
    out = f"{s3_bucket}/reports/drift-1"
    status = main(
        [
            "monitor",
            "drift",
            "--registry",
            registry,
            "--version",
            "shadow",
            "--decisions",
            decisions,
            "--out",
            out,
            "--fail-on-alert",
        ]
    )
    assert status == 3
    report = storage.read_json(storage.join(out, "drift.json"))
    assert report["version"] == version
    assert report["n_rows"] == 2_000
    assert report["flagged"]["alert"] == ["apr"]
    assert storage.read_bytes(storage.join(out, "drift.png"))[:4] == b"\x89PNG"
    prom = storage.read_bytes(storage.join(out, "drift.prom")).decode()
    assert f'attune_feature_psi{{feature="apr",model_version="{version}"}}' in prom


def _metrics_text() -> str:
    import ray

    texts = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            url = f"http://{node['NodeManagerAddress']}:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                texts.append(response.read().decode())
    return "\n".join(texts)


def test_drift_monitor_in_a_ray_task_exports_ray_gauges(ray_cluster: Any, tmp_path: Path) -> None:
    """Run as a Ray task, the monitor sets its PSI gauges through Ray's metrics agent."""
    import ray

    from attune.monitoring.drift_monitor import drift_config, run_drift_monitor

    registry, version, decisions = _setup(str(tmp_path), shift_apr=False)
    config = drift_config(
        registry=registry, version=version, decisions=decisions, out=str(tmp_path / "report")
    )
    report = ray.get(ray.remote(run_drift_monitor).remote(config), timeout=120)
    assert report["ray_metrics"] is True
    assert report["status"] == "ok"
    assert (tmp_path / "report" / "drift.json").exists()

    def exported() -> bool:
        text = _metrics_text()
        return "attune_feature_psi" in text and version in text

    wait_for(exported, timeout=90, interval=2, what="attune_feature_psi on a Ray metrics endpoint")
