"""attune.online without Ray, against a real redis-server: snapshot + events == offline."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
import pytest
import redis
from pydantic import ValidationError

from attune.data.features import MISSING, borrower_features, feature_matrix, option_rows
from attune.data.materialize import snapshot_rows
from attune.data.schema import CHANNELS, EVENT_TYPES, EVENTS, OPTION_IDS, TOUCHPOINTS
from attune.data.spec import BORROWER_FEATURES, default_spec
from attune.errors import Conflict, FeatureSpecMismatch, InvalidInput, Unavailable
from attune.online import state
from attune.online.events import (
    MAX_EVENTS,
    Channel,
    EventLog,
    EventsRequest,
    EventType,
    read_logged_events,
)
from attune.online.ingest import EventIngest
from attune.online.redis_store import (
    OLD_KEYSPACE_TTL_S,
    OnlineLookup,
    RedisOnlineStore,
    SnapshotKeyspace,
    SnapshotMeta,
    micros,
    root_key,
)
from attune.online.server import RedisServer
from attune.online.snapshot import pack_states
from attune.serving.candidate_rows import SERVING_POSITION, candidate_matrix
from attune.serving.config import OnlineConfig
from tests.conftest import wait_for
from tests.histories import History, make_history
from tests.redisserver import start_redis_server

FEATURES = list(BORROWER_FEATURES)
SPEC_HASH = default_spec().hash
ROOT = root_key(SPEC_HASH)
AS_OF = pd.Timestamp("2024-06-15", tz="UTC")
HORIZON_DAYS = 180
PROFILE_FEATURES = ["balance", "apr", "term_progress", "installment_to_income", "income_volatility"]
NEW_BORROWER = 5  # make_history's ids are 107, 114, ...: 5 is in no snapshot
_DAY_US = 86_400_000_000


@pytest.fixture(scope="module")
def history() -> History:
    return make_history(borrowers=30, months=9, seed=21)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """One event loop per test: the store's connection pool lives on it."""
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture
def store(redis_url: str, runner: asyncio.Runner) -> Iterator[RedisOnlineStore]:
    # pointer_ttl_s=0: every call re-reads the pointer, so a switch shows at once
    online = RedisOnlineStore(redis_url, spec_hash=SPEC_HASH, pointer_ttl_s=0.0)
    yield online
    runner.run(online.close())


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as direct:
        yield direct


def _write_states(
    url: str, h: History, *, as_of: pd.Timestamp, snapshot_id: str, events: pd.DataFrame
) -> tuple[int, pd.DataFrame]:
    """Write every borrower's packed state as materialize does; (count, features)."""
    feats, kept = snapshot_rows(
        events=events, borrowers=h.borrowers, loans=h.loans, as_of=as_of.to_pydatetime()
    )
    keyspace = SnapshotKeyspace(url, spec_hash=SPEC_HASH)
    try:
        states = pack_states(
            features=feats,
            events=kept,
            borrowers=h.borrowers,
            loans=h.loans,
            as_of=as_of.to_pydatetime(),
        )
        return keyspace.writer(snapshot_id).write(states), feats
    finally:
        keyspace.close()


def _meta(
    as_of: pd.Timestamp, snapshot_id: str, borrowers: int, defaults: dict[str, float] | None = None
) -> SnapshotMeta:
    return SnapshotMeta(
        snapshot_id=snapshot_id,
        as_of=as_of.to_pydatetime(),
        horizon_days=HORIZON_DAYS,
        borrowers=borrowers,
        defaults=defaults if defaults is not None else dict.fromkeys(FEATURES, 0.0),
    )


def _snapshot(
    url: str,
    h: History,
    *,
    as_of: pd.Timestamp = AS_OF,
    snapshot_id: str = "s1",
    events: pd.DataFrame | None = None,
    defaults: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Begin, write and commit a snapshot of ``events`` (default: the history's); features."""
    keyspace = SnapshotKeyspace(url, spec_hash=SPEC_HASH)
    try:
        keyspace.begin(snapshot_id)
        n, feats = _write_states(
            url,
            h,
            as_of=as_of,
            snapshot_id=snapshot_id,
            events=h.events if events is None else events,
        )
        keyspace.commit(_meta(as_of, snapshot_id, n, defaults))
    finally:
        keyspace.close()
    return feats


def _requests(frame: pd.DataFrame) -> list[EventsRequest]:
    """``frame``'s events as POST /v1/events bodies of at most MAX_EVENTS, in frame order."""
    rows = frame[EVENTS.names].astype(object).where(frame[EVENTS.names].notna(), None)
    records = [
        {k: (v.isoformat() if k == "ts" else v) for k, v in r.items()}
        for r in rows.to_dict("records")
    ]
    return [
        EventsRequest.model_validate({"events": records[i : i + MAX_EVENTS]})
        for i in range(0, len(records), MAX_EVENTS)
    ]


def _post(runner: asyncio.Runner, store: RedisOnlineStore, frame: pd.DataFrame) -> list[str]:
    """Apply ``frame`` request by request; every event's status, in order."""
    statuses: list[str] = []
    for request in _requests(frame):
        got, _ = runner.run(store.apply(request.events))
        statuses += got
    return statuses


def _queries(ids: list[int], times: list[pd.Timestamp]) -> pd.DataFrame:
    return pd.DataFrame([(b, t) for b in ids for t in times], columns=["borrower_id", "ts"])


def _online(runner: asyncio.Runner, store: RedisOnlineStore, q: pd.DataFrame) -> np.ndarray:
    found = [
        runner.run(store.lookup(int(b), as_of=t.to_pydatetime()))
        for b, t in zip(q["borrower_id"], q["ts"], strict=True)
    ]
    return np.stack([f.values for f in found])


def _offline(h: History, events: pd.DataFrame, q: pd.DataFrame) -> np.ndarray:
    want = borrower_features(events, q, borrowers=h.borrowers, loans=h.loans)
    return want[FEATURES].to_numpy(dtype=np.float32)


def _ids(h: History) -> list[int]:
    return sorted(int(b) for b in h.borrowers["borrower_id"])


def _newer(h: History, since: pd.Timestamp = AS_OF) -> pd.DataFrame:
    return h.events[h.events["ts"] >= since].sort_values("ts", kind="stable")


def _keys(client: redis.Redis, pattern: str) -> list[bytes]:
    return sorted(client.scan_iter(match=pattern, count=1000))


def _state(client: redis.Redis, snapshot_id: str, borrower_id: int) -> bytes:
    """A borrower's stored bytes (b"" when there are none)."""
    raw = client.get(f"{ROOT}:{snapshot_id}:b:{borrower_id}")
    assert raw is None or isinstance(raw, bytes)
    return raw or b""


# --------------------------------------------------------------------------- events API


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
        ({}, None),
        ({"channel": "sms", "event_type": "outreach_sent", "amount": None}, None),
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
    change: dict[str, Any], field: tuple[Any, ...] | None
) -> None:
    body = {"events": [{**_EVENT, **change}]}
    if field is None:
        assert EventsRequest.model_validate(body).events[0].event_id == "e1"
        return
    with pytest.raises(ValidationError) as err:
        EventsRequest.model_validate(body)
    assert err.value.errors()[0]["loc"][: len(field)] == field


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"events": [{k: v for k, v in _EVENT.items() if k != "event_id"}]}, ("events", 0)),
        ({"events": []}, ("events",)),
        ({"events": [_EVENT] * (MAX_EVENTS + 1)}, ("events",)),
    ],
)
def test_an_event_missing_its_id_and_an_empty_or_oversized_list_are_refused(
    body: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as err:
        EventsRequest.model_validate(body)
    got = err.value.errors()[0]["loc"]
    assert got[: len(loc)] == loc
    if loc == ("events", 0):
        assert got == ("events", 0, "event_id")


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
    assert (err.value.details["max_buffer"], err.value.details["buffered"]) == (4, 3)
    log.reserve(1)  # exactly full is still accepted
    blocker.unlink()
    assert log.flush() == 3 and log.buffered == 0
    written = read_logged_events(str(blocker), since=datetime(2000, 1, 1, tzinfo=UTC))
    assert sorted(written["event_id"]) == sorted(rows["event_id"])


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"redis_url": "redis://redis.attune:6379/0"},
        {"redis_url": "rediss://user:secret@redis.example:6380/1"},
        {"redis_url": "unix:///var/run/redis.sock"},
        {"spec_hash": "0123abcd"},
        {"spec_hash": "f" * 64},
        {"timeout_s": 30, "max_connections": 1, "pointer_ttl_s": 60},
        {"events_max_batch": 10, "events_max_buffer": 10},
    ],
)
def test_online_config_accepts_valid_settings(settings: dict[str, Any]) -> None:
    config = OnlineConfig(**settings)
    assert config.model_dump(include=set(settings)) == settings


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"redis_url": "http://redis:6379"}, "redis_url"),
        ({"redis_url": "redis.attune:6379"}, "redis_url"),
        ({"spec_hash": "ABCDEF12"}, "spec_hash"),
        ({"spec_hash": "abc1234"}, "spec_hash"),
        ({"spec_hash": "a" * 65}, "spec_hash"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 31}, "timeout_s"),
        ({"max_connections": 0}, "max_connections"),
        ({"pointer_ttl_s": 61}, "pointer_ttl_s"),
        ({"events_max_buffer": 0}, "events_max_buffer"),
        ({"redis": "redis://x"}, "redis"),
    ],
)
def test_online_config_refuses_bad_values_naming_the_field(
    settings: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as err:
        OnlineConfig(**settings)
    assert err.value.errors()[0]["loc"] == (field,)


def test_online_config_bounds_message_names_both_values() -> None:
    with pytest.raises(ValidationError, match=r"events_max_buffer \(5\).*events_max_batch \(10\)"):
        OnlineConfig(events_max_batch=10, events_max_buffer=5)


# --------------------------------------------------------------------------- packed state


def _loans(n: int) -> np.ndarray:
    rows = np.zeros(n, dtype=state.LOAN)
    rows["us"], rows["term"], rows["installment"], rows["apr"] = (
        1_700_000_000_000_000,
        12,
        99.5,
        0.2,
    )
    return rows


def _some_records(n: int) -> bytes:
    codes = state.encode_codes(np.full(n, 1, np.int8), np.full(n, -1, np.int8))
    return state.records(np.arange(n, dtype=np.int64), codes, np.full(n, 1234, np.int64))


def test_a_packed_state_decodes_to_what_was_packed() -> None:
    raw = state.profile(income=4200.5, volatility=0.25, loans=_loans(2)) + _some_records(3)
    got = state.decode(raw)
    assert (got.has_profile, got.income, got.volatility) == (True, 4200.5, 0.25)
    np.testing.assert_array_equal(got.loans, _loans(2))
    assert got.events["cents"].tolist() == [1234] * 3
    assert (got.events["code"] // 4 - 1).tolist() == [EVENT_TYPES.index("payment_on_time")] * 3
    bare = state.decode(state.no_profile() + _some_records(1))
    assert not bare.has_profile and len(bare.loans) == 0 and len(bare.events) == 1


_HEADER = state.HEADER.size


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(state.no_profile()[: _HEADER - 1], id="short-header"),
        pytest.param(state.no_profile() + _some_records(2)[:-1], id="truncated-record"),
        pytest.param(
            state.profile(income=1.0, volatility=0.0, loans=_loans(2))[: _HEADER + 10],
            id="truncated-loans",
        ),
        pytest.param(state.HEADER.pack(state.VERSION + 1, 0, 0, 0, 1.0, 0.0), id="other-version"),
        pytest.param(state.HEADER.pack(0, 0, 0, 0, 1.0, 0.0), id="version-zero"),
    ],
)
def test_decode_refuses_a_value_that_is_not_a_state(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as err:
        state.decode(raw)
    assert err.value.details["field"] == "state"


@pytest.mark.parametrize(("n", "ok"), [(0, True), (255, True), (256, False), (1000, False)])
def test_profile_holds_at_most_255_loans(n: int, ok: bool) -> None:
    if ok:
        assert (
            len(state.decode(state.profile(income=1.0, volatility=0.0, loans=_loans(n))).loans) == n
        )
        return
    with pytest.raises(InvalidInput) as err:
        state.profile(income=1.0, volatility=0.0, loans=_loans(n))
    assert (err.value.details["field"], err.value.details["value"]) == ("loans", n)


@pytest.mark.parametrize(
    ("event_type", "days_old", "kept"),
    [
        ("plan_offered", 0.5, False),  # read by no feature
        ("charge_off", 0.5, False),
        ("payoff", 0.5, False),
        (None, 0.5, False),  # unknown type (code -1)
        ("login", 29, True),
        ("login", 30, True),  # the window [t - 30 d, t) at t = as_of still reads it
        ("login", 31, False),
        ("inbound_contact", 89, True),
        ("inbound_contact", 91, False),
        ("outreach_clicked", 91, False),
        ("payment_missed", 179, True),
        ("payment_missed", 181, False),
        ("hardship_flag", 181, False),
        ("payment_on_time", 2000, True),  # last payment, running sums
        ("installment_due", 2000, True),
        ("outreach_sent", 2000, True),
        ("autopay_off", 2000, True),
        ("login", -3, True),  # after the snapshot time
    ],
)
def test_prune_keeps_exactly_what_some_feature_reads_at_or_after_the_snapshot(
    event_type: str | None, days_old: float, kept: bool
) -> None:
    as_of_us = micros(AS_OF.to_pydatetime())
    code = EVENT_TYPES.index(event_type) if event_type is not None else -1
    us = np.array([as_of_us - round(days_old * _DAY_US)], dtype=np.int64)
    assert state.prune(us, np.array([code], np.int8), as_of_us=as_of_us).tolist() == [kept]


# --------------------------------------------------------------------------- real Redis


def test_snapshot_plus_events_posted_out_of_order_equals_offline_features_bit_for_bit(
    redis_url: str, store: RedisOnlineStore, runner: asyncio.Runner, history: History
) -> None:
    _snapshot(redis_url, history)
    newer = _newer(history)
    shuffled = newer.sample(frac=1.0, random_state=0)  # out of order, across requests
    assert len(_requests(shuffled)) > 1
    assert _post(runner, store, shuffled) == ["applied"] * len(newer)
    times = [AS_OF, AS_OF + timedelta(days=9, hours=3), AS_OF + timedelta(days=80)]
    times.append(newer["ts"].max() + timedelta(days=30))
    q = _queries(_ids(history), times)
    got = _online(runner, store, q)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _offline(history, history.events, q))
    found = runner.run(store.lookup(_ids(history)[0], as_of=times[1].to_pydatetime()))
    assert (found.fallback, found.snapshot_id, found.spec_hash) == (None, "s1", SPEC_HASH)


def test_the_stored_state_drops_unread_event_types_and_logins_older_than_their_window(
    redis_url: str, client: redis.Redis, history: History
) -> None:
    _snapshot(redis_url, history)
    _, kept = snapshot_rows(
        events=history.events,
        borrowers=history.borrowers,
        loans=history.loans,
        as_of=AS_OF.to_pydatetime(),
    )
    login_from = AS_OF - timedelta(days=30)
    old_logins = kept[(kept["event_type"] == "login") & (kept["ts"] < login_from)]
    # the compacted events the snapshot starts from hold both kinds
    assert (kept["event_type"] == "plan_offered").any() and len(old_logins) > 0
    stored = [state.decode(_state(client, "s1", int(b))) for b in _ids(history)]
    assert len(_keys(client, f"{ROOT}:s1:b:*")) == len(stored) == len(history.borrowers)
    records = np.concatenate([s.events for s in stored])
    types = records["code"] // 4 - 1
    assert EVENT_TYPES.index("plan_offered") not in types.tolist()
    login_us = records["us"][types == EVENT_TYPES.index("login")]
    assert len(login_us) > 0 and login_us.min() >= micros(login_from.to_pydatetime())
    assert len(records) < len(kept)


def test_reposting_the_same_events_reports_duplicates_and_changes_no_feature(
    redis_url: str,
    store: RedisOnlineStore,
    runner: asyncio.Runner,
    client: redis.Redis,
    history: History,
) -> None:
    _snapshot(redis_url, history)
    posted = _newer(history).iloc[:40]
    assert _post(runner, store, posted) == ["applied"] * 40
    ids = sorted(set(posted["borrower_id"].tolist()))
    q = _queries(ids, [AS_OF + timedelta(days=200)])
    before = _online(runner, store, q)
    raw = [_state(client, "s1", b) for b in ids]
    assert _post(runner, store, posted.iloc[::-1]) == ["duplicate"] * 40
    np.testing.assert_array_equal(_online(runner, store, q), before)
    assert [_state(client, "s1", b) for b in ids] == raw


def test_reposting_logged_events_the_snapshot_holds_is_a_duplicate(
    redis_url: str, store: RedisOnlineStore, runner: asyncio.Runner, history: History
) -> None:
    """Materialize remembers the ids of posted events it folded into the snapshot (the
    durable log's last days), so a client's retry of one changes nothing."""
    _snapshot(redis_url, history)
    in_snapshot = history.events[history.events["ts"] < AS_OF].iloc[-20:]
    keyspace = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
    try:
        ids = in_snapshot["borrower_id"].tolist()
        pairs = zip(ids, in_snapshot["event_id"].tolist(), strict=True)
        meta = keyspace.current()
        assert meta is not None
        assert keyspace.remember(meta, pairs) == len(in_snapshot)
    finally:
        keyspace.close()
    q = _queries(sorted(set(in_snapshot["borrower_id"].tolist())), [AS_OF + timedelta(days=1)])
    before = _online(runner, store, q)
    assert set(_post(runner, store, in_snapshot)) == {"duplicate"}
    np.testing.assert_array_equal(_online(runner, store, q), before)


def test_an_unknown_borrower_gets_the_snapshot_defaults_flagged_unknown_borrower(
    redis_url: str, store: RedisOnlineStore, runner: asyncio.Runner, history: History
) -> None:
    feats, _ = snapshot_rows(
        events=history.events,
        borrowers=history.borrowers,
        loans=history.loans,
        as_of=AS_OF.to_pydatetime(),
    )
    medians = {n: float(np.float32(feats[n].median())) for n in FEATURES}
    assert len(set(medians.values())) > 3  # distinct values: a mix-up would show
    _snapshot(redis_url, history, defaults=medians)
    at = (AS_OF + timedelta(days=3)).to_pydatetime()
    found = runner.run(store.lookup(999_999, as_of=at))
    assert (found.fallback, found.snapshot_id, found.borrower_id) == (
        "unknown_borrower",
        "s1",
        999_999,
    )
    assert found.values.dtype == np.float32 and found.features == medians
    known = runner.run(store.lookup(_ids(history)[0], as_of=at))
    assert known.fallback is None and known.features != medians


def test_a_borrower_first_seen_in_posted_events_has_event_features_and_missing_profile(
    redis_url: str, store: RedisOnlineStore, runner: asyncio.Runner, history: History
) -> None:
    _snapshot(redis_url, history)
    newer = _newer(history)
    donor = newer[newer["borrower_id"] == newer["borrower_id"].iloc[0]]
    theirs = donor.assign(
        borrower_id=NEW_BORROWER, event_id=[f"new-{i}" for i in range(len(donor))]
    )
    assert NEW_BORROWER not in set(history.borrowers["borrower_id"]) and len(theirs) > 5
    assert _post(runner, store, theirs) == ["unknown_borrower"] * len(theirs)
    q = _queries([NEW_BORROWER], [AS_OF + timedelta(days=d) for d in (1, 20, 60, 150)])
    got = _online(runner, store, q)
    np.testing.assert_array_equal(got, _offline(history, theirs, q))
    found = runner.run(store.lookup(NEW_BORROWER, as_of=q["ts"].iloc[-1].to_pydatetime()))
    assert found.fallback == "no_profile"
    assert [found.features[n] for n in PROFILE_FEATURES] == [MISSING] * len(PROFILE_FEATURES)
    assert any(found.features[n] != 0.0 for n in FEATURES if n not in PROFILE_FEATURES)


@pytest.mark.parametrize("days_old", [HORIZON_DAYS + 1, 400])
def test_events_older_than_the_snapshot_horizon_are_stale_and_not_applied(
    redis_url: str,
    store: RedisOnlineStore,
    runner: asyncio.Runner,
    client: redis.Redis,
    history: History,
    days_old: int,
) -> None:
    _snapshot(redis_url, history)
    bid = _ids(history)[3]
    event = {"borrower_id": bid, "loan_id": 1, "event_type": "payment_on_time", "amount": 50.0}
    frame = pd.DataFrame(
        [
            {**event, "event_id": "old", "ts": AS_OF - timedelta(days=days_old), "channel": None},
            {**event, "event_id": "new", "ts": AS_OF + timedelta(days=1), "channel": None},
        ]
    )
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    raw = _state(client, "s1", bid)
    assert _post(runner, store, frame) == ["stale", "applied"]
    after = _state(client, "s1", bid)
    assert (
        len(raw) > state.HEADER.size and len(after) - len(raw) == state.RECORD.itemsize
    )  # only the fresh event's record
    assert state.decode(after).events["us"][-1] == micros(frame["ts"].iloc[1].to_pydatetime())


@pytest.mark.parametrize(
    ("offset", "refused"),
    [(-timedelta(days=1), True), (-timedelta(microseconds=1), True), (timedelta(0), False)],
)
def test_a_time_before_the_snapshot_is_invalid_input_naming_as_of(
    redis_url: str,
    store: RedisOnlineStore,
    runner: asyncio.Runner,
    history: History,
    offset: timedelta,
    refused: bool,
) -> None:
    _snapshot(redis_url, history)
    when = (AS_OF + offset).to_pydatetime()
    if not refused:
        assert runner.run(store.lookup(_ids(history)[0], as_of=when)).fallback is None
        return
    with pytest.raises(InvalidInput) as err:
        runner.run(store.lookup(_ids(history)[0], as_of=when))
    assert err.value.details["field"] == "as_of"


def test_a_model_of_another_spec_is_unavailable_naming_both_hashes(
    redis_url: str, store: RedisOnlineStore, runner: asyncio.Runner, history: History
) -> None:
    _snapshot(redis_url, history)
    other = "0123456789abcdef"
    found = runner.run(store.lookup(_ids(history)[0], spec_hash=SPEC_HASH))
    assert found.spec_hash == SPEC_HASH
    with pytest.raises(Unavailable) as err:
        runner.run(store.lookup(_ids(history)[0], spec_hash=other))
    assert (err.value.details["expected"], err.value.details["actual"]) == (other, SPEC_HASH)
    assert other in err.value.message and SPEC_HASH in err.value.message


@pytest.mark.parametrize("situation", ["empty", "built_not_committed", "other_spec_only"])
def test_without_a_committed_snapshot_lookups_and_posts_are_unavailable(
    redis_url: str,
    store: RedisOnlineStore,
    runner: asyncio.Runner,
    history: History,
    situation: str,
) -> None:
    if situation == "built_not_committed":
        keyspace = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
        keyspace.begin("s1")
        _write_states(redis_url, history, as_of=AS_OF, snapshot_id="s1", events=history.events)
        keyspace.close()
    elif situation == "other_spec_only":
        other = SnapshotKeyspace(redis_url, spec_hash="0123456789abcdef")
        other.begin("s1")
        other.commit(_meta(AS_OF, "s1", 0))
        other.close()
    with pytest.raises(Unavailable):
        runner.run(store.lookup(_ids(history)[0], as_of=AS_OF.to_pydatetime()))
    with pytest.raises(Unavailable):
        runner.run(store.apply(_requests(_newer(history).iloc[:3])[0].events))


def test_a_snapshot_switch_serves_the_old_one_while_building_then_replays_newer_events(
    redis_url: str, store: RedisOnlineStore, runner: asyncio.Runner, history: History
) -> None:
    _snapshot(redis_url, history)
    t1 = AS_OF + timedelta(days=40)
    newer = _newer(history)
    early = newer[(newer["ts"] >= t1 - timedelta(days=5)) & (newer["ts"] < t1)]
    late = newer[newer["ts"] >= t1]
    late_during, late_after = late.iloc[:100], late.iloc[100:]
    assert len(early) > 10 and len(late_after) > 10
    assert set(_post(runner, store, newer[newer["ts"] < t1 - timedelta(days=5)])) == {"applied"}
    keyspace = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
    keyspace.begin("s2")
    assert set(_post(runner, store, pd.concat([late_during, early]))) == {"applied"}
    # s1 is still served, with every event posted so far
    q1 = _queries(_ids(history), [t1])
    np.testing.assert_array_equal(_online(runner, store, q1), _offline(history, history.events, q1))
    assert runner.run(store.snapshot()).snapshot_id == "s1"
    # s2 as materialize builds it from a durable log read before `early` was posted
    without_early = history.events.drop(index=early.index)
    n, _ = _write_states(redis_url, history, as_of=t1, snapshot_id="s2", events=without_early)
    assert keyspace.commit(_meta(t1, "s2", n)) == ("s1", len(late_during))
    keyspace.close()
    assert set(_post(runner, store, late_after)) == {"applied"}
    assert runner.run(store.snapshot()).snapshot_id == "s2"
    q2 = _queries(_ids(history), [t1, t1 + timedelta(days=10), t1 + timedelta(days=60)])
    want = _offline(history, without_early, q2)
    assert not np.array_equal(want, _offline(history, history.events, q2))  # early matters
    np.testing.assert_array_equal(_online(runner, store, q2), want)


def test_logged_and_queued_events_reach_the_new_snapshot_once_each(
    redis_url: str,
    store: RedisOnlineStore,
    runner: asyncio.Runner,
    tmp_path: Path,
    history: History,
) -> None:
    """materialize's order: build, apply_into the log's events at/after as_of, commit."""
    _snapshot(redis_url, history)
    log = EventLog(str(tmp_path / "store"), writer_id="t", max_batch=10_000)
    ingest = EventIngest(store, event_log=log)
    t1 = AS_OF + timedelta(days=40)
    newer = _newer(history)
    late = newer[newer["ts"] >= t1]
    assert len(late) > 250

    def post(frame: pd.DataFrame) -> None:
        for request in _requests(frame):
            assert runner.run(ingest.post(request)).applied == len(request.events)

    post(pd.concat([newer[newer["ts"] < t1], late.iloc[:80]]))
    keyspace = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
    keyspace.begin("s2")
    post(late.iloc[80:120])  # during the build, and in the log s2 reads
    assert log.flush() > 0
    post(late.iloc[120:200])  # during the build, still in the log's buffer
    n, _ = _write_states(redis_url, history, as_of=t1, snapshot_id="s2", events=history.events)
    meta = _meta(t1, "s2", n)
    logged = read_logged_events(str(tmp_path / "store"), since=t1.to_pydatetime())
    assert sorted(logged["event_id"]) == sorted(late.iloc[:120]["event_id"])
    assert keyspace.apply_into(meta, list(logged.itertuples(index=False))) == 120
    # queued: late[80:200]; of those, late[80:120] came through the log already
    assert keyspace.commit(meta) == ("s1", 80)
    keyspace.close()
    post(late.iloc[200:])
    q = _queries(_ids(history), [t1, t1 + timedelta(days=20), t1 + timedelta(days=90)])
    np.testing.assert_array_equal(_online(runner, store, q), _offline(history, history.events, q))


def test_beginning_a_snapshot_while_another_is_built_is_a_conflict(redis_url: str) -> None:
    first = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
    second = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)  # another materialize job
    try:
        first.begin("s2")
        for keyspace in (first, second):
            with pytest.raises(Conflict):
                keyspace.begin("s3")
        first.commit(_meta(AS_OF, "s2", 0))
        second.begin("s3")  # free again once committed
    finally:
        first.close()
        second.close()


def test_a_conflict_names_the_snapshot_being_built(redis_url: str) -> None:
    keyspace = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
    try:
        keyspace.begin("s2")
        with pytest.raises(Conflict) as err:
            keyspace.begin("s3")
    finally:
        keyspace.close()
    assert err.value.details["building"] == "s2"


def test_abort_drops_the_next_marker_and_the_half_written_keyspace(
    redis_url: str,
    store: RedisOnlineStore,
    runner: asyncio.Runner,
    client: redis.Redis,
    history: History,
) -> None:
    _snapshot(redis_url, history)
    keyspace = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
    try:
        keyspace.begin("s2")
        _write_states(redis_url, history, as_of=AS_OF, snapshot_id="s2", events=history.events)
        _post(runner, store, _newer(history).iloc[:5])  # queued for s2's replay
        assert client.get(f"{ROOT}:next") == b"s2" and _keys(client, f"{ROOT}:s2:*")
        keyspace.abort("s2")
        assert client.get(f"{ROOT}:next") is None and _keys(client, f"{ROOT}:s2:*") == []
        assert keyspace.current() is not None and keyspace.current().snapshot_id == "s1"  # type: ignore[union-attr]
        keyspace.begin("s3")  # nothing is being built any more
    finally:
        keyspace.close()


@pytest.mark.parametrize("ttl_s", [OLD_KEYSPACE_TTL_S, 30, 0])
def test_expire_times_out_every_key_of_the_old_keyspace_only(
    redis_url: str,
    store: RedisOnlineStore,
    runner: asyncio.Runner,
    client: redis.Redis,
    history: History,
    ttl_s: int,
) -> None:
    _snapshot(redis_url, history)
    _post(runner, store, _newer(history).iloc[:20])  # seen sets: keys beyond the states
    _snapshot(redis_url, history, snapshot_id="s2", as_of=AS_OF + timedelta(days=1))
    old = _keys(client, f"{ROOT}:s1:*")
    assert len(old) > len(history.borrowers) + 1  # states, meta and seen sets
    keyspace = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
    try:
        assert keyspace.expire("s1", ttl_s) == len(old)
    finally:
        keyspace.close()
    ttls = [client.ttl(k) for k in old]
    if ttl_s:
        assert all(0 < t <= ttl_s for t in ttls), ttls
    else:
        assert _keys(client, f"{ROOT}:s1:*") == []
    assert {client.ttl(k) for k in _keys(client, f"{ROOT}:s2:b:*")} == {-1}
    assert client.get(f"{ROOT}:current") == b"s2"


def test_memory_per_borrower_is_a_few_hundred_bytes(redis_url: str, history: History) -> None:
    keyspace = SnapshotKeyspace(redis_url, spec_hash=SPEC_HASH)
    try:
        assert np.isnan(keyspace.memory_per_borrower())  # nothing served yet
        _snapshot(redis_url, history)
        assert 50 < keyspace.memory_per_borrower() < 2000
    finally:
        keyspace.close()


# --------------------------------------------------------------------------- Redis down


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own (it gets killed), writing every command to disk."""
    server = start_redis_server(tmp_path / "redis")
    try:
        with redis.Redis.from_url(server.url) as direct:
            direct.config_set("appendfsync", "always")  # a kill loses nothing acknowledged
        yield server
    finally:
        server.stop()


def test_while_redis_is_down_lookups_fail_fast_and_posts_wait_until_drained(
    own_server: RedisServer, runner: asyncio.Runner, tmp_path: Path, history: History
) -> None:
    _snapshot(own_server.url, history)
    online = RedisOnlineStore(own_server.url, spec_hash=SPEC_HASH, timeout_s=0.5)
    log = EventLog(str(tmp_path / "store"), writer_id="t", max_batch=10_000)
    n = 30
    ingest = EventIngest(online, event_log=log, max_pending=2 * n)
    newer = _newer(history)
    first, second, third = newer.iloc[:n], newer.iloc[n : 2 * n], newer.iloc[2 * n : 2 * n + 1]
    bid = int(first["borrower_id"].iloc[0])
    try:
        assert runner.run(online.lookup(bid, as_of=AS_OF.to_pydatetime())).fallback is None
        own_server.kill()
        with pytest.raises(Unavailable):
            runner.run(online.lookup(bid, as_of=AS_OF.to_pydatetime()))
        for k, batch in enumerate((first, second), start=1):
            (request,) = _requests(batch)
            response = runner.run(ingest.post(request))
            assert (response.pending, response.applied, response.snapshot_id) == (n, 0, None)
            assert ingest.pending == log.buffered == k * n
        with pytest.raises(Unavailable) as err:
            runner.run(ingest.post(_requests(third)[0]))  # beyond max_pending
        assert err.value.details["max_pending"] == 2 * n
        assert ingest.pending == log.buffered == 2 * n  # nothing of it accepted
        own_server.restart()

        def drained() -> bool:
            runner.run(ingest.drain())
            return ingest.pending == 0

        wait_for(drained, timeout=30, what="the pending events to be applied")
        q = _queries(_ids(history), [AS_OF + timedelta(days=200)])
        seen = pd.concat([history.events[history.events["ts"] < AS_OF], first, second])
        np.testing.assert_array_equal(_online(runner, online, q), _offline(history, seen, q))
        again = runner.run(ingest.post(_requests(first)[0]))
        assert (again.duplicates, again.applied, again.pending) == (n, 0, 0)
        assert log.buffered == 2 * n  # duplicates are not logged twice
    finally:
        runner.run(online.close())


# --------------------------------------------------------------------------- ranking


_VECTOR = np.random.default_rng(3).uniform(-1, 5, len(FEATURES)).astype(np.float32)


@pytest.mark.parametrize("as_mapping", [False, True], ids=["vector", "mapping"])
@pytest.mark.parametrize(
    "options",
    [list(OPTION_IDS), list(reversed(OPTION_IDS[:5])), ["pay_now"]],
    ids=["all", "reversed-five", "one"],
)
@pytest.mark.parametrize("touchpoint", TOUCHPOINTS)
def test_candidate_matrix_equals_option_rows_through_feature_matrix(
    touchpoint: str, options: list[str], as_mapping: bool
) -> None:
    mapping = {n: float(v) for n, v in zip(FEATURES, _VECTOR, strict=True)}
    borrower: dict[str, float] | np.ndarray = mapping if as_mapping else _VECTOR
    got = candidate_matrix(
        default_spec(), borrower=borrower, touchpoint=touchpoint, option_ids=options
    )
    rows = option_rows(
        pd.DataFrame([mapping]), options=options, touchpoint=touchpoint, position=SERVING_POSITION
    )
    want = feature_matrix(rows, default_spec())
    assert got.dtype == np.float32 and got.shape == (len(options), len(default_spec().names))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("touchpoint", "options", "field"),
    [
        ("fax", ["pay_now"], "touchpoint"),
        ("app", ["pay_later"], "option_id"),
        ("sms", ["pay_now", "nope"], "option_id"),
    ],
)
def test_candidate_matrix_refuses_an_unknown_touchpoint_or_option_naming_the_field(
    touchpoint: str, options: list[str], field: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        candidate_matrix(
            default_spec(), borrower=_VECTOR, touchpoint=touchpoint, option_ids=options
        )
    assert err.value.details["field"] == field


def test_candidate_matrix_refuses_a_mapping_missing_a_feature() -> None:
    mapping = {n: 1.0 for n in FEATURES if n != "apr"}
    with pytest.raises(FeatureSpecMismatch) as err:
        candidate_matrix(default_spec(), borrower=mapping, touchpoint="app", option_ids=["pay_now"])
    assert err.value.details["expected"] == ["apr"]


class _FakeOnline:
    """A stand-in for the store when testing the service: fixed features per borrower.

    Borrower 99 is unknown to it (population defaults, flagged).
    """

    def __init__(self) -> None:
        self.asked: list[tuple[int, str | None]] = []

    async def lookup(self, borrower_id: int, *, spec_hash: str | None = None) -> OnlineLookup:
        from attune.serving.candidate_rows import borrower_vector
        from tests.integration.serving_fixtures import borrower_state

        self.asked.append((borrower_id, spec_hash))
        return OnlineLookup(
            borrower_id=borrower_id,
            as_of=datetime.now(UTC),
            snapshot_id="s1",
            spec_hash=SPEC_HASH,
            fallback="unknown_borrower" if borrower_id == 99 else None,
            values=borrower_vector(borrower_state(borrower_id)),
        )


@pytest.mark.parametrize("borrower_id", [5, 99])
def test_a_rank_without_features_scores_the_online_features_and_names_the_snapshot(
    borrower_id: int,
) -> None:
    from attune.serving.api import RankRequest
    from attune.serving.config import RolloutConfig
    from attune.serving.decision_log import DecisionLog, MemorySink
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
    assert online.asked == [(borrower_id, SPEC_HASH)]
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
