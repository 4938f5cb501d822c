"""Histories in shard layout: stream them shard by shard, with no shuffle and no sort.

``attune generate`` writes every table in shards of whole borrowers
(``borrowers/part-sNNNNN.parquet``, ``events/month=…/part-sNNNNN-cMMM.parquet``, …),
and shard ``s`` holds lower borrower ids, hence lower presentation ids, than shard
``s + 1``. One Ray Data task per shard then reads and validates the shard's files,
computes its ranking rows with the same function as a single process
(:func:`attune.data.pipeline.ranking_rows`), writes them as one file per split named
after the shard (name order is qid order) and returns a few numbers. Memory per task
is one shard's history, whatever the number of borrowers; nothing crosses the object
store but file lists and summaries.

The layout is a naming convention, so the job checks what it relies on and falls back
to the bucket shuffle when it does not hold: every file must be named after a shard,
the shards' borrower id ranges must not overlap (no borrower is split), and files must
follow qid order. The split cut-offs come from the presentations files' parquet
statistics before any task runs; the tasks report the validated span, and a
mismatch reruns with the right cut-offs.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from attune import storage
from attune.data.buckets import raise_first
from attune.data.pipeline import (
    _WITH_SPLIT,
    DATASET_SCHEMA,
    SPLITS,
    PreprocessConfig,
    PreprocessResult,
    SplitPlan,
    commit,
    ranking_rows,
    summarize_block,
    write_empty,
)
from attune.data.reader import HistoryFiles, read_file
from attune.data.schema import TABLES
from attune.errors import AttuneError

_SHARD = re.compile(r"^(part-s\d+)(?:-c\d+)?\.parquet$")


def shard_files(
    files: HistoryFiles, columns: Mapping[str, Sequence[str]]
) -> dict[str, list[tuple[str, str]]] | None:
    """``{shard: [(table, uri), …]}`` in shard name order, or None when a file has no shard."""
    shards: dict[str, list[tuple[str, str]]] = {}
    for table, uri in files.items():
        if table not in columns:
            continue
        found = _SHARD.match(uri.rsplit("/", 1)[-1])
        if found is None:
            return None
        shards.setdefault(found.group(1), []).append((table, uri))
    return dict(sorted(shards.items())) or None


def statistics_span(uris: Sequence[str]) -> tuple[int, int, int] | None:
    """(rows, first, last ``ts`` in µs) from the files' parquet statistics; None if absent."""
    rows, low, high = 0, None, None
    for uri in uris:
        fs, path = storage.pyarrow_filesystem(uri)
        try:
            with fs.open_input_file(path) as handle:
                meta = pq.ParquetFile(handle).metadata
        except (OSError, pa.ArrowInvalid):
            return None
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if "ts" not in names:
            return None
        column = names.index("ts")
        rows += meta.num_rows
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(column).statistics
            if meta.row_group(group).num_rows == 0:
                continue
            if stats is None or not stats.has_min_max:
                return None
            first, last = (_us(v) for v in (stats.min, stats.max))
            low = first if low is None else min(low, first)
            high = last if high is None else max(high, last)
    if low is None or high is None:
        return None
    return rows, low, high


def _us(value: Any) -> int:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1000)


def read_shard(
    files: Sequence[tuple[str, str]], columns: Mapping[str, Sequence[str]]
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The shard's tables (validated, file by file) and its report: rows, span, ids, errors."""
    parts: dict[str, list[pa.Table]] = {t: [] for t in columns}
    errors: list[list[str]] = []
    for table, uri in files:
        try:
            parts[table].append(read_file(uri, table, columns=list(columns[table])))
        except AttuneError as exc:
            errors.append(
                [uri, json.dumps({"type": type(exc).__name__, **exc.to_dict()["details"]})]
            )
    tables = {}
    for table, cols in columns.items():
        schema = pa.schema([TABLES[table].field(c) for c in cols])
        tables[table] = pa.concat_tables(parts[table]) if parts[table] else schema.empty_table()
    ids = [
        tuple(pc.min_max(t.column("borrower_id")).values()) for t in tables.values() if t.num_rows
    ]
    shown = tables.get("presentations")
    span = tuple(pc.min_max(shown.column("ts")).values()) if shown and shown.num_rows else None
    report = {
        "errors": errors,
        "rows": {t: tables[t].num_rows for t in columns},
        "ids": [min(a.as_py() for a, _ in ids), max(b.as_py() for _, b in ids)] if ids else None,
        "span": [span[0].value, span[1].value] if span is not None else None,
    }
    frames = {t: v.to_pandas() for t, v in tables.items()} if not errors else {}
    return frames, report


def _shard_task(
    batch: pa.Table, *, columns: Mapping[str, Sequence[str]], plan: SplitPlan, stage: str
) -> pa.Table:
    """Read, compute and write one shard (a one-row batch); one row of report back."""
    shard, files = shard_of(batch)
    frames, report = read_shard(files, columns)
    report["summary"] = []
    if frames:
        rows = ranking_rows(
            events=frames["events"],
            presentations=frames["presentations"],
            borrowers=frames["borrowers"],
            loans=frames["loans"],
            split=plan,
        )
        del frames
        table = pa.Table.from_pandas(rows, schema=_WITH_SPLIT, preserve_index=False)
        del rows
        summary = summarize_block(table)
        report["summary"] = summary.to_pylist()
        split_of = table.column("split")
        for split in summary.column("split").to_pylist():
            part = table.filter(pc.equal(split_of, split)).select(DATASET_SCHEMA.names)
            write_part(part, stage, split, shard)
    return report_row(shard, report)


def run_shards(
    shards: Mapping[str, Sequence[tuple[str, str]]], task: Callable[[pa.Table], pa.Table]
) -> list[dict[str, Any]]:
    """Run ``task`` once per shard on Ray Data; the reports in shard name order.

    Raises the :class:`attune.errors.SchemaError` of the first bad file by URI, and
    :class:`NotAligned` when two shards share a borrower.
    """
    import ray.data

    items = [{"shard": s, "files": json.dumps(list(f))} for s, f in shards.items()]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    out = ds.map_batches(task, batch_size=1, batch_format="pyarrow").to_pandas()
    reports = [json.loads(r) for r in out.sort_values("shard", kind="stable")["report"]]
    errors = [e for r in reports for e in r["errors"]]
    raise_first(pd.DataFrame(errors, columns=["_uri", "_error"]))
    if not _aligned(reports):
        raise NotAligned(None)
    return reports


def shard_of(batch: pa.Table) -> tuple[str, list[tuple[str, str]]]:
    """The shard name and (table, uri) files of a one-row :func:`run_shards` batch."""
    return batch.column("shard")[0].as_py(), json.loads(batch.column("files")[0].as_py())


def report_row(shard: str, report: Mapping[str, Any]) -> pa.Table:
    """A task's answer to :func:`run_shards`."""
    return pa.table({"shard": [shard], "report": [json.dumps(report)]})


def write_part(table: pa.Table, stage: str, folder: str, shard: str) -> None:
    """``table`` as ``<stage>/<folder>/<shard>.parquet``."""
    fs, path = storage.pyarrow_filesystem(storage.join(stage, folder, f"{shard}.parquet"))
    if not storage.is_s3(stage):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def _aligned(reports: Sequence[dict[str, Any]]) -> bool:
    """No two shards share a borrower (id ranges disjoint) and files follow qid order."""
    ranges = sorted(r["ids"] for r in reports if r["ids"] is not None)
    if any(b[0] <= a[1] for a, b in itertools.pairwise(ranges)):
        return False
    for split in SPLITS:
        last = None
        for report in reports:  # shard name order
            for part in report.get("summary", ()):
                if part["split"] != split:
                    continue
                if last is not None and part["first"] < last:
                    return False
                last = part["last"]
    return True


def preprocess_shards(
    histories_uri: str,
    out_uri: str,
    shards: Mapping[str, Sequence[tuple[str, str]]],
    *,
    config: PreprocessConfig,
    span: tuple[int, int] | None = None,
    retried: bool = False,
) -> PreprocessResult | None:
    """``preprocess`` of a history in shard layout; None when the layout does not hold.

    ``span`` (first, last presentation µs) defaults to the parquet statistics.
    """
    from attune.data.pipeline import RANKING_COLUMNS

    if span is None:
        shown = [u for files in shards.values() for t, u in files if t == "presentations"]
        found = statistics_span(shown)
        if found is None or found[0] == 0:
            return None
        span = (found[1], found[2])
    plan = SplitPlan.from_span(first_us=span[0], last_us=span[1], config=config)
    task = partial(
        _shard_task,
        columns={k: list(v) for k, v in RANKING_COLUMNS.items()},
        plan=plan,
    )

    def write(stage: str) -> tuple[pd.DataFrame, dict[str, int]]:
        reports = run_shards(shards, partial(task, stage=stage))
        spans = [r["span"] for r in reports if r["span"] is not None]
        actual = (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None
        if actual != span:
            raise NotAligned(actual)
        for split in SPLITS:
            if not any(p["split"] == split for r in reports for p in r["summary"]):
                write_empty(stage, split)
        parts = [p for r in reports for p in r["summary"]]
        summary = pd.DataFrame(parts, columns=["split", "rows", "groups", "first", "last", "hash"])
        summary["hash"] = summary["hash"].astype(np.uint64)
        inputs = {t: sum(r["rows"][t] for r in reports) for t in RANKING_COLUMNS}
        return summary, inputs

    try:
        return commit(histories_uri, out_uri, plan=plan, config=config, write=write)
    except NotAligned as retry:
        if retry.span is None or retried:
            return None
        return preprocess_shards(
            histories_uri, out_uri, shards, config=config, span=retry.span, retried=True
        )


class NotAligned(Exception):
    """The shard layout (or the statistics' split cut-offs) did not hold: retry or fall back.

    ``span`` is the validated presentation span when only the cut-offs were off.
    """

    def __init__(self, span: tuple[int, int] | None) -> None:
        super().__init__("retry")
        self.span = span
