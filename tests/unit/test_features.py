"""Feature functions: definitions, point-in-time correctness, compaction, candidate rows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attune.data import features as F
from attune.data.features import (
    MISSING,
    add_context_features,
    borrower_features,
    compact_events,
    feature_matrix,
    graded_labels,
    option_rows,
)
from attune.data.schema import CHANNELS, EVENT_TYPES, OPTION_IDS, PROTECTED_COLUMNS
from attune.data.spec import BORROWER_FEATURES, FEATURE_NAMES, default_spec
from attune.errors import FeatureSpecMismatch, InvalidInput
from tests.histories import make_history

T = pd.Timestamp("2024-07-01 12:00", tz="UTC")
US = pd.Timedelta(microseconds=1)
DAY = pd.Timedelta(days=1)
HYPO = settings(max_examples=40, deadline=None, derandomize=True)


def _events(rows: list[tuple]) -> pd.DataFrame:
    """(borrower_id, ts, event_type[, amount[, channel]]) tuples -> an events frame."""
    out = []
    for i, row in enumerate(rows):
        bid, ts, kind, *rest = row
        amount = rest[0] if rest else 0.0
        channel = rest[1] if len(rest) > 1 else None
        out.append((f"e{i}", bid, bid * 10, ts, kind, amount, channel))
    cols = ["event_id", "borrower_id", "loan_id", "ts", "event_type", "amount", "channel"]
    frame = pd.DataFrame(out, columns=cols)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def _static(ids=(1,), *, installment=100.0, term=12, origination=T - 100 * DAY, income=2000.0):
    borrowers = pd.DataFrame(
        {"borrower_id": list(ids), "income_monthly": income, "income_volatility": 0.25}
    )
    loans = pd.DataFrame(
        {
            "borrower_id": list(ids),
            "origination_ts": origination,
            "term_months": term,
            "installment": installment,
            "apr": 0.2,
        }
    )
    return borrowers, loans


def _features(events: pd.DataFrame, at=T, bid=1, **static) -> pd.Series:
    borrowers, loans = _static(**static)
    queries = pd.DataFrame({"borrower_id": [bid], "ts": [at]})
    return borrower_features(events, queries, borrowers=borrowers, loans=loans).iloc[0]


@pytest.mark.parametrize(
    ("offset", "counted"),
    [
        (30 * DAY, True),  # the window's first instant is inside [t - 30 d, t)
        (30 * DAY + US, False),
        (US, True),
        (pd.Timedelta(0), False),  # an event at the query time is not "before" it
        (-DAY, False),  # a future event
    ],
)
def test_window_count_is_half_open_and_strictly_before(offset, counted) -> None:
    feats = _features(_events([(1, T - offset, "payment_on_time", 100.0)]))
    assert feats["pay_on_time_30"] == float(counted)


def test_counts_per_window_and_type() -> None:
    rows = [(1, T - d * DAY, "payment_on_time", 100.0) for d in (1, 40, 100, 170, 200)]
    rows += [(1, T - 5 * DAY, "payment_late", 100.0), (1, T - 95 * DAY, "payment_missed")]
    rows += [(1, T - 3 * DAY, "login"), (1, T - 29 * DAY, "login"), (1, T - 31 * DAY, "login")]
    rows += [(1, T - 10 * DAY, "hardship_flag"), (1, T - 2 * DAY, "inbound_contact")]
    rows += [(2, T - DAY, "payment_on_time", 100.0)]  # someone else's
    feats = _features(_events(rows))
    assert [feats[f"pay_on_time_{w}"] for w in (30, 90, 180)] == [1.0, 2.0, 4.0]
    assert feats["pay_late_90"] == 1.0
    assert (feats["pay_missed_90"], feats["pay_missed_180"]) == (0.0, 1.0)
    assert feats["on_time_rate_180"] == pytest.approx(4 / 6)
    assert feats["logins_30"] == 2.0
    assert feats["hardship_180"] == 1.0
    assert feats["inbound_contacts_90"] == 1.0


@pytest.mark.parametrize(
    ("rows", "expected_days"),
    [
        ([], 0.0),
        ([(1, T - 10 * DAY, "installment_due", 100.0)], 10.0),
        (
            [
                (1, T - 40 * DAY, "installment_due", 100.0),
                (1, T - 38 * DAY, "payment_on_time", 100.0),
                (1, T - 10 * DAY, "installment_due", 100.0),
            ],
            10.0,
        ),
        (
            [
                (1, T - 40 * DAY, "installment_due", 100.0),
                (1, T - 30 * DAY, "payment_partial", 60.0),
                (1, T - 10 * DAY, "installment_due", 100.0),
                (1, T - 5 * DAY, "payment_partial", 30.0),
            ],
            40.0,  # 90 paid against the first 100: the first installment is still open
        ),
        (
            [
                (1, T - 40 * DAY, "installment_due", 100.0),
                (1, T - 30 * DAY, "payment_late", 150.0),
                (1, T - 10 * DAY, "installment_due", 100.0),
            ],
            10.0,
        ),
        (
            [
                (1, T - 40 * DAY, "installment_due", 100.0),
                (1, T - 30 * DAY, "payment_on_time", 200.0),
                (1, T - 10 * DAY, "installment_due", 100.0),
            ],
            0.0,
        ),
        ([(1, T - 10 * DAY, "installment_due", 100.0), (1, T, "payment_on_time", 100.0)], 10.0),
        ([(1, T, "installment_due", 100.0)], 0.0),  # due now is not yet past due
        ([(1, T - 10 * DAY, "installment_due", 100.0), (1, T - DAY, "payment_missed", 100)], 10.0),
    ],
)
def test_days_past_due_counts_from_the_oldest_uncovered_installment(rows, expected_days) -> None:
    assert _features(_events(rows))["days_past_due"] == pytest.approx(expected_days)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], 0.0),
        ([(1, T - 9 * DAY, "autopay_on")], 1.0),
        ([(1, T - 9 * DAY, "autopay_on"), (1, T - DAY, "autopay_off")], 0.0),
        ([(1, T - 9 * DAY, "autopay_off"), (1, T - DAY, "autopay_on")], 1.0),
        ([(1, T - DAY, "autopay_on"), (1, T - DAY, "autopay_off")], 0.0),  # a tie: off wins
        ([(1, T - DAY, "autopay_off"), (1, T - DAY, "autopay_on")], 0.0),
        ([(1, T - 400 * DAY, "autopay_on")], 1.0),  # state persists beyond every window
        ([(1, T - 9 * DAY, "autopay_on"), (1, T, "autopay_off")], 1.0),
    ],
)
def test_autopay_state_is_the_last_toggle_before_the_query(rows, expected) -> None:
    assert _features(_events(rows))["autopay_on"] == expected


@pytest.mark.parametrize(
    ("rows", "feature", "expected"),
    [
        ([], "days_since_last_payment", 365.0),
        ([(1, T - 2.5 * DAY, "payment_late", 10.0)], "days_since_last_payment", 2.5),
        ([(1, T - 500 * DAY, "payment_partial", 10.0)], "days_since_last_payment", 365.0),
        ([(1, T - DAY, "payment_missed")], "days_since_last_payment", 365.0),
        ([(1, T - 4 * DAY, "outreach_sent", 0.0, "sms")], "days_since_last_contact", 4.0),
        ([(1, T - 4 * DAY, "outreach_sent", 0.0, "sms")], "contacts_7d", 1.0),
        ([(1, T - 8 * DAY, "outreach_sent", 0.0, "sms")], "contacts_7d", 0.0),
        ([(1, T - 8 * DAY, "outreach_sent", 0.0, "sms")], "contacts_30d", 1.0),
    ],
)
def test_recency_and_contact_counts(rows, feature, expected) -> None:
    assert _features(_events(rows))[feature] == pytest.approx(expected)


def test_engagement_rates_per_channel() -> None:
    rows = [(1, T - d * DAY, "outreach_delivered", 0.0, "sms") for d in (1, 2, 3, 4)]
    rows += [(1, T - d * DAY, "outreach_opened", 0.0, "sms") for d in (1, 2, 3)]
    rows += [(1, T - 2 * DAY, "outreach_delivered", 0.0, "email")]
    rows += [(1, T - 2 * DAY, "outreach_opened", 0.0, "email")] * 2  # more opens than sends
    rows += [(1, T - DAY, "outreach_clicked", 0.0, "sms")]
    rows += [(1, T - 100 * DAY, "outreach_delivered", 0.0, "push")]  # outside 90 days
    feats = _features(_events(rows))
    assert feats["open_rate_sms_90"] == pytest.approx(0.75)
    assert feats["open_rate_email_90"] == 1.0  # clipped to 1
    assert feats["open_rate_push_90"] == 0.0  # nothing delivered in the window
    assert feats["click_rate_90"] == pytest.approx(1 / 5)


@pytest.mark.parametrize(
    ("rows", "owed"),
    [
        ([], 0.0),
        ([(1, T - 20 * DAY, "installment_due", 100.0)], 100.0),
        ([(1, T - 20 * DAY, "installment_due", 100.0), (1, T - DAY, "payment_late", 60.0)], 40.0),
        ([(1, T - 20 * DAY, "installment_due", 100.0), (1, T - DAY, "payment_late", 160.0)], 0.0),
        ([(1, T - 20 * DAY, "installment_due", 100.0), (1, T, "payment_late", 100.0)], 100.0),
    ],
)
def test_loan_features_follow_the_schedule_plus_what_is_past_due(rows, owed) -> None:
    elapsed = 73.05  # days since origination: 0.2 of a 12-month term
    feats = _features(_events(rows), installment=100.0, term=12, origination=T - elapsed * DAY)
    progress = elapsed / (12 * 30.4375)
    assert feats["term_progress"] == pytest.approx(progress)
    assert feats["balance"] == pytest.approx(100.0 * 12 * (1 - progress) + owed)
    assert feats["installment_to_income"] == pytest.approx(100.0 / 2000.0)
    assert feats["apr"] == pytest.approx(0.2)
    assert feats["income_volatility"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("static", "missing"),
    [
        ({"origination": T + DAY}, ["balance", "apr", "term_progress", "installment_to_income"]),
        ({"income": 0.0}, ["installment_to_income"]),
        ({"ids": (2,)}, ["balance", "apr", "term_progress", "income_volatility"]),
    ],
)
def test_missing_static_sources_give_the_missing_value(static, missing) -> None:
    feats = _features(_events([]), **static)
    assert [feats[name] for name in missing] == [MISSING] * len(missing)
    assert np.isfinite(feats[list(BORROWER_FEATURES)].to_numpy(dtype=float)).all()


def test_result_keeps_query_rows_order_index_and_passthrough_columns() -> None:
    borrowers, loans = _static(ids=(1, 2))
    queries = pd.DataFrame(
        {"borrower_id": [2, 1, 2], "ts": [T, T, T - 5 * DAY], "tag": ["a", "b", "c"]},
        index=[10, 11, 12],
    )
    events = _events([(1, T - DAY, "login"), (2, T - 2 * DAY, "login")])
    out = borrower_features(events, queries, borrowers=borrowers, loans=loans)
    assert list(out.index) == [10, 11, 12]
    assert list(out["tag"]) == ["a", "b", "c"]
    assert list(out["logins_30"]) == [1.0, 1.0, 0.0]
    assert all(out[name].dtype == np.float32 for name in BORROWER_FEATURES)
    assert list(out.columns) == ["borrower_id", "ts", "tag", *BORROWER_FEATURES]


@pytest.mark.parametrize("table", ["events", "queries", "borrowers", "loans"])
def test_a_missing_input_column_is_named(table) -> None:
    borrowers, loans = _static()
    frames = {
        "events": _events([(1, T - DAY, "login")]),
        "queries": pd.DataFrame({"borrower_id": [1], "ts": [T]}),
        "borrowers": borrowers,
        "loans": loans,
    }
    frames[table] = frames[table].drop(columns=["borrower_id"])
    with pytest.raises(InvalidInput) as err:
        borrower_features(
            frames["events"],
            frames["queries"],
            borrowers=frames["borrowers"],
            loans=frames["loans"],
        )
    assert err.value.field == table
    assert err.value.value == ["borrower_id"]


# --------------------------------------------------------------------------- properties

# every type can occur; the ones with state (money, autopay) are drawn more often
_STATEFUL = ("installment_due", "payment_on_time", "payment_late", "payment_partial")
_KINDS = st.sampled_from([*EVENT_TYPES, *(_STATEFUL * 4), "autopay_on", "autopay_off"])
_EVENT = st.tuples(
    st.sampled_from([1, 2]),
    st.integers(-400 * 24, 30 * 24),  # hours around T
    _KINDS,
    st.sampled_from([0.0, 50.0, 100.0, 120.5, -5.0]),
    st.sampled_from([None, *CHANNELS]),
)


def _from_hours(rows) -> pd.DataFrame:
    return _events([(b, T + pd.Timedelta(hours=h), k, a, c) for b, h, k, a, c in rows])


def _all_features(events: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
    borrowers, loans = _static(ids=(1, 2))
    out = borrower_features(events, queries, borrowers=borrowers, loans=loans)
    return out[list(BORROWER_FEATURES)].reset_index(drop=True)


@HYPO
@given(
    history=st.lists(_EVENT, max_size=40),
    later=st.lists(_EVENT, min_size=1, max_size=10),
    at_hours=st.integers(-300 * 24, 0),
)
def test_events_at_or_after_the_query_time_never_change_its_features(history, later, at_hours):
    """Leakage: appending events dated at or after a presentation leaves its features alone."""
    at = T + pd.Timedelta(hours=at_hours)
    queries = pd.DataFrame({"borrower_id": [1, 2], "ts": [at, at]})
    past = [e for e in history if T + pd.Timedelta(hours=e[1]) < at]
    future = [(b, max(h, at_hours), k, a, c) for b, h, k, a, c in later]
    before = _all_features(_from_hours(past), queries)
    after = _all_features(_from_hours(past + future), queries)
    pd.testing.assert_frame_equal(before, after)


@HYPO
@given(history=st.lists(_EVENT, max_size=40), seed=st.integers(0, 2**16))
def test_features_do_not_depend_on_row_order_or_on_other_borrowers(history, seed) -> None:
    """Shuffling events, or computing each borrower alone, gives the same values."""
    events = _from_hours(history)
    queries = pd.DataFrame({"borrower_id": [1, 2, 1], "ts": [T, T, T - 50 * DAY]})
    full = _all_features(events, queries)
    shuffled = events.sample(frac=1.0, random_state=seed)
    pd.testing.assert_frame_equal(full, _all_features(shuffled, queries))
    alone = _all_features(events[events["borrower_id"] == 1], queries.iloc[[0, 2]])
    pd.testing.assert_frame_equal(full.iloc[[0, 2]].reset_index(drop=True), alone)


def test_dense_time_ranks_give_the_same_values_as_raw_times(monkeypatch) -> None:
    """The overflow fallback of the composite key computes identical features."""
    h = make_history(borrowers=30, months=8, seed=3)
    queries = h.presentations[["borrower_id", "ts"]]
    raw = borrower_features(h.events, queries, borrowers=h.borrowers, loans=h.loans)
    monkeypatch.setattr(F, "_KEY_LIMIT", 0)
    ranked = borrower_features(h.events, queries, borrowers=h.borrowers, loans=h.loans)
    pd.testing.assert_frame_equal(raw, ranked)
    assert raw["days_past_due"].gt(0).any() and raw["autopay_on"].gt(0).any()


@HYPO
@given(
    history=st.lists(_EVENT, min_size=10, max_size=60),
    new=st.lists(_EVENT, max_size=8),
    as_of_hours=st.integers(-60 * 24, 0),
    query_hours=st.lists(st.integers(0, 40 * 24), min_size=1, max_size=3),
)
def test_compacted_events_give_the_same_features_at_and_after_the_snapshot(
    history, new, as_of_hours, query_hours
) -> None:
    """Online == offline: compacted history plus newer events equals the full history."""
    as_of = T + pd.Timedelta(hours=as_of_hours)
    events = _from_hours(history)
    newer = _from_hours([(b, max(h, as_of_hours), k, a, c) for b, h, k, a, c in new])
    newer["event_id"] = "n" + newer["event_id"]
    full = pd.concat([events[events["ts"] < as_of], newer], ignore_index=True)
    compact = pd.concat(
        [compact_events(events, as_of=as_of.to_pydatetime()), newer], ignore_index=True
    )
    times = [as_of + pd.Timedelta(hours=h) for h in query_hours]
    queries = pd.DataFrame({"borrower_id": [1, 2] * len(times), "ts": sorted(times * 2)})
    pd.testing.assert_frame_equal(_all_features(full, queries), _all_features(compact, queries))
    assert len(compact) <= len(full) + 4


@pytest.mark.parametrize("months_in", [7, 9, 12])
def test_compaction_of_a_long_history_gives_the_same_features(months_in) -> None:
    """Snapshots at several points of a 12-month history, queried over the next weeks."""
    h = make_history(borrowers=40, months=13, seed=months_in)
    as_of = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=30 * months_in)
    later = h.events[h.events["ts"] >= as_of]
    full = pd.concat([h.events[h.events["ts"] < as_of], later], ignore_index=True)
    compact = pd.concat(
        [compact_events(h.events, as_of=as_of.to_pydatetime()), later], ignore_index=True
    )
    ids = h.borrowers["borrower_id"]
    queries = pd.DataFrame(
        {
            "borrower_id": np.tile(ids, 3),
            "ts": np.repeat([as_of + d * DAY for d in (0, 7, 29.5)], len(ids)),
        }
    )
    kw = {"borrowers": h.borrowers, "loans": h.loans}
    want = borrower_features(full, queries, **kw)
    pd.testing.assert_frame_equal(want, borrower_features(compact, queries, **kw))
    assert want["days_past_due"].gt(0).any() and want["autopay_on"].gt(0).any()


@pytest.mark.parametrize(
    ("rows", "feature"),
    [
        (
            [
                (1, T - d * DAY, k)
                for d, k in ((300, "autopay_on"), (250, "autopay_off"), (200, "autopay_on"))
            ],
            "autopay_on",
        ),
        (
            [(1, T - d * DAY, "payment_late", 10.0) for d in (300, 250, 200)],
            "days_since_last_payment",
        ),
        (
            [(1, T - d * DAY, "outreach_sent", 0.0, "sms") for d in (300, 190)],
            "days_since_last_contact",
        ),
    ],
)
def test_compaction_keeps_the_last_old_event_of_each_type(rows, feature) -> None:
    events = _events(rows)
    want = _features(events, at=T + DAY)[feature]
    got = _features(compact_events(events, as_of=T.to_pydatetime()), at=T + DAY)[feature]
    assert got == want and want not in (0.0, 365.0)


def test_compaction_keeps_recent_events_verbatim_and_shrinks_old_ones() -> None:
    h = make_history(borrowers=10, months=12, seed=5)
    as_of = h.events["ts"].max()
    compact = compact_events(h.events, as_of=as_of.to_pydatetime())
    cutoff = as_of - timedelta(days=F.MAX_WINDOW_DAYS)
    recent = h.events[(h.events["ts"] >= cutoff) & (h.events["ts"] < as_of)]
    kept = compact[compact["ts"] >= cutoff]
    assert set(kept["event_id"]) == set(recent["event_id"])
    assert len(compact[compact["ts"] < cutoff]) < len(h.events[h.events["ts"] < cutoff]) / 3
    assert (compact["ts"] < as_of).all()


def test_compaction_refuses_a_horizon_shorter_than_the_longest_window() -> None:
    with pytest.raises(InvalidInput) as err:
        compact_events(_events([]), as_of=T.to_pydatetime(), horizon_days=90)
    assert err.value.value == 90


# --------------------------------------------------------------------------- labels, rows, matrix


@pytest.mark.parametrize(
    ("response", "current", "label"),
    [(0, True, 0), (1, True, 1), (1, False, 1), (2, False, 2), (2, None, 2), (2, True, 3)],
)
def test_graded_labels(response, current, label) -> None:
    got = graded_labels(pd.Series([response]), pd.Series([current], dtype="object"))
    assert got.tolist() == [label] and got.dtype == np.int8


def test_option_rows_build_one_row_per_borrower_and_option_in_spec_order() -> None:
    borrower = pd.DataFrame([{name: float(i) for i, name in enumerate(BORROWER_FEATURES)}] * 2)
    borrower["borrower_id"] = [7, 8]
    rows = option_rows(borrower, options=["pay_now", "autopay_enroll"], touchpoint="sms")
    assert list(rows["borrower_id"]) == [7, 7, 8, 8]
    assert list(rows["option_id"]) == ["pay_now", "autopay_enroll"] * 2
    X = feature_matrix(rows)
    assert X.shape == (4, len(FEATURE_NAMES)) and X.dtype == np.float32
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    assert X[:, col["position"]].tolist() == [1.0] * 4
    assert X[:, col["touchpoint_sms"]].tolist() == [1.0] * 4
    assert X[:, col["touchpoint_app"]].tolist() == [0.0] * 4
    assert X[0, col["opt_pay_now"]] == 1.0 and X[0, col["opt_autopay_enroll"]] == 0.0
    assert X[1, col["opt_autopay_enroll"]] == 1.0 and X[:, : len(BORROWER_FEATURES)].sum() > 0
    assert X[:, col["days_past_due"]].tolist() == [8.0] * 4


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"options": ["nope"], "touchpoint": "app"}, "option_id", "nope"),
        ({"options": ["pay_now"], "touchpoint": "fax"}, "touchpoint", "fax"),
        ({"options": [], "touchpoint": "app"}, "options", []),
        ({"options": ["pay_now", "pay_now"], "touchpoint": "app"}, "options", ["pay_now"] * 2),
        ({"options": ["pay_now"], "touchpoint": ["app", "sms"]}, "touchpoint", 2),
    ],
)
def test_option_rows_reject_bad_input_naming_the_field(kwargs, field, value) -> None:
    borrower = pd.DataFrame([{name: 0.0 for name in BORROWER_FEATURES}])
    with pytest.raises(InvalidInput) as err:
        option_rows(borrower, **kwargs)
    assert (err.value.field, err.value.value) == (field, value)


def test_context_one_hots_cover_every_option() -> None:
    rows = pd.DataFrame({"touchpoint": "app", "option_id": list(OPTION_IDS), "position": 2})
    out = add_context_features(rows)
    onehot = out[[f"opt_{o}" for o in OPTION_IDS]].to_numpy()
    assert (onehot == np.eye(len(OPTION_IDS))).all()


def test_feature_matrix_names_missing_features() -> None:
    with pytest.raises(FeatureSpecMismatch) as err:
        feature_matrix(pd.DataFrame({"balance": [1.0]}))
    assert "apr" in err.value.expected and "balance" not in err.value.expected


def test_protected_attributes_are_never_features() -> None:
    h = make_history(borrowers=5, months=2, seed=0)
    people = h.borrowers.merge(h.protected, on="borrower_id")  # even when they are at hand
    out = borrower_features(
        h.events, h.presentations[["borrower_id", "ts"]], borrowers=people, loans=h.loans
    )
    assert not PROTECTED_COLUMNS & set(out.columns)
    assert not PROTECTED_COLUMNS & set(default_spec().names)
