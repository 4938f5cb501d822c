"""A model replica killed under load: Serve replaces it, clients retry what was in flight.

Also the decision log's loss window across an ungraceful replica death: decisions the
killed replica had answered but not yet written are lost, at most ``max_batch`` records
(about ``max_age_s`` seconds of its traffic); everything else is in the log.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from attune import storage
from tests.conftest import wait_for
from tests.faults.harness import APP, FaultApp, Report, request_counts
from tests.integration.serving_fixtures import rank_body

pytestmark = pytest.mark.faults

CONCURRENCY = 2
MAX_BATCH = 100  # the app's decision_log.max_batch (tests/faults/conftest.py)


def test_a_killed_replica_is_replaced_and_only_in_flight_requests_fail(
    fault_app: FaultApp, fault_report: Report
) -> None:
    import ray

    app = fault_app
    app.quiesce()
    storage.delete_prefix(app.decisions_uri)
    app.forget_files()
    before = app.replicas()
    victim = before[0]
    with app.load("replica-kill", rate=20, concurrency=CONCURRENCY, seed=1) as load:
        load.wait_ok(60)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        wait_for(lambda: victim not in app.replicas(), timeout=60, what="the victim to die")
        after = app.wait_replicas(2)
        load.wait_ok(60)
        final = load.stop()
    served = {decision for _, decision, _ in final["decisions"]}
    app.quiesce()
    logged = app.logged_ids()
    lost = served - logged
    unanswered = logged - served  # scored and logged, but the answer died with the replica
    counts = request_counts(final)
    fault_report.add(
        "replica-kill",
        injected=f"ray.kill of 1 of 2 replicas ({victim.rsplit('#', 1)[1]}) at "
        f"{CONCURRENCY} connections, ~20 req/s",
        counted={
            **counts,
            "first_failures_by_status": final["first_failed"],
            "decisions_served": len(served),
            "decisions_logged": len(served & logged),
            "decisions_lost": len(lost),
            "logged_but_unanswered": len(unanswered),
        },
    )
    assert victim not in after and len(after) == 2 and set(after) != set(before)
    assert counts["failed"] == 0, final["failed"]  # one retry always succeeded
    assert counts["failed_first_attempt"] <= CONCURRENCY, final["first_failed"]
    assert counts["ok"] == counts["sent"]
    assert len(lost) <= MAX_BATCH, len(lost)


def test_a_champion_that_cannot_score_answers_503_with_retry_after(
    fault_app: FaultApp, fault_report: Report
) -> None:
    """The other half of the client contract: attune's own 503 says when to retry."""
    from attune.serving.rollout import update_rollout

    app = fault_app
    broken = app.base_rollout.model_copy(update={"champion": app.versions["nan"]})
    update_rollout(APP, lambda _: broken)
    try:
        request = urllib.request.Request(
            f"{app.base}/v1/rank",
            data=json.dumps(rank_body(5, n=3)).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        body = json.loads(err.value.read())
    finally:
        app.reset_rollout()
    fault_report.add(
        "champion-unavailable",
        injected=f"champion {app.versions['nan']} answers NaN scores",
        counted={"status": err.value.code, "retry_after": err.value.headers["Retry-After"]},
    )
    assert err.value.code == 503 and err.value.headers["Retry-After"] == "1"
    assert body["error"] == "Unavailable" and app.versions["nan"] in body["message"]
