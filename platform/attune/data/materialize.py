"""``attune features materialize``: each borrower's latest point-in-time features, on Ray Data.

A snapshot holds, for every borrower, the borrower features as of one time (computed
by :func:`attune.data.features.borrower_features`, the code that builds training
data) and the borrower's events that later features still need
(:func:`attune.data.features.compact_events`: the last 180 days verbatim plus a few
summary rows). The online view keeps those events per borrower, appends new ones and
recomputes that borrower's features with the same function, so online features equal
offline features by construction. Layout under the store::

    <out>/features/<spec_hash>/<snapshot_id>/features/*.parquet   borrower_id, as_of, features
                                            events/*.parquet     history ``events`` schema
                                            borrowers/*.parquet  their ``borrowers`` rows
                                            loans/*.parquet      their ``loans`` rows
                                            manifest.json        as_of, spec hash, counts
                                            _SUCCESS
    <out>/features/<spec_hash>/latest.json  pointer, written after the snapshot is committed

``snapshot_id`` is ``<as_of as YYYYmmddTHHMMSSZ>-<random>``, so ids sort by time. The
pointer only moves forward in ``as_of``: back-filling an older snapshot leaves it.

Events posted to the serving app (``POST /v1/events``) are logged under
``<out>/events_online/month=YYYY-MM/`` in the history's ``events`` schema; materialize
reads them beside the history's own events (``MaterializeConfig.online_events``), and
an event id seen twice for a borrower counts once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from attune import storage
from attune.data import sharded
from attune.data.buckets import ipc, read_packed, unpack
from attune.data.features import MAX_WINDOW_DAYS, borrower_features, compact_events
from attune.data.reader import HistoryFiles, list_history
from attune.data.schema import BORROWERS, EVENTS, LOANS, TS
from attune.data.spec import BORROWER_FEATURES, default_spec
from attune.errors import InvalidInput, StoreNotFound

#: Columns of a snapshot's ``features/`` files.
FEATURES_SCHEMA = pa.schema(
    [
        ("borrower_id", pa.int64()),
        ("as_of", TS),
        *((name, pa.float32()) for name in BORROWER_FEATURES),
    ]
)
_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": tuple(EVENTS.names),
    "borrowers": ("borrower_id", "signup_ts", "income_monthly", "income_volatility"),
    "loans": ("borrower_id", "origination_ts", "term_months", "installment", "apr"),
}
#: Where the serving app logs posted events under the store (history ``events`` layout).
ONLINE_EVENTS_DIR = "events_online"
#: The parts of a snapshot and their schemas: everything the online view needs.
SNAPSHOT_PARTS: dict[str, pa.Schema] = {
    "features": FEATURES_SCHEMA,
    "events": EVENTS,
    "borrowers": pa.schema([BORROWERS.field(c) for c in _COLUMNS["borrowers"]]),
    "loans": pa.schema([LOANS.field(c) for c in _COLUMNS["loans"]]),
}
_PARTS = tuple(SNAPSHOT_PARTS)


class MaterializeConfig(BaseModel):
    """What to materialize and how to partition the work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    as_of: AwareDatetime | None = Field(
        default=None, description="Features use events strictly before this time (default: now)."
    )
    horizon_days: int = Field(
        default=MAX_WINDOW_DAYS,
        ge=MAX_WINDOW_DAYS,
        le=3650,
        description="Days of events kept verbatim for online updates (>= the longest window).",
    )
    buckets: int = Field(default=32, ge=1, le=65_536, description="Borrower hash buckets.")
    partitions: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="Tasks that read the files and, after the shuffle, compute the buckets.",
    )
    parts: tuple[Literal["features", "events", "borrowers", "loans"], ...] = Field(
        default=("features", "events", "borrowers", "loans"),
        min_length=1,
        description="Snapshot parts written as parquet (features always; the online store "
        "holds the others when materializing into it).",
    )
    online_events: bool = Field(
        default=True,
        description=f"Also read the events the serving app logged under <out>/{ONLINE_EVENTS_DIR}.",
    )

    @model_validator(mode="after")
    def _check_parts(self) -> MaterializeConfig:
        if "features" not in self.parts or len(set(self.parts)) != len(self.parts):
            raise ValueError(f"parts {list(self.parts)} must name 'features' and no part twice")
        return self


@dataclass(frozen=True)
class SnapshotInfo:
    """One committed snapshot: where it is, its time, spec hash and counts."""

    uri: str
    snapshot_id: str
    spec_hash: str
    as_of: datetime
    borrowers: int
    events: int
    histories: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "snapshot_id": self.snapshot_id,
            "spec_hash": self.spec_hash,
            "as_of": self.as_of.isoformat(),
            "borrowers": self.borrowers,
            "events": self.events,
            "histories": self.histories,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotInfo:
        return cls(
            uri=str(data["uri"]),
            snapshot_id=str(data["snapshot_id"]),
            spec_hash=str(data["spec_hash"]),
            as_of=datetime.fromisoformat(str(data["as_of"])),
            borrowers=int(data["borrowers"]),
            events=int(data["events"]),
            histories=str(data.get("histories", "")),
        )


def snapshot_root(out_uri: str, spec_hash: str) -> str:
    """Where snapshots of feature spec ``spec_hash`` live under ``out_uri``."""
    return storage.join(out_uri, "features", spec_hash)


def snapshot_rows(
    *,
    events: pd.DataFrame,
    borrowers: pd.DataFrame,
    loans: pd.DataFrame,
    as_of: datetime,
    horizon_days: int = MAX_WINDOW_DAYS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, kept events) of every borrower signed up before ``as_of``.

    Pure pandas: the Ray job calls it per borrower bucket; a single process can call
    it on a whole history. Features have the columns of :data:`FEATURES_SCHEMA`.
    """
    signed_up = borrowers["signup_ts"].isna() | (borrowers["signup_ts"] < pd.Timestamp(as_of))
    ids = np.unique(borrowers.loc[signed_up, "borrower_id"].to_numpy(dtype=np.int64))
    queries = pd.DataFrame({"borrower_id": ids, "ts": pd.Timestamp(as_of)})
    queries["ts"] = queries["ts"].astype("datetime64[us, UTC]")
    feats = borrower_features(events, queries, borrowers=borrowers, loans=loans)
    feats = feats.rename(columns={"ts": "as_of"})[FEATURES_SCHEMA.names]
    mine = events[events["borrower_id"].isin(ids)]
    kept = compact_events(mine, as_of=as_of, horizon_days=horizon_days)
    return feats, kept[EVENTS.names]


class BucketSink(Protocol):
    """Receives each bucket's snapshot rows in the Ray Data worker that computed them."""

    def __call__(
        self,
        *,
        features: pd.DataFrame,
        events: pd.DataFrame,
        borrowers: pd.DataFrame,
        loans: pd.DataFrame,
        as_of: datetime,
    ) -> None: ...


def new_snapshot_id(as_of: datetime) -> str:
    """``<as_of as YYYYmmddTHHMMSSZ>-<random>``: ids sort by time."""
    return f"{as_of.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _snapshot_parts(
    frames: dict[str, pd.DataFrame],
    *,
    as_of: datetime,
    horizon_days: int,
    sink: BucketSink | None = None,
) -> dict[str, pd.DataFrame]:
    """Every snapshot part of the borrowers of ``frames`` (whole borrowers' tables)."""
    # an event logged by the serving app may also reach the history later: count it once
    events = frames["events"].drop_duplicates(["borrower_id", "event_id"], keep="first")
    feats, kept = snapshot_rows(
        events=events,
        borrowers=frames["borrowers"],
        loans=frames["loans"],
        as_of=as_of,
        horizon_days=horizon_days,
    )
    ids = feats["borrower_id"]
    if sink is not None:
        sink(
            features=feats,
            events=kept,
            borrowers=frames["borrowers"],
            loans=frames["loans"],
            as_of=as_of,
        )
    return {
        "features": feats,
        "events": kept,
        "borrowers": frames["borrowers"].loc[frames["borrowers"]["borrower_id"].isin(ids)],
        "loans": frames["loans"].loc[frames["loans"]["borrower_id"].isin(ids)],
    }


def _snapshot_bucket(
    group: pa.Table,
    *,
    as_of: datetime,
    horizon_days: int,
    parts: tuple[str, ...] = _PARTS,
    sink: BucketSink | None = None,
) -> pa.Table:
    rows = _snapshot_parts(
        unpack(group, _COLUMNS), as_of=as_of, horizon_days=horizon_days, sink=sink
    )
    payloads = [  # only the parts to write are serialized; every part is counted
        ipc(pa.Table.from_pandas(rows[part], schema=schema, preserve_index=False))
        if part in parts
        else b""
        for part, schema in SNAPSHOT_PARTS.items()
    ]
    return pa.table(
        {
            "_part": pa.array(list(_PARTS), pa.string()),
            "_rows": pa.array([len(rows[part]) for part in _PARTS], pa.int64()),
            "_payload": pa.array(payloads, pa.large_binary()),
        }
    )


def _snapshot_shard(
    batch: pa.Table,
    *,
    stage: str,
    as_of: datetime,
    horizon_days: int,
    parts: tuple[str, ...],
    sink: BucketSink | None,
) -> pa.Table:
    """One shard of whole borrowers: read, compute and write its parts (attune.data.sharded)."""
    shard, files = sharded.shard_of(batch)
    frames, report = sharded.read_shard(files, _COLUMNS)
    report["parts"] = {}
    if frames:
        rows = _snapshot_parts(frames, as_of=as_of, horizon_days=horizon_days, sink=sink)
        for part, schema in SNAPSHOT_PARTS.items():
            report["parts"][part] = len(rows[part])
            if part in parts:
                table = pa.Table.from_pandas(rows[part], schema=schema, preserve_index=False)
                sharded.write_part(table, stage, part, shard)
    return sharded.report_row(shard, report)


def _unpack_part(batch: pa.Table) -> pa.Table:
    parts = [pa.ipc.open_stream(p).read_all() for p in batch.column("_payload").to_pylist()]
    return pa.concat_tables(parts)


def materialize(
    histories_uri: str,
    out_uri: str,
    *,
    config: MaterializeConfig | None = None,
    snapshot_id: str | None = None,
    sink: BucketSink | None = None,
) -> SnapshotInfo:
    """Write a feature snapshot of the history at ``histories_uri`` under ``out_uri``.

    Validates every input file first (:class:`attune.errors.SchemaError` names the
    file, column and row; nothing is written then), computes each borrower's features
    as of ``config.as_of`` (default: now) per borrower bucket on Ray Data, commits the
    snapshot directory atomically and then moves ``latest.json`` (only forward in
    time). ``sink`` (picklable) also gets every bucket's rows where they are computed:
    the online store's writer (attune.online.snapshot). Returns the snapshot's
    :class:`SnapshotInfo`.
    """
    config = config or MaterializeConfig()
    as_of = config.as_of or datetime.now(timezone.utc)
    spec = default_spec()
    files = list_history(histories_uri, tables=tuple(_COLUMNS))
    if config.online_events:
        files = _with_online_events(files, out_uri)
    root = snapshot_root(out_uri, spec.hash)
    snapshot_id = snapshot_id or new_snapshot_id(as_of)
    target = storage.join(root, snapshot_id)
    shards = sharded.shard_files(files, _COLUMNS)
    info = None
    if shards is not None:  # whole borrowers per shard: stream shard by shard, no shuffle
        task = partial(
            _snapshot_shard,
            as_of=as_of,
            horizon_days=config.horizon_days,
            parts=config.parts,
            sink=sink,
        )

        def by_shard(stage: str) -> dict[str, int]:
            reports = sharded.run_shards(shards, partial(task, stage=stage))
            return {p: sum(r["parts"].get(p, 0) for r in reports) for p in _PARTS}

        try:
            info = _commit_snapshot(target, histories_uri, as_of, config, by_shard)
        except sharded.NotAligned:
            info = None
    if info is None:
        info = _commit_snapshot(
            target,
            histories_uri,
            as_of,
            config,
            partial(_by_bucket, files, as_of=as_of, config=config, sink=sink),
        )
    point_latest(root, info)
    return info


def _by_bucket(
    files: HistoryFiles,
    stage: str,
    *,
    as_of: datetime,
    config: MaterializeConfig,
    sink: BucketSink | None,
) -> dict[str, int]:
    """Any history: co-partition the tables by borrower bucket (one shuffle), then write."""
    packed, _ = read_packed(
        files, columns=_COLUMNS, buckets=config.buckets, tasks=config.partitions
    )
    computed = (
        packed.groupby("_bucket", num_partitions=config.partitions)
        .map_groups(
            _snapshot_bucket,
            batch_format="pyarrow",
            fn_kwargs={
                "as_of": as_of,
                "horizon_days": config.horizon_days,
                "parts": config.parts,
                "sink": sink,
            },
        )
        .materialize()  # one pass of feature code, every part
    )
    del packed
    sizes = computed.select_columns(["_part", "_rows"]).to_pandas()
    for part in config.parts:
        fs, path = storage.pyarrow_filesystem(storage.join(stage, part))
        chosen = computed.filter(expr=f"_part == '{part}'")
        chosen.map_batches(_unpack_part, batch_format="pyarrow", batch_size=None).write_parquet(
            path, filesystem=fs
        )
    return {part: int(sizes.loc[sizes["_part"] == part, "_rows"].sum()) for part in _PARTS}


def _commit_snapshot(
    target: str,
    histories_uri: str,
    as_of: datetime,
    config: MaterializeConfig,
    write: Callable[[str], dict[str, int]],
) -> SnapshotInfo:
    """Commit the snapshot ``write(stage)`` writes (it returns the rows of each part)."""
    spec = default_spec()
    with storage.write_dir_atomically(target) as stage:
        counts = write(stage)
        for part in config.parts:
            _ensure_files(stage, part)
        info = SnapshotInfo(
            uri=target,
            snapshot_id=target.rstrip("/").rsplit("/", 1)[-1],
            spec_hash=spec.hash,
            as_of=as_of,
            borrowers=counts["features"],
            events=counts["events"],
            histories=histories_uri,
        )
        storage.write_json(
            storage.join(stage, "manifest.json"),
            {
                **info.to_dict(),
                "horizon_days": config.horizon_days,
                "feature_spec": spec.hash,
                "parts": list(config.parts),
            },
        )
        storage.write_bytes(storage.join(stage, "feature_spec.json"), spec.to_json().encode())
    return info


def _with_online_events(files: HistoryFiles, out_uri: str) -> HistoryFiles:
    """``files`` plus the events the serving app logged under ``out_uri`` (if any)."""
    prefix = storage.join(out_uri, ONLINE_EVENTS_DIR)
    logged = tuple(
        uri
        for uri in storage.list_uris(prefix)
        if uri.endswith(".parquet")
        and not any(p.startswith((".", "_")) for p in uri[len(prefix) :].split("/"))
    )
    if not logged:
        return files
    return replace(files, files={**files.files, "events": files.files["events"] + logged})


def _ensure_files(stage: str, part: str) -> None:
    """An empty part still gets one file carrying its schema."""
    target = storage.join(stage, part)
    if any(u.endswith(".parquet") for u in storage.list_uris(target)):
        return
    import pyarrow.parquet as pq

    schema = SNAPSHOT_PARTS[part]
    fs, path = storage.pyarrow_filesystem(storage.join(target, "part-empty.parquet"))
    if not storage.is_s3(stage):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(schema.empty_table(), path, filesystem=fs)


def point_latest(root: str, info: SnapshotInfo) -> bool:
    """Point ``<root>/latest.json`` at ``info`` unless it points at a later snapshot.

    Returns whether the pointer moved. Call it only after the snapshot is committed.
    """
    pointer = storage.join(root, "latest.json")
    if storage.exists(pointer):
        current = _read_pointer(root, pointer)
        if current.as_of > info.as_of:
            return False
    storage.write_json(pointer, info.to_dict())
    return True


def latest_snapshot(out_uri: str, *, spec_hash: str | None = None) -> SnapshotInfo:
    """The snapshot ``latest.json`` points at for ``spec_hash`` (default: this code's spec).

    Raises :class:`StoreNotFound` when no snapshot was committed for that spec.
    """
    spec_hash = spec_hash or default_spec().hash
    if not SPEC_HASH.fullmatch(spec_hash):
        raise InvalidInput(
            f"spec_hash {spec_hash!r} is not a feature-spec hash",
            field="spec_hash",
            value=spec_hash,
        )
    root = snapshot_root(out_uri, spec_hash)
    pointer = storage.join(root, "latest.json")
    if not storage.exists(pointer):
        raise StoreNotFound(uri=pointer, problem="no snapshot materialized for this feature spec")
    return _read_pointer(root, pointer)


#: A feature-spec hash (hex) and a snapshot id: both become parts of store paths.
SPEC_HASH = re.compile(r"^[0-9a-f]{8,64}$")
SNAPSHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _location(uri: str) -> str:
    """``uri`` in one spelling: s3 as written, local paths absolute and normalised."""
    import os.path

    return uri.rstrip("/") if storage.is_s3(uri) else os.path.abspath(uri)


def _read_pointer(root: str, pointer: str) -> SnapshotInfo:
    """The snapshot ``pointer`` names, refused unless it lies directly under ``root``.

    The pointer is data in the store: a snapshot id with a path in it, or a ``uri``
    elsewhere (another bucket, ``..``), would make readers load features from a place
    nobody materialized. Raises :class:`InvalidInput` naming the pointer.
    """
    try:
        info = SnapshotInfo.from_dict(storage.read_json(pointer))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{pointer}: not a snapshot pointer ({exc})", field="pointer") from None
    problem = None
    if not SNAPSHOT_ID.fullmatch(info.snapshot_id) or ".." in info.snapshot_id:
        problem = f"snapshot_id {info.snapshot_id!r} is not a snapshot id"
    elif _location(info.uri) != _location(storage.join(root, info.snapshot_id)):
        problem = f"uri {info.uri!r} is not {root}/{info.snapshot_id}"
    elif not root.rstrip("/").endswith("/" + info.spec_hash):
        problem = f"spec_hash {info.spec_hash!r} is not the pointer's feature spec"
    if problem is not None:
        raise InvalidInput(f"snapshot pointer {pointer}: {problem}", field="pointer", value=pointer)
    return info


def read_snapshot(
    info: SnapshotInfo, *, borrower_ids: Sequence[int] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, events) of a committed snapshot as pandas frames (single process).

    ``borrower_ids`` restricts both to those borrowers (pushed down into the reader).
    A snapshot written without its events part (``MaterializeConfig.parts``: the online
    store holds them) gives an empty events frame.
    Raises :class:`StoreNotFound` when the snapshot is missing or was never committed.
    """
    import pyarrow.dataset as pads

    if not storage.is_complete(info.uri):
        raise StoreNotFound(uri=info.uri, problem="snapshot missing or not committed")
    out = []
    written = storage.read_json(storage.join(info.uri, "manifest.json")).get("parts", _PARTS)
    for part, schema in (("features", FEATURES_SCHEMA), ("events", EVENTS)):
        if part not in written:  # materialized into the online store, which holds it
            out.append(schema.empty_table().to_pandas())
            continue
        fs, path = storage.pyarrow_filesystem(storage.join(info.uri, part))
        data = pads.dataset(path, filesystem=fs, format="parquet", schema=schema)
        where = None
        if borrower_ids is not None:
            where = pads.field("borrower_id").isin(pa.array(list(borrower_ids), pa.int64()))
        out.append(data.to_table(filter=where).to_pandas())
    return out[0], out[1]
