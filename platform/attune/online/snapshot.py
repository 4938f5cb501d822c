"""``attune features materialize`` into the online store: Ray Data workers write, one switch.

The snapshot is computed per borrower bucket by :func:`attune.data.materialize.materialize`
(the parquet snapshot under the artifact store, as before); in the same Ray Data task
each bucket's borrowers are packed (:mod:`attune.online.state`: profile, loans and the
compacted, pruned events) and written to Redis, pipelined, into the new snapshot's
keyspace. The driver then commits (:class:`~attune.online.redis_store.SnapshotKeyspace`):
meta with the population defaults (feature medians), a replay of the events posted
while the snapshot was built, the pointer switch, and the old keyspace's expiry.

Posted events dated at or after the snapshot time (the snapshot holds those before it,
from the history and the durable event log) are applied to the new keyspace before the
switch: those already in the durable log, and, at the switch itself, those posted while
it was built (queued by the event script). Both paths are idempotent by event id. An
event dated before the snapshot time that arrives during the build reaches online
state with the next snapshot (it is in the durable log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from attune import storage
from attune.data.features import history_arrays
from attune.data.materialize import (
    FEATURES_SCHEMA,
    MaterializeConfig,
    SnapshotInfo,
    materialize,
    new_snapshot_id,
)
from attune.data.spec import BORROWER_FEATURES, default_spec
from attune.online import state as packed
from attune.online.events import read_logged_events
from attune.online.redis_store import SnapshotKeyspace, SnapshotMeta, SnapshotWriter, micros

log = logging.getLogger(__name__)

#: Days of posted events whose ids a new snapshot remembers (client retries).
REPOST_WINDOW_DAYS = 7


def pack_states(
    *,
    features: pd.DataFrame,
    events: pd.DataFrame,
    borrowers: pd.DataFrame,
    loans: pd.DataFrame,
    as_of: datetime,
) -> Iterator[tuple[int, bytes]]:
    """(borrower id, packed state) for every borrower of ``features`` (one bucket)."""
    ids = np.unique(features["borrower_id"].to_numpy(dtype=np.int64))
    h = history_arrays(ids, events=events, borrowers=borrowers, loans=loans)
    keep = packed.prune(h.ev_us, h.ev_type, as_of_us=micros(as_of))
    code, us = h.ev_code[keep], h.ev_us[keep]
    order = np.lexsort((us, code))
    blob = packed.records(
        us[order],
        packed.encode_codes(h.ev_type[keep][order], h.ev_channel[keep][order]),
        h.ev_cents[keep][order],
    )
    ev_at = np.concatenate([[0], np.cumsum(np.bincount(code, minlength=len(ids)))])
    ev_at *= packed.RECORD.itemsize
    loan_order = np.argsort(h.loan_code, kind="stable")
    loan_rows = np.empty(len(loan_order), dtype=packed.LOAN)
    loan_rows["us"] = h.loan_us[loan_order]
    loan_rows["term"] = h.loans[loan_order, 0]
    loan_rows["installment"] = h.loans[loan_order, 1]
    loan_rows["apr"] = h.loans[loan_order, 2]
    loan_at = np.concatenate([[0], np.cumsum(np.bincount(h.loan_code, minlength=len(ids)))])
    for i, borrower_id in enumerate(ids.tolist()):
        head = packed.profile(
            income=float(h.income[i]),
            volatility=float(h.volatility[i]),
            loans=loan_rows[loan_at[i] : loan_at[i + 1]],
        )
        yield borrower_id, head + blob[ev_at[i] : ev_at[i + 1]]


@dataclass(frozen=True)
class StateSink:
    """The bucket sink that writes packed states with a :class:`SnapshotWriter`."""

    writer: SnapshotWriter

    def __call__(
        self,
        *,
        features: pd.DataFrame,
        events: pd.DataFrame,
        borrowers: pd.DataFrame,
        loans: pd.DataFrame,
        as_of: datetime,
    ) -> None:
        self.writer.write(
            pack_states(
                features=features, events=events, borrowers=borrowers, loans=loans, as_of=as_of
            )
        )


@dataclass(frozen=True, kw_only=True)
class OnlineSnapshot:
    """What a materialization into the online store did."""

    info: SnapshotInfo
    meta: SnapshotMeta
    previous: str | None
    replayed: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            **self.info.to_dict(),
            "online": {
                "snapshot_id": self.meta.snapshot_id,
                "previous": self.previous,
                "replayed_events": self.replayed,
                "borrowers_per_s": round(self.info.borrowers / max(self.seconds, 1e-9), 1),
            },
        }


def defaults_of(info: SnapshotInfo) -> dict[str, float]:
    """Population defaults: each borrower feature's median over the snapshot."""
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_filesystem(storage.join(info.uri, "features"))
    table = pads.dataset(path, filesystem=fs, format="parquet", schema=FEATURES_SCHEMA).to_table(
        columns=list(BORROWER_FEATURES)
    )
    if table.num_rows == 0:
        return dict.fromkeys(BORROWER_FEATURES, 0.0)
    medians = table.to_pandas().median()
    return {name: float(np.float32(medians[name])) for name in BORROWER_FEATURES}


def materialize_online(
    histories_uri: str,
    out_uri: str,
    *,
    redis_url: str,
    config: MaterializeConfig | None = None,
    repost_window_days: int = REPOST_WINDOW_DAYS,
) -> OnlineSnapshot:
    """Materialize a snapshot under ``out_uri`` and into the online store at ``redis_url``.

    Posted events of the last ``repost_window_days`` that the snapshot holds stay known
    by id: re-posting one is a duplicate (an older one would count twice). Raises
    :class:`attune.errors.Conflict` when another snapshot is being built and
    :class:`attune.errors.Unavailable` when Redis cannot be reached; on any failure the
    half-written keyspace is dropped and the served one stays.
    """
    config = config or MaterializeConfig()
    spec = default_spec()
    keyspace = SnapshotKeyspace(redis_url, spec_hash=spec.hash)
    started = time.perf_counter()
    try:
        as_of = config.as_of or datetime.now(timezone.utc)
        # Redis holds every borrower's events and profile: by default the parquet snapshot
        # keeps only the features (population defaults, batch work)
        parts = config.parts if "parts" in config.model_fields_set else ("features",)
        snapshot_id = new_snapshot_id(as_of)
        keyspace.begin(snapshot_id)  # before the history is read: posts from now are queued
        try:
            info = materialize(
                histories_uri,
                out_uri,
                config=config.model_copy(update={"as_of": as_of, "parts": parts}),
                snapshot_id=snapshot_id,
                sink=StateSink(keyspace.writer(snapshot_id)),
            )
            meta = SnapshotMeta(
                snapshot_id=snapshot_id,
                as_of=as_of,
                horizon_days=config.horizon_days,
                borrowers=info.borrowers,
                defaults=defaults_of(info),
            )
            # posted events logged before the build: those dated at or after the snapshot
            # time are applied; the snapshot holds the rest, whose ids it remembers for a
            # while, so that a client's retry of one is a duplicate
            logged = read_logged_events(out_uri, since=as_of - timedelta(days=repost_window_days))
            newer = logged["ts"] >= pd.Timestamp(as_of)
            carried = keyspace.apply_into(meta, list(logged.loc[newer].itertuples(index=False)))
            held = logged.loc[~newer]
            keyspace.remember(
                meta, zip(held["borrower_id"].tolist(), held["event_id"].tolist(), strict=True)
            )
            previous, replayed = keyspace.commit(meta)
            replayed += carried
        except BaseException:
            keyspace.abort(snapshot_id)
            raise
        if previous:
            keyspace.expire(previous)
        seconds = time.perf_counter() - started
        log.info(
            "online snapshot %s: %d borrowers in %.1f s (%d events replayed)",
            snapshot_id,
            info.borrowers,
            seconds,
            replayed,
        )
        return OnlineSnapshot(
            info=info, meta=meta, previous=previous, replayed=replayed, seconds=seconds
        )
    finally:
        keyspace.close()
