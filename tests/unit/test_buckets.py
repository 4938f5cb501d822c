"""Packing history files by borrower bucket and back, without Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attune.data import buckets as B
from attune.data.reader import list_history
from attune.errors import SchemaError
from tests.histories import make_history, to_arrow, write_history

COLUMNS = {
    "events": ("borrower_id", "ts", "event_type", "amount", "channel"),
    "presentations": ("presentation_id", "borrower_id", "ts", "option_id"),
}


@pytest.mark.parametrize("buckets", [1, 3, 32])
def test_bucket_is_a_pure_function_of_the_borrower_id(buckets) -> None:
    ids = np.array([1, 7, 7, 10**12, 2**62, 0, 1], dtype=np.int64)
    got = B.bucket_of(ids, buckets)
    assert got.dtype == np.int32 and ((got >= 0) & (got < buckets)).all()
    assert got[1] == got[2] and got[0] == got[-1]
    assert (B.bucket_of(ids[::-1], buckets) == got[::-1]).all()


def test_dense_ids_spread_over_buckets() -> None:
    counts = np.bincount(B.bucket_of(np.arange(10_000, dtype=np.int64), 8), minlength=8)
    assert counts.min() > 1_000  # roughly even: 1,250 expected each


def _batch(files: list[tuple[str, str]]) -> pa.Table:
    return pa.table({"table": [t for t, _ in files], "uri": [u for _, u in files]})


def test_packing_then_unpacking_per_bucket_returns_every_row_once(tmp_path: Path) -> None:
    h = make_history(borrowers=30, months=2, seed=3)
    history = list_history(write_history(h, str(tmp_path / "h")), tables=tuple(COLUMNS))
    packed = B._read_and_pack(_batch(history.items()), COLUMNS, 4)
    assert set(packed.column("_error").to_pylist()) == {""}
    frames = []
    for bucket in sorted(set(packed.column("_bucket").to_pylist())):
        rows = packed.filter(pa.compute.equal(packed.column("_bucket"), bucket))
        tables = B.unpack(rows, COLUMNS)
        ids = tables["events"]["borrower_id"].to_numpy()
        assert (B.bucket_of(ids, 4) == bucket).all()
        frames.append(tables["events"])
    order = list(COLUMNS["events"])
    events = pd.concat(frames).sort_values(order, kind="stable").reset_index(drop=True)
    want = to_arrow(h.events, "events").to_pandas()[order]
    want = want.sort_values(order, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(events, want)


def test_unpack_gives_typed_empty_frames_for_absent_tables() -> None:
    empty = pa.table(
        {"_table": pa.array([], pa.string()), "_payload": pa.array([], pa.large_binary())}
    )
    frames = B.unpack(empty, COLUMNS)
    assert list(frames["presentations"].columns) == list(COLUMNS["presentations"])
    assert frames["events"].empty and str(frames["events"]["ts"].dtype) == "datetime64[us, UTC]"


def test_a_bad_file_becomes_an_error_row_raised_as_the_original_schema_error(
    tmp_path: Path,
) -> None:
    h = make_history(borrowers=10, months=2, seed=3)
    history = list_history(write_history(h, str(tmp_path / "h")), tables=tuple(COLUMNS))
    bad = history.files["events"][-1]
    pq.write_table(pq.read_table(bad).drop_columns(["event_type"]), bad)
    packed = B._read_and_pack(_batch(history.items()), COLUMNS, 4)
    report = packed.select(list(B._REPORT)).to_pandas()
    assert (report["_error"] != "").sum() == 1
    with pytest.raises(SchemaError) as err:
        B.raise_first(report)
    assert (err.value.file, err.value.column, err.value.row) == (bad, "event_type", None)


def test_each_file_reports_its_rows_and_time_span(tmp_path: Path) -> None:
    h = make_history(borrowers=10, months=2, seed=3)
    history = list_history(write_history(h, str(tmp_path / "h")), tables=tuple(COLUMNS))
    report = B._read_and_pack(_batch(history.items()), COLUMNS, 3).to_pandas()
    per_file = report.groupby("_uri").agg(
        rows=("_rows", "sum"), first=("_first_us", "min"), last=("_last_us", "max")
    )
    uri = history.files["presentations"][0]
    data = pq.read_table(uri).to_pandas()
    assert per_file.loc[uri, "rows"] == len(data)
    first = int(data["ts"].min().value // 1000)
    assert per_file.loc[uri, "first"] == first
    assert per_file["rows"].sum() == len(h.events) + len(h.presentations)
