"""The S3 server stopped under load: models keep serving, storage fails clearly, no loss.

The registry and the decision log both live on the suite's S3 server, which is stopped
while the load generator sends. Requests never touch S3 (models are in memory), so none
fails. A registry call during the outage is retried with back-off by boto3's standard
mode and then fails with StoreUnavailable naming the URI and the attempts (counted here
on the wire); a rollout step fails the same way. The decision log keeps failed batches
buffered and backs off; when the server is back (same port, its buckets recreated and
the registry restored from a copy taken before: moto keeps objects in memory only) the
buffers drain and every decision served after the server went down is in the log.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from attune import storage
from attune.errors import StoreUnavailable
from tests.faults.harness import APP, FaultApp, Report, request_counts

pytestmark = pytest.mark.faults

DROPPED = "attune_decisions_dropped"


def _resolve_counting_attempts(app: FaultApp) -> tuple[StoreUnavailable, list[float]]:
    """``registry.resolve('champion')`` during the outage, with the HTTP attempts it made."""
    attempts: list[float] = []

    def count(**_: Any) -> None:
        attempts.append(time.monotonic())

    events = storage.s3_client().meta.events
    events.register("before-send.s3", count)
    try:
        with pytest.raises(StoreUnavailable) as err:
            app.registry.resolve("champion")
    finally:
        events.unregister("before-send.s3", count)
    return err.value, attempts


def test_an_s3_outage_leaves_serving_untouched_and_storage_fails_clearly(
    fault_app: FaultApp, fault_report: Report
) -> None:
    from attune.serving.rollout import RolloutRequest, run_step
    from attune.settings import get_settings

    app = fault_app
    app.quiesce()
    storage.delete_prefix(app.decisions_uri)
    app.forget_files()
    backup = storage.download_dir(app.registry.uri, app.workdir / "registry-backup")
    baseline = app.metric(DROPPED)
    step = RolloutRequest(
        step="canary", app=APP, version=app.versions["cand"], percent=10, override=True,
        justification="fault suite: during an S3 outage",
    )  # fmt: skip
    with app.load("s3-outage", rate=10, seed=5) as load:
        load.wait_ok(20)
        app.s3_server.stop()
        down_at = time.time()
        error, attempts = _resolve_counting_attempts(app)
        with pytest.raises(StoreUnavailable) as rollout_error:
            run_step(step, registry_uri=app.registry.uri)
        load.wait_ok(30)
        during = app.replica_stats()
        app.s3_server.start()
        for bucket in (app.registry.uri, f"s3://{app.log_bucket}"):
            storage.s3_client().create_bucket(Bucket=storage.split_s3(bucket)[0])
        storage.upload_dir(backup, app.registry.uri)
        load.wait_ok(20)
        final = load.stop()
    app.quiesce()
    served_after_down = {d for sent_at, d, _ in final["decisions"] if sent_at > down_at}
    logged = app.logged_ids()
    dropped = app.metric(DROPPED) - baseline
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(attempts)]
    counts = request_counts(final)
    fault_report.add(
        "s3-outage",
        injected="S3 server stopped under ~10 req/s, restarted on the same port",
        counted={
            **counts,
            "served_by": final["models"],
            "registry_attempts": len(attempts),
            "backoff_gaps_s": gaps,
            "registry_error": error.message[:120],
            "rollout_error": type(rollout_error.value).__name__,
            "buffered_during_outage": sorted(s["decisions_buffered"] for s in during.values()),
            "decisions_served_after_stop": len(served_after_down),
            "of_them_logged": len(served_after_down & logged),
            "decisions_dropped_metric": int(dropped),
        },
    )
    assert counts["failed"] == 0 and counts["failed_first_attempt"] == 0, final["first_failed"]
    assert set(final["models"]) == {app.versions["champ"]}
    assert len(attempts) == get_settings().s3_max_attempts == error.details["attempts"]
    assert app.registry.uri in error.message and "store unavailable after" in error.message
    assert any(s["decisions_buffered"] > 0 for s in during.values())
    assert served_after_down and served_after_down <= logged
    assert dropped == 0
    assert app.registry.resolve("champion") == app.versions["champ"]
