"""Reward attribution (attune.rewards): windows, last touch, the money rule, the config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attune.data.schema import EVENTS, OPTION_IDS
from attune.errors import ConfigError, SchemaError
from attune.experiments.assignment import hash_borrower
from attune.rewards.attribution import REWARD_SCHEMA, attribute_rewards, hash_events
from attune.rewards.config import DEFAULT_CONFIG, load_reward_config, parse_reward_config
from attune.serving.decision_log import DecisionRecord, records_to_table

SALT = "test-salt"
T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)
LATER = T0 + timedelta(days=60)
ACCEPT_ONLY = DEFAULT_CONFIG.model_copy(
    update={"weights": DEFAULT_CONFIG.weights.model_copy(update={"accepted": 1.0, "current": 0.0})}
)


def decision(
    decision_id: str,
    *,
    borrower: int = 7,
    ts: datetime = T0,
    order: tuple[str, ...] = ("autopay_enroll", "pay_now", "reminder_sms"),
    propensities: tuple[float, ...] | None = None,
    role: str = "primary",
) -> DecisionRecord:
    candidates = tuple(OPTION_IDS)
    n = len(candidates)
    return DecisionRecord(
        decision_id=decision_id,
        ts=ts,
        role=role,
        borrower_hash=hash_borrower(borrower, salt=SALT),
        arm="champion",
        model_version="v1",
        feature_spec_hash="spec",
        touchpoint="app",
        feature_source="request",
        candidates=candidates,
        features=np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        scores=np.linspace(1.0, 0.0, n),
        returned_order=order + tuple(c for c in candidates if c not in order),
        propensities=propensities,
        latency_ms=1.0,
    )


def decisions(*records: DecisionRecord) -> pd.DataFrame:
    return records_to_table(list(records)).to_pandas()


def events(*rows: tuple[int, datetime, str, float | None, str | None]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            {
                "event_id": f"e{i}",
                "borrower_id": b,
                "loan_id": 1,
                "ts": ts,
                "event_type": kind,
                "amount": amount,
                "channel": channel,
            }
            for i, (b, ts, kind, amount, channel) in enumerate(rows)
        ],
        columns=EVENTS.names,
    )
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return hash_events(frame, salt=SALT)


def rewards(d: pd.DataFrame, e: pd.DataFrame, config=ACCEPT_ONLY, as_of=LATER) -> pd.DataFrame:
    table = attribute_rewards(d, e, config, as_of=as_of)
    assert table.schema.equals(REWARD_SCHEMA)
    return table.to_pandas()


def test_one_row_per_shown_position_with_logged_features_and_scores():
    """Three shown positions -> three rows carrying that option's logged features and score."""
    d = decisions(decision("d1", propensities=(0.5, 0.25, 0.125)))
    out = rewards(d, events())
    assert out["position"].tolist() == [1, 2, 3]
    assert out["option_id"].tolist() == ["autopay_enroll", "pay_now", "reminder_sms"]
    j = OPTION_IDS.index("pay_now")
    assert out["features"][1].tolist() == [2.0 * j, 2.0 * j + 1]
    assert out["score"][1] == pytest.approx(np.linspace(1.0, 0.0, len(OPTION_IDS))[j])
    assert out["propensity"].tolist() == [0.5, 0.25, 0.125]
    assert not out["accepted"].any()


def test_non_exploring_decisions_have_null_propensity_and_shadow_rows_are_skipped():
    d = decisions(decision("d1"), decision("d1", role="shadow"))
    out = rewards(d, events())
    assert len(out) == 3 and out["propensity"].isna().all()


@pytest.mark.parametrize(
    ("offset", "counted"),
    [
        (timedelta(seconds=-1), False),
        (timedelta(0), False),
        (timedelta(microseconds=1), True),
        (timedelta(days=7), True),
        (timedelta(days=7, microseconds=1), False),
    ],
)
def test_event_counts_only_strictly_after_the_decision_and_inside_the_window(offset, counted):
    d = decisions(decision("d1"))
    out = rewards(d, events((7, T0 + offset, "autopay_on", None, None)))
    assert out["accepted"].tolist() == [counted, False, False]
    assert out["reward"].tolist() == [float(counted), 0.0, 0.0]


def test_another_borrowers_event_never_counts():
    out = rewards(
        decisions(decision("d1")), events((8, T0 + timedelta(hours=1), "autopay_on", None, None))
    )
    assert not out["accepted"].any()


def test_channel_rules_pick_the_reminder_of_the_events_channel():
    order = ("reminder_email", "reminder_sms", "reminder_push")
    out = rewards(
        decisions(decision("d1", order=order)),
        events((7, T0 + timedelta(hours=1), "reminder_on", None, "sms")),
    )
    assert out["accepted"].tolist() == [False, True, False]


def test_last_touch_credits_the_latest_decision_once():
    first = decision("d1", ts=T0)
    second = decision("d2", ts=T0 + timedelta(days=1))
    out = rewards(
        decisions(first, second), events((7, T0 + timedelta(days=2), "autopay_on", None, None))
    )
    credited = out.loc[out["accepted"], "decision_id"].tolist()
    assert credited == ["d2"]


def test_one_event_credits_one_of_two_matching_options_by_position():
    order = ("hardship_deferral", "payment_plan", "pay_now")
    one = rewards(
        decisions(decision("d1", order=order)),
        events((7, T0 + timedelta(hours=1), "plan_accepted", 0.0, None)),
    )
    assert one["accepted"].tolist() == [True, False, False]
    two = rewards(
        decisions(decision("d1", order=order)),
        events(
            (7, T0 + timedelta(hours=1), "plan_accepted", 0.0, None),
            (7, T0 + timedelta(hours=2), "plan_accepted", 0.0, None),
        ),
    )
    assert two["accepted"].tolist() == [True, True, False]


def test_open_windows_are_left_out_not_scored_zero():
    """A decision whose longest window ends after as_of has no rows at all."""
    d = decisions(decision("old", ts=T0 - timedelta(days=30)), decision("new", ts=T0))
    as_of = T0 + timedelta(days=10)  # the 14-day currentness window of "new" is open
    out = rewards(d, events(), config=DEFAULT_CONFIG, as_of=as_of)
    assert set(out["decision_id"]) == {"old"}
    closed = rewards(d, events(), config=DEFAULT_CONFIG, as_of=T0 + timedelta(days=14))
    assert set(closed["decision_id"]) == {"old", "new"}
    assert (closed["window_end"] == closed["ts"] + pd.Timedelta(days=14)).all()


def _money(
    borrower: int, paid_late: bool
) -> list[tuple[int, datetime, str, float | None, str | None]]:
    due = T0 - timedelta(days=3)
    rows = [(borrower, due, "installment_due", 100.0, None)]
    if paid_late:
        rows.append((borrower, T0 + timedelta(days=5), "payment_late", 100.0, None))
    return rows


@pytest.mark.parametrize(("paid_late", "current"), [(True, True), (False, False)])
def test_current_follows_the_money_rule_at_the_horizon(paid_late, current):
    e = events(*_money(7, paid_late), (7, T0 + timedelta(hours=1), "autopay_on", None, None))
    out = rewards(decisions(decision("d1")), e, config=DEFAULT_CONFIG)
    assert out["current"].tolist() == [current] * 3
    assert out["reward"].tolist() == [float(current), 0.0, 0.0]


def test_current_without_known_installments_is_true_and_null_without_any_event():
    e = events((7, T0 + timedelta(hours=1), "autopay_on", None, None))
    out = rewards(decisions(decision("d1")), e, config=DEFAULT_CONFIG)
    assert out["current"].tolist() == [True] * 3
    assert out["reward"].tolist() == [1.0, 0.0, 0.0]
    unknown = rewards(decisions(decision("d1", borrower=9)), e, config=DEFAULT_CONFIG)
    assert unknown["current"].isna().all()
    assert unknown["reward"].tolist() == [0.0, 0.0, 0.0]


def test_weights_combine_acceptance_and_currentness():
    config = parse_reward_config(
        {**DEFAULT_CONFIG.model_dump(), "weights": {"accepted": 0.25, "current": 1.0}}, source="t"
    )
    e = events(*_money(7, True), (7, T0 + timedelta(hours=1), "autopay_on", None, None))
    out = rewards(decisions(decision("d1")), e, config=config)
    assert out["reward"].tolist() == [1.25, 0.0, 0.0]


def test_an_option_outside_the_catalog_is_refused_naming_it():
    bad = decision("d1", order=("autopay_enroll", "teleport", "pay_now"))
    bad = DecisionRecord(
        **{
            **bad.__dict__,
            "candidates": (*bad.candidates, "teleport"),
            "features": np.zeros((9, 2), np.float32),
            "scores": np.zeros(9),
        }
    )
    with pytest.raises(SchemaError, match="teleport"):
        rewards(decisions(bad), events())


# --------------------------------------------------------------------------- property


_OFFSETS = st.integers(min_value=-3 * 86_400, max_value=10 * 86_400)


@settings(max_examples=60, deadline=None)
@given(
    offsets=st.lists(
        st.tuples(_OFFSETS, st.sampled_from(["autopay_on", "payment_late", "login"])), max_size=8
    ),
    gap=st.integers(min_value=0, max_value=5 * 86_400),
)
def test_no_event_at_or_before_its_decision_ever_counts(offsets, gap):
    """Planted events before, at and after two decisions: a credit needs one strictly after.

    Every credited row must have a matching event in ``(ts, ts + window]``; dropping all
    events strictly after the first decision credits nothing at all.
    """
    first = decision("d1", ts=T0)
    second = decision("d2", ts=T0 + timedelta(seconds=gap))
    planted = [(7, T0 + timedelta(seconds=s), kind, 10.0, None) for s, kind in offsets]
    # events exactly at each decision's time are always planted too
    planted += [(7, T0, "autopay_on", None, None), (7, second.ts, "payment_late", 10.0, None)]
    e = events(*planted)
    out = rewards(decisions(first, second), e)
    for row in out.loc[out["accepted"]].itertuples():
        rule = ACCEPT_ONLY.options[row.option_id]
        kinds = {m.event_type for m in rule.events}
        hits = e.loc[
            e["event_type"].isin(kinds)
            & (e["ts"] > row.ts)
            & (e["ts"] <= row.ts + pd.Timedelta(days=rule.window_days))
        ]
        assert len(hits) > 0
    credits = int(out["accepted"].sum())
    matching = e.loc[e["event_type"].isin({"autopay_on", "payment_late", "payment_on_time"})]
    assert credits <= len(matching.loc[matching["ts"] > pd.Timestamp(T0)])
    before = e.loc[e["ts"] <= pd.Timestamp(T0)]
    assert not rewards(decisions(first), before)["accepted"].any()


# --------------------------------------------------------------------------- config


def test_packaged_default_covers_the_catalog():
    assert set(DEFAULT_CONFIG.options) == set(OPTION_IDS)
    assert load_reward_config() == DEFAULT_CONFIG


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda c: c["options"].update(teleport=c["options"]["pay_now"]), "teleport"),
        (lambda c: c["options"].pop("pay_now"), "pay_now"),
        (lambda c: c["options"]["pay_now"].update(events=[{"event_type": "paid"}]), "paid"),
        (
            lambda c: c["options"]["reminder_sms"].update(
                events=[{"event_type": "reminder_on", "channel": "fax"}]
            ),
            "fax",
        ),
        (lambda c: c["options"]["pay_now"].update(window_days=0), "window_days"),
        (lambda c: c.update(weights={"accepted": 0, "current": 0}), "weights"),
        (lambda c: c.update(current_after_days=-1), "current_after_days"),
        (lambda c: c.update(bonus=1), "bonus"),
    ],
)
def test_bad_configs_are_refused_naming_the_offender(change, named):
    data = DEFAULT_CONFIG.model_dump(mode="json")
    change(data)
    with pytest.raises(ConfigError, match=named):
        parse_reward_config(data, source="rewards.yaml")


def test_a_config_file_is_read_and_a_broken_one_named(tmp_path: Path):
    good = tmp_path / "r.yaml"
    good.write_text("weights: {accepted: 1, current: 0}\n" + _options_yaml())
    assert load_reward_config(good).weights.accepted == 1
    broken = tmp_path / "b.yaml"
    broken.write_text("options: [1, 2\n")
    with pytest.raises(ConfigError, match=r"b\.yaml"):
        load_reward_config(broken)


def _options_yaml() -> str:
    import yaml

    return yaml.safe_dump({"options": DEFAULT_CONFIG.model_dump(mode="json")["options"]})


def test_a_plans_reaging_payment_never_completes_pay_now():
    """plan_accepted then a payment of the same amount a second later is the plan's booking."""
    order = ("payment_plan", "pay_now", "autopay_enroll")
    at = T0 + timedelta(hours=1)
    booked = events(
        *_money(7, False),
        (7, at, "plan_accepted", 100.0, None),
        (7, at + timedelta(seconds=1), "payment_late", 100.0, None),
    )
    out = rewards(decisions(decision("d1", order=order)), booked, config=DEFAULT_CONFIG)
    assert out["accepted"].tolist() == [True, False, False]
    assert out["current"].tolist() == [True] * 3  # the payment still counts for the money
    paid = events(*_money(7, False), (7, at, "payment_late", 100.0, None))
    out = rewards(decisions(decision("d1", order=order)), paid, config=DEFAULT_CONFIG)
    assert out["accepted"].tolist() == [False, True, False]
