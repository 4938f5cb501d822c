"""Redis (the online store) killed under load, then restarted: 503s by id, no lost event.

An app with online features (two ingress replicas reading and writing a ``redis-server``
of this module's own, persistence on) takes five kinds of requests at once, one client
thread each: ranks by borrower id only (features from Redis), ``GET /v1/features``,
ranks whose candidates carry their features, ranks that carry the borrower's state, and
``POST /v1/events`` (logins and on-time payments of known borrowers, dated now, unique
event ids; every fourth post re-sends an earlier batch, as a client retry would).

The server is SIGKILLed mid-load. While it is down, ranks by id and feature look-ups
answer 503 with ``Retry-After`` and "online store unavailable", at once (never a hang,
never another 5xx); requests that carry their features or borrower state keep getting
200; posted events keep getting 200 with ``pending`` > 0 (backlog + durable log). After
``restart()`` (same port and data directory) ranks by id answer 200 again and the
replicas drain their backlogs: every event acknowledged during the whole scenario is in
the borrowers' online features exactly once (``logins_30`` / ``pay_on_time_30`` against
the values before the scenario) and in the durable event log.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPConnection, HTTPException
from typing import Any
from urllib.parse import urlsplit

import pytest

from attune import storage
from attune.data.schema import OPTION_IDS
from tests.conftest import wait_for
from tests.faults.harness import PREFIX, FaultApp, Report
from tests.integration.serving_fixtures import http, rank_body, wait_http_ok

pytestmark = pytest.mark.faults

APP = "attune-redis-outage"
ROUTE = "/redis-outage"
BORROWERS = 200
#: Borrowers the posted events are for (their features are checked at the end).
EVENT_BORROWERS = 30
KINDS = ("rank_id", "features", "rank_features", "rank_borrower", "events")
#: Requests per second of each kind.
RATE = 4.0
#: Client timeout: an answer later than this counts as a hang (status -1).
TIMEOUT_S = 10.0
#: Answers of each kind to see in each phase (up, down, recovered).
PER_PHASE = 20
REPOST_EVERY = 4
COUNTED = {"login": "logins_30", "payment_on_time": "pay_on_time_30"}


@dataclass
class OnlineApp:
    base: str
    store: str
    redis: Any  # attune.online.server.RedisServer
    borrowers: list[int]

    def features(self, borrower_id: int) -> dict[str, float]:
        result = http("GET", f"{self.base}/v1/features/{borrower_id}")
        assert result.status == 200 and not result.body["fallback"], result
        features: dict[str, float] = result.body["features"]
        return features


@pytest.fixture(scope="module")
def online_app(
    fault_app: FaultApp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OnlineApp]:
    """A second app beside the suite's: 2 replicas on this module's own Redis, a snapshot of
    a 200-borrower history materialized into it; registry (the champion) from the suite."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from attune.data.materialize import MaterializeConfig
    from attune.online.snapshot import materialize_online
    from attune.serving.app import app_config
    from attune.serving.config import RolloutConfig
    from attune.serving.rollout import deploy, deployed_config
    from tests.histories import make_history, write_history
    from tests.redisserver import start_redis_server

    work = tmp_path_factory.mktemp("redis-outage")
    history = make_history(borrowers=BORROWERS, months=3, seed=11)
    histories = write_history(history, str(work / "history"))
    bucket = f"redis-outage-{uuid.uuid4().hex[:8]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/store"
    server = start_redis_server(work / "redis")
    try:
        materialize_online(
            histories,
            store,
            redis_url=server.url,
            config=MaterializeConfig(buckets=2, partitions=2),
        )
        args = {
            "registry": fault_app.registry.uri,
            "store": store,
            "decision_log": {"max_batch": 200, "max_age_s": 0.5},
            "online": {"redis_url": server.url, "events_max_age_s": 0.5},
        }
        ingress = {
            "num_replicas": 2,
            "ray_actor_options": {"num_cpus": 0.5},
            "user_config": RolloutConfig(champion=fault_app.versions["champ"]).model_dump(),
        }
        mine = app_config(args, name=APP, route_prefix=ROUTE, ingress=ingress)
        current = deployed_config().model_dump(exclude_unset=True)
        others = [a for a in current.get("applications", []) if a["name"] != APP]
        deploy(ServeDeploySchema.model_validate({**current, "applications": [*others, mine]}))
        base = fault_app.base.removesuffix(PREFIX) + ROUTE
        wait_http_ok(f"{base}/v1/healthz")
        yield OnlineApp(base, store, server, [int(b) for b in history.borrowers["borrower_id"]])
        serve.delete(APP)
    finally:
        server.stop()


# --------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Answer:
    kind: str
    sent: float  # time.monotonic() when sent
    done: float  # ... and when answered (or given up on)
    status: int  # -1: no answer within TIMEOUT_S (or the connection dropped)
    retry_after: str | None
    body: Any


@dataclass
class Traffic:
    """One client thread per kind of request (its own keep-alive connection), paced at
    ``RATE`` each, until stopped. Keeps every answer and every acknowledged event."""

    app: OnlineApp
    seed: int
    answers: list[Answer] = field(default_factory=list)
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)  # event id -> event
    reposts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        for n, kind in enumerate(KINDS):
            thread = threading.Thread(target=self._run, args=(kind, self.seed + n), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT_S * 2)
        assert not any(t.is_alive() for t in self._threads), "a client thread did not stop"

    def seen(self, kind: str, since: float, test: Callable[[Answer], bool] = bool) -> int:
        """Answers of ``kind`` sent at or after ``since`` that pass ``test``."""
        with self._lock:
            return sum(1 for a in self.answers if a.kind == kind and a.sent >= since and test(a))

    def _run(self, kind: str, seed: int) -> None:
        url = urlsplit(self.app.base)
        conn: HTTPConnection | None = None
        rng = random.Random(seed)
        make = {
            "rank_id": self._rank_id,
            "features": self._features,
            "rank_features": self._rank_features,
            "rank_borrower": self._rank_borrower,
            "events": self._events,
        }[kind]
        batches: list[list[dict[str, Any]]] = []
        next_at, i = time.monotonic(), 0
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at, i = max(next_at + 1 / RATE, time.monotonic()), i + 1
            method, path, body = make(rng, i, batches)
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = HTTPConnection(url.hostname, url.port, timeout=TIMEOUT_S)
                payload = None if body is None else json.dumps(body)
                headers = {"Content-Type": "application/json"}
                conn.request(method, url.path + path, payload, headers)
                response = conn.getresponse()
                raw = response.read()
                status, retry_after = response.status, response.getheader("Retry-After")
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = raw.decode(errors="replace")
            except (OSError, HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                status, retry_after, parsed = -1, None, repr(exc)
            answer = Answer(kind, sent, time.monotonic(), status, retry_after, parsed)
            with self._lock:
                self.answers.append(answer)
                if kind == "events" and status == 200:
                    self.acknowledged.update((e["event_id"], e) for e in body["events"])
        if conn is not None:
            conn.close()

    def _borrower(self, rng: random.Random) -> int:
        return rng.choice(self.app.borrowers)

    def _rank_id(self, rng: random.Random, *_: Any) -> tuple[str, str, Any]:
        candidates = [{"option_id": o} for o in OPTION_IDS[:4]]
        body = {"borrower_id": self._borrower(rng), "context": {"touchpoint": "app"},
                "candidates": candidates}  # fmt: skip
        return "POST", "/v1/rank", body

    def _features(self, rng: random.Random, *_: Any) -> tuple[str, str, Any]:
        return "GET", f"/v1/features/{self._borrower(rng)}", None

    def _rank_features(self, rng: random.Random, *_: Any) -> tuple[str, str, Any]:
        return "POST", "/v1/rank", rank_body(self._borrower(rng), n=4, seed=rng.randrange(16))

    def _rank_borrower(self, rng: random.Random, *_: Any) -> tuple[str, str, Any]:
        body = rank_body(self._borrower(rng), features=False, n=4, seed=rng.randrange(16))
        return "POST", "/v1/rank", body

    def _events(self, rng: random.Random, i: int, batches: list[Any]) -> tuple[str, str, Any]:
        """New events for known borrowers, dated now; every REPOST_EVERY-th post a retry."""
        if i % REPOST_EVERY == 0:
            with self._lock:
                self.reposts += 1
            return "POST", "/v1/events", {"events": rng.choice(batches)}
        now = datetime.now(UTC).isoformat()
        batch = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(sorted(COUNTED))
            batch.append(
                {
                    "event_id": f"outage-{self.seed}-{uuid.UUID(int=rng.getrandbits(128)).hex}",
                    "borrower_id": rng.choice(self.app.borrowers[:EVENT_BORROWERS]),
                    "ts": now,
                    "event_type": kind,
                    "amount": 200.0 if kind == "payment_on_time" else None,
                }
            )
        batches.append(batch)
        return "POST", "/v1/events", {"events": batch}


# --------------------------------------------------------------------------- checks


def _unavailable(answer: Answer) -> bool:
    """A 503 of the online store's contract: Retry-After, Unavailable, the message."""
    body = answer.body if isinstance(answer.body, dict) else {}
    return (
        answer.status == 503
        and answer.retry_after is not None
        and body.get("error") == "Unavailable"
        and str(body.get("message", "")).startswith("online store unavailable")
    )


def _counted(app: OnlineApp, borrowers: list[int]) -> dict[int, Counter[str]]:
    """logins_30 / pay_on_time_30 of each borrower, now."""
    out: dict[int, Counter[str]] = {}
    for borrower in borrowers:
        features = app.features(borrower)
        out[borrower] = Counter({k: int(features[name]) for k, name in COUNTED.items()})
    return out


def _statuses(answers: list[Answer]) -> dict[str, int]:
    return dict(sorted(Counter(str(a.status) for a in answers).items()))


def test_a_redis_outage_answers_503_by_id_keeps_other_requests_and_loses_no_event(
    online_app: OnlineApp, fault_report: Report
) -> None:
    from attune.online.events import read_logged_events

    app = online_app
    borrowers = app.borrowers[:EVENT_BORROWERS]
    before = _counted(app, borrowers)
    started = datetime.now(UTC)
    with Traffic(app, seed=21) as traffic:
        t0 = time.monotonic()
        wait_for(
            lambda: all(traffic.seen(k, t0, lambda a: a.status == 200) >= PER_PHASE for k in KINDS),
            timeout=120,
            what="every kind of request answered 200 before the outage",
        )
        killed_at = time.monotonic()
        app.redis.kill()
        down_from = time.monotonic()
        wait_for(
            lambda: all(traffic.seen(k, down_from) >= PER_PHASE for k in KINDS),
            timeout=120,
            what="every kind of request answered while Redis is down",
        )
        down_until = time.monotonic()
        app.redis.restart()
        up_from = time.monotonic()
        wait_for(
            lambda: traffic.seen("rank_id", up_from, lambda a: a.status == 200),
            timeout=120,
            what="a rank by id answered 200 after the restart",
        )
        recovered = time.monotonic()
        wait_for(
            lambda: all(traffic.seen(k, recovered) >= PER_PHASE for k in KINDS),
            timeout=120,
            what="every kind of request answered after the recovery",
        )
    answers = list(traffic.answers)
    acknowledged = dict(traffic.acknowledged)

    def of(kinds: tuple[str, ...], start: float = 0.0, end: float = float("inf")) -> list[Answer]:
        return [a for a in answers if a.kind in kinds and a.sent >= start and a.done <= end]

    by_id = ("rank_id", "features")
    carried = ("rank_features", "rank_borrower")
    posts = of(("events",))
    down = [a for a in answers if a.sent >= down_from and a.done <= down_until]

    # every acknowledged event, once, in the online features (the backlogs drained) ...
    expected = {b: before[b].copy() for b in borrowers}
    for event in acknowledged.values():
        expected[event["borrower_id"]][event["event_type"]] += 1
    observed: dict[int, Counter[str]] = {}

    def applied_or_over() -> bool:
        observed.update(_counted(app, borrowers))
        return all(observed[b] == expected[b] for b in borrowers) or any(
            observed[b] - expected[b] for b in borrowers
        )

    wait_for(applied_or_over, timeout=90, interval=0.5, what="every acknowledged event applied")
    # ... and in the durable log
    logged: set[str] = set()

    def in_log() -> bool:
        frame = read_logged_events(app.store, since=started)
        logged.update(frame["event_id"].tolist())
        return set(acknowledged) <= logged

    wait_for(in_log, timeout=90, interval=1.0, what="every acknowledged event in the durable log")
    lost = sum(((expected[b] - observed[b]).total() for b in borrowers), 0)
    doubled = sum(((observed[b] - expected[b]).total() for b in borrowers), 0)
    fault_report.add(
        "redis-outage",
        injected=f"redis-server SIGKILLed under {len(KINDS)} x {RATE:g} req/s, restarted on "
        "the same port and data dir",
        counted={
            "sent": len(answers),
            "ok": sum(a.status == 200 for a in answers),
            "by_kind": {k: _statuses(of((k,))) for k in KINDS},
            "while_down": {k: _statuses([a for a in down if a.kind == k]) for k in KINDS},
            "redis_down_s": round(down_until - killed_at, 1),
            "event_posts": len(posts),
            "reposts": traffic.reposts,
            "events_acknowledged": len(acknowledged),
            "applied_at_post": sum(a.body["applied"] for a in posts if a.status == 200),
            "pending_at_post": sum(a.body["pending"] for a in posts if a.status == 200),
            "duplicates_at_post": sum(a.body["duplicates"] for a in posts if a.status == 200),
            "applied_after_restart": sum(((observed[b] - before[b]).total() for b in borrowers), 0),
            "lost": lost,
            "double_counted": doubled,
            "in_durable_log": len(set(acknowledged) & logged),
        },
    )
    # never a hang, never a 5xx other than the online store's 503
    assert not [a for a in answers if a.status == -1], "requests not answered in time"
    assert {a.status for a in of((*carried, "events"))} == {200}, {
        k: _statuses(of((k,))) for k in KINDS
    }
    assert all(a.status == 200 or _unavailable(a) for a in of(by_id)), [
        (a.status, a.retry_after, a.body) for a in of(by_id) if a.status != 200
    ][:3]
    sources = {
        k: {a.body["feature_source"] for a in of((k,)) if a.status == 200}
        for k in ("rank_id", *carried)
    }
    assert sources == {
        "rank_id": {"online"},
        "rank_features": {"request"},
        "rank_borrower": {"borrower"},
    }
    # by id: 200 before the kill and after the recovery, only 503s while down
    assert {a.status for a in of(by_id, end=killed_at)} == {200}
    assert {a.status for a in of(by_id, start=recovered)} == {200}
    assert {a.status for a in down if a.kind in by_id} == {503}
    # posts: applied at once while Redis is up, accepted as pending while it is down
    assert all(a.body["pending"] == 0 for a in of(("events",), end=killed_at))
    down_posts = [a for a in down if a.kind == "events"]
    assert down_posts and all(a.body["pending"] > 0 for a in down_posts)
    assert traffic.reposts > 0
    assert lost == 0 and doubled == 0
    assert set(acknowledged) <= logged
