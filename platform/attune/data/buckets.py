"""Read, validate and co-partition history tables by borrower bucket, on Ray Data.

Features need all of one borrower's rows from several tables at once (events,
presentations, loans, borrowers), whose schemas differ. Each read task therefore
reads a batch of files, validates every file on its own
(:func:`attune.data.reader.read_file`), hashes ``borrower_id`` into a bucket and
emits one row per (table, bucket) whose ``_payload`` is those rows as an Arrow IPC
stream. The tables then share one shuffle (``groupby("_bucket")``) without padding
every event row with the other tables' columns, and :func:`unpack` gives a bucket's
tables back as pandas frames.

A file that fails validation does not raise inside Ray (the typed error would reach
the driver as an opaque task error): its row carries the error instead, and
:func:`read_packed` raises the first one, by URI, as the original
:class:`attune.errors.SchemaError` once every file was read, before any output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from attune.data.reader import HistoryFiles, read_file
from attune.data.schema import TABLES
from attune.errors import AttuneError, SchemaError

#: Read tasks per job at most (each reads a batch of files).
DEFAULT_READ_TASKS = 16
_REPORT = ("_table", "_uri", "_rows", "_first_us", "_last_us", "_error")


def bucket_of(borrower_id: np.ndarray, buckets: int) -> np.ndarray:
    """A stable hash bucket per borrower id (Fibonacci hashing; ids need not be dense)."""
    mixed = borrower_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((mixed >> np.uint64(32)) % np.uint64(buckets)).astype(np.int32)


def ipc(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _span(data: pa.Table) -> tuple[int | None, int | None]:
    """Earliest and latest ``ts`` in µs (the schema's unit), or Nones without one."""
    if "ts" not in data.column_names or data.num_rows == 0:
        return None, None
    low, high = pc.min_max(data.column("ts")).values()
    return low.value, high.value


def _read_and_pack(batch: pa.Table, columns: Mapping[str, Sequence[str]], buckets: int) -> pa.Table:
    """Read and validate the files of ``batch``; one row per (file, bucket), or per error."""
    rows: dict[str, list[Any]] = {k: [] for k in ("_bucket", "_payload", *_REPORT)}

    def emit(table: str, uri: str, bucket: int, payload: bytes, n: int, span: Any, err: str):
        values = (bucket, payload, table, uri, n, span[0], span[1], err)
        for key, value in zip(rows, values, strict=True):
            rows[key].append(value)

    tables, uris = batch.column("table").to_pylist(), batch.column("uri").to_pylist()
    for table, uri in zip(tables, uris, strict=True):
        try:
            data = read_file(uri, table, columns=columns[table])
        except AttuneError as exc:
            error = json.dumps({"type": type(exc).__name__, **exc.to_dict()["details"]})
            emit(table, uri, -1, b"", 0, (None, None), error)
            continue
        bucket = bucket_of(data.column("borrower_id").to_numpy(), buckets)
        order = np.argsort(bucket, kind="stable")
        data, bucket = data.take(pa.array(order)), bucket[order]
        span = _span(data)  # reported once per file, on its first row
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])[: len(bucket)]
        for i, (start, end) in enumerate(zip(starts, [*starts[1:], len(bucket)], strict=True)):
            part = data.slice(start, end - start)
            first = span if i == 0 else (None, None)
            emit(table, uri, int(bucket[start]), ipc(part), part.num_rows, first, "")
    return pa.table(
        {
            "_bucket": pa.array(rows["_bucket"], pa.int32()),
            "_payload": pa.array(rows["_payload"], pa.large_binary()),
            "_table": pa.array(rows["_table"], pa.string()),
            "_uri": pa.array(rows["_uri"], pa.string()),
            "_rows": pa.array(rows["_rows"], pa.int64()),
            "_first_us": pa.array(rows["_first_us"], pa.int64()),
            "_last_us": pa.array(rows["_last_us"], pa.int64()),
            "_error": pa.array(rows["_error"], pa.string()),
        }
    )


def raise_first(report: pd.DataFrame) -> None:
    bad = report[report["_error"] != ""].sort_values("_uri", kind="stable")
    if bad.empty:
        return
    details = json.loads(bad["_error"].iloc[0])
    kind = details.pop("type")
    if kind == "SchemaError":
        raise SchemaError(
            file=details["file"],
            column=details["column"],
            row=details["row"],
            problem=details["problem"],
        )
    raise AttuneError(f"{bad['_uri'].iloc[0]}: {kind} {details}", **details)


def read_packed(
    files: HistoryFiles,
    *,
    columns: Mapping[str, Sequence[str]],
    buckets: int,
    tasks: int = DEFAULT_READ_TASKS,
) -> tuple[Any, pd.DataFrame]:
    """Read every file of ``columns``' tables, packed by bucket, into the object store.

    Returns the materialized Ray Dataset of packed rows (``_bucket``, ``_table``,
    ``_payload``, …) and a per-file report (``table``, ``uri``, ``rows``,
    ``first_us``, ``last_us``: the span of ``ts`` where the table has one). Raises
    the :class:`SchemaError` of the first bad file by URI, naming file, column, row.
    """
    import ray.data
    from ray.data.context import ShuffleStrategy

    items = [{"table": t, "uri": u} for t, u in files.items() if t in columns]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), tasks)))
    # few, large payload rows: a sort-based shuffle needs no aggregator actors and on
    # two cores measured faster than the hash shuffle, here and in the sorts downstream
    ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    read = partial(
        _read_and_pack, columns={k: list(v) for k, v in columns.items()}, buckets=buckets
    )
    packed = ds.map_batches(read, batch_size=None, batch_format="pyarrow").materialize()
    parts = packed.select_columns(list(_REPORT)).to_pandas()
    raise_first(parts)
    report = (
        parts.groupby(["_table", "_uri"], as_index=False)
        .agg(rows=("_rows", "sum"), first_us=("_first_us", "min"), last_us=("_last_us", "max"))
        .rename(columns={"_table": "table", "_uri": "uri"})
    )
    return packed, report


def unpack(group: pa.Table, columns: Mapping[str, Sequence[str]]) -> dict[str, pd.DataFrame]:
    """The tables of one bucket's packed rows as pandas frames (empty when absent)."""
    names = group.column("_table").to_pylist()
    payloads = group.column("_payload").to_pylist()
    out: dict[str, pd.DataFrame] = {}
    for table, cols in columns.items():
        parts = [
            pa.ipc.open_stream(p).read_all()
            for name, p in zip(names, payloads, strict=True)
            if name == table
        ]
        schema = pa.schema([TABLES[table].field(c) for c in cols])
        out[table] = (pa.concat_tables(parts) if parts else schema.empty_table()).to_pandas()
    return out
