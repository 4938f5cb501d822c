"""Online features over real HTTP: snapshot + POST /v1/events == preprocess, value for value.

One app for the module (two ingress replicas on the session's two-node cluster, each
reading and writing the session's real Redis server directly); the parquet snapshot and
the durable event log live on the session's S3 server. The history is simulator data
(200 borrowers x 3 months): its events up to ``T0`` reach the app through a snapshot
(``attune features materialize`` into Redis), the rest through ``POST /v1/events``.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from attune import storage
from attune.data.materialize import (
    ONLINE_EVENTS_DIR,
    MaterializeConfig,
    SnapshotInfo,
    read_snapshot,
)
from attune.data.pipeline import SPLITS, PreprocessConfig, preprocess
from attune.data.reader import read_history
from attune.data.schema import EVENTS, OPTION_IDS
from attune.data.spec import BORROWER_FEATURES, FEATURE_NAMES
from attune.online.events import MAX_EVENTS
from attune.online.snapshot import materialize_online
from attune.serving.config import RolloutConfig
from attune.simulator.generator import GenerateConfig, generate
from tests.conftest import wait_for
from tests.integration.serving_fixtures import (
    HttpResult,
    KeepAlive,
    http,
    model_files,
    ranker_onnx,
    wait_http_ok,
)

pytestmark = pytest.mark.integration

APP = "attune-online"
PREFIX = "/attune-online"
FEATURES = list(BORROWER_FEATURES)
UNKNOWN = 10**12


@dataclass
class Online:
    base: str
    store: str
    history: str
    snapshot: SnapshotInfo
    offline: pd.DataFrame  # preprocess rows, one per presentation
    events: pd.DataFrame  # the history's events
    redis_url: str

    def features(self, borrower_id: int, as_of: pd.Timestamp | None = None) -> HttpResult:
        query = f"?as_of={urllib.parse.quote(as_of.isoformat())}" if as_of is not None else ""
        return http("GET", f"{self.base}/v1/features/{borrower_id}{query}")

    def rank(self, borrower_id: int) -> HttpResult:
        return http("POST", f"{self.base}/v1/rank", rank_body(borrower_id))

    def post(self, events: list[dict[str, Any]]) -> HttpResult:
        return http("POST", f"{self.base}/v1/events", {"events": events})

    def logged_features(self, decision_id: str) -> list[float] | None:
        """The borrower features the decision log recorded for a decision (None: not yet)."""
        import pyarrow.dataset as ds

        root = storage.join(self.store, "decisions")
        if not storage.list_uris(root):
            return None
        fs, path = storage.pyarrow_filesystem(root)
        data = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
        rows = data.to_table(filter=ds.field("decision_id") == decision_id).to_pylist()
        if not rows:
            return None
        first_row = rows[0]["features"][0]
        return [first_row[FEATURE_NAMES.index(n)] for n in FEATURES]


def rank_body(borrower_id: int) -> dict[str, Any]:
    return {
        "borrower_id": borrower_id,
        "context": {"touchpoint": "app"},
        "candidates": [{"option_id": o} for o in OPTION_IDS],
    }


def event_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """History event rows as /v1/events JSON (null amounts and channels as null)."""
    rows = frame[EVENTS.names].astype(object).where(frame[EVENTS.names].notna(), None)
    return [{**r, "ts": r["ts"].isoformat()} for r in rows.to_dict("records")]


def _offline_rows(history: str, out: str) -> pd.DataFrame:
    result = preprocess(history, out, config=PreprocessConfig(buckets=3, partitions=2))
    frames = [
        pq.read_table(uri).to_pandas()
        for split in SPLITS
        for uri in sorted(storage.list_uris(storage.join(result.uri, split)))
        if uri.endswith(".parquet")
    ]
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("qid")
    return rows.sort_values(["ts", "qid"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def online(
    ray_cluster: object, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Online]:
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from attune.registry import Registry
    from attune.serving.app import app_config
    from attune.serving.rollout import deploy, deployed_config
    from tests.conftest import free_port

    work = tmp_path_factory.mktemp("online")
    history = str(work / "history")
    generate(
        GenerateConfig(borrowers=200, months=3, seed=17, out=history, parallel="local"),
        progress=False,
    )
    offline = _offline_rows(history, str(work / "dataset"))
    times = offline["ts"].unique()
    t0 = pd.Timestamp(times[len(times) * 2 // 5])  # a presentation's time
    bucket = f"online-{np.random.default_rng(3).integers(1 << 30):x}"
    storage.s3_client().create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/store"
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    snapshot = materialize_online(
        history,
        store,
        redis_url=redis_server.url,
        config=MaterializeConfig(as_of=t0.to_pydatetime(), buckets=4, partitions=2),
    ).info
    registry = Registry(str(work / "registry"))
    champ = registry.register(model_files(ranker_onnx(seed=1)), metadata={"name": "online"})
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    port = _get_global_client().http_config.port
    args = {
        "registry": registry.uri,
        "store": store,
        "decision_log": {"max_batch": 200, "max_age_s": 0.5},
        "online": {"redis_url": redis_server.url, "events_max_age_s": 0.5},
    }
    ingress = {
        "num_replicas": 2,
        "ray_actor_options": {"num_cpus": 0.5},
        "user_config": RolloutConfig(champion=champ).model_dump(),
    }
    mine = app_config(args, name=APP, route_prefix=PREFIX, ingress=ingress)
    current = deployed_config().model_dump(exclude_unset=True)
    others = [a for a in current.get("applications", []) if a["name"] != APP]
    deploy(ServeDeploySchema.model_validate({**current, "applications": [*others, mine]}))
    base = f"http://127.0.0.1:{port}{PREFIX}"
    wait_http_ok(f"{base}/v1/healthz")
    events = read_history(history, tables=("events",))["events"]
    yield Online(base, store, history, snapshot, offline, events, redis_server.url)
    serve.delete(APP)


@pytest.fixture(scope="module")
def posted(online: Online) -> int:
    """Every history event from the snapshot time on, posted through the app; returns the count."""
    newer = online.events[online.events["ts"] >= pd.Timestamp(online.snapshot.as_of)]
    records = event_records(newer.sample(frac=1.0, random_state=5))  # any order
    applied = 0
    for i in range(0, len(records), MAX_EVENTS):
        result = online.post(records[i : i + MAX_EVENTS])
        assert result.status == 200, result
        assert result.body["duplicates"] == 0 and result.body["unknown_borrowers"] == 0
        applied += result.body["applied"]
    assert applied == len(newer) > 1000
    return applied


def _online_matrix(online: Online, rows: pd.DataFrame) -> np.ndarray:
    def one(row: tuple[int, pd.Timestamp]) -> list[float]:
        result = online.features(row[0], row[1])
        assert result.status == 200 and not result.body["fallback"], result
        return [result.body["features"][n] for n in FEATURES]

    pairs = list(zip(rows["borrower_id"].tolist(), rows["ts"], strict=True))
    with ThreadPoolExecutor(4) as pool:
        return np.asarray(list(pool.map(one, pairs)), dtype=np.float32)


def test_online_features_equal_preprocess_for_the_same_borrowers_and_times(
    online: Online, posted: int
) -> None:
    """Offline (preprocess) vs online (materialize + POST /v1/events), value for value."""
    later = online.offline[online.offline["ts"] >= pd.Timestamp(online.snapshot.as_of)]
    sample = later.sample(n=min(len(later), 200), random_state=0).sort_values("ts")
    assert sample["borrower_id"].nunique() > 50 and (sample["ts"] > sample["ts"].min()).any()
    got = _online_matrix(online, sample)
    np.testing.assert_array_equal(got, sample[FEATURES].to_numpy(dtype=np.float32))
    # the events changed features: the snapshot alone would not have matched
    feats, _ = read_snapshot(online.snapshot)
    frozen = feats.set_index("borrower_id").loc[sample["borrower_id"], FEATURES]
    assert (frozen.to_numpy(dtype=np.float32) != got).any(axis=1).mean() > 0.5


def test_rank_by_borrower_id_uses_the_online_store_and_names_the_snapshot(
    online: Online,
) -> None:
    borrower = int(online.offline["borrower_id"].iloc[0])
    result = online.rank(borrower)
    assert result.status == 200, result
    body = result.body
    assert body["feature_source"] == "online" and body["feature_fallback"] is False
    assert body["feature_snapshot"] == online.snapshot.snapshot_id
    assert len(body["options"]) == len(OPTION_IDS)
    logged = np.asarray(wait_for(lambda: online.logged_features(body["decision_id"]), timeout=60))
    now = online.features(borrower).body
    # the same borrower's online features, a moment apart (balance and term progress drift)
    np.testing.assert_allclose(logged, [now["features"][n] for n in FEATURES], rtol=1e-4)
    defaults = online.features(UNKNOWN).body["features"]
    assert not np.allclose(logged, [defaults[n] for n in FEATURES])


def test_a_posted_payment_changes_the_next_features_once(online: Online) -> None:
    borrower = int(online.offline["borrower_id"].iloc[1])
    before = online.features(borrower).body["features"]
    at = datetime.now(UTC) - timedelta(seconds=2)
    payment = {
        "event_id": f"pay-{borrower}-it",
        "borrower_id": borrower,
        "loan_id": None,
        "ts": at.isoformat(),
        "event_type": "payment_on_time",
        "amount": 250.0,
        "channel": None,
    }
    assert online.post([payment]).body["applied"] == 1
    after = online.features(borrower).body["features"]
    assert after["pay_on_time_30"] == before["pay_on_time_30"] + 1
    assert after["days_since_last_payment"] < 0.01 < before["days_since_last_payment"]
    again = online.post([payment])
    assert (again.body["applied"], again.body["duplicates"]) == (0, 1)
    assert online.features(borrower).body["features"]["pay_on_time_30"] == after["pay_on_time_30"]
    ranked = online.rank(borrower).body  # the next ranking reflects it
    logged = np.asarray(wait_for(lambda: online.logged_features(ranked["decision_id"]), timeout=60))
    assert logged[FEATURES.index("pay_on_time_30")] == after["pay_on_time_30"]


def test_an_unknown_borrower_gets_the_flagged_fallback(online: Online) -> None:
    result = online.rank(UNKNOWN)
    assert result.status == 200, result
    assert result.body["feature_fallback"] is True
    assert result.body["feature_snapshot"] == online.snapshot.snapshot_id
    found = online.features(UNKNOWN).body
    feats, _ = read_snapshot(online.snapshot)
    medians = feats[FEATURES].median()
    assert found["fallback"] is True and found["fallback_reason"] == "unknown_borrower"
    assert found["features"] == {n: float(np.float32(medians[n])) for n in FEATURES}


_GOOD = {"event_id": "m1", "borrower_id": 1, "ts": "2025-03-01T00:00:00Z", "event_type": "login"}


@pytest.mark.parametrize(
    ("case", "body", "raw", "named"),
    [
        (
            "unknown type",
            {"events": [{**_GOOD, "event_type": "login_maybe"}]},
            None,
            "events.0.event_type",
        ),
        (
            "no event id",
            {"events": [{k: v for k, v in _GOOD.items() if k != "event_id"}]},
            None,
            "events.0.event_id",
        ),
        ("naive time", {"events": [{**_GOOD, "ts": "2025-03-01T00:00:00"}]}, None, "events.0.ts"),
        ("unknown channel", {"events": [{**_GOOD, "channel": "fax"}]}, None, "events.0.channel"),
        ("extra field", {"events": [{**_GOOD, "note": "x"}]}, None, "events.0.note"),
        ("id as text", {"events": [{**_GOOD, "borrower_id": "1"}]}, None, "events.0.borrower_id"),
        (
            "NaN amount",
            None,
            b'{"events": [{"event_id": "m1", "borrower_id": 1, "ts": '
            b'"2025-03-01T00:00:00Z", "event_type": "payment_late", "amount": NaN}]}',
            "events.0.amount",
        ),
        ("no events", {"events": []}, None, "events"),
        ("not JSON", None, b"{events: [", "body"),
    ],
)
def test_malformed_events_get_422_naming_the_field(
    online: Online, case: str, body: Any, raw: bytes | None, named: str
) -> None:
    result = http("POST", f"{online.base}/v1/events", body, raw=raw)
    assert result.status == 422, result
    assert named in result.body["message"], result.body


def test_bad_feature_lookups_get_422_naming_the_field(online: Online) -> None:
    bad_id = http("GET", f"{online.base}/v1/features/abc")
    assert bad_id.status == 422 and "borrower_id" in bad_id.body["message"]
    early = pd.Timestamp(online.snapshot.as_of) - timedelta(days=1)
    too_early = online.features(int(online.offline["borrower_id"].iloc[0]), early)
    assert too_early.status == 422 and too_early.body["details"]["field"] == "as_of"


def test_a_newer_snapshot_is_swapped_in_under_load_without_dropping_a_request(
    online: Online, posted: int
) -> None:
    logged = storage.join(online.store, ONLINE_EVENTS_DIR)
    wait_for(lambda: _rows(logged) >= posted, timeout=60, what="the posted events in the store")
    borrowers = online.offline["borrower_id"].unique()[:20].tolist()
    client = KeepAlive(online.base)
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            try:
                answer = client.post("/v1/rank", rank_body(int(borrowers[i % len(borrowers)])))
                results.append((answer.status, answer.body.get("feature_snapshot")))
            except Exception as exc:  # a dropped connection counts as a failure
                results.append((-1, repr(exc)))
            i += 1

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        times = online.offline["ts"].unique()
        t1 = pd.Timestamp(times[len(times) * 4 // 5])
        newer = materialize_online(
            online.history,
            online.store,
            redis_url=online.redis_url,
            config=MaterializeConfig(as_of=t1.to_pydatetime(), buckets=4, partitions=2),
        ).info
        wait_for(
            lambda: any(s == newer.snapshot_id for _, s in results[-5:]),
            timeout=90,
            what="answers from the new snapshot",
        )
        seen = len(results)
        wait_for(lambda: len(results) > seen + 10, timeout=60, what="more answers")
    finally:
        stop.set()
        thread.join(timeout=60)
    statuses = {status for status, _ in results}
    assert statuses == {200}, [r for r in results if r[0] != 200][:5]
    snapshots = [s for _, s in results]
    assert online.snapshot.snapshot_id in snapshots and newer.snapshot_id in snapshots
    # posted events dated after t1 carried over from the durable log: still equal to preprocess
    later = online.offline[online.offline["ts"] >= t1]
    sample = later.sample(n=min(len(later), 60), random_state=1)
    got = _online_matrix(online, sample)
    np.testing.assert_array_equal(got, sample[FEATURES].to_numpy(dtype=np.float32))


def _rows(root: str) -> int:
    """Rows in the parquet files under ``root`` (from their footers)."""
    total = 0
    for uri in storage.list_uris(root):
        if uri.endswith(".parquet") and "/." not in uri:
            fs, path = storage.pyarrow_filesystem(uri)
            total += pq.read_metadata(path, filesystem=fs).num_rows
    return total


def test_replicas_on_both_nodes_see_the_same_state_after_events_posted_to_either(
    online: Online,
) -> None:
    """Two ingress replicas, one Redis: a post to either is seen by both at once."""
    borrower = int(online.offline["borrower_id"].iloc[2])
    start = online.features(borrower).body["features"]["logins_30"]
    posted_by: set[str] = set()
    at = datetime.now(UTC) - timedelta(seconds=5)
    for i in range(40):
        login = {
            "event_id": f"login-{borrower}-{i}",
            "borrower_id": borrower,
            "ts": (at + timedelta(milliseconds=i)).isoformat(),
            "event_type": "login",
        }
        result = online.post([login])
        assert result.status == 200 and result.body["applied"] == 1, result
        posted_by.add(result.body["replica"])
        if len(posted_by) == 2 and i >= 9:
            break
    assert len(posted_by) == 2, "every post reached the same replica"
    answers = [online.features(borrower).body for _ in range(40)]
    assert {a["replica"] for a in answers} == posted_by
    seen = {(a["replica"], a["snapshot_id"], a["features"]["logins_30"]) for a in answers}
    assert {a["features"]["logins_30"] for a in answers} == {start + i + 1}, seen


def test_a_borrower_first_seen_through_events_gets_state_from_them(online: Online) -> None:
    newcomer = UNKNOWN + 7
    now = datetime.now(UTC) - timedelta(seconds=5)
    events = [
        {"event_id": "n-pay", "borrower_id": newcomer, "ts": now.isoformat(),
         "event_type": "payment_on_time", "amount": 120.0},
        {"event_id": "n-login", "borrower_id": newcomer, "ts": now.isoformat(),
         "event_type": "login"},
    ]  # fmt: skip
    result = online.post(events)
    assert (result.body["applied"], result.body["unknown_borrowers"]) == (2, 2), result
    found = online.features(newcomer).body
    assert found["fallback"] is True and found["fallback_reason"] == "no_profile"
    assert found["features"]["pay_on_time_30"] == 1 and found["features"]["logins_30"] == 1
    assert found["features"]["apr"] == -1.0 and found["features"]["balance"] == -1.0
    ranked = online.rank(newcomer).body
    assert ranked["feature_fallback"] is True and ranked["feature_source"] == "online"
