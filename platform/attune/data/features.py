"""Point-in-time borrower features, candidate rows and the model matrix: the ONE implementation.

``attune preprocess`` (training data), ``attune features materialize`` (the online
snapshot) and the serving path all call these functions, so a feature has exactly
one definition. Everything is vectorized over numpy/pandas columns; there is no
per-row or per-borrower Python loop.

Point in time. A feature for a query ``(borrower_id, ts)`` uses only events with
``event.ts < ts`` (strictly before). A window of ``W`` days is ``[ts - W d, ts)``.
Counts are exact integers; money is summed in integer cents so that sums do not
depend on how rows are grouped.

Borrower features (``attune.data.spec.BORROWER_FEATURES``, all ``float32``):

====================== ========================================================
``pay_on_time_W``       ``payment_on_time`` events in the last W = 30/90/180 days
``pay_late_90``         ``payment_late`` events in the last 90 days
``pay_partial_90``      ``payment_partial`` events in the last 90 days
``pay_missed_W``        ``payment_missed`` events in the last W = 90/180 days
``on_time_rate_180``    on-time / (on-time + late + partial + missed) over 180 days;
                        0 when there were none
``days_past_due``       days from the due time of the oldest installment not
                        covered by payments (cumulative ``installment_due`` amounts
                        vs cumulative amounts of on-time/late/partial payments) to
                        ``ts``; 0 when every installment due so far is covered
``days_since_last_payment``  days since the last on-time/late/partial payment,
                        capped at 365 (365 when there was none)
``autopay_on``          1 when the last ``autopay_on``/``autopay_off`` event was
                        ``autopay_on`` (``off`` wins a tie), else 0
``open_rate_C_90``      ``outreach_opened`` / ``outreach_delivered`` on channel C =
                        sms/email/push over 90 days, clipped to [0, 1]; 0 when
                        nothing was delivered
``click_rate_90``       ``outreach_clicked`` / ``outreach_delivered`` over all
                        channels, 90 days, clipped to [0, 1]; 0 when none
``contacts_7d/_30d``    ``outreach_sent`` events in the last 7 / 30 days (fatigue)
``days_since_last_contact``  days since the last ``outreach_sent``, capped at 365
``inbound_contacts_90`` ``inbound_contact`` events in the last 90 days
``logins_30``           ``login`` events in the last 30 days
``hardship_180``        ``hardship_flag`` events in the last 180 days
``plans_accepted_180``  ``plan_accepted`` events in the last 180 days
``plans_broken_180``    ``plan_broken`` events in the last 180 days
``balance``             what is left on the schedule, ``installment * term_months *
                        (1 - term_progress)``, plus the amount past due (installments
                        due minus payments made, floored at 0); robust to histories
                        that start after the loan did
``apr``                 the loan's APR, as stored
``term_progress``       (ts - origination) / (term_months * 30.4375 d), in [0, 1]
``installment_to_income``  installment / monthly income
``income_volatility``   from the borrowers table
====================== ========================================================

The loan is the borrower's most recent loan originated at or before ``ts``; payments
and installments are summed over the borrower (one loan per borrower in practice).
Every feature is finite: a static feature whose source is missing (no loan yet, an
unknown borrower, a missing or non-positive income) is :data:`MISSING` (-1).
Negative or null amounts count as 0.

Context and option features (``CONTEXT_FEATURES``, ``OPTION_FEATURES``) are the
touchpoint one-hot, the slate position and the option one-hot;
:func:`option_rows` builds them for serving, where every candidate is scored at
``position = 1``. :func:`feature_matrix` returns the model input in spec order.

Online updates. :func:`compact_events` reduces a borrower's history before a
snapshot time to the recent events plus a few summary events, such that
``borrower_features`` on the compacted events (plus any newer events) equals it on
the full history for every query at or after the snapshot time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pandas as pd

from attune.data.schema import CHANNELS, EVENT_TYPES, OPTION_IDS, TOUCHPOINTS
from attune.data.spec import (
    BORROWER_FEATURES,
    CONTEXT_FEATURES,
    OPTION_FEATURES,
    FeatureSpec,
    default_spec,
)
from attune.errors import FeatureSpecMismatch, InvalidInput

#: The longest look-back window of any event feature.
MAX_WINDOW_DAYS = 180
#: The value of a static feature whose source row or value is missing.
MISSING = -1.0
#: Recency features are capped here (and take this value when nothing happened).
RECENCY_CAP_DAYS = 365.0
_WINDOWS = (7, 30, 90, 180)
_DAY_US = 86_400_000_000
# composite keys stay below this; beyond it times are replaced by their dense rank
_KEY_LIMIT = 2**62
_MONTH_DAYS = 30.4375
_PAYMENTS = ("payment_on_time", "payment_late", "payment_partial")
_EVENT_COLUMNS = ("borrower_id", "ts", "event_type", "amount", "channel")
_QUERY_COLUMNS = ("borrower_id", "ts")
_BORROWER_COLUMNS = ("borrower_id", "income_monthly", "income_volatility")
_LOAN_COLUMNS = ("borrower_id", "origination_ts", "term_months", "installment", "apr")

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def micros(values: pd.Series | pd.Index | Sequence[datetime]) -> I64:
    """Timestamps as int64 microseconds since the epoch (naive values are taken as UTC)."""
    ts = pd.to_datetime(pd.Series(values), utc=True)
    return ts.dt.tz_localize(None).to_numpy("datetime64[us]").astype(np.int64)


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInput(
            f"{what} lacks column(s) {missing}", field=what, value=missing, problem="missing column"
        )


def _cents(amount: pd.Series) -> I64:
    values = amount.to_numpy(dtype=np.float64, na_value=0.0)
    return np.rint(np.maximum(values, 0.0) * 100.0).astype(np.int64)


def _codes(values: pd.Series, categories: Sequence[str]) -> npt.NDArray[np.int8]:
    """Position of each value in ``categories`` (-1 for null or unknown values)."""
    codes, uniques = pd.factorize(values)
    lut = np.array([*(categories.index(u) if u in categories else -1 for u in uniques), -1])
    return lut[codes].astype(np.int8)  # code -1 (null) picks the trailing -1


class _Timeline:
    """Events of many borrowers on one sorted composite key ``code * span + time``.

    ``code`` numbers the queried borrowers in id order and ``time`` is microseconds
    since the earliest time involved (or, when ``code * span`` could overflow, a
    dense rank of every time involved), so the key orders events by borrower then
    time exactly, and one ``np.searchsorted`` answers "how many events of this kind
    happened before this time" for all queries at once. Queries come sorted by
    (borrower, time), which keeps the searches cache-friendly.
    """

    def __init__(self, events: pd.DataFrame, q_ids: I64, q_us: I64) -> None:
        ids = np.unique(q_ids)
        e_ids = events["borrower_id"].to_numpy(dtype=np.int64)
        pos = np.minimum(np.searchsorted(ids, e_ids), len(ids) - 1)
        keep = ids[pos] == e_ids
        events = events.loc[keep]
        e_code = pos[keep].astype(np.int64)
        q_code = np.searchsorted(ids, q_ids).astype(np.int64)
        e_us = micros(events["ts"])
        shifted = [q_us - w * _DAY_US for w in _WINDOWS]
        times = np.concatenate([e_us, q_us, *shifted])
        t0 = int(times.min())
        span = int(times.max()) - t0 + 1
        if len(ids) * span < _KEY_LIMIT:
            rank = times - t0
        else:
            uniq, rank = np.unique(times, return_inverse=True)
            span = len(uniq)
        self.n = np.int64(span)
        ne, nq = len(e_us), len(q_us)
        e_key = e_code * self.n + rank[:ne]
        order = np.argsort(e_key, kind="stable")
        self.key = e_key[order]
        self.us = e_us[order]
        self.type = _codes(events["event_type"], EVENT_TYPES)[order]
        self.channel = _codes(events["channel"], CHANNELS)[order]
        self.amount = events["amount"].iloc[order].reset_index(drop=True)
        base = q_code * self.n
        self.q_start = base  # every event of the borrower has a key >= this
        self.q_at = base + rank[ne : ne + nq]
        self.q_window = {
            w: base + rank[ne + nq * (i + 1) : ne + nq * (i + 2)] for i, w in enumerate(_WINDOWS)
        }

    def mask(self, *types: str, channel: str | None = None) -> npt.NDArray[np.bool_]:
        codes = [EVENT_TYPES.index(t) for t in types]
        out = np.isin(self.type, codes)
        if channel is not None:
            out &= self.channel == CHANNELS.index(channel)
        return out

    def count(self, mask: npt.NDArray[np.bool_], days: int) -> F64:
        keys = self.key[mask]
        upto = np.searchsorted(keys, self.q_at, side="left")
        since = np.searchsorted(keys, self.q_window[days], side="left")
        return (upto - since).astype(np.float64)

    def days_since_last(self, mask: npt.NDArray[np.bool_], q_us: I64) -> F64:
        keys, us = self.key[mask], self.us[mask]
        last = np.searchsorted(keys, self.q_at, side="left") - 1
        has = last >= np.searchsorted(keys, self.q_start, side="left")
        days = (q_us - us[np.where(has, last, 0)]) / _DAY_US if len(us) else np.zeros(len(q_us))
        return np.where(has, np.minimum(days, RECENCY_CAP_DAYS), RECENCY_CAP_DAYS)

    def autopay(self) -> F64:
        mask = self.mask("autopay_on", "autopay_off")
        keys = self.key[mask]
        is_off = self.type[mask] == EVENT_TYPES.index("autopay_off")
        order = np.lexsort((is_off, keys))  # at equal times "off" sorts last and wins
        keys, is_off = keys[order], is_off[order]
        last = np.searchsorted(keys, self.q_at, side="left") - 1
        has = last >= np.searchsorted(keys, self.q_start, side="left")
        if not len(keys):
            return np.zeros(len(self.q_at))
        return np.where(has & ~is_off[np.where(has, last, 0)], 1.0, 0.0)

    def paid_cents(self) -> I64:
        mask = self.mask(*_PAYMENTS)
        keys = self.key[mask]
        cum = np.concatenate([[0], np.cumsum(_cents(self.amount[mask]))])
        upto = np.searchsorted(keys, self.q_at, side="left")
        start = np.searchsorted(keys, self.q_start, side="left")
        return cum[upto] - cum[start]

    def arrears(self, paid: I64, q_us: I64) -> tuple[F64, F64]:
        """(days past due, amount past due) from installments due vs payments made."""
        mask = self.mask("installment_due")
        keys, us = self.key[mask], self.us[mask]
        due = np.cumsum(_cents(self.amount[mask]))  # global running total, non-decreasing
        upto = np.searchsorted(keys, self.q_at, side="left")
        start = np.searchsorted(keys, self.q_start, side="left")
        total = np.concatenate([[0], due])
        owed = np.maximum(total[upto] - total[start] - paid, 0) / 100.0
        # first installment whose cumulative amount exceeds what was paid
        oldest = np.searchsorted(due, total[start] + paid, side="right")
        late = oldest < upto
        if not len(us):
            return np.zeros(len(q_us)), owed
        days = np.where(late, (q_us - us[np.minimum(oldest, len(us) - 1)]) / _DAY_US, 0.0)
        return days, owed


def _rate(num: F64, den: F64) -> F64:
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, np.minimum(num / safe, 1.0), 0.0)


def _event_features(events: pd.DataFrame, q_ids: I64, q_us: I64) -> dict[str, F64]:
    tl = _Timeline(events, q_ids, q_us)
    on_time, late = tl.mask("payment_on_time"), tl.mask("payment_late")
    partial, missed = tl.mask("payment_partial"), tl.mask("payment_missed")
    out: dict[str, F64] = {
        "pay_on_time_30": tl.count(on_time, 30),
        "pay_on_time_90": tl.count(on_time, 90),
        "pay_on_time_180": tl.count(on_time, 180),
        "pay_late_90": tl.count(late, 90),
        "pay_partial_90": tl.count(partial, 90),
        "pay_missed_90": tl.count(missed, 90),
        "pay_missed_180": tl.count(missed, 180),
    }
    due_180 = (
        out["pay_on_time_180"]
        + tl.count(late, 180)
        + tl.count(partial, 180)
        + out["pay_missed_180"]
    )
    out["on_time_rate_180"] = _rate(out["pay_on_time_180"], due_180)
    paid = tl.paid_cents()
    out["days_past_due"], out["_owed"] = tl.arrears(paid, q_us)
    out["days_since_last_payment"] = tl.days_since_last(tl.mask(*_PAYMENTS), q_us)
    out["autopay_on"] = tl.autopay()
    for channel in CHANNELS:
        delivered = tl.count(tl.mask("outreach_delivered", channel=channel), 90)
        opened = tl.count(tl.mask("outreach_opened", channel=channel), 90)
        out[f"open_rate_{channel}_90"] = _rate(opened, delivered)
    out["click_rate_90"] = _rate(
        tl.count(tl.mask("outreach_clicked"), 90), tl.count(tl.mask("outreach_delivered"), 90)
    )
    sent = tl.mask("outreach_sent")
    out["contacts_7d"] = tl.count(sent, 7)
    out["contacts_30d"] = tl.count(sent, 30)
    out["days_since_last_contact"] = tl.days_since_last(sent, q_us)
    out["inbound_contacts_90"] = tl.count(tl.mask("inbound_contact"), 90)
    out["logins_30"] = tl.count(tl.mask("login"), 30)
    out["hardship_180"] = tl.count(tl.mask("hardship_flag"), 180)
    out["plans_accepted_180"] = tl.count(tl.mask("plan_accepted"), 180)
    out["plans_broken_180"] = tl.count(tl.mask("plan_broken"), 180)
    return out


def _static_features(
    q_ids: I64, q_us: I64, owed: F64, *, borrowers: pd.DataFrame, loans: pd.DataFrame
) -> dict[str, F64]:
    left = pd.DataFrame({"borrower_id": q_ids, "_t": q_us, "_i": np.arange(len(q_ids))})
    loans = loans.loc[loans["origination_ts"].notna() & loans["borrower_id"].notna()]
    right = pd.DataFrame(
        {
            "borrower_id": loans["borrower_id"].to_numpy(dtype=np.int64),
            "_t": micros(loans["origination_ts"]),
            "term_months": loans["term_months"].to_numpy(dtype=np.float64, na_value=np.nan),
            "installment": loans["installment"].to_numpy(dtype=np.float64, na_value=np.nan),
            "apr": loans["apr"].to_numpy(dtype=np.float64, na_value=np.nan),
        }
    )
    right["_origin"] = right["_t"].to_numpy(dtype=np.float64)
    joined = pd.merge_asof(
        left.sort_values("_t", kind="stable"),
        right.sort_values("_t", kind="stable"),
        on="_t",
        by="borrower_id",
        direction="backward",
        allow_exact_matches=True,
    ).sort_values("_i")
    loan_t = joined["_origin"].to_numpy(dtype=np.float64)
    term = joined["term_months"].to_numpy(dtype=np.float64)
    installment = joined["installment"].to_numpy(dtype=np.float64)
    people = borrowers.drop_duplicates("borrower_id", keep="last").set_index("borrower_id")
    income = people["income_monthly"].reindex(q_ids).to_numpy(dtype=np.float64, na_value=np.nan)
    has_loan = np.isfinite(loan_t) & (term > 0)
    safe_term = np.where(has_loan, term, 1.0)
    progress = np.clip((q_us - np.nan_to_num(loan_t)) / _DAY_US / (safe_term * _MONTH_DAYS), 0, 1)
    has_income = has_loan & (income > 0) & np.isfinite(installment)
    volatility = (
        people["income_volatility"].reindex(q_ids).to_numpy(dtype=np.float64, na_value=np.nan)
    )
    return {
        "balance": _finite(
            np.where(has_loan, installment * safe_term * (1.0 - progress) + owed, MISSING)
        ),
        "apr": _finite(np.where(has_loan, joined["apr"].to_numpy(dtype=np.float64), MISSING)),
        "term_progress": np.where(has_loan, progress, MISSING),
        "installment_to_income": np.where(
            has_income, installment / np.where(has_income, income, 1.0), MISSING
        ),
        "income_volatility": _finite(volatility),
    }


def _finite(values: F64) -> F64:
    return np.where(np.isfinite(values), values, MISSING)


def borrower_features(
    events: pd.DataFrame,
    queries: pd.DataFrame,
    *,
    borrowers: pd.DataFrame,
    loans: pd.DataFrame,
) -> pd.DataFrame:
    """Point-in-time borrower features for every row of ``queries``.

    ``queries`` has ``borrower_id`` and ``ts`` (the as-of time) and any passthrough
    columns; the result is a copy of it (same index and order) with every name of
    :data:`attune.data.spec.BORROWER_FEATURES` added as ``float32``, computed only
    from ``events`` with ``ts`` strictly before the query's ``ts`` (see the module
    docstring for each definition). ``events`` needs ``borrower_id``, ``ts``,
    ``event_type``, ``amount``, ``channel``; ``borrowers`` needs ``borrower_id``,
    ``income_monthly``, ``income_volatility``; ``loans`` needs ``borrower_id``,
    ``origination_ts``, ``term_months``, ``installment``, ``apr``. Raises
    :class:`InvalidInput` naming a missing column.
    """
    _require(events, _EVENT_COLUMNS, "events")
    _require(queries, _QUERY_COLUMNS, "queries")
    _require(borrowers, _BORROWER_COLUMNS, "borrowers")
    _require(loans, _LOAN_COLUMNS, "loans")
    out = queries.copy()
    if queries.empty:
        for name in BORROWER_FEATURES:
            out[name] = np.zeros(0, dtype=np.float32)
        return out
    all_ids = queries["borrower_id"].to_numpy(dtype=np.int64)
    all_us = micros(queries["ts"])
    # many rows share (borrower, time): compute each distinct pair once, in sorted order
    order = np.lexsort((all_us, all_ids))
    s_ids, s_us = all_ids[order], all_us[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (s_ids[1:] != s_ids[:-1]) | (s_us[1:] != s_us[:-1])
    codes = np.empty(len(order), dtype=np.int64)
    codes[order] = np.cumsum(new) - 1
    q_ids, q_us = s_ids[new], s_us[new]
    values = _event_features(events, q_ids, q_us)
    values.update(_static_features(q_ids, q_us, values["_owed"], borrowers=borrowers, loans=loans))
    for name in BORROWER_FEATURES:
        out[name] = values[name].astype(np.float32)[codes]
    return out


def compact_events(
    events: pd.DataFrame, *, as_of: datetime, horizon_days: int = MAX_WINDOW_DAYS
) -> pd.DataFrame:
    """The events before ``as_of`` reduced to what features at or after ``as_of`` need.

    Events in ``[as_of - horizon_days, as_of)`` are kept as they are; older ones are
    reduced, per borrower, to the last event of each type, plus one summary
    ``payment_on_time`` carrying the rest of the old payments' amount (at the oldest
    old payment's time) and one summary ``installment_due`` carrying the old
    installments already covered by old payments (at the last such installment's
    time). For any query time ``t >= as_of`` and any events newer than the cut-off,
    ``borrower_features`` then returns the same values on the compacted events as on
    the full history. Synthetic rows have ``event_id`` ``"compacted:<kind>:<borrower>"``.
    """
    _require(events, (*_EVENT_COLUMNS, "event_id", "loan_id"), "events")
    if horizon_days < MAX_WINDOW_DAYS:
        raise InvalidInput(
            f"horizon_days ({horizon_days}) must be >= the longest window ({MAX_WINDOW_DAYS})",
            field="horizon_days",
            value=horizon_days,
        )
    us = micros(events["ts"])
    as_of_us = int(micros([as_of])[0])
    cutoff = as_of_us - horizon_days * _DAY_US
    before = events.loc[us < as_of_us]
    b_us = us[us < as_of_us]
    recent = before.loc[b_us >= cutoff]
    old = before.loc[b_us < cutoff].assign(_us=b_us[b_us < cutoff])
    if old.empty:
        return recent.reset_index(drop=True)
    old = old.sort_values(["borrower_id", "_us"], kind="stable")
    is_installment = (old["event_type"] == "installment_due").to_numpy()
    is_payment = old["event_type"].isin(_PAYMENTS).to_numpy()
    last_of_type = old.loc[~is_installment].drop_duplicates(
        ["borrower_id", "event_type"], keep="last"
    )
    payments = old.loc[is_payment].assign(_cents=lambda f: _cents(f["amount"]))
    kept_payments = last_of_type.loc[last_of_type["event_type"].isin(_PAYMENTS)]
    paid_total = payments.groupby("borrower_id")["_cents"].sum()
    paid_kept = _cents(kept_payments["amount"])
    rest = paid_total.sub(
        pd.Series(paid_kept, index=kept_payments["borrower_id"]).groupby(level=0).sum(),
        fill_value=0,
    )
    first_payment = payments.drop_duplicates("borrower_id", keep="first").set_index("borrower_id")
    rest = rest[rest > 0]
    summary_payment = first_payment.loc[rest.index].assign(
        event_type="payment_on_time", amount=rest.to_numpy() / 100.0, channel=None
    )
    installments = old.loc[is_installment].assign(_cents=lambda f: _cents(f["amount"]))
    covered_by = paid_total.reindex(installments["borrower_id"]).fillna(0).to_numpy()
    running = installments.groupby("borrower_id")["_cents"].cumsum().to_numpy()
    covered = running <= covered_by
    summary_due = (
        installments.loc[covered]
        .assign(amount=running[covered] / 100.0)
        .drop_duplicates("borrower_id", keep="last")
    )
    pieces = [
        last_of_type,
        summary_payment.reset_index().assign(
            event_id=lambda f: "compacted:payment:" + f["borrower_id"].astype(str)
        ),
        summary_due.assign(
            event_id=lambda f: "compacted:installment:" + f["borrower_id"].astype(str)
        ),
        installments.loc[~covered],
    ]
    columns = list(events.columns)
    compacted = pd.concat([p[columns] for p in pieces if not p.empty] + [recent[columns]])
    order = np.lexsort((micros(compacted["ts"]), compacted["borrower_id"].to_numpy()))
    return compacted.iloc[order].reset_index(drop=True)


def graded_labels(response: pd.Series, current_14d: pd.Series) -> npt.NDArray[np.int8]:
    """0 ignored, 1 engaged, 2 completed, 3 completed and current 14 days later."""
    resp = response.to_numpy(dtype=np.int64)
    cured = current_14d.fillna(False).to_numpy(dtype=bool)
    return np.where((resp == 2) & cured, 3, resp).astype(np.int8)


def _one_hot(values: pd.Series, allowed: Sequence[str], field: str) -> npt.NDArray[np.float32]:
    codes = pd.Categorical(values, categories=list(allowed)).codes
    unknown = codes < 0
    if unknown.any():
        bad = values.to_numpy()[np.flatnonzero(unknown)[0]]
        raise InvalidInput(
            f"unknown {field} {bad!r} (allowed: {', '.join(allowed)})", field=field, value=bad
        )
    out = np.zeros((len(values), len(allowed)), dtype=np.float32)
    out[np.arange(len(values)), codes] = 1.0
    return out


def add_context_features(rows: pd.DataFrame) -> pd.DataFrame:
    """Add the touchpoint one-hot and the option one-hot as float32 columns.

    ``rows`` needs ``touchpoint``, ``option_id`` and ``position`` (the slate position,
    1..3, itself the ``position`` feature); an unknown touchpoint or option raises
    :class:`InvalidInput` naming the field and value.
    """
    _require(rows, ("touchpoint", "option_id", "position"), "rows")
    out = rows.copy()
    touch = _one_hot(rows["touchpoint"], TOUCHPOINTS, "touchpoint")
    for i, name in enumerate(CONTEXT_FEATURES[: len(TOUCHPOINTS)]):
        out[name] = touch[:, i]
    option = _one_hot(rows["option_id"], OPTION_IDS, "option_id")
    for i, name in enumerate(OPTION_FEATURES):
        out[name] = option[:, i]
    return out


def option_rows(
    borrower: pd.DataFrame,
    *,
    options: Sequence[str],
    touchpoint: str | Sequence[str],
    position: int = 1,
) -> pd.DataFrame:
    """One candidate row per (borrower row, option), with context and option features.

    ``borrower`` holds borrower features (one row per borrower, any passthrough
    columns). ``touchpoint`` is one value for all rows or one per borrower row;
    every candidate gets ``position`` (serving scores at 1). Rows come out borrower
    by borrower, options in the given order. Raises :class:`InvalidInput` for an
    empty or duplicated option list or an unknown option/touchpoint.
    """
    if not options:
        raise InvalidInput("options must not be empty", field="options", value=list(options))
    if len(set(options)) != len(options):
        raise InvalidInput("options must be distinct", field="options", value=list(options))
    touch = [touchpoint] * len(borrower) if isinstance(touchpoint, str) else list(touchpoint)
    if len(touch) != len(borrower):
        raise InvalidInput(
            f"touchpoints ({len(touch)}) must match borrower rows ({len(borrower)})",
            field="touchpoint",
            value=len(touch),
        )
    k = len(options)
    rows = borrower.iloc[np.repeat(np.arange(len(borrower)), k)].reset_index(drop=True)
    rows["option_id"] = np.tile(np.asarray(options, dtype=object), len(borrower))
    rows["touchpoint"] = np.repeat(np.asarray(touch, dtype=object), k)
    rows["position"] = np.full(len(rows), position, dtype=np.int8)
    return add_context_features(rows)


def feature_matrix(df: pd.DataFrame, spec: FeatureSpec | None = None) -> npt.NDArray[np.float32]:
    """The model input: ``df``'s feature columns in ``spec`` order as a float32 matrix.

    Raises :class:`FeatureSpecMismatch` naming the features ``df`` lacks.
    """
    spec = spec or default_spec()
    missing = [n for n in spec.names if n not in df.columns]
    if missing:
        raise FeatureSpecMismatch(
            expected=missing, actual=sorted(df.columns), problem="features missing from rows"
        )
    return np.ascontiguousarray(df[list(spec.names)].to_numpy(dtype=np.float32))
