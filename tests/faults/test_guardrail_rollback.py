"""A canary that breaks the guardrails under load is rolled back on its own.

The canary is a regressor whose scores sit around 1,000 (finite, so clients get
answers, but nothing like the champion's): the score-drift guardrail trips in each
replica, the replica closes the canary arm at once and persists the rollback (canary
alias back to the champion, app config redeployed with the canary at 0 %), while the
load generator keeps sending. No request fails, and once the rollback is in the
app's config every answer comes from the champion.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_for
from tests.faults.harness import APP, FaultApp, Report, request_counts

pytestmark = pytest.mark.faults


def test_a_breaching_canary_is_rolled_back_while_load_continues(
    fault_app: FaultApp, fault_report: Report
) -> None:
    from attune.serving.rollout import RolloutRequest, deployed_config, rollout_of, run_step

    app = fault_app
    champ, garbage = app.versions["champ"], app.versions["garbage"]
    step = RolloutRequest(
        step="canary", app=APP, version=garbage, percent=50, override=True,
        justification="fault suite: a canary the guardrails must roll back",
    )  # fmt: skip
    with app.load("guardrail", rate=20, seed=4) as load:
        load.wait_ok(20)
        run_step(step, registry_uri=app.registry.uri)

        def persisted() -> bool:
            current = rollout_of(deployed_config(), APP)
            return current.canary is None and app.registry.aliases().get("canary") == champ

        wait_for(persisted, timeout=120, what="the rollback in the app config and registry")

        def champion_only() -> bool:
            # replicas apply the persisted config through reconfigure, a moment apart
            stats = app.replica_stats()
            return all({m["role"] for m in s["models"]} == {"champion"} for s in stats.values())

        wait_for(champion_only, timeout=60, what="every replica serving only the champion")
        stats = app.replica_stats()
        assert all({m["role"] for m in s["models"]} == {"champion"} for s in stats.values())
        rolled_back_at = time.time()
        load.wait_ok(40)
        final = load.stop()
    app.reset_rollout()
    rollbacks = [r for s in stats.values() for r in s["rollbacks"] if r["version"] == garbage]
    arms_after = {arm for sent_at, _, arm in final["decisions"] if sent_at > rolled_back_at}
    counts = request_counts(final)
    fault_report.add(
        "guardrail-rollback",
        injected=f"canary {garbage} (scores ~1,000) at 50 % under ~20 req/s",
        counted={
            **counts,
            "answered_by_arm": final["arms"],
            "replicas_that_rolled_back": len(rollbacks),
            "reasons": rollbacks[0]["reasons"] if rollbacks else None,
            "arms_after_rollback": sorted(arms_after),
        },
    )
    assert rollbacks and "score drift" in rollbacks[0]["reasons"][0]
    assert final["arms"].get("canary", 0) > 0  # the canary took traffic before it tripped
    assert arms_after == {"champion"}
    assert counts["failed"] == 0 and counts["failed_first_attempt"] == 0, final["first_failed"]
