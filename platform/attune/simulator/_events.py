"""Columnar builders for the simulator's per-month tables (events, presentations, values)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attune.data.schema import (
    CHANNELS,
    EVENT_TYPES,
    EVENTS,
    OPTION_IDS,
    PRESENTATIONS,
    SLATE_SIZE,
    TOUCHPOINTS,
)

#: Ground-truth values table (contract section 2, plus the two response probabilities).
VALUES = pa.schema(
    [
        ("presentation_id", pa.int64()),
        ("option_id", pa.string()),
        ("value", pa.float64()),  # P(completed and current 14 d later | examined)
        ("p_engage", pa.float64()),  # P(engaged | examined)
        ("p_complete", pa.float64()),  # P(completed | examined)
    ]
)
#: Event type -> its index in EVENT_TYPES (the simulator's integer event codes).
EVENT_CODE: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}
#: Presentation ids: borrower_id * _PID_BORROWER + month * _PID_MONTH + index in month.
_PID_BORROWER = 4096
_PID_MONTH = 4


def presentation_id(borrower_id: np.ndarray, month: int, index: int) -> np.ndarray:
    """Globally unique, deterministic presentation ids (``month`` < 1024, ``index`` < 4)."""
    return borrower_id * _PID_BORROWER + month * _PID_MONTH + index


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype(np.int64) * 1_000_000, type=pa.timestamp("us", tz="UTC"))


def _labels(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    indices = pa.array(codes.astype(np.int32), mask=codes < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(names)).cast(pa.string())


class MonthEvents:
    """Append-only column chunks of one month's events (borrower index, not id)."""

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, ...]] = []

    def add(
        self,
        idx: np.ndarray,
        ts: np.ndarray,
        event_type: int | np.ndarray,
        *,
        amount: np.ndarray | None = None,
        channel: int | None = None,
    ) -> None:
        n = idx.shape[0]
        if n == 0:
            return
        self._chunks.append(
            (
                idx.astype(np.int64),
                np.asarray(ts, dtype=np.int64),
                np.broadcast_to(np.asarray(event_type, dtype=np.int16), (n,)),
                np.full(n, np.nan) if amount is None else np.round(amount, 2),
                np.full(n, -1 if channel is None else channel, dtype=np.int16),
            )
        )

    def table(
        self,
        *,
        borrower_ids: np.ndarray,
        loan_ids: np.ndarray,
        month: int,
        start_ts: int,
        end_ts: int,
    ) -> pa.Table:
        """The events in ``[start_ts, end_ts)``, sorted by borrower and time, with ids."""
        if not self._chunks:
            return EVENTS.empty_table()
        idx, ts, kind, amount, channel = (
            np.concatenate(c) for c in zip(*self._chunks, strict=True)
        )
        keep = (ts >= start_ts) & (ts < end_ts)
        order = np.lexsort((kind[keep], ts[keep], idx[keep]))
        idx, ts, kind, amount, channel = (a[keep][order] for a in (idx, ts, kind, amount, channel))
        # seq: rank of the event among the borrower's events of this month
        first = np.r_[True, idx[1:] != idx[:-1]]
        starts = np.flatnonzero(first)
        seq = np.arange(idx.size) - np.repeat(starts, np.diff(np.r_[starts, idx.size]))
        bids = borrower_ids[idx]
        event_id = pc.binary_join_element_wise(
            pc.cast(pa.array(bids), pa.string()),
            pa.scalar(str(month)),
            pc.cast(pa.array(seq), pa.string()),
            "-",
        )
        return pa.Table.from_arrays(
            [
                event_id,
                pa.array(bids),
                pa.array(loan_ids[idx]),
                _ts(ts),
                _labels(kind, EVENT_TYPES),
                pa.array(amount, from_pandas=True),
                _labels(channel, CHANNELS),
            ],
            schema=EVENTS,
        )


@dataclass(frozen=True)
class PresentationRows:
    """One presentation per row (all arrays share the first dimension)."""

    presentation_id: np.ndarray
    idx: np.ndarray  # borrower index within the shard
    ts: np.ndarray
    touchpoint: np.ndarray
    slates: np.ndarray  # (n, 3) option indices by position
    propensities: np.ndarray  # (n, 3)
    responses: np.ndarray  # (n, 3) 0 ignored, 1 engaged, 2 completed
    current_14d: np.ndarray  # (n,)
    value: np.ndarray  # (n, n_options)
    p_engage: np.ndarray
    p_complete: np.ndarray


def concat_rows(parts: list[PresentationRows]) -> PresentationRows | None:
    if not parts:
        return None
    fields = PresentationRows.__dataclass_fields__
    return PresentationRows(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields})


def presentation_tables(
    rows: PresentationRows | None, *, borrower_ids: np.ndarray, loan_ids: np.ndarray, end_ts: int
) -> tuple[pa.Table, pa.Table, np.ndarray, np.ndarray]:
    """``(presentations, values, value_matrix, slates)`` for presentations before ``end_ts``."""
    n_opt = len(OPTION_IDS)
    if rows is None:
        return (
            PRESENTATIONS.empty_table(),
            VALUES.empty_table(),
            np.empty((0, n_opt)),
            np.empty((0, 3), dtype=np.int64),
        )
    keep = rows.ts < end_ts
    order = np.argsort(rows.presentation_id[keep], kind="stable")
    sel = np.flatnonzero(keep)[order]
    n = sel.size
    pid = rows.presentation_id[sel]
    idx = rows.idx[sel]
    slates = rows.slates[sel]
    presentations = pa.Table.from_arrays(
        [
            pa.array(np.repeat(pid, SLATE_SIZE)),
            pa.array(np.repeat(borrower_ids[idx], SLATE_SIZE)),
            pa.array(np.repeat(loan_ids[idx], SLATE_SIZE)),
            _ts(np.repeat(rows.ts[sel], SLATE_SIZE)),
            _labels(np.repeat(rows.touchpoint[sel], SLATE_SIZE), TOUCHPOINTS),
            _labels(slates.ravel(), OPTION_IDS),
            pa.array(np.tile(np.arange(1, SLATE_SIZE + 1, dtype=np.int8), n)),
            pa.array(rows.propensities[sel].ravel()),
            pa.array(rows.responses[sel].ravel().astype(np.int8)),
            pa.array(np.repeat(rows.current_14d[sel], SLATE_SIZE)),
        ],
        schema=PRESENTATIONS,
    )
    values = pa.Table.from_arrays(
        [
            pa.array(np.repeat(pid, n_opt)),
            _labels(np.tile(np.arange(n_opt), n), OPTION_IDS),
            pa.array(rows.value[sel].ravel()),
            pa.array(rows.p_engage[sel].ravel()),
            pa.array(rows.p_complete[sel].ravel()),
        ],
        schema=VALUES,
    )
    return presentations, values, rows.value[sel], slates
