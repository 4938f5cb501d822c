"""Buffered decision log and its parquet sink (attune.serving.decision_log)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from attune.serving.decision_log import (
    DECISION_SCHEMA,
    DecisionLog,
    DecisionRecord,
    MemorySink,
    ParquetSink,
)

DAY = datetime(2026, 3, 1, 12, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(i: int, ts: datetime = DAY) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{i}",
        ts=ts,
        role="primary",
        borrower_hash=f"h{i}",
        arm="champion",
        model_version="v1",
        feature_spec_hash="abc",
        touchpoint="app",
        feature_source="request",
        candidates=("pay_now", "autopay_enroll"),
        features=np.asarray([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
        scores=np.asarray([0.5, 0.25]),
        returned_order=("pay_now", "autopay_enroll"),
        propensities=None,
        latency_ms=1.5,
    )


def _log(sink: MemorySink, clock: Clock, **kwargs: object) -> DecisionLog:
    options: dict = {"max_batch": 10, "max_age_s": 2.0, "max_buffer": 30, **kwargs}
    return DecisionLog(sink=sink, writer_id="w", clock=clock, **options)


def test_flush_writes_every_record_in_batches_of_max_batch() -> None:
    sink, clock = MemorySink(), Clock()
    log = _log(sink, clock)
    for i in range(25):
        log.append(_record(i))
    assert log.flush() == 25
    assert [t.num_rows for t in sink.tables] == [10, 10, 5]
    assert [r["decision_id"] for r in sink.rows()] == [f"d{i}" for i in range(25)]
    assert all(t.schema == DECISION_SCHEMA for t in sink.tables)
    assert log.stats().written == 25 and log.stats().buffered == 0


def test_a_batch_is_due_when_full_or_old_enough() -> None:
    sink, clock = MemorySink(), Clock()
    log = _log(sink, clock)
    assert not log.due()
    log.append(_record(0))
    assert not log.due()
    clock.now = 2.0
    assert log.due()  # age bound
    log.flush()
    for i in range(10):
        log.append(_record(i))
    assert log.due()  # size bound


def test_failed_writes_keep_records_and_a_later_flush_writes_them() -> None:
    sink, clock = MemorySink(), Clock()
    log = _log(sink, clock)
    for i in range(5):
        log.append(_record(i))
    sink.fail = True
    assert log.flush() == 0
    assert log.stats().buffered == 5 and log.stats().failed_flushes == 1
    assert not log.due()  # backing off
    sink.fail = False
    clock.now = 60.0
    assert log.due() and log.flush() == 5
    assert [r["decision_id"] for r in sink.rows()] == [f"d{i}" for i in range(5)]


def test_a_full_buffer_drops_new_records_counts_them_and_never_raises() -> None:
    dropped: list[int] = []
    sink, clock = MemorySink(), Clock()
    sink.fail = True
    log = _log(sink, clock, on_drop=dropped.append)
    for i in range(40):
        log.append(_record(i))
    stats = log.stats()
    assert stats.buffered == 30 and stats.dropped == 10 and sum(dropped) == 10
    sink.fail = False
    log.flush()
    assert [r["decision_id"] for r in sink.rows()] == [f"d{i}" for i in range(30)]


def test_records_buffered_at_shutdown_while_the_sink_is_down_are_counted() -> None:
    """The replica's last flush fails: what it held is reported dropped, not silently lost."""
    dropped: list[int] = []
    sink, clock = MemorySink(), Clock()
    log = _log(sink, clock, on_drop=dropped.append)
    for i in range(12):
        log.append(_record(i))
    assert log.flush() == 12
    for i in range(12, 19):
        log.append(_record(i))
    sink.fail = True
    assert log.flush() == 0  # the sink went down; the log backs off
    assert log.close() == (0, 7)
    stats = log.stats()
    assert (stats.dropped, stats.buffered, stats.written) == (7, 0, 12) and dropped == [7]


def test_close_writes_what_it_can_despite_a_back_off() -> None:
    sink, clock = MemorySink(), Clock()
    log = _log(sink, clock)
    for i in range(3):
        log.append(_record(i))
    sink.fail = True
    log.flush()
    sink.fail = False  # back within the back-off: the last flush still writes
    assert log.close() == (3, 0)
    assert [r["decision_id"] for r in sink.rows()] == ["d0", "d1", "d2"]


def test_records_of_different_days_go_to_their_own_partitions() -> None:
    sink, clock = MemorySink(), Clock()
    log = _log(sink, clock)
    log.append(_record(0, DAY))
    log.append(_record(1, DAY + timedelta(days=1)))
    log.flush()
    assert sorted(sink.tables[i].column("ts")[0].as_py().date().isoformat() for i in (0, 1)) == [
        "2026-03-01",
        "2026-03-02",
    ]


@pytest.mark.parametrize(
    "kwargs", [{"max_batch": 0}, {"max_batch": 50, "max_buffer": 10}, {"max_age_s": 0}]
)
def test_invalid_bounds_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        _log(MemorySink(), Clock(), **kwargs)


def test_parquet_sink_writes_readable_files_under_date_partitions(tmp_path: Path) -> None:
    log = DecisionLog(sink=ParquetSink(str(tmp_path)), writer_id="replica-1", max_batch=4)
    for i in range(6):
        log.append(_record(i))
    log.flush()
    files = sorted((tmp_path / "decisions" / "date=2026-03-01").iterdir())
    assert [f.suffix for f in files] == [".parquet", ".parquet"]
    assert all(f.name.startswith("replica-1-") for f in files)
    table = pq.read_table(files[0])
    assert table.schema.equals(DECISION_SCHEMA)
    assert table.column("features")[0].as_py() == [[1.0, 2.0], [3.0, 4.0]]
    assert not list(tmp_path.rglob(".*"))  # no half-written temporary files left


def test_records_with_different_candidate_counts_keep_their_own_rows() -> None:
    sink, clock = MemorySink(), Clock()
    log = _log(sink, clock)
    one = _record(1)
    three = DecisionRecord(
        **{
            **one.__dict__,
            "decision_id": "d3",
            "candidates": ("a", "b", "c"),
            "features": np.arange(6, dtype=np.float32).reshape(3, 2),
            "scores": np.asarray([3.0, 2.0, 1.0]),
            "returned_order": ("a", "b", "c"),
            "propensities": (0.5, 0.3, 0.2),
        }
    )
    log.append(one)
    log.append(three)
    log.flush()
    rows = sink.rows()
    assert rows[0]["features"] == [[1.0, 2.0], [3.0, 4.0]] and rows[0]["scores"] == [0.5, 0.25]
    assert rows[1]["features"] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert rows[1]["scores"] == [3.0, 2.0, 1.0] and rows[1]["propensities"] == [0.5, 0.3, 0.2]
    assert rows[0]["propensities"] is None
