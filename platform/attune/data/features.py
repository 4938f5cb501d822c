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
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pandas as pd

from attune.data.schema import CHANNELS, EVENT_TYPES, OPTION_IDS, TOUCHPOINTS
from attune.data.spec import (
    BORROWER_FEATURES,
    BORROWER_STATIC_FEATURES,
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
_WINDOW_US = np.asarray(_WINDOWS, dtype=np.int64) * 86_400_000_000
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


# --------------------------------------------------------------------------- the kernel

# The kernel's columns: an event belongs to its type's column, a payment or missed
# payment also to "payment_due", an outreach delivered/opened also to its (type, channel)
# column, and a payment / outreach sent / autopay toggle also to a "last of" column.
_COUNTED = (
    "installment_due",
    *_PAYMENTS,
    "payment_missed",
    "login",
    "inbound_contact",
    "outreach_sent",
    "outreach_delivered",
    "outreach_clicked",
    "hardship_flag",
    "plan_accepted",
    "plan_broken",
    "payment_due",
)
_PER_CHANNEL = ("outreach_delivered", "outreach_opened")
_LAST = ("last_payment", "last_sent", "last_autopay")
_COLUMN: dict[str | tuple[str, str], int] = {
    name: i for i, name in enumerate((*_COUNTED, *_LAST))
} | {
    (t, c): len(_COUNTED) + len(_LAST) + j * len(CHANNELS) + k
    for j, t in enumerate(_PER_CHANNEL)
    for k, c in enumerate(CHANNELS)
}
_ALL_TYPES = (*EVENT_TYPES, None)  # position len(EVENT_TYPES) is the unknown code -1
_ALL_CHANNELS = (*CHANNELS, None)
_DUE = ("payment_missed", *_PAYMENTS)
_LAST_OF = {"last_payment": _PAYMENTS, "last_sent": ("outreach_sent",)}
_LAST_OF["last_autopay"] = ("autopay_on", "autopay_off")


def _columns_of(t: str | None, c: str | None) -> list[int]:
    """The kernel columns of an event of type ``t`` on channel ``c`` (-1 fills)."""
    return [
        _COLUMN.get(t, -1) if t is not None else -1,
        _COLUMN["payment_due"] if t in _DUE else -1,
        _COLUMN.get((t, c), -1) if t is not None and c is not None else -1,
        next((_COLUMN[k] for k, types in _LAST_OF.items() if t in types), -1),
    ]


# (type code, channel code) -> the event's columns; each column is filled by one slot only
_EVENT_COLUMNS_LUT = np.array(
    [[_columns_of(t, c) for c in _ALL_CHANNELS] for t in _ALL_TYPES], dtype=np.int16
)
# (counts as paid, counts as due) -> type code: the running sums of cents
_MONEY_OF = np.array(
    [[t in _PAYMENTS for t in _ALL_TYPES], [t == "installment_due" for t in _ALL_TYPES]],
    dtype=np.int64,
)
# (name, counted column, window days) of every feature that is a count, and of the
# numerator and denominator of every rate
_COUNTS: tuple[tuple[str, str | tuple[str, str], int], ...] = (
    ("pay_on_time_30", "payment_on_time", 30),
    ("pay_on_time_90", "payment_on_time", 90),
    ("pay_on_time_180", "payment_on_time", 180),
    ("pay_late_90", "payment_late", 90),
    ("pay_partial_90", "payment_partial", 90),
    ("pay_missed_90", "payment_missed", 90),
    ("pay_missed_180", "payment_missed", 180),
    ("contacts_7d", "outreach_sent", 7),
    ("contacts_30d", "outreach_sent", 30),
    ("inbound_contacts_90", "inbound_contact", 90),
    ("logins_30", "login", 30),
    ("hardship_180", "hardship_flag", 180),
    ("plans_accepted_180", "plan_accepted", 180),
    ("plans_broken_180", "plan_broken", 180),
)
_RATES: tuple[tuple[str, tuple[str | tuple[str, str], int], tuple[str | tuple[str, str], int]], ...]
_RATES = (
    ("on_time_rate_180", ("payment_on_time", 180), ("payment_due", 180)),
    *(
        (
            f"open_rate_{c}_90",
            (("outreach_opened", c), 90),
            (("outreach_delivered", c), 90),
        )
        for c in CHANNELS
    ),
    ("click_rate_90", ("outreach_clicked", 90), ("outreach_delivered", 90)),
)
_FEATURE_INDEX = {name: i for i, name in enumerate(BORROWER_FEATURES)}
# every (column, window) the kernel reads, as index arrays for one gather
_SPANS = [
    *((col, days) for _, col, days in _COUNTS),
    *(num for _, num, _ in _RATES),
    *(den for _, _, den in _RATES),
]
_SPAN_COLUMN = np.array([_COLUMN[col] for col, _ in _SPANS], dtype=np.int64)
_SPAN_WINDOW = np.array([_WINDOWS.index(days) for _, days in _SPANS], dtype=np.int64)
_COUNT_OUT = np.array([_FEATURE_INDEX[name] for name, _, _ in _COUNTS], dtype=np.int64)
_RATE_OUT = np.array([_FEATURE_INDEX[name] for name, _, _ in _RATES], dtype=np.int64)
_N_COUNTS, _N_RATES = len(_COUNTS), len(_RATES)
_RECENCY_OUT = np.array(
    [_FEATURE_INDEX["days_since_last_payment"], _FEATURE_INDEX["days_since_last_contact"]]
)
_AUTOPAY_OFF = EVENT_TYPES.index("autopay_off")
_LAST_COLUMNS = np.array([_COLUMN[k] for k in _LAST], dtype=np.int64)
#: Events per kernel call inside :func:`borrower_features` (bounds its working memory).
CHUNK_EVENTS = 1 << 20


@dataclass(frozen=True)
class HistoryArrays:
    """The feature kernel's input: the history of borrowers ``0..n-1`` as flat arrays.

    Events (any order): ``ev_code`` (the borrower's number), ``ev_us`` (µs since the
    epoch), ``ev_type`` / ``ev_channel`` (positions in ``EVENT_TYPES`` / ``CHANNELS``,
    -1 for null or unknown) and ``ev_cents`` (the amount in integer cents, negative or
    null amounts as 0). Loans: ``loan_code``, ``loan_us`` (origination) and ``loans``
    (``float64[n, 3]``: term in months, installment, APR; NaN where unknown). Per
    borrower number:
    ``income`` and ``volatility`` (NaN where unknown).
    """

    n_borrowers: int
    ev_code: I64
    ev_us: I64
    ev_type: npt.NDArray[np.int8]
    ev_channel: npt.NDArray[np.int8]
    ev_cents: I64
    loan_code: I64
    loan_us: I64
    loans: npt.NDArray[np.float64]
    income: F64
    volatility: F64


def _keys(code: I64, times: list[I64]) -> tuple[list[I64], np.int64]:
    """Composite-key times: ``code * span + time`` orders by borrower, then time, exactly.

    ``times`` are arrays of times; time is µs since the earliest of them or, when
    ``code * span`` could overflow, a dense rank of every time involved.
    """
    flat = np.concatenate(times)
    t0, t1 = int(flat.min()), int(flat.max())
    span = t1 - t0 + 1
    if (int(code.max(initial=0)) + 1) * span < _KEY_LIMIT:
        rank = flat - t0
    else:
        uniq, rank = np.unique(flat, return_inverse=True)
        span = len(uniq)
    parts, at = [], 0
    for t in times:
        parts.append(rank[at : at + len(t)])
        at += len(t)
    return parts, np.int64(span)


def feature_kernel(h: HistoryArrays, q_code: I64, q_us: I64) -> F64:
    """``float64[len(q_code), len(BORROWER_FEATURES)]``: the features of each query.

    Query ``i`` asks for borrower ``q_code[i]`` as of ``q_us[i]`` (µs), from events
    strictly before it. The one definition of every borrower feature (see the module
    docstring); pure numpy: one sort of the events, a running-count matrix and one
    ``searchsorted`` answer every query of every borrower at once, so one borrower
    costs tens of microseconds and a million borrowers one pass.
    """
    nq, ne = len(q_us), len(h.ev_us)
    out = np.empty((nq, len(BORROWER_FEATURES)), dtype=np.float64)
    if nq == 0:
        return out
    windows = q_us[None, :] - _WINDOW_US[:, None]
    codes = np.concatenate([h.ev_code, h.loan_code, q_code])
    (e_rank, l_rank, q_rank, w_rank), span = _keys(
        codes, [h.ev_us, h.loan_us, q_us, windows.ravel()]
    )
    # events by (borrower, time); at equal times autopay_off sorts last (off wins a tie)
    etype = h.ev_type.astype(np.int64)
    key = h.ev_code * span + e_rank
    order = np.argsort(key * 2 + (etype == _AUTOPAY_OFF), kind="stable")
    key, etype, us, cents = key[order], etype[order], h.ev_us[order], h.ev_cents[order]
    # one searchsorted for every query point: as-of time, window starts, borrower start
    base = q_code * span
    points = np.concatenate([base + q_rank, (base + w_rank.reshape(windows.shape)).ravel(), base])
    found = np.searchsorted(key, points, side="left").reshape(len(_WINDOWS) + 2, nq)
    at, start = found[0], found[-1]
    # every (column, position) membership, grouped by column, positions ascending: the
    # events of a column before position p are found by one searchsorted
    stride = np.int64(ne + 1)
    member = _EVENT_COLUMNS_LUT[etype, h.ev_channel[order]].T.ravel()  # slot-major
    hit = np.flatnonzero(member >= 0)
    by_column = np.argsort(member[hit], kind="stable")  # int16: a linear radix sort
    hit = hit[by_column]
    # a leading -1: "the member before the first one" reads as none
    members = np.empty(len(hit) + 1, dtype=np.int64)
    members[0] = -1
    members[1:] = member[hit].astype(np.int64) * stride + hit % max(ne, 1)
    since = found[1:-1][_SPAN_WINDOW].T  # (queries, spans): the window start of each span
    span_base = _SPAN_COLUMN * stride
    last_base = _LAST_COLUMNS * stride
    points = np.concatenate(
        [
            (span_base + at[:, None]).ravel(),
            (span_base + since).ravel(),
            (last_base + at[:, None]).ravel(),
        ]
    )
    idx = np.searchsorted(members, points, side="left")
    n_spans = len(_SPANS) * nq
    counts = (idx[:n_spans] - idx[n_spans : 2 * n_spans]).reshape(nq, -1).astype(np.float64)
    out[:, _COUNT_OUT] = counts[:, :_N_COUNTS]
    num = counts[:, _N_COUNTS : _N_COUNTS + _N_RATES]
    den = counts[:, _N_COUNTS + _N_RATES :]
    rates = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    out[:, _RATE_OUT] = np.minimum(rates, 1.0, out=rates)
    # the last payment / outreach sent / autopay toggle before each query, if the borrower's
    before = members[idx[2 * n_spans :] - 1].reshape(nq, len(_LAST))
    last = before - last_base
    has = (last >= start[:, None]) & (last < at[:, None])
    # money: running sums of payment and installment cents over the sorted events
    money = np.zeros((2, ne + 1), dtype=np.int64)  # [:, i]: cents paid / due before i
    np.cumsum(_MONEY_OF[:, etype] * cents, axis=1, out=money[:, 1:])
    paid_run, due_run = money[0], money[1]
    paid = paid_run[at] - paid_run[start]
    owed = np.maximum(due_run[at] - due_run[start] - paid, 0) / 100.0
    # the oldest installment not covered: the event that lifts the running due past paid
    oldest = np.searchsorted(due_run, due_run[start] + paid, side="right") - 1
    if ne:
        # days since: the last payment, the last outreach sent, the oldest uncovered due
        marks = np.empty((nq, 3), dtype=np.int64)
        marks[:, :2] = last[:, :2]
        marks[:, 2] = oldest
        known = np.empty((nq, 3), dtype=bool)
        known[:, :2] = has[:, :2]
        known[:, 2] = oldest < at
        days = (q_us[:, None] - us[np.minimum(np.maximum(marks, 0), ne - 1)]) / _DAY_US
        recency = np.where(
            known[:, :2], np.minimum(days[:, :2], RECENCY_CAP_DAYS), RECENCY_CAP_DAYS
        )
        past_due = np.where(known[:, 2], days[:, 2], 0.0)
        toggle = etype[np.minimum(np.maximum(last[:, 2], 0), ne - 1)]
        autopay = np.where(has[:, 2] & (toggle != _AUTOPAY_OFF), 1.0, 0.0)
    else:
        recency, past_due, autopay = np.full((nq, 2), RECENCY_CAP_DAYS), np.zeros(nq), np.zeros(nq)
    out[:, _RECENCY_OUT] = recency
    out[:, _FEATURE_INDEX["days_past_due"]] = past_due
    out[:, _FEATURE_INDEX["autopay_on"]] = autopay
    _static_features(h, q_code, q_us, owed, l_rank, q_rank, span, out)
    return out


_STATIC_OUT = np.array([_FEATURE_INDEX[n] for n in BORROWER_STATIC_FEATURES], dtype=np.int64)


def _static_features(
    h: HistoryArrays,
    q_code: I64,
    q_us: I64,
    owed: F64,
    l_rank: I64,
    q_rank: I64,
    span: np.int64,
    out: F64,
) -> None:
    """Loan and income features: the borrower's latest loan originated at or before ``ts``."""
    nq = len(q_code)
    if len(h.loan_code):
        order = np.lexsort((l_rank, h.loan_code))  # stable: of two equal times the later wins
        l_key = h.loan_code[order] * span + l_rank[order]
        pick = np.searchsorted(l_key, q_code * span + q_rank, side="right") - 1
        row = order[np.maximum(pick, 0)]
        found = (pick >= 0) & (h.loan_code[row] == q_code)
        origin = np.where(found, h.loan_us[row], 0).astype(np.float64)
        picked = h.loans[row]
        picked[~found] = np.nan
        term, installment, apr = picked.T
    else:
        found, origin = np.zeros(nq, dtype=bool), np.zeros(nq)
        term = installment = apr = np.full(nq, np.nan)
    income = h.income[q_code]
    has_loan = found & (term > 0)
    safe_term = np.where(has_loan, term, 1.0)
    elapsed = (q_us - origin) / _DAY_US / (safe_term * _MONTH_DAYS)
    progress = np.minimum(np.maximum(elapsed, 0.0), 1.0)  # np.clip costs more on small arrays
    has_income = has_loan & (income > 0) & np.isfinite(installment)
    # BORROWER_STATIC_FEATURES order; filled column by column (np.stack costs more)
    values, sourced = np.empty((nq, 5)), np.empty((nq, 5), dtype=bool)
    values[:, 0] = installment * safe_term * (1.0 - progress) + owed  # balance
    values[:, 1] = apr
    values[:, 2] = progress  # term_progress
    values[:, 3] = installment / np.where(has_income, income, 1.0)  # installment_to_income
    values[:, 4] = h.volatility[q_code]
    sourced[:, :3] = has_loan[:, None]
    sourced[:, 3] = has_income
    sourced[:, 4] = True
    out[:, _STATIC_OUT] = np.where(sourced & np.isfinite(values), values, MISSING)


# --------------------------------------------------------------------------- the frame API


def history_arrays(
    ids: I64, *, events: pd.DataFrame, borrowers: pd.DataFrame, loans: pd.DataFrame
) -> HistoryArrays:
    """The kernel's arrays of borrowers ``ids`` (sorted, distinct; number = position).

    Rows of other borrowers are dropped; the conversion from pandas happens here only.
    """
    e_ids = events["borrower_id"].to_numpy(dtype=np.int64)
    e_code, e_keep = _code_of(ids, e_ids)
    events = events.loc[e_keep] if not e_keep.all() else events
    loans = loans.loc[loans["origination_ts"].notna() & loans["borrower_id"].notna()]
    l_code, l_keep = _code_of(ids, loans["borrower_id"].to_numpy(dtype=np.int64))
    loans = loans.loc[l_keep]
    people = borrowers.drop_duplicates("borrower_id", keep="last").set_index("borrower_id")
    return HistoryArrays(
        n_borrowers=len(ids),
        ev_code=e_code[e_keep],
        ev_us=micros(events["ts"]) if len(events) else np.zeros(0, np.int64),
        ev_type=_codes(events["event_type"], EVENT_TYPES),
        ev_channel=_codes(events["channel"], CHANNELS),
        ev_cents=_cents(events["amount"]),
        loan_code=l_code[l_keep],
        loan_us=micros(loans["origination_ts"]) if len(loans) else np.zeros(0, np.int64),
        loans=np.column_stack(
            [
                loans[c].to_numpy(dtype=np.float64, na_value=np.nan)
                for c in ("term_months", "installment", "apr")
            ]
        ).reshape(-1, 3),
        income=people["income_monthly"].reindex(ids).to_numpy(dtype=np.float64, na_value=np.nan),
        volatility=people["income_volatility"]
        .reindex(ids)
        .to_numpy(dtype=np.float64, na_value=np.nan),
    )


def _code_of(ids: I64, values: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
    """(position of each value in sorted ``ids``, whether it is there)."""
    if not len(ids):
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    pos = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
    return pos.astype(np.int64), ids[pos] == values


def _chunk_bounds(ev_code: I64, n: int) -> list[tuple[int, int]]:
    """Borrower-number ranges holding about CHUNK_EVENTS events each (at least one borrower)."""
    per = np.bincount(ev_code, minlength=n)
    cum = np.cumsum(per)
    bounds, lo = [], 0
    while lo < n:
        done = int(cum[lo - 1]) if lo else 0
        hi = int(np.searchsorted(cum, done + CHUNK_EVENTS, side="right"))
        hi = min(max(hi, lo + 1), n)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _slice(h: HistoryArrays, lo: int, hi: int) -> HistoryArrays:
    """Borrowers ``lo..hi-1`` of ``h``, renumbered from 0."""
    ev = (h.ev_code >= lo) & (h.ev_code < hi)
    ln = (h.loan_code >= lo) & (h.loan_code < hi)
    return HistoryArrays(
        n_borrowers=hi - lo,
        ev_code=h.ev_code[ev] - lo,
        ev_us=h.ev_us[ev],
        ev_type=h.ev_type[ev],
        ev_channel=h.ev_channel[ev],
        ev_cents=h.ev_cents[ev],
        loan_code=h.loan_code[ln] - lo,
        loan_us=h.loan_us[ln],
        loans=h.loans[ln],
        income=h.income[lo:hi],
        volatility=h.volatility[lo:hi],
    )


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
    :class:`InvalidInput` naming a missing column. The frames are converted to
    :class:`HistoryArrays` once and :func:`feature_kernel` computes every value, in
    chunks of about :data:`CHUNK_EVENTS` events.
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
    pair = np.empty(len(order), dtype=np.int64)
    pair[order] = np.cumsum(new) - 1
    q_ids, q_us = s_ids[new], s_us[new]
    ids = np.unique(q_ids)
    h = history_arrays(ids, events=events, borrowers=borrowers, loans=loans)
    q_code = np.searchsorted(ids, q_ids).astype(np.int64)
    values = np.empty((len(q_ids), len(BORROWER_FEATURES)), dtype=np.float32)
    bounds = _chunk_bounds(h.ev_code, h.n_borrowers)
    for lo, hi in bounds:
        part = h if len(bounds) == 1 else _slice(h, lo, hi)
        mine = np.flatnonzero((q_code >= lo) & (q_code < hi)) if len(bounds) > 1 else slice(None)
        values[mine] = feature_kernel(part, q_code[mine] - lo, q_us[mine])
    values = values[pair]
    for i, name in enumerate(BORROWER_FEATURES):
        out[name] = values[:, i]
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


@dataclass(frozen=True)
class _Layout:
    """Where each group of features sits in a spec's rows (see :func:`candidate_matrix`)."""

    n: int
    borrower_cols: npt.NDArray[np.int64]
    borrower_from: npt.NDArray[np.int64]
    touchpoint_col: dict[str, int]
    position_col: int
    option_col: dict[str, int]


_LAYOUTS: dict[str, _Layout] = {}


def _layout(spec: FeatureSpec) -> _Layout:
    found = _LAYOUTS.get(spec.hash)
    if found is not None:
        return found
    index = {name: j for j, name in enumerate(spec.names)}
    known = set(BORROWER_FEATURES) | set(CONTEXT_FEATURES) | set(OPTION_FEATURES)
    unknown = [n for n in spec.names if n not in known]
    if unknown:
        raise FeatureSpecMismatch(
            expected=sorted(known), actual=unknown, problem="features no candidate row defines"
        )
    names = [n for n in BORROWER_FEATURES if n in index]
    layout = _Layout(
        n=len(spec.names),
        borrower_cols=np.array([index[n] for n in names], dtype=np.int64),
        borrower_from=np.array([BORROWER_FEATURES.index(n) for n in names], dtype=np.int64),
        touchpoint_col={t: index.get(f"touchpoint_{t}", -1) for t in TOUCHPOINTS},
        position_col=index.get("position", -1),
        option_col={o: index.get(f"opt_{o}", -1) for o in OPTION_IDS},
    )
    _LAYOUTS[spec.hash] = layout
    return layout


def candidate_matrix(
    spec: FeatureSpec,
    *,
    borrower: npt.NDArray[np.float32],
    touchpoint: str,
    option_ids: Sequence[str],
    position: int = 1,
) -> npt.NDArray[np.float32]:
    """One borrower's candidate rows in ``spec`` order, without pandas (the serving path).

    ``borrower`` holds the borrower features in :data:`BORROWER_FEATURES` order; every
    option gets the touchpoint and option one-hots and ``position`` exactly as
    :func:`option_rows` and :func:`feature_matrix` build them (a test keeps the two
    equal). Raises :class:`InvalidInput` for an unknown option or touchpoint.
    """
    return candidate_block(
        spec,
        borrowers=borrower[None, :],
        touchpoint=touchpoint,
        option_ids=option_ids,
        position=position,
    )[0]


def candidate_block(
    spec: FeatureSpec,
    *,
    borrowers: npt.NDArray[np.float32],
    touchpoint: str,
    option_ids: Sequence[str],
    position: int = 1,
) -> npt.NDArray[np.float32]:
    """``float32[n, len(option_ids), spec.n_features]``: candidate rows of ``n`` borrowers.

    ``borrowers`` is ``float32[n, len(BORROWER_FEATURES)]``. Row ``[b, i]`` is what
    :func:`candidate_matrix` gives for borrower ``b`` and option ``i`` (it is this
    function on one borrower): serving builds one borrower's rows, batch ranking
    (attune.batch) many at once. Raises :class:`InvalidInput` for an unknown option or
    touchpoint.
    """
    layout = _layout(spec)
    if touchpoint not in layout.touchpoint_col:
        raise InvalidInput(
            f"unknown touchpoint {touchpoint!r} (allowed: {', '.join(TOUCHPOINTS)})",
            field="touchpoint",
            value=touchpoint,
        )
    out = np.zeros((borrowers.shape[0], len(option_ids), layout.n), dtype=np.float32)
    out[:, :, layout.borrower_cols] = borrowers[:, None, layout.borrower_from]
    for i, option in enumerate(option_ids):
        col = layout.option_col.get(option)
        if col is None:
            raise InvalidInput(
                f"unknown option_id {option!r} (allowed: {', '.join(OPTION_IDS)})",
                field="option_id",
                value=option,
            )
        if col >= 0:
            out[:, i, col] = 1.0
    if layout.touchpoint_col[touchpoint] >= 0:
        out[:, :, layout.touchpoint_col[touchpoint]] = 1.0
    if layout.position_col >= 0:
        out[:, :, layout.position_col] = position
    return out
