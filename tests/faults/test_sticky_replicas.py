"""Canary assignment is sticky across replicas: every replica gives a borrower one arm.

Assignment is a pure function of the rollout salt and the borrower id, so the two
ingress replicas of the shared app must agree without sharing state. Each borrower is
asked several times, in a new (seeded) order each time and on fresh connections, so that
requests spread over both replicas;
which replica answered is read from the decision log (each replica writes its own
files). Every borrower keeps one arm, and borrowers answered by both replicas prove that
the replicas agree.
"""

from __future__ import annotations

import json
import random
import urllib.request
from collections import defaultdict

import pytest

from tests.conftest import wait_for
from tests.faults.harness import APP, FaultApp, Report
from tests.integration.serving_fixtures import rank_body

pytestmark = pytest.mark.faults

BORROWERS = range(50_000, 50_060)
ASKS = 6


def test_every_replica_gives_a_borrower_the_same_arm(
    fault_app: FaultApp, fault_report: Report
) -> None:
    from attune.serving.config import RolloutConfig
    from attune.serving.guardrails import GuardrailBounds
    from attune.serving.rollout import update_rollout
    from attune.serving.traffic_split import salt_fingerprint

    app = fault_app
    assert len(app.wait_replicas(2)) == 2
    rollout = RolloutConfig(
        champion=app.versions["champ"],
        canary=app.versions["cand"],
        canary_percent=40,
        salt="faults-sticky",
        guardrails=GuardrailBounds(enabled=False),
    )
    update_rollout(APP, lambda _: rollout)

    def applied() -> bool:
        stats = app.replica_stats()
        return all(s["salt_fingerprint"] == salt_fingerprint(rollout.salt) for s in stats.values())

    wait_for(applied, timeout=90, what="every replica on the sticky rollout")
    try:
        arms: dict[str, tuple[int, str]] = {}
        for ask in range(ASKS):
            # A new order each pass: with round-robin balancing and a fixed order, each
            # borrower would land on the same replica every time and prove nothing.
            order = list(BORROWERS)
            random.Random(ask).shuffle(order)
            for borrower in order:
                request = urllib.request.Request(
                    f"{app.base}/v1/rank",
                    data=json.dumps(rank_body(borrower, n=3)).encode(),
                    headers={"Content-Type": "application/json", "Connection": "close"},
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                arms[answer["decision_id"]] = (borrower, answer["arm"])
        wait_for(lambda: set(arms) <= app.logged_ids(), timeout=90, what="the decisions in the log")
    finally:
        app.reset_rollout()
    writer_of = {
        decision: uri.rsplit("/", 1)[1].rsplit("-", 2)[0]
        for uri, ids in app._files.items()
        for decision in ids
    }
    by_borrower: dict[int, set[str]] = defaultdict(set)
    replicas_of: dict[int, set[str]] = defaultdict(set)
    for decision, (borrower, arm) in arms.items():
        by_borrower[borrower].add(arm)
        replicas_of[borrower].add(writer_of[decision])
    on_both = [b for b, replicas in replicas_of.items() if len(replicas) == 2]
    canary = sum(arms_ == {"canary"} for arms_ in by_borrower.values())
    fault_report.add(
        "sticky-replicas",
        injected=f"{len(BORROWERS)} borrowers x {ASKS} requests on fresh connections",
        counted={
            "replicas": len({w for ws in replicas_of.values() for w in ws}),
            "borrowers_answered_by_both": len(on_both),
            "borrowers_on_canary": canary,
        },
    )
    assert all(len(a) == 1 for a in by_borrower.values()), by_borrower
    assert len({w for ws in replicas_of.values() for w in ws}) == 2
    assert len(on_both) >= len(BORROWERS) // 4  # the replicas really had to agree
    assert 0 < canary < len(BORROWERS)  # both arms in use
