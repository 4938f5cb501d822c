"""The online feature view without Ray: snapshot + posted events == offline features."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from attune import storage
from attune.data.features import borrower_features
from attune.data.materialize import (
    SNAPSHOT_PARTS,
    SnapshotInfo,
    point_latest,
    snapshot_root,
    snapshot_rows,
)
from attune.data.schema import CHANNELS, EVENT_TYPES, EVENTS, OPTION_IDS
from attune.data.spec import BORROWER_FEATURES, default_spec
from attune.errors import InvalidInput, NotFound, Unavailable
from attune.serving.config import OnlineConfig
from attune.serving.events import (
    MAX_EVENTS,
    Channel,
    EventLog,
    EventsRequest,
    EventType,
    read_logged_events,
)
from attune.serving.online import OnlineClient, Refusal, client_for, require
from attune.serving.online_store import OnlineFeatureStore
from attune.serving.online_view import OnlineLookup, OnlineView
from tests.histories import History, make_history

FEATURES = list(BORROWER_FEATURES)
AS_OF = pd.Timestamp("2024-06-15", tz="UTC")


@pytest.fixture(scope="module")
def history() -> History:
    return make_history(borrowers=30, months=9, seed=21)


def _info(as_of: pd.Timestamp, uri: str = "memory", snapshot_id: str = "s1") -> SnapshotInfo:
    return SnapshotInfo(
        uri=uri,
        snapshot_id=snapshot_id,
        spec_hash=default_spec().hash,
        as_of=as_of.to_pydatetime(),
        borrowers=0,
        events=0,
    )


def _view(h: History, as_of: pd.Timestamp = AS_OF) -> OnlineView:
    feats, kept = snapshot_rows(
        events=h.events, borrowers=h.borrowers, loans=h.loans, as_of=as_of.to_pydatetime()
    )
    return OnlineView(
        _info(as_of), features=feats, events=kept, borrowers=h.borrowers, loans=h.loans
    )


def _matrix(found: list[Any]) -> np.ndarray:
    return np.array([[f.features[n] for n in FEATURES] for f in found], dtype=np.float32)


def _offline(h: History, events: pd.DataFrame, queries: pd.DataFrame) -> np.ndarray:
    want = borrower_features(events, queries, borrowers=h.borrowers, loans=h.loans)
    return want[FEATURES].to_numpy(dtype=np.float32)


def _queries(ids: list[int], times: list[pd.Timestamp]) -> pd.DataFrame:
    return pd.DataFrame([(b, t) for b in ids for t in times], columns=["borrower_id", "ts"])


def test_snapshot_plus_posted_events_equals_offline_features_at_later_times(
    history: History,
) -> None:
    view = _view(history)
    newer = history.events[history.events["ts"] >= AS_OF]
    # posted out of order and in two batches: order must not matter
    half = len(newer) // 2
    assert set(view.apply(newer.iloc[half:].iloc[::-1])) == {"applied"}
    assert set(view.apply(newer.iloc[:half])) == {"applied"}
    ids = sorted(history.borrowers["borrower_id"])
    times = [AS_OF, AS_OF + timedelta(days=9, hours=3), AS_OF + timedelta(days=80)]
    q = _queries(ids, times)
    found = view.lookup(q["borrower_id"].tolist(), [t.to_pydatetime() for t in q["ts"]])
    np.testing.assert_array_equal(_matrix(found), _offline(history, history.events, q))
    assert not any(f.fallback for f in found) and {f.snapshot_id for f in found} == {"s1"}


def test_events_are_idempotent_by_borrower_and_event_id(history: History) -> None:
    view = _view(history)
    newer = history.events[history.events["ts"] >= AS_OF].iloc[:20]
    at = [(AS_OF + timedelta(days=200)).to_pydatetime()]
    bid = int(newer["borrower_id"].iloc[0])
    assert view.apply(newer) == ["applied"] * 20
    before = view.lookup([bid], at)[0].features
    assert view.apply(newer) == ["duplicate"] * 20
    in_snapshot = history.events[history.events["ts"] < AS_OF].iloc[-3:]  # kept verbatim
    assert view.apply(in_snapshot) == ["duplicate"] * 3
    assert view.lookup([bid], at)[0].features == before
    assert sum(len(f) for f in view.posted) == 20  # duplicates are not posted again


def test_unknown_borrowers_get_the_population_medians_flagged(history: History) -> None:
    view = _view(history)
    feats, _ = snapshot_rows(
        events=history.events,
        borrowers=history.borrowers,
        loans=history.loans,
        as_of=AS_OF.to_pydatetime(),
    )
    known = int(history.borrowers["borrower_id"].iloc[0])
    found = view.lookup([known, 999_999, known], [AS_OF.to_pydatetime()] * 3)
    assert [f.fallback for f in found] == [False, True, False]
    medians = feats[FEATURES].median()
    assert found[1].features == {n: float(np.float32(medians[n])) for n in FEATURES}
    assert found[0].features == found[2].features != found[1].features


def test_stale_and_unknown_borrower_events_are_kept_but_not_applied(history: History) -> None:
    view = _view(history)
    bid = int(history.borrowers["borrower_id"].iloc[3])
    event = {
        "borrower_id": bid,
        "loan_id": 1,
        "event_type": "payment_on_time",
        "amount": 50.0,
        "channel": None,
    }
    frame = pd.DataFrame(
        [
            {**event, "event_id": "old", "ts": AS_OF - timedelta(days=400)},
            {**event, "event_id": "x", "ts": AS_OF + timedelta(days=1), "borrower_id": 5},
        ]
    )
    at = [(AS_OF + timedelta(days=2)).to_pydatetime()]
    before = view.lookup([bid], at)[0].features
    assert view.apply(frame) == ["stale", "unknown_borrower"]
    assert view.lookup([bid], at)[0].features == before
    assert view.lookup([5], at)[0].fallback
    assert len(view.posted[0]) == 2  # both go to the store for the next materialization


def _write_snapshot(store: str, h: History, as_of: pd.Timestamp, events: pd.DataFrame) -> str:
    """What ``materialize`` commits, written in-process (unit tests have no Ray)."""
    feats, kept = snapshot_rows(
        events=events, borrowers=h.borrowers, loans=h.loans, as_of=as_of.to_pydatetime()
    )
    snapshot_id = f"{as_of:%Y%m%dT%H%M%SZ}-t"
    root = snapshot_root(store, default_spec().hash)
    uri = storage.join(root, snapshot_id)
    frames = {"features": feats, "events": kept, "borrowers": h.borrowers, "loans": h.loans}
    for part, schema in SNAPSHOT_PARTS.items():
        Path(uri, part).mkdir(parents=True)
        table = pa.Table.from_pandas(
            frames[part][schema.names], schema=schema, preserve_index=False
        )
        pq.write_table(table, str(Path(uri, part, "part-0.parquet")))
    storage.write_json(storage.join(uri, "manifest.json"), {"horizon_days": 180})
    storage.mark_complete(uri)
    info = _info(as_of, uri=uri, snapshot_id=snapshot_id)
    point_latest(root, info)
    return snapshot_id


def _store(tmp_path: Path, now: datetime) -> tuple[OnlineFeatureStore, EventLog]:
    log = EventLog(str(tmp_path), writer_id="t", max_batch=10_000)
    return OnlineFeatureStore(
        str(tmp_path), spec_hash=default_spec().hash, event_log=log, now=lambda: now
    ), log


def _request(frame: pd.DataFrame) -> EventsRequest:
    rows = frame[EVENTS.names].astype(object).where(frame[EVENTS.names].notna(), None)
    records = [
        {k: (v.isoformat() if k == "ts" else v) for k, v in r.items()}
        for r in rows.to_dict("records")
    ]
    return EventsRequest.model_validate({"events": records})


def _post_all(store: OnlineFeatureStore, frame: pd.DataFrame) -> int:
    """Post ``frame`` in requests of at most MAX_EVENTS; returns how many were applied."""
    return sum(
        store.post(_request(frame.iloc[i : i + MAX_EVENTS])).applied
        for i in range(0, len(frame), MAX_EVENTS)
    )


def test_a_newer_snapshot_is_swapped_in_with_the_events_posted_meanwhile(
    tmp_path: Path, history: History
) -> None:
    t1 = AS_OF + timedelta(days=40)
    store, log = _store(tmp_path, now=(t1 + timedelta(days=365)).to_pydatetime())
    with pytest.raises(Unavailable):
        store.post(_request(history.events.iloc[:1]))  # no snapshot yet
    assert store.next_view() is None
    first = _write_snapshot(str(tmp_path), history, AS_OF, history.events)
    store.swap(*store.next_view())  # type: ignore[misc]
    newer = history.events[history.events["ts"] >= AS_OF].sort_values("ts")
    before_t1 = newer[newer["ts"] < t1]
    assert _post_all(store, before_t1) == len(before_t1) and store.snapshot_id == first
    log.flush()
    # the next snapshot reads the logged events; meanwhile more are posted
    logged = read_logged_events(str(tmp_path), since=AS_OF.to_pydatetime())
    assert sorted(logged["event_id"]) == sorted(before_t1["event_id"])
    exported = history.events[history.events["ts"] < AS_OF]  # the history knows only these
    second = _write_snapshot(str(tmp_path), history, t1, pd.concat([exported, logged]))
    found = store.next_view()
    assert found is not None and store.snapshot_id == first
    late = newer[newer["ts"] >= t1]
    store.post(_request(late.iloc[:10]))
    store.swap(*found)
    _post_all(store, late.iloc[10:])
    assert store.snapshot_id == second and store.next_view() is None
    ids = sorted(history.borrowers["borrower_id"])
    q = _queries(ids, [t1 + timedelta(days=3), t1 + timedelta(days=60)])
    got = store.lookup(q["borrower_id"].tolist(), [t.to_pydatetime() for t in q["ts"]])
    np.testing.assert_array_equal(_matrix(got), _offline(history, history.events, q))


def test_a_restarted_view_replays_the_logged_events(tmp_path: Path, history: History) -> None:
    _write_snapshot(str(tmp_path), history, AS_OF, history.events)
    now = (AS_OF + timedelta(days=365)).to_pydatetime()
    store, log = _store(tmp_path, now=now)
    store.swap(*store.next_view())  # type: ignore[misc]
    newer = history.events[history.events["ts"] >= AS_OF]
    _post_all(store, newer)
    log.flush()
    restarted, _ = _store(tmp_path, now=now)
    restarted.swap(*restarted.next_view())  # type: ignore[misc]
    assert restarted.post(_request(newer.iloc[:5])).duplicates == 5
    q = _queries(sorted(history.borrowers["borrower_id"]), [AS_OF + timedelta(days=70)])
    got = restarted.lookup(q["borrower_id"].tolist(), [t.to_pydatetime() for t in q["ts"]])
    np.testing.assert_array_equal(_matrix(got), _offline(history, history.events, q))


def test_a_time_before_the_snapshot_is_refused_in_its_place_only(
    tmp_path: Path, history: History
) -> None:
    _write_snapshot(str(tmp_path), history, AS_OF, history.events)
    store, _ = _store(tmp_path, now=datetime(2030, 1, 1, tzinfo=UTC))
    store.swap(*store.next_view())  # type: ignore[misc]
    bid = int(history.borrowers["borrower_id"].iloc[0])
    early = (AS_OF - timedelta(seconds=1)).to_pydatetime()
    got = store.lookup([bid, bid], [early, AS_OF.to_pydatetime()])
    assert isinstance(got[0], InvalidInput) and got[0].details["field"] == "as_of"
    assert isinstance(got[1], OnlineLookup) and not got[1].fallback


def test_a_snapshot_dated_in_the_future_waits(tmp_path: Path, history: History) -> None:
    _write_snapshot(str(tmp_path), history, AS_OF, history.events)
    store, _ = _store(tmp_path, now=(AS_OF - timedelta(hours=1)).to_pydatetime())
    assert store.next_view() is None
    with pytest.raises(Unavailable):
        store.lookup([1], [AS_OF.to_pydatetime()])


def test_the_event_log_keeps_events_while_the_store_fails_and_refuses_beyond_its_buffer(
    tmp_path: Path, history: History
) -> None:
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's directory should be")
    log = EventLog(str(blocker), writer_id="t", max_batch=2, max_buffer=4)
    rows = history.events.iloc[:3]
    log.reserve(3)
    log.append(rows)
    assert log.due() and log.flush() == 0 and log.buffered == 3 and log.failed_flushes == 1
    with pytest.raises(Unavailable) as err:
        log.reserve(2)
    assert err.value.details["max_buffer"] == 4
    blocker.unlink()
    assert log.flush() == 3 and log.buffered == 0
    written = read_logged_events(str(blocker), since=datetime(2000, 1, 1, tzinfo=UTC))
    assert sorted(written["event_id"]) == sorted(rows["event_id"])


def test_event_literals_equal_the_history_schema() -> None:
    assert get_args(EventType) == EVENT_TYPES and get_args(Channel) == CHANNELS


_EVENT = {
    "event_id": "e1",
    "borrower_id": 7,
    "loan_id": 70,
    "ts": "2025-01-02T03:04:05Z",
    "event_type": "payment_on_time",
    "amount": 12.5,
    "channel": None,
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_type": "payment_maybe"}, ("events", 0, "event_type")),
        ({"ts": "2025-01-02T03:04:05"}, ("events", 0, "ts")),  # no time zone
        ({"event_id": ""}, ("events", 0, "event_id")),
        ({"borrower_id": -1}, ("events", 0, "borrower_id")),
        ({"borrower_id": "7"}, ("events", 0, "borrower_id")),
        ({"channel": "fax"}, ("events", 0, "channel")),
        ({"amount": float("nan")}, ("events", 0, "amount")),
        ({"extra": 1}, ("events", 0, "extra")),
    ],
)
def test_malformed_events_are_refused_naming_the_field(
    change: dict[str, Any], field: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as err:
        EventsRequest.model_validate({"events": [{**_EVENT, **change}]})
    assert err.value.errors()[0]["loc"][: len(field)] == field


def test_an_event_missing_its_id_and_an_empty_list_are_refused() -> None:
    missing = {k: v for k, v in _EVENT.items() if k != "event_id"}
    with pytest.raises(ValidationError) as err:
        EventsRequest.model_validate({"events": [missing]})
    assert err.value.errors()[0]["loc"] == ("events", 0, "event_id")
    with pytest.raises(ValidationError):
        EventsRequest.model_validate({"events": []})


def test_online_config_names_both_bounds() -> None:
    with pytest.raises(ValidationError, match=r"events_max_buffer \(5\).*events_max_batch \(10\)"):
        OnlineConfig(events_max_batch=10, events_max_buffer=5)


class _Method:
    def __init__(self, result: Any) -> None:
        self.result = result

    def remote(self, *args: Any) -> Any:
        async def answer() -> Any:
            if isinstance(self.result, Exception):
                raise self.result
            return self.result

        return answer()


class _Handle:
    def __init__(self, **methods: Any) -> None:
        for name, result in methods.items():
            setattr(self, name, _Method(result))


def _lookup(spec_hash: str) -> OnlineLookup:
    return OnlineLookup(7, datetime(2026, 1, 1, tzinfo=UTC), "s1", spec_hash, False, {})


def test_the_client_raises_refusals_spec_mismatches_and_outages_as_attune_errors() -> None:
    refusal = Refusal.of(InvalidInput("as_of too early", field="as_of", value="x"))
    with pytest.raises(InvalidInput) as err:
        asyncio.run(OnlineClient(_Handle(lookup=refusal)).lookup(7))
    assert err.value.details["field"] == "as_of" and err.value.status_code == 422
    found = asyncio.run(OnlineClient(_Handle(lookup=_lookup("a"))).lookup(7, spec_hash="a"))
    assert found.snapshot_id == "s1"
    with pytest.raises(Unavailable) as mismatch:
        asyncio.run(OnlineClient(_Handle(lookup=_lookup("a"))).lookup(7, spec_hash="b"))
    assert (mismatch.value.details["expected"], mismatch.value.details["actual"]) == ("b", "a")
    with pytest.raises(Unavailable):
        asyncio.run(OnlineClient(_Handle(lookup=RuntimeError("actor died"))).lookup(7))
    fake = object()
    assert client_for(fake) is fake and client_for(None) is None
    with pytest.raises(NotFound):
        require(None)


class _FakeOnline:
    """An online view that answers fixed features (population defaults for borrower 99)."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, str | None]] = []

    async def lookup(self, borrower_id: int, *, spec_hash: str | None = None) -> OnlineLookup:
        from tests.integration.serving_fixtures import borrower_state

        self.asked.append((borrower_id, spec_hash))
        return OnlineLookup(
            borrower_id,
            datetime.now(UTC),
            "s1",
            default_spec().hash,
            borrower_id == 99,
            borrower_state(borrower_id),
        )


@pytest.mark.parametrize("borrower_id", [5, 99])
def test_a_rank_without_features_scores_the_online_features_and_names_the_snapshot(
    borrower_id: int,
) -> None:
    from attune.serving.api import RankRequest
    from attune.serving.config import RolloutConfig
    from attune.serving.decision_log import DecisionLog, MemorySink
    from attune.serving.features import candidate_matrix
    from attune.serving.service import RankingService
    from tests.integration.serving_fixtures import (
        DictStore,
        borrower_state,
        model_files,
        rank_body,
        ranker_onnx,
    )

    online, sink = _FakeOnline(), MemorySink()
    decisions = DecisionLog(sink=sink, writer_id="t")
    service = RankingService(
        store=DictStore({"champ": model_files(ranker_onnx(seed=1))}, {"champion": "champ"}),
        rollout=RolloutConfig(),
        decision_log=decisions,
        borrower_salt="salt",
        online=online,
    )
    body = {**rank_body(borrower_id, features=False), "borrower": None}
    response = asyncio.run(service.rank(RankRequest.model_validate(body)))
    assert online.asked == [(borrower_id, default_spec().hash)]
    assert (response.feature_source, response.feature_snapshot) == ("online", "s1")
    assert response.feature_fallback is (borrower_id == 99)
    decisions.flush()
    (record,) = sink.rows()
    expected = candidate_matrix(
        default_spec(),
        borrower=borrower_state(borrower_id),
        touchpoint="app",
        option_ids=list(OPTION_IDS),
    )
    np.testing.assert_array_equal(np.asarray(record["features"], np.float32), expected)
