"""One borrower's online state as bytes: what the feature kernel needs, binary-packed.

A borrower's value in the online store is a fixed header, its loans, then its events as
fixed-width records, so a posted event is one ``APPEND`` and a look-up is one ``GET``
followed by ``np.frombuffer`` and :func:`attune.data.features.feature_kernel`::

    header   <BBBB d d>    version, flags, loans, 0, income_monthly, income_volatility
    loans    <d d d d>     origination (µs), term_months, installment, apr     (per loan)
    events   <q B i>       ts (µs), (type + 1) * 4 + (channel + 1), amount (cents)  (per event)

``flags`` bit 0 (:data:`HAS_PROFILE`) says the borrower and loan rows came from a
snapshot; a borrower first seen through ``POST /v1/events`` has a header without it
(income and loans unknown: their features take :data:`attune.data.features.MISSING`).
Amounts are non-negative integer cents below 2**31 (the kernel's own unit; larger ones
are clamped). Records may arrive out of time order: the kernel sorts.

:func:`prune` drops what no feature at or after the snapshot time can read (event types
no feature uses, and events older than the longest window that reads their type, except
the summaries :func:`attune.data.features.compact_events` keeps), so a borrower costs a
few hundred bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attune.data.features import HistoryArrays, feature_kernel
from attune.data.schema import EVENT_TYPES
from attune.errors import InvalidInput

#: Layout version in every header; a reader refuses another.
VERSION = 2
#: Header flag: income and loans came from a snapshot.
HAS_PROFILE = 1
HEADER = struct.Struct("<BBBBdd")
# all float64, so that a state's loans are one (n, 4) view; µs as float64 are exact
# until the year 2255
LOAN = np.dtype([("us", "<f8"), ("term", "<f8"), ("installment", "<f8"), ("apr", "<f8")])
RECORD = np.dtype([("us", "<i8"), ("code", "u1"), ("cents", "<i4")])
_DAY_US = 86_400_000_000
_MAX_CENTS = 2**31 - 1
_NO_PROFILE = HEADER.pack(VERSION, 0, 0, 0, float("nan"), float("nan"))
# days of events each type's features read back from a query (None: every event counts,
# through a running sum or "the last one"); types absent here are read by no feature
_READ_BACK: dict[str, int | None] = {
    "installment_due": None,
    "payment_on_time": None,
    "payment_late": None,
    "payment_partial": None,
    "payment_missed": 180,
    "autopay_on": None,
    "autopay_off": None,
    "login": 30,
    "inbound_contact": 90,
    "outreach_sent": None,
    "outreach_delivered": 90,
    "outreach_opened": 90,
    "outreach_clicked": 90,
    "hardship_flag": 180,
    "plan_accepted": 180,
    "plan_broken": 180,
}
_UNREAD, _ALWAYS = -1, -2
_KEEP_DAYS = np.array(
    [_UNREAD if t not in _READ_BACK else _READ_BACK[t] or _ALWAYS for t in (*EVENT_TYPES, None)],
    dtype=np.int64,
)


@dataclass(frozen=True)
class BorrowerState:
    """One borrower's decoded state: profile (if any), loans and event records."""

    has_profile: bool
    income: float
    volatility: float
    loans: npt.NDArray[np.void]
    events: npt.NDArray[np.void]


def encode_codes(
    types: npt.NDArray[np.int8], channels: npt.NDArray[np.int8]
) -> npt.NDArray[np.uint8]:
    """One byte per event: ``(type + 1) * 4 + (channel + 1)`` (codes -1 for null/unknown)."""
    return ((types.astype(np.int16) + 1) * 4 + channels.astype(np.int16) + 1).astype(np.uint8)


def records(
    us: npt.NDArray[np.int64], codes: npt.NDArray[np.uint8], cents: npt.NDArray[np.int64]
) -> bytes:
    """Event records as bytes (``RECORD`` layout)."""
    out = np.empty(len(us), dtype=RECORD)
    out["us"], out["code"], out["cents"] = us, codes, np.minimum(cents, _MAX_CENTS)
    return out.tobytes()


def profile(*, income: float, volatility: float, loans: npt.NDArray[np.void] | None) -> bytes:
    """The header and loans of a borrower known to a snapshot."""
    loans = loans if loans is not None else np.zeros(0, dtype=LOAN)
    if len(loans) > 255:
        raise InvalidInput("a borrower has more than 255 loans", field="loans", value=len(loans))
    return HEADER.pack(VERSION, HAS_PROFILE, len(loans), 0, income, volatility) + loans.tobytes()


def no_profile() -> bytes:
    """The header of a borrower first seen through posted events."""
    return _NO_PROFILE


def decode(raw: bytes) -> BorrowerState:
    """Parse one stored value (InvalidInput naming the problem when it is not one)."""
    if len(raw) < HEADER.size:
        raise InvalidInput("online state shorter than its header", field="state", value=len(raw))
    version, flags, n_loans, _, income, volatility = HEADER.unpack_from(raw)
    if version != VERSION:
        raise InvalidInput(
            f"online state layout {version}, this code reads {VERSION}: materialize again",
            field="state",
            value=version,
        )
    at = HEADER.size + n_loans * LOAN.itemsize
    body = len(raw) - at
    if body < 0 or body % RECORD.itemsize:
        raise InvalidInput("online state is truncated", field="state", value=len(raw))
    return BorrowerState(
        has_profile=bool(flags & HAS_PROFILE),
        income=income,
        volatility=volatility,
        loans=np.frombuffer(raw, dtype=LOAN, count=n_loans, offset=HEADER.size),
        events=np.frombuffer(raw, dtype=RECORD, offset=at),
    )


def arrays(states: list[BorrowerState]) -> HistoryArrays:
    """The kernel's input for these borrowers (borrower ``i`` is number ``i``)."""
    n = len(states)
    if n == 1:  # the request path: no concatenation
        events, loans = states[0].events, states[0].loans
        ev_code = np.zeros(len(events), dtype=np.int64)
        loan_code = np.zeros(len(loans), dtype=np.int64)
    else:
        # one join of the states' bytes, one frombuffer: cheaper than concatenating arrays
        events = np.frombuffer(b"".join([s.events.data for s in states]), dtype=RECORD)
        loans = np.frombuffer(b"".join([s.loans.data for s in states]), dtype=LOAN)
        ev_code = np.repeat(np.arange(n, dtype=np.int64), [len(s.events) for s in states])
        loan_code = np.repeat(np.arange(n, dtype=np.int64), [len(s.loans) for s in states])
    codes = events["code"].astype(np.int16)
    return HistoryArrays(
        n_borrowers=n,
        ev_code=ev_code,
        ev_us=events["us"].astype(np.int64),
        ev_type=(codes // 4 - 1).astype(np.int8),
        ev_channel=(codes % 4 - 1).astype(np.int8),
        ev_cents=events["cents"].astype(np.int64),
        loan_code=loan_code,
        loan_us=loans["us"].astype(np.int64),
        loans=loans.view(np.float64).reshape(-1, 4)[:, 1:],
        income=np.fromiter((s.income for s in states), dtype=np.float64, count=n),
        volatility=np.fromiter((s.volatility for s in states), dtype=np.float64, count=n),
    )


def features(
    states: list[BorrowerState], as_of_us: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """``float32[len(states), n_borrower_features]``: each borrower's features as of a time."""
    return feature_kernel(arrays(states), np.arange(len(states), dtype=np.int64), as_of_us).astype(
        np.float32
    )


def prune(
    us: npt.NDArray[np.int64], types: npt.NDArray[np.int8], *, as_of_us: int
) -> npt.NDArray[np.bool_]:
    """Which compacted events the online state keeps (see the module docstring).

    Features at any time ``t >= as_of_us`` are unchanged by what is dropped: a type read
    only by windows of ``W`` days never looks before ``t - W``; "last event" and running
    sums keep every event of their types (``compact_events`` already summarized them).
    """
    keep_days = _KEEP_DAYS[types.astype(np.int64)]  # code -1 picks the trailing entry
    return (keep_days == _ALWAYS) | ((keep_days > 0) & (us >= as_of_us - keep_days * _DAY_US))
