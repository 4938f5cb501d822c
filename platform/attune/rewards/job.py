"""``attune outcomes``: reward rows for the served decisions, one process or Ray Data.

Inputs: the decision log under ``<store>/decisions`` (primary rows), and the servicing
events of any number of histories (``<history>/events``) plus those posted to the app
(``<store>/events_online``). Output: a parquet dataset of :data:`REWARD_SCHEMA` rows at
``out`` (default ``<store>/rewards``), written atomically (a ``_SUCCESS`` marker).

Both engines apply :func:`attune.rewards.attribution.attribute_rewards`; the Ray Data
engine first hashes and filters the events in parallel, writes both inputs partitioned
by a bucket of the borrower hash, then scores each bucket in its own task, so memory is
one bucket's decisions and events, whatever the log's size. Bad files are carried as
data and reported (naming the file) before any bucket is scored.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from attune import storage
from attune.data.materialize import ONLINE_EVENTS_DIR
from attune.data.reader import list_history, read_file
from attune.errors import AttuneError, SchemaError, StoreNotFound
from attune.layout import StoreLayout
from attune.rewards.attribution import (
    DECISION_COLUMNS,
    EVENT_COLUMNS,
    REWARD_SCHEMA,
    attribute_rewards,
    hash_events,
    relevant_event_types,
)
from attune.rewards.config import RewardConfig


class OutcomesConfig(BaseModel):
    """What ``attune outcomes`` reads, how it attributes, and where it writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str = Field(
        min_length=1, description="Store whose decisions/ and events_online/ are read."
    )
    histories: tuple[str, ...] = Field(
        default=(), description="History roots whose events/ are read too."
    )
    out: str = Field(min_length=1, description="Output dataset URI.")
    as_of: AwareDatetime = Field(description="Only decisions whose windows closed by then.")
    salt: str = Field(min_length=1, description="Salt of the decision log's borrower hashes.")
    engine: Literal["ray", "local"] = Field(default="ray", description="Ray Data or one process.")
    buckets: int = Field(default=16, ge=1, le=4096, description="Borrower buckets (Ray engine).")


def _data_files(prefix: str) -> list[str]:
    out = []
    for uri in storage.list_uris(prefix):
        rel = uri[len(prefix) :].lstrip("/")
        if uri.endswith(".parquet") and not any(p.startswith((".", "_")) for p in rel.split("/")):
            out.append(uri)
    return sorted(out)


def decision_files(store: str) -> list[str]:
    return _data_files(StoreLayout(store).decisions)


def event_files(config: OutcomesConfig) -> list[str]:
    """Every events file: each history's ``events/`` and the store's ``events_online/``."""
    files = [
        uri for h in config.histories for uri in list_history(h, tables=("events",)).files["events"]
    ]
    return files + _data_files(storage.join(config.store, ONLINE_EVENTS_DIR))


def read_decisions(uri: str) -> pd.DataFrame:
    """One decision-log file's primary rows (:data:`DECISION_COLUMNS`)."""
    fs, path = storage.pyarrow_filesystem(uri)
    try:
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(
            file=uri, column=None, problem=f"not a readable parquet file: {exc}"
        ) from exc
    missing = [c for c in DECISION_COLUMNS if c not in table.column_names]
    if missing:
        raise SchemaError(file=uri, column=missing[0], problem="missing column")
    frame = table.select(list(DECISION_COLUMNS)).to_pandas()
    return frame.loc[frame["role"] == "primary"].reset_index(drop=True)


def read_events(uri: str, *, salt: str, types: frozenset[str]) -> pd.DataFrame:
    """One events file, validated, hashed and cut to ``types`` (:data:`EVENT_COLUMNS`)."""
    frame = read_file(uri, "events").to_pandas()
    return hash_events(frame.loc[frame["event_type"].isin(types)], salt=salt)


def _summary(config: OutcomesConfig, table: pa.Table, decisions: int) -> dict[str, Any]:
    rewards = table.column("reward").to_numpy() if table.num_rows else np.empty(0)
    explored = table.column("propensity").null_count if table.num_rows else 0
    return {
        "out": config.out,
        "as_of": config.as_of.isoformat(),
        "engine": config.engine,
        "decisions_read": decisions,
        "decisions_scored": len(set(table.column("decision_id").to_pylist())),
        "rows": table.num_rows,
        "rows_with_propensity": table.num_rows - explored,
        "mean_reward": float(rewards.mean()) if rewards.size else None,
    }


def compute_rewards_local(config: OutcomesConfig, rewards: RewardConfig) -> tuple[pa.Table, int]:
    """Every reward row in one process: ``(table, primary decisions read)``."""
    files = decision_files(config.store)
    if not files:
        raise StoreNotFound(uri=StoreLayout(config.store).decisions, problem="no decisions")
    decisions = pd.concat([read_decisions(u) for u in files], ignore_index=True)
    types = relevant_event_types(rewards)
    frames = [read_events(u, salt=config.salt, types=types) for u in event_files(config)]
    events = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_COLUMNS})
    )
    return attribute_rewards(decisions, events, rewards, as_of=config.as_of), len(decisions)


def run_outcomes(
    config: OutcomesConfig, rewards: RewardConfig, *, progress: bool = True
) -> dict[str, Any]:
    """Attribute rewards and write them to ``config.out``; returns a summary."""
    if config.engine == "local":
        table, n = compute_rewards_local(config, rewards)
        with storage.write_dir_atomically(config.out) as staging:
            _write_table(storage.join(staging, "part-00000.parquet"), table)
        return _summary(config, table, n)
    return _run_on_ray(config, rewards, progress=progress)


def _write_table(uri: str, table: pa.Table) -> None:
    fs, path = storage.pyarrow_filesystem(uri)
    if not storage.is_s3(uri):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def read_rewards(uri: str) -> pa.Table:
    """A rewards dataset (every file under ``uri``) as one :data:`REWARD_SCHEMA` table."""
    files = _data_files(uri)
    if not files:
        raise StoreNotFound(uri=uri, problem="no reward files")
    tables = []
    for f in files:
        fs, path = storage.pyarrow_filesystem(f)
        with fs.open_input_file(path) as handle:
            tables.append(pq.read_table(handle).select(REWARD_SCHEMA.names).cast(REWARD_SCHEMA))
    return pa.concat_tables(tables)


# --------------------------------------------------------------------------- Ray Data


def _bucket_of(hashes: pd.Series, buckets: int) -> np.ndarray:
    return np.array([int(h[:8], 16) % buckets for h in hashes], dtype=np.int64)


def _stage(frame: pd.DataFrame, *, staging: str, name: str, buckets: int, tag: str) -> None:
    """Write ``frame`` as one file per borrower bucket under ``staging/name/bucket=k/``."""
    bucket = _bucket_of(frame["borrower_hash"], buckets)
    for k in np.unique(bucket):
        part = frame.loc[bucket == k]
        table = pa.Table.from_pandas(part, preserve_index=False)
        _write_table(storage.join(staging, name, f"bucket={int(k)}", f"{tag}.parquet"), table)


def _run_on_ray(config: OutcomesConfig, rewards: RewardConfig, *, progress: bool) -> dict[str, Any]:
    import ray

    from attune.runtime import init_ray

    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS or a local Ray; the submitted code and logs on every worker
        init_ray(None)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    staging = config.out.rstrip("/") + f".work-{uuid.uuid4().hex[:8]}"
    try:
        return _ray_pipeline(config, rewards, staging)
    finally:
        storage.delete_prefix(staging)
        if started:
            ray.shutdown()


def _ray_pipeline(config: OutcomesConfig, rewards: RewardConfig, staging: str) -> dict[str, Any]:
    import ray

    d_files, e_files = decision_files(config.store), event_files(config)
    if not d_files:
        raise StoreNotFound(uri=StoreLayout(config.store).decisions, problem="no decisions")
    buckets, salt, types = config.buckets, config.salt, relevant_event_types(rewards)
    inputs = [{"uri": u, "name": "decisions"} for u in d_files]
    inputs += [{"uri": u, "name": "events"} for u in e_files]

    def stage(row: dict[str, Any]) -> dict[str, Any]:
        """Read, hash and bucket one input file; errors come back as data."""
        uri, name = str(row["uri"]), str(row["name"])
        try:
            if name == "decisions":
                frame = read_decisions(uri)
            else:
                frame = read_events(uri, salt=salt, types=types)
        except AttuneError as exc:
            return {"uri": uri, "name": name, "rows": 0, "error": exc.message}
        if len(frame):
            tag = uuid.uuid4().hex
            _stage(frame, staging=staging, name=name, buckets=buckets, tag=tag)
        return {"uri": uri, "name": name, "rows": len(frame), "error": ""}

    staged = ray.data.from_items(inputs).map(stage).take_all()
    errors = [r for r in staged if r["error"]]
    if errors:
        raise SchemaError(file=errors[0]["uri"], column=None, problem=errors[0]["error"])
    n_decisions = sum(r["rows"] for r in staged if r["name"] == "decisions")

    def score(batch: dict[str, Any]) -> pa.Table:
        tables = []
        for bucket in batch["id"]:
            parts = {
                name: _read_bucket(staging, name, int(bucket)) for name in ("decisions", "events")
            }
            if parts["decisions"] is None:
                continue
            events = parts["events"]
            if events is None:
                events = pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_COLUMNS})
            tables.append(
                attribute_rewards(parts["decisions"], events, rewards, as_of=config.as_of)
            )
        return pa.concat_tables(tables) if tables else REWARD_SCHEMA.empty_table()

    scored = ray.data.range(buckets).map_batches(score, batch_size=1, batch_format="numpy")
    with storage.write_dir_atomically(config.out) as out:
        fs, path = storage.pyarrow_filesystem(out)
        scored.write_parquet(path, filesystem=fs)
        if not _data_files(out):
            _write_table(storage.join(out, "part-00000.parquet"), REWARD_SCHEMA.empty_table())
    return _summary(config, read_rewards(config.out), n_decisions)


def _read_bucket(staging: str, name: str, bucket: int) -> pd.DataFrame | None:
    files = _data_files(storage.join(staging, name, f"bucket={bucket}"))
    if not files:
        return None
    tables = []
    for uri in files:
        fs, path = storage.pyarrow_filesystem(uri)
        with fs.open_input_file(path) as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def default_as_of() -> datetime:
    return datetime.now(UTC)
