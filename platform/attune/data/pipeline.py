"""``attune preprocess``: servicing histories -> ranking dataset (contracts §3), on Ray Data.

The pipeline, every stage a Ray Data operator (progress bars are Ray Data's own)::

    history files ──scan──► every file read and validated (SchemaError: file, column, row)
                            + presentation time span -> time-based split cut-offs
    history files ──read──► rows packed per borrower bucket (hash of borrower_id)
                  ──groupby(bucket).map_groups──► one vectorized call of
                            attune.data.features per bucket: labels, features, split
                  ──sort(qid, position)──► write_parquet, one directory per split

A borrower's events, presentations, loan and borrower rows all land in the same
bucket, so each bucket's point-in-time features are computed in one call over whole
borrowers; features of a row depend only on its own borrower, so the output does not
depend on the number of buckets, partitions or input blocks. Packing each bucket's
rows of one file into an Arrow IPC payload lets the four tables, whose schemas
differ, share one shuffle without padding every event row with null columns.

Nothing is written until every input file has been validated, and the output is
committed atomically (:func:`attune.storage.write_dir_atomically`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attune import storage
from attune.data.features import (
    add_context_features,
    borrower_features,
    graded_labels,
    micros,
)
from attune.data.reader import HistoryFiles, list_history, read_file
from attune.data.schema import TABLES, TS
from attune.data.spec import FEATURE_NAMES, default_spec
from attune.errors import AttuneError, ConfigError, SchemaError

SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Row identity columns of every split, before the features.
ID_COLUMNS: tuple[str, ...] = (
    "qid",
    "borrower_id",
    "ts",
    "option_id",
    "position",
    "propensity",
    "label",
)
#: Columns of every split: the identity columns, then the spec's features in spec
#: order (``position`` is both: the int8 identity column is the feature).
DATASET_SCHEMA = pa.schema(
    [
        ("qid", pa.int64()),
        ("borrower_id", pa.int64()),
        ("ts", TS),
        ("option_id", pa.string()),
        ("position", pa.int8()),
        ("propensity", pa.float64()),
        ("label", pa.int8()),
        *((name, pa.float32()) for name in FEATURE_NAMES if name != "position"),
    ]
)
#: Columns each stage of the ranking pipeline reads from each history table.
RANKING_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": ("borrower_id", "ts", "event_type", "amount", "channel"),
    "presentations": (
        "presentation_id",
        "borrower_id",
        "ts",
        "touchpoint",
        "option_id",
        "position",
        "propensity",
        "response",
        "current_14d",
    ),
    "borrowers": ("borrower_id", "income_monthly", "income_volatility"),
    "loans": ("borrower_id", "origination_ts", "term_months", "installment", "apr"),
}


class PreprocessConfig(BaseModel):
    """How ``attune preprocess`` splits and partitions the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_fraction: float = Field(
        default=0.7, gt=0, lt=1, description="Share of the presentation time span for train."
    )
    valid_fraction: float = Field(
        default=0.15, ge=0, lt=1, description="Share of the time span for validation."
    )
    test_fraction: float = Field(
        default=0.15, ge=0, lt=1, description="Share of the time span (the latest) for test."
    )
    buckets: int = Field(
        default=32,
        ge=1,
        le=65_536,
        description="Borrower hash buckets; each bucket's features are one vectorized call.",
    )
    partitions: int = Field(
        default=4, ge=1, le=4096, description="Shuffle partitions (tasks computing features)."
    )

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> PreprocessConfig:
        total = self.train_fraction + self.valid_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"train_fraction ({self.train_fraction}) + valid_fraction "
                f"({self.valid_fraction}) + test_fraction ({self.test_fraction}) must sum "
                f"to 1, not {total:g}"
            )
        return self


@dataclass(frozen=True)
class SplitPlan:
    """Time-based split: ``ts < valid_start`` train, ``< test_start`` valid, else test."""

    valid_start_us: int
    test_start_us: int

    @classmethod
    def from_span(cls, *, first_us: int, last_us: int, config: PreprocessConfig) -> SplitPlan:
        """Cut the presentation time span ``[first, last]`` by the configured fractions."""
        span = last_us - first_us + 1
        valid = first_us + int(np.floor(config.train_fraction * span))
        test = first_us + int(np.floor((config.train_fraction + config.valid_fraction) * span))
        return cls(valid_start_us=valid, test_start_us=test)

    def assign(self, ts_us: np.ndarray) -> np.ndarray:
        """The split name of each time (µs since the epoch)."""
        index = (ts_us >= self.valid_start_us).astype(np.int8) + (ts_us >= self.test_start_us)
        return np.asarray(SPLITS, dtype=object)[index]

    def to_dict(self) -> dict[str, str]:
        return {"valid_start": _iso(self.valid_start_us), "test_start": _iso(self.test_start_us)}


@dataclass(frozen=True)
class PreprocessResult:
    """What ``preprocess`` wrote: counts per split, content hash, spec hash, split plan."""

    uri: str
    histories: str
    rows: Mapping[str, int]
    groups: Mapping[str, int]
    content_hash: str
    spec_hash: str
    split: SplitPlan
    events: int
    dropped_rows: int


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat()


# --------------------------------------------------------------------------- the pure step


def ranking_rows(
    *,
    events: pd.DataFrame,
    presentations: pd.DataFrame,
    borrowers: pd.DataFrame,
    loans: pd.DataFrame,
    split: SplitPlan,
) -> pd.DataFrame:
    """Ranking rows (``DATASET_SCHEMA`` columns plus ``split``) for these presentations.

    One row per shown option, sorted by ``qid`` then ``position``. A presentation
    with any unknown response (null) is dropped whole; a presentation's split is
    decided by its earliest row's time, so a qid is in exactly one split. Pure
    pandas: the Ray pipeline calls it once per borrower bucket, and a single process
    can call it on a whole history.
    """
    unlabelled = presentations.loc[presentations["response"].isna(), "presentation_id"]
    pres = presentations.loc[~presentations["presentation_id"].isin(unlabelled)]
    rows = borrower_features(events, pres, borrowers=borrowers, loans=loans)
    rows = add_context_features(rows)
    rows["label"] = graded_labels(rows["response"], rows["current_14d"])
    rows["qid"] = rows["presentation_id"].astype(np.int64)
    first_seen = (
        pd.Series(micros(rows["ts"]), index=rows.index).groupby(rows["qid"]).transform("min")
    )
    rows["split"] = split.assign(first_seen.to_numpy(dtype=np.int64))
    rows = rows.sort_values(["qid", "position"], kind="stable")
    return rows[[*DATASET_SCHEMA.names, "split"]].reset_index(drop=True)


# --------------------------------------------------------------------------- Ray Data stages


def _bucket_of(borrower_id: np.ndarray, buckets: int) -> np.ndarray:
    """A stable hash bucket per borrower id (Fibonacci hashing; ids need not be dense)."""
    mixed = borrower_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((mixed >> np.uint64(32)) % np.uint64(buckets)).astype(np.int32)


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _schema_of(table: str, columns: Sequence[str]) -> pa.Schema:
    schema = TABLES[table]
    return pa.schema([schema.field(c) for c in columns])


def _scan_file(batch: dict[str, np.ndarray]) -> pa.Table:
    """Validate one history file; report its rows and time span, or the error it raised."""
    table, uri = str(batch["table"][0]), str(batch["uri"][0])
    error, rows, first, last = "", 0, None, None
    try:
        data = read_file(uri, table)
        rows = data.num_rows
        if "ts" in data.column_names and rows:
            us = micros(data.column("ts").to_pandas())
            first, last = int(us.min()), int(us.max())
    except AttuneError as exc:
        error = json.dumps({"type": type(exc).__name__, **exc.to_dict()["details"]})
    return pa.table(
        {
            "table": [table],
            "uri": [uri],
            "rows": pa.array([rows], pa.int64()),
            "first_us": pa.array([first], pa.int64()),
            "last_us": pa.array([last], pa.int64()),
            "error": [error],
        }
    )


def scan(files: HistoryFiles) -> pd.DataFrame:
    """Validate every file of ``files`` in parallel (one Ray task each).

    Returns one row per file: ``table``, ``uri``, ``rows``, ``first_us``, ``last_us``
    (time span of ``ts`` where the table has one). Raises the :class:`SchemaError`
    of the first bad file in URI order, naming file, column, row and problem.
    """
    import ray.data

    items = [{"table": t, "uri": u} for t, u in files.items()]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    report = pd.DataFrame(ds.map_batches(_scan_file, batch_size=1).take_all())
    report = report.sort_values("uri", kind="stable").reset_index(drop=True)
    bad = report[report["error"] != ""]
    if len(bad):
        details = json.loads(bad["error"].iloc[0])
        if details.pop("type") != "SchemaError":
            raise SchemaError(file=str(bad["uri"].iloc[0]), column=None, problem=str(details))
        raise SchemaError(
            file=details["file"],
            column=details["column"],
            row=details["row"],
            problem=details["problem"],
        )
    return report


def _read_and_pack(
    batch: dict[str, np.ndarray], columns: Mapping[str, Sequence[str]], buckets: int
) -> pa.Table:
    """Read one file and emit one row per borrower bucket: (bucket, table, IPC payload)."""
    table, uri = str(batch["table"][0]), str(batch["uri"][0])
    data = read_file(uri, table, columns=columns[table])
    bucket = _bucket_of(data.column("borrower_id").to_numpy(), buckets)
    order = np.argsort(bucket, kind="stable")
    data, bucket = data.take(pa.array(order)), bucket[order]
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])[: len(bucket)]
    ends = [*starts[1:], len(bucket)]
    payloads = [_ipc(data.slice(s, e - s)) for s, e in zip(starts, ends, strict=True)]
    return pa.table(
        {
            "_bucket": pa.array(bucket[starts], pa.int32()),
            "_table": pa.array([table] * len(payloads), pa.string()),
            "_payload": pa.array(payloads, pa.large_binary()),
        }
    )


def bucketed(files: HistoryFiles, *, columns: Mapping[str, Sequence[str]], buckets: int) -> Any:
    """A Ray Dataset of packed rows ``(_bucket, _table, _payload)`` for ``columns``' tables."""
    import ray.data

    items = [{"table": t, "uri": u} for t, u in files.items() if t in columns]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    read = partial(
        _read_and_pack, columns={k: list(v) for k, v in columns.items()}, buckets=buckets
    )
    return ds.map_batches(read, batch_size=1)


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
        schema = _schema_of(table, cols)
        out[table] = (pa.concat_tables(parts) if parts else schema.empty_table()).to_pandas()
    return out


def _ranking_bucket(group: pa.Table, *, split: SplitPlan) -> pa.Table:
    frames = unpack(group, RANKING_COLUMNS)
    rows = ranking_rows(
        events=frames["events"],
        presentations=frames["presentations"],
        borrowers=frames["borrowers"],
        loans=frames["loans"],
        split=split,
    )
    schema = DATASET_SCHEMA.append(pa.field("split", pa.string()))
    return pa.Table.from_pandas(rows, schema=schema, preserve_index=False)


def _summarize_file(batch: dict[str, np.ndarray]) -> pa.Table:
    """Rows, groups, first/last (qid, position) and an order-free content hash of one file."""
    split, uri = str(batch["split"][0]), str(batch["uri"][0])
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(uri)
    with fs.open_input_file(path) as handle:
        frame = pq.read_table(handle).to_pandas()
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    first = (int(frame["qid"].iloc[0]), int(frame["position"].iloc[0])) if len(frame) else None
    last = (int(frame["qid"].iloc[-1]), int(frame["position"].iloc[-1])) if len(frame) else None
    return pa.table(
        {
            "split": [split],
            "uri": [uri],
            "rows": pa.array([len(frame)], pa.int64()),
            "groups": pa.array([frame["qid"].nunique()], pa.int64()),
            "hash": pa.array([int(hashed.sum(dtype=np.uint64))], pa.uint64()),
            "first": [json.dumps(first)],
            "last": [json.dumps(last)],
        }
    )


def _split_files(stage: str) -> list[tuple[str, str]]:
    out = []
    for split in SPLITS:
        prefix = storage.join(stage, split)
        out += [(split, u) for u in storage.list_uris(prefix) if u.endswith(".parquet")]
    return out


def _summarize(stage: str) -> pd.DataFrame:
    import ray.data

    items = [{"split": s, "uri": u} for s, u in _split_files(stage)]
    ds = ray.data.from_items(items, override_num_blocks=max(len(items), 1))
    report = pd.DataFrame(ds.map_batches(_summarize_file, batch_size=1).take_all())
    return report.sort_values(["split", "uri"], kind="stable").reset_index(drop=True)


def _check_order(report: pd.DataFrame) -> None:
    """Files of a split, read in name order, must continue the (qid, position) order."""
    for split, files in report[report["rows"] > 0].groupby("split"):
        firsts = [tuple(json.loads(v)) for v in files["first"]]
        lasts = [tuple(json.loads(v)) for v in files["last"]]
        for i in range(1, len(firsts)):
            if firsts[i] <= lasts[i - 1]:
                raise SchemaError(
                    file=str(files["uri"].iloc[i]),
                    column="qid",
                    row=0,
                    problem=f"{split} files are out of (qid, position) order after writing",
                )


def _groups(files: pd.DataFrame) -> int:
    """Distinct qids of one split: per-file counts, less groups continued across a file."""
    files = files[files["rows"] > 0]
    firsts = [json.loads(v)[0] for v in files["first"]]
    lasts = [json.loads(v)[0] for v in files["last"]]
    straddling = sum(firsts[i] == lasts[i - 1] for i in range(1, len(firsts)))
    return int(files["groups"].sum()) - straddling


def content_hash(report: pd.DataFrame, spec_hash: str) -> str:
    """sha256 over per-split row counts and order-free row hashes, and the spec hash."""
    parts: dict[str, list[int]] = {}
    for split in SPLITS:
        files = report[report["split"] == split]
        total = sum(int(h) for h in files["hash"]) % 2**64
        parts[split] = [int(files["rows"].sum()), total]
    payload = json.dumps({"splits": parts, "spec": spec_hash}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


# --------------------------------------------------------------------------- the job


def preprocess(
    histories_uri: str, out_uri: str, *, config: PreprocessConfig | None = None
) -> PreprocessResult:
    """Build the ranking dataset of the history at ``histories_uri`` under ``out_uri``.

    Writes ``train/``, ``valid/``, ``test/`` (each with ``_SUCCESS``; columns
    :data:`DATASET_SCHEMA`; rows sorted by ``qid`` then ``position`` across the
    split's files in name order), ``feature_spec.json`` and ``manifest.json``, all
    committed at once. Raises :class:`SchemaError` for a bad input file before
    anything is written, :class:`attune.errors.StoreNotFound` for a missing table.
    Runs on the current Ray cluster (Ray Data starts a local one when none is up).
    """
    import ray
    import ray.data

    config = config or PreprocessConfig()
    files = list_history(histories_uri)
    report = scan(files)
    shown = report[report["table"] == "presentations"]
    if shown["rows"].sum() == 0:
        raise ConfigError(
            field="histories", value=histories_uri, problem="the history has no presentations"
        )
    plan = SplitPlan.from_span(
        first_us=int(shown["first_us"].min()), last_us=int(shown["last_us"].max()), config=config
    )
    packed = bucketed(files, columns=RANKING_COLUMNS, buckets=config.buckets)
    rows = (
        packed.groupby("_bucket", num_partitions=config.partitions)
        .map_groups(_ranking_bucket, batch_format="pyarrow", fn_kwargs={"split": plan})
        .sort(["qid", "position"])
    )
    # file names follow task order; keep it equal to the sorted block order
    rows.context.execution_options.preserve_order = True
    spec = default_spec()
    with storage.write_dir_atomically(out_uri) as stage:
        fs, path = storage.pyarrow_filesystem(stage)
        rows.write_parquet(path, filesystem=fs, partition_cols=["split"], partitioning_flavor=None)
        summary = _summarize(stage)
        _check_order(summary)
        for split in SPLITS:
            _commit_split(stage, split, present=bool((summary["split"] == split).any()))
        counts = {s: int(summary.loc[summary["split"] == s, "rows"].sum()) for s in SPLITS}
        groups = {s: _groups(summary[summary["split"] == s]) for s in SPLITS}
        digest = content_hash(summary, spec.hash)
        storage.write_bytes(storage.join(stage, "feature_spec.json"), spec.to_json().encode())
        shown_rows = int(shown["rows"].sum())
        manifest = {
            "histories": histories_uri,
            "content_hash": digest,
            "feature_spec_hash": spec.hash,
            "rows": counts,
            "groups": groups,
            "split": {
                **config.model_dump(include={"train_fraction", "valid_fraction", "test_fraction"}),
                **plan.to_dict(),
            },
            "inputs": {
                t: int(report.loc[report["table"] == t, "rows"].sum()) for t in RANKING_COLUMNS
            },
            "dropped_rows": shown_rows - sum(counts.values()),
            "ray_version": ray.__version__,
        }
        storage.write_json(storage.join(stage, "manifest.json"), manifest)
    return PreprocessResult(
        uri=out_uri,
        histories=histories_uri,
        rows=counts,
        groups=groups,
        content_hash=digest,
        spec_hash=spec.hash,
        split=plan,
        events=int(report.loc[report["table"] == "events", "rows"].sum()),
        dropped_rows=shown_rows - sum(counts.values()),
    )


def _commit_split(stage: str, split: str, *, present: bool) -> None:
    """Mark a split complete; an empty split gets one empty file carrying the schema."""
    target = storage.join(stage, split)
    if not present:
        import pyarrow.parquet as pq

        fs, path = storage.pyarrow_filesystem(storage.join(target, "part-empty.parquet"))
        if not storage.is_s3(stage):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(DATASET_SCHEMA.empty_table(), path, filesystem=fs)
    storage.mark_complete(target)
