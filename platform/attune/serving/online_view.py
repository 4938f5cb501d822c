"""The online feature view: every borrower's features as of now, from a snapshot plus new events.

A snapshot (``attune features materialize``, :mod:`attune.data.materialize`) holds each
borrower's events that later features still need, and the borrower and loan rows. An
:class:`OnlineView` keeps them in flat numpy columns sorted by borrower (about 26 bytes
per kept event), adds the events posted since (``POST /v1/events``) per borrower, and
answers a look-up by calling :func:`attune.data.features.borrower_features`, the code
that builds training data, on that borrower's events as of the request time. Online
features therefore equal offline features for the same borrower and time by
construction; a test proves it on simulator data.

* Unknown borrower (not in the snapshot): the **population defaults**, the median of
  each feature over the snapshot's borrowers at the snapshot time, flagged
  ``fallback=True``; never an error.
* Idempotence: an event whose ``(borrower_id, event_id)`` the view has seen (in the
  snapshot or posted before) is a duplicate and changes nothing.
* Horizon: events older than ``as_of - horizon_days`` of the snapshot are stored for
  the next materialization but not applied (the snapshot compacted that period).
* Reloads and the event log: :mod:`attune.serving.online_store`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from attune import storage
from attune.data.features import MAX_WINDOW_DAYS, borrower_features, micros
from attune.data.materialize import SNAPSHOT_PARTS, SnapshotInfo
from attune.data.schema import CHANNELS, EVENT_TYPES
from attune.data.spec import BORROWER_FEATURES
from attune.errors import InvalidInput, StoreNotFound

log = logging.getLogger(__name__)

_DAY_US = 86_400_000_000
# code -1 (null or unknown) picks the trailing None
_TYPE_NAMES = np.array([*EVENT_TYPES, None], dtype=object)
_CHANNEL_NAMES = np.array([*CHANNELS, None], dtype=object)
_FEATURES = list(BORROWER_FEATURES)
_EVENT_COLUMNS = ("event_id", "borrower_id", "ts", "event_type", "amount", "channel")
_LOAN_VALUES = ("term_months", "installment", "apr")
_COLUMN_TYPES = {
    "borrower_id": np.int64,
    "us": np.int64,
    "type": np.int8,
    "channel": np.int8,
    "amount": np.float64,
    "hash": np.uint64,
}
#: An ``events`` table as flat numpy columns (see ``_event_columns``).
EventColumns = dict[str, np.ndarray]
Status = str
#: What happened to a posted event.
STATUSES: tuple[Status, ...] = ("applied", "duplicate", "unknown_borrower", "stale")


@dataclass(frozen=True)
class OnlineLookup:
    """One borrower's features as of ``as_of`` and where they came from."""

    borrower_id: int
    as_of: datetime
    snapshot_id: str
    spec_hash: str
    fallback: bool
    features: dict[str, float]


def release_memory() -> None:
    """Hand freed memory back to the OS after a load (best effort).

    A load allocates several times the view's size for a moment; without this the
    allocators keep those pages and a replica's resident memory ratchets up with every
    reload. glibc's ``malloc_trim`` and Arrow's pool release are both no-ops elsewhere.
    """
    import contextlib
    import ctypes
    import gc

    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _pandas(data: pd.DataFrame | pa.Table, columns: Sequence[str]) -> pd.DataFrame:
    return data.select(list(columns)).to_pandas() if isinstance(data, pa.Table) else data


def _arrow(events: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(events, pa.Table):
        return events.select(list(_EVENT_COLUMNS))
    return pa.Table.from_pandas(events[list(_EVENT_COLUMNS)], preserve_index=False)


def _codes(values: pa.ChunkedArray, names: Sequence[str]) -> npt.NDArray[np.int8]:
    """Position of each value in ``names``; -1 for null or unknown."""
    out = [np.zeros(0, np.int8)]
    for chunk in values.chunks:
        if pa.types.is_dictionary(chunk.type):  # look the few distinct values up once
            lut = np.append(_codes(pa.chunked_array([chunk.dictionary]), names), np.int8(-1))
            out.append(lut[pc.fill_null(chunk.indices, -1).to_numpy()])
            continue
        strings = pc.cast(chunk, pa.string())  # an all-null column arrives as type null
        found = pc.index_in(strings, value_set=pa.array(names, pa.string()))
        out.append(np.asarray(pc.fill_null(found, -1).to_numpy(), dtype=np.int8))
    return np.concatenate(out)


def _hash_ids(values: pa.ChunkedArray) -> npt.NDArray[np.uint64]:
    """64-bit FNV-1a of each string, vectorized over the Arrow buffers (no Python strings)."""
    arr = pc.cast(values, pa.large_string()).combine_chunks()
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    out = np.full(len(arr), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    shortest = int(lengths.min(initial=0))
    for j in range(shortest):  # every string has a byte here: whole-array operations
        out = (out ^ raw[starts + j].astype(np.uint64)) * prime
    for j in range(shortest, int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > j)
        out[live] = (out[live] ^ raw[starts[live] + j].astype(np.uint64)) * prime
    return out


def _event_columns(table: pa.Table) -> EventColumns:
    """The flat columns of an ``events`` table (microseconds, codes, hash; NaN amounts)."""
    ts = pc.cast(table["ts"], pa.timestamp("us", tz="UTC")) if len(table) else table["ts"]
    amount = pc.fill_null(pc.cast(table["amount"], pa.float64()), np.nan)
    return {
        "borrower_id": np.asarray(table["borrower_id"].to_numpy(), dtype=np.int64),
        "us": np.asarray(pc.cast(ts, pa.int64()).to_numpy(), dtype=np.int64),
        "type": _codes(table["event_type"], EVENT_TYPES),
        "channel": _codes(table["channel"], CHANNELS),
        "amount": np.asarray(amount.to_numpy(), dtype=np.float64),
        "hash": _hash_ids(table["event_id"]),
    }


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    # pandas' arrow-backed column labels make each column insert costly; plain labels do not
    frame.columns = pd.Index(list(columns), dtype=object)
    return frame


def _ranges(starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Concatenated ``arange(start, end)`` for each pair, vectorized."""
    lengths = ends - starts
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)


class OnlineView:
    """One snapshot's borrowers in flat columns, plus the events applied since.

    Not thread-safe: mutate (``apply``) and read (``lookup``) from one thread (the
    replica's event loop); a view being built elsewhere is private until swapped in.
    """

    def __init__(
        self,
        info: SnapshotInfo,
        *,
        features: pd.DataFrame | pa.Table,
        events: pd.DataFrame | pa.Table | EventColumns,
        borrowers: pd.DataFrame | pa.Table,
        loans: pd.DataFrame | pa.Table,
        horizon_days: int = MAX_WINDOW_DAYS,
    ) -> None:
        self.info = info
        self.as_of_us = int(micros([info.as_of])[0])
        self.cutoff_us = self.as_of_us - horizon_days * _DAY_US
        feats = _pandas(features, ["borrower_id", *_FEATURES])
        self.ids = np.unique(feats["borrower_id"].to_numpy(dtype=np.int64))
        medians = feats[_FEATURES].median() if len(feats) else pd.Series(0.0, _FEATURES)
        self.defaults = {n: float(np.float32(medians[n])) for n in _FEATURES}
        people = _pandas(borrowers, ["borrower_id", "income_monthly", "income_volatility"])
        people = people.drop_duplicates("borrower_id", keep="last").set_index("borrower_id")
        people = people.reindex(self.ids)
        self._income = people["income_monthly"].to_numpy(dtype=np.float64, na_value=np.nan)
        self._volatility = people["income_volatility"].to_numpy(dtype=np.float64, na_value=np.nan)
        loans = _pandas(loans, ["borrower_id", "origination_ts", *_LOAN_VALUES])
        loans = loans.loc[loans["borrower_id"].isin(self.ids) & loans["origination_ts"].notna()]
        loans = loans.iloc[np.argsort(loans["borrower_id"].to_numpy(), kind="stable")]
        loan_ids = loans["borrower_id"].to_numpy(dtype=np.int64)
        self._loan_bounds = np.searchsorted(loan_ids, np.append(self.ids, np.iinfo(np.int64).max))
        self._loan_us = micros(loans["origination_ts"])
        self._loan = {c: loans[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in _LOAN_VALUES}
        # Events stay in Arrow until they are flat columns: millions of rows, no Python objects.
        columns = dict(events) if isinstance(events, dict) else _event_columns(_arrow(events))
        _, known = self._position(columns["borrower_id"])
        if not known.all():
            columns = {k: v[known] for k, v in columns.items()}
        # grouped by borrower (feature code sorts by time itself); snapshot files come in
        # runs of whole borrowers, which a stable sort merges in near-linear time
        order = np.argsort(columns["borrower_id"], kind="stable")
        ev_ids = columns.pop("borrower_id")[order]  # pop: each input column goes once copied
        self._ev_bounds = np.searchsorted(ev_ids, np.append(self.ids, np.iinfo(np.int64).max))
        del ev_ids
        self._ev_us = columns.pop("us")[order]
        self._ev_type = columns.pop("type")[order]
        self._ev_channel = columns.pop("channel")[order]
        self._ev_amount = columns.pop("amount")[order]
        self._ev_hash = columns.pop("hash")[order]
        self._delta: dict[int, list[tuple[int, int, int, float]]] = {}
        self._seen: set[tuple[int, int]] = set()
        #: Frames of every non-duplicate event applied since the view was built.
        self.posted: list[pd.DataFrame] = []

    @classmethod
    def load(cls, info: SnapshotInfo) -> OnlineView:
        """Read a committed snapshot (StoreNotFound when missing, uncommitted or incomplete)."""
        import pyarrow.dataset as pads

        if not storage.is_complete(info.uri):
            raise StoreNotFound(uri=info.uri, problem="snapshot missing or not committed")
        manifest = storage.read_json(storage.join(info.uri, "manifest.json"))
        parts: dict[str, Any] = {}
        for part, schema in SNAPSHOT_PARTS.items():
            uri = storage.join(info.uri, part)
            if not storage.list_uris(uri):
                raise StoreNotFound(uri=uri, problem="snapshot part missing: materialize again")
            fs, path = storage.pyarrow_filesystem(uri)
            if part != "events":
                parts[part] = pads.dataset(path, filesystem=fs, format="parquet", schema=schema)
                continue
            # batch by batch, categories read as dictionaries: the peak stays near the result
            options = pads.ParquetFileFormat(dictionary_columns=["event_type", "channel"])
            data = pads.dataset(path, filesystem=fs, format=options)
            columns = {k: np.empty(data.count_rows(), t) for k, t in _COLUMN_TYPES.items()}
            at = 0
            batches = data.to_batches(
                columns=list(_EVENT_COLUMNS),
                batch_size=1 << 18,
                fragment_readahead=1,
                batch_readahead=1,
            )
            for batch in batches:
                for key, values in _event_columns(pa.Table.from_batches([batch])).items():
                    columns[key][at : at + len(values)] = values
                at += batch.num_rows
            parts[part] = columns
        tables = {k: v.to_table() if isinstance(v, pads.Dataset) else v for k, v in parts.items()}
        view = cls(info, horizon_days=int(manifest.get("horizon_days", MAX_WINDOW_DAYS)), **tables)
        del parts, tables
        release_memory()
        return view

    def nbytes(self) -> int:
        """Bytes held by the snapshot columns (events applied since are not counted)."""
        arrays = [
            self.ids,
            self._income,
            self._volatility,
            self._loan_bounds,
            self._loan_us,
            *self._loan.values(),
            self._ev_bounds,
            self._ev_us,
            self._ev_type,
            self._ev_channel,
            self._ev_amount,
            self._ev_hash,
        ]
        return int(sum(a.nbytes for a in arrays))

    def _position(self, borrower_ids: npt.NDArray[np.int64]) -> tuple[Any, Any]:
        pos = np.minimum(np.searchsorted(self.ids, borrower_ids), max(len(self.ids) - 1, 0))
        known = self.ids[pos] == borrower_ids if len(self.ids) else np.zeros(len(pos), bool)
        return pos, known

    # ------------------------------------------------------------------ updates

    def apply(self, frame: pd.DataFrame) -> list[Status]:
        """Apply an ``events`` frame (validated); returns each row's status, in order."""
        if frame.empty:
            return []
        columns = _event_columns(_arrow(frame))
        ids, hashes, us = columns["borrower_id"], columns["hash"], columns["us"]
        types, channels, amounts = columns["type"], columns["channel"], columns["amount"]
        pos, known = self._position(ids)
        statuses: list[Status] = []
        for i in range(len(frame)):
            bid, key = int(ids[i]), (int(ids[i]), int(hashes[i]))
            start, end = self._ev_bounds[pos[i]], self._ev_bounds[pos[i] + 1]
            if key in self._seen or (known[i] and (self._ev_hash[start:end] == hashes[i]).any()):
                statuses.append("duplicate")
                continue
            self._seen.add(key)
            if not known[i]:
                statuses.append("unknown_borrower")
            elif us[i] < self.cutoff_us:
                statuses.append("stale")
            else:
                row = (int(us[i]), int(types[i]), int(channels[i]), float(amounts[i]))
                self._delta.setdefault(bid, []).append(row)
                statuses.append("applied")
        kept = frame.loc[np.asarray(statuses) != "duplicate"]
        if not kept.empty:
            self.posted.append(kept)
        return statuses

    # ------------------------------------------------------------------ look-ups

    def check_as_of(self, as_of: datetime) -> None:
        """Raise InvalidInput naming ``as_of`` when it precedes the snapshot (not exact then)."""
        if int(micros([as_of])[0]) < self.as_of_us:
            raise InvalidInput(
                f"as_of {as_of.isoformat()} precedes snapshot {self.info.snapshot_id} "
                f"({self.info.as_of.isoformat()}): online features start at the snapshot",
                field="as_of",
                value=as_of.isoformat(),
            )

    def lookup(self, borrower_ids: Sequence[int], as_ofs: Sequence[datetime]) -> list[OnlineLookup]:
        """Features of each ``(borrower_ids[i], as_ofs[i])``: one vectorized feature call.

        Every ``as_of`` must pass :meth:`check_as_of`. Unknown borrowers get the
        population defaults with ``fallback=True``.
        """
        q_ids = np.asarray(borrower_ids, dtype=np.int64)
        pos, known = self._position(q_ids)
        rows: npt.NDArray[np.float32] = np.zeros((0, len(_FEATURES)), np.float32)
        if known.any():
            queries = _frame(
                {"borrower_id": q_ids[known], "ts": micros(as_ofs)[known].astype("datetime64[us]")}
            )
            events, people, loans = self._inputs(np.unique(pos[known]))
            computed = borrower_features(events, queries, borrowers=people, loans=loans)
            rows = computed[_FEATURES].to_numpy(dtype=np.float32)
        out, k = [], 0
        for i, bid in enumerate(q_ids.tolist()):
            if known[i]:
                features, k = dict(zip(_FEATURES, rows[k].tolist(), strict=True)), k + 1
            else:
                features = dict(self.defaults)
            out.append(
                OnlineLookup(
                    borrower_id=bid,
                    as_of=as_ofs[i],
                    snapshot_id=self.info.snapshot_id,
                    spec_hash=self.info.spec_hash,
                    fallback=not known[i],
                    features=features,
                )
            )
        return out

    def _inputs(self, rows: npt.NDArray[np.int64]) -> tuple[pd.DataFrame, ...]:
        """(events, borrowers, loans) frames of the borrowers at ``rows`` of ``self.ids``."""
        ids = self.ids[rows]
        idx = _ranges(self._ev_bounds[rows], self._ev_bounds[rows + 1])
        owners = np.repeat(ids, self._ev_bounds[rows + 1] - self._ev_bounds[rows])
        cols = [owners, self._ev_us[idx], self._ev_type[idx], self._ev_channel[idx]]
        cols.append(self._ev_amount[idx])
        extra = [(b, *row) for b in ids.tolist() for row in self._delta.get(b, ())]
        if extra:  # events applied since the snapshot, in the same columns
            added = zip(*extra, strict=True)
            cols = [
                np.concatenate([c, np.asarray(a, dtype=c.dtype)])
                for c, a in zip(cols, added, strict=True)
            ]
        events = _frame(
            {
                "borrower_id": cols[0],
                "ts": cols[1].astype("datetime64[us]"),
                "event_type": _TYPE_NAMES[cols[2]],
                "amount": cols[4],
                "channel": _CHANNEL_NAMES[cols[3]],
            }
        )
        people = _frame(
            {
                "borrower_id": ids,
                "income_monthly": self._income[rows],
                "income_volatility": self._volatility[rows],
            }
        )
        lidx = _ranges(self._loan_bounds[rows], self._loan_bounds[rows + 1])
        loans = _frame(
            {
                "borrower_id": np.repeat(
                    ids, self._loan_bounds[rows + 1] - self._loan_bounds[rows]
                ),
                "origination_ts": self._loan_us[lidx].astype("datetime64[us]"),
                **{c: v[lidx] for c, v in self._loan.items()},
            }
        )
        return events, people, loans
