"""The servicing-history contract: tables, columns, option catalog, event types.

Version :data:`SCHEMA_VERSION`. Every history written by ``attune generate`` (or by a
lender's own export) has this layout under its root URI::

    manifest.json                      schema version, counts, seed
    borrowers/part-*.parquet           one row per borrower
    loans/part-*.parquet               one row per loan
    events/month=YYYY-MM/*.parquet     append-only servicing events
    presentations/month=YYYY-MM/*.parquet
                                       one row per *shown* option of a slate
    protected/part-*.parquet           protected attributes (fairness evaluation only)
    ground_truth/                      simulator only; evaluation reads it, training never

Timestamps are ``timestamp[us, tz=UTC]``. Readers validate with :func:`validate_table`,
which names the file, the column and the first offending row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attune.errors import SchemaError

SCHEMA_VERSION = "1.0"

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ServicingOption:
    """One entry of the option catalog."""

    option_id: str
    title: str
    channel: str  # the channel the option itself acts on ("app" when it is an in-app action)


#: The option catalog. Its order is fixed: option features are one-hot in this order.
OPTION_CATALOG: tuple[ServicingOption, ...] = (
    ServicingOption("autopay_enroll", "Enroll in autopay", "app"),
    ServicingOption("due_date_change", "Move your due date", "app"),
    ServicingOption("payment_plan", "Set up a payment plan", "app"),
    ServicingOption("hardship_deferral", "Request hardship help", "app"),
    ServicingOption("reminder_sms", "Get reminders by SMS", "sms"),
    ServicingOption("reminder_email", "Get reminders by email", "email"),
    ServicingOption("reminder_push", "Get reminders by push", "push"),
    ServicingOption("pay_now", "Pay now", "app"),
)
OPTION_IDS: tuple[str, ...] = tuple(o.option_id for o in OPTION_CATALOG)

#: Touchpoints on which a slate is shown.
TOUCHPOINTS: tuple[str, ...] = ("app", "email", "sms")
#: Outreach / engagement channels.
#: Outreach / engagement channel of an event (a Literal, so HTTP schemas list them).
Channel = Literal["sms", "email", "push"]
CHANNELS: tuple[str, ...] = get_args(Channel)
#: A slate shows this many options, at positions 1..SLATE_SIZE.
SLATE_SIZE = 3

#: Event types of the append-only ``events`` table (a Literal, so HTTP schemas list them).
EventType = Literal[
    "installment_due",
    "payment_on_time",
    "payment_late",
    "payment_partial",
    "payment_missed",
    "autopay_on",
    "autopay_off",
    "login",
    "inbound_contact",
    "outreach_sent",
    "outreach_delivered",
    "outreach_opened",
    "outreach_clicked",
    "hardship_flag",
    "plan_offered",
    "plan_accepted",
    "plan_broken",
    "charge_off",
    "payoff",
    # appended (codes of the types above are unchanged): a completed due-date change and a
    # reminder enrollment on a channel, so that every catalog option's completion is an event
    "due_date_changed",
    "reminder_on",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

#: Responses to a shown option.
RESPONSES = {0: "ignored", 1: "engaged", 2: "completed"}

BORROWERS = pa.schema(
    [
        ("borrower_id", pa.int64()),
        ("signup_ts", TS),
        ("state", pa.string()),
        ("income_monthly", pa.float64()),
        ("income_volatility", pa.float64()),
        ("preferred_channel", pa.string()),
    ]
)

LOANS = pa.schema(
    [
        ("loan_id", pa.int64()),
        ("borrower_id", pa.int64()),
        ("origination_ts", TS),
        ("principal", pa.float64()),
        ("apr", pa.float64()),
        ("term_months", pa.int32()),
        ("installment", pa.float64()),
    ]
)

EVENTS = pa.schema(
    [
        ("event_id", pa.string()),
        ("borrower_id", pa.int64()),
        ("loan_id", pa.int64()),
        ("ts", TS),
        ("event_type", pa.string()),
        ("amount", pa.float64()),
        ("channel", pa.string()),  # outreach/engagement channel, null otherwise
    ]
)

PRESENTATIONS = pa.schema(
    [
        ("presentation_id", pa.int64()),
        ("borrower_id", pa.int64()),
        ("loan_id", pa.int64()),
        ("ts", TS),
        ("touchpoint", pa.string()),
        ("option_id", pa.string()),
        ("position", pa.int8()),  # 1..SLATE_SIZE
        ("propensity", pa.float64()),  # logging policy's P(this option at this position)
        ("response", pa.int8()),  # 0 ignored, 1 engaged, 2 completed
        ("current_14d", pa.bool_()),  # loan current 14 days after the presentation
    ]
)

PROTECTED = pa.schema(
    [
        ("borrower_id", pa.int64()),
        ("age_band", pa.string()),
        ("gender", pa.string()),
        ("ethnicity", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "borrowers": BORROWERS,
    "loans": LOANS,
    "events": EVENTS,
    "presentations": PRESENTATIONS,
    "protected": PROTECTED,
}

#: Columns that may never be model features.
PROTECTED_COLUMNS: frozenset[str] = frozenset(PROTECTED.names) - {"borrower_id"}

#: Allowed values of categorical columns, checked on read.
_DOMAINS: dict[str, dict[str, tuple[str, ...]]] = {
    "events": {"event_type": EVENT_TYPES},
    "presentations": {"touchpoint": TOUCHPOINTS, "option_id": OPTION_IDS},
    "borrowers": {"preferred_channel": CHANNELS},
}
_NOT_NULL: dict[str, tuple[str, ...]] = {
    "events": ("event_id", "borrower_id", "ts", "event_type"),
    "presentations": (
        "presentation_id",
        "borrower_id",
        "ts",
        "option_id",
        "position",
        "propensity",
    ),
    "borrowers": ("borrower_id",),
    "loans": ("loan_id", "borrower_id"),
    "protected": ("borrower_id",),
}


def _first_bad_row(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))[0])


def validate_table(table: pa.Table, name: str, *, source: str) -> pa.Table:
    """Check ``table`` against the schema of history table ``name``; return it cast.

    Extra columns (e.g. hive partition keys) are dropped. Raises :class:`SchemaError`
    naming ``source`` (a file or URI), the column, the first offending row and the
    problem: a missing column, a type that cannot be cast safely, a null in a
    required column, a value outside its domain, or a propensity outside (0, 1].
    """
    schema = TABLES[name]
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(file=source, column=field.name, problem="missing column")
        col = table.column(field.name)
        if not col.type.equals(field.type):
            if pa.types.is_timestamp(field.type) and pa.types.is_timestamp(col.type):
                ok = True
            else:
                ok = _castable(col.type, field.type)
            if not ok:
                raise SchemaError(
                    file=source,
                    column=field.name,
                    problem=f"has type {col.type}, expected {field.type}",
                )
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    file=source, column=field.name, problem=f"cannot cast to {field.type}: {exc}"
                ) from exc
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=schema)
    for column in _NOT_NULL.get(name, ()):
        nulls = pc.is_null(out.column(column))
        if pc.any(nulls).as_py():
            raise SchemaError(
                file=source, column=column, row=_first_bad_row(nulls), problem="null value"
            )
    for column, domain in _DOMAINS.get(name, {}).items():
        col = out.column(column)
        bad = pc.and_(pc.invert(pc.is_in(col, value_set=pa.array(domain))), pc.is_valid(col))
        if pc.any(bad).as_py():
            row = _first_bad_row(bad)
            raise SchemaError(
                file=source,
                column=column,
                row=row,
                problem=f"unknown value {col[row].as_py()!r} (allowed: {', '.join(domain)})",
            )
    if name == "presentations":
        prop = out.column("propensity")
        bad = pc.or_(pc.less_equal(prop, 0.0), pc.greater(prop, 1.0))
        if pc.any(bad).as_py():
            row = _first_bad_row(bad)
            raise SchemaError(
                file=source,
                column="propensity",
                row=row,
                problem=f"propensity {prop[row].as_py()!r} outside (0, 1]",
            )
        pos = out.column("position")
        bad = pc.or_(pc.less(pos, 1), pc.greater(pos, SLATE_SIZE))
        if pc.any(bad).as_py():
            row = _first_bad_row(bad)
            raise SchemaError(
                file=source, column="position", row=row, problem=f"position outside 1..{SLATE_SIZE}"
            )
    return out


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """Only widening numeric casts and string<->large_string are accepted silently."""
    if pa.types.is_integer(src) and (pa.types.is_integer(dst) or pa.types.is_floating(dst)):
        return True
    if pa.types.is_floating(src) and pa.types.is_floating(dst):
        return True
    if pa.types.is_dictionary(src):
        return _castable(src.value_type, dst)
    stringy = (pa.types.is_string(src) or pa.types.is_large_string(src)) and (
        pa.types.is_string(dst) or pa.types.is_large_string(dst)
    )
    return stringy or (pa.types.is_boolean(src) and pa.types.is_boolean(dst))
