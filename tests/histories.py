"""Small, seeded servicing histories in the layout of contracts §1, for tests and benches.

Not a behaviour model (that is the simulator's job): events and presentations are
drawn at random, vectorized, so any size is cheap, and every table is valid against
``attune.data.schema``. Timestamps are microsecond-distinct per borrower only by
chance, which is what point-in-time code must cope with anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from attune import storage
from attune.data.schema import (
    BORROWERS,
    CHANNELS,
    EVENTS,
    LOANS,
    OPTION_IDS,
    PRESENTATIONS,
    PROTECTED,
    SCHEMA_VERSION,
    SLATE_SIZE,
    TOUCHPOINTS,
)

START = pd.Timestamp("2024-01-01", tz="UTC")
_DAY_US = 86_400_000_000
_MONTH_US = 30 * _DAY_US
# (event type, expected count per borrower-month)
_RATES = (
    ("login", 3.0),
    ("outreach_sent", 2.0),
    ("inbound_contact", 0.3),
    ("autopay_on", 0.05),
    ("autopay_off", 0.04),
    ("hardship_flag", 0.03),
    ("plan_offered", 0.05),
    ("plan_accepted", 0.03),
    ("plan_broken", 0.02),
)


@dataclass(frozen=True)
class History:
    """The tables of one history as pandas frames (schema column order and types)."""

    borrowers: pd.DataFrame
    loans: pd.DataFrame
    events: pd.DataFrame
    presentations: pd.DataFrame
    protected: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "borrowers": self.borrowers,
            "loans": self.loans,
            "events": self.events,
            "presentations": self.presentations,
            "protected": self.protected,
        }


def _ts(us: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(us, unit="us", utc=True)).astype("datetime64[us, UTC]")


def make_history(
    *, borrowers: int = 40, months: int = 6, seed: int = 0, presentations_per_month: float = 2.0
) -> History:
    """A random history of ``borrowers`` over ``months`` (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    start = int(START.value // 1000)
    span = months * _MONTH_US
    ids = np.arange(1, borrowers + 1, dtype=np.int64) * 7 + 100  # not dense, not 0-based
    people = pd.DataFrame(
        {
            "borrower_id": ids,
            "signup_ts": _ts(start - rng.integers(30, 400, borrowers) * _DAY_US),
            "state": rng.choice(["CA", "TX", "NY", "FL"], borrowers),
            "income_monthly": rng.uniform(1500, 9000, borrowers).round(2),
            "income_volatility": rng.uniform(0, 0.6, borrowers).round(3),
            "preferred_channel": rng.choice(list(CHANNELS), borrowers),
        }
    )
    installment = rng.uniform(100, 600, borrowers).round(2)
    loans = pd.DataFrame(
        {
            "loan_id": ids * 10,
            "borrower_id": ids,
            "origination_ts": _ts(start - rng.integers(0, 200, borrowers) * _DAY_US),
            "principal": (installment * 30).round(2),
            "apr": rng.uniform(0.05, 0.3, borrowers).round(4),
            "term_months": rng.choice([24, 36, 48], borrowers).astype(np.int32),
            "installment": installment,
        }
    )
    frames = []
    # one installment a month, and at most one payment event for it
    month_idx = np.repeat(np.arange(months), borrowers)
    who = np.tile(np.arange(borrowers), months)
    due_us = start + month_idx * _MONTH_US + rng.integers(0, 28, len(who)) * _DAY_US
    frames.append(_events(who, due_us, "installment_due", installment[who], ids))
    kind = rng.choice(
        ["payment_on_time", "payment_late", "payment_partial", "payment_missed"],
        len(who),
        p=[0.7, 0.12, 0.1, 0.08],
    )
    lag = np.where(kind == "payment_on_time", -rng.integers(0, 3, len(who)), 1)
    lag = np.where(kind == "payment_late", rng.integers(3, 40, len(who)), lag)
    pay_us = due_us + lag * _DAY_US + rng.integers(0, _DAY_US, len(who))
    amount = np.where(kind == "payment_partial", installment[who] * 0.5, installment[who])
    amount = np.where(kind == "payment_missed", 0.0, amount)
    for k in np.unique(kind):
        sel = kind == k
        frames.append(_events(who[sel], pay_us[sel], str(k), amount[sel], ids))
    for event_type, rate in _RATES:
        n = rng.poisson(rate * months, borrowers)
        who_e = np.repeat(np.arange(borrowers), n)
        at = start + rng.integers(0, span, len(who_e))
        channel = rng.choice(list(CHANNELS), len(who_e)) if event_type == "outreach_sent" else None
        frames.append(_events(who_e, at, event_type, np.zeros(len(who_e)), ids, channel))
        if event_type == "outreach_sent":
            # delivered -> opened -> clicked funnels a few minutes apart
            alive = np.ones(len(who_e), dtype=bool)
            for step, p in (
                ("outreach_delivered", 0.9),
                ("outreach_opened", 0.5),
                ("outreach_clicked", 0.3),
            ):
                alive &= rng.random(len(who_e)) < p
                at = at + rng.integers(60, 3600, len(who_e)) * 1_000_000
                frames.append(
                    _events(
                        who_e[alive],
                        at[alive],
                        step,
                        np.zeros(alive.sum()),
                        ids,
                        channel[alive] if channel is not None else None,
                    )
                )
    events = pd.concat(frames, ignore_index=True)
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    events["event_id"] = [f"e{i:09d}" for i in range(len(events))]
    events = events[EVENTS.names]
    shown = _presentations(rng, ids, start, span, months * presentations_per_month)
    protected = pd.DataFrame(
        {
            "borrower_id": ids,
            "age_band": rng.choice(["18-29", "30-49", "50+"], borrowers),
            "gender": rng.choice(["f", "m", "x"], borrowers),
            "ethnicity": rng.choice(["a", "b", "c"], borrowers),
        }
    )
    return History(people, loans, events, shown, protected)


def _events(
    who: np.ndarray,
    at: np.ndarray,
    event_type: str,
    amount: np.ndarray,
    ids: np.ndarray,
    channel: np.ndarray | None = None,
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "borrower_id": ids[who],
            "loan_id": ids[who] * 10,
            "ts": _ts(at),
            "event_type": event_type,
            "amount": np.asarray(amount, dtype=np.float64).round(2),
            "channel": channel if channel is not None else None,
        }
    )


def _presentations(
    rng: np.random.Generator, ids: np.ndarray, start: int, span: int, per_borrower: float
) -> pd.DataFrame:
    n = rng.poisson(per_borrower, len(ids))
    who = np.repeat(np.arange(len(ids)), n)
    at = start + rng.integers(0, span, len(who))
    order = np.argsort(at, kind="stable")
    who, at = who[order], at[order]
    count = len(who)
    slates = np.argsort(rng.random((count, len(OPTION_IDS))), axis=1)[:, :SLATE_SIZE]
    rows = count * SLATE_SIZE
    response = rng.choice([0, 1, 2], rows, p=[0.6, 0.25, 0.15]).astype(np.int8)
    return pd.DataFrame(
        {
            "presentation_id": np.repeat(np.arange(count, dtype=np.int64) + 1000, SLATE_SIZE),
            "borrower_id": np.repeat(ids[who], SLATE_SIZE),
            "loan_id": np.repeat(ids[who] * 10, SLATE_SIZE),
            "ts": _ts(np.repeat(at, SLATE_SIZE)),
            "touchpoint": np.repeat(rng.choice(list(TOUCHPOINTS), count), SLATE_SIZE),
            "option_id": np.asarray(OPTION_IDS, dtype=object)[slates.ravel()],
            "position": np.tile(np.arange(1, SLATE_SIZE + 1, dtype=np.int8), count),
            "propensity": rng.uniform(0.05, 1.0, rows).round(4),
            "response": response,
            "current_14d": rng.random(rows) < 0.8,
        }
    )


_SCHEMAS = {
    "borrowers": BORROWERS,
    "loans": LOANS,
    "events": EVENTS,
    "presentations": PRESENTATIONS,
    "protected": PROTECTED,
}


def to_arrow(frame: pd.DataFrame, name: str) -> pa.Table:
    """``frame`` as a table with the exact schema of history table ``name``."""
    return pa.Table.from_pandas(frame, schema=_SCHEMAS[name], preserve_index=False)


def write_history(history: History, root: str, *, files: int = 2) -> str:
    """Write ``history`` under ``root`` (local or s3://) in the layout of contracts §1.

    ``events`` and ``presentations`` go to ``month=YYYY-MM`` partitions with up to
    ``files`` files each; the others to ``files`` part files. Returns ``root``.
    """
    fs, base = storage.pyarrow_filesystem(root)
    for name, frame in history.tables().items():
        if name in ("events", "presentations"):
            month = frame["ts"].dt.strftime("%Y-%m")
            groups = [(f"{name}/month={m}", part) for m, part in frame.groupby(month, sort=True)]
        else:
            groups = [(name, frame)]
        for folder, part in groups:
            chunks = np.array_split(np.arange(len(part)), files)
            for i, rows in enumerate(chunks):
                if len(rows) or i == 0:
                    path = f"{base}/{folder}/part-{i:05d}.parquet"
                    if not storage.is_s3(root):
                        fs.create_dir(f"{base}/{folder}", recursive=True)
                    pq.write_table(to_arrow(part.iloc[rows], name), path, filesystem=fs)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "seed": None,
        "borrowers": len(history.borrowers),
        "months": None,
        "counts": {k: len(v) for k, v in history.tables().items()},
    }
    storage.write_json(storage.join(root, "manifest.json"), manifest)
    return root
