"""The simulator as an environment (attune.simulator.environment); true values in reward units."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from attune.data.schema import OPTION_IDS, TOUCHPOINTS
from attune.errors import InvalidInput
from attune.experiments.assignment import hash_borrower
from attune.online.events import ServicingEvent
from attune.rewards.attribution import attribute_rewards, hash_events
from attune.rewards.config import DEFAULT_CONFIG
from attune.rewards.true_value import ALL_SLATES, TrueValue, oracle_share
from attune.serving.decision_log import DecisionRecord, records_to_table
from attune.simulator.environment import ServedSlate, SimulatorEnvironment
from attune.simulator.generator import GenerateConfig, generate

T = datetime(2026, 12, 4, 9, tzinfo=UTC)
SALT = "env-salt"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("env") / "h")
    generate(
        GenerateConfig(borrowers=300, months=3, seed=11, out=out, parallel="local"), progress=False
    )
    return out


@pytest.fixture(scope="module")
def true_value(history: str) -> TrueValue:
    return TrueValue(SimulatorEnvironment.from_history(history, seed=0), DEFAULT_CONFIG)


def _latest_rows(env: SimulatorEnvironment) -> np.ndarray:
    """One presentation per borrower (its latest), so no two decisions share a borrower."""
    return np.array(sorted(env._latest.values()), dtype=np.int64)


def _slates(env: SimulatorEnvironment, rows: np.ndarray, options: np.ndarray, at: datetime):
    s = env.states
    return [
        ServedSlate(
            borrower_id=int(s.borrower_id[r]),
            ts=at,
            touchpoint=TOUCHPOINTS[int(s.touchpoint[r])],
            options=tuple(OPTION_IDS[i] for i in o),
            presentation_id=int(s.presentation_id[r]),
        )
        for r, o in zip(rows.tolist(), options.tolist(), strict=True)
    ]


def _random_options(n: int, seed: int) -> np.ndarray:
    return ALL_SLATES[np.random.default_rng(seed).integers(0, len(ALL_SLATES), n)]


def test_same_seed_same_events_other_seed_other_events(history: str) -> None:
    env = SimulatorEnvironment.from_history(history, seed=3)
    rows = _latest_rows(env)
    slates = _slates(env, rows, _random_options(rows.size, 1), T)
    first = env.answer(slates)
    again = SimulatorEnvironment.from_history(history, seed=3).answer(slates)
    other = SimulatorEnvironment.from_history(history, seed=4).answer(slates)
    assert first == again
    assert first != other
    assert len(first) > 50


def test_answers_do_not_depend_on_batching(history: str) -> None:
    env = SimulatorEnvironment.from_history(history, seed=3)
    rows = _latest_rows(env)[:60]
    slates = _slates(env, rows, _random_options(rows.size, 2), T)
    together = env.answer(slates)
    alone = SimulatorEnvironment.from_history(history, seed=3)
    one_by_one = sorted(
        (e for s in slates for e in alone.answer([s])), key=lambda e: (e["ts"], e["event_id"])
    )
    assert together == one_by_one


def test_events_are_postable_and_strictly_after_their_decision(history: str) -> None:
    env = SimulatorEnvironment.from_history(history, seed=5)
    rows = _latest_rows(env)
    slates = _slates(env, rows, _random_options(rows.size, 3), T)
    events = env.answer(slates)
    who = {s.borrower_id for s in slates}
    for e in events:
        parsed = ServicingEvent.model_validate(e)
        assert parsed.ts > T
        assert parsed.borrower_id in who
    assert len({e["event_id"] for e in events}) == len(events)


def test_bad_slates_are_refused_naming_the_problem(history: str) -> None:
    env = SimulatorEnvironment.from_history(history, seed=0)
    good = _slates(env, _latest_rows(env)[:1], ALL_SLATES[:1], T)[0]
    other_touch = next(t for t in TOUCHPOINTS if t != good.touchpoint)
    cases = [
        (ServedSlate(**{**good.__dict__, "options": ("teleport",)}), "teleport"),
        (ServedSlate(**{**good.__dict__, "options": ("pay_now", "pay_now")}), "distinct"),
        (ServedSlate(**{**good.__dict__, "touchpoint": other_touch}), other_touch),
        (ServedSlate(**{**good.__dict__, "borrower_id": good.borrower_id + 10_000}), "belongs"),
        (ServedSlate(**{**good.__dict__, "ts": datetime(2026, 1, 1)}), "time zone"),
        (ServedSlate(**{**good.__dict__, "presentation_id": 1}), "presentation 1"),
    ]
    for slate, named in cases:
        with pytest.raises(InvalidInput, match=named):
            env.answer([slate])


def test_current_borrowers_expected_reward_is_the_closed_form(true_value: TrueValue) -> None:
    """Without arrears the loan stays current: E[reward] = sum_k b_k * p_complete (defaults)."""
    s = true_value.states
    rows = np.flatnonzero(s.owed_cents == 0)[:200]
    options = _random_options(rows.size, 7)
    b = true_value.env.position_bias
    closed = (s.p_complete[rows[:, None], options] * b[None, :]).sum(axis=1)
    assert true_value.expected(rows, options) == pytest.approx(closed, abs=1e-12)


def test_references_bracket_every_policy(true_value: TrueValue) -> None:
    pids = true_value.states.presentation_id[:150]
    ref = true_value.reference(pids)
    assert ref["random"] < ref["best_fixed"] < ref["oracle"]
    rows = true_value.states.rows(pids)
    oracle = true_value.expected(rows, true_value.oracle_slates(pids)).mean()
    assert oracle_share(float(oracle), ref) == pytest.approx(1.0)
    scores = np.random.default_rng(0).random((pids.size, len(OPTION_IDS)))
    assert ref["random"] - 0.05 < true_value.policy_value(pids, scores) < ref["oracle"]


def test_empirical_reward_of_answered_slates_matches_the_true_value(history: str) -> None:
    """Answer 40 rounds of one slate per borrower, attribute with `attribute_rewards`:
    the mean total reward per decision is within 4 standard errors of the true value."""
    env = SimulatorEnvironment.from_history(history, seed=21, history_ledger=False)
    tv = TrueValue(env, DEFAULT_CONFIG)
    rows = _latest_rows(env)
    records, events, expected = [], [], []
    for r in range(40):
        at = T + timedelta(days=30 * r)
        options = _random_options(rows.size, 100 + r)
        slates = _slates(env, rows, options, at)
        events.extend(env.answer(slates))
        expected.append(tv.expected(rows, options))
        for i, slate in enumerate(slates):
            order = slate.options + tuple(o for o in OPTION_IDS if o not in slate.options)
            records.append(
                DecisionRecord(
                    decision_id=f"{r}-{i}",
                    ts=at,
                    role="primary",
                    borrower_hash=hash_borrower(slate.borrower_id, salt=SALT),
                    arm="champion",
                    model_version="v",
                    feature_spec_hash="s",
                    touchpoint=slate.touchpoint,
                    feature_source="request",
                    candidates=tuple(OPTION_IDS),
                    features=np.zeros((len(OPTION_IDS), 1), dtype=np.float32),
                    scores=np.zeros(len(OPTION_IDS)),
                    returned_order=order,
                    propensities=None,
                    latency_ms=0.0,
                )
            )
    frame = pd.DataFrame(events)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    table = attribute_rewards(
        records_to_table(records).to_pandas(),
        hash_events(frame, salt=SALT),
        DEFAULT_CONFIG,
        as_of=T + timedelta(days=30 * 41),
    ).to_pandas()
    per_decision = table.groupby("decision_id")["reward"].sum()
    assert len(per_decision) == len(records)
    truth = float(np.concatenate(expected).mean())
    se = float(per_decision.std(ddof=1)) / np.sqrt(len(per_decision))
    assert abs(per_decision.mean() - truth) < 4 * se
    assert truth > 0.05  # the check has something to measure
