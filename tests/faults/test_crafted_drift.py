"""A crafted-feature attack on the score-drift guardrail does not roll back a healthy canary.

The attacker can call ``/v1/rank`` with feature vectors of its choosing. It finds canary
borrowers by asking (the answer names the arm), then sends, for them only, the vector
on which champion and canary disagree most (found by a seeded search over float32
extremes on the two models), so that every crafted canary request has a drift well
over the bound. It also tries numbers beyond float32 (``1e300``, ``"1e300"``), which
would reach the models as ±inf: those are answered 422 and never scored.

Meanwhile the load generator sends ordinary traffic. The crafted requests are a minority
of the canary's paired traffic, enough to push a *mean* drift over the bound (computed
here from the same models), not the median the guardrail judges: the healthy canary
stays in service on every replica, its alias and the app config untouched.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_for
from tests.faults.harness import APP, FaultApp, Report
from tests.integration.serving_fixtures import N_FEATURES, rank_body

pytestmark = pytest.mark.faults

#: The bound this scenario runs under: ordinary requests drift ~0.27 (at most ~0.5)
#: between the two rankers; the crafted vector ~1.5.
MAX_DRIFT = 0.6
#: Crafted canary requests sent, at most this many per ordinary canary request so far
#: (a share of 0.6 / 1.6 = 37.5 %: past what a mean tolerates, short of moving a median).
CRAFTED_TARGET = 80
CRAFTED_RATIO = 0.6
#: The attack gives up after this long (a very slow host), and the test then fails.
ATTACK_S = 150.0


def _post(app: FaultApp, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{app.base}/v1/rank", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _scorer(model: bytes) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def score(X: np.ndarray) -> np.ndarray:
        out = session.run(None, {"features": X.astype(np.float32)})[0]
        return np.asarray(out).reshape(-1)

    return score


def _crafted_row(champion: Any, canary: Any) -> tuple[list[float], float]:
    """The row (of a seeded search) on which the two models disagree most, and by how much."""
    top = float(np.finfo(np.float32).max)
    rng = np.random.default_rng(0)
    X = rng.choice([-top, top, -3.0, -1.0, 0.0, 1.0, 3.0], size=(50_000, N_FEATURES))
    gap = np.abs(champion(X) - canary(X))
    best = int(np.argmax(gap))
    return [float(v) for v in X[best].astype(np.float32)], float(gap[best])


def test_crafted_vectors_on_canary_borrowers_do_not_roll_back_a_healthy_canary(
    fault_app: FaultApp, fault_report: Report
) -> None:
    from attune.serving.config import RolloutConfig
    from attune.serving.guardrails import GuardrailBounds
    from attune.serving.rollout import deployed_config, rollout_of, update_rollout
    from attune.serving.traffic_split import salt_fingerprint

    app = fault_app
    champ, cand = app.versions["champ"], app.versions["cand"]
    champion = _scorer(app.registry.read(champ, "model.onnx"))
    canary = _scorer(app.registry.read(cand, "model.onnx"))
    row, crafted_drift = _crafted_row(champion, canary)
    ordinary = [rank_body(0, n=4, seed=k) for k in range(16)]  # the load generator's bodies
    ordinary_drift = [
        float(np.mean(np.abs(champion(X) - canary(X))))
        for X in (np.asarray([c["features"] for c in b["candidates"]]) for b in ordinary)
    ]
    assert max(ordinary_drift) < MAX_DRIFT < crafted_drift  # the attack is a real one

    rollout = RolloutConfig(
        champion=champ,
        canary=cand,
        canary_percent=50,
        salt="faults-crafted",
        # Only drift is under test: a loaded host must not trip the latency bound.
        guardrails=GuardrailBounds(
            min_requests=20, min_paired=10, window_s=600, max_p99_latency_ms=60_000,
            max_score_drift=MAX_DRIFT,
        ),
    )  # fmt: skip
    aliases_before = app.registry.aliases()
    update_rollout(APP, lambda _: rollout)

    def canary_everywhere() -> bool:
        stats = app.replica_stats()
        return all(
            s["salt_fingerprint"] == salt_fingerprint(rollout.salt)
            and {m["role"] for m in s["models"]} == {"champion", "canary"}
            for s in stats.values()
        )

    wait_for(canary_everywhere, timeout=90, what="every replica serving the canary")
    try:
        with app.load("crafted", rate=20, seed=11) as load:
            load.wait_ok(40)
            # Reconnaissance: the answer names the arm of each probed borrower.
            targets = []
            for borrower in range(10_000, 10_200):
                status, answer = _post(app, rank_body(borrower, n=4))
                if status == 200 and answer["arm"] == "canary":
                    targets.append(borrower)
                if len(targets) == 20:
                    break
            assert len(targets) == 20
            refused = []
            for raw in ("1e300", '"1e300"', "true"):
                body = rank_body(targets[0], n=4)
                body["candidates"][0]["features"][0] = "__X__"
                refused.append(_post(app, json.dumps(body).replace('"__X__"', raw).encode())[0])
            # The attack: crafted canary requests, kept at most CRAFTED_RATIO of the ordinary
            # canary requests answered so far (a minority however fast this host is).
            crafted: dict[str, int] = {}
            deadline = time.monotonic() + ATTACK_S
            i = 0
            while crafted.get("canary", 0) < CRAFTED_TARGET and time.monotonic() < deadline:
                ordinary_now = load.counts().get("arms", {}).get("canary", 0) + len(targets)
                if crafted.get("canary", 0) >= CRAFTED_RATIO * ordinary_now:
                    time.sleep(0.05)
                    continue
                body = rank_body(targets[i % len(targets)], n=4)
                for candidate in body["candidates"]:
                    candidate["features"] = row
                status, answer = _post(app, body)
                key = answer["arm"] if status == 200 else str(status)
                crafted[key] = crafted.get(key, 0) + 1
                i += 1
            load.wait_ok(20)
            final = load.stop()
        stats = app.replica_stats()
        config = rollout_of(deployed_config(), APP)
    finally:
        app.reset_rollout()

    ordinary_canary = final["arms"].get("canary", 0) + len(targets)
    crafted_canary = crafted.get("canary", 0)
    share = crafted_canary / (crafted_canary + ordinary_canary)
    mean_drift = share * crafted_drift + (1 - share) * float(np.mean(ordinary_drift))
    rollbacks = [r for s in stats.values() for r in s["rollbacks"]]
    fault_report.add(
        "crafted-drift",
        injected=f"{crafted_canary} crafted canary requests (drift {crafted_drift:.2f} each, "
        f"{share:.0%} of paired canary traffic) beside {ordinary_canary} ordinary ones; "
        f"1e300/'1e300'/true features",
        counted={
            "crafted_answers": crafted,
            "out_of_range_statuses": refused,
            "mean_drift_would_be": round(mean_drift, 3),
            "bound": MAX_DRIFT,
            "rollbacks": len(rollbacks),
        },
    )
    assert refused == [422, 422, 422]  # never scored: no ±inf reaches a model
    assert crafted_canary == CRAFTED_TARGET and set(crafted) == {"canary"}  # sticky targets
    assert share < 0.5 and mean_drift > MAX_DRIFT  # a mean-based guardrail would have tripped
    assert rollbacks == []
    assert all({m["role"] for m in s["models"]} == {"champion", "canary"} for s in stats.values())
    assert config.canary == cand and config.canary_percent == 50
    assert app.registry.aliases() == aliases_before
    assert sum(final["failed"].values()) == 0
