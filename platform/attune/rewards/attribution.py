"""Reward rows: served decisions joined with the servicing events that followed them.

:func:`attribute_rewards` is the whole rule on in-memory frames (one process);
:mod:`attune.rewards.job` runs the same function per borrower bucket on Ray Data.

One row per primary decision and shown position (positions ``1..slate_size`` of the
returned order), :data:`REWARD_SCHEMA`. The decision log holds ``borrower_hash``, the
salted hash of the borrower id, never the id: events are joined by hashing their
borrower ids with the same salt (:func:`attune.experiments.assignment.hash_borrower`).

Attribution (docs/rewards.md):

* an event counts for a decision only when ``decision.ts < event.ts <= decision.ts +
  window_days(option)``; events at or before the decision never count;
* each completion event credits one shown option: of the decisions of that borrower whose
  window holds the event and that showed a matching option, the latest (last touch); in
  that decision, each event (in time order) credits the first matching option (by
  position) no earlier event credited; a plan's re-aging payment (a payment of the
  arrears right after ``plan_accepted``) is bookkeeping, not a payment, and credits nothing;
* ``current`` is the history's money rule at ``decision.ts + current_after_days``: the
  cents of ``payment_on_time`` / ``payment_late`` / ``payment_partial`` cover the cents of
  ``installment_due``; null when no event of the borrower is known by then;
* a decision is left out, not scored, until every one of its windows has closed
  (``window_end <= as_of``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from attune.data.schema import OPTION_IDS
from attune.errors import SchemaError
from attune.experiments.assignment import hash_borrower
from attune.rewards.config import RewardConfig

REWARD_SCHEMA = pa.schema(
    [
        pa.field("decision_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("borrower_hash", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("feature_spec_hash", pa.string(), nullable=False),
        pa.field("touchpoint", pa.string(), nullable=False),
        pa.field("option_id", pa.string(), nullable=False),
        pa.field("position", pa.int16(), nullable=False),
        pa.field("propensity", pa.float64(), nullable=True),
        pa.field("features", pa.list_(pa.float32()), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("accepted", pa.bool_(), nullable=False),
        pa.field("current", pa.bool_(), nullable=True),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("window_end", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

#: Decision-log columns the attribution reads.
DECISION_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "ts",
    "role",
    "borrower_hash",
    "arm",
    "model_version",
    "feature_spec_hash",
    "touchpoint",
    "candidates",
    "features",
    "scores",
    "returned_order",
    "propensities",
)
#: Event columns the attribution reads (``borrower_hash`` replaces ``borrower_id``).
EVENT_COLUMNS: tuple[str, ...] = ("borrower_hash", "ts", "event_type", "amount", "channel")
_PAID = ("payment_on_time", "payment_late", "payment_partial")
_DUE = "installment_due"
#: A payment this many seconds after a ``plan_accepted`` of its amount is the plan's re-aging.
REAGING_S = 60
#: Event types the money rule reads.
MONEY_TYPES: frozenset[str] = frozenset((*_PAID, _DUE))


def relevant_event_types(config: RewardConfig) -> frozenset[str]:
    """Event types :func:`attribute_rewards` reads under ``config`` (others can be dropped)."""
    return config.event_types | MONEY_TYPES | {"plan_accepted"}


def hash_events(events: pd.DataFrame, *, salt: str) -> pd.DataFrame:
    """``events`` (history schema) hashed: :data:`EVENT_COLUMNS`, ``borrower_hash`` for the id."""
    ids = events["borrower_id"].to_numpy()
    unique, inverse = np.unique(ids, return_inverse=True)
    hashes = np.array([hash_borrower(int(b), salt=salt) for b in unique], dtype=object)
    out = events.loc[:, ["ts", "event_type", "amount", "channel"]].copy()
    out.insert(0, "borrower_hash", hashes[inverse] if len(ids) else np.array([], dtype=object))
    return out.reset_index(drop=True)


def shown_rows(decisions: pd.DataFrame, config: RewardConfig) -> pd.DataFrame:
    """One row per primary decision and shown position, with its logged features and score.

    Raises :class:`SchemaError` for a shown option outside the catalog or a returned
    option that is not among the decision's candidates.
    """
    d = decisions.loc[decisions["role"] == "primary"].reset_index(drop=True)
    columns = [*REWARD_SCHEMA.names]
    if d.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    rows: dict[str, list[object]] = {
        name: []
        for name in (
            "i",
            "option_id",
            "position",
            "propensity",
            "features",
            "score",
        )
    }
    for i, (decision_id, candidates, features, scores, order, props) in enumerate(
        zip(
            d["decision_id"],
            d["candidates"],
            d["features"],
            d["scores"],
            d["returned_order"],
            d["propensities"],
            strict=True,
        )
    ):
        index = {c: j for j, c in enumerate(candidates)}
        for k, option in enumerate(list(order)[: config.slate_size]):
            if option not in config.options:
                raise SchemaError(
                    file="decisions",
                    column="returned_order",
                    problem=f"decision {decision_id}: option {option!r} is not in the catalog "
                    f"({', '.join(OPTION_IDS)})",
                )
            if option not in index:
                raise SchemaError(
                    file="decisions",
                    column="returned_order",
                    problem=f"decision {decision_id}: {option!r} is not among its candidates",
                )
            j = index[option]
            rows["i"].append(i)
            rows["option_id"].append(option)
            rows["position"].append(k + 1)
            has = props is not None and len(props) > k and props[k] is not None
            rows["propensity"].append(float(props[k]) if has else None)
            rows["features"].append(np.asarray(features[j], dtype=np.float32))
            rows["score"].append(float(scores[j]))
    idx = np.asarray(rows.pop("i"), dtype=np.int64)
    out = d.loc[idx, ["decision_id", "ts", "borrower_hash", "arm", "model_version"]]
    out = out.assign(
        feature_spec_hash=d["feature_spec_hash"].to_numpy()[idx],
        touchpoint=d["touchpoint"].to_numpy()[idx],
        **rows,
    )
    return out.reset_index(drop=True)


def _credited(rows: pd.DataFrame, events: pd.DataFrame, config: RewardConfig) -> np.ndarray:
    """Which of ``rows`` a completion event credits (see the module docstring)."""
    accepted = np.zeros(len(rows), dtype=bool)
    if rows.empty or events.empty:
        return accepted
    rules = [
        (option, match.key, rule.window_days)
        for option, rule in config.options.items()
        for match in rule.events
    ]
    rule_frame = pd.DataFrame(rules, columns=["option_id", "key", "window_days"])
    wanted = rows.reset_index(names="row").merge(rule_frame, on="option_id")
    completing = events["event_type"].isin(config.event_types).to_numpy()
    ev = events.loc[completing & ~_reaging_payments(events)].reset_index(drop=True)
    if ev.empty or wanted.empty:
        return accepted
    ev = ev.reset_index(names="event")
    channel = ev["channel"].where(ev["channel"].notna(), "*").astype(str)
    keyed = pd.concat(
        [
            ev.assign(key=ev["event_type"].astype(str) + "|" + channel),
            ev.assign(key=ev["event_type"].astype(str) + "|*"),
        ],
        ignore_index=True,
    ).drop_duplicates(["event", "key"])
    pairs = wanted.merge(
        keyed[["event", "borrower_hash", "key", "ts"]].rename(columns={"ts": "event_ts"}),
        on=["borrower_hash", "key"],
    )
    end = pairs["ts"] + pd.to_timedelta(pairs["window_days"], unit="D")
    pairs = pairs.loc[(pairs["event_ts"] > pairs["ts"]) & (pairs["event_ts"] <= end)]
    if pairs.empty:
        return accepted
    # last touch: each event goes to the latest decision that could claim it
    pairs = pairs.sort_values(["event", "ts", "decision_id"])
    latest = pairs.groupby("event")[["ts", "decision_id"]].transform("last")
    pairs = pairs.loc[
        (pairs["ts"] == latest["ts"]) & (pairs["decision_id"] == latest["decision_id"])
    ]
    # inside a decision: each event, in time order, credits the first matching option (by
    # position) that no earlier event credited
    pairs = pairs.drop_duplicates(["event", "row"]).sort_values(
        ["decision_id", "event_ts", "event", "position"], kind="stable"
    )
    used_events: set[int] = set()
    matched: set[int] = set()
    for event, row in zip(pairs["event"].tolist(), pairs["row"].tolist(), strict=True):
        if event in used_events or row in matched:
            continue
        used_events.add(event)
        matched.add(row)
    accepted[list(matched)] = True
    return accepted


def _reaging_payments(events: pd.DataFrame) -> np.ndarray:
    """Payments that book a plan's re-aging (after a ``plan_accepted`` of the same amount).

    The history has no adjustment event type, so a plan accepted while delinquent is
    booked as ``plan_accepted`` then a ``payment_late`` of the arrears re-aged, within
    :data:`REAGING_S` (docs/simulator.md): not a payment the borrower made, so it never
    completes a payment option.
    """
    out = np.zeros(len(events), dtype=bool)
    kind = events["event_type"]
    pay = events.loc[kind.isin(_PAID), ["borrower_hash", "ts", "amount"]]
    plans = events.loc[kind == "plan_accepted", ["borrower_hash", "ts", "amount"]]
    if pay.empty or plans.empty:
        return out
    joined = pd.merge_asof(
        pay.reset_index(names="i").sort_values("ts", kind="stable"),
        plans.rename(columns={"amount": "plan_amount"}).sort_values("ts", kind="stable"),
        on="ts",
        by="borrower_hash",
        direction="backward",
        tolerance=pd.Timedelta(seconds=REAGING_S),
    )
    hit = joined["plan_amount"].notna() & np.isclose(
        joined["amount"].fillna(-1.0), joined["plan_amount"].fillna(-2.0)
    )
    out[joined.loc[hit, "i"].to_numpy()] = True
    return out


def _current(rows: pd.DataFrame, events: pd.DataFrame, config: RewardConfig) -> np.ndarray:
    """The money rule at ``ts + current_after_days`` per row: True, False or None.

    None when no event of the borrower is known by then; a borrower whose known events
    hold no installment owes nothing, so is current.
    """
    out = np.full(len(rows), None, dtype=object)
    if rows.empty or events.empty:
        return out
    kind = events["event_type"].to_numpy()
    cents = np.round(events["amount"].fillna(0.0).to_numpy(dtype=np.float64) * 100)
    owed = np.where(kind == _DUE, cents, np.where(np.isin(kind, _PAID), -cents, 0.0))
    ledger = pd.DataFrame(
        {
            "borrower_hash": events["borrower_hash"].to_numpy(),
            "at": events["ts"].to_numpy(),
            "owed": owed.astype(np.int64),
            "seen": np.ones(len(events), dtype=np.int64),
        }
    ).sort_values(["borrower_hash", "at"], kind="stable")
    ledger[["owed", "seen"]] = ledger.groupby("borrower_hash")[["owed", "seen"]].cumsum()
    ledger = ledger.sort_values("at", kind="stable")
    judge = pd.DataFrame(
        {
            "borrower_hash": rows["borrower_hash"].to_numpy(),
            "at": (rows["ts"] + timedelta(days=config.current_after_days)).to_numpy(),
            "row": np.arange(len(rows)),
        }
    ).sort_values("at", kind="stable")
    joined = pd.merge_asof(judge, ledger, on="at", by="borrower_hash", direction="backward")
    known = joined["seen"].fillna(0).to_numpy() > 0
    values = joined["owed"].fillna(0).to_numpy() <= 0
    out[joined["row"].to_numpy()[known]] = values[known]
    return out


def attribute_rewards(
    decisions: pd.DataFrame,
    events: pd.DataFrame,
    config: RewardConfig,
    *,
    as_of: datetime,
) -> pa.Table:
    """Reward rows (:data:`REWARD_SCHEMA`) of the decisions whose windows closed by ``as_of``.

    ``decisions`` has the decision log's :data:`DECISION_COLUMNS` (any roles; only
    ``primary`` rows are scored); ``events`` has :data:`EVENT_COLUMNS` (see
    :func:`hash_events`) and may hold events of any borrowers and times. Rows are sorted by
    ``ts``, ``decision_id``, ``position``.
    """
    rows = shown_rows(decisions, config)
    if rows.empty:
        return REWARD_SCHEMA.empty_table()
    as_of_ts = pd.Timestamp(as_of)
    if as_of_ts.tzinfo is None:
        as_of_ts = as_of_ts.tz_localize("UTC")
    rows["ts"] = pd.to_datetime(rows["ts"], utc=True)
    windows = rows["option_id"].map(config.window_days)
    per_row = np.maximum(windows.to_numpy(dtype=np.float64), config.current_after_days)
    rows["window_end"] = rows["ts"] + pd.to_timedelta(per_row, unit="D")
    closed = rows.groupby("decision_id")["window_end"].transform("max") <= as_of_ts
    rows = rows.loc[closed].reset_index(drop=True)
    if rows.empty:
        return REWARD_SCHEMA.empty_table()
    ev = events.loc[events["borrower_hash"].isin(set(rows["borrower_hash"]))].copy()
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    rows["accepted"] = _credited(rows, ev, config)
    current = _current(rows, ev, config)
    rows["current"] = pd.array(current, dtype="boolean")
    rows["reward"] = rows["accepted"] * (
        config.weights.accepted
        + config.weights.current * np.asarray(current == True, dtype=np.float64)  # noqa: E712
    )
    rows = rows.sort_values(["ts", "decision_id", "position"], kind="stable")
    return _to_table(rows)


def _to_table(rows: pd.DataFrame) -> pa.Table:
    arrays = []
    for field in REWARD_SCHEMA:
        col = rows[field.name]
        if field.name == "features":
            arrays.append(pa.array([np.asarray(f, dtype=np.float32) for f in col], type=field.type))
        elif field.name in ("current", "propensity"):
            arrays.append(pa.array(col.astype(object).where(col.notna(), None), type=field.type))
        else:
            arrays.append(pa.array(col.to_numpy(), type=field.type))
    return pa.Table.from_arrays(arrays, schema=REWARD_SCHEMA)
