"""The decision log: every served (and shadow) decision, buffered, flushed to parquet.

Layout (readable with ``ray.data.read_parquet(<store>/decisions)``; ``date`` becomes a
hive partition column)::

    <store>/decisions/date=YYYY-MM-DD/<writer>-<seq>-<nonce>.parquet

One row per decision and role: the primary answer (``role="primary"``) and, when the
request was mirrored, the shadow model's answer under the same ``decision_id``
(``role="shadow"``). Columns are :data:`DECISION_SCHEMA`.

Loss window. :class:`DecisionLog` keeps records in memory and writes a batch when it
holds ``max_batch`` records or its oldest record is ``max_age_s`` old (the ingress
checks every ``max_age_s / 4``), and on replica shutdown. A replica that dies without
a graceful shutdown (killed process, lost node) loses what it had not written: at most
``max_age_s`` seconds (plus one check interval) or ``max_batch`` records of decisions,
whichever is smaller, while the sink is healthy. While the sink fails, records stay
buffered up to ``max_buffer`` (then new records are dropped and counted, and serving
goes on), so an outage lengthens the window to at most ``max_buffer`` records.

The sink is a :class:`DecisionSink` (a Protocol): :class:`ParquetSink` writes through
pyarrow to a local directory or ``s3://`` (same settings as :mod:`attune.storage`);
:class:`MemorySink` keeps tables in memory for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from attune import storage

log = logging.getLogger(__name__)

DECISION_SCHEMA = pa.schema(
    [
        pa.field("decision_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("borrower_hash", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("feature_spec_hash", pa.string(), nullable=False),
        pa.field("touchpoint", pa.string(), nullable=False),
        pa.field("feature_source", pa.string(), nullable=False),
        pa.field("candidates", pa.list_(pa.string()), nullable=False),
        pa.field("features", pa.list_(pa.list_(pa.float32())), nullable=False),
        pa.field("scores", pa.list_(pa.float64()), nullable=False),
        pa.field("returned_order", pa.list_(pa.string()), nullable=False),
        pa.field("propensities", pa.list_(pa.float64()), nullable=True),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("logging_policy", pa.string(), nullable=True),
    ]
)


@dataclass(frozen=True)
class DecisionRecord:
    """One logged decision. ``features[i]`` and ``scores[i]`` belong to ``candidates[i]``.

    An exploring decision carries ``propensities[k]``, the probability that
    ``returned_order[k]`` was drawn at position ``k`` for every shown position, and
    ``logging_policy``, the exploring policy's name and parameters (JSON); a greedy
    decision carries neither.

    ``features`` (``float32[n, n_features]``) and ``scores`` (``float64[n]``) are kept as
    the arrays the request produced; they become Arrow lists only when a batch is written
    (vectorized, off the request path).
    """

    decision_id: str
    ts: datetime
    role: str
    borrower_hash: str
    arm: str
    model_version: str
    feature_spec_hash: str
    touchpoint: str
    feature_source: str
    candidates: tuple[str, ...]
    features: np.ndarray
    scores: np.ndarray
    returned_order: tuple[str, ...]
    propensities: tuple[float, ...] | None
    latency_ms: float
    logging_policy: str | None = None

    @property
    def date(self) -> str:
        return self.ts.strftime("%Y-%m-%d")


def records_to_table(records: Sequence[DecisionRecord]) -> pa.Table:
    """A :data:`DECISION_SCHEMA` table of ``records``."""
    arrays: dict[str, pa.Array] = {}
    for name in DECISION_SCHEMA.names:
        if name not in _ARRAY_COLUMNS:
            values = [getattr(record, name) for record in records]
            arrays[name] = pa.array(values, type=DECISION_SCHEMA.field(name).type)
    counts = np.fromiter((len(r.scores) for r in records), dtype=np.int32, count=len(records))
    per_record = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    arrays["scores"] = pa.ListArray.from_arrays(
        per_record, pa.array(np.concatenate([r.scores for r in records]).astype(np.float64))
    )
    rows = np.concatenate([r.features for r in records]).astype(np.float32)
    per_row = np.arange(0, rows.size + 1, max(rows.shape[1], 1), dtype=np.int32)
    inner = pa.ListArray.from_arrays(per_row[: rows.shape[0] + 1], pa.array(rows.reshape(-1)))
    arrays["features"] = pa.ListArray.from_arrays(per_record, inner)
    return pa.Table.from_arrays(
        [arrays[name] for name in DECISION_SCHEMA.names], schema=DECISION_SCHEMA
    )


_ARRAY_COLUMNS = frozenset({"features", "scores"})


class DecisionSink(Protocol):
    """Where decision batches go. ``write`` raises on failure (the log retries later)."""

    def write(self, table: pa.Table, *, date: str, name: str) -> str: ...


class ParquetSink:
    """Writes each batch as one parquet file under ``<root>/decisions/date=<date>/``."""

    def __init__(self, root: str) -> None:
        self.root = storage.join(root, "decisions")

    def write(self, table: pa.Table, *, date: str, name: str) -> str:
        uri = storage.join(self.root, f"date={date}", f"{name}.parquet")
        storage.write_parquet(table, uri)
        return uri


class MemorySink:
    """Keeps written tables in memory (tests); ``fail`` makes every write raise."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.fail = False

    def write(self, table: pa.Table, *, date: str, name: str) -> str:
        if self.fail:
            raise OSError("sink unavailable")
        self.tables.append(table)
        return f"memory://{date}/{name}"

    def rows(self) -> list[dict[str, Any]]:
        return [row for table in self.tables for row in table.to_pylist()]


@dataclass(frozen=True)
class LogStats:
    """Counters of one :class:`DecisionLog` (since it was created)."""

    appended: int
    written: int
    dropped: int
    failed_flushes: int
    buffered: int


class DecisionLog:
    """A bounded in-memory buffer of decisions, written to a sink in batches.

    ``append`` never blocks on I/O and never raises; ``flush`` does the I/O and is
    meant to run off the event loop (a worker thread). Thread-safe.
    """

    def __init__(
        self,
        *,
        sink: DecisionSink,
        writer_id: str,
        max_batch: int = 512,
        max_age_s: float = 2.0,
        max_buffer: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_buffer < max_batch or max_age_s <= 0:
            raise ValueError(
                f"need 1 <= max_batch ({max_batch}) <= max_buffer ({max_buffer}) "
                f"and max_age_s ({max_age_s}) > 0"
            )
        self._sink = sink
        self._writer_id = writer_id
        self.max_batch, self.max_age_s, self.max_buffer = max_batch, max_age_s, max_buffer
        self._clock = clock
        self._on_drop = on_drop
        self._buffer: deque[tuple[float, DecisionRecord]] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._seq = 0
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._appended = self._written = self._dropped = self._failed = 0

    def append(self, record: DecisionRecord) -> None:
        """Buffer one record; when the buffer is full the record is dropped and counted."""
        with self._lock:
            self._appended += 1
            if len(self._buffer) >= self.max_buffer:
                self._dropped += 1
                dropped = True
            else:
                self._buffer.append((self._clock(), record))
                dropped = False
        if dropped and self._on_drop is not None:
            self._on_drop(1)

    def due(self) -> bool:
        """Whether a batch should be written now (size or age bound reached, no back-off)."""
        with self._lock:
            if not self._buffer:
                return False
            now = self._clock()
            if now < self._retry_at:
                return False
            full = len(self._buffer) >= self.max_batch
            return full or now - self._buffer[0][0] >= self.max_age_s

    def flush(self) -> int:
        """Write everything buffered, in batches of ``max_batch``; returns records written.

        On a sink failure the unwritten records go back to the front of the buffer (the
        ones beyond ``max_buffer`` are dropped and counted), later flushes back off
        exponentially, and the error is logged, not raised.
        """
        written = 0
        with self._flush_lock:
            while True:
                with self._lock:
                    batch = [
                        self._buffer.popleft()
                        for _ in range(min(self.max_batch, len(self._buffer)))
                    ]
                if not batch:
                    break
                try:
                    self._write([record for _, record in batch])
                except Exception as exc:
                    self._requeue(batch, exc)
                    break
                written += len(batch)
                with self._lock:
                    self._written += len(batch)
                    self._backoff_s, self._retry_at = 0.0, 0.0
        return written

    def _write(self, records: list[DecisionRecord]) -> None:
        by_date: dict[str, list[DecisionRecord]] = {}
        for record in records:
            by_date.setdefault(record.date, []).append(record)
        for date, group in sorted(by_date.items()):
            self._seq += 1
            name = storage.batch_name(self._writer_id, self._seq)
            self._sink.write(records_to_table(group), date=date, name=name)

    def _requeue(self, batch: list[tuple[float, DecisionRecord]], exc: Exception) -> None:
        with self._lock:
            self._failed += 1
            room = max(0, self.max_buffer - len(self._buffer))
            kept = batch[:room]
            self._buffer.extendleft(reversed(kept))
            lost = len(batch) - len(kept)
            self._dropped += lost
            self._backoff_s = min(30.0, max(0.25, self._backoff_s * 2))
            self._retry_at = self._clock() + self._backoff_s
        log.warning(
            "decision log: sink write failed (%s); %d records buffered, %d dropped",
            exc,
            len(self._buffer),
            lost,
        )
        if lost and self._on_drop is not None:
            self._on_drop(lost)

    def close(self) -> tuple[int, int]:
        """Flush for the last time (shutdown): returns (written, dropped).

        Records the sink would not take (it is down) cannot outlive the process: they are
        dropped *and counted* (``stats().dropped``, ``on_drop``), so the loss shows in the
        metrics instead of vanishing with the replica.
        """
        with self._lock:
            self._retry_at = 0.0  # the last chance: no back-off
        written = self.flush()
        with self._lock:
            lost = len(self._buffer)
            self._buffer.clear()
            self._dropped += lost
        if lost:
            log.error("decision log: %d records dropped at shutdown (sink down)", lost)
            if self._on_drop is not None:
                self._on_drop(lost)
        return written, lost

    def stats(self) -> LogStats:
        with self._lock:
            return LogStats(
                appended=self._appended,
                written=self._written,
                dropped=self._dropped,
                failed_flushes=self._failed,
                buffered=len(self._buffer),
            )
