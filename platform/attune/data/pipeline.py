"""``attune preprocess``: servicing histories -> ranking dataset (contracts §3), on Ray Data.

The pipeline, every stage a Ray Data operator (progress bars are Ray Data's own)::

    history files ──read──► every file validated (SchemaError: file, column, row), its
                            rows packed per borrower bucket (attune.data.buckets) into
                            the object store; presentation time span -> split cut-offs
                  ──groupby(bucket).map_groups──► one vectorized call of
                            attune.data.features per bucket: labels, features, split
                  ──sort(qid, position)──► per-block counts and content hash
                  ──write_parquet──► one directory per split

A borrower's events, presentations, loan and borrower rows all land in the same
bucket, so each bucket's point-in-time features are computed in one call over whole
borrowers; features of a row depend only on its own borrower, so the output does not
depend on the number of buckets, partitions or input blocks. Packing each bucket's
rows of one file into an Arrow IPC payload lets the four tables, whose schemas
differ, share one shuffle without padding every event row with null columns.

Nothing is written until every input file has been validated and every row
computed; the output is committed atomically (:func:`attune.storage.write_dir_atomically`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from attune import storage
from attune.data.buckets import read_packed, unpack
from attune.data.features import (
    add_context_features,
    borrower_features,
    graded_labels,
    micros,
)
from attune.data.reader import HistoryFiles, list_history
from attune.data.schema import TS
from attune.data.spec import FEATURE_NAMES, default_spec
from attune.errors import ConfigError, SchemaError

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
_WITH_SPLIT = DATASET_SCHEMA.append(pa.field("split", pa.string()))
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
        default=16,
        ge=1,
        le=4096,
        description="Tasks that read the files and, after the shuffle, compute the buckets.",
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


def _ranking_bucket(group: pa.Table, *, split: SplitPlan) -> pa.Table:
    frames = unpack(group, RANKING_COLUMNS)
    rows = ranking_rows(
        events=frames["events"],
        presentations=frames["presentations"],
        borrowers=frames["borrowers"],
        loans=frames["loans"],
        split=split,
    )
    return pa.Table.from_pandas(rows, schema=_WITH_SPLIT, preserve_index=False)


def summarize_block(block: pa.Table) -> pa.Table:
    """Per split in one block: rows, groups, first/last qid, order-free content hash."""
    frame = block.to_pandas()
    out: dict[str, list[Any]] = {
        k: [] for k in ("split", "rows", "groups", "first", "last", "hash")
    }
    for split, rows in frame.groupby("split", sort=True):
        rows = rows.drop(columns="split")
        hashed = pd.util.hash_pandas_object(rows, index=False).to_numpy(dtype=np.uint64)
        values = (
            split,
            len(rows),
            rows["qid"].nunique(),
            int(rows["qid"].min()),
            int(rows["qid"].max()),
            int(hashed.sum(dtype=np.uint64)),
        )
        for key, value in zip(out, values, strict=True):
            out[key].append(value)
    return pa.table(
        {
            "split": pa.array(out["split"], pa.string()),
            "rows": pa.array(out["rows"], pa.int64()),
            "groups": pa.array(out["groups"], pa.int64()),
            "first": pa.array(out["first"], pa.int64()),
            "last": pa.array(out["last"], pa.int64()),
            "hash": pa.array(out["hash"], pa.uint64()),
        }
    )


def _groups(parts: pd.DataFrame) -> int:
    """Distinct qids of one split: per-block counts, less groups continued across blocks."""
    parts = parts.sort_values(["first", "last"], kind="stable")
    firsts, lasts = parts["first"].to_numpy(), parts["last"].to_numpy()
    return int(parts["groups"].sum()) - int(np.sum(firsts[1:] == lasts[:-1]))


def content_hash(summary: pd.DataFrame, spec_hash: str) -> str:
    """sha256 over per-split row counts and order-free row hashes, and the spec hash."""
    parts: dict[str, list[int]] = {}
    for split in SPLITS:
        rows = summary[summary["split"] == split]
        total = sum(int(h) for h in rows["hash"]) % 2**64
        parts[split] = [int(rows["rows"].sum()), total]
    payload = json.dumps({"splits": parts, "spec": spec_hash}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def _check_file_order(stage: str, split: str) -> int:
    """Files of a split, in name order, continue the qid order; returns the file count."""
    import pyarrow.parquet as pq

    files = sorted(
        u for u in storage.list_uris(storage.join(stage, split)) if u.endswith(".parquet")
    )
    previous = None
    for uri in files:
        fs, path = storage.pyarrow_filesystem(uri)
        with fs.open_input_file(path) as handle:
            qid = pq.read_table(handle, columns=["qid"]).column("qid")
        if len(qid) == 0:
            continue
        first, last = pc.min_max(qid).values()
        if previous is not None and first.as_py() < previous:
            raise SchemaError(
                file=uri, column="qid", row=0, problem=f"{split} files are out of qid order"
            )
        previous = last.as_py()
    return len(files)


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

    A history in the simulator's shard layout (every file named ``part-sNNNNN…``,
    each shard holding whole borrowers) streams shard by shard
    (:mod:`attune.data.sharded`): no shuffle, no sort, memory per task bounded by one
    shard. Any other history, or one whose shards turn out to share a borrower, takes
    the bucket shuffle below; both give the same rows.
    """
    from attune.data import sharded

    config = config or PreprocessConfig()
    files = list_history(histories_uri)
    shards = sharded.shard_files(files, RANKING_COLUMNS)
    if shards is not None:
        result = sharded.preprocess_shards(histories_uri, out_uri, shards, config=config)
        if result is not None:
            return result
    return _preprocess_shuffled(histories_uri, out_uri, files, config=config)


def _preprocess_shuffled(
    histories_uri: str, out_uri: str, files: HistoryFiles, *, config: PreprocessConfig
) -> PreprocessResult:
    """Any history: co-partition every table by borrower bucket, one shuffle, one sort."""
    packed, report = read_packed(
        files, columns=RANKING_COLUMNS, buckets=config.buckets, tasks=config.partitions
    )
    shown = report[report["table"] == "presentations"]
    if shown["rows"].sum() == 0:
        raise ConfigError(
            field="histories", value=histories_uri, problem="the history has no presentations"
        )
    plan = SplitPlan.from_span(
        first_us=int(shown["first_us"].min()), last_us=int(shown["last_us"].max()), config=config
    )
    rows = (
        packed.groupby("_bucket", num_partitions=config.partitions)
        .map_groups(_ranking_bucket, batch_format="pyarrow", fn_kwargs={"split": plan})
        .sort(["qid", "position"])
    )
    # file names follow task order: keep it the sorted block order
    rows.context.execution_options.preserve_order = True
    rows = rows.materialize()
    del packed
    summary = rows.map_batches(summarize_block, batch_size=None, batch_format="pyarrow").to_pandas()
    inputs = {t: int(report.loc[report["table"] == t, "rows"].sum()) for t in RANKING_COLUMNS}

    def write(stage: str) -> tuple[pd.DataFrame, dict[str, int]]:
        fs, path = storage.pyarrow_filesystem(stage)
        rows.write_parquet(path, filesystem=fs, partition_cols=["split"], partitioning_flavor=None)
        for split in SPLITS:
            if not _check_file_order(stage, split):
                write_empty(stage, split)
        return summary, inputs

    return commit(histories_uri, out_uri, plan=plan, config=config, write=write)


def commit(
    histories_uri: str,
    out_uri: str,
    *,
    plan: SplitPlan,
    config: PreprocessConfig,
    write: Callable[[str], tuple[pd.DataFrame, dict[str, int]]],
) -> PreprocessResult:
    """Commit a dataset at ``out_uri`` at once: ``write(stage)`` writes the splits.

    ``write`` returns the :func:`summarize_block` rows of every block it wrote and the
    rows read per input table; then come the split markers, spec and manifest.
    """
    import ray

    spec = default_spec()
    with storage.write_dir_atomically(out_uri) as stage:
        summary, inputs = write(stage)
        counts = {s: int(summary.loc[summary["split"] == s, "rows"].sum()) for s in SPLITS}
        groups = {s: _groups(summary[summary["split"] == s]) for s in SPLITS}
        digest = content_hash(summary, spec.hash)
        shown_rows = int(inputs["presentations"])
        for split in SPLITS:
            storage.mark_complete(storage.join(stage, split))
        storage.write_bytes(storage.join(stage, "feature_spec.json"), spec.to_json().encode())
        fractions = ("train_fraction", "valid_fraction", "test_fraction")
        manifest = {
            "histories": histories_uri,
            "content_hash": digest,
            "feature_spec_hash": spec.hash,
            "rows": counts,
            "groups": groups,
            "split": {**config.model_dump(include=set(fractions)), **plan.to_dict()},
            "inputs": dict(inputs),
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
        events=int(inputs["events"]),
        dropped_rows=shown_rows - sum(counts.values()),
    )


def write_empty(stage: str, split: str) -> None:
    """An empty split still gets one (empty) file carrying the schema."""
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(storage.join(stage, split, "part-empty.parquet"))
    if not storage.is_s3(stage):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(DATASET_SCHEMA.empty_table(), path, filesystem=fs)
