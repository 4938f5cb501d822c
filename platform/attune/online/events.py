"""Servicing events posted to the app: the HTTP models and the durable event log.

``POST /v1/events`` takes :class:`EventsRequest`: events with the columns and domains of
the history's ``events`` table (:data:`attune.data.schema.EVENTS`, ``EVENT_TYPES``,
``CHANNELS``); a unit test keeps the literals below equal to the schema's tuples. The
online store applies them (:mod:`attune.online.ingest`) and :class:`EventLog` appends
them, in batches, to parquet in the history layout::

    <store>/events_online/month=YYYY-MM/<writer>-<seq>-<nonce>.parquet    EVENTS schema

``attune features materialize`` reads that directory beside the history's ``events/``
(see :mod:`attune.data.materialize`), so the next snapshot sees the posted events; the
files are valid history ``events`` files, so merging them into a history for
retraining is a copy into ``<history>/events/``.

Loss window. An event is acknowledged once it is in the online store (or, while that
is down, in the replica's backlog) and in the log's buffer; the buffer is written when
it holds ``max_batch`` events or its oldest is ``max_age_s`` old, and on replica
shutdown. A replica killed without a graceful shutdown loses at most that buffer from
the durable log (events already applied to the online store stay there). While the
artifact store fails, events stay buffered up to ``max_buffer``; beyond it new events
are refused with 503 (nothing is applied), so clients retry them later (posting is
idempotent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from attune import storage
from attune.data.materialize import ONLINE_EVENTS_DIR
from attune.data.schema import EVENTS, Channel, EventType, validate_table
from attune.data.spec import BORROWER_FEATURES, StrictFloat32
from attune.errors import Unavailable

log = logging.getLogger(__name__)

#: Most events one request may carry (250 typical events are ~45 KB, below the ingress's
#: 64 KiB body limit, attune.serving.api.MAX_BODY_BYTES).
MAX_EVENTS = 250

_STRICT = ConfigDict(extra="forbid")

#: Range of times the API accepts (UTC): servicing events and feature look-ups outside it
#: are typos or attacks (year 9999 with an offset overflows a UTC conversion).
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2100, 1, 1, tzinfo=UTC)


def _bounded(value: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is outside the representable range") from None
    if not TIME_MIN <= utc < TIME_MAX:
        raise ValueError(
            f"{value.isoformat()} is outside [{TIME_MIN:%Y-%m-%d}, {TIME_MAX:%Y-%m-%d}) UTC"
        )
    return value


#: An aware time within [TIME_MIN, TIME_MAX) UTC (a 422 naming the field otherwise).
BoundedTime = Annotated[AwareDatetime, AfterValidator(_bounded)]


class ServicingEvent(BaseModel):
    """One servicing event, as a row of the history's ``events`` table."""

    model_config = _STRICT

    event_id: str = Field(
        min_length=1, max_length=128, description="Unique id; re-posting it is a no-op."
    )
    borrower_id: StrictInt = Field(ge=0, lt=2**63, description="Borrower id (int64).")
    loan_id: StrictInt | None = Field(default=None, ge=0, lt=2**63, description="Loan id.")
    ts: BoundedTime = Field(
        description="When it happened (ISO 8601 with a time zone; years 1970-2099 UTC)."
    )
    event_type: EventType = Field(description="Event type (the history's event types).")
    amount: StrictFloat32 | None = Field(
        default=None, description="Amount in currency units (installments and payments)."
    )
    channel: Channel | None = Field(
        default=None, description="Outreach / engagement channel, null otherwise."
    )


class EventsRequest(BaseModel):
    """New servicing events for the online feature view and the store."""

    model_config = _STRICT

    events: list[ServicingEvent] = Field(
        min_length=1, max_length=MAX_EVENTS, description="Events, any borrowers, any order."
    )


class EventsResponse(BaseModel):
    """What happened to the posted events (each is counted once)."""

    applied: int = Field(description="Applied to the online store and logged.")
    duplicates: int = Field(description="Already seen (same borrower and event id): ignored.")
    unknown_borrowers: int = Field(
        description="Of the applied: borrowers the snapshot does not know (their loan and "
        "income features take the missing value, -1)."
    )
    stale: int = Field(
        description="Logged but not applied: older than the snapshot's horizon of kept events."
    )
    pending: int = Field(
        default=0,
        description="Accepted and logged while the online store is down; applied when it is back.",
    )
    snapshot_id: str | None = Field(
        description="Online snapshot the events were applied to (null when pending)."
    )
    replica: str | None = Field(default=None, description="Ingress replica that answered.")


class OnlineFeaturesResponse(BaseModel):
    """A borrower's features as the online store computes them."""

    borrower_id: int = Field(description="Borrower id.")
    as_of: datetime = Field(description="Features use events strictly before this time.")
    snapshot_id: str = Field(description="Snapshot the features were computed from.")
    spec_hash: str = Field(description="Feature-spec hash of the snapshot.")
    fallback: bool = Field(
        description="True when some features are defaults (see fallback_reason)."
    )
    fallback_reason: Literal["unknown_borrower", "no_profile"] | None = Field(
        default=None,
        description="unknown_borrower: nothing is known, population defaults (snapshot "
        "medians); no_profile: only posted events are known, loan and income features are -1.",
    )
    features: dict[str, float] = Field(
        description=f"One value per borrower feature ({len(BORROWER_FEATURES)})."
    )
    replica: str | None = Field(default=None, description="Ingress replica that answered.")


def events_frame(events: list[ServicingEvent]) -> pd.DataFrame:
    """The events as an ``events`` table (schema columns and types), validated."""
    rows = [e.model_dump() for e in events]
    table = pa.Table.from_pylist(rows, schema=EVENTS)
    return validate_table(table, "events", source="POST /v1/events").to_pandas()


class EventLog:
    """A bounded buffer of posted events, written as parquet under ``<store>/events_online``.

    ``reserve`` and ``append`` run on the replica's event loop and never do I/O;
    ``flush`` does the I/O (call it in a worker thread). Thread-safe.
    """

    def __init__(
        self,
        store: str,
        *,
        writer_id: str,
        max_batch: int = 1000,
        max_age_s: float = 2.0,
        max_buffer: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = storage.join(store, ONLINE_EVENTS_DIR)
        self._writer_id = writer_id
        self.max_batch, self.max_age_s, self.max_buffer = max_batch, max_age_s, max_buffer
        self._clock = clock
        self._frames: list[pd.DataFrame] = []
        self._rows = 0
        self._oldest: float | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.written = 0
        self.failed_flushes = 0

    @property
    def buffered(self) -> int:
        return self._rows

    def reserve(self, rows: int) -> None:
        """Raise :class:`Unavailable` when ``rows`` more events would overflow the buffer."""
        if self._rows + rows > self.max_buffer:
            raise Unavailable(
                f"event log buffer full ({self._rows} of {self.max_buffer} events unwritten; "
                f"the store at {self.root} is failing): retry later",
                buffered=self._rows,
                max_buffer=self.max_buffer,
            )

    def append(self, frame: pd.DataFrame) -> None:
        """Buffer an ``events`` frame (already validated and de-duplicated)."""
        if frame.empty:
            return
        with self._lock:
            self._frames.append(frame)
            self._rows += len(frame)
            if self._oldest is None:
                self._oldest = self._clock()

    def due(self) -> bool:
        with self._lock:
            if self._oldest is None:
                return False
            return self._rows >= self.max_batch or self._clock() - self._oldest >= self.max_age_s

    def flush(self) -> int:
        """Write everything buffered (one file per month); returns events written.

        On a store failure the events stay buffered and the error is logged, not raised.
        """
        with self._flush_lock:
            with self._lock:
                frames, self._frames = self._frames, []
                oldest, self._oldest = self._oldest, None
            if not frames:
                return 0
            batch = pd.concat(frames, ignore_index=True)
            try:
                self._write(batch)
            except Exception as exc:
                with self._lock:
                    self._frames.insert(0, batch)
                    self._oldest = oldest
                    self.failed_flushes += 1
                log.warning("event log: writing to %s failed (%s)", self.root, exc)
                return 0
            with self._lock:
                self._rows -= len(batch)
                self.written += len(batch)
            return len(batch)

    def _write(self, batch: pd.DataFrame) -> None:
        months = batch["ts"].dt.strftime("%Y-%m")
        for month, rows in batch.groupby(months, sort=True):
            self._seq += 1
            name = storage.batch_name(self._writer_id, self._seq)
            uri = storage.join(self.root, f"month={month}", f"{name}.parquet")
            storage.write_parquet(
                pa.Table.from_pandas(rows, schema=EVENTS, preserve_index=False), uri
            )


def read_logged_events(store: str, *, since: datetime) -> pd.DataFrame:
    """Events under ``<store>/events_online`` with ``ts >= since``, validated (may be empty).

    Only month partitions from ``since``'s month on are read.
    """
    root = storage.join(store, ONLINE_EVENTS_DIR)
    first = f"month={since:%Y-%m}"
    frames = []
    for uri in storage.list_uris(root):
        rel = uri[len(root) :].lstrip("/")
        if not uri.endswith(".parquet") or any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        if rel.split("/")[0] < first:
            continue
        fs, path = storage.pyarrow_filesystem(uri)
        with fs.open_input_file(path) as handle:
            table = validate_table(pq.read_table(handle), "events", source=uri)
        frames.append(table.to_pandas())
    if not frames:
        return EVENTS.empty_table().to_pandas()
    out = pd.concat(frames, ignore_index=True)
    return out.loc[out["ts"] >= pd.Timestamp(since)].reset_index(drop=True)
