"""The decision-log sink failing under load: serving goes on, nothing is lost silently.

The decision log's bucket is deleted under the running app, so every write fails.
Each replica keeps up to ``max_buffer`` records, then drops new ones and counts them in
``attune_decisions_dropped_total`` (read back from Ray's Prometheus endpoints). When the
bucket is back, the buffers drain: every decision served is either in the log or counted
as dropped, exactly.
"""

from __future__ import annotations

import pytest

from attune import storage
from tests.conftest import wait_for
from tests.faults.harness import FaultApp, Report, request_counts

pytestmark = pytest.mark.faults

MAX_BUFFER = 200  # the app's decision_log.max_buffer (tests/faults/conftest.py)
DROPPED = "attune_decisions_dropped"


def test_a_failing_sink_buffers_to_the_bound_then_counts_every_drop(
    fault_app: FaultApp, fault_report: Report
) -> None:
    app = fault_app
    app.quiesce()
    baseline = app.metric(DROPPED)
    storage.delete_prefix(f"s3://{app.log_bucket}")
    storage.s3_client().delete_bucket(Bucket=app.log_bucket)
    app.forget_files()
    peak: dict[str, int] = {}

    def dropping_everywhere() -> bool:
        stats = app.replica_stats()
        for tag, s in stats.items():
            peak[tag] = max(peak.get(tag, 0), s["decisions_buffered"])
        return all(s["decisions_dropped"] > 0 for s in stats.values())

    with app.load("decision-sink", rate=40, seed=3) as load:
        load.wait_ok(20)
        wait_for(dropping_everywhere, timeout=120, interval=0.5, what="full decision buffers")
        load.wait_ok(40)
        final = load.stop()
    storage.s3_client().create_bucket(Bucket=app.log_bucket)
    app.quiesce()
    served = {decision for _, decision, _ in final["decisions"]}
    logged = app.logged_ids()

    dropped: list[float] = []

    def accounted() -> bool:
        dropped[:] = [app.metric(DROPPED) - baseline]
        return len(logged) + dropped[0] == len(served)

    wait_for(accounted, timeout=60, interval=1, what="decisions logged + dropped == served")
    counts = request_counts(final)
    fault_report.add(
        "decision-sink",
        injected="decision-log bucket deleted under load (~40 req/s), restored after drops",
        counted={
            **counts,
            "decisions_served": len(served),
            "decisions_logged": len(logged),
            "decisions_dropped_metric": int(dropped[0]),
            "peak_buffered_per_replica": sorted(peak.values()),
        },
    )
    assert counts["failed"] == 0 and counts["failed_first_attempt"] == 0, final["first_failed"]
    assert logged <= served and dropped[0] > 0
    assert max(peak.values()) == MAX_BUFFER and all(p <= MAX_BUFFER for p in peak.values())
